// The repository server (RunServer) and RemoteRepository over real loopback
// sockets: list, verify and restore against repositories made with RunBackup,
// volume ownership, the clients file reloaded while running, fuzzed streams,
// a lost server behind a paused DelayProxy, heartbeats during a long verify,
// reconnect backoff and the stop/drain sequence.
#include <dirent.h>
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "delay_proxy.h"
#include "engine/core/backup.h"
#include "engine/core/verify.h"
#include "engine/net/client.h"
#include "engine/net/server.h"
#include "io/file.h"
#include "simd/simd.h"
#include "server_thread.h"
#include "socket_util.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dp420::testing::Exists;
using dp420::testing::MakeVolume;
using dp420::testing::ReadAll;
using dp420::testing::RewriteManifests;
using dp420::testing::TempDir;
using dp420::testing::WriteAll;

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Gives every manifest of `volume` to `client`, re-sealing the hash chain, as
// a network backup by that client would have written them.
void SetOwner(const std::string& repo, const std::string& volume, const std::string& client) {
  RewriteManifests(repo, volume, [&](Json& j, size_t) { j["client"] = client; });
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_path_ = dir_.path() + "/repo";
    repo_ = dp420::testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    clients_file_ = dir_.path() + "/clients.json";
    auto clients = testnet::WriteTestClients(clients_file_, dir_.path(),
                                             {{"alice"}, {"bob"}, {"root", "admin"}});
    ASSERT_TRUE(clients.ok()) << clients.status().ToString();
    so_ = testnet::TestServerOptions(repo_path_, clients_file_);
  }
  void TearDown() override { StopServer(); }

  std::string KeyFile(const std::string& client) const {
    return testnet::TestKeyFile(dir_.path(), client);
  }

  // Backs `bytes` up as `volume` and gives the volume to `client` ("" = local).
  void Backup(const std::string& volume, const std::vector<uint8_t>& bytes,
              const std::string& client) {
    std::string source = dir_.path() + "/" + volume + ".img";
    WriteAll(source, bytes);
    BackupOptions o;
    o.volume = volume;
    o.source_path = source;
    o.threads = 2;
    auto r = RunBackup(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    unlink(source.c_str());
    if (!client.empty()) SetOwner(repo_path_, volume, client);
  }

  // Volumes of the common tests: "av" (alice, two snapshots), "bv" (bob).
  void MakeVolumes() {
    av1_ = MakeVolume(6 * 1024 * 1024 + 12345, 1);
    Backup("av", av1_, "alice");
    av2_ = av1_;
    for (size_t off : {size_t{0}, size_t{3 << 20}, av2_.size() - 1}) av2_[off] ^= 0x5a;
    Backup("av", av2_, "alice");
    bv_ = MakeVolume(3 * 1024 * 1024, 2);
    Backup("bv", bv_, "bob");
  }

  void StartServer() {
    server_ = std::make_unique<ServerThread>();
    std::string error;
    ASSERT_TRUE(server_->Start(so_, -1, &error)) << error;
    port_ = server_->port();
    address_ = "127.0.0.1:" + std::to_string(port_);
  }

  // Stops the server (server_status_ gets RunServer's status); how long that took, in
  // seconds.
  double StopServer() {
    if (!server_) return 0;
    double seconds = 0;
    server_status_ = server_->Stop(&seconds);
    server_.reset();
    return seconds;
  }

  bool ServerRunning() { return server_ && server_->running(); }

  RemoteOptions Options(const std::string& client, const std::string& address = "") const {
    RemoteOptions o;
    o.address = address.empty() ? address_ : address;
    o.client = client;
    o.key_file = KeyFile(client);
    o.connect_timeout = 2000ms;
    o.heartbeat_interval = 1000ms;
    o.retry_for = 2000ms;
    return o;
  }

  std::unique_ptr<RemoteRepository> ConnectAs(const std::string& client,
                                              const std::string& address = "") {
    auto r = RemoteRepository::Connect(Options(client, address));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  RestoreOptions RestoreTo(const std::string& volume, const std::string& snapshot,
                           const std::string& name) const {
    RestoreOptions o;
    o.volume = volume;
    o.snapshot = snapshot;
    o.target_path = dir_.path() + "/" + name;
    return o;
  }

  TempDir dir_;
  std::string repo_path_, clients_file_, address_;
  std::unique_ptr<Repository> repo_;
  std::vector<uint8_t> av1_, av2_, bv_;
  ServerOptions so_;
  std::unique_ptr<ServerThread> server_;
  Status server_status_;
  int port_ = -1;
};

TEST_F(RemoteTest, ListVerifyAndRestoreOverLoopback) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->repo_id(), repo_->repo_id_hex());
  EXPECT_LE(std::abs(alice->clock().offset_ns), alice->clock().error_ns + 2000000);

  std::vector<Manifest> local;
  ASSERT_TRUE(repo_->ListManifests("av", &local, nullptr).ok());
  ASSERT_EQ(local.size(), 2u);
  for (const std::string volume : {"", "av"}) {
    std::vector<Manifest> listed;
    Status s = alice->ListManifests(volume, &listed);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_EQ(listed.size(), 2u) << "volume '" << volume << "'";
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(listed[i].snapshot_id, local[i].snapshot_id);
      EXPECT_EQ(listed[i].seal, local[i].seal);
      EXPECT_EQ(listed[i].file_name, local[i].file_name);
      EXPECT_EQ(listed[i].client, "alice");
    }
  }

  VerifyOptions vo;
  vo.read_data = true;
  auto report = alice->Verify(vo);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->snapshots_checked, 2u);
  EXPECT_GT(report->blocks_checked, 0u);
  EXPECT_TRUE(report->problems.empty());
  EXPECT_TRUE(report->broken_snapshots.empty());

  std::vector<Progress> progress;
  RestoreOptions ro = RestoreTo("av", "latest", "av-latest");
  ro.control.progress = [&](const Progress& p) { progress.push_back(p); };
  auto latest = alice->Restore(ro);
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  EXPECT_EQ(ReadAll(ro.target_path), av2_);
  EXPECT_EQ(latest->manifest.snapshot_id, local[1].snapshot_id);
  EXPECT_EQ(latest->blocks_restored + latest->blocks_zero, local[1].blocks_total);
  EXPECT_GT(latest->blocks_zero, 0u);
  ASSERT_FALSE(progress.empty());
  EXPECT_STREQ(progress.back().phase, "restore");
  EXPECT_EQ(progress.back().bytes_done, av2_.size());

  RestoreOptions first = RestoreTo("av", local[0].snapshot_id.substr(0, 6), "av-first");
  auto older = alice->Restore(first);
  ASSERT_TRUE(older.ok()) << older.status().ToString();
  EXPECT_EQ(ReadAll(first.target_path), av1_);
  // An existing target is not overwritten without force.
  EXPECT_EQ(alice->Restore(first).status().code(), Code::kExists);
  first.force = true;
  EXPECT_TRUE(alice->Restore(first).ok());

  auto root = ConnectAs("root");
  ASSERT_NE(root, nullptr);
  std::vector<Manifest> all;
  ASSERT_TRUE(root->ListManifests("", &all).ok());
  EXPECT_EQ(all.size(), 3u);
  auto full = root->Verify(VerifyOptions{});
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(full->snapshots_checked, 3u);
  EXPECT_EQ(full->unreferenced_packs, 0u);
  auto bv = root->Restore(RestoreTo("bv", "latest", "bv"));
  ASSERT_TRUE(bv.ok()) << bv.status().ToString();
  EXPECT_EQ(ReadAll(dir_.path() + "/bv"), bv_);
}

