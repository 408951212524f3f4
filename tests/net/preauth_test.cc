// The repository server before authentication, over real loopback sockets:
// idle and half-open sockets by the thousand, headers declaring huge
// payloads, many connections from one source and a slowloris. None of them
// costs a thread or more than a few KiB on the server, each ends at a limit
// or at the handshake deadline, and authenticated agents always get in.
//
// Before the handshake ran on one event loop, every accepted socket got a
// thread (1,024 at most, then every connection was refused) and HELLO's
// declared payload was allocated before it arrived.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/backup.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/conn.h"
#include "engine/net/server.h"
#include "server_thread.h"
#include "socket_util.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dp420::testing::MakeVolume;
using dp420::testing::TempDir;
using dp420::testing::WriteAll;
using testnet::UniqueFd;

// Descriptors the flood test needs: its own sockets, the server's side of
// them, and the agents'.
constexpr rlim_t kFilesNeeded = 4096;

// Raises the soft RLIMIT_NOFILE to at least kFilesNeeded (up to the hard
// limit); "" on success, else why not.
std::string RaiseFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return std::string("getrlimit: ") + strerror(errno);
  if (lim.rlim_cur >= kFilesNeeded) return "";
  if (lim.rlim_max < kFilesNeeded) {
    return "RLIMIT_NOFILE hard limit " + std::to_string(lim.rlim_max) + " is below " +
           std::to_string(kFilesNeeded);
  }
  lim.rlim_cur = kFilesNeeded;
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return std::string("setrlimit: ") + strerror(errno);
  return "";
}

size_t ThreadCount() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)e;
    ++n;
  }
  return n;
}

// VmRSS of this process (the server runs in it), in KiB.
long RssKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// A TCP connection from `source` (any 127.x.y.z is local) to 127.0.0.1:port.
UniqueFd ConnectFrom(const std::string& source, uint16_t port, std::string* error) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (!fd.valid() || !testnet::ParseAddress(source, 0, &addr, &len) ||
      bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    *error = "cannot bind to " + source + ": " + strerror(errno);
    return UniqueFd();
  }
  if (!testnet::ConnectOn(fd.get(), "127.0.0.1", port, 10s, error)) return UniqueFd();
  return fd;
}

// A HELLO frame as an agent sends it (header and payload).
std::vector<uint8_t> HelloBytes(const std::string& client) {
  PayloadWriter w;
  w.U16(kProtocolVersion);
  w.String(client);
  uint8_t ephemeral[kEphemeralBytes] = {9};
  w.Bytes({ephemeral, sizeof(ephemeral)});
  FrameHeader h = MakeHeader(FrameType::kHello, 0, w.bytes());
  std::vector<uint8_t> bytes(sizeof(h) + w.bytes().size());
  std::memcpy(bytes.data(), &h, sizeof(h));
  std::memcpy(bytes.data() + sizeof(h), w.bytes().data(), w.bytes().size());
  return bytes;
}

// What the server did with a connection by `deadline`.
struct Ending {
  bool closed = false;           // end of stream or reset
  std::vector<uint8_t> received;  // bytes before the end
};

// Reads until the server closes the connection or `deadline` passes.
Ending AwaitClose(int fd, testnet::Deadline deadline) {
  Ending e;
  for (;;) {
    uint8_t buf[512];
    std::string error;
    ssize_t n = testnet::RecvSome(fd, buf, sizeof(buf), deadline, &error);
    if (n > 0) {
      e.received.insert(e.received.end(), buf, buf + n);
      continue;
    }
    e.closed = n == 0 || n == -1;
    return e;
  }
}

// The connection is still open and the server sent nothing on it.
bool QuietlyOpen(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) == 0;
}

// The type of the first frame in `bytes` (0 when there is none).
uint16_t FirstFrameType(const std::vector<uint8_t>& bytes) {
  if (bytes.size() < sizeof(FrameHeader)) return 0;
  FrameHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  return h.type;
}

class PreAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_path_ = dir_.path() + "/repo";
    auto repo = dp420::testing::NewRepository(repo_path_);
    ASSERT_NE(repo, nullptr);
    std::string clients_path = dir_.path() + "/clients.json";
    auto clients =
        testnet::WriteTestClients(clients_path, dir_.path(), {{"alice"}, {"bob", "admin"}});
    ASSERT_TRUE(clients.ok()) << clients.status().ToString();
    so_ = testnet::TestServerOptions(repo_path_, clients_path);
  }

  void StartServer() {
    server_ = std::make_unique<ServerThread>();
    std::string error;
    ASSERT_TRUE(server_->Start(so_, -1, &error)) << error;
    address_ = "127.0.0.1:" + std::to_string(server_->port());
  }

  std::string KeyFile(const std::string& client) const {
    return testnet::TestKeyFile(dir_.path(), client);
  }

  RemoteOptions Remote(const std::string& client) const {
    RemoteOptions ro;
    ro.address = address_;
    ro.client = client;
    ro.key_file = KeyFile(client);
    ro.connect_timeout = 5000ms;
    ro.heartbeat_interval = 1000ms;
    ro.retry_for = 5000ms;
    ro.cache_dir = dir_.path() + "/cache-" + client;
    return ro;
  }

  // A LIST by `client`: the number of snapshots it sees, or the failure.
  Result<size_t> List(const std::string& client, const std::string& volume) {
    DP420_ASSIGN_OR_RETURN(auto remote, RemoteRepository::Connect(Remote(client)));
    std::vector<Manifest> listed;
    DP420_RETURN_IF_ERROR(remote->ListManifests(volume, &listed));
    return listed.size();
  }

  // Idle sockets: `per_source` from each of `sources` addresses 127.0.<net>.<1..>.
  void OpenIdle(int net, int sources, int per_source, std::vector<UniqueFd>* out) {
    for (int s = 1; s <= sources; ++s) {
      std::string source = "127.0." + std::to_string(net) + "." + std::to_string(s);
      for (int i = 0; i < per_source; ++i) {
        std::string error;
        UniqueFd fd = ConnectFrom(source, server_->port(), &error);
        ASSERT_TRUE(fd.valid()) << error;
        out->push_back(std::move(fd));
      }
    }
  }

  TempDir dir_;
  std::string repo_path_;
  ServerOptions so_;
  std::unique_ptr<ServerThread> server_;
  std::string address_;
};

