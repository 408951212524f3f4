// `dp420 prune` and `dp420 stats` through the real binary: their JSON
// fields, human output and exit codes, and a repository that verifies clean
// and restores bit-exact after a prune that deletes and repacks.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr uint64_t kVolumeBytes = 8ull << 20;
constexpr uint64_t kBlock = 65536;

std::string Id(const Json& backup) { return backup.at("snapshot_id").get<std::string>(); }

// Forgets snapshot `id` of `volume` with `dp420 forget`.
void Forget(const std::string& repo, const std::string& volume, const std::string& id) {
  Result r = Cli({"forget", "--repo", repo, "--volume", volume, "--snapshot", id, "-q"});
  EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
}

// Forgets a whole volume: its snapshots folder and this machine's anchor.
void DropVolume(const std::string& repo, const std::string& state, const std::string& volume) {
  std::filesystem::remove_all(repo + "/snapshots/" + volume);
  for (const auto& e : std::filesystem::directory_iterator(state + "/repos")) {
    std::filesystem::remove(e.path() / volume);
  }
}

void ExpectFields(const Json& j, const std::vector<std::string>& fields) {
  for (const auto& f : fields) EXPECT_TRUE(j.contains(f)) << "no \"" << f << "\": " << j.dump();
}

class PruneCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = dir_ / "state";
    setenv("DP420_STATE_DIR", state_.c_str(), 1);
    repo_ = InitRepo(dir_);
    std::string a = dir_ / "a.img", b = dir_ / "b.img";
    WritePatternFile(a, kVolumeBytes, 1);
    WritePatternFile(b, kVolumeBytes, 2);
    Json s1 = Backup(repo_, "a", a, {"--block-size", "65536", "--threads", "1"});
    for (uint64_t blk = 0; blk < kVolumeBytes / kBlock; blk += 2) {
      OverwriteRange(a, blk * kBlock, kBlock, 100 + blk);
    }
    Json s2 = Backup(repo_, "a", a, {"--threads", "1"});
    s2_ = Id(s2);
    s2_sha_ = Sha256File(a);
    Forget(repo_, "a", Id(s1));
    Backup(repo_, "b", b, {"--threads", "1"});
    DropVolume(repo_, state_, "b");
  }
  void TearDown() override { unsetenv("DP420_STATE_DIR"); }

  TempDir dir_;
  std::string state_, repo_, s2_, s2_sha_;
};

