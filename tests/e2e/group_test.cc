// Consistency groups end to end: `dp420 serve`, three `dp420 agent`s and
// `dp420 group-backup` as processes on this host. A group commits every
// member or none; each member snapshot restores with the ordinary restore;
// a member that fails, is killed or never answers publishes nothing; the
// server refuses what a client may not ask.

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"
#include "serve_util.h"

namespace dp420::e2e {
namespace {

constexpr int kExitNetwork = 8;

// One node: its client, key, source and the agent process serving it.
struct Node {
  std::string client, key, source, volume = "disk";
  std::unique_ptr<Process> agent;
  std::string log;
};

class GroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = InitRepo(dir_);
    admin_key_ = AddClient(dir_, "ops", "admin");
    for (int i = 0; i < 3; ++i) {
      Node n;
      n.client = "node" + std::to_string(i + 1);
      n.key = AddClient(dir_, n.client);
      n.source = dir_ / (n.client + ".img");
      WritePatternFile(n.source, (2ull << 20) + 4096 * i, 100 + i, 4);
      nodes_.push_back(std::move(n));
    }
    server_ = std::make_unique<Server>(dir_, repo_);
  }
  void TearDown() override {
    for (auto& n : nodes_) StopAgent(n);
    if (server_) (void)server_->Stop();
  }

  // `extra`: ",KEY=VALUE..." after the source.
  // A member must hold its source: on these file volumes (ext4, no freeze) a
  // pre hook stands for the application's quiesce.
  void StartAgent(Node& n, const std::string& extra = ",snapshot-source=hook,pre-hook=true") {
    // A log of its own per start: a restarted agent's "connected" is its own.
    n.log = dir_ / (n.client + ".agent" + std::to_string(++starts_) + ".log");
    std::string command =
        "exec " + ShellQuote(CliPath()) + " agent --remote " + server_->address() +
        " --client " + n.client + " --key-file " + ShellQuote(n.key) + " --heartbeat-interval 1" +
        " --state-dir " + ShellQuote(dir_ / (n.client + ".state")) + " --cache-dir " +
        ShellQuote(dir_ / (n.client + ".cache")) + " --volume " +
        ShellQuote(n.volume + "=" + n.source + extra) + " 2>" + ShellQuote(n.log);
    n.agent = Process::Start({"bash", "-c", command});
    WaitFor(n, "connected to");
  }
  void StopAgent(Node& n) {
    if (!n.agent) return;
    n.agent->Kill(SIGTERM);
    (void)n.agent->Wait(std::chrono::seconds(30));
    n.agent.reset();
  }
  std::string AgentLog(const Node& n) const { return Exists(n.log) ? ReadFile(n.log) : ""; }
  void WaitFor(const Node& n, const std::string& what) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      if (AgentLog(n).find(what) != std::string::npos) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << n.client << "'s agent did not log '" << what << "' within 30 s:\n"
           << AgentLog(n) << "\nserver:\n"
           << server_->Log();
  }
  std::vector<std::string> AdminRemote() const { return Remote(*server_, "ops", admin_key_); }
  Result GroupBackup(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"group-backup", "--group", "db", "--json"};
    for (const auto& n : nodes_) args.insert(args.end(), {"--member", n.client + ":" + n.volume});
    args.insert(args.end(), extra.begin(), extra.end());
    return Cli(Join(args, AdminRemote()), {{"DP420_CACHE_DIR", dir_ / "admin.cache"}});
  }
  // Every snapshot of the repository, read locally.
  size_t SnapshotCount() { return Snapshots(repo_).size(); }
  std::string Logs() const {
    std::string all = "server:\n" + server_->Log();
    for (const auto& n : nodes_) all += "\n" + n.client + ":\n" + AgentLog(n);
    return all;
  }

  TempDir dir_;
  std::string repo_, admin_key_;
  std::vector<Node> nodes_;
  std::unique_ptr<Server> server_;
  int starts_ = 0;
};

