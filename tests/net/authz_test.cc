// Authorization on the repository server, over real loopback sockets:
// per-client volume namespaces (two clients each have a volume "db"; a
// foreign volume answers as a missing one; admins address "CLIENT/VOLUME";
// legacy volumes keep working for their owner), revocation (removing a
// client or changing its key ends its live sessions within a second and
// commits nothing), the clients file's mode, owner and atomic rewrite, and
// per-client limits (quota mid-backup, volume count, abandoned backups,
// pinned stripe buffers).
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/history.h"
#include "engine/core/manifest.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/conn.h"
#include "engine/net/payloads.h"
#include "engine/net/server.h"
#include "engine/net/volumes.h"
#include "io/file.h"
#include "server_thread.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dp420::testing::MakeVolume;
using dp420::testing::ReadAll;
using dp420::testing::TempDir;
using dp420::testing::WriteAll;

constexpr Millis kTimeout = 5000ms;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    }
    closedir(d);
  }
  return names;
}

TEST(VolumeNamesTest, NamespacedNamesAreReversible) {
  EXPECT_EQ(NamespacedVolume("db1", "pg"), "db1_.pg");
  EXPECT_EQ(NamespacedVolume("a_b", "x"), "a__b_.x");
  EXPECT_EQ(NamespacedVolume("a_", "x_.y"), "a___.x_.y");
  EXPECT_EQ(NamespacedVolume("c", std::string(61, 'v')).size(), 64u);
  EXPECT_EQ(NamespacedVolume("c", std::string(62, 'v')), "");  // 64 characters at most
  for (auto [client, volume] : std::vector<std::pair<std::string, std::string>>{
           {"db1", "pg"}, {"a_b", "x"}, {"a_", "x_.y"}, {"_", "_"}, {"a.b-c", "v.1"}}) {
    std::string c, v;
    std::string name = NamespacedVolume(client, volume);
    ASSERT_TRUE(ValidVolumeName(name)) << name;
    ASSERT_TRUE(SplitNamespacedVolume(name, &c, &v)) << name;
    EXPECT_EQ(c, client);
    EXPECT_EQ(v, volume);
    EXPECT_EQ(QualifiedName(name), client + "/" + volume);
  }
  std::string c, v;
  EXPECT_FALSE(SplitNamespacedVolume("db", &c, &v));
  EXPECT_FALSE(SplitNamespacedVolume("a_b", &c, &v));
  EXPECT_EQ(QualifiedName("plain"), "plain");
}

class AuthzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_path_ = dir_.path() + "/repo";
    repo_ = dp420::testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    auto clients = testnet::WriteTestClients(ClientsFile(), dir_.path(),
                                             {{"alice"}, {"bob"}, {"root", "admin"}});
    ASSERT_TRUE(clients.ok()) << clients.status().ToString();
    so_ = testnet::TestServerOptions(repo_path_, ClientsFile());
    so_.resume_grace = 60000ms;
  }

  void StartServer() {
    server_ = std::make_unique<ServerThread>();
    std::string error;
    ASSERT_TRUE(server_->Start(so_, -1, &error)) << error;
    address_ = "127.0.0.1:" + std::to_string(server_->port());
  }

  std::string ClientsFile() const { return dir_.path() + "/clients.json"; }
  std::string KeyFile(const std::string& client) const {
    return testnet::TestKeyFile(dir_.path(), client);
  }

  // Rewrites the clients file as client-add and client-remove do.
  template <typename F>
  void EditClients(F change) {
    auto lock = ClientsFileLock::Acquire(ClientsFile());
    ASSERT_TRUE(lock.ok()) << lock.status().ToString();
    auto reg = ClientRegistry::Load(ClientsFile());
    ASSERT_TRUE(reg.ok()) << reg.status().ToString();
    change(*reg);
    Status s = reg->Save(ClientsFile());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void SetLimits(const std::string& client, const ClientLimits& limits) {
    EditClients([&](ClientRegistry& r) { ASSERT_TRUE(r.SetLimits(client, limits).ok()); });
  }

  std::unique_ptr<Conn> Authenticated(const std::string& client) {
    auto conn = Conn::Connect(address_, kTimeout);
    EXPECT_TRUE(conn.ok()) << conn.status().ToString();
    if (!conn.ok()) return nullptr;
    uint8_t key[kKeyBytes];
    uint8_t pin[kFingerprintBytes];
    Status read = ReadKeyFile(KeyFile(client), key, pin);
    EXPECT_TRUE(read.ok()) << read.ToString();
    uint64_t server_time = 0;
    Status s = read.ok() ? ClientHandshake(**conn, client, key, pin, kTimeout, &server_time)
                         : read;
    EXPECT_TRUE(s.ok()) << s.ToString();
    return s.ok() && read.ok() ? std::move(conn).value() : nullptr;
  }

  // The next frame other than PING (answered); an ERROR as its Status.
  static Result<Frame> Next(Conn& conn, Millis timeout = kTimeout) {
    for (;;) {
      DP420_ASSIGN_OR_RETURN(Frame f, conn.Recv(timeout));
      if (f.type() == FrameType::kPing) {
        DP420_RETURN_IF_ERROR(AnswerPing(conn, f, timeout));
        continue;
      }
      if (f.type() == FrameType::kError) return StatusFromError(f, "server");
      return f;
    }
  }

  // BACKUP_BEGIN for `volume`; the token of BACKUP_READY.
  Result<std::string> Begin(Conn& conn, const std::string& volume, uint64_t volume_size,
                            uint32_t stripes, uint32_t block_size = 0) {
    PayloadWriter w;
    w.String(volume);
    w.U32(block_size);
    w.U64(volume_size);
    w.U32(stripes);
    w.String("/dev/test");
    w.String("file");
    w.String("{}");
    w.String("dp420 test");
    w.String("");
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kBackupBegin, 1, w.bytes(), kTimeout));
    DP420_ASSIGN_OR_RETURN(Frame f, Next(conn));
    if (f.type() != FrameType::kBackupReady) return Status::Internal("no BACKUP_READY");
    PayloadReader r(f.payload);
    return r.String(64);
  }

  // STRIPE_JOIN; OK on STRIPE_READY, else the server's refusal.
  Status Join(Conn& conn, const std::string& token, uint32_t stripe) {
    PayloadWriter w;
    w.String(token);
    w.U32(stripe);
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kStripeJoin, 1, w.bytes(), kTimeout));
    DP420_ASSIGN_OR_RETURN(Frame f, Next(conn));
    return f.type() == FrameType::kStripeReady ? Status::Ok()
                                               : Status::Internal("no STRIPE_READY");
  }

  // How long until the server ends `conn` (an ERROR, then the close).
  static double SecondsUntilClosed(Conn& conn, Millis within) {
    auto start = Clock::now();
    for (;;) {
      auto f = conn.Recv(within);
      if (!f.ok()) return SecondsSince(start);
      if (f->type() == FrameType::kPing) (void)AnswerPing(conn, *f, kTimeout);
      if (SecondsSince(start) > std::chrono::duration<double>(within).count()) return 1e9;
    }
  }

  RemoteOptions Remote(const std::string& client) {
    RemoteOptions ro;
    ro.address = address_;
    ro.client = client;
    ro.key_file = KeyFile(client);
    ro.connect_timeout = 2000ms;
    ro.heartbeat_interval = 1000ms;
    ro.retry_for = 1000ms;
    ro.cache_dir = dir_.path() + "/cache-" + client;
    return ro;
  }

  // A backup of `bytes` by `client` as `volume`.
  Result<BackupResult> BackUp(const std::string& client, const std::string& volume,
                              const std::vector<uint8_t>& bytes) {
    std::string source = dir_.path() + "/" + client + "-" + volume + ".img";
    WriteAll(source, bytes);
    DP420_ASSIGN_OR_RETURN(auto remote, RemoteRepository::Connect(Remote(client)));
    BackupOptions bo;
    bo.volume = volume;
    bo.source_path = source;
    bo.threads = 2;
    return remote->Backup(bo);
  }

  Result<std::vector<Manifest>> List(const std::string& client, const std::string& volume) {
    DP420_ASSIGN_OR_RETURN(auto remote, RemoteRepository::Connect(Remote(client)));
    std::vector<Manifest> out;
    DP420_RETURN_IF_ERROR(remote->ListManifests(volume, &out));
    return out;
  }

  Status Restore(const std::string& client, const std::string& volume,
                 const std::string& target) {
    DP420_ASSIGN_OR_RETURN(auto remote, RemoteRepository::Connect(Remote(client)));
    RestoreOptions o;
    o.volume = volume;
    o.target_path = target;
    return remote->Restore(o).status();
  }

  size_t LocalSnapshots(const std::string& repo_volume) {
    std::vector<Manifest> list;
    EXPECT_TRUE(repo_->ListManifests(repo_volume, &list, nullptr).ok());
    return list.size();
  }

  void ExpectTmpEmpty() {
    auto deadline = Clock::now() + 5s;
    while (!ListDir(repo_path_ + "/tmp").empty() && Clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_TRUE(ListDir(repo_path_ + "/tmp").empty());
  }

  TempDir dir_;
  std::string repo_path_, address_;
  std::unique_ptr<Repository> repo_;
  ServerOptions so_;
  std::unique_ptr<ServerThread> server_;
};