TEST_F(RemoteTest, CanceledRestoreLeavesNoTarget) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  std::atomic<bool> cancel{false};
  RestoreOptions ro = RestoreTo("av", "latest", "av");
  ro.control.cancel = &cancel;
  ro.control.progress = [&](const Progress&) { cancel.store(true); };
  auto r = alice->Restore(ro);
  EXPECT_EQ(r.status().code(), Code::kCanceled) << r.status().ToString();
  EXPECT_FALSE(Exists(ro.target_path));
  EXPECT_FALSE(Exists(ro.target_path + ".dp420-partial"));
  // The handle goes on with a fresh connection.
  ro.control = JobControl{};
  auto again = alice->Restore(ro);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(ReadAll(ro.target_path), av2_);
}

// Volumes written before namespacing (plain names, owned through their
// manifests' client): another client's, or nobody's, answer as missing ones.
TEST_F(RemoteTest, OtherClientsVolumesAnswerAsMissingOnes) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  Backup("local", MakeVolume(256 * 1024, 3), "");  // a local backup: nobody's client
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  for (const std::string volume : {"bv", "local", "none"}) {
    std::vector<Manifest> listed;
    Status s = alice->ListManifests(volume, &listed);
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(listed.empty());
    auto r = alice->Restore(RestoreTo(volume, "latest", "stolen"));
    EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
    EXPECT_EQ(r.status().message().find("another client"), std::string::npos);
    EXPECT_FALSE(Exists(dir_.path() + "/stolen"));
    EXPECT_FALSE(Exists(dir_.path() + "/stolen.dp420-partial"));
    VerifyOptions vo;
    vo.volume = volume;
    EXPECT_EQ(alice->Verify(vo).status().code(), Code::kNotFound);
  }
  // After the refusals the next call reconnects and sees alice's own volume only.
  std::vector<Manifest> mine;
  ASSERT_TRUE(alice->ListManifests("", &mine).ok());
  ASSERT_EQ(mine.size(), 2u);
  for (const auto& m : mine) EXPECT_EQ(m.volume, "av");
  auto bob = ConnectAs("bob");
  ASSERT_NE(bob, nullptr);
  std::vector<Manifest> bobs;
  ASSERT_TRUE(bob->ListManifests("", &bobs).ok());
  ASSERT_EQ(bobs.size(), 1u);
  EXPECT_EQ(bobs[0].volume, "bv");
  auto report = bob->Verify(VerifyOptions{});
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->snapshots_checked, 1u);
  // Bad requests are refused, not crashes.
  EXPECT_EQ(alice->ListManifests("../etc", &mine).code(), Code::kInvalidArgument);
}

