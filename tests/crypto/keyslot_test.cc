// Key slots (engine/crypto/keyslot.h): scrypt known answers, a slot made by a
// separate implementation of the documented scheme, round trips, wrong
// passphrases and key files (Code::kBadKey), slots moved or edited, and
// hostile slot files refused before anything large is allocated.
#include "engine/crypto/keyslot.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/crypto/crypto_test_util.h"

namespace dp420::crypto {
namespace {

using testing::Bytes;
using testing::Hex;
using testing::ScratchDir;
using testing::Unhex;
using Json = nlohmann::ordered_json;

const RepoId kRepo = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
                      0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf};
// Cheap parameters, so that the tests run fast: 1 MiB.
constexpr ScryptParams kFast{1024, 8, 1};
const char kPassphrase[] = "correct horse battery staple";

MasterKey FixedMaster() {
  std::array<uint8_t, kMasterKeyBytes> bytes;
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(0x40 + i);
  return MasterKey::FromBytes(bytes);
}

// Slots made by a separate implementation (Python: hashlib.scrypt and the
// cryptography package's AESGCM) from the layout keyslot.h documents.
const char kPassphraseSlot[] =
    R"({"format":"dp420-key-slot","format_version":1,"slot_id":3,"kind":"passphrase",)"
    R"("repo_id":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf","kdf":"scrypt","scrypt_n":1024,)"
    R"("scrypt_r":8,"scrypt_p":1,)"
    R"("kdf_salt":"808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",)"
    R"("cipher":"aes-256-gcm","nonce":"c0c1c2c3c4c5c6c7c8c9cacb",)"
    R"("wrapped_key":"521a88d15274f1e237529662c6cba8ce3447157fbff7d76aa6802e219c4610c1",)"
    R"("tag":"531815ef8ac1f402bc02f052af8b4e8e"})";
const char kKeyFileSlot[] =
    R"({"format":"dp420-key-slot","format_version":1,"slot_id":4,"kind":"key-file",)"
    R"("repo_id":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf","kdf":"none","cipher":"aes-256-gcm",)"
    R"("nonce":"d0d1d2d3d4d5d6d7d8d9dadb",)"
    R"("wrapped_key":"498d6bc2525c1251361351ce1ca007b0e0b3170814aea918469d8a6bf7b464b0",)"
    R"("tag":"a75583768416b1de12cc6604d675d7d8"})";

SecretKey FixedFileKey() {
  SecretKey key;
  for (size_t i = 0; i < key.size(); ++i) key.data()[i] = uint8_t(0xe0 + i);
  return key;
}

// ---- scrypt (RFC 7914, section 12) ----

