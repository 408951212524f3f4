// Consistency groups on real parts: `dp420 serve` and three `dp420 agent`s, each
// agent in a network namespace of its own that reaches the server over a veth
// pair, each backing up a loop-mounted file system (ext4 and XFS) that a
// workload writes while the group is cut. Faults are real too: nftables
// partitions, SIGSTOP and SIGKILL of members and of the server. Restored
// members are file-system clean, nothing of an aborted group is published,
// and a frozen file system is always thawed.

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"
#include "freeze_util.h"
#include "netns.h"
#include "serve_util.h"

namespace dp420::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Keeps rewriting and syncing files of the mounted file system argv[1].
const char kWorkload[] = R"(
import os, random, sys
d = sys.argv[1]
r = random.Random(11)
n = 0
while True:
    name = os.path.join(d, 'w%d' % (n % 6))
    with open(name, 'ab') as f:
        f.write(os.urandom(r.randrange(4096, 65536)))
        f.flush()
        if n % 3 == 0:
            os.fsync(f.fileno())
    if n % 50 == 49:
        os.replace(name, name + '.old')
    n += 1
)";

constexpr int kMaxFreezeMs = 4000;

struct RealNode {
  std::string client, key, fs;  // fs: "ext4" or "xfs"
  std::string image, mount, device;
  std::unique_ptr<LoopDevice> loop;
  std::unique_ptr<Mount> mounted;
  ThawGuard thaw;
  testnet::NetNs ns;
  testnet::VethPair veth;
  std::unique_ptr<testnet::Nft> nft;
  testnet::Child agent;
  std::unique_ptr<Process> workload;
  int starts = 0;
  std::string log;
};

class GroupRealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CanUseLoop(&why)) GTEST_SKIP() << "skipped: needs loop devices and mounts (" << why << ")";
    if (std::string no = testnet::NftUnavailableReason(); !no.empty()) {
      GTEST_SKIP() << "skipped: needs network namespaces and nftables (" << no << ")";
    }
    for (const char* tool : {"mkfs.xfs", "xfs_repair", "e2fsck", "mkfs.ext4"}) {
      if (Sh(std::string("command -v ") + tool).exit_code != 0) {
        GTEST_SKIP() << "skipped: needs " << tool << " (xfsprogs, e2fsprogs)";
      }
    }
    repo_ = InitRepo(dir_);
    admin_key_ = AddClient(dir_, "ops", "admin");
    MountOuterXfs();
    // node1: ext4 on a loop device over a file of the XFS (frozen, cloned, thawed);
    // node2: XFS on the same kind of loop device; node3: ext4 over a file of the
    // root file system, which cannot clone: read while frozen.
    AddNode("node1", "ext4", xfs_->target() + "/node1.img", 64);
    AddNode("node2", "xfs", xfs_->target() + "/node2.img", 320);
    AddNode("node3", "ext4", dir_ / "node3.img", 48);
    ASSERT_FALSE(HasFailure());
    server_ = std::make_unique<Server>(dir_, repo_, "", "", "0.0.0.0:0");
  }
  void TearDown() override {
    for (auto& n : nodes_) {
      if (n->workload) n->workload->Kill(SIGKILL);
      n->agent.Kill();
    }
    if (server_) (void)server_->Stop();
  }

  void MountOuterXfs() {
    std::string image = dir_ / "outer.img";
    WriteFile(image, "");
    Truncate(image, 1ull << 30);
    Result mk = RunCommand({"mkfs.xfs", "-q", "-m", "reflink=1", image});
    ASSERT_EQ(mk.exit_code, 0) << mk.Describe();
    std::string why;
    xfs_ = Mount::Create(image, dir_ / "outer", "xfs", "loop", &why);
    ASSERT_NE(xfs_, nullptr) << why;
  }

  void AddNode(const std::string& client, const std::string& fs, const std::string& image,
               int mib) {
    auto n = std::make_unique<RealNode>();
    n->client = client;
    n->fs = fs;
    n->key = AddClient(dir_, client);
    n->image = image;
    WriteFile(image, "");
    Truncate(image, uint64_t(mib) << 20);
    Result mk = RunCommand(fs == "xfs" ? std::vector<std::string>{"mkfs.xfs", "-q", image}
                                       : std::vector<std::string>{"mkfs.ext4", "-q", "-F", image});
    ASSERT_EQ(mk.exit_code, 0) << mk.Describe();
    std::string why;
    n->loop = LoopDevice::Attach(image, &why);
    ASSERT_NE(n->loop, nullptr) << why;
    n->device = n->loop->device();
    n->mount = dir_ / (client + ".mnt");
    n->mounted = Mount::Create(n->device, n->mount, fs, "", &why);
    ASSERT_NE(n->mounted, nullptr) << why;
    n->thaw.dir = n->mount;
    ASSERT_TRUE(n->ns.Create(&why)) << why;
    ASSERT_TRUE(n->veth.Create(n->ns, nullptr, &why)) << why;
    nodes_.push_back(std::move(n));
  }

  // The agent of `n`, in its namespace, reaching the server over its veth pair.
  // `env`: VAR=VALUE settings of the agent's environment.
  void StartAgent(RealNode& n, const std::string& extra = "",
                  const std::vector<std::string>& env = {}) {
    n.log = dir_ / (n.client + ".agent" + std::to_string(++n.starts) + ".log");
    std::string why;
    std::vector<std::string> argv = {"env"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.insert(argv.end(), {
        CliPath(), "agent", "--remote", n.veth.addr_b() + ":" + server_->port(),
        "--client", n.client, "--key-file", n.key, "--heartbeat-interval", "1",
        "--state-dir", dir_ / (n.client + ".state"), "--cache-dir", dir_ / (n.client + ".cache"),
        "--volume", "disk=" + n.device + ",snapshot-source=fsfreeze,freeze-mount=" + n.mount +
                        ",max-freeze=" + std::to_string(kMaxFreezeMs) + extra});
    ASSERT_TRUE(n.ns.Spawn(argv, n.log, &n.agent, &why)) << why;
    WaitFor(n, "connected to");
  }
  std::string AgentLog(const RealNode& n) const { return Exists(n.log) ? ReadFile(n.log) : ""; }
  // Waits until the agent's log holds `what` `times` times.
  void WaitFor(const RealNode& n, const std::string& what, int times = 1,
               std::chrono::seconds within = 30s) {
    auto deadline = Clock::now() + within;
    while (Clock::now() < deadline) {
      std::string log = AgentLog(n);
      int seen = 0;
      for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++seen;
      if (seen >= times) return;
      std::this_thread::sleep_for(20ms);
    }
    FAIL() << n.client << "'s agent did not log '" << what << "' " << times << " time(s):\n"
           << AgentLog(n) << "\nserver:\n" << server_->Log();
  }
  void StartWorkloads() {
    for (auto& n : nodes_) n->workload = Process::Start({"python3", "-c", kWorkload, n->mount});
    std::this_thread::sleep_for(300ms);
  }
  void StopWorkloads() {
    for (auto& n : nodes_) {
      if (!n->workload) continue;
      n->workload->Kill(SIGKILL);
      (void)n->workload->Wait();
      n->workload.reset();
    }
  }
  std::vector<std::string> AdminRemote() const {
    return {"--remote", "127.0.0.1:" + server_->port(), "--client", "ops", "--key-file", admin_key_};
  }
  Result GroupBackup(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"group-backup", "--group", "fleet", "--json"};
    for (const auto& n : nodes_) args.insert(args.end(), {"--member", n->client + ":disk"});
    args.insert(args.end(), extra.begin(), extra.end());
    return Cli(Join(args, AdminRemote()), {{"DP420_CACHE_DIR", dir_ / "ops.cache"}});
  }
  // Waits up to `within` for the file system of `n` to be thawed.
  bool ThawedWithin(const RealNode& n, std::chrono::milliseconds within) {
    auto deadline = Clock::now() + within;
    while (Clock::now() < deadline) {
      if (!Frozen(n.mount)) return true;
      std::this_thread::sleep_for(50ms);
    }
    return !Frozen(n.mount);
  }
  size_t SnapshotCount() { return Snapshots(repo_).size(); }
  std::string Logs() const {
    std::string all = "server:\n" + server_->Log();
    for (const auto& n : nodes_) all += "\n" + n->client + ":\n" + AgentLog(*n);
    return all;
  }

  TempDir dir_;
  std::string repo_, admin_key_;
  std::unique_ptr<Mount> xfs_;
  std::vector<std::unique_ptr<RealNode>> nodes_;
  std::unique_ptr<Server> server_;
};