TEST_F(RemoteTest, DamagedBlockEndsRestoreWithCorruption) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  std::vector<std::string> before = ListDir(repo_path_ + "/packs");
  Backup("cv", MakeVolume(2 * 1024 * 1024, 9), "bob");
  std::vector<std::string> after = ListDir(repo_path_ + "/packs");
  // The largest new pack holds cv's blocks: damage its first record.
  std::string data_pack;
  uint64_t largest = 0;
  for (const auto& name : after) {
    if (std::find(before.begin(), before.end(), name) != before.end()) continue;
    struct stat st;
    ASSERT_EQ(stat((repo_path_ + "/packs/" + name).c_str(), &st), 0);
    if (uint64_t(st.st_size) > largest) {
      largest = st.st_size;
      data_pack = repo_path_ + "/packs/" + name;
    }
  }
  ASSERT_FALSE(data_pack.empty());
  chmod(data_pack.c_str(), 0600);
  auto bytes = ReadAll(data_pack);
  bytes[4096 + 100] ^= 0xff;
  WriteAll(data_pack, bytes);

  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto bob = ConnectAs("bob");
  ASSERT_NE(bob, nullptr);
  RestoreOptions ro = RestoreTo("cv", "latest", "cv");
  auto r = bob->Restore(ro);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
  EXPECT_NE(r.status().message().find("block"), std::string::npos) << r.status().message();
  EXPECT_FALSE(Exists(ro.target_path));
  EXPECT_FALSE(Exists(ro.target_path + ".dp420-partial"));

  VerifyOptions vo;
  vo.read_data = true;
  auto root = ConnectAs("root");
  ASSERT_NE(root, nullptr);
  auto all = root->Verify(vo);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_FALSE(all->problems.empty());
  ASSERT_EQ(all->broken_snapshots.size(), 1u);
  // Alice's verify of everything she may see knows nothing of bob's damage.
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  auto mine = alice->Verify(vo);
  ASSERT_TRUE(mine.ok()) << mine.status().ToString();
  EXPECT_TRUE(mine->problems.empty());
  EXPECT_EQ(mine->snapshots_checked, 2u);
  // The other volumes still restore.
  EXPECT_TRUE(bob->Restore(RestoreTo("bv", "latest", "bv")).ok());
}

TEST_F(RemoteTest, ClientsFileReloadedWithoutRestart) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto registry = ClientRegistry::Load(clients_file_);
  ASSERT_TRUE(registry.ok());
  auto carol = registry->Add("carol", "append");
  ASSERT_TRUE(carol.ok());
  const std::string pin = registry->identity()->FingerprintHex();
  ASSERT_TRUE(WriteKeyFile(KeyFile("carol"), carol->key.data(), pin).ok());
  ASSERT_TRUE(registry->Remove("bob").ok());
  ASSERT_TRUE(registry->Save(clients_file_).ok());
  EXPECT_NE(ConnectAs("carol"), nullptr);
  auto bob = RemoteRepository::Connect(Options("bob"));
  ASSERT_FALSE(bob.ok());
  EXPECT_EQ(bob.status().code(), Code::kPermission);
  EXPECT_NE(bob.status().message().find("authentication failed"), std::string::npos);
}