// 1,000 idle sockets and 64 that sent part of a HELLO, from 21 addresses
// (127.0.0.1 among them, the agents' own), held open while alice backs up
// and bob lists. The handshake deadline is a minute here, so the pending
// table stays full of them: the agents get in because a new connection
// closes the oldest pending one.
TEST_F(PreAuthTest, IdleAndHalfOpenFloodNeitherCostsThreadsNorKeepsAgentsOut) {
  std::string why = RaiseFileLimit();
  if (!why.empty()) GTEST_SKIP() << "skipped: " << why;
  so_.handshake_timeout = 60000ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  size_t threads_before = ThreadCount();

  std::vector<UniqueFd> flood;
  ASSERT_NO_FATAL_FAILURE(OpenIdle(1, 20, 48, &flood));  // 960 from 127.0.1.1..20
  ASSERT_NO_FATAL_FAILURE(OpenIdle(0, 1, 40, &flood));   // 40 from 127.0.0.1
  std::vector<uint8_t> hello = HelloBytes("alice");
  for (int i = 0; i < 64; ++i) {
    std::string error;
    UniqueFd fd = ConnectFrom("127.0.2." + std::to_string(1 + i % 8), server_->port(), &error);
    ASSERT_TRUE(fd.valid()) << error;
    size_t partial = sizeof(FrameHeader) + 5;  // the header and 5 payload bytes
    ASSERT_TRUE(testnet::SendAll(fd.get(), hello.data(), partial, testnet::DeadlineIn(2s),
                                 &error))
        << error;
    flood.push_back(std::move(fd));
  }
  ASSERT_EQ(flood.size(), 1064u);
  std::this_thread::sleep_for(500ms);  // the server has seen every one of them
  size_t threads_flooded = ThreadCount();
  EXPECT_LE(threads_flooded, threads_before + 2)
      << "threads grew from " << threads_before << " to " << threads_flooded
      << " for 1,064 unauthenticated sockets";

  std::vector<uint8_t> bytes = MakeVolume(24 * 1024 * 1024 + 4321, 7);
  std::string source = dir_.path() + "/vol.img";
  WriteAll(source, bytes);
  auto remote = RemoteRepository::Connect(Remote("alice"));
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  BackupOptions bo;
  bo.volume = "vol";
  bo.source_path = source;
  bo.threads = 4;
  auto backup = (*remote)->Backup(bo);
  ASSERT_TRUE(backup.ok()) << backup.status().ToString();
  auto listed = List("bob", "alice/vol");  // an admin names another client's volume so
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed.value(), 1u);

  // The server holds at most max_pending of the flood; it closed the rest.
  size_t open = 0;
  for (const UniqueFd& fd : flood) open += QuietlyOpen(fd.get()) ? 1 : 0;
  EXPECT_LE(open, so_.max_pending);
  EXPECT_GT(open, 0u) << "the flood was not held pending at all";
}

// 200 connections each send a HELLO header declaring a 4 MiB payload, and
// nothing more, from 200 addresses (no limit is reached): each is refused
// with a generic ERROR at once, and the server's memory does not grow with
// them (before, each allocated 4 MiB: +800 MiB).
TEST_F(PreAuthTest, HugePayloadHeaderIsRefusedBeforeAnyAllocation) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto warm = List("alice", "");  // the server's allocations of a normal session, made once
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  long rss_before = RssKiB();
  ASSERT_GT(rss_before, 0);

  FrameHeader h = MakeHeaderWithCrc(FrameType::kHello, 0, 4u << 20, 0);
  std::vector<UniqueFd> conns;
  for (int i = 0; i < 200; ++i) {
    std::string error;
    UniqueFd fd = ConnectFrom("127.0.3." + std::to_string(1 + i), server_->port(), &error);
    ASSERT_TRUE(fd.valid()) << error;
    ASSERT_TRUE(testnet::SendAll(fd.get(), &h, sizeof(h), testnet::DeadlineIn(2s), &error))
        << error;
    conns.push_back(std::move(fd));
  }
  for (const UniqueFd& fd : conns) {
    Ending e = AwaitClose(fd.get(), testnet::DeadlineIn(3s));
    ASSERT_TRUE(e.closed) << "a header declaring 4 MiB was not refused within 3 s";
    EXPECT_EQ(FirstFrameType(e.received), uint16_t(FrameType::kError));
  }
  long rss_after = RssKiB();
  EXPECT_LT(rss_after - rss_before, 32 * 1024)
      << "RSS grew from " << rss_before << " KiB to " << rss_after << " KiB";
  auto listed = List("alice", "");
  EXPECT_TRUE(listed.ok()) << listed.status().ToString();
}