// ---- namespaces ----

TEST_F(AuthzTest, TwoClientsEachHaveTheirOwnVolumeOfTheSameName) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::vector<uint8_t> a = MakeVolume(2 * 1024 * 1024 + 5, 1);
  std::vector<uint8_t> b = MakeVolume(1024 * 1024 + 9, 2);
  auto ba = BackUp("alice", "db", a);
  ASSERT_TRUE(ba.ok()) << ba.status().ToString();
  auto bb = BackUp("bob", "db", b);
  ASSERT_TRUE(bb.ok()) << bb.status().ToString();
  EXPECT_EQ(LocalSnapshots("alice_.db"), 1u);
  EXPECT_EQ(LocalSnapshots("bob_.db"), 1u);
  EXPECT_EQ(LocalSnapshots("db"), 0u);
  for (auto [client, bytes] : {std::pair{"alice", &a}, {"bob", &b}}) {
    auto listed = List(client, "db");
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    ASSERT_EQ(listed->size(), 1u);
    // The stored manifest, unchanged: its volume is the repository's name.
    EXPECT_EQ((*listed)[0].volume, NamespacedVolume(client, "db"));
    EXPECT_EQ((*listed)[0].client, client);
    auto all = List(client, "");
    ASSERT_TRUE(all.ok());
    ASSERT_EQ(all->size(), 1u) << client << " sees another client's volume";
    std::string target = dir_.path() + "/" + client + ".restored";
    Status s = Restore(client, "db", target);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(ReadAll(target), *bytes) << client;
  }
  // An admin sees both, qualified, and addresses them so.
  auto all = List("root", "");
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  std::vector<std::string> names;
  for (const auto& m : *all) names.push_back(m.volume);
  EXPECT_EQ(names, (std::vector<std::string>{"alice_.db", "bob_.db"}));
  EXPECT_EQ(QualifiedName(names[0]), "alice/db");
  std::string target = dir_.path() + "/admin.restored";
  Status s = Restore("root", "bob/db", target);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadAll(target), b);
  // An append client cannot use the qualified form.
  auto foreign = List("alice", "bob/db");
  EXPECT_EQ(foreign.status().code(), Code::kInvalidArgument);
}

// Moves alice's namespaced volume `volume` to the plain name, as a volume
// written before namespacing was (its manifests name alice as their client).
void MakeLegacy(const std::string& repo_path, const std::string& volume) {
  auto repo = Repository::Open(repo_path);
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  const std::string old_name = NamespacedVolume("alice", volume);
  std::vector<Manifest> list;
  ASSERT_TRUE((*repo)->ListManifests(old_name, &list, nullptr).ok());
  ASSERT_FALSE(list.empty());
  std::string from = (*repo)->SnapshotsDir(old_name);
  std::string to = (*repo)->SnapshotsDir(volume);
  ASSERT_EQ(mkdir(to.c_str(), 0700), 0);
  std::string seal;
  for (size_t i = 0; i < list.size(); ++i) {
    Json j = list[i].ToJson();
    j["volume"] = volume;
    if (i > 0) j["parent_manifest_sha256"] = seal;
    std::string text = SealJson(j, (*repo)->seal_key(), &seal);
    ASSERT_TRUE(io::WriteFileAtomic(to + "/" + list[i].file_name, text).ok());
    ASSERT_EQ(unlink((from + "/" + list[i].file_name).c_str()), 0);
  }
  Manifest newest = list.back();
  newest.volume = volume;
  newest.seal = seal;
  ASSERT_TRUE(AdvanceHead(**repo, volume, &newest).ok());
  ASSERT_EQ(unlink((from + "/HEAD").c_str()), 0);
  ASSERT_EQ(rmdir(from.c_str()), 0);
  // This machine saw the namespaced volume: it moved on purpose.
  unlink((AnchorDir(**repo) + "/" + old_name).c_str());
}