TEST_F(PruneCliTest, StatsAndPruneReportAndReclaim) {
  Result stats = Cli({"stats", "--repo", repo_, "--json"});
  DP420_ASSERT_EXIT(stats, kExitOk);
  Json st = ParseJson(stats);
  ExpectFields(st, {"snapshots", "packs", "pack_bytes", "bytes_referenced", "bytes_reclaimable"});
  ASSERT_EQ(st["snapshots"].size(), 1u) << st.dump();
  ExpectFields(st["snapshots"][0], {"volume", "snapshot_id", "sequence", "created",
                                    "bytes_referenced", "bytes_unique", "bytes_shared"});
  EXPECT_EQ(st["snapshots"][0]["snapshot_id"], s2_);
  EXPECT_GE(st["bytes_reclaimable"].get<uint64_t>(), kVolumeBytes + kVolumeBytes / 2);
  Result human_stats = Cli({"stats", "--repo", repo_});
  DP420_ASSERT_EXIT(human_stats, kExitOk);
  EXPECT_NE(human_stats.out.find("reclaimable by prune"), std::string::npos) << human_stats.out;

  std::vector<std::string> packs = ListPacks(repo_);
  Result dry = Cli({"prune", "--repo", repo_, "--dry-run", "--json"});
  DP420_ASSERT_EXIT(dry, kExitOk);
  Json d = ParseJson(dry);
  ExpectFields(d, {"dry_run", "packs_deleted", "packs_rewritten", "packs_created", "bytes_freed",
                   "bytes_unused", "bytes_referenced", "relocations_written", "warnings"});
  EXPECT_TRUE(d["dry_run"].get<bool>());
  EXPECT_EQ(d["packs_rewritten"].get<uint64_t>(), 1u) << d.dump();
  EXPECT_GE(d["packs_deleted"].get<uint64_t>(), 2u) << d.dump();
  EXPECT_EQ(ListPacks(repo_), packs) << "a dry run changed packs/";

  Result run = Cli({"prune", "--repo", repo_});
  DP420_ASSERT_EXIT(run, kExitOk);
  EXPECT_NE(run.out.find("deleted"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("rewrote 1 pack"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("freed"), std::string::npos) << run.out;
  EXPECT_LT(ListPacks(repo_).size(), packs.size());
  EXPECT_TRUE(Exists(repo_ + "/relocated"));

  Result verify = Cli({"verify", "--repo", repo_, "--read-data", "--json"});
  DP420_ASSERT_EXIT(verify, kExitOk);
  Json v = ParseJson(verify);
  EXPECT_TRUE(v["ok"].get<bool>()) << v.dump();
  EXPECT_EQ(v["unreferenced_packs"].get<uint64_t>(), 0u) << v.dump();
  std::string target = dir_ / "s2.img";
  DP420_ASSERT_EXIT(Restore(repo_, "a", s2_, target), kExitOk);
  EXPECT_EQ(Sha256File(target), s2_sha_);

  Result again = Cli({"prune", "--repo", repo_, "--json"});
  DP420_ASSERT_EXIT(again, kExitOk);
  Json g = ParseJson(again);
  EXPECT_EQ(g["packs_deleted"].get<uint64_t>() + g["packs_rewritten"].get<uint64_t>(), 0u);
  EXPECT_EQ(g["bytes_freed"].get<uint64_t>(), 0u);
  Json after = ParseJson(Cli({"stats", "--repo", repo_, "--json"}));
  EXPECT_LT(after["bytes_reclaimable"].get<uint64_t>(), 64u * 1024) << after.dump();
}

// Only the repack reads through io_uring: a prune that repacks nothing needs no
// ring, and deletes what is unreferenced when no ring can be set up
// (DP420_RING_SETUP_ENOMEM fails every setup); one that must repack ends with
// the ring's error, the repository left as it was.
TEST_F(PruneCliTest, DeletingAloneNeedsNoRing) {
  const Env no_ring = {{"DP420_RING_SETUP_ENOMEM", "1000000"}};
  std::vector<std::string> packs = ListPacks(repo_);
  Result repack = Cli({"prune", "--repo", repo_, "--max-unused", "0"}, no_ring);
  DP420_EXPECT_EXIT(repack, kExitFailed);
  EXPECT_NE(repack.All().find("io_uring_queue_init"), std::string::npos) << repack.Describe();
  EXPECT_EQ(ListPacks(repo_), packs);

  Result deleting = Cli({"prune", "--repo", repo_, "--max-unused", "100", "--json"}, no_ring);
  DP420_ASSERT_EXIT(deleting, kExitOk);
  Json j = ParseJson(deleting);
  EXPECT_EQ(j["packs_rewritten"].get<uint64_t>(), 0u) << j.dump();
  EXPECT_GE(j["packs_deleted"].get<uint64_t>(), 2u) << j.dump();
  EXPECT_LT(ListPacks(repo_).size(), packs.size());
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo_, "--read-data"}), kExitOk);
  std::string target = dir_ / "s2.img";
  DP420_ASSERT_EXIT(Restore(repo_, "a", s2_, target), kExitOk);
  EXPECT_EQ(Sha256File(target), s2_sha_);
}

TEST_F(PruneCliTest, ExitCodes) {
  DP420_EXPECT_EXIT(Cli({"prune", "--repo", repo_, "--max-unused", "150"}), kExitUsage);
  DP420_EXPECT_EXIT(Cli({"prune"}), kExitUsage);
  DP420_EXPECT_EXIT(Cli({"prune", "--repo", dir_ / "nothing"}), kExitNotFound);
  DP420_EXPECT_EXIT(Cli({"stats", "--repo", repo_, "--volume", "bad name!"}), kExitUsage);

  // Another prune holds the prune lock: busy, with a JSON error.
  auto holder = Process::Start({"flock", repo_ + "/locks/.prune.lock", "sleep", "60"});
  Result busy;
  for (int i = 0; i < 100; ++i) {
    busy = Cli({"prune", "--repo", repo_, "--json"});
    if (busy.exit_code == kExitBusy) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  DP420_EXPECT_EXIT(busy, kExitBusy);
  EXPECT_NE(busy.err.find("another prune"), std::string::npos) << busy.Describe();
  EXPECT_EQ(ParseJson(busy)["error"]["exit_code"], kExitBusy);
  holder->Kill(SIGKILL);
  holder->Wait();

  // A manifest that does not read: its references are unknown, prune refuses.
  std::vector<std::string> packs = ListPacks(repo_);
  std::string manifest = FindManifest(repo_, "a", s2_);
  FlipBit(manifest, 30, 2);
  Result damaged = Cli({"prune", "--repo", repo_});
  DP420_EXPECT_EXIT(damaged, kExitDamage);
  EXPECT_NE(damaged.err.find("dp420 repair"), std::string::npos) << damaged.Describe();
  EXPECT_EQ(ListPacks(repo_), packs);
}

}  // namespace
}  // namespace dp420::e2e
