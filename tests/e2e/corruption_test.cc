// Damage to a repository: verify --read-data finds and names it, restores of what it
// breaks fail without leaving a wrong target, and what it does not break still restores.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

struct Snap {
  std::string volume;
  std::string id;
  std::string sha256;
};

// Changes one hex digit of the manifest's checksum_sha256; the JSON stays valid.
void ChangeChecksumDigit(std::string* line) {
  size_t key = line->find("\"checksum_sha256\"");
  if (key == std::string::npos) Fail("no checksum_sha256 in the manifest line: " + *line);
  size_t quote = line->find('"', line->find(':', key) + 1);
  if (quote == std::string::npos || quote + 1 >= line->size()) Fail("unexpected manifest line");
  char& digit = (*line)[quote + 1];
  digit = digit == '0' ? '1' : '0';
}

// A repository with a volume "other" (backed up first, on its own) and a chain of three
// snapshots of an ext4 volume "vol".
class CorruptionTest : public testing::Test {
 protected:
  void SetUp() override {
    repo_ = InitRepo(dir_);
    std::string other = dir_ / "other.raw";
    WritePatternFile(other, 16 << 20, 21, 3);
    snaps_.push_back(Take("other", other));

    Ext4Volume vol = MakeExt4Volume(dir_, "vol", 128, 64, 8);
    vol_image_ = vol.image;
    std::vector<std::string> before = ListPacks(repo_);
    snaps_.push_back(Take("vol", vol.image));
    for (const auto& pack : ListPacks(repo_)) {
      if (!std::binary_search(before.begin(), before.end(), pack)) full_packs_.push_back(pack);
    }
    for (int seed : {31, 32}) {
      MutateExt4Volume(vol, dir_, seed, 2.0);
      before = ListPacks(repo_);
      snaps_.push_back(Take("vol", vol.image));
    }
    for (const auto& pack : ListPacks(repo_)) {
      if (!std::binary_search(before.begin(), before.end(), pack)) last_packs_.push_back(pack);
    }
  }

  Snap Take(const std::string& volume, const std::string& source) {
    Json j = Backup(repo_, volume, source);
    return Snap{volume, j.at("snapshot_id").get<std::string>(), Sha256File(source)};
  }

  const Snap& other() const { return snaps_[0]; }
  const Snap& s1() const { return snaps_[1]; }
  const Snap& s2() const { return snaps_[2]; }
  const Snap& s3() const { return snaps_[3]; }

  // The largest pack the full backup of "vol" wrote: it holds data records.
  std::string BiggestFullPack() {
    if (full_packs_.empty()) Fail("the full backup wrote no pack");
    return *std::max_element(full_packs_.begin(), full_packs_.end(),
                             [&](const std::string& a, const std::string& b) {
                               return FileSize(PackPath(a)) < FileSize(PackPath(b));
                             });
  }
  std::string PackPath(const std::string& name) const { return repo_ + "/packs/" + name; }

  Result VerifyReadData() { return Cli({"verify", "--repo", repo_, "--read-data"}); }
  Result Repair(const std::string& volume) {
    return Cli({"repair", "--repo", repo_, "--volume", volume, "--json"});
  }
  // After a repair: `s` is the volume's latest and restores exactly.
  void ExpectLatestIs(const Snap& s) {
    std::string target = dir_ / "latest.img";
    std::filesystem::remove(target);
    Result r = Restore(repo_, s.volume, "latest", target);
    DP420_EXPECT_EXIT(r, kExitOk);
    if (r.exit_code == kExitOk) {
      EXPECT_EQ(Sha256File(target), s.sha256);
    }
    std::filesystem::remove(target);
  }