TEST_F(AuthzTest, AForeignVolumeAnswersAsAMissingOneAndLegacyVolumesKeepWorking) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::vector<uint8_t> a = MakeVolume(1024 * 1024 + 3, 3);
  ASSERT_TRUE(BackUp("alice", "old", a).ok());
  ASSERT_NO_FATAL_FAILURE(MakeLegacy(repo_path_, "old"));
  // The owner still lists, restores and backs up its legacy volume in place.
  auto listed = List("alice", "old");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->size(), 1u);
  auto again = BackUp("alice", "old", MakeVolume(1024 * 1024 + 3, 4));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(LocalSnapshots("old"), 2u);
  EXPECT_EQ(LocalSnapshots("alice_.old"), 0u);
  // Another client: the same answers for alice's volume as for none at all.
  auto foreign = List("bob", "old");
  auto missing = List("bob", "nothing");
  ASSERT_TRUE(foreign.ok() && missing.ok());
  EXPECT_TRUE(foreign->empty());
  EXPECT_TRUE(missing->empty());
  Status rf = Restore("bob", "old", dir_.path() + "/f.img");
  Status rm = Restore("bob", "nothing", dir_.path() + "/m.img");
  EXPECT_EQ(rf.code(), Code::kNotFound) << rf.ToString();
  EXPECT_EQ(rf.code(), rm.code());
  std::string mf = rf.message(), mm = rm.message();
  mf.replace(mf.find("'old'"), 5, "'X'");
  mm.replace(mm.find("'nothing'"), 9, "'X'");
  EXPECT_EQ(mf, mm);
  EXPECT_EQ(rf.message().find("another client"), std::string::npos) << rf.message();
  // Bob's own "old" is a new volume of his namespace; alice's is untouched.
  ASSERT_TRUE(BackUp("bob", "old", MakeVolume(4096, 5)).ok());
  EXPECT_EQ(LocalSnapshots("bob_.old"), 1u);
  EXPECT_EQ(LocalSnapshots("old"), 2u);
  auto admin = List("root", "");
  ASSERT_TRUE(admin.ok());
  std::vector<std::string> names;
  for (const auto& m : *admin) names.push_back(m.volume);
  EXPECT_EQ(names, (std::vector<std::string>{"bob_.old", "old", "old"}));
}

// ---- revocation ----

TEST_F(AuthzTest, RemovingAClientEndsItsSessionsWithinASecondAndCommitsNothing) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto control = Authenticated("alice");
  ASSERT_NE(control, nullptr);
  auto token = Begin(*control, "rev", 8 << 20, 1);
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  auto stripe = Authenticated("alice");
  ASSERT_NE(stripe, nullptr);
  ASSERT_TRUE(Join(*stripe, *token, 0).ok());
  auto idle = Authenticated("alice");  // between requests
  ASSERT_NE(idle, nullptr);
  auto other = Authenticated("bob");
  ASSERT_NE(other, nullptr);

  ASSERT_NO_FATAL_FAILURE(EditClients([](ClientRegistry& r) { ASSERT_TRUE(r.Remove("alice").ok()); }));
  for (Conn* c : {control.get(), stripe.get(), idle.get()}) {
    double seconds = SecondsUntilClosed(*c, 3000ms);
    EXPECT_LT(seconds, 1.0) << "a session of the removed client lasted " << seconds << " s";
  }
  EXPECT_EQ(LocalSnapshots(NamespacedVolume("alice", "rev")), 0u);
  ASSERT_NO_FATAL_FAILURE(ExpectTmpEmpty());
  // Bob's session goes on.
  PayloadWriter list;
  list.String("");
  ASSERT_TRUE(other->Send(FrameType::kList, 3, list.bytes(), kTimeout).ok());
  auto done = Next(*other);
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(done->type(), FrameType::kDone);
  // Alice cannot come back.
  auto back = RemoteRepository::Connect(Remote("alice"));
  EXPECT_FALSE(back.ok());
}