TEST_F(GroupTest, ThreeMembersCommitTogetherAndEachRestores) {
  for (auto& n : nodes_) StartAgent(n);
  Result r = GroupBackup();
  DP420_ASSERT_EXIT(r, kExitOk) << Logs();
  Json s = ParseJson(r);
  EXPECT_EQ(s["outcome"], "committed") << s.dump();
  ASSERT_TRUE(s.contains("group_snapshot_id")) << s.dump();
  ASSERT_EQ(s["members"].size(), 3u) << s.dump();
  EXPECT_GT(s["cut_ms"].get<double>(), 0) << s.dump();

  // The group, as `snapshots --group` lists it, names each member's snapshot.
  Result listed = Cli(Join({"snapshots", "--group", "db", "--json"}, AdminRemote()));
  DP420_ASSERT_EXIT(listed, kExitOk) << Logs();
  Json groups = ParseJson(listed)["groups"];
  ASSERT_EQ(groups.size(), 1u) << groups.dump();
  EXPECT_EQ(groups[0]["group_snapshot_id"], s["group_snapshot_id"]);
  EXPECT_EQ(groups[0]["epoch"], s["epoch"]);
  ASSERT_EQ(groups[0]["members"].size(), 3u);
  // node_topology lists every node and device.
  EXPECT_EQ(groups[0]["node_topology"]["members"].size(), 3u) << groups[0].dump();
  // The same from the repository itself.
  Result local = Cli({"snapshots", "--repo", repo_, "--group", "db", "--json"});
  DP420_ASSERT_EXIT(local, kExitOk);
  EXPECT_EQ(ParseJson(local)["groups"][0]["group_snapshot_id"], s["group_snapshot_id"]);

  // Each member restores with the ordinary restore, by its own client.
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    std::string id;
    for (const auto& m : s["members"]) {
      if (m["member"] == n.client + ":" + n.volume) id = m["snapshot_id"].get<std::string>();
    }
    ASSERT_FALSE(id.empty()) << s.dump();
    std::string target = dir_ / (n.client + ".restored");
    Result restore = Cli(Join({"restore", "--volume", n.volume, "--snapshot", id, target},
                              Remote(*server_, n.client, n.key)),
                         {{"DP420_CACHE_DIR", dir_ / (n.client + ".cache")}});
    DP420_ASSERT_EXIT(restore, kExitOk) << Logs();
    EXPECT_EQ(Sha256File(target), Sha256File(n.source)) << n.client;
  }
  Result verify = Cli({"verify", "--repo", repo_, "--json"});
  DP420_EXPECT_EXIT(verify, kExitOk) << verify.Describe();

  // A second group backup: a new epoch, incremental members.
  OverwriteRange(nodes_[1].source, 4096, 8192, 7);
  Result again = GroupBackup();
  DP420_ASSERT_EXIT(again, kExitOk) << Logs();
  EXPECT_GT(ParseJson(again)["epoch"].get<uint64_t>(), s["epoch"].get<uint64_t>());
  EXPECT_EQ(SnapshotCount(), 6u);
}

TEST_F(GroupTest, AMemberThatCannotHoldInTimePublishesNothing) {
  StartAgent(nodes_[0]);
  StartAgent(nodes_[1]);
  // Its pre hook outlasts the prepare deadline.
  StartAgent(nodes_[2], ",snapshot-source=hook,pre-hook=sleep 20,post-hook=true,max-freeze=30000");
  auto packs_before = ListPacks(repo_);
  Result r = GroupBackup({"--prepare-timeout", "1"});
  EXPECT_NE(r.exit_code, kExitOk) << r.Describe();
  Json s = ParseJson(r);
  EXPECT_EQ(s["outcome"], "aborted") << s.dump();
  EXPECT_TRUE(Mentions(r, "node3:disk")) << r.Describe();
  // Nothing of the epoch is visible, or left behind.
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();
  Result listed = Cli({"snapshots", "--repo", repo_, "--group", "db", "--json"});
  DP420_ASSERT_EXIT(listed, kExitOk);
  EXPECT_TRUE(ParseJson(listed)["groups"].empty());
  EXPECT_EQ(ListPacks(repo_), packs_before);
  // The holding members were released: they report the abort.
  WaitFor(nodes_[0], "aborted db epoch");
  WaitFor(nodes_[1], "aborted db epoch");
  // The late member's pre hook (20 s) was ended by the abort, not waited for.
  WaitFor(nodes_[2], "aborted db epoch");
}

