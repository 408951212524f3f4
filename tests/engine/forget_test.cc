// Forget and protect (engine/core/forget.h, links.h): the snapshot hash chain
// survives forgetting, the newest and protected snapshots stay, and what an
// attacker or a crash does to links, forgotten manifests or the snapshots
// folder is seen.
#include "engine/core/forget.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/history.h"
#include "engine/core/links.h"
#include "engine/core/restore.h"
#include "engine/core/test_hooks.h"
#include "engine/core/verify.h"
#include "io/file.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

namespace fs = std::filesystem;
using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

constexpr int kSnapshots = 6;

class ForgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("DP420_STATE_DIR", (dir_.path() + "/state").c_str(), 1);
    repo_ = testing::NewRepository(dir_.path() + "/repo");
    ASSERT_NE(repo_, nullptr);
    source_ = dir_.path() + "/source.img";
    std::vector<uint8_t> volume = MakeVolume(2 << 20, 7);  // 32 blocks: snapshot i changes 3i, 3i+1
    for (int i = 0; i < kSnapshots; ++i) {
      for (size_t b = 0; b < 2; ++b) volume[(i * 3 + b) * 65536 + 100] ^= 0x5a;
      WriteAll(source_, volume);
      images_.push_back(volume);
      ASSERT_NO_FATAL_FAILURE(Backup());
    }
    ids_ = Ids();
    ASSERT_EQ(ids_.size(), size_t(kSnapshots));
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

  // Ids of the listed snapshots, oldest first.
  std::vector<std::string> Ids() {
    std::vector<Manifest> list;
    EXPECT_TRUE(repo_->ListManifests("vm1", &list, nullptr).ok());
    std::vector<std::string> ids;
    for (const auto& m : list) ids.push_back(m.snapshot_id);
    return ids;
  }

  ForgetReport Forget(ForgetOptions o) {
    o.volume = "vm1";
    auto r = RunForget(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : ForgetReport{};
  }

  ForgetReport ForgetIds(const std::vector<std::string>& ids) {
    ForgetOptions o;
    o.snapshots = ids;
    return Forget(o);
  }

  VerifyReport Verify() {
    VerifyOptions o;
    o.read_data = true;
    auto r = RunVerify(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : VerifyReport{};
  }

  static std::string Problems(const VerifyReport& r) {
    std::string all;
    for (const auto& p : r.problems) all += p.object + ": " + p.message + "\n";
    return all;
  }

  // Restores snapshot `index` (0 = oldest of SetUp) and compares it.
  void ExpectRestores(int index) {
    RestoreOptions o;
    o.volume = "vm1";
    o.snapshot = ids_[index];
    o.target_path = dir_.path() + "/restored-" + std::to_string(index);
    auto r = RunRestore(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(ReadAll(o.target_path) == images_[index]) << "snapshot " << index;
  }

  std::string Dir() { return repo_->SnapshotsDir("vm1"); }
  std::string ManifestPath(int index) {
    auto m = repo_->FindSnapshot("vm1", ids_[index]);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return Dir() + "/" + (m.ok() ? m->file_name : "");
  }

  TempDir dir_;
  std::unique_ptr<Repository> repo_;
  std::string source_;
  std::vector<std::vector<uint8_t>> images_;
  std::vector<std::string> ids_;
};

TEST_F(ForgetTest, PolicyKeepsTheNewestAndTheChainVerifiesClean) {
  ForgetOptions o;
  o.policy.last = 2;
  ForgetReport r = Forget(o);
  EXPECT_EQ(r.forgotten, 4u);
  EXPECT_EQ(r.kept, 2u);
  EXPECT_EQ(r.links_written, 1u);
  ASSERT_EQ(r.items.size(), size_t(kSnapshots));
  EXPECT_EQ(r.items[0].snapshot_id, ids_[5]);  // newest first
  EXPECT_TRUE(r.items[0].keep);
  EXPECT_EQ(r.items[0].reasons, std::vector<std::string>{"last"});
  EXPECT_FALSE(r.items[2].keep);
  EXPECT_EQ(Ids(), (std::vector<std::string>{ids_[4], ids_[5]}));
  VerifyReport v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
  EXPECT_EQ(v.snapshots_checked, 2u);
  ExpectRestores(4);
  ExpectRestores(5);
  EXPECT_EQ(repo_->FindSnapshot("vm1", "latest")->snapshot_id, ids_[5]);
  // The history goes on from the newest: an incremental, and a clean chain.
  ASSERT_NO_FATAL_FAILURE(Backup());
  auto newest = repo_->FindSnapshot("vm1", "latest");
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->parent, ids_[5]);
  EXPECT_EQ(newest->sequence, uint64_t(kSnapshots + 1));
  v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
}

TEST_F(ForgetTest, GapsInTheMiddleAreLinkedAndLinksGrowBackwards) {
  ForgetReport r = ForgetIds({ids_[1], ids_[2].substr(0, 6)});  // a prefix too
  EXPECT_EQ(r.forgotten, 2u);
  EXPECT_EQ(r.links_written, 1u);
  auto m3 = repo_->FindSnapshot("vm1", ids_[3]);
  ASSERT_TRUE(m3.ok());
  EXPECT_TRUE(m3->linked);
  EXPECT_EQ(m3->chain_parent, ids_[0]);
  EXPECT_EQ(m3->parent, ids_[2]);  // the manifest itself is never rewritten
  VerifyReport v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
  // Forgetting the kept ancestor too moves the link back to "none kept".
  r = ForgetIds({ids_[0]});
  EXPECT_EQ(r.links_written, 1u);
  m3 = repo_->FindSnapshot("vm1", ids_[3]);
  ASSERT_TRUE(m3.ok());
  EXPECT_TRUE(m3->chain_parent.empty());
  v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
  for (int i : {3, 4, 5}) ExpectRestores(i);
  // Forgetting the linked snapshot itself: the next one is linked instead,
  // and the old link is not left behind.
  r = ForgetIds({ids_[3]});
  EXPECT_EQ(r.links_written, 1u);
  EXPECT_FALSE(testing::Exists(Dir() + "/" + LinkFileName(4, ids_[3])));
  EXPECT_EQ(Ids(), (std::vector<std::string>{ids_[4], ids_[5]}));
  v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
}

TEST_F(ForgetTest, NewestAndProtectedAreKept) {
  auto refused = RunForget(*repo_, [&] {
    ForgetOptions o;
    o.volume = "vm1";
    o.snapshots = {ids_[5]};
    return o;
  }());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kExists);
  EXPECT_NE(refused.status().message().find("newest"), std::string::npos);

  auto id = SetProtected(*repo_, "vm1", ids_[1].substr(0, 5), true, std::chrono::seconds(1));
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id.value(), ids_[1]);
  refused = RunForget(*repo_, [&] {
    ForgetOptions o;
    o.volume = "vm1";
    o.snapshots = {ids_[1]};
    return o;
  }());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("protected"), std::string::npos);

  ForgetOptions o;
  o.policy.last = 1;
  ForgetReport r = Forget(o);
  EXPECT_EQ(Ids(), (std::vector<std::string>{ids_[1], ids_[5]}));
  bool saw = false;
  for (const auto& it : r.items) {
    if (it.snapshot_id != ids_[1]) continue;
    saw = true;
    EXPECT_TRUE(it.keep && it.is_protected);
    EXPECT_EQ(it.reasons, std::vector<std::string>{"protected"});
  }
  EXPECT_TRUE(saw);
  VerifyReport v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
  ExpectRestores(1);
  // Unprotected, the policy forgets it.
  ASSERT_TRUE(SetProtected(*repo_, "vm1", ids_[1], false, std::chrono::seconds(1)).ok());
  Forget(o);
  EXPECT_EQ(Ids(), (std::vector<std::string>{ids_[5]}));
  v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
}