  // A failed restore must not leave a target behind; a good one must be exact.
  void ExpectRestoreFails(const Snap& s, int exit_code) {
    std::string target = dir_ / ("restore-" + s.id + ".img");
    Result r = Restore(repo_, s.volume, s.id, target);
    EXPECT_EQ(r.exit_code, exit_code) << "restore of broken snapshot " << s.id << "\n"
                                      << r.Describe();
    EXPECT_FALSE(Exists(target)) << "a failed restore left " << target;
  }
  void ExpectRestoresExactly(const Snap& s) {
    std::string target = dir_ / ("restore-" + s.id + ".img");
    Result r = Restore(repo_, s.volume, s.id, target);
    EXPECT_EQ(r.exit_code, kExitOk) << "restore of intact snapshot " << s.id << "\n"
                                    << r.Describe();
    if (r.exit_code == kExitOk) {
      EXPECT_EQ(Sha256File(target), s.sha256) << "snapshot " << s.id;
    }
    std::filesystem::remove(target);
  }
  // Every snapshot verify names must fail to restore, every other must restore exactly.
  void ExpectRestoresAgreeWithVerify(const Result& verify) {
    for (const auto& s : snaps_) {
      SCOPED_TRACE("snapshot " + s.id + " of " + s.volume);
      if (Mentions(verify, s.id)) {
        ExpectRestoreFails(s, kExitDamage);
      } else {
        ExpectRestoresExactly(s);
      }
    }
  }

  TempDir dir_;
  std::string repo_;
  std::vector<Snap> snaps_;
  std::vector<std::string> full_packs_;
  std::vector<std::string> last_packs_;  // written by s3
  std::string vol_image_;
};

TEST_F(CorruptionTest, FlippedBitInDataRecordIsFoundAndNamed) {
  std::string pack = BiggestFullPack();
  ASSERT_GT(FileSize(PackPath(pack)), 3u * 4096) << pack;
  FlipBit(PackPath(pack), 4096 + 2048 + 5, 3);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, "packs/" + pack)) << "names the damaged pack\n" << verify.Describe();
  EXPECT_TRUE(Mentions(verify, s1().id)) << "names the snapshot it breaks\n" << verify.Describe();
  EXPECT_FALSE(Mentions(verify, other().id)) << "\"other\" does not use that pack\n"
                                             << verify.Describe();
  Result verify_other = Cli({"verify", "--repo", repo_, "--volume", "other", "--read-data"});
  DP420_EXPECT_EXIT(verify_other, kExitOk);
  ExpectRestoresAgreeWithVerify(verify);
}

TEST_F(CorruptionTest, TruncatedPackIsFoundAndNamed) {
  std::string pack = BiggestFullPack();
  uint64_t size = FileSize(PackPath(pack));
  Truncate(PackPath(pack), size / 2);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, "packs/" + pack)) << verify.Describe();
  EXPECT_TRUE(Mentions(verify, s1().id)) << verify.Describe();
  EXPECT_FALSE(Mentions(verify, other().id)) << verify.Describe();
  ExpectRestoresAgreeWithVerify(verify);
}

TEST_F(CorruptionTest, DeletedManifestIsFoundAndNamed) {
  std::string manifest = FindManifest(repo_, "vol", s2().id);
  ASSERT_FALSE(manifest.empty()) << "no manifest for " << s2().id;
  std::filesystem::remove(manifest);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, s2().id)) << "the next snapshot's parent is gone; verify names it\n"
                                         << verify.Describe();
  ExpectRestoreFails(s2(), kExitNotFound);
  ExpectRestoresExactly(s1());
  ExpectRestoresExactly(other());
}

TEST_F(CorruptionTest, EditedManifestIsFoundAndNamed) {
  std::string manifest = FindManifest(repo_, "vol", s2().id);
  ASSERT_FALSE(manifest.empty());
  EditSignedFile(repo_, manifest, ChangeChecksumDigit, Reseal::kKeep);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  std::string name = std::filesystem::path(manifest).filename().string();
  EXPECT_TRUE(Mentions(verify, name)) << "names the manifest file\n" << verify.Describe();
  EXPECT_TRUE(Mentions(verify, s2().id)) << verify.Describe();
  EXPECT_FALSE(Mentions(verify, other().id)) << verify.Describe();
  ExpectRestoreFails(s2(), kExitDamage);
  ExpectRestoresExactly(s1());
  ExpectRestoresExactly(other());
}