TEST_F(AuthzTest, ChangingAClientsKeyOrRoleEndsItsSessions) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = Authenticated("alice");
  auto bob = Authenticated("bob");
  ASSERT_TRUE(alice && bob);
  ASSERT_NO_FATAL_FAILURE(EditClients([](ClientRegistry& r) {
    ASSERT_TRUE(r.Remove("alice").ok());
    ASSERT_TRUE(r.Add("alice", "append").ok());  // a new key
    ASSERT_TRUE(r.Remove("bob").ok());
    auto k = r.Add("bob", "admin");  // a new role (and key)
    ASSERT_TRUE(k.ok());
  }));
  EXPECT_LT(SecondsUntilClosed(*alice, 3000ms), 1.0);
  EXPECT_LT(SecondsUntilClosed(*bob, 3000ms), 1.0);
}

TEST_F(AuthzTest, ABackupAtItsCommitWhenTheClientIsRemovedIsNotCommitted) {
  std::mutex mu;
  std::condition_variable cv;
  bool at_commit = false, release = false;
  so_.on_session_point = [&](const char* point) {
    if (std::strcmp(point, "commit") != 0) return;
    std::unique_lock lock(mu);
    at_commit = true;
    cv.notify_all();
    cv.wait_for(lock, 10s, [&] { return release; });
  };
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Result<BackupResult> result = Status::Internal("not run");
  std::thread agent([&] { result = BackUp("alice", "late", MakeVolume(3 << 20, 6)); });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return at_commit; }));
  }
  ASSERT_NO_FATAL_FAILURE(EditClients([](ClientRegistry& r) { ASSERT_TRUE(r.Remove("alice").ok()); }));
  std::this_thread::sleep_for(1s);  // revoked by now
  {
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  }
  agent.join();
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(LocalSnapshots(NamespacedVolume("alice", "late")), 0u);
  ASSERT_NO_FATAL_FAILURE(ExpectTmpEmpty());
}

// An agent that hears nothing during its COMMIT resumes on a new control
// connection and sends COMMIT again while the server still runs the first:
// the backup is committed once (the builder's second commit asserted), and
// the agent gets the committed snapshot.
TEST_F(AuthzTest, ACommitRepeatedOnANewControlConnectionCommitsOnce) {
  std::mutex mu;
  std::condition_variable cv;
  int commits = 0;
  so_.on_session_point = [&](const char* point) {
    if (std::strcmp(point, "commit") != 0) return;
    std::unique_lock lock(mu);
    ++commits;
    cv.notify_all();
    // The first COMMIT, silent, waits for the agent to give up on it and
    // send it again on its next control connection.
    cv.wait_for(lock, 20s, [&] { return commits >= 2; });
  };
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::vector<uint8_t> bytes = MakeVolume(1 << 20, 7);
  Result<BackupResult> result = BackUp("alice", "twice", bytes);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  {
    std::lock_guard lock(mu);
    EXPECT_GE(commits, 2) << "the agent did not send COMMIT again";
  }
  EXPECT_EQ(LocalSnapshots(NamespacedVolume("alice", "twice")), 1u);
  std::string target = dir_.path() + "/twice.out";
  ASSERT_TRUE(Restore("alice", "twice", target).ok());
  EXPECT_EQ(ReadAll(target), bytes);
  ASSERT_NO_FATAL_FAILURE(ExpectTmpEmpty());
  // The server goes on: the volume takes its next backup.
  ASSERT_TRUE(BackUp("alice", "twice", MakeVolume(1 << 20, 8)).ok());
}

// ---- the clients file ----

TEST_F(AuthzTest, AClientsFileWritableByOthersIsRefused) {
  ASSERT_EQ(chmod(ClientsFile().c_str(), 0664), 0);
  auto reg = ClientRegistry::Load(ClientsFile());
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), Code::kPermission);
  const std::string& m = reg.status().message();
  EXPECT_NE(m.find(ClientsFile()), std::string::npos) << m;
  EXPECT_NE(m.find("0664"), std::string::npos) << m;
  EXPECT_NE(m.find("chmod 600"), std::string::npos) << m;
  ServerThread server;
  std::string error;
  EXPECT_FALSE(server.Start(so_, -1, &error));
  EXPECT_NE(error.find("writable by group or others"), std::string::npos) << error;
}

TEST_F(AuthzTest, AClientsFileOwnedByAnotherUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "skipped: giving a file to another user needs root";
  ASSERT_EQ(chown(ClientsFile().c_str(), 4242, 4242), 0);
  auto reg = ClientRegistry::Load(ClientsFile());
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), Code::kPermission);
  const std::string& m = reg.status().message();
  EXPECT_NE(m.find("owner uid 4242"), std::string::npos) << m;
  EXPECT_NE(m.find("chown"), std::string::npos) << m;
}