TEST_F(RemoteTest, IdleControlConnectionIsReplaced) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  so_.heartbeat_interval = 100ms;  // the server drops agents silent for 0.3 s
  ASSERT_NO_FATAL_FAILURE(StartServer());
  RemoteOptions o = Options("alice");
  o.heartbeat_interval = 100ms;
  auto alice = RemoteRepository::Connect(o);
  ASSERT_TRUE(alice.ok()) << alice.status().ToString();
  // The connection's own end: a new connection to the same server gets another port.
  auto local_port = [&] {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    EXPECT_EQ(getsockname(alice.value()->control().fd(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    return ntohs(a.sin_port);
  };
  uint16_t first_port = local_port();
  // Silent between calls, the agent is dropped: the server closes its end.
  pollfd p{alice.value()->control().fd(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "the server kept a silent agent's connection for 5 s";
  std::vector<Manifest> listed;
  Status s = alice.value()->ListManifests("av", &listed);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(listed.size(), 2u);
  EXPECT_NE(local_port(), first_port) << "the call did not open a new control connection";
}

// Frames with valid checksums around random payloads.
std::vector<uint8_t> EncodeFrame(FrameType type, const std::vector<uint8_t>& payload) {
  FrameHeader h = MakeHeader(type, 1, payload);
  std::vector<uint8_t> out(sizeof(h) + payload.size());
  std::memcpy(out.data(), &h, sizeof(h));
  if (!payload.empty()) std::memcpy(out.data() + sizeof(h), payload.data(), payload.size());
  return out;
}

// Sends `bytes`, half-closes, and waits for the server to close (true) within 5 s.
bool SendAndWaitForClose(int fd, const std::vector<uint8_t>& bytes) {
  std::string error;
  // The server may close before everything is sent: that is fine.
  (void)testnet::SendAll(fd, bytes.data(), bytes.size(), testnet::DeadlineIn(2000ms), &error);
  shutdown(fd, SHUT_WR);
  auto deadline = testnet::DeadlineIn(5000ms);
  char buf[4096];
  for (;;) {
    ssize_t n = testnet::RecvSome(fd, buf, sizeof(buf), deadline, &error);
    if (n == 0 || n == -1) return true;
    if (n == -2) return false;
  }
}

TEST_F(RemoteTest, FuzzedStreamsNeitherCrashNorDisturbOtherSessions) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto registry = ClientRegistry::Load(clients_file_);
  ASSERT_TRUE(registry.ok());
  ASSERT_NE(registry->Find("bob"), nullptr);
  const ClientKey bob = *registry->Find("bob");
  uint8_t pin[kFingerprintBytes];
  IdentityFingerprint(registry->identity()->public_key(), pin);

  // Another session keeps working while the fuzzing runs.
  std::atomic<bool> fuzzing{true};
  std::atomic<int> lists_ok{0}, lists_failed{0};
  std::thread other([&] {
    auto alice = RemoteRepository::Connect(Options("alice"));
    if (!alice.ok()) {
      ++lists_failed;
      return;
    }
    while (fuzzing.load()) {
      std::vector<Manifest> listed;
      Status s = alice.value()->ListManifests("av", &listed);
      (s.ok() && listed.size() == 2 ? lists_ok : lists_failed)++;
      std::this_thread::sleep_for(5ms);
    }
  });
  // Joined on every way out, a failed ASSERT included.
  struct StopOther {
    std::atomic<bool>& fuzzing;
    std::thread& other;
    ~StopOther() {
      fuzzing.store(false);
      if (other.joinable()) other.join();
    }
  } stop_other{fuzzing, other};

  std::mt19937_64 rng(420);
  auto random_bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = uint8_t(rng());
    return v;
  };
  PayloadWriter hello;
  hello.U16(kProtocolVersion);
  hello.String("bob");
  hello.Bytes(random_bytes(kNonceBytes));
  const std::vector<uint8_t> valid_hello = EncodeFrame(FrameType::kHello, hello.bytes());
  int closed = 0;
  int kRounds = 400;  // DP420_FUZZ_ROUNDS (the long run) multiplies it by ten
  if (const char* env = std::getenv("DP420_FUZZ_ROUNDS")) kRounds = 10 * std::max(1, std::atoi(env));
  for (int i = 0; i < kRounds; ++i) {
    std::string error;
    testnet::UniqueFd fd = testnet::ConnectTcp("127.0.0.1", uint16_t(port_), 2000ms, &error);
    ASSERT_TRUE(fd.valid()) << error;
    std::vector<uint8_t> stream;
    switch (i % 4) {
      case 0:  // noise
        stream = random_bytes(1 + rng() % 4096);
        break;
      case 1: {  // a valid HELLO with one bit flipped
        stream = valid_hello;
        size_t bit = rng() % (stream.size() * 8);
        stream[bit / 8] ^= uint8_t(1u << (bit % 8));
        break;
      }
      case 2: {  // a correct header announcing an oversize or unknown frame
        FrameHeader h = MakeHeader(FrameType::kHello, 0, {});
        h.payload_len = uint32_t(kMaxPayloadBytes + 1 + rng() % (1u << 30));
        if (rng() % 2) h.type = uint16_t(27 + rng() % 1000);
        h.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 28);
        stream.resize(sizeof(h));
        std::memcpy(stream.data(), &h, sizeof(h));
        break;
      }
      case 3: {  // authenticated, then random requests, sealed as the server expects
        Conn conn(fd.Release(), "server");
        uint64_t t = 0;
        ASSERT_TRUE(ClientHandshake(conn, "bob", bob.key.data(), pin, 2000ms, &t).ok());
        for (int k = 0; k < 3; ++k) {
          auto type = FrameType(1 + rng() % uint16_t(FrameType::kMaxType));
          std::vector<uint8_t> payload = random_bytes(rng() % 48);
          if (rng() % 2 && payload.size() >= 4) {  // a plausible string length
            uint32_t len = uint32_t(payload.size() - 4);
            std::memcpy(payload.data(), &len, 4);
          }
          if (!conn.Send(type, 1, payload, 2000ms).ok()) break;  // the server closed
        }
        if (rng() % 3 == 0) {
          // Then bytes no one sealed: the server must end the session.
          stream = EncodeFrame(FrameType::kList, random_bytes(8));
          stream[rng() % stream.size()] ^= uint8_t(1 + rng() % 255);
        }
        int copy = ::dup(conn.fd());
        ASSERT_GE(copy, 0);
        fd.Reset(copy);
        break;
      }
    }
    closed += SendAndWaitForClose(fd.get(), stream) ? 1 : 0;
  }
  fuzzing.store(false);
  other.join();
  EXPECT_EQ(closed, kRounds);
  EXPECT_TRUE(ServerRunning());
  EXPECT_GT(lists_ok.load(), 0);
  EXPECT_EQ(lists_failed.load(), 0);

  // The repository is untouched and the server still serves.
  auto report = RunVerify(*repo_, VerifyOptions{.read_data = true});
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty());
  EXPECT_EQ(report->snapshots_checked, 3u);
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  auto restored = alice->Restore(RestoreTo("av", "latest", "av"));
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(ReadAll(dir_.path() + "/av"), av2_);
}

// An authenticated session answering PINGs, for as long as it lives: counts
// the answers that came and those that did not (within 2 s each).
class Sentinel {
 public:
  Sentinel(uint16_t port, const ClientKey& key, const uint8_t pin[kFingerprintBytes])
      : thread_([this, port, key, pin_copy = std::vector<uint8_t>(pin, pin + kFingerprintBytes)] {
          Run(port, key, pin_copy.data());
        }) {}
  ~Sentinel() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  std::atomic<int> answered{0}, missed{0};

