// The repository server against a hostile authenticated agent, over real
// loopback sockets: BACKUP_BEGIN with strings that are not UTF-8, oversized
// or malformed metadata, requests naming volumes, snapshots and tokens that
// are not UTF-8, and exceptions thrown on session threads. Each is refused
// (or fails) with a clear error that ends only its own session; the server
// keeps running, and a normal backup and list succeed afterwards.
//
// Before the server validated BACKUP_BEGIN, a source_path that is not UTF-8
// reached the manifest's JSON dump at COMMIT, which threw on the session
// thread and terminated the whole process (this test binary with it).
#include <dirent.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/conn.h"
#include "engine/net/server.h"
#include "engine/net/volumes.h"
#include "server_thread.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using dp420::testing::MakeVolume;
using dp420::testing::ReadAll;
using dp420::testing::TempDir;
using dp420::testing::WriteAll;

constexpr Millis kTimeout = 5000ms;

// What an agent puts in BACKUP_BEGIN; the defaults are a valid request for an
// empty volume, which needs no stripe: COMMIT commits at once.
struct Begin {
  std::string volume = "rob";
  uint64_t volume_size = 0;
  uint32_t stripes = 1;
  std::string source_path = "/dev/rob";
  std::string source_kind = "file";
  std::string topology = "{}";
  std::string tool_version = "dp420 test";
  std::string resume_token;
};

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

class RobustnessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_path_ = dir_.path() + "/repo";
    repo_ = dp420::testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    std::string clients_path = dir_.path() + "/clients.json";
    auto clients = testnet::WriteTestClients(clients_path, dir_.path(), {{"alice"}});
    ASSERT_TRUE(clients.ok()) << clients.status().ToString();
    so_ = testnet::TestServerOptions(repo_path_, clients_path);
  }

  void StartServer() {
    server_ = std::make_unique<ServerThread>();
    std::string error;
    ASSERT_TRUE(server_->Start(so_, -1, &error)) << error;
    address_ = "127.0.0.1:" + std::to_string(server_->port());
  }

  std::string KeyFile() const { return testnet::TestKeyFile(dir_.path(), "alice"); }

  // An authenticated connection as alice. The one place the handshake is
  // called, so that a change of its signature is made here only.
  std::unique_ptr<Conn> Authenticated() {
    auto conn = Conn::Connect(address_, kTimeout);
    EXPECT_TRUE(conn.ok()) << conn.status().ToString();
    if (!conn.ok()) return nullptr;
    uint8_t key[kKeyBytes];
    uint8_t pin[kFingerprintBytes];
    Status read = ReadKeyFile(KeyFile(), key, pin);
    EXPECT_TRUE(read.ok()) << read.ToString();
    uint64_t server_time = 0;
    Status s = read.ok() ? ClientHandshake(**conn, "alice", key, pin, kTimeout, &server_time) : read;
    EXPECT_TRUE(s.ok()) << s.ToString();
    return s.ok() && read.ok() ? std::move(conn).value() : nullptr;
  }

  // The next frame other than PING (answered): an ERROR as its Status, OK for
  // a frame of type `want`, kInternal naming any other type.
  static Status Await(Conn& conn, FrameType want) {
    for (;;) {
      auto f = conn.Recv(kTimeout);
      if (!f.ok()) return f.status();
      if (f->type() == FrameType::kPing) {
        DP420_RETURN_IF_ERROR(AnswerPing(conn, *f, kTimeout));
        continue;
      }
      if (f->type() == FrameType::kError) return StatusFromError(*f, "server");
      if (f->type() == want) return Status::Ok();
      return Status::Internal("unexpected " + FrameTypeName(f->header.type));
    }
  }

  // Sends BACKUP_BEGIN and, if the server accepts it, COMMIT (the server
  // commits an empty volume at once). The status of the exchange: the
  // server's ERROR, or OK when it committed.
  Status Attack(const Begin& b) {
    std::unique_ptr<Conn> conn = Authenticated();
    if (!conn) return Status::Internal("no connection");
    PayloadWriter w;
    w.String(b.volume);
    w.U32(0);
    w.U64(b.volume_size);
    w.U32(b.stripes);
    w.String(b.source_path);
    w.String(b.source_kind);
    w.String(b.topology);
    w.String(b.tool_version);
    w.String(b.resume_token);
    DP420_RETURN_IF_ERROR(conn->Send(FrameType::kBackupBegin, 1, w.bytes(), kTimeout));
    DP420_RETURN_IF_ERROR(Await(*conn, FrameType::kBackupReady));
    PayloadWriter commit;
    for (int i = 0; i < 4; ++i) commit.U64(0);
    DP420_RETURN_IF_ERROR(conn->Send(FrameType::kCommit, 2, commit.bytes(), kTimeout));
    return Await(*conn, FrameType::kCommitted);
  }

  // One request frame with the given payload; the server's answer.
  Status Request(FrameType type, const PayloadWriter& w, FrameType answer) {
    std::unique_ptr<Conn> conn = Authenticated();
    if (!conn) return Status::Internal("no connection");
    DP420_RETURN_IF_ERROR(conn->Send(type, 7, w.bytes(), kTimeout));
    return Await(*conn, answer);
  }

  // The server still runs and serves: a normal backup of `volume` through
  // RemoteRepository, listed afterwards, restored bit-exact.
  void ExpectServerServes(const std::string& volume) {
    ASSERT_TRUE(server_->running());
    std::vector<uint8_t> bytes = MakeVolume(3 * 1024 * 1024 + 777, 11);
    std::string source = dir_.path() + "/" + volume + ".img";
    WriteAll(source, bytes);
    RemoteOptions ro;
    ro.address = address_;
    ro.client = "alice";
    ro.key_file = KeyFile();
    ro.connect_timeout = 2000ms;
    ro.heartbeat_interval = 1000ms;
    ro.retry_for = 2000ms;
    ro.cache_dir = dir_.path() + "/cache";
    auto remote = RemoteRepository::Connect(ro);
    ASSERT_TRUE(remote.ok()) << remote.status().ToString();
    BackupOptions bo;
    bo.volume = volume;
    bo.source_path = source;
    bo.threads = 2;
    auto backup = (*remote)->Backup(bo);
    ASSERT_TRUE(backup.ok()) << backup.status().ToString();
    std::vector<Manifest> listed;
    Status s = (*remote)->ListManifests(volume, &listed);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].snapshot_id, backup->manifest.snapshot_id);
    RestoreOptions restore;
    restore.volume = volume;
    restore.target_path = dir_.path() + "/" + volume + ".restored";
    auto restored = (*remote)->Restore(restore);
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    EXPECT_EQ(ReadAll(restore.target_path), bytes);
  }

  // Nothing of a refused or failed backup is left: no manifest, and no
  // journal once the server rolled it back (just after its ERROR went out).
  void ExpectNothingCommitted(const std::string& volume) {
    std::vector<Manifest> manifests;
    ASSERT_TRUE(
        repo_->ListManifests(NamespacedVolume("alice", volume), &manifests, nullptr).ok());
    EXPECT_TRUE(manifests.empty());
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!ListDir(repo_path_ + "/tmp").empty() && std::chrono::steady_clock::now() < deadline) {
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

TEST_F(RobustnessTest, SourcePathNotUtf8IsRefusedAndTheServerGoesOn) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Begin b;
  b.source_path = "/dev/\xff\xfe";
  Status s = Attack(b);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("source_path is not valid UTF-8"), std::string::npos)
      << s.message();
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommitted("rob"));
  ASSERT_NO_FATAL_FAILURE(ExpectServerServes("after"));
}