Bytes RunScrypt(const std::string& pass, const std::string& salt, ScryptParams params) {
  Bytes out(64);
  Status s = Scrypt(pass, Bytes(salt.begin(), salt.end()), params, out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

TEST(ScryptTest, Rfc7914Vectors) {
  EXPECT_EQ(Hex(RunScrypt("", "", {16, 1, 1})),
            "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
            "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906");
  EXPECT_EQ(Hex(RunScrypt("password", "NaCl", {1024, 8, 16})),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
            "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640");
  EXPECT_EQ(Hex(RunScrypt("pleaseletmein", "SodiumChloride", {16384, 8, 1})),
            "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
            "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887");
}

TEST(ScryptTest, BoundsAreChecked) {
  EXPECT_TRUE(CheckScryptParams(kDefaultScrypt).ok());
  EXPECT_EQ(ScryptMemoryBytes(kDefaultScrypt), uint64_t{128} << 20);
  const ScryptParams bad[] = {
      {0, 8, 1},                       // N < 2
      {1, 8, 1},                       // N < 2
      {3000, 8, 1},                    // not a power of two
      {uint64_t{1} << 23, 1, 1},       // N > 2^22
      {uint64_t{1} << 63, 8, 1},       // absurd N
      {1024, 0, 1},                    // r < 1
      {1024, 33, 1},                   // r > 32
      {1024, 8, 0},                    // p < 1
      {1024, 8, 17},                   // p > 16
      {uint64_t{1} << 22, 8, 1},       // 4 GiB
      {uint64_t{1} << 20, 8, 8},       // 1 GiB, but 2^26 work
  };
  for (const ScryptParams& p : bad) {
    Status s = CheckScryptParams(p);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << p.n << " " << p.r << " " << p.p;
    Bytes out(32);
    EXPECT_EQ(Scrypt("x", {}, p, out).code(), Code::kInvalidArgument);
  }
}

// ---- Wrapping and unwrapping ----

TEST(KeySlotTest, OpensSlotsMadeByTheDocumentedScheme) {
  auto slot = KeySlotFromJson(kPassphraseSlot);
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  auto master = UnwrapWithPassphrase(*slot, kRepo, kPassphrase);
  ASSERT_TRUE(master.ok()) << master.status().ToString();
  EXPECT_EQ(Hex(master->bytes()), Hex(FixedMaster().bytes()));

  auto file_slot = KeySlotFromJson(kKeyFileSlot);
  ASSERT_TRUE(file_slot.ok()) << file_slot.status().ToString();
  auto master2 = UnwrapWithKeyFile(*file_slot, kRepo, FixedFileKey());
  ASSERT_TRUE(master2.ok()) << master2.status().ToString();
  EXPECT_EQ(Hex(master2->bytes()), Hex(FixedMaster().bytes()));
}

TEST(KeySlotTest, PassphraseRoundTripThroughJson) {
  auto slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  const std::string text = KeySlotToJson(*slot);
  EXPECT_EQ(text.find(kPassphrase), std::string::npos);
  EXPECT_EQ(text.find(Hex(FixedMaster().bytes())), std::string::npos);
  auto parsed = KeySlotFromJson(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(KeySlotToJson(*parsed), text);
  auto master = UnwrapWithPassphrase(*parsed, kRepo, kPassphrase);
  ASSERT_TRUE(master.ok()) << master.status().ToString();
  EXPECT_EQ(Hex(master->bytes()), Hex(FixedMaster().bytes()));
}

TEST(KeySlotTest, DefaultParametersRoundTrip) {
  auto slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase);
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  EXPECT_EQ(slot->scrypt.n, uint64_t{1} << 17);
  EXPECT_EQ(slot->scrypt.r, 8u);
  EXPECT_EQ(slot->scrypt.p, 1u);
  auto master = UnwrapWithPassphrase(*slot, kRepo, kPassphrase);
  ASSERT_TRUE(master.ok()) << master.status().ToString();
  EXPECT_EQ(Hex(master->bytes()), Hex(FixedMaster().bytes()));
}

TEST(KeySlotTest, WrongPassphraseIsBadKey) {
  auto slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(slot.ok());
  for (const char* wrong : {"correct horse battery stapl", "Correct horse battery staple",
                            "correct horse battery staple ", ""}) {
    auto r = UnwrapWithPassphrase(*slot, kRepo, wrong);
    ASSERT_FALSE(r.ok()) << wrong;
    EXPECT_EQ(r.status().code(), Code::kBadKey) << r.status().ToString();
    EXPECT_EQ(r.status().message().find(kPassphrase), std::string::npos);
    if (*wrong != '\0') {
      EXPECT_EQ(r.status().message().find(wrong), std::string::npos);
    }
  }
  EXPECT_EQ(Status::BadKey("x").ToString(), "wrong key: x");
}

TEST(KeySlotTest, WrongKeyFileIsBadKey) {
  auto file_key = FixedFileKey();
  auto slot = WrapWithKeyFile(FixedMaster(), kRepo, 2, file_key);
  ASSERT_TRUE(slot.ok());
  auto master = UnwrapWithKeyFile(*slot, kRepo, file_key);
  ASSERT_TRUE(master.ok());
  EXPECT_EQ(Hex(master->bytes()), Hex(FixedMaster().bytes()));
  SecretKey other = file_key;
  other.data()[31] ^= 1;
  auto r = UnwrapWithKeyFile(*slot, kRepo, other);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kBadKey) << r.status().ToString();
}

TEST(KeySlotTest, TheWrongKindOfSecretIsRefused) {
  auto slot = WrapWithKeyFile(FixedMaster(), kRepo, 2, FixedFileKey());
  ASSERT_TRUE(slot.ok());
  EXPECT_EQ(UnwrapWithPassphrase(*slot, kRepo, kPassphrase).status().code(),
            Code::kInvalidArgument);
  auto pass_slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(pass_slot.ok());
  EXPECT_EQ(UnwrapWithKeyFile(*pass_slot, kRepo, FixedFileKey()).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(WrapWithPassphrase(FixedMaster(), kRepo, 1, "", kFast).status().code(),
            Code::kInvalidArgument);
}

TEST(KeySlotTest, ASlotIsBoundToItsRepositoryAndId) {
  auto slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(slot.ok());
  RepoId other = kRepo;
  other[3] ^= 0x10;
  // Given to another repository as it is: refused, naming both.
  auto r = UnwrapWithPassphrase(*slot, other, kPassphrase);
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("belongs to repository"), std::string::npos);
  // Copied into another repository with its repo_id edited to match: the tag fails.
  KeySlot moved = *slot;
  moved.repo_id = other;
  EXPECT_EQ(UnwrapWithPassphrase(moved, other, kPassphrase).status().code(), Code::kBadKey);
  // Renumbered.
  KeySlot renumbered = *slot;
  renumbered.slot_id = 2;
  EXPECT_EQ(UnwrapWithPassphrase(renumbered, kRepo, kPassphrase).status().code(),
            Code::kBadKey);
}

TEST(KeySlotTest, EditedFieldsFail) {
  auto slot = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(slot.ok());
  auto expect_bad = [&](const KeySlot& edited, const char* what) {
    auto r = UnwrapWithPassphrase(edited, kRepo, kPassphrase);
    EXPECT_EQ(r.status().code(), Code::kBadKey) << what << ": " << r.status().ToString();
  };
  for (size_t i = 0; i < kMasterKeyBytes; ++i) {
    KeySlot s = *slot;
    s.wrapped_key[i] ^= 1;
    expect_bad(s, "wrapped_key");
  }
  for (size_t i = 0; i < kGcmTagBytes; ++i) {
    KeySlot s = *slot;
    s.tag[i] ^= 0x80;
    expect_bad(s, "tag");
  }
  for (size_t i = 0; i < kGcmNonceBytes; ++i) {
    KeySlot s = *slot;
    s.nonce[i] ^= 4;
    expect_bad(s, "nonce");
  }
  KeySlot salted = *slot;
  salted.kdf_salt[0] ^= 1;
  expect_bad(salted, "kdf_salt");
  KeySlot weaker = *slot;
  weaker.scrypt.n = 512;  // a downgrade to cheaper parameters gives another KEK
  expect_bad(weaker, "scrypt_n");
  KeySlot r2 = *slot;
  r2.scrypt.r = 4;
  expect_bad(r2, "scrypt_r");
}

TEST(KeySlotTest, TwoWrapsOfOneKeyShareNothing) {
  auto a = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  auto b = WrapWithPassphrase(FixedMaster(), kRepo, 1, kPassphrase, kFast);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->kdf_salt, b->kdf_salt);
  EXPECT_NE(a->nonce, b->nonce);
  EXPECT_NE(a->wrapped_key, b->wrapped_key);
}