// Over the per-source limit the oldest connection of that source is closed
// at once, over the pending limit the oldest of all, both without a word;
// the others end at the handshake deadline, with a generic ERROR.
TEST_F(PreAuthTest, PerSourceLimitPendingLimitAndDeadlineCloseConnections) {
  so_.max_pending_per_source = 4;
  so_.max_pending = 8;
  so_.handshake_timeout = 1500ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto open_from = [&](const std::string& source, std::vector<UniqueFd>* out) {
    std::string error;
    UniqueFd fd = ConnectFrom(source, server_->port(), &error);
    ASSERT_TRUE(fd.valid()) << error;
    out->push_back(std::move(fd));
    std::this_thread::sleep_for(20ms);  // accepted in this order
  };
  std::vector<UniqueFd> a;
  for (int i = 0; i < 6; ++i) ASSERT_NO_FATAL_FAILURE(open_from("127.0.4.1", &a));
  for (int i = 0; i < 2; ++i) {
    Ending e = AwaitClose(a[i].get(), testnet::DeadlineIn(1000ms));
    EXPECT_TRUE(e.closed) << "connection " << i << " over the per-source limit stayed open";
    EXPECT_TRUE(e.received.empty()) << "a connection closed at a limit was told something";
  }
  for (int i = 2; i < 6; ++i) EXPECT_TRUE(QuietlyOpen(a[i].get())) << i;

  // 4 pending from 127.0.4.1; 6 more from two other addresses: the two
  // oldest of all (127.0.4.1's) make room.
  std::vector<UniqueFd> b;
  for (int i = 0; i < 6; ++i) {
    ASSERT_NO_FATAL_FAILURE(open_from(i < 3 ? "127.0.4.2" : "127.0.4.3", &b));
  }
  auto last_opened = Clock::now();
  for (int i = 2; i < 4; ++i) {
    Ending e = AwaitClose(a[i].get(), testnet::DeadlineIn(1000ms));
    EXPECT_TRUE(e.closed) << "connection " << i << " over the pending limit stayed open";
    EXPECT_TRUE(e.received.empty());
  }
  for (int i = 4; i < 6; ++i) EXPECT_TRUE(QuietlyOpen(a[i].get())) << i;

  // The rest end at their deadline (1.5 s after their accept).
  for (UniqueFd& fd : b) {
    Ending e = AwaitClose(fd.get(), testnet::DeadlineIn(6s));
    EXPECT_TRUE(e.closed);
    EXPECT_EQ(FirstFrameType(e.received), uint16_t(FrameType::kError));
  }
  double waited = std::chrono::duration<double>(Clock::now() - last_opened).count();
  EXPECT_GT(waited, 1.0) << "closed before the handshake deadline";
  EXPECT_LT(waited, 6.0);
  for (int i = 4; i < 6; ++i) EXPECT_TRUE(AwaitClose(a[i].get(), testnet::DeadlineIn(1s)).closed);
  auto listed = List("alice", "");
  EXPECT_TRUE(listed.ok()) << listed.status().ToString();
}

// A slowloris sends its HELLO one byte a second: the server cuts it at the
// default handshake deadline (5 s), long before the HELLO is complete.
TEST_F(PreAuthTest, SlowlorisHelloIsCutAtTheDeadline) {
  ASSERT_EQ(so_.handshake_timeout, 5000ms);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::string error;
  UniqueFd fd = ConnectFrom("127.0.5.1", server_->port(), &error);
  ASSERT_TRUE(fd.valid()) << error;
  auto start = Clock::now();
  std::vector<uint8_t> hello = HelloBytes("alice");
  size_t sent = 0;
  Ending e;
  while (sent < hello.size() && Clock::now() - start < 20s) {
    if (send(fd.get(), &hello[sent], 1, MSG_NOSIGNAL) != 1) break;  // already cut
    ++sent;
    e = AwaitClose(fd.get(), testnet::DeadlineIn(1s));
    if (e.closed) break;
  }
  if (!e.closed) e = AwaitClose(fd.get(), testnet::DeadlineIn(1s));
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_TRUE(e.closed) << "the slowloris was not cut; it sent " << sent << " bytes";
  EXPECT_LT(sent, hello.size());
  EXPECT_GT(seconds, 4.0);
  EXPECT_LT(seconds, 10.0);
  EXPECT_EQ(FirstFrameType(e.received), uint16_t(FrameType::kError));
  auto listed = List("alice", "");
  EXPECT_TRUE(listed.ok()) << listed.status().ToString();
}

}  // namespace
}  // namespace dp420::net