TEST_F(RobustnessTest, BadBeginFieldsAreRefusedNamingTheField) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  // The valid request commits: the refusals below are the fields' doing.
  ASSERT_TRUE(Attack(Begin{}).ok());
  std::string deep(100, '[');
  deep += std::string(100, ']');
  struct Case {
    const char* name;
    Begin begin;
    const char* message;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, const char* message, auto change) {
    Begin b;
    b.volume = "bad";
    change(b);
    cases.push_back({name, b, message});
  };
  add("volume", "volume is not valid UTF-8", [](Begin& b) { b.volume = "v\xff"; });
  add("topology utf8", "node_topology is not valid UTF-8",
      [](Begin& b) { b.topology = "{\"host\":\"\xc3\x28\"}"; });
  add("topology size", "node_topology is 70000 bytes (at most 65536)", [](Begin& b) {
    b.topology = "{\"pad\":\"" + std::string(70000 - 10, 'x') + "\"}";
  });
  add("topology not json", "node_topology is not a JSON object",
      [](Begin& b) { b.topology = "not json"; });
  add("topology array", "node_topology is not a JSON object", [](Begin& b) { b.topology = "[]"; });
  add("topology deep", "node_topology nests deeper than 16 levels",
      [&](Begin& b) { b.topology = "{\"a\":" + deep + "}"; });
  add("tool_version utf8", "tool_version is not valid UTF-8",
      [](Begin& b) { b.tool_version = "dp420 \xed\xa0\x80"; });  // a surrogate
  add("tool_version size", "tool_version is 65 bytes (at most 64)",
      [](Begin& b) { b.tool_version = std::string(65, 'v'); });
  add("source_kind", "source_kind must be", [](Begin& b) { b.source_kind = "pipe"; });
  add("resume_token", "resume_token is not valid UTF-8",
      [](Begin& b) { b.resume_token = "\x80\x80"; });
  add("source_path size", "source_path is 16385 bytes (at most 16384)",
      [](Begin& b) { b.source_path = "/" + std::string(16384, 'p'); });
  for (const Case& c : cases) {
    Status s = Attack(c.begin);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << c.name << ": " << s.ToString();
    EXPECT_NE(s.message().find(c.message), std::string::npos) << c.name << ": " << s.message();
    ASSERT_TRUE(server_->running()) << c.name;
  }
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommitted("bad"));
  ASSERT_NO_FATAL_FAILURE(ExpectServerServes("after"));
}

TEST_F(RobustnessTest, RequestStringsNotUtf8AreRefused) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string bad = "\xff\xfe";
  PayloadWriter list;
  list.String(bad);
  PayloadWriter verify;
  verify.String("rob");
  verify.String(bad);
  verify.U8(0);
  PayloadWriter restore;
  restore.String("rob");
  restore.String(bad);
  PayloadWriter join;
  join.String(bad);
  join.U32(0);
  struct Case {
    const char* name;
    FrameType type;
    const PayloadWriter& payload;
    FrameType answer;
    const char* message;
  };
  for (const Case& c : {Case{"list", FrameType::kList, list, FrameType::kDone, "volume is not"},
                        Case{"verify", FrameType::kVerify, verify, FrameType::kDone,
                             "snapshot is not"},
                        Case{"restore", FrameType::kRestore, restore, FrameType::kDone,
                             "snapshot is not"},
                        Case{"stripe", FrameType::kStripeJoin, join, FrameType::kStripeReady,
                             "token is not"}}) {
    Status s = Request(c.type, c.payload, c.answer);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << c.name << ": " << s.ToString();
    EXPECT_NE(s.message().find(std::string(c.message) + " valid UTF-8"), std::string::npos)
        << c.name << ": " << s.message();
  }
  ASSERT_NO_FATAL_FAILURE(ExpectServerServes("after"));
}

// An exception on a session thread ends that session with an ERROR (kInternal)
// and rolls its backup back; the server goes on.
TEST_F(RobustnessTest, ExceptionOnASessionEndsOnlyThatSession) {
  std::atomic<bool> throw_list{true}, throw_commit{true};
  so_.on_session_point = [&](const char* point) {
    std::string p = point;
    if ((p == "list" && throw_list.exchange(false)) ||
        (p == "commit" && throw_commit.exchange(false))) {
      throw std::runtime_error("injected at " + p);
    }
  };
  ASSERT_NO_FATAL_FAILURE(StartServer());
  PayloadWriter list;
  list.String("");
  Status s = Request(FrameType::kList, list, FrameType::kDone);
  EXPECT_EQ(s.code(), Code::kInternal) << s.ToString();
  EXPECT_NE(s.message().find("injected at list"), std::string::npos) << s.message();

  s = Attack(Begin{});
  EXPECT_EQ(s.code(), Code::kInternal) << s.ToString();
  EXPECT_NE(s.message().find("injected at commit"), std::string::npos) << s.message();
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommitted("rob"));
  // The failed backup released its volume: the same volume backs up now.
  ASSERT_TRUE(Attack(Begin{}).ok());
  ASSERT_NO_FATAL_FAILURE(ExpectServerServes("after"));
}

}  // namespace
}  // namespace dp420::net
