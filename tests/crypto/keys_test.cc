// The master key, HKDF and the repository's subkeys (engine/crypto/keys.h),
// and the secrets' container (secret.h).
#include "engine/crypto/keys.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "engine/crypto/secret.h"
#include "tests/crypto/crypto_test_util.h"

namespace dp420::crypto {
namespace {

using testing::Bytes;
using testing::Concat;
using testing::Hex;
using testing::ReferenceHkdf;
using testing::Str;
using testing::Unhex;

const RepoId kRepo = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
                      0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf};

MasterKey FixedMaster() {
  std::array<uint8_t, kMasterKeyBytes> bytes;
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(0x40 + i);
  return MasterKey::FromBytes(bytes);
}

Bytes RunHkdf(const Bytes& ikm, const Bytes& salt, const Bytes& info, size_t len) {
  Bytes out(len);
  EXPECT_TRUE(Hkdf(ikm, salt, info, out).ok());
  return out;
}

// RFC 5869, appendix A, test case 1 (SHA-256, salt and info).
TEST(HkdfTest, Rfc5869Case1) {
  const Bytes okm = RunHkdf(Bytes(22, 0x0b), Unhex("000102030405060708090a0b0c"),
                            Unhex("f0f1f2f3f4f5f6f7f8f9"), 42);
  EXPECT_EQ(Hex(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

// RFC 5869, appendix A, test case 3: empty salt and info, as every dp420
// derivation has an empty salt.
TEST(HkdfTest, Rfc5869Case3EmptySaltAndInfo) {
  const Bytes okm = RunHkdf(Bytes(22, 0x0b), {}, {}, 42);
  EXPECT_EQ(Hex(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

// RFC 5869, appendix A, test case 2: 80-byte inputs, 82 bytes out (three blocks).
TEST(HkdfTest, Rfc5869Case2LongInputs) {
  Bytes ikm(80), salt(80), info(80);
  for (int i = 0; i < 80; ++i) {
    ikm[i] = uint8_t(i);
    salt[i] = uint8_t(0x60 + i);
    info[i] = uint8_t(0xb0 + i);
  }
  EXPECT_EQ(Hex(RunHkdf(ikm, salt, info, 82)),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87");
}

TEST(HkdfTest, DeriveKeyIsHkdfOfLabelAndContext) {
  const Bytes ikm(32, 7);
  const Bytes context = {1, 2, 3};
  Bytes out(32);
  ASSERT_TRUE(DeriveKey(ikm, "some label", context, out).ok());
  EXPECT_EQ(out, ReferenceHkdf(ikm, {}, Concat({Str("some label"), context}), 32));
}

// The subkeys as keys.h documents them, computed by the reference HKDF.
TEST(RepositoryKeysTest, SubkeysFollowTheDocumentedLabels) {
  const MasterKey master = FixedMaster();
  RepositoryKeys keys;
  ASSERT_TRUE(DeriveRepositoryKeys(master, kRepo, &keys).ok());
  const Bytes ikm(master.bytes().begin(), master.bytes().end());
  const Bytes repo(kRepo.begin(), kRepo.end());
  auto ref = [&](const char* label, size_t len) {
    return ReferenceHkdf(ikm, {}, Concat({Str(label), repo}), len);
  };
  EXPECT_EQ(Bytes(keys.object_key.data(), keys.object_key.data() + 32),
            ref("dp420 object key v1", 32));
  EXPECT_EQ(Bytes(keys.seal_key.data(), keys.seal_key.data() + 32), ref("dp420 seal key v1", 32));
  EXPECT_EQ(Bytes(keys.block_id_secret.data(), keys.block_id_secret.data() + 192),
            ref("dp420 block id secret v1", 192));
  // And the fixed values, computed once by a separate implementation.
  EXPECT_EQ(Hex(keys.object_key.span()),
            "c4f26c2070d9e0e985f932c246d1c53ac10ebfd1c882a52308578013617f870e");
  EXPECT_EQ(Hex(keys.seal_key.span()),
            "327112a602c7b656bb3140f9f3dd87eb286e3f33966fe08d8cf3804da9aa568e");
}

TEST(RepositoryKeysTest, SubkeysDifferFromEachOtherAndAcrossRepositories) {
  const MasterKey master = FixedMaster();
  RepoId other = kRepo;
  other[15] ^= 1;
  RepositoryKeys a, b;
  ASSERT_TRUE(DeriveRepositoryKeys(master, kRepo, &a).ok());
  ASSERT_TRUE(DeriveRepositoryKeys(master, other, &b).ok());
  std::set<std::string> seen = {Hex(a.object_key.span()), Hex(a.seal_key.span()),
                                Hex(a.block_id_secret.span()).substr(0, 64),
                                Hex(b.object_key.span()), Hex(b.seal_key.span()),
                                Hex(b.block_id_secret.span()).substr(0, 64),
                                Hex(master.bytes())};
  EXPECT_EQ(seen.size(), 7u);
}

TEST(MasterKeyTest, GeneratedKeysAreRandom) {
  std::set<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    auto key = MasterKey::Generate();
    ASSERT_TRUE(key.ok());
    seen.insert(Hex(key->bytes()));
  }
  EXPECT_EQ(seen.size(), 64u);
  EXPECT_EQ(seen.count(std::string(64, '0')), 0u);
}

TEST(SecretTest, CopiesAreDeepAndPageAligned) {
  SecretKey a;
  for (size_t i = 0; i < a.size(); ++i) a.data()[i] = uint8_t(i + 1);
  SecretKey b(a);
  EXPECT_NE(a.data(), b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0);
  b.data()[0] = 0xff;
  EXPECT_EQ(a.data()[0], 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 4096, 0u);
  BlockIdSecret big;
  EXPECT_EQ(big.size(), 192u);
  EXPECT_EQ(Hex(big.span()), std::string(384, '0'));  // a new secret is zero
}

TEST(SecretTest, CleanseOverwrites) {
  uint8_t buf[64];
  std::memset(buf, 0x5a, sizeof(buf));
  Cleanse(buf, sizeof(buf));
  for (uint8_t b : buf) ASSERT_EQ(b, 0);
}

}  // namespace
}  // namespace dp420::crypto
