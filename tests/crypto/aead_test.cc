// Sealing of pack records and small files (engine/crypto/aead.h): AES-256-GCM
// known answers, the documented record and file schemes against an independent
// computation, round trips, and every way of moving, swapping, replaying or
// altering a sealed object, each of which must fail.
#include "engine/crypto/aead.h"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <cstring>
#include <set>
#include <string>

#include "io/random.h"
#include "tests/crypto/crypto_test_util.h"

namespace dp420::crypto {
namespace {

using testing::Bytes;
using testing::Concat;
using testing::Hex;
using testing::ReferenceHkdf;
using testing::Str;
using testing::U32Le;
using testing::Unhex;

const RepoId kRepo = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
                      0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf};

// ---- AES-256-GCM known answers (McGrew and Viega, "The Galois/Counter Mode of
// Operation", test cases 13 to 16: the 256-bit key ones with a 96-bit IV) ----

struct GcmVector {
  const char* key;
  const char* iv;
  const char* plain;
  const char* aad;
  const char* cipher;
  const char* tag;
};

const GcmVector kGcmVectors[] = {
    {"0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "00000000000000000000000000000000", "",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
     "",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"},
    {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

TEST(AesGcmTest, KnownAnswersSealAndOpen) {
  for (const GcmVector& v : kGcmVectors) {
    SCOPED_TRACE(v.tag);
    const Bytes key = Unhex(v.key), iv = Unhex(v.iv), plain = Unhex(v.plain), aad = Unhex(v.aad);
    Bytes cipher(plain.size());
    std::array<uint8_t, kGcmTagBytes> tag;
    ASSERT_TRUE(AesGcmSeal(std::span<const uint8_t, 32>(key.data(), 32),
                           std::span<const uint8_t, 12>(iv.data(), 12), aad, plain, cipher, tag)
                    .ok());
    EXPECT_EQ(Hex(cipher), v.cipher);
    EXPECT_EQ(Hex(tag), v.tag);
    Bytes opened(cipher.size(), 0xee);
    EXPECT_TRUE(AesGcmOpen(std::span<const uint8_t, 32>(key.data(), 32),
                           std::span<const uint8_t, 12>(iv.data(), 12), aad, cipher, opened, tag));
    EXPECT_EQ(opened, plain);
    tag[0] ^= 1;
    EXPECT_FALSE(AesGcmOpen(std::span<const uint8_t, 32>(key.data(), 32),
                            std::span<const uint8_t, 12>(iv.data(), 12), aad, cipher, opened,
                            tag));
    EXPECT_EQ(opened, Bytes(cipher.size(), 0));  // nothing unauthenticated is left
  }
}

// ---- Pack records ----

std::shared_ptr<SecretKey> Key(uint8_t base) {
  auto key = std::make_shared<SecretKey>();
  for (size_t i = 0; i < key->size(); ++i) key->data()[i] = uint8_t(base + i);
  return key;
}

Sha256Digest Sha256Of(const Bytes& data) {
  Sha256Digest d;
  SHA256(data.data(), data.size(), d.data());
  return d;
}

Bytes Pattern(size_t len, uint32_t seed) {
  Bytes out(len);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = uint8_t(x);
  }
  return out;
}

PackSalt Salt(uint8_t base) {
  PackSalt s;
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(base + i);
  return s;
}

RecordId IdFor(const Bytes& plain, uint32_t pack_id = 0x2a, uint32_t offset_4k = 5,
               ObjectKind kind = ObjectKind::kDataBlock) {
  RecordId id;
  id.pack_id = pack_id;
  id.pack_salt = Salt(0x10);
  id.offset_4k = offset_4k;
  id.kind = kind;
  id.plain_len_bytes = uint32_t(plain.size());
  id.sha256 = Sha256Of(plain);
  return id;
}

Bytes Seal(RecordSealer& sealer, const RecordId& id, const Bytes& plain) {
  Bytes sealed(plain.size() + kGcmTagBytes);
  Status s = sealer.SealRecord(id, plain, sealed);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return sealed;
}

// Opens `sealed` as `id`; the Status, and the plaintext in *plain.
Status Open(RecordSealer& sealer, const RecordId& id, const Bytes& sealed, Bytes* plain) {
  plain->assign(id.plain_len_bytes, 0xee);
  return sealer.OpenRecord(id, sealed, *plain);
}

void ExpectAuthFailure(const Status& s, const Bytes& plain) {
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("authentication failed"), std::string::npos) << s.message();
  EXPECT_EQ(plain, Bytes(plain.size(), 0)) << "unauthenticated plaintext was returned";
}

class RecordTest : public ::testing::Test {
 protected:
  std::shared_ptr<SecretKey> object_key_ = Key(0x30);
  RecordSealer sealer_{*object_key_, kRepo};
  Bytes plain_ = Pattern(4096, 1);
  RecordId id_ = IdFor(plain_);
  Bytes sealed_ = Seal(sealer_, id_, plain_);
};

// The scheme of aead.h's header, computed by a separate implementation
// (Python's hashlib and cryptography) from the documented layout.
TEST(RecordSchemeTest, MatchesTheDocumentedScheme) {
  SecretKey object_key;
  const Bytes object = Unhex("c4f26c2070d9e0e985f932c246d1c53ac10ebfd1c882a52308578013617f870e");
  std::memcpy(object_key.data(), object.data(), 32);
  Bytes plain;
  for (int i = 0; i < 3; ++i) plain = Concat({plain, Str("dp420 block at rest ")});
  const RecordId id = IdFor(plain);
  SecretKey pack_key;
  ASSERT_TRUE(DerivePackKey(object_key, kRepo, id.pack_id, id.pack_salt, &pack_key).ok());
  EXPECT_EQ(Hex(pack_key.span()),
            "ad08cd8ef546b5a3a4478e6937d8a6d4822dc56fb40310cd6c703f09a5477d12");
  RecordSealer sealer(object_key, kRepo);
  EXPECT_EQ(Hex(Seal(sealer, id, plain)),
            "f62c25bfda09990df94f86bdb0ce49b4cbf31be7f155cb17d9ed79b6a7f684c2"
            "1a3b4af554b64463932d269f93739842d3f87407b9d79a5da9427a4a5da16b36"
            "1594e01f1efd6ebb68241caa");
}

TEST(RecordSchemeTest, NonceAndAadLayout) {
  std::array<uint8_t, kGcmNonceBytes> nonce;
  RecordNonce(0x01020304, nonce);
  EXPECT_EQ(Hex(nonce), "040302010000000000000000");
  RecordId id;
  id.pack_id = 0x11223344;
  id.offset_4k = 0x55667788;
  id.kind = ObjectKind::kInnerPage;
  id.plain_len_bytes = 0x00004000;
  for (size_t i = 0; i < 32; ++i) id.sha256[i] = uint8_t(0xc0 + i);
  std::array<uint8_t, kRecordAadBytes> aad;
  RecordAad(kRepo, id, aad);
  const Bytes expected =
      Concat({Bytes(kRepo.begin(), kRepo.end()), U32Le(0x11223344), U32Le(0x55667788),
              Bytes{3, 0, 0, 0}, U32Le(0x4000), Bytes(id.sha256.begin(), id.sha256.end())});
  EXPECT_EQ(Bytes(aad.begin(), aad.end()), expected);
}

TEST(RecordSchemeTest, PackKeyIsHkdfOfTheObjectKey) {
  auto object_key = Key(0x30);
  const PackSalt salt = Salt(0x77);
  SecretKey pack_key;
  ASSERT_TRUE(DerivePackKey(*object_key, kRepo, 0xdeadbeef, salt, &pack_key).ok());
  const Bytes info = Concat({Str("dp420 pack key v1"), Bytes(kRepo.begin(), kRepo.end()),
                             U32Le(0xdeadbeef), Bytes(salt.begin(), salt.end())});
  EXPECT_EQ(Bytes(pack_key.data(), pack_key.data() + 32),
            ReferenceHkdf(Bytes(object_key->data(), object_key->data() + 32), {}, info, 32));
}

TEST_F(RecordTest, RoundTripsEveryKindAndSize) {
  const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 16384, 65536, (1u << 20) + 3};
  uint32_t offset = 1;
  for (ObjectKind kind : {ObjectKind::kDataBlock, ObjectKind::kLeafPage, ObjectKind::kInnerPage,
                          ObjectKind::kManifest}) {
    for (size_t size : sizes) {
      const Bytes plain = Pattern(size, offset);
      const RecordId id = IdFor(plain, 7, offset++, kind);
      const Bytes sealed = Seal(sealer_, id, plain);
      ASSERT_EQ(sealed.size(), size + kGcmTagBytes);
      if (size >= 16) {
        EXPECT_NE(Bytes(sealed.begin(), sealed.begin() + 16), Bytes(plain.begin(),
                                                                    plain.begin() + 16));
      }
      Bytes opened;
      Status s = Open(sealer_, id, sealed, &opened);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(opened, plain);
    }
  }
}

TEST_F(RecordTest, SealsAndOpensInPlace) {
  Bytes buf = plain_;
  buf.resize(plain_.size() + kGcmTagBytes);
  ASSERT_TRUE(sealer_.SealRecord(id_, std::span<const uint8_t>(buf.data(), plain_.size()), buf)
                  .ok());
  EXPECT_EQ(buf, sealed_);  // the same bytes as sealing out of place
  ASSERT_TRUE(sealer_.OpenRecord(id_, buf, std::span<uint8_t>(buf.data(), plain_.size())).ok());
  EXPECT_EQ(Bytes(buf.begin(), buf.begin() + long(plain_.size())), plain_);
}

TEST_F(RecordTest, AnotherSealerWithTheSameKeysOpensIt) {
  RecordSealer reader(*object_key_, kRepo);
  Bytes opened;
  ASSERT_TRUE(Open(reader, id_, sealed_, &opened).ok());
  EXPECT_EQ(opened, plain_);
}

TEST_F(RecordTest, EveryFlippedByteOfCiphertextOrTagFails) {
  Bytes opened;
  for (size_t i = 0; i < sealed_.size(); ++i) {
    Bytes bad = sealed_;
    bad[i] ^= uint8_t(1u << (i % 8));
    Status s = Open(sealer_, id_, bad, &opened);
    ASSERT_FALSE(s.ok()) << "byte " << i;
    ExpectAuthFailure(s, opened);
  }
  ASSERT_TRUE(Open(sealer_, id_, sealed_, &opened).ok());  // the original still opens
}

TEST_F(RecordTest, OpenedAtAnotherOffsetFails) {
  for (uint32_t offset : {0u, 4u, 6u, 5u + (1u << 16), 0xffffffffu}) {
    RecordId moved = id_;
    moved.offset_4k = offset;
    Bytes opened;
    ExpectAuthFailure(Open(sealer_, moved, sealed_, &opened), opened);
  }
}

TEST_F(RecordTest, OpenedInAnotherPackFails) {
  RecordId moved = id_;
  moved.pack_id = id_.pack_id + 1;  // the same salt, another pack id
  Bytes opened;
  ExpectAuthFailure(Open(sealer_, moved, sealed_, &opened), opened);
}

TEST_F(RecordTest, OpenedUnderAnotherPackSaltFails) {
  // The pack rewritten (a new salt): a record of its old incarnation does not open in it.
  RecordId rewritten = id_;
  rewritten.pack_salt[31] ^= 0x80;
  Bytes opened;
  ExpectAuthFailure(Open(sealer_, rewritten, sealed_, &opened), opened);
}

TEST_F(RecordTest, OpenedInAnotherRepositoryFails) {
  RepoId other = kRepo;
  other[0] ^= 1;
  RecordSealer reader(*object_key_, other);  // the same object key, another repo_id
  Bytes opened;
  ExpectAuthFailure(Open(reader, id_, sealed_, &opened), opened);
}

TEST_F(RecordTest, OpenedWithAnotherKeyFails) {
  auto other_key = Key(0x31);
  RecordSealer reader(*other_key, kRepo);
  Bytes opened;
  ExpectAuthFailure(Open(reader, id_, sealed_, &opened), opened);
}

TEST_F(RecordTest, OpenedAsAnotherKindFails) {
  for (ObjectKind kind : {ObjectKind::kLeafPage, ObjectKind::kInnerPage, ObjectKind::kManifest}) {
    RecordId other = id_;
    other.kind = kind;
    Bytes opened;
    ExpectAuthFailure(Open(sealer_, other, sealed_, &opened), opened);
  }
}

TEST_F(RecordTest, OpenedWithAnotherSha256Fails) {
  for (size_t i = 0; i < kSha256Bytes; ++i) {
    RecordId other = id_;
    other.sha256[i] ^= 0x01;
    Bytes opened;
    ExpectAuthFailure(Open(sealer_, other, sealed_, &opened), opened);
  }
}

TEST_F(RecordTest, OpenedWithAnotherLengthFails) {
  // The reference says 4080 bytes: the first 4080 bytes of ciphertext and the tag.
  RecordId shorter = id_;
  shorter.plain_len_bytes = 4080;
  Bytes cut(sealed_.begin(), sealed_.begin() + 4080);
  cut.insert(cut.end(), sealed_.end() - kGcmTagBytes, sealed_.end());
  Bytes opened;
  ExpectAuthFailure(Open(sealer_, shorter, cut, &opened), opened);
  // Stored bytes that are not the reference's length plus the tag.
  RecordId longer = id_;
  longer.plain_len_bytes = 4097;
  ExpectAuthFailure(Open(sealer_, longer, sealed_, &opened), opened);
  Bytes truncated(sealed_.begin(), sealed_.end() - 1);
  ExpectAuthFailure(Open(sealer_, id_, truncated, &opened), opened);
}

TEST_F(RecordTest, SwappedRecordsFail) {
  const Bytes other_plain = Pattern(4096, 2);
  const RecordId other_id = IdFor(other_plain, id_.pack_id, id_.offset_4k + 1);
  const Bytes other_sealed = Seal(sealer_, other_id, other_plain);
  Bytes opened;
  ExpectAuthFailure(Open(sealer_, id_, other_sealed, &opened), opened);
  ExpectAuthFailure(Open(sealer_, other_id, sealed_, &opened), opened);
}

TEST_F(RecordTest, TheErrorNamesTheRecord) {
  RecordId moved = id_;
  moved.offset_4k = 6;
  Bytes opened;
  Status s = Open(sealer_, moved, sealed_, &opened);
  EXPECT_NE(s.message().find("offset_4k 6 of pack 0000002a (data block, 4096 bytes)"),
            std::string::npos)
      << s.message();
}

TEST_F(RecordTest, NoncesDifferAtEveryOffset) {
  // The same plaintext at 256 offsets of one pack: no two ciphertexts share their
  // first block (a repeated nonce would repeat the keystream).
  std::set<std::string> firsts;
  for (uint32_t offset = 1; offset <= 256; ++offset) {
    RecordId id = id_;
    id.offset_4k = offset;
    const Bytes sealed = Seal(sealer_, id, plain_);
    firsts.insert(Hex(Bytes(sealed.begin(), sealed.begin() + 16)));
  }
  EXPECT_EQ(firsts.size(), 256u);
}

TEST(PackKeyTest, PacksNeverShareAKey) {
  auto object_key = Key(0x30);
  std::set<std::string> keys;
  SecretKey key;
  // One pack id with 512 fresh salts (a pack rewritten 512 times) ...
  for (int i = 0; i < 512; ++i) {
    PackSalt salt;
    ASSERT_TRUE(io::FillRandom(salt.data(), salt.size()).ok());
    ASSERT_TRUE(DerivePackKey(*object_key, kRepo, 1, salt, &key).ok());
    keys.insert(Hex(key.span()));
  }
  // ... and 512 pack ids with one salt.
  for (uint32_t pack = 2; pack < 514; ++pack) {
    ASSERT_TRUE(DerivePackKey(*object_key, kRepo, pack, Salt(0), &key).ok());
    keys.insert(Hex(key.span()));
  }
  EXPECT_EQ(keys.size(), 1024u);
}

TEST(PackKeyTest, TheSameRecordInTwoPacksDiffers) {
  auto object_key = Key(0x30);
  RecordSealer sealer(*object_key, kRepo);
  const Bytes plain = Pattern(4096, 9);
  RecordId a = IdFor(plain);
  RecordId b = a;
  b.pack_salt = Salt(0x99);  // the same pack id and offset, rewritten
  const Bytes sealed_a = Seal(sealer, a, plain);
  const Bytes sealed_b = Seal(sealer, b, plain);
  size_t same = 0;
  for (size_t i = 0; i < sealed_a.size(); ++i) same += sealed_a[i] == sealed_b[i];
  EXPECT_LT(same, sealed_a.size() / 64);  // ~1/256 of bytes agree by chance
}

TEST(RecordSealerTest, CachesPackKeys) {
  auto object_key = Key(0x30);
  RecordSealer sealer(*object_key, kRepo);
  const Bytes plain = Pattern(4096, 3);
  // 100 records of one pack: one derivation.
  for (uint32_t offset = 1; offset <= 100; ++offset) Seal(sealer, IdFor(plain, 1, offset), plain);
  EXPECT_EQ(sealer.pack_keys_derived(), 1u);
  // Reading 8 packs in turn, many times over: each derived once.
  std::vector<Bytes> sealed;
  for (uint32_t pack = 10; pack < 18; ++pack) sealed.push_back(Seal(sealer, IdFor(plain, pack),
                                                                     plain));
  for (int round = 0; round < 20; ++round) {
    for (uint32_t pack = 10; pack < 18; ++pack) {
      Bytes opened;
      ASSERT_TRUE(Open(sealer, IdFor(plain, pack), sealed[pack - 10], &opened).ok());
    }
  }
  EXPECT_EQ(sealer.pack_keys_derived(), 9u);
  // A ninth pack evicts the least recently used (pack 10), whose key is derived again
  // the next time it is used, and then kept.
  Seal(sealer, IdFor(plain, 18), plain);
  EXPECT_EQ(sealer.pack_keys_derived(), 10u);
  Bytes opened;
  ASSERT_TRUE(Open(sealer, IdFor(plain, 10), sealed[0], &opened).ok());
  EXPECT_EQ(opened, plain);
  EXPECT_EQ(sealer.pack_keys_derived(), 11u);
  ASSERT_TRUE(Open(sealer, IdFor(plain, 10), sealed[0], &opened).ok());
  ASSERT_TRUE(Open(sealer, IdFor(plain, 17), sealed[7], &opened).ok());
  EXPECT_EQ(sealer.pack_keys_derived(), 11u);
}

TEST(RecordSealerTest, SealsAndOpensInterleaved) {
  // One sealer switching between sealing and opening, and between packs, on every call.
  auto object_key = Key(0x30);
  RecordSealer sealer(*object_key, kRepo);
  RecordSealer fresh(*object_key, kRepo);
  for (uint32_t i = 1; i <= 50; ++i) {
    const Bytes plain = Pattern(1000 + i, i);
    const RecordId id = IdFor(plain, i % 11, i);
    const Bytes sealed = Seal(sealer, id, plain);
    Bytes opened;
    ASSERT_TRUE(Open(sealer, id, sealed, &opened).ok()) << i;
    EXPECT_EQ(opened, plain);
    EXPECT_EQ(Seal(fresh, id, plain), sealed);  // deterministic: the state did not leak
  }
}

// ---- Small files ----

const std::string kIdentity = "vol1/0000000003-00112233aabbccdd";

Result<std::string> SealManifest(const SecretKey& key, const std::string& plain) {
  return SealFile(key, kRepo, FileKind::kManifest, kIdentity, plain);
}

void ExpectFileFailure(const Result<std::string>& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
  EXPECT_NE(r.status().message().find("authentication failed"), std::string::npos)
      << r.status().message();
}

// A file sealed by a separate implementation of the documented scheme (fixed salt).
TEST(FileTest, OpensTheDocumentedScheme) {
  SecretKey object_key;
  const Bytes object = Unhex("c4f26c2070d9e0e985f932c246d1c53ac10ebfd1c882a52308578013617f870e");
  std::memcpy(object_key.data(), object.data(), 32);
  const Bytes sealed = Unhex(
      "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
      "e88a4ace7b10478242a947d321db9b5abe1319d0a8655c29a6ba84dac5cf7b7f3d6ce33b44188672fb3d97");
  auto opened = OpenFile(object_key, kRepo, FileKind::kManifest, kIdentity,
                         std::string(sealed.begin(), sealed.end()));
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(*opened, "{\"format\":\"dp420-manifest\"}");
}

TEST(FileTest, RoundTripsWithAFreshSaltEachTime) {
  auto key = Key(0x30);
  for (const std::string& plain : {std::string(), std::string("x"), std::string(100000, 'm')}) {
    auto a = SealManifest(*key, plain);
    auto b = SealManifest(*key, plain);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->size(), plain.size() + kFileOverheadBytes);
    EXPECT_NE(a->substr(0, kFileSaltBytes), b->substr(0, kFileSaltBytes));
    EXPECT_NE(*a, *b);
    auto opened = OpenFile(*key, kRepo, FileKind::kManifest, kIdentity, *a);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    EXPECT_EQ(*opened, plain);
  }
}