TEST_F(GroupTest, AMemberKilledDuringTheGroupPublishesNothingAndTheNextGroupCommits) {
  StartAgent(nodes_[0]);
  StartAgent(nodes_[1]);
  // node3 holds for a while in its pre hook; it is killed while it does.
  StartAgent(nodes_[2], ",snapshot-source=hook,pre-hook=sleep 3,post-hook=true,max-freeze=30000");
  std::thread killer([&] {
    WaitFor(nodes_[0], "holding db epoch");
    nodes_[2].agent->Kill(SIGKILL);
  });
  Result r = GroupBackup({"--prepare-timeout", "10", "--member-heartbeat", "1"});
  killer.join();
  EXPECT_NE(r.exit_code, kExitOk) << r.Describe();
  EXPECT_EQ(ParseJson(r)["outcome"], "aborted");
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();
  // The agent comes back: its epoch file fences nothing newer, and the next
  // group commits.
  (void)nodes_[2].agent->Wait(std::chrono::seconds(10));
  nodes_[2].agent.reset();
  StartAgent(nodes_[2]);
  Result again = GroupBackup();
  DP420_ASSERT_EXIT(again, kExitOk) << Logs();
  EXPECT_EQ(SnapshotCount(), 3u);
}

// A member that would hold nothing (a live read, a copy with nothing quiescing
// the source) is refused when the agent starts: it could not share an instant.
TEST_F(GroupTest, AnAgentWhoseVolumeHoldsNothingIsRefusedAtStart) {
  for (const char* opts : {",snapshot-source=none", ",snapshot-source=reflink", ""}) {
    Result r = Cli({"agent", "--remote", server_->address(), "--client", "node1", "--key-file",
                    nodes_[0].key, "--volume", "disk=" + nodes_[0].source + opts});
    EXPECT_EQ(r.exit_code, 2) << opts << ": " << r.Describe();
    EXPECT_TRUE(Mentions(r, "must hold its source")) << r.Describe();
  }
}

// One group backup at a time on a server: a second one, even of other members,
// is refused naming the running one (its newer epoch would fence the first).
TEST_F(GroupTest, ASecondGroupWhileOneRunsIsRefusedNamingIt) {
  // "slow" runs while node1 holds and node3's pre hook takes 3 s.
  StartAgent(nodes_[0]);
  StartAgent(nodes_[1]);
  StartAgent(nodes_[2], ",snapshot-source=hook,pre-hook=sleep 3");
  std::vector<std::string> first = {"group-backup", "--group", "slow", "--member", "node1:disk",
                                    "--member", "node3:disk"};
  auto slow = Process::Start(Join(Join({CliPath()}, first), AdminRemote()));
  WaitFor(nodes_[0], "holding slow epoch");
  Result second = Cli(Join({"group-backup", "--group", "quick", "--member", "node2:disk"},
                           AdminRemote()));
  EXPECT_EQ(second.exit_code, 5) << second.Describe();
  EXPECT_TRUE(Mentions(second, "'slow'")) << second.Describe();
  Result done = slow->Wait(std::chrono::seconds(60));
  DP420_EXPECT_EXIT(done, kExitOk) << Logs();
  Result after = Cli(Join({"group-backup", "--group", "quick", "--member", "node2:disk"},
                          AdminRemote()));
  DP420_EXPECT_EXIT(after, kExitOk) << Logs();
}