// ---- Strict parsing ----

Status ParseEdited(const std::function<void(Json&)>& edit) {
  Json j = Json::parse(kPassphraseSlot);
  edit(j);
  return KeySlotFromJson(j.dump()).status();
}

void ExpectRefusedNaming(const Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
}

TEST(KeySlotParseTest, EveryMissingFieldIsNamed) {
  const Json passphrase_slot = Json::parse(kPassphraseSlot);
  for (const auto& item : passphrase_slot.items()) {
    const std::string name = item.key();
    Status s = ParseEdited([&](Json& j) { j.erase(name); });
    ExpectRefusedNaming(s, "'" + name + "'");
  }
  const Json key_file_slot = Json::parse(kKeyFileSlot);
  for (const auto& item : key_file_slot.items()) {
    const std::string name = item.key();
    Json j = Json::parse(kKeyFileSlot);
    j.erase(name);
    ExpectRefusedNaming(KeySlotFromJson(j.dump()).status(), "'" + name + "'");
  }
}

TEST(KeySlotParseTest, WrongLengthsAndDigitsAreNamed) {
  for (const char* field : {"repo_id", "kdf_salt", "nonce", "wrapped_key", "tag"}) {
    SCOPED_TRACE(field);
    const std::string good = Json::parse(kPassphraseSlot)[field].get<std::string>();
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = good.substr(2); }), field);
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = good.substr(1); }), field);
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = good + "00"; }), field);
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = ""; }), field);
    std::string upper = good;
    upper[0] = 'A';
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = upper; }), field);
    std::string not_hex = good;
    not_hex[3] = 'g';
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = not_hex; }), field);
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[field] = 12; }), field);
  }
}