TEST_F(AuthzTest, ASymlinkPlantedAtATempNameIsNotFollowed) {
  // The name the file used to be rewritten through, and a victim behind it.
  std::string victim = dir_.path() + "/victim";
  WriteAll(victim, {'v'});
  std::string planted = ClientsFile() + ".tmp." + std::to_string(getpid());
  ASSERT_EQ(symlink(victim.c_str(), planted.c_str()), 0);
  ASSERT_NO_FATAL_FAILURE(EditClients([](ClientRegistry& r) { ASSERT_TRUE(r.Add("carol", "append").ok()); }));
  EXPECT_EQ(ReadAll(victim), std::vector<uint8_t>{'v'});
  auto reg = ClientRegistry::Load(ClientsFile());
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  EXPECT_NE(reg->Find("carol"), nullptr);
  struct stat st;
  ASSERT_EQ(stat(ClientsFile().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temp file is left behind (the planted link aside).
  DIR* d = opendir(dir_.path().c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (dir_.path() + "/" + name == planted) continue;
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
  closedir(d);
}

// ---- limits ----

TEST_F(AuthzTest, AQuotaExceededMidBackupFailsItAndCommitsNothing) {
  ClientLimits l;
  l.max_bytes = 1 << 20;
  SetLimits("alice", l);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto big = BackUp("alice", "q", MakeVolume(4 << 20, 7));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kNoSpace) << big.status().ToString();
  EXPECT_NE(big.status().message().find("quota"), std::string::npos) << big.status().ToString();
  EXPECT_EQ(LocalSnapshots(NamespacedVolume("alice", "q")), 0u);
  ASSERT_NO_FATAL_FAILURE(ExpectTmpEmpty());
  // The repository is intact: a backup within the quota, and bob's, succeed.
  auto small = BackUp("alice", "q", MakeVolume(256 << 10, 8));
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  ASSERT_TRUE(BackUp("bob", "q", MakeVolume(4 << 20, 9)).ok());
}

TEST_F(AuthzTest, TheVolumeCountLimitRefusesANewVolume) {
  ClientLimits l;
  l.max_volumes = 2;
  SetLimits("alice", l);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_TRUE(BackUp("alice", "v1", MakeVolume(4096, 1)).ok());
  ASSERT_TRUE(BackUp("alice", "v2", MakeVolume(4096, 2)).ok());
  auto third = BackUp("alice", "v3", MakeVolume(4096, 3));
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), Code::kNoSpace) << third.status().ToString();
  EXPECT_NE(third.status().message().find("max_volumes"), std::string::npos);
  // Its existing volumes still take backups; other clients are not limited by it.
  ASSERT_TRUE(BackUp("alice", "v1", MakeVolume(4096, 4)).ok());
  ASSERT_TRUE(BackUp("bob", "v3", MakeVolume(4096, 5)).ok());
}

TEST_F(AuthzTest, AbandonedBackupsOfOneClientDoNotBlockAnother) {
  ClientLimits l;
  l.max_backups = 3;
  l.max_waiting = 2;
  SetLimits("alice", l);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  for (int i = 0; i < 12; ++i) {
    auto conn = Authenticated("alice");
    ASSERT_NE(conn, nullptr);
    auto token = Begin(*conn, "ab" + std::to_string(i), 8 << 20, 2);
    ASSERT_TRUE(token.ok()) << i << ": " << token.status().ToString();
    conn.reset();  // abandoned: the server waits for a resume
  }
  auto start = Clock::now();
  auto b = BackUp("bob", "db", MakeVolume(1 << 20, 10));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_LT(SecondsSince(start), 10.0);
  // Alice too can begin again: her oldest abandoned backups were rolled back.
  auto a = BackUp("alice", "db", MakeVolume(1 << 20, 11));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  // Three live backups of hers are her limit: a fourth is refused (busy).
  std::vector<std::unique_ptr<Conn>> live;
  for (int i = 0; i < 3; ++i) {
    live.push_back(Authenticated("alice"));
    ASSERT_TRUE(Begin(*live.back(), "live" + std::to_string(i), 8 << 20, 1).ok()) << i;
  }
  auto fourth = Authenticated("alice");
  auto refused = Begin(*fourth, "live3", 8 << 20, 1);
  EXPECT_EQ(refused.status().code(), Code::kBusy) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("max_backups"), std::string::npos);
}

