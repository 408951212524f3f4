// A volume's history (engine/core/history.h) and the format-1 upgrade
// (engine/core/upgrade.h): the newest snapshot follows the head and chain, a
// crash between manifest and head loses nothing, a damaged older snapshot
// blocks nothing, and a repository written with unkeyed seals is upgraded
// only after its old seals and chain check out.
#include "engine/core/history.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/upgrade.h"
#include "engine/core/verify.h"
#include "io/file.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::MakeVolume;
using testing::TempDir;
using testing::WriteAll;

class HistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Anchors of this test stay in its own folder.
    setenv("DP420_STATE_DIR", (dir_.path() + "/state").c_str(), 1);
    repo_path_ = dir_.path() + "/repo";
    repo_ = testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    source_ = dir_.path() + "/source.img";
    for (uint32_t seed : {1u, 2u, 3u}) {
      WriteAll(source_, MakeVolume(1 << 20, seed));
      ASSERT_NO_FATAL_FAILURE(Backup());
    }
    ASSERT_TRUE(repo_->ListManifests("vm1", &manifests_, nullptr).ok());
    ASSERT_EQ(manifests_.size(), 3u);
  }

  void Backup() {
    BackupOptions o;
    o.volume = "vm1";
    o.source_path = source_;
    o.block_size = 65536;
    o.threads = 2;
    auto r = RunBackup(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  std::string Latest() {
    auto m = repo_->FindSnapshot("vm1", "latest");
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? m->snapshot_id : "";
  }

  std::string PathOf(const Manifest& m) { return repo_->SnapshotsDir("vm1") + "/" + m.file_name; }

  // Rewrites the config as format 1 wrote it: format_version 1, a plain seal.
  void ConfigAsFormat1() {
    auto text = io::ReadFile(repo_path_ + "/config");
    ASSERT_TRUE(text.ok());
    auto config = UnsealJson(*text, "config", &repo_->seal_key());
    ASSERT_TRUE(config.ok());
    (*config)["format_version"] = 1;
    ASSERT_TRUE(io::WriteFileAtomic(repo_path_ + "/config", SealJsonPlain(*config)).ok());
  }

  // Turns the repository into what format 1 wrote: plain seals chained by
  // plain seals, no heads, format_version 1; and forgets this machine's anchors.
  void MakeFormat1() {
    std::string parent_seal;
    for (const auto& m : manifests_) {
      Json j = m.ToJson();
      j["format_version"] = 1;
      if (!m.parent.empty()) j["parent_manifest_sha256"] = parent_seal;
      ASSERT_TRUE(io::WriteFileAtomic(PathOf(m), SealJsonPlain(j, &parent_seal)).ok());
    }
    ASSERT_EQ(unlink((repo_->SnapshotsDir("vm1") + "/HEAD").c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(ConfigAsFormat1());
    std::filesystem::remove_all(AnchorDir(*repo_));
  }

  TempDir dir_;
  std::string repo_path_;
  std::unique_ptr<Repository> repo_;
  std::string source_;
  std::vector<Manifest> manifests_;
};

TEST_F(HistoryTest, HeadNamesTheNewestAndEveryBackupRaisesItsGeneration) {
  auto head = ReadHead(*repo_, "vm1");
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->generation, 3u);
  EXPECT_EQ(head->snapshot_id, manifests_[2].snapshot_id);
  EXPECT_EQ(head->seal, manifests_[2].seal);
  EXPECT_EQ(Latest(), manifests_[2].snapshot_id);
  auto h = LoadHistory(*repo_, "vm1");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->problems.empty());
  EXPECT_EQ(h->anchor.generation, 3u) << "this machine anchored what it wrote";
}

// A crash between a manifest's rename and the head's write leaves the head one
// snapshot behind: the newest is still found by descent from it.
TEST_F(HistoryTest, HeadLeftBehindStillFindsTheNewestByDescent) {
  ASSERT_TRUE(AdvanceHead(*repo_, "vm1", &manifests_[0]).ok());
  EXPECT_EQ(Latest(), manifests_[2].snapshot_id);
  ASSERT_NO_FATAL_FAILURE(Backup());
  auto head = ReadHead(*repo_, "vm1");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->sequence, 4u) << "the next backup built on the newest, not the head's";
}

