// The key store (engine/core/keystore.h) on real files: the first slot,
// unlocking by passphrase and key file, wrong secrets (kBadKey, nothing
// written), adding, removing and changing slots, slots copied from another
// repository or damaged, the bound on slots tried, and the paper form.
#include "engine/core/keystore.h"

#include <gtest/gtest.h>

#include <array>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "tests/keys/keys_test_util.h"

namespace dp420 {
namespace {

using keystest::Files;
using keystest::kFast;
using keystest::ReadText;
using keystest::WriteText;

class KeyStoreTest : public keystest::RepoWithMasterKey {
 protected:

  // A passphrase file holding `text`; returns its path.
  std::string PassFile(const std::string& text, const std::string& name = "") {
    std::string path = dir_.path() + "/pass-" + (name.empty() ? std::to_string(++files_) : name);
    WriteText(path, text);
    return path;
  }
  KeySource ByPassphrase(const std::string& text) {
    KeySource s;
    s.passphrase_file = PassFile(text);
    return s;
  }
  KeySource ByKeyFile(const std::string& path) {
    KeySource s;
    s.key_file = path;
    return s;
  }
  const crypto::MasterKey& master() const { return *master_; }
  bool SameMaster(const UnlockedKey& k) const {
    return std::equal(k.master.bytes().begin(), k.master.bytes().end(), master().bytes().begin());
  }
  std::string SlotPath(uint32_t id) const {
    char name[32];
    std::snprintf(name, sizeof(name), "/keys/slot-%08u.json", id);
    return repo_ + name;
  }

  int files_ = 0;
};

TEST_F(KeyStoreTest, FirstSlotOpensByPassphrase) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("pass one\n"), kFast).ok());
  struct stat st;
  ASSERT_EQ(stat(SlotPath(1).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string json = ReadText(SlotPath(1));
  EXPECT_EQ(json.find('\n'), json.size() - 1) << "one line";
  // The trailing newline is not part of the passphrase; "\r\n" neither.
  for (const char* text : {"pass one", "pass one\n", "pass one\r\n"}) {
    auto k = Unlock(repo_, repo_id_, ByPassphrase(text));
    ASSERT_TRUE(k.ok()) << text << ": " << k.status().ToString();
    EXPECT_EQ(k->slot_id, 1u);
    EXPECT_TRUE(SameMaster(*k));
  }
  for (const char* text : {"pass one\n\n", "pass one\r", "pass one "}) {
    EXPECT_EQ(Unlock(repo_, repo_id_, ByPassphrase(text)).status().code(), Code::kBadKey) << text;
  }
  // A second first slot is refused.
  EXPECT_EQ(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("x"), kFast).code(),
            Code::kExists);
}

TEST_F(KeyStoreTest, FirstSlotOpensByKeyFileCreatedForIt) {
  const std::string key = dir_.path() + "/repo.key";
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByKeyFile(key), kFast).ok());
  struct stat st;
  ASSERT_EQ(stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  auto k = Unlock(repo_, repo_id_, ByKeyFile(key));
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_TRUE(SameMaster(*k));
  // A passphrase tries passphrase slots only: there are none.
  auto p = Unlock(repo_, repo_id_, ByPassphrase("anything"));
  EXPECT_EQ(p.status().code(), Code::kBadKey);
  EXPECT_NE(p.status().message().find("no passphrase slot"), std::string::npos)
      << p.status().message();
  // A key file open to others is refused.
  ASSERT_EQ(chmod(key.c_str(), 0644), 0);
  EXPECT_EQ(Unlock(repo_, repo_id_, ByKeyFile(key)).status().code(), Code::kPermission);
}

TEST_F(KeyStoreTest, WrongSecretIsBadKeyAndWritesNothing) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("right"), kFast).ok());
  const std::string other_key = dir_.path() + "/other.key";
  crypto::SecretKey unused;
  ASSERT_TRUE(crypto::CreateKeyFile(other_key, &unused).ok());
  ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByKeyFile(dir_.path() + "/good.key"), kFast).ok());
  const auto before = Files(repo_);
  auto k = Unlock(repo_, repo_id_, ByPassphrase("wrong"));
  EXPECT_EQ(k.status().code(), Code::kBadKey);
  EXPECT_NE(k.status().message().find("opens none of the 1 passphrase slot"), std::string::npos)
      << k.status().message();
  EXPECT_EQ(k.status().message().find("wrong"), std::string::npos) << "no secret in messages";
  EXPECT_EQ(Unlock(repo_, repo_id_, ByKeyFile(other_key)).status().code(), Code::kBadKey);
  EXPECT_EQ(Files(repo_), before);
}