// LIST of every volume on an authenticated connection: OK at DONE, else
// the server's answer.
Status ListOn(Conn& conn) {
  PayloadWriter list;
  list.String("");
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kList, 3, list.bytes(), kTimeout));
  for (;;) {
    DP420_ASSIGN_OR_RETURN(Frame f, conn.Recv(kTimeout));
    if (f.type() == FrameType::kPing) {
      DP420_RETURN_IF_ERROR(AnswerPing(conn, f, kTimeout));
    } else if (f.type() == FrameType::kError) {
      return StatusFromError(f, "server");
    } else if (f.type() == FrameType::kDone) {
      return Status::Ok();
    }
  }
}

TEST_F(AuthzTest, AClientBeyondItsSessionCapIsBusyWhileAnotherGetsIn) {
  ClientLimits l;
  l.max_sessions = 3;
  SetLimits("alice", l);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::vector<std::unique_ptr<Conn>> alice;
  for (int i = 0; i < 3; ++i) {
    alice.push_back(Authenticated("alice"));
    ASSERT_NE(alice.back(), nullptr);
    ASSERT_TRUE(ListOn(*alice.back()).ok()) << "session " << i;
  }
  // The fourth authenticates (its key is good), then gets the sealed kBusy.
  auto extra = Authenticated("alice");
  ASSERT_NE(extra, nullptr);
  Status busy = ListOn(*extra);
  EXPECT_EQ(busy.code(), Code::kBusy) << busy.ToString();
  EXPECT_NE(busy.message().find("max_sessions"), std::string::npos) << busy.ToString();
  // Bob is not held back by alice's sessions.
  auto bob = Authenticated("bob");
  ASSERT_NE(bob, nullptr);
  EXPECT_TRUE(ListOn(*bob).ok());
  // A session that ends makes room again.
  alice.pop_back();
  Status again = Status::Busy("not tried");
  auto deadline = Clock::now() + 5s;
  while (again.code() == Code::kBusy && Clock::now() < deadline) {
    auto conn = Authenticated("alice");
    ASSERT_NE(conn, nullptr);
    again = ListOn(*conn);
    if (again.code() == Code::kBusy) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(again.ok()) << again.ToString();
}

TEST_F(AuthzTest, IdleStripesCannotPinMoreThanTheClientsBufferBound) {
  constexpr uint64_t kBound = 64ull << 20;
  constexpr uint32_t kBlock = 4u << 20;
  ClientLimits l;
  l.max_stripe_memory = kBound;
  SetLimits("alice", l);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto control = Authenticated("alice");
  ASSERT_NE(control, nullptr);
  auto token = Begin(*control, "mem", uint64_t{kBlock} * 16 * 256, 16, kBlock);
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  std::vector<std::unique_ptr<Conn>> stripes;
  int ready = 0;
  Status refused;
  for (uint32_t i = 0; i < 16; ++i) {
    stripes.push_back(Authenticated("alice"));
    Status s = Join(*stripes.back(), *token, i);
    if (s.ok()) {
      ++ready;
    } else {
      refused = s;
      break;
    }
  }
  // Each stripe holds at least 2 buffers of a block and a page of padding.
  uint64_t each = 2 * (uint64_t{kBlock} + 4096);
  EXPECT_LE(ready * each, kBound) << ready << " stripes joined";
  EXPECT_GT(ready, 0);
  EXPECT_EQ(refused.code(), Code::kBusy) << refused.ToString();
  EXPECT_NE(refused.message().find("max_stripe_memory"), std::string::npos) << refused.ToString();
  // The refusal ended the backup; bob is not limited by alice's buffers.
  stripes.clear();
  control.reset();
  ASSERT_TRUE(BackUp("bob", "db", MakeVolume(1 << 20, 12)).ok());
}


// ---- consistency groups: what a client holding valid credentials may not do ----

// GROUP_JOIN with `volumes`; OK at its DONE, else the server's answer.
Status JoinGroups(Conn& conn, const std::vector<std::string>& volumes) {
  PayloadWriter w;
  w.U32(uint32_t(volumes.size()));
  for (const auto& v : volumes) w.String(v);
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kGroupJoin, 1, w.bytes(), kTimeout));
  for (;;) {
    DP420_ASSIGN_OR_RETURN(Frame f, conn.Recv(kTimeout));
    if (f.type() == FrameType::kPing) {
      DP420_RETURN_IF_ERROR(AnswerPing(conn, f, kTimeout));
    } else if (f.type() == FrameType::kError) {
      return StatusFromError(f, "server");
    } else {
      return ExpectFrame(f, FrameType::kDone, "server");
    }
  }
}