 private:
  void Run(uint16_t port, const ClientKey& key, const uint8_t* pin) {
    std::string error;
    testnet::UniqueFd fd = testnet::ConnectTcp("127.0.0.1", port, 2000ms, &error);
    Conn conn(fd.Release(), "server");
    uint64_t t = 0;
    if (!ClientHandshake(conn, key.name, key.key.data(), pin, 2000ms, &t).ok()) {
      ++missed;
      return;
    }
    while (!stop_.load()) {
      PayloadWriter ping;
      ping.U64(1);
      auto pong = conn.Send(FrameType::kPing, 0, ping.bytes(), 2000ms).ok()
                      ? conn.Recv(2000ms)
                      : Result<Frame>(Status::Network("send"));
      (pong.ok() && pong->type() == FrameType::kPong ? answered : missed)++;
      if (!pong.ok()) return;
      std::this_thread::sleep_for(10ms);
    }
  }
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// An authenticated connection to the server on loopback as `key`'s client,
// or null.
std::unique_ptr<Conn> ConnectAgent(uint16_t port, const ClientKey& key, const uint8_t* pin) {
  std::string error;
  testnet::UniqueFd fd = testnet::ConnectTcp("127.0.0.1", port, 2000ms, &error);
  if (!fd.valid()) return nullptr;
  auto conn = std::make_unique<Conn>(fd.Release(), "server");
  uint64_t t = 0;
  if (!ClientHandshake(*conn, key.name, key.key.data(), pin, 2000ms, &t).ok()) return nullptr;
  return conn;
}

// One hostile backup: a valid BACKUP_BEGIN and STRIPE_JOIN by `key`, then
// `frames` mutated BLOCKS, PAGE, COMMIT and random frames on the stripe and
// control connections, sealed as the server expects.
void FuzzOneBackup(uint16_t port, const ClientKey& key, const uint8_t* pin, std::mt19937_64& rng) {
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = uint8_t(rng());
    return v;
  };
  auto connect = [&] { return ConnectAgent(port, key, pin); };
  std::unique_ptr<Conn> control;
  const uint32_t block = 65536;
  const uint64_t blocks = 1 + rng() % 600;
  PayloadWriter begin;
  begin.String("fz");
  begin.U32(block);
  begin.U64(blocks * block - rng() % 1000);
  begin.U32(1);
  begin.String("/fuzz");
  begin.String("file");
  begin.String("{}");
  begin.String("fuzz");
  begin.String("");
  // The previous round's backup holds the volume until the server sees its
  // agent gone (a fraction of a second): wait for it, so rounds get past BEGIN.
  Result<Frame> ready = Status::Busy("not sent");
  for (int attempt = 0; attempt < 40; ++attempt) {
    control = connect();
    ASSERT_NE(control, nullptr);
    ASSERT_TRUE(control->Send(FrameType::kBackupBegin, 0, begin.bytes(), 2000ms).ok());
    ready = control->Recv(5000ms);
    if (ready.ok() && ready->type() == FrameType::kError &&
        StatusFromError(*ready, "server").code() == Code::kBusy) {
      std::this_thread::sleep_for(50ms);
      continue;
    }
    break;
  }
  if (!ready.ok() || ready->type() != FrameType::kBackupReady) return;  // refused: fine
  PayloadReader r(ready->payload);
  std::string token = r.String(64);
  std::unique_ptr<Conn> stripe = connect();
  ASSERT_NE(stripe, nullptr);
  PayloadWriter join;
  join.String(rng() % 8 ? token : std::string(token.size(), 'x'));
  join.U32(rng() % 8 ? 0 : uint32_t(rng()));
  if (!stripe->Send(FrameType::kStripeJoin, 0, join.bytes(), 2000ms).ok()) return;
  (void)stripe->Recv(2000ms);
  for (int k = 0; k < 4; ++k) {
    PayloadWriter w;
    FrameType type = FrameType::kBlocks;
    switch (rng() % 4) {
      case 0: {  // BLOCKS: plausible first/n, random digests and bytes, maybe a wrong length
        uint32_t n = 1 + rng() % 4;
        w.U64(rng() % 3 ? 0 : rng() % (blocks + 2));
        w.U32(rng() % 5 ? n : uint32_t(rng()));
        w.Bytes(bytes(48 * n));
        w.Bytes(bytes(rng() % 2 ? size_t{n} * block : rng() % (3 * block)));
        break;
      }
      case 1: {  // PAGE: random verdicts and ids
        type = FrameType::kPage;
        uint32_t count = rng() % 3 ? uint32_t(std::min<uint64_t>(blocks, 256)) : uint32_t(rng() % 300);
        w.U64(rng() % 3 ? 0 : rng());
        w.U32(count);
        for (uint32_t i = 0; i < count; ++i) {
          w.U8(uint8_t(rng() % 4));
          w.Bytes(bytes(16));
        }
        break;
      }
      case 2:  // any type, noise
        type = FrameType(1 + rng() % uint16_t(FrameType::kMaxType));
        w.Bytes(bytes(rng() % 64));
        break;
      case 3:  // COMMIT early, on the control connection
        w.Bytes(bytes(rng() % 2 ? 32 : rng() % 40));
        (void)control->Send(FrameType::kCommit, 9, w.bytes(), 2000ms);
        continue;
    }
    if (!stripe->Send(type, 1, w.bytes(), 2000ms).ok()) break;  // the server closed
  }
  (void)control->Recv(500ms);  // its ERROR, if any
}