TEST_F(KeyStoreTest, NoSourceNamesTheOptions) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("p"), kFast).ok());
  auto k = Unlock(repo_, repo_id_, KeySource{});
  EXPECT_EQ(k.status().code(), Code::kInvalidArgument);
  for (const char* option : {"--passphrase-file FILE", "DP420_PASSPHRASE_FILE",
                             "--repo-key-file FILE", "DP420_REPO_KEY_FILE", "terminal"}) {
    EXPECT_NE(k.status().message().find(option), std::string::npos) << k.status().message();
  }
  // An empty passphrase file is refused, a missing one is not found.
  EXPECT_EQ(Unlock(repo_, repo_id_, ByPassphrase("\n")).status().code(), Code::kInvalidArgument);
  KeySource missing;
  missing.passphrase_file = dir_.path() + "/absent";
  EXPECT_EQ(Unlock(repo_, repo_id_, missing).status().code(), Code::kNotFound);
}

TEST_F(KeyStoreTest, RemovedSlotNoLongerOpensAndTheLastStays) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("first"), kFast).ok());
  auto id = AddSlot(repo_, repo_id_, master(), ByPassphrase("second"), kFast);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(*id, 2u);
  auto k = Unlock(repo_, repo_id_, ByPassphrase("second"));
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->slot_id, 2u);
  ASSERT_TRUE(RemoveSlot(repo_, repo_id_, 1).ok());
  EXPECT_EQ(Unlock(repo_, repo_id_, ByPassphrase("first")).status().code(), Code::kBadKey);
  EXPECT_TRUE(Unlock(repo_, repo_id_, ByPassphrase("second")).ok());
  Status last = RemoveSlot(repo_, repo_id_, 2);
  EXPECT_EQ(last.code(), Code::kInvalidArgument);
  EXPECT_NE(last.message().find("last slot"), std::string::npos) << last.message();
  EXPECT_EQ(RemoveSlot(repo_, repo_id_, 7).code(), Code::kInvalidArgument);
  // New ids continue after the highest.
  auto third = AddSlot(repo_, repo_id_, master(), ByPassphrase("third"), kFast);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, 3u);
}

TEST_F(KeyStoreTest, ChangedPassphraseReplacesTheOld) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("old"), kFast).ok());
  const std::string before = ReadText(SlotPath(1));
  ASSERT_TRUE(ChangePassphrase(repo_, repo_id_, master(), 1, ByPassphrase("new"), kFast).ok());
  EXPECT_NE(ReadText(SlotPath(1)), before);
  EXPECT_EQ(Unlock(repo_, repo_id_, ByPassphrase("old")).status().code(), Code::kBadKey);
  auto k = Unlock(repo_, repo_id_, ByPassphrase("new"));
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->slot_id, 1u);
  EXPECT_TRUE(SameMaster(*k));
  // No temporary file is left, and only passphrase slots change passphrase.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(repo_ + "/keys"),
                          std::filesystem::directory_iterator()),
            1);
  ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByKeyFile(dir_.path() + "/k"), kFast).ok());
  EXPECT_EQ(ChangePassphrase(repo_, repo_id_, master(), 2, ByPassphrase("x"), kFast).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(ChangePassphrase(repo_, repo_id_, master(), 1, ByKeyFile(dir_.path() + "/k"), kFast)
                .code(),
            Code::kInvalidArgument);
}