// Whoever stole the repository key can seal a lie: only the data proves it.
TEST_F(CorruptionTest, ManifestResealedWithTheStolenKeyIsFoundByReadingData) {
  std::string manifest = FindManifest(repo_, "vol", s2().id);
  ASSERT_FALSE(manifest.empty());
  EditSignedFile(repo_, manifest, ChangeChecksumDigit, Reseal::kRepositoryKey);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, s2().id)) << verify.Describe();
  EXPECT_FALSE(Mentions(verify, other().id)) << verify.Describe();
  ExpectRestoreFails(s2(), kExitDamage);
  ExpectRestoresExactly(s1());
  ExpectRestoresExactly(other());
}

// Without the key, an edited manifest cannot be sealed again: the bare SHA-256
// that format 1 used is refused as a forgery.
TEST_F(CorruptionTest, ManifestForgedWithoutTheKeyIsRefused) {
  std::string manifest = FindManifest(repo_, "vol", s2().id);
  ASSERT_FALSE(manifest.empty());
  EditSignedFile(repo_, manifest, ChangeChecksumDigit, Reseal::kBareSha256);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, s2().id)) << verify.Describe();
  EXPECT_TRUE(Mentions(verify, "bare SHA-256")) << verify.Describe();
  ExpectRestoreFails(s2(), kExitDamage);
  ExpectRestoresExactly(s1());
  ExpectRestoresExactly(other());
}

// Deleting the newest manifest must not quietly make the one before it "latest".
TEST_F(CorruptionTest, DeletedNewestManifestIsFoundAndLatestRefused) {
  std::string manifest = FindManifest(repo_, "vol", s3().id);
  ASSERT_FALSE(manifest.empty());
  std::filesystem::remove(manifest);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, s3().id)) << verify.Describe();
  EXPECT_TRUE(Mentions(verify, "missing")) << verify.Describe();
  Result latest = Restore(repo_, "vol", "latest", dir_ / "latest.img");
  DP420_EXPECT_EXIT(latest, kExitDamage);
  EXPECT_FALSE(Exists(dir_ / "latest.img"));
  DP420_EXPECT_EXIT(Cli({"backup", "--repo", repo_, "--volume", "vol", vol_image_}), kExitDamage);
  ExpectRestoresExactly(s2());
  ExpectRestoresExactly(other());

  Result dry = Cli({"repair", "--repo", repo_, "--volume", "vol", "--dry-run", "--json"});
  DP420_EXPECT_EXIT(dry, kExitOk);
  DP420_EXPECT_EXIT(Restore(repo_, "vol", "latest", dir_ / "latest.img"), kExitDamage);
  Result repaired = Repair("vol");
  DP420_EXPECT_EXIT(repaired, kExitOk);
  Json report = Json::parse(repaired.out);
  EXPECT_EQ(report["newest"]["snapshot_id"], s2().id) << repaired.Describe();
  EXPECT_TRUE(report["head_rewritten"].get<bool>());
  ExpectLatestIs(s2());
  DP420_EXPECT_EXIT(Cli({"backup", "--repo", repo_, "--volume", "vol", vol_image_}), kExitOk);
  DP420_EXPECT_EXIT(VerifyReadData(), kExitOk);
}

// The seed's "metadata ahead of data": the newest snapshot's packs are gone.
// Repair rolls the volume back to the snapshot the data still supports and
// keeps the orphaned manifest in quarantine, not deleted.
TEST_F(CorruptionTest, NewestWhosePacksAreGoneIsRepairedToTheOneBefore) {
  ASSERT_FALSE(last_packs_.empty());
  for (const auto& pack : last_packs_) std::filesystem::remove(PackPath(pack));
  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, s3().id)) << verify.Describe();

  Result repaired = Repair("vol");
  DP420_EXPECT_EXIT(repaired, kExitOk);
  Json report = Json::parse(repaired.out);
  EXPECT_EQ(report["newest"]["snapshot_id"], s2().id) << repaired.Describe();
  ASSERT_EQ(report["quarantined"].size(), 1u) << repaired.Describe();
  std::string kept = repo_ + "/" + report["quarantine_dir"].get<std::string>();
  EXPECT_TRUE(Exists(kept + "/" + std::filesystem::path(
                                         report["quarantined"][0]["file"].get<std::string>())
                                         .filename()
                                         .string()));
  ExpectLatestIs(s2());
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo_, "--volume", "vol", "--read-data"}), kExitOk);
  DP420_EXPECT_EXIT(Cli({"backup", "--repo", repo_, "--volume", "vol", vol_image_}), kExitOk);
}