// A backup driven frame by frame, as an agent holding valid credentials
// could send it: one stripe, one page, the blocks' ids and SHA-256s as the
// caller chooses them. Returns the server's last answer on the control
// connection (COMMITTED or ERROR).
struct HandBackup {
  std::vector<std::vector<uint8_t>> blocks;  // each a full block of kBlock bytes
  // Lies: the block whose SHA-256 (or id) is replaced by a digest of other bytes.
  int false_sha_of = -1;
  int false_id_of = -1;
  static constexpr uint32_t kBlock = 65536;

  Result<Frame> Run(uint16_t port, const ClientKey& key, const uint8_t* pin,
                    const std::string& volume) const {
    std::unique_ptr<Conn> control = ConnectAgent(port, key, pin);
    if (!control) return Status::Network("cannot connect");
    PayloadWriter begin;
    begin.String(volume);
    begin.U32(kBlock);
    begin.U64(uint64_t{kBlock} * blocks.size());
    begin.U32(1);
    for (const char* s : {"/hand", "file", "{}", "hand", ""}) begin.String(s);
    DP420_RETURN_IF_ERROR(control->Send(FrameType::kBackupBegin, 0, begin.bytes(), 2000ms));
    DP420_ASSIGN_OR_RETURN(Frame ready, control->Recv(5000ms));
    if (ready.type() != FrameType::kBackupReady) return ready;
    PayloadReader r(ready.payload);
    std::string token = r.String(64);
    (void)r.String(64);  // snapshot id
    (void)r.U32();
    (void)r.String(1 << 20);  // parent
    std::array<uint8_t, simd::kHashSecretBytes> secret{};
    if (!r.Bytes(secret.data(), secret.size())) return Status::Corruption("BACKUP_READY");
    simd::BlockHasher hasher(secret);
    std::unique_ptr<Conn> stripe = ConnectAgent(port, key, pin);
    if (!stripe) return Status::Network("cannot connect the stripe");
    PayloadWriter join;
    join.String(token);
    join.U32(0);
    DP420_RETURN_IF_ERROR(stripe->Send(FrameType::kStripeJoin, 0, join.bytes(), 2000ms));
    DP420_ASSIGN_OR_RETURN(Frame joined, stripe->Recv(2000ms));
    if (joined.type() != FrameType::kStripeReady) return joined;
    DP420_RETURN_IF_ERROR(SendPage(*stripe, hasher));
    DP420_ASSIGN_OR_RETURN(Frame ack, stripe->Recv(5000ms));
    if (ack.type() != FrameType::kAck) return ack;
    ::shutdown(stripe->fd(), SHUT_WR);
    PayloadWriter commit;
    for (int i = 0; i < 4; ++i) commit.U64(0);
    DP420_RETURN_IF_ERROR(control->Send(FrameType::kCommit, 0, commit.bytes(), 2000ms));
    for (;;) {
      DP420_ASSIGN_OR_RETURN(Frame f, control->Recv(10000ms));
      if (f.type() != FrameType::kPing) return f;
    }
  }

 private:
  Status SendPage(Conn& stripe, const simd::BlockHasher& hasher) const {
    PayloadWriter w, page;
    w.U64(0);
    w.U32(uint32_t(blocks.size()));
    page.U64(0);
    page.U32(uint32_t(blocks.size()));
    std::vector<uint8_t> other(kBlock, 0x77);
    for (size_t i = 0; i < blocks.size(); ++i) {
      uint8_t id[16], sha[32];
      const std::vector<uint8_t>& hashed = int(i) == false_id_of ? other : blocks[i];
      hasher.Hash(hashed.data(), kBlock).ToBytes(id);
      const std::vector<uint8_t>& digested = int(i) == false_sha_of ? other : blocks[i];
      simd::Sha256(digested.data(), kBlock, sha);
      w.Bytes({id, 16});
      w.Bytes({sha, 32});
      page.U8(2);  // changed, sent in this page's BLOCKS
      page.Bytes({id, 16});
    }
    for (const auto& b : blocks) w.Bytes(b);
    DP420_RETURN_IF_ERROR(stripe.Send(FrameType::kBlocks, 0, w.bytes(), 2000ms));
    return stripe.Send(FrameType::kPage, 0, page.bytes(), 2000ms);
  }
};