TEST_F(AuthzTest, AGroupMessageForAnotherClientsMemberEndsTheChannel) {
  StartServer();
  auto alice = Authenticated("alice");
  ASSERT_NE(alice, nullptr);
  ASSERT_TRUE(JoinGroups(*alice, {"disk"}).ok());
  // alice speaks for bob's volume: a forged QUIET or DURABLE of bob's would
  // let a group commit without bob.
  control::GroupMsg forged =
      control::GroupMsg::Make(control::GroupMsgKind::kDurable, "db", 1, "bob:disk", "00");
  PayloadWriter w;
  WriteGroupMsg(forged, &w);
  ASSERT_TRUE(alice->Send(FrameType::kGroupMsg, 0, w.bytes(), kTimeout).ok());
  auto answer = Next(*alice);
  ASSERT_FALSE(answer.ok()) << "the channel went on after a forged member";
  EXPECT_EQ(answer.status().code(), Code::kPermission) << answer.status().ToString();
  EXPECT_NE(answer.status().message().find("bob:disk"), std::string::npos);
  EXPECT_LT(SecondsUntilClosed(*alice, 5000ms), 5.0);
}

TEST_F(AuthzTest, JoiningWithANameThatIsNotAVolumeIsRefused) {
  StartServer();
  auto alice = Authenticated("alice");
  ASSERT_NE(alice, nullptr);
  Status refused = JoinGroups(*alice, {"../bob"});
  EXPECT_FALSE(refused.ok());
  auto again = Authenticated("alice");
  ASSERT_NE(again, nullptr);
  EXPECT_FALSE(JoinGroups(*again, {"disk", "disk"}).ok());
}

TEST_F(AuthzTest, AMemberBackupForAnEpochNoCoordinatorRunsIsRefusedAndWritesNothing) {
  StartServer();
  auto alice = Authenticated("alice");
  ASSERT_NE(alice, nullptr);
  PayloadWriter w;
  w.String("disk");
  w.U32(0);
  w.U64(1 << 20);
  w.U32(1);
  w.String("/dev/test");
  w.String("file");
  w.String("{}");
  w.String("dp420 test");
  w.String("");
  w.String("db");
  w.U64(7);  // never begun: a stale or invented epoch
  ASSERT_TRUE(alice->Send(FrameType::kBackupBegin, 1, w.bytes(), kTimeout).ok());
  auto answer = Next(*alice);
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), Code::kBusy) << answer.status().ToString();
  EXPECT_NE(answer.status().message().find("not running"), std::string::npos)
      << answer.status().ToString();
  EXPECT_EQ(LocalSnapshots(NamespacedVolume("alice", "disk")), 0u);
  ExpectTmpEmpty();
}

TEST_F(AuthzTest, GroupBackupsAndGroupListsNeedAnAdminClient) {
  StartServer();
  auto remote = RemoteRepository::Connect(Remote("alice"));
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  JobControl job;
  auto backup = (*remote)->Admin("group-backup", {{"group", "db"}, {"members", {"alice:disk"}}},
                                 job);
  ASSERT_FALSE(backup.ok());
  EXPECT_EQ(backup.status().code(), Code::kPermission) << backup.status().ToString();
  auto again = RemoteRepository::Connect(Remote("alice"));
  ASSERT_TRUE(again.ok());
  auto groups = (*again)->Admin("groups", Json::object(), job);
  ASSERT_FALSE(groups.ok());
  EXPECT_EQ(groups.status().code(), Code::kPermission);
  // An admin asking for a member no agent serves gets told which.
  auto root = RemoteRepository::Connect(Remote("root"));
  ASSERT_TRUE(root.ok());
  auto missing = (*root)->Admin("group-backup", {{"group", "db"}, {"members", {"alice:disk"}}},
                                job);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("alice:disk"), std::string::npos);
}

}  // namespace
}  // namespace dp420::net