TEST(KeySlotParseTest, WrongTypesAndValuesAreNamed) {
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["slot_id"] = -1; }), "slot_id");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["slot_id"] = 1.5; }), "slot_id");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["slot_id"] = "1"; }), "slot_id");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["slot_id"] = uint64_t{1} << 32; }),
                      "slot_id");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["kind"] = "password"; }), "kind");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["kdf"] = "argon2id"; }), "kdf");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["cipher"] = "aes-128-gcm"; }), "cipher");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["format"] = "dp420-manifest"; }), "format");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["scrypt_r"] = nullptr; }), "scrypt_r");
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["extra"] = 1; }), "'extra'");
  // A key-file slot carrying scrypt fields is not a key-file slot.
  ExpectRefusedNaming(ParseEdited([](Json& j) { j["kind"] = "key-file"; }), "kdf");
  Json file = Json::parse(kKeyFileSlot);
  file["scrypt_n"] = 1024;
  ExpectRefusedNaming(KeySlotFromJson(file.dump()).status(), "'scrypt_n'");
  // A newer format is a version error, an older one damage.
  EXPECT_EQ(ParseEdited([](Json& j) { j["format_version"] = 2; }).code(), Code::kVersion);
  EXPECT_EQ(ParseEdited([](Json& j) { j["format_version"] = 0; }).code(), Code::kCorruption);
}

TEST(KeySlotParseTest, TruncatedOrNotJsonIsRefused) {
  const std::string text = kPassphraseSlot;
  for (size_t len = 0; len < text.size(); len += 7) {
    EXPECT_EQ(KeySlotFromJson(text.substr(0, len)).status().code(), Code::kCorruption) << len;
  }
  for (const char* bad : {"[]", "null", "\"dp420\"", "{", "{}", "12"}) {
    EXPECT_EQ(KeySlotFromJson(bad).status().code(), Code::kCorruption) << bad;
  }
  // More than a slot holds is refused unparsed.
  const std::string huge = text.substr(0, text.size() - 1) + ",\"pad\":\"" +
                           std::string(kMaxKeySlotJsonBytes, 'a') + "\"}";
  Status s = KeySlotFromJson(huge).status();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("more than a key slot holds"), std::string::npos) << s.message();
}

// A field given twice is damage (the parser would keep the last value, which a
// reader that kept the first would read differently), and so is anything after a
// NUL byte (the parser stops at it).
TEST(KeySlotParseTest, RepeatedFieldsAndBytesAfterANulAreRefused) {
  const std::string text = kKeyFileSlot;
  ASSERT_TRUE(KeySlotFromJson(text).ok());
  Status twice = KeySlotFromJson(text.substr(0, text.size() - 1) + ",\"slot_id\":7}").status();
  EXPECT_EQ(twice.code(), Code::kCorruption) << twice.ToString();
  EXPECT_NE(twice.message().find("field 'slot_id' is given twice"), std::string::npos)
      << twice.message();
  Status nul = KeySlotFromJson(text + std::string(1, '\0') + "{\"pad\":1}").status();
  EXPECT_EQ(nul.code(), Code::kCorruption) << nul.ToString();
  EXPECT_NE(nul.message().find("NUL"), std::string::npos) << nul.message();
}