TEST_F(GroupRealTest, ThreeNodesInNamespacesCutOneInstantUnderAWorkloadAndRestoreClean) {
  for (auto& n : nodes_) StartAgent(*n);
  StartWorkloads();
  Result r = GroupBackup();
  StopWorkloads();
  DP420_ASSERT_EXIT(r, kExitOk) << Logs();
  Json s = ParseJson(r);
  ASSERT_EQ(s["members"].size(), 3u) << s.dump();
  for (auto& n : nodes_) EXPECT_FALSE(Frozen(n->mount)) << n->client << " left frozen";

  Json groups = ParseJson(Cli({"snapshots", "--repo", repo_, "--group", "fleet", "--json"}))["groups"];
  ASSERT_EQ(groups.size(), 1u);
  for (const auto& m : groups[0]["node_topology"]["members"]) {
    EXPECT_EQ(m["point_in_time"]["consistency"], "point-in-time") << m.dump();
    EXPECT_EQ(m["point_in_time"]["method"], "fsfreeze") << m.dump();
    EXPECT_LT(m["point_in_time"]["hold_ms"].get<double>(), kMaxFreezeMs) << m.dump();
  }
  // Each member, restored by its own client, is a clean file system.
  for (auto& n : nodes_) {
    std::string id;
    for (const auto& m : s["members"]) {
      if (m["member"] == n->client + ":disk") id = m["snapshot_id"].get<std::string>();
    }
    std::string target = dir_ / (n->client + ".restored");
    Result restore = Cli({"restore", "--remote", "127.0.0.1:" + server_->port(), "--client",
                          n->client, "--key-file", n->key, "--volume", "disk", "--snapshot", id,
                          target},
                         {{"DP420_CACHE_DIR", dir_ / (n->client + ".rcache")}});
    DP420_ASSERT_EXIT(restore, kExitOk);
    if (n->fs == "xfs") {
      // A frozen XFS keeps its log (ext4 empties its journal): the image is the file
      // system as after a crash at the cut. Mounting it replays the log, as its first
      // mount after a restore would; then it must check clean.
      std::string why;
      auto replay = Mount::Create(target, dir_ / (n->client + ".check"), "xfs", "loop,nouuid", &why);
      ASSERT_NE(replay, nullptr) << n->client << ": the restored XFS does not mount: " << why;
      ASSERT_TRUE(replay->Unmount(&why)) << why;
    }
    Result fsck = n->fs == "xfs" ? RunCommand({"xfs_repair", "-n", "-f", target})
                                 : RunCommand({"e2fsck", "-fn", target});
    EXPECT_EQ(fsck.exit_code, 0) << n->client << " (" << n->fs << "): " << fsck.Describe();
  }
}

// A member cut off by a partition while it holds: the group aborts, nothing is
// published, and the member thaws by itself at its deadline; back on the network,
// the next group commits.
TEST_F(GroupRealTest, APartitionedMemberAbortsTheGroupAndThawsItself) {
  for (auto& n : nodes_) StartAgent(*n);
  RealNode& cut_off = *nodes_[1];
  // node3 is slow to hold (its pre hook), so that the others hold a while first.
  nodes_[2]->agent.Kill();
  StartAgent(*nodes_[2], ",pre-hook=sleep 2,post-hook=true");
  cut_off.nft = std::make_unique<testnet::Nft>();
  std::string why;
  ASSERT_TRUE(cut_off.nft->Install(cut_off.ns, cut_off.veth.dev_a(), &why)) << why;
  std::thread partition([&] {
    WaitFor(cut_off, "holding fleet epoch");
    std::string error;
    EXPECT_TRUE(cut_off.nft->SetPartition(true, &error)) << error;
  });
  auto start = Clock::now();
  Result r = GroupBackup({"--cut-timeout", "2"});
  partition.join();
  EXPECT_NE(r.exit_code, kExitOk) << r.Describe();
  EXPECT_EQ(ParseJson(r)["outcome"], "aborted") << r.Describe();
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();
  // Frozen when the partition began; thawed by its own deadline (or the abort).
  EXPECT_TRUE(ThawedWithin(cut_off, std::chrono::milliseconds(kMaxFreezeMs + 3000) -
                                        std::chrono::duration_cast<std::chrono::milliseconds>(
                                            Clock::now() - start)))
      << "node2 still frozen " << kMaxFreezeMs << " ms after it froze:\n" << Logs();
  ASSERT_TRUE(cut_off.nft->SetPartition(false, &why)) << why;
  WaitFor(cut_off, "connected to", 2, 60s);
  nodes_[2]->agent.Kill();
  StartAgent(*nodes_[2]);
  Result again = GroupBackup();
  DP420_ASSERT_EXIT(again, kExitOk) << Logs();
  EXPECT_EQ(SnapshotCount(), 3u);
}