// An agent with valid credentials that lies about a block's SHA-256 (the id
// it sends is true) gets its backup committed: the server checks ids, not
// the agent's SHA-256 (docs/SECURITY.md "Block identities"). The lie breaks
// only that agent's own volume: verify --read-data names it, restore refuses
// it and writes nothing, every other volume verifies and restores. A block
// whose id is false is refused and nothing is committed.
TEST_F(RemoteTest, AgentLyingAboutABlocksDigestBreaksOnlyItsOwnVolume) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto registry = ClientRegistry::Load(clients_file_);
  ASSERT_TRUE(registry.ok());
  uint8_t pin[kFingerprintBytes];
  IdentityFingerprint(registry->identity()->public_key(), pin);
  const ClientKey& bob_key = *registry->Find("bob");
  HandBackup hand;
  for (int i = 0; i < 3; ++i) hand.blocks.push_back(MakeVolume(HandBackup::kBlock, 30 + i));

  HandBackup false_id = hand;
  false_id.false_id_of = 1;
  auto refused = false_id.Run(uint16_t(port_), bob_key, pin, "liar");
  ASSERT_TRUE(refused.ok()) << refused.status().ToString();
  ASSERT_EQ(refused->type(), FrameType::kError);
  Status why = StatusFromError(*refused, "server");
  EXPECT_EQ(why.code(), Code::kCorruption) << why.ToString();
  EXPECT_NE(why.message().find("does not match its id"), std::string::npos) << why.ToString();
  auto bob = ConnectAs("bob");
  ASSERT_NE(bob, nullptr);
  std::vector<Manifest> none;
  Status listed = bob->ListManifests("liar", &none);
  EXPECT_TRUE(!listed.ok() || none.empty()) << none.size() << " snapshot(s) of liar";

  HandBackup false_sha = hand;
  false_sha.false_sha_of = 1;
  auto committed = false_sha.Run(uint16_t(port_), bob_key, pin, "liar");
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  ASSERT_EQ(committed->type(), FrameType::kCommitted)
      << (committed->type() == FrameType::kError
              ? StatusFromError(*committed, "server").ToString() : "");

  RestoreOptions ro = RestoreTo("liar", "latest", "liar.img");
  auto restored = bob->Restore(ro);
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.status().code(), Code::kCorruption) << restored.status().ToString();
  EXPECT_FALSE(Exists(ro.target_path));
  VerifyOptions vo;
  vo.read_data = true;
  auto root = ConnectAs("root");
  ASSERT_NE(root, nullptr);
  auto all = root->Verify(vo);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  std::vector<Manifest> liar;
  ASSERT_TRUE(bob->ListManifests("liar", &liar).ok());
  ASSERT_EQ(liar.size(), 1u);
  EXPECT_EQ(all->broken_snapshots, std::vector<std::string>{liar[0].snapshot_id});
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  auto mine = alice->Verify(vo);
  ASSERT_TRUE(mine.ok()) << mine.status().ToString();
  EXPECT_TRUE(mine->problems.empty());
  ASSERT_TRUE(bob->Restore(RestoreTo("bv", "latest", "bv.img")).ok());
  EXPECT_EQ(ReadAll(dir_.path() + "/bv.img"), bv_);
  ASSERT_TRUE(alice->Restore(RestoreTo("av", "latest", "av.img")).ok());
  EXPECT_EQ(ReadAll(dir_.path() + "/av.img"), av2_);
}

// Hostile backups, the frames of an authenticated agent after BACKUP_BEGIN
// mutated: the server never dies, a sentinel session's PINGs stay answered,
// nothing damaged is committed and a clean backup works after. Rounds:
// DP420_FUZZ_ROUNDS (CI runs a few dozen; the long run thousands).
TEST_F(RemoteTest, FuzzedBackupFramesNeitherCrashNorDisturbOtherSessions) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto registry = ClientRegistry::Load(clients_file_);
  ASSERT_TRUE(registry.ok());
  uint8_t pin[kFingerprintBytes];
  IdentityFingerprint(registry->identity()->public_key(), pin);
  Sentinel sentinel(uint16_t(port_), *registry->Find("alice"), pin);
  int rounds = 40;
  if (const char* env = std::getenv("DP420_FUZZ_ROUNDS")) rounds = std::max(1, std::atoi(env));
  std::mt19937_64 rng(4201);
  for (int i = 0; i < rounds && !HasFatalFailure(); ++i) {
    FuzzOneBackup(uint16_t(port_), *registry->Find("bob"), pin, rng);
  }
  sentinel.Stop();
  EXPECT_TRUE(ServerRunning());
  EXPECT_GT(sentinel.answered.load(), 0);
  EXPECT_EQ(sentinel.missed.load(), 0);

  auto report = RunVerify(*repo_, VerifyOptions{.read_data = true});
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->problems.empty());
  // A real backup of the fuzzed volume name by its owner goes through.
  std::string source = dir_.path() + "/fz.img";
  WriteAll(source, MakeVolume(2 * 1024 * 1024, 9));
  auto bob = ConnectAs("bob");
  ASSERT_NE(bob, nullptr);
  BackupOptions o;
  o.volume = "fz";
  o.source_path = source;
  o.threads = 2;
  o.tool_version = "fuzz";
  // The last hostile backup may hold the volume until the server sees its
  // agent gone: within a second or two, never for the resume grace.
  auto backed_up = bob->Backup(o);
  for (auto start = Clock::now(); !backed_up.ok() && backed_up.status().code() == Code::kBusy &&
                                  Clock::now() - start < 3s;) {
    std::this_thread::sleep_for(100ms);
    backed_up = bob->Backup(o);
  }
  ASSERT_TRUE(backed_up.ok()) << backed_up.status().ToString();
  auto restored = bob->Restore(RestoreTo("fz", "latest", "fz.out"));
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(ReadAll(dir_.path() + "/fz.out"), ReadAll(source));
}

TEST_F(RemoteTest, StopClosesIdleSessionsAndReturns) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  so_.drain_timeout = 10000ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  std::vector<Manifest> listed;
  ASSERT_TRUE(alice->ListManifests("", &listed).ok());
  // An idle session does not hold the stop for drain_timeout.
  double seconds = StopServer();
  EXPECT_LT(seconds, 2.0);
  EXPECT_TRUE(server_status_.ok()) << server_status_.ToString();
  // Nothing listens any more.
  auto again = RemoteRepository::Connect(Options("alice"));
  EXPECT_EQ(again.status().code(), Code::kNetwork);
  Status s = alice->ListManifests("", &listed);
  EXPECT_EQ(s.code(), Code::kNetwork);
}