TEST_F(KeyStoreTest, SlotCopiedFromAnotherRepositoryIsRefused) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("mine"), kFast).ok());
  const std::string other = dir_.path() + "/other";
  const crypto::RepoId other_id = keystest::RandomRepoId();
  keystest::MakeRepoDir(other, other_id);
  ASSERT_TRUE(CreateFirstSlot(other, other_id, master(), ByPassphrase("theirs"), kFast).ok());
  // Copied as it is (under a free id): its repo_id and slot_id are not ours.
  std::filesystem::copy_file(other + "/keys/slot-00000001.json", SlotPath(2));
  auto k = Unlock(repo_, repo_id_, ByPassphrase("theirs"));
  EXPECT_EQ(k.status().code(), Code::kBadKey);
  EXPECT_NE(k.status().message().find("slot-00000002.json"), std::string::npos)
      << k.status().message();
  EXPECT_NE(k.status().message().find("another repository"), std::string::npos);
  // Relabelled to look like ours: the AAD binds the true repository and id.
  std::string json = ReadText(SlotPath(2));
  const std::string theirs = simd::ToHex(other_id.data(), other_id.size());
  json.replace(json.find(theirs), theirs.size(), simd::ToHex(repo_id_.data(), repo_id_.size()));
  json.replace(json.find("\"slot_id\":1"), 11, "\"slot_id\":2");
  WriteText(SlotPath(2), json);
  EXPECT_EQ(Unlock(repo_, repo_id_, ByPassphrase("theirs")).status().code(), Code::kBadKey);
  EXPECT_TRUE(Unlock(repo_, repo_id_, ByPassphrase("mine")).ok());
}

TEST_F(KeyStoreTest, DamagedSlotBesideAGoodOne) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("one"), kFast).ok());
  ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByPassphrase("two"), kFast).ok());
  std::string json = ReadText(SlotPath(1));
  WriteText(SlotPath(1), json.substr(0, json.size() / 2));  // torn
  auto k = Unlock(repo_, repo_id_, ByPassphrase("two"));
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_EQ(k->slot_id, 2u);
  // Nothing opens: the damaged file is named, the error is still a bad key
  // (slot 2 was there to try).
  auto bad = Unlock(repo_, repo_id_, ByPassphrase("one"));
  EXPECT_EQ(bad.status().code(), Code::kBadKey);
  EXPECT_NE(bad.status().message().find("keys/slot-00000001.json"), std::string::npos)
      << bad.status().message();
  // Listed with its damage; removable while slot 2 stays.
  auto list = ListSlots(repo_, repo_id_);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_FALSE((*list)[0].damage.empty());
  EXPECT_TRUE((*list)[1].damage.empty());
  EXPECT_EQ((*list)[1].scrypt.n, kFast.n);
  // With slot 2 gone too, only the damaged one could have opened: corruption.
  std::filesystem::remove(SlotPath(2));
  auto lost = Unlock(repo_, repo_id_, ByPassphrase("one"));
  EXPECT_EQ(lost.status().code(), Code::kCorruption);
  EXPECT_NE(lost.status().message().find("keys/slot-00000001.json"), std::string::npos);
}

TEST_F(KeyStoreTest, AtMostMaxSlotsTried) {
  // Eight slots under one passphrase, a ninth (written as a hostile
  // repository could) under another: the ninth is never tried.
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("a"), kFast).ok());
  for (uint32_t i = 2; i <= kMaxSlotsTried; ++i) {
    ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByPassphrase("a"), kFast).ok());
  }
  auto refused = AddSlot(repo_, repo_id_, master(), ByPassphrase("b"), kFast);
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  auto ninth = crypto::WrapWithPassphrase(master(), repo_id_, 9, "b", kFast);
  ASSERT_TRUE(ninth.ok());
  WriteText(SlotPath(9), crypto::KeySlotToJson(*ninth) + "\n");
  auto k = Unlock(repo_, repo_id_, ByPassphrase("b"));
  EXPECT_EQ(k.status().code(), Code::kBadKey);
  EXPECT_NE(k.status().message().find("only the first 8"), std::string::npos)
      << k.status().message();
  // Key-file slots are counted apart.
  ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByKeyFile(dir_.path() + "/k"), kFast).ok());
  EXPECT_TRUE(Unlock(repo_, repo_id_, ByKeyFile(dir_.path() + "/k")).ok());
  // With slot 1 gone, the ninth is among the first eight.
  ASSERT_TRUE(RemoveSlot(repo_, repo_id_, 1).ok());
  auto b = Unlock(repo_, repo_id_, ByPassphrase("b"));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->slot_id, 9u);
}