// The whole folder of a volume put back as it was, head included: only the
// anchor this machine keeps can tell, and it does; removing the anchor (what
// the message says to do after a deliberate restore of the repository) accepts
// the older state.
TEST_F(CorruptionTest, SnapshotsFolderPutBackAsItWasIsFound) {
  std::filesystem::path folder = std::filesystem::path(repo_) / "snapshots" / "vol";
  std::filesystem::path saved = dir_ / "saved-vol";
  std::filesystem::copy(folder, saved, std::filesystem::copy_options::recursive);
  Json newer = Backup(repo_, "vol", vol_image_);
  std::filesystem::remove_all(folder);
  std::filesystem::copy(saved, folder, std::filesystem::copy_options::recursive);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, "rolled back")) << verify.Describe();
  DP420_EXPECT_EXIT(Restore(repo_, "vol", "latest", dir_ / "latest.img"), kExitDamage);
  DP420_EXPECT_EXIT(Cli({"backup", "--repo", repo_, "--volume", "vol", vol_image_}), kExitDamage);

  std::string text = verify.All();
  size_t at = text.find("remove /");
  ASSERT_NE(at, std::string::npos) << verify.Describe();
  std::string anchor = text.substr(at + 7, text.find_first_of("\"\n ;", at + 7) - at - 7);
  ASSERT_TRUE(std::filesystem::remove(anchor)) << anchor;
  DP420_EXPECT_EXIT(VerifyReadData(), kExitOk);
  Result latest = Restore(repo_, "vol", "latest", dir_ / "latest.img");
  DP420_EXPECT_EXIT(latest, kExitOk);
  EXPECT_EQ(Sha256File(dir_ / "latest.img"), s3().sha256);
}

// A holder of the key writes a second snapshot 3: the history forked.
TEST_F(CorruptionTest, ForkedHistoryIsFound) {
  std::string manifest = FindManifest(repo_, "vol", s3().id);
  ASSERT_FALSE(manifest.empty());
  std::string twin_id = "feedfacefeedface";
  std::string twin = manifest.substr(0, manifest.size() - 25) + twin_id + ".manifest";
  std::filesystem::copy_file(manifest, twin);
  EditSignedFile(repo_, twin, [&](std::string* line) {
    size_t at = line->find(s3().id);
    ASSERT_NE(at, std::string::npos);
    line->replace(at, s3().id.size(), twin_id);
  }, Reseal::kRepositoryKey);

  Result verify = VerifyReadData();
  DP420_EXPECT_EXIT(verify, kExitDamage);
  EXPECT_TRUE(Mentions(verify, "fork")) << verify.Describe();
  EXPECT_TRUE(Mentions(verify, twin_id)) << verify.Describe();
  DP420_EXPECT_EXIT(Restore(repo_, "vol", "latest", dir_ / "latest.img"), kExitDamage);
  ExpectRestoresExactly(s2());

  Result repaired = Repair("vol");
  DP420_EXPECT_EXIT(repaired, kExitOk);
  Json report = Json::parse(repaired.out);
  EXPECT_EQ(report["newest"]["snapshot_id"], s3().id) << "the head's side of the fork stays";
  ASSERT_EQ(report["quarantined"].size(), 1u) << repaired.Describe();
  EXPECT_NE(report["quarantined"][0]["file"].get<std::string>().find(twin_id), std::string::npos);
  ExpectLatestIs(s3());
  DP420_EXPECT_EXIT(VerifyReadData(), kExitOk);
}

}  // namespace
}  // namespace dp420::e2e