TEST_F(RemoteTest, ReconnectBacksOffAndNamesAttempts) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto alice = ConnectAs("alice");
  ASSERT_NE(alice, nullptr);
  StopServer();
  auto start = Clock::now();
  Status s = alice->ReconnectControl();
  double seconds = SecondsSince(start);
  EXPECT_EQ(s.code(), Code::kNetwork);
  EXPECT_NE(s.message().find(address_), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("attempts"), std::string::npos) << s.message();
  // retry_for is 2 s: 250 ms, 500 ms, 1 s ... with jitter, then the last try.
  EXPECT_GE(seconds, 1.9);
  EXPECT_LT(seconds, 4.0);
  // A server that comes back is found again.
  ASSERT_NO_FATAL_FAILURE(StartServer());
  RemoteOptions o = Options("alice");
  auto fresh = RemoteRepository::Connect(o);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
}

TEST_F(RemoteTest, LostServerEndsCallsWithinLossTimeout) {
  ASSERT_NO_FATAL_FAILURE(MakeVolumes());
  auto big = MakeVolume(32 * 1024 * 1024, 5);
  Backup("big", big, "alice");
  so_.drain_timeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  testnet::DelayProxy proxy;
  std::string error;
  ASSERT_TRUE(proxy.Start("127.0.0.1", uint16_t(port_), {}, &error)) << error;
  std::string via = "127.0.0.1:" + std::to_string(proxy.port());
  auto alice = ConnectAs("alice", via);
  ASSERT_NE(alice, nullptr);
  const double loss = 3.0;  // heartbeat 1 s x 3 misses

  proxy.Pause();
  std::vector<Manifest> listed;
  auto start = Clock::now();
  Status s = alice->ListManifests("", &listed);
  double seconds = SecondsSince(start);
  EXPECT_EQ(s.code(), Code::kNetwork) << s.ToString();
  EXPECT_NE(s.message().find(via), std::string::npos) << s.message();
  EXPECT_GE(seconds, loss - 0.2);
  EXPECT_LT(seconds, loss + 2.0);
  proxy.Resume();

  // Mid-restore: the proxy stalls once the snapshot has arrived.
  RestoreOptions ro = RestoreTo("big", "latest", "big");
  ro.control.progress = [&](const Progress&) { proxy.Pause(); };
  start = Clock::now();
  auto r = alice->Restore(ro);
  seconds = SecondsSince(start);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNetwork) << r.status().ToString();
  EXPECT_GE(seconds, loss - 0.2);
  EXPECT_LT(seconds, loss + 2.5);
  EXPECT_FALSE(Exists(ro.target_path));
  EXPECT_FALSE(Exists(ro.target_path + ".dp420-partial"));

  // A stop while a restore is stuck sending: drain_timeout, then closed.
  proxy.Resume();
  auto second = ConnectAs("alice", via);
  ASSERT_NE(second, nullptr);
  std::atomic<bool> paused{false};
  RestoreOptions stuck = RestoreTo("big", "latest", "big-2");
  stuck.control.progress = [&](const Progress&) {
    proxy.Pause();
    paused.store(true);
  };
  std::thread client([&] { (void)second->Restore(stuck); });
  auto give_up = Clock::now() + 10s;
  while (!paused.load() && Clock::now() < give_up) std::this_thread::sleep_for(10ms);
  if (!paused.load()) {
    proxy.Kill();
    client.join();
    FAIL() << "the restore never reported progress";
  }
  std::this_thread::sleep_for(500ms);  // the server's sends are blocked by now
  double stop_seconds = StopServer();
  EXPECT_GE(stop_seconds, 0.25);
  EXPECT_LT(stop_seconds, 2.0);
  EXPECT_TRUE(server_status_.ok());
  proxy.Kill();
  client.join();
  EXPECT_FALSE(Exists(stuck.target_path));
}

TEST_F(RemoteTest, LongVerifyKeepsTheAgentAlive) {
  auto big = MakeVolume(128 * 1024 * 1024, 6);
  Backup("big", big, "alice");
  big.clear();
  so_.heartbeat_interval = 10ms;
  so_.heartbeat_misses = 50;  // the server waits 0.5 s for the agent's PONGs
  ASSERT_NO_FATAL_FAILURE(StartServer());
  RemoteOptions o = Options("alice");
  o.heartbeat_interval = 10ms;
  o.heartbeat_misses = 5;  // the agent gives up after 50 ms of silence
  auto alice = RemoteRepository::Connect(o);
  ASSERT_TRUE(alice.ok()) << alice.status().ToString();
  VerifyOptions vo;
  vo.read_data = true;
  auto start = Clock::now();
  auto report = alice.value()->Verify(vo);
  double seconds = SecondsSince(start);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->problems.empty());
  EXPECT_GT(report->bytes_read, 100u << 20);
  // 128 MiB of SHA-256 takes far longer than the agent's loss timeout: only
  // the server's PINGs kept the call alive.
  EXPECT_GT(seconds, 0.05);
}

}  // namespace
}  // namespace dp420::net