TEST_F(ForgetTest, NoRuleAndDryRunChangeNothing) {
  std::vector<std::string> before = io::ListDir(Dir());
  ForgetOptions none;
  none.volume = "vm1";
  auto refused = RunForget(*repo_, none);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  ForgetOptions dry;
  dry.policy.last = 1;
  dry.dry_run = true;
  ForgetReport r = Forget(dry);
  EXPECT_EQ(r.forgotten, 5u);
  EXPECT_EQ(io::ListDir(Dir()), before);
  auto head_before = ReadHead(*repo_, "vm1");
  ASSERT_TRUE(head_before.ok());
  EXPECT_EQ(head_before->generation, uint64_t(kSnapshots));
}

TEST_F(ForgetTest, DeletedOrForgedLinkBreaksTheKeptSnapshot) {
  ForgetIds({ids_[2]});
  std::string link = Dir() + "/" + LinkFileName(4, ids_[3]);
  ASSERT_TRUE(testing::Exists(link));
  std::string sealed = io::ReadFile(link).value();

  // Deleted: the kept snapshot's parent is missing.
  ASSERT_EQ(unlink(link.c_str()), 0);
  VerifyReport v = Verify();
  ASSERT_FALSE(v.problems.empty());
  EXPECT_NE(Problems(v).find("is missing"), std::string::npos) << Problems(v);
  EXPECT_TRUE(std::count(v.broken_snapshots.begin(), v.broken_snapshots.end(), ids_[3]));

  // Edited without the key: the seal fails, and the snapshot is still broken.
  std::string edited = sealed;
  size_t at = edited.find("\"forgotten\":1");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, 13, "\"forgotten\":2");
  ASSERT_TRUE(io::WriteFileAtomic(link, edited).ok());
  v = Verify();
  EXPECT_NE(Problems(v).find("seal"), std::string::npos) << Problems(v);
  EXPECT_TRUE(std::count(v.broken_snapshots.begin(), v.broken_snapshots.end(), ids_[3]));

  // A genuine link moved to another snapshot does not belong to it.
  ASSERT_TRUE(io::WriteFileAtomic(link, sealed).ok());
  EXPECT_TRUE(Verify().problems.empty());
  std::string moved = Dir() + "/" + LinkFileName(5, ids_[4]);
  ASSERT_EQ(rename(link.c_str(), moved.c_str()), 0);
  v = Verify();
  EXPECT_NE(Problems(v).find("does not match its content"), std::string::npos) << Problems(v);
}