TEST(FileTest, EveryFlippedByteFails) {
  auto key = Key(0x30);
  auto sealed = SealManifest(*key, "{\"sequence\":3}");
  ASSERT_TRUE(sealed.ok());
  for (size_t i = 0; i < sealed->size(); ++i) {
    std::string bad = *sealed;
    bad[i] = char(bad[i] ^ 0x20);
    ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest, kIdentity, bad));
  }
}

TEST(FileTest, AnotherIdentityKindRepositoryOrKeyFails) {
  auto key = Key(0x30);
  auto sealed = SealManifest(*key, "{\"sequence\":3}");
  ASSERT_TRUE(sealed.ok());
  // Another snapshot's name (a manifest replayed over another).
  ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest,
                             "vol1/0000000004-00112233aabbccdd", *sealed));
  ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest, kIdentity + "x", *sealed));
  ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest, "", *sealed));
  // Presented as a head, a link or the config.
  for (FileKind kind : {FileKind::kHead, FileKind::kLink, FileKind::kConfig}) {
    ExpectFileFailure(OpenFile(*key, kRepo, kind, kIdentity, *sealed));
  }
  RepoId other = kRepo;
  other[7] ^= 4;
  ExpectFileFailure(OpenFile(*key, other, FileKind::kManifest, kIdentity, *sealed));
  auto other_key = Key(0x31);
  ExpectFileFailure(OpenFile(*other_key, kRepo, FileKind::kManifest, kIdentity, *sealed));
}

TEST(FileTest, TruncatedOrExtendedFails) {
  auto key = Key(0x30);
  auto sealed = SealManifest(*key, "{\"sequence\":3}");
  ASSERT_TRUE(sealed.ok());
  for (size_t len = 0; len < sealed->size(); ++len) {
    ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest, kIdentity,
                               sealed->substr(0, len)));
  }
  ExpectFileFailure(OpenFile(*key, kRepo, FileKind::kManifest, kIdentity, *sealed + "\n"));
}

TEST(FileTest, TheErrorNamesTheFile) {
  auto key = Key(0x30);
  auto sealed = SealManifest(*key, "{}");
  ASSERT_TRUE(sealed.ok());
  auto r = OpenFile(*key, kRepo, FileKind::kHead, "vol1", *sealed);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("head file 'vol1'"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace dp420::crypto