// One damaged older manifest leaves the volume usable: latest, backups and
// the other snapshots; it is listed as damaged, never omitted.
TEST_F(HistoryTest, DamagedOlderManifestBlocksNothingAndIsListed) {
  std::string path = PathOf(manifests_[0]);
  auto text = io::ReadFile(path);
  ASSERT_TRUE(text.ok());
  std::string bad = *text;
  bad[10] ^= 1;
  ASSERT_TRUE(io::WriteFileAtomic(path, bad).ok());
  EXPECT_EQ(Latest(), manifests_[2].snapshot_id);
  ASSERT_NO_FATAL_FAILURE(Backup());
  std::vector<Manifest> list;
  std::vector<DamagedFile> damaged;
  ASSERT_TRUE(repo_->ListManifests("vm1", &list, &damaged).ok());
  EXPECT_EQ(list.size(), 3u);
  ASSERT_EQ(damaged.size(), 1u);
  EXPECT_NE(damaged[0].path.find(manifests_[0].snapshot_id), std::string::npos);
  auto second = repo_->FindSnapshot("vm1", manifests_[1].snapshot_id);
  EXPECT_TRUE(second.ok()) << second.status().ToString();
}

TEST_F(HistoryTest, DeletedHeadIsAProblemNotAGuess) {
  ASSERT_EQ(unlink((repo_->SnapshotsDir("vm1") + "/HEAD").c_str()), 0);
  auto latest = repo_->FindSnapshot("vm1", "latest");
  ASSERT_FALSE(latest.ok());
  EXPECT_EQ(latest.status().code(), Code::kCorruption);
  EXPECT_NE(latest.status().message().find("HEAD is missing"), std::string::npos)
      << latest.status().message();
}

TEST_F(HistoryTest, Format1RepositoryIsRefusedThenUpgradedIntact) {
  ASSERT_NO_FATAL_FAILURE(MakeFormat1());
  auto old = Repository::Open(repo_path_);
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.status().code(), Code::kVersion);
  EXPECT_NE(old.status().message().find("dp420 upgrade"), std::string::npos);

  auto r = UpgradeRepository(repo_path_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->from_version, 1u);
  EXPECT_EQ(r->manifests_resealed, 3u);
  auto opened = Repository::Open(repo_path_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  repo_ = std::move(opened).value();
  EXPECT_EQ(Latest(), manifests_[2].snapshot_id);
  VerifyOptions vo;
  vo.read_data = true;
  auto report = RunVerify(*repo_, vo);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty()) << report->problems[0].message;
  auto again = UpgradeRepository(repo_path_);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->from_version, kRepoFormatVersion);
  EXPECT_EQ(again->manifests_resealed, 0u);
}

// An upgrade checks every old seal and link before it re-seals anything.
TEST_F(HistoryTest, UpgradeRefusesABrokenFormat1Chain) {
  ASSERT_NO_FATAL_FAILURE(MakeFormat1());
  auto text = io::ReadFile(PathOf(manifests_[1]));
  ASSERT_TRUE(text.ok());
  std::string bad = *text;
  bad[bad.find("\"blocks_zero\"") + 15] ^= 1;  // an edit that keeps the old seal line
  ASSERT_TRUE(io::WriteFileAtomic(PathOf(manifests_[1]), bad).ok());
  auto r = UpgradeRepository(repo_path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_EQ(Repository::Open(repo_path_).status().code(), Code::kVersion)
      << "a failed upgrade leaves the config at format 1";
}

// Someone who can write the repository but not read its key puts the config
// back to format 1 and plants a plain-sealed manifest, hoping an upgrade
// would seal it: the upgrade leaves anchored, headed volumes alone and every
// reader refuses the planted file.
TEST_F(HistoryTest, DowngradedConfigCannotLaunderAForgedManifest) {
  ASSERT_NO_FATAL_FAILURE(ConfigAsFormat1());
  Json forged = manifests_[2].ToJson();
  forged["snapshot_id"] = "feedfacefeedface";
  forged["sequence"] = 4;
  forged["parent"] = manifests_[2].snapshot_id;
  forged["parent_manifest_sha256"] = manifests_[2].seal;
  std::string forged_path = repo_->SnapshotsDir("vm1") + "/0000000004-feedfacefeedface.manifest";
  ASSERT_TRUE(io::WriteFileAtomic(forged_path, SealJsonPlain(forged)).ok());

  auto r = UpgradeRepository(repo_path_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->manifests_resealed, 0u);
  auto opened = Repository::Open(repo_path_);
  ASSERT_TRUE(opened.ok());
  repo_ = std::move(opened).value();
  EXPECT_EQ(Latest(), manifests_[2].snapshot_id);
  auto forged_read = repo_->FindSnapshot("vm1", "feedface");
  ASSERT_FALSE(forged_read.ok());
  EXPECT_NE(forged_read.status().message().find("bare SHA-256"), std::string::npos);
}

}  // namespace
}  // namespace dp420