TEST_F(ForgetTest, RolledBackSnapshotsFolderIsSeenAfterForget) {
  std::string saved = dir_.path() + "/saved-snapshots";
  fs::copy(Dir(), saved, fs::copy_options::recursive);
  ForgetIds({ids_[0], ids_[1]});
  // Someone puts the folder back as it was before the forget.
  fs::remove_all(Dir());
  fs::copy(saved, Dir(), fs::copy_options::recursive);
  auto h = LoadHistory(*repo_, "vm1");
  ASSERT_TRUE(h.ok());
  ASSERT_FALSE(h->problems.empty());
  EXPECT_NE(h->problems[0].find("rolled back"), std::string::npos) << h->problems[0];
  EXPECT_FALSE(repo_->FindSnapshot("vm1", "latest").ok());
}

TEST_F(ForgetTest, ForgottenManifestPutBackStaysForgottenAndIsCleanedUp) {
  std::string path = ManifestPath(1);
  std::string text = io::ReadFile(path).value();
  ForgetIds({ids_[1]});
  ASSERT_TRUE(io::WriteFileAtomic(path, text).ok());  // a forget killed before its delete
  EXPECT_EQ(Ids().size(), size_t(kSnapshots - 1));
  VerifyReport v = Verify();
  EXPECT_TRUE(v.problems.empty()) << Problems(v);
  ForgetOptions o;
  o.policy.last = -1;  // keeps everything, removes what was left
  ForgetReport r = Forget(o);
  EXPECT_EQ(r.forgotten, 0u);
  EXPECT_EQ(r.leftovers_removed, 1u);
  EXPECT_FALSE(testing::Exists(path));
}