// A member killed while frozen thaws at once (its watchdog); the server killed while
// members hold leaves them to thaw at their deadline, and at its restart it aborts the
// epoch it left open; a member stopped during its transfer is lost and aborts the
// group. After all that the group commits.
TEST_F(GroupRealTest, KilledAndStoppedMembersAndAKilledServerPublishNothingAndThaw) {
  for (auto& n : nodes_) StartAgent(*n);
  nodes_[2]->agent.Kill();
  StartAgent(*nodes_[2], ",pre-hook=sleep 3,post-hook=true");
  RealNode& first = *nodes_[0];

  // 1. node1's agent (not its watchdog) killed while frozen.
  std::thread killer([&] {
    WaitFor(first, "holding fleet epoch");
    EXPECT_TRUE(Frozen(first.mount)) << "node1 holds but is not frozen";
    kill(first.agent.pid(), SIGKILL);
  });
  auto killed_at = Clock::now();
  Result r = GroupBackup({"--prepare-timeout", "10", "--cut-timeout", "2"});
  killer.join();
  EXPECT_NE(r.exit_code, kExitOk);
  EXPECT_TRUE(ThawedWithin(first, 2000ms)) << "a killed agent left node1 frozen";
  EXPECT_LT(Clock::now() - killed_at, std::chrono::milliseconds(kMaxFreezeMs + 12000));
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();
  first.agent.Kill();

  StartAgent(first);

  // 1b. node3's agent and its freeze watchdog killed together while frozen (at the
  // cut of its read in place): the agent thaws it when it starts again.
  RealNode& third = *nodes_[2];
  third.agent.Kill();
  StartAgent(third, "", {"DP420_TEST_CRASH=frozen-orphaned"});
  Result r2 = GroupBackup({"--prepare-timeout", "10", "--cut-timeout", "2"});
  EXPECT_NE(r2.exit_code, kExitOk);
  (void)third.agent.Wait(10s, nullptr);
  third.agent.Kill();
  EXPECT_TRUE(Frozen(third.mount)) << "nothing was left to thaw it: this part tests nothing";
  StartAgent(third, ",pre-hook=sleep 3,post-hook=true");
  EXPECT_TRUE(ThawedWithin(third, 2000ms)) << "a restarted agent left node3 frozen";
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();

  // 2. The server killed while the members hold.
  std::thread server_killer([&] {
    WaitFor(first, "holding fleet epoch", 1);
    kill(server_->pid(), SIGKILL);
  });
  Result lost = GroupBackup({"--prepare-timeout", "10"});
  server_killer.join();
  EXPECT_NE(lost.exit_code, kExitOk);
  EXPECT_TRUE(ThawedWithin(first, std::chrono::milliseconds(kMaxFreezeMs + 3000)))
      << "node1 still frozen after its deadline with the server gone";
  (void)server_->Stop();
  std::string port = server_->port();
  server_ = std::make_unique<Server>(dir_, repo_, "", "", "0.0.0.0:" + port, "serve2.log");
  EXPECT_NE(server_->Log().find("listening"), std::string::npos);
  for (auto& n : nodes_) WaitFor(*n, "connected to", 2, 60s);
  EXPECT_EQ(SnapshotCount(), 0u) << Logs();

  // 3. node2 stopped (SIGSTOP) during its transfer.
  nodes_[2]->agent.Kill();
  StartAgent(*nodes_[2]);
  RealNode& stopped = *nodes_[1];
  std::thread stopper([&] {
    WaitFor(stopped, "cut fleet epoch");
    stopped.agent.Signal(SIGSTOP);
  });
  Result gone = GroupBackup({"--member-heartbeat", "1"});
  stopper.join();
  stopped.agent.Signal(SIGCONT);
  // Its transfer may have been done before the stop; the outcome must be whole either way.
  size_t after = SnapshotCount();
  if (gone.exit_code == kExitOk) {
    EXPECT_EQ(after, 3u);
  } else {
    EXPECT_EQ(after, 0u) << Logs();
  }

  // The stopped agent's channel was given up by the server meanwhile: it comes
  // back after its reconnect pause.
  Result again = GroupBackup();
  for (int i = 0; i < 30 && again.exit_code == 4; ++i) {
    std::this_thread::sleep_for(1s);
    again = GroupBackup();
  }
  DP420_ASSERT_EXIT(again, kExitOk) << Logs();
  EXPECT_EQ(SnapshotCount(), after + 3);
  for (auto& n : nodes_) EXPECT_FALSE(Frozen(n->mount)) << n->client;
}

}  // namespace
}  // namespace dp420::e2e