TEST_F(KeyStoreTest, ListShowsKindsAndParameters) {
  ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, master(), ByPassphrase("p"), kFast).ok());
  ASSERT_TRUE(AddSlot(repo_, repo_id_, master(), ByKeyFile(dir_.path() + "/k"), kFast).ok());
  WriteText(repo_ + "/keys/hash.key", "not a slot");  // other files are not slots
  auto list = ListSlots(repo_, repo_id_);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].slot_id, 1u);
  EXPECT_EQ((*list)[0].kind, crypto::SlotKind::kPassphrase);
  EXPECT_EQ((*list)[0].scrypt.r, 8u);
  EXPECT_EQ((*list)[0].file, "keys/slot-00000001.json");
  EXPECT_EQ((*list)[1].kind, crypto::SlotKind::kKeyFile);
  EXPECT_EQ((*list)[1].created.size(), 20u) << (*list)[1].created;
}

TEST_F(KeyStoreTest, PeekRepoId) {
  auto id = PeekRepoId(repo_);
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(*id, repo_id_);
  EXPECT_EQ(PeekRepoId(dir_.path()).status().code(), Code::kNotFound);
  WriteText(repo_ + "/config", "{\"repo_id\":\"12\"}\n");
  EXPECT_EQ(PeekRepoId(repo_).status().code(), Code::kCorruption);
}

TEST_F(KeyStoreTest, PaperFormRoundTrip) {
  const std::string form = PaperForm(master(), repo_id_);
  EXPECT_NE(form.find("repository " + simd::ToHex(repo_id_.data(), repo_id_.size())),
            std::string::npos);
  auto back = ParsePaperForm(form, repo_id_);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(std::equal(back->bytes().begin(), back->bytes().end(), master().bytes().begin()));
  // Upper case and extra spaces are fine.
  std::string loose = form;
  for (char& c : loose) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  loose = "dp420 recovery key v1" + loose.substr(loose.find('\n'));
  std::string fixed;
  for (size_t at = 0; at < loose.size();) {
    size_t end = loose.find('\n', at);
    std::string line = loose.substr(at, end - at);
    if (line.rfind("REPOSITORY", 0) == 0) line = "repository" + line.substr(10);
    if (line.rfind("CHECK", 0) == 0) line = "check" + line.substr(5);
    fixed += "  " + line + "  \n";
    at = end + 1;
  }
  EXPECT_TRUE(ParsePaperForm(fixed, repo_id_).ok()) << fixed;
  // Another repository's form is refused.
  EXPECT_EQ(ParsePaperForm(form, keystest::RandomRepoId()).status().code(),
            Code::kInvalidArgument);
}

// A fixed key and repository, so that what each typo meets is the same on
// every run (a line's check value is one byte: 1 typo in 256 passes it, and is
// then caught by the whole key's check instead).
TEST(PaperFormTest, EveryTypoIsRefusedAndMostNameTheirLine) {
  std::array<uint8_t, 32> bytes;
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(0x30 + 7 * i);
  const crypto::MasterKey master = crypto::MasterKey::FromBytes(bytes);
  crypto::RepoId repo_id;
  for (size_t i = 0; i < repo_id.size(); ++i) repo_id[i] = uint8_t(0xa0 + i);
  const std::string form = PaperForm(master, repo_id);
  auto parsed = ParsePaperForm(form, repo_id);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  int named = 0, by_whole_key = 0;
  for (int line = 1; line <= 4; ++line) {
    const size_t start = form.find("\n" + std::to_string(line) + ": ") + 4;
    for (size_t at = start; at < start + 19; ++at) {  // four groups of 4 digits and spaces
      if (form[at] == ' ') continue;
      for (char digit : std::string("0123456789abcdef")) {
        if (digit == form[at]) continue;
        std::string typo = form;
        typo[at] = digit;
        auto r = ParsePaperForm(typo, repo_id);
        ASSERT_EQ(r.status().code(), Code::kInvalidArgument) << "line " << line << " at " << at;
        const std::string& m = r.status().message();
        if (m.find("line " + std::to_string(line) + " of the key") != std::string::npos) {
          ++named;
        } else {
          EXPECT_NE(m.find("check value"), std::string::npos) << m;
          ++by_whole_key;
        }
      }
    }
  }
  EXPECT_EQ(named + by_whole_key, 4 * 16 * 15);
  EXPECT_GT(named, 4 * 16 * 15 * 9 / 10);  // about 255 in 256 name their line
  std::string missing = form;
  size_t at = missing.find("\n3: ");
  missing.erase(at, missing.find('\n', at + 1) - at);
  EXPECT_NE(ParsePaperForm(missing, repo_id).status().message().find("line 3"),
            std::string::npos);
}

}  // namespace
}  // namespace dp420