TEST_F(ForgetTest, DamagedOrBrokenHistoryIsRefusedUnchanged) {
  std::vector<std::string> before = io::ListDir(Dir());
  // A manifest deleted by hand: forget must not link across a gap it never saw.
  std::string path = ManifestPath(2);
  std::string text = io::ReadFile(path).value();
  ASSERT_EQ(unlink(path.c_str()), 0);
  ForgetOptions o;
  o.volume = "vm1";
  o.policy.last = 1;
  auto r = RunForget(*repo_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("chain is broken"), std::string::npos)
      << r.status().ToString();
  // A damaged manifest: refused, naming it.
  ASSERT_TRUE(io::WriteFileAtomic(path, text + "x").ok());
  r = RunForget(*repo_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("damaged"), std::string::npos) << r.status().ToString();
  ASSERT_TRUE(io::WriteFileAtomic(path, text).ok());
  EXPECT_EQ(io::ListDir(Dir()), before);
}

TEST_F(ForgetTest, EveryVolumeAtOnceReportsTheOneItCannotChange) {
  BackupOptions b;
  b.volume = "vm2";
  b.source_path = source_;
  b.block_size = 65536;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(RunBackup(*repo_, b).ok());
  // vm2 loses its head: its history cannot be trusted.
  ASSERT_EQ(unlink((repo_->SnapshotsDir("vm2") + "/HEAD").c_str()), 0);
  ForgetOptions o;
  o.policy.last = 1;
  auto r = RunForget(*repo_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].volume, "vm2");
  EXPECT_EQ(Ids(), std::vector<std::string>{ids_[5]});
  std::vector<Manifest> vm2;
  ASSERT_TRUE(repo_->ListManifests("vm2", &vm2, nullptr).ok());
  EXPECT_EQ(vm2.size(), 3u);
}

// A reader lists a volume while forget removes a snapshot from it: the
// listing is one state of the volume, in which each snapshot's parent is
// listed too. The forget runs at the worst moment: after the reader read the
// manifests and listed the folder, before it read the links (it once made a
// kept snapshot's parent look deleted to a verify running beside a forget).
TEST_F(ForgetTest, AListingDuringAForgetIsOneStateOfTheVolume) {
  ForgetIds({ids_[3]});  // ids_[4] has a link now: its parent is ids_[2]
  bool forgot = false;
  SetPausePointHookForTest([&](const char* point) {
    if (forgot || std::string(point) != "links-listed") return;
    forgot = true;  // the forget lists the volume too: only the first time
    ForgetIds({ids_[4]});  // writes ids_[5]'s link, deletes ids_[4] and its link
  });
  std::vector<Manifest> list;
  Status listed = repo_->ListManifests("vm1", &list, nullptr);
  SetPausePointHookForTest(nullptr);
  ASSERT_TRUE(listed.ok()) << listed.ToString();
  ASSERT_TRUE(forgot);
  std::set<std::string> ids;
  for (const auto& m : list) ids.insert(m.snapshot_id);
  EXPECT_EQ(ids.count(ids_[4]), 0u) << "a forgotten snapshot is listed";
  for (size_t i = 1; i < list.size(); ++i) {
    EXPECT_EQ(ids.count(list[i].chain_parent), 1u)
        << list[i].snapshot_id << "'s parent " << list[i].chain_parent << " is not listed";
  }
  EXPECT_EQ(Problems(Verify()), "");
}

}  // namespace
}  // namespace dp420