long MaxRssKib() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// A hostile repository's slot asking for 2^30 or 4 GiB of scrypt: refused as
// damage at once, with no large allocation and no long computation.
TEST(KeySlotParseTest, AbsurdScryptParametersAreRefusedWithoutAllocating) {
  const long rss_before = MaxRssKib();
  const auto start = std::chrono::steady_clock::now();
  struct Edit {
    const char* field;
    uint64_t value;
  };
  const Edit edits[] = {{"scrypt_n", uint64_t{1} << 30}, {"scrypt_n", uint64_t{1} << 23},
                        {"scrypt_n", 3000},              {"scrypt_n", 0},
                        {"scrypt_n", UINT64_MAX},        {"scrypt_r", 1000000},
                        {"scrypt_r", 0},                 {"scrypt_p", 1u << 30}};
  for (const Edit& e : edits) {
    ExpectRefusedNaming(ParseEdited([&](Json& j) { j[e.field] = e.value; }), e.field);
  }
  // Within each bound but together too much memory (4 GiB) or work (2^26).
  Status memory = ParseEdited([](Json& j) { j["scrypt_n"] = 1u << 22; });
  ExpectRefusedNaming(memory, "'scrypt_n'");
  EXPECT_NE(memory.message().find("4096 MiB"), std::string::npos) << memory.message();
  Status work = ParseEdited([](Json& j) {
    j["scrypt_n"] = 1u << 20;
    j["scrypt_p"] = 8;
  });
  ExpectRefusedNaming(work, "'scrypt_p'");
  EXPECT_NE(work.message().find("work"), std::string::npos) << work.message();
  // A slot built in memory with such parameters is refused by the unwrap itself.
  auto slot = KeySlotFromJson(kPassphraseSlot);
  ASSERT_TRUE(slot.ok());
  slot->scrypt = {uint64_t{1} << 22, 32, 16};
  auto r = UnwrapWithPassphrase(*slot, kRepo, kPassphrase);
  EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);
  EXPECT_LT(MaxRssKib() - rss_before, 64 * 1024) << "KiB of peak memory grew";
}

// ---- Key files ----

TEST(KeyFileTest, CreatedMode0600AndLoadedBack) {
  ScratchDir dir;
  const std::string path = dir.path() + "/repo.key";
  const mode_t old_umask = umask(0);  // a permissive umask does not widen the file
  SecretKey key;
  Status created = CreateKeyFile(path, &key);
  umask(old_umask);
  ASSERT_TRUE(created.ok()) << created.ToString();
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  EXPECT_NE(Hex(key.span()), std::string(64, '0'));
  SecretKey loaded;
  ASSERT_TRUE(LoadKeyFile(path, &loaded).ok());
  EXPECT_EQ(Hex(loaded.span()), Hex(key.span()));
  // Never overwritten.
  SecretKey again;
  EXPECT_EQ(CreateKeyFile(path, &again).code(), Code::kExists);
  SecretKey reloaded;
  ASSERT_TRUE(LoadKeyFile(path, &reloaded).ok());
  EXPECT_EQ(Hex(reloaded.span()), Hex(key.span()));
}

TEST(KeyFileTest, OpenToOthersOrWrongSizeIsRefused) {
  ScratchDir dir;
  const std::string path = dir.path() + "/repo.key";
  SecretKey key;
  ASSERT_TRUE(CreateKeyFile(path, &key).ok());
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  SecretKey loaded;
  Status s = LoadKeyFile(path, &loaded);
  EXPECT_EQ(s.code(), Code::kPermission) << s.ToString();
  EXPECT_NE(s.message().find("chmod 600"), std::string::npos);
  for (size_t size : {0, 31, 33, 64}) {
    const std::string p = dir.path() + "/key" + std::to_string(size);
    std::ofstream(p) << std::string(size, 'k');
    ASSERT_EQ(chmod(p.c_str(), 0600), 0);
    Status r = LoadKeyFile(p, &loaded);
    EXPECT_EQ(r.code(), Code::kBadKey) << size << ": " << r.ToString();
  }
  EXPECT_EQ(LoadKeyFile(dir.path() + "/missing", &loaded).code(), Code::kNotFound);
}

TEST(KeyFileTest, AnotherKeyFileIsBadKey) {
  ScratchDir dir;
  SecretKey right, wrong;
  ASSERT_TRUE(CreateKeyFile(dir.path() + "/right.key", &right).ok());
  ASSERT_TRUE(CreateKeyFile(dir.path() + "/wrong.key", &wrong).ok());
  auto slot = WrapWithKeyFile(FixedMaster(), kRepo, 7, right);
  ASSERT_TRUE(slot.ok());
  SecretKey loaded;
  ASSERT_TRUE(LoadKeyFile(dir.path() + "/wrong.key", &loaded).ok());
  EXPECT_EQ(UnwrapWithKeyFile(*slot, kRepo, loaded).status().code(), Code::kBadKey);
  ASSERT_TRUE(LoadKeyFile(dir.path() + "/right.key", &loaded).ok());
  auto master = UnwrapWithKeyFile(*slot, kRepo, loaded);
  ASSERT_TRUE(master.ok());
  EXPECT_EQ(Hex(master->bytes()), Hex(FixedMaster().bytes()));
}

}  // namespace
}  // namespace dp420::crypto