// The reflink case, checked bit for bit: a writer keeps writing a file volume on
// XFS; the member's pre hook stops it (the application's quiesce), the cut clones
// the file, and the post hook (which runs right after the clone) takes the test's
// own copy of the file before it lets the writer go on. The restored member is
// that copy, byte for byte; the writer was writing before and after the cut.
TEST_F(GroupTest, AReflinkMemberIsTheFileAtTheCutBitForBit) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << "skipped: needs loop devices and mounts (" << why << ")";
  std::string image = dir_ / "xfs.img";
  WriteFile(image, "");
  Truncate(image, 512ull << 20);
  Result mk = RunCommand({"mkfs.xfs", "-q", "-m", "reflink=1", image});
  ASSERT_EQ(mk.exit_code, 0) << mk.Describe();
  auto xfs = Mount::Create(image, dir_ / "xfs", "xfs", "loop", &why);
  ASSERT_NE(xfs, nullptr) << why;
  Node& n = nodes_[0];
  n.source = dir_ / "xfs/vm.img";
  WritePatternFile(n.source, 32ull << 20, 77);
  const char kWriter[] = R"(
import os, random, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
r = random.Random(5)
while True:
    os.pwrite(fd, os.urandom(4096), r.randrange(0, size // 4096) * 4096)
)";
  auto writer = Process::Start({"python3", "-c", kWriter, n.source});
  std::string pid = std::to_string(writer->pid());
  // Until it has written (python starts slowly on a busy machine).
  const std::string pattern = Sha256File(n.source);
  for (int i = 0; i < 200 && Sha256File(n.source) == pattern; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::string copy = dir_ / "xfs/at-cut.img";
  StartAgent(n, ",snapshot-source=reflink,pre-hook=kill -STOP " + pid +
                    ",post-hook=cp --reflink=always " + n.source + " " + copy + " && kill -CONT " +
                    pid);
  std::string before = Sha256File(n.source);
  for (int i = 0; i < 200 && Sha256File(n.source) == before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Result r = Cli(Join({"group-backup", "--group", "vm", "--member", n.client + ":" + n.volume,
                       "--json"},
                      AdminRemote()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // and goes on after the cut
  writer->Kill(SIGKILL);
  (void)writer->Wait();
  DP420_ASSERT_EXIT(r, kExitOk) << Logs();
  ASSERT_TRUE(Exists(copy)) << "the post hook did not run: " << AgentLog(n);
  EXPECT_NE(Sha256File(n.source), Sha256File(copy)) << "the writer stopped writing: this proves nothing";
  EXPECT_NE(before, Sha256File(copy)) << "the writer did not write before the cut";
  std::string target = dir_ / "vm.restored";
  Result restore = Cli(Join({"restore", "--volume", n.volume, "--snapshot",
                             ParseJson(r)["members"][0]["snapshot_id"].get<std::string>(), target},
                            Remote(*server_, n.client, n.key)),
                       {{"DP420_CACHE_DIR", dir_ / (n.client + ".cache")}});
  DP420_ASSERT_EXIT(restore, kExitOk) << Logs();
  EXPECT_EQ(Sha256File(target), Sha256File(copy)) << "the member is not the file at its cut";
  StopAgent(n);
}

TEST_F(GroupTest, RefusalsNameWhatIsWrong) {
  StartAgent(nodes_[0]);
  // A member no agent serves.
  Result missing = Cli(Join({"group-backup", "--group", "db", "--member", "node1:disk",
                             "--member", "node2:disk"},
                            AdminRemote()));
  EXPECT_EQ(missing.exit_code, 4) << missing.Describe();
  EXPECT_TRUE(Mentions(missing, "node2:disk")) << missing.Describe();
  // An append client may not coordinate a group, not even of its own volume.
  Result not_admin = Cli(Join({"group-backup", "--group", "db", "--member", "node1:disk"},
                              Remote(*server_, "node1", nodes_[0].key)));
  EXPECT_NE(not_admin.exit_code, kExitOk) << not_admin.Describe();
  EXPECT_TRUE(Mentions(not_admin, "admin")) << not_admin.Describe();
  // A bad group name, a member that is not CLIENT:VOLUME.
  Result bad = Cli(Join({"group-backup", "--group", ".x", "--member", "node1:disk"}, AdminRemote()));
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  Result bad_member = Cli(Join({"group-backup", "--group", "db", "--member", "node1"}, AdminRemote()));
  EXPECT_EQ(bad_member.exit_code, 2) << bad_member.Describe();
  EXPECT_EQ(SnapshotCount(), 0u);
  (void)kExitNetwork;
}

}  // namespace
}  // namespace dp420::e2e
