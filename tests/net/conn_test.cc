// Conn over real loopback sockets: frames, timeouts and errors that name the
// peer, the authentication handshake (both refusals look the same), ERROR
// frames and the clock offset measurement.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "engine/net/conn.h"
#include "simd/simd.h"
#include "socket_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A connected pair: `client` made with Conn::Connect, `server` accepted.
struct Pair {
  std::unique_ptr<Conn> client;
  std::unique_ptr<Conn> server;
  std::string address;  // the server's "127.0.0.1:PORT"
};

Pair MakePair() {
  Pair p;
  std::string error;
  uint16_t port = 0;
  testnet::UniqueFd listener = testnet::ListenTcp("127.0.0.1", 0, &port, &error);
  EXPECT_TRUE(listener.valid()) << error;
  if (!listener.valid()) return p;
  p.address = "127.0.0.1:" + std::to_string(port);
  auto client = Conn::Connect(p.address, 2000ms);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  if (!client.ok()) return p;
  p.client = std::move(client).value();
  testnet::UniqueFd accepted = testnet::AcceptWithin(listener.get(), 2000ms, &error);
  EXPECT_TRUE(accepted.valid()) << error;
  if (accepted.valid()) p.server = std::make_unique<Conn>(accepted.Release(), "agent");
  return p;
}

TEST(ConnTest, FramesFromManyThreadsNeverInterleave) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  constexpr int kThreads = 4;
  constexpr int kFrames = 40;
  std::vector<std::thread> senders;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      std::vector<uint8_t> payload(100000 + t * 977, uint8_t('a' + t));
      for (int i = 0; i < kFrames; ++i) {
        if (!p.client->Send(FrameType::kPing, t, payload, 5000ms).ok()) ++failures;
      }
    });
  }
  for (int i = 0; i < kThreads * kFrames; ++i) {
    auto f = p.server->Recv(5000ms);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    uint64_t t = f->header.request_id;
    ASSERT_LT(t, uint64_t(kThreads));
    ASSERT_EQ(f->payload.size(), 100000 + t * 977);
    for (uint8_t b : f->payload) ASSERT_EQ(b, uint8_t('a' + t));
  }
  for (auto& s : senders) s.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(p.client->bytes_sent(), p.server->bytes_received());
}

TEST(ConnTest, SilentPeerTimesOutWithPeerAndDuration) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  auto start = Clock::now();
  auto f = p.client->Recv(300ms);
  auto elapsed = Clock::now() - start;
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kNetwork);
  EXPECT_NE(f.status().message().find("connection to " + p.address + " timed out after 300 ms"),
            std::string::npos)
      << f.status().message();
  EXPECT_GE(elapsed, 290ms);
  EXPECT_LT(elapsed, 2000ms);
  // Nothing of a frame arrived: the stream is still usable.
  EXPECT_FALSE(p.client->broken());
  ASSERT_TRUE(p.server->Send(FrameType::kPing, 3, std::vector<uint8_t>(8, 1), 1000ms).ok());
  auto ping = p.client->Recv(1000ms);
  ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  EXPECT_EQ(ping->header.request_id, 3u);

  // Half a header, then silence: the stream is out of step for good.
  FrameHeader h = MakeHeader(FrameType::kPing, 0, {});
  std::string error;
  ASSERT_TRUE(testnet::SendAll(p.server->fd(), &h, 10, testnet::DeadlineIn(1000ms), &error));
  EXPECT_FALSE(p.client->Recv(200ms).ok());
  EXPECT_TRUE(p.client->broken());
  EXPECT_FALSE(p.client->Send(FrameType::kPing, 0, {}, 100ms).ok());
}

TEST(ConnTest, ClosedPeerAndLocalShutdownAreNamed) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  p.server.reset();
  auto f = p.client->Recv(2000ms);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kNetwork);
  EXPECT_NE(f.status().message().find("closed by peer"), std::string::npos)
      << f.status().message();

  Pair q = MakePair();
  ASSERT_TRUE(q.client && q.server);
  std::thread waker([&] {
    std::this_thread::sleep_for(100ms);
    q.client->Shutdown();
  });
  auto start = Clock::now();
  auto g = q.client->Recv(10000ms);
  waker.join();
  ASSERT_FALSE(g.ok());
  EXPECT_LT(Clock::now() - start, 2000ms);
  EXPECT_NE(g.status().message().find("closed by this side"), std::string::npos)
      << g.status().message();
  EXPECT_FALSE(q.client->Send(FrameType::kPing, 0, {}, 100ms).ok());
}

TEST(ConnTest, ConnectErrorsAndAddresses) {
  std::string host, port;
  EXPECT_TRUE(ParseHostPort("[::1]:4420", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, "4420");
  EXPECT_TRUE(ParseHostPort("backup.example:1", &host, &port).ok());
  for (const char* bad : {"nohost", ":1", "h:", "h:99999", "::1:4420", "[::1]4420", "h:4x"}) {
    EXPECT_EQ(ParseHostPort(bad, &host, &port).code(), Code::kInvalidArgument) << bad;
  }
  // A port nobody listens on: refused at once, and the message names it.
  std::string error;
  uint16_t free_port = 0;
  { testnet::UniqueFd l = testnet::ListenTcp("127.0.0.1", 0, &free_port, &error); }
  std::string address = "127.0.0.1:" + std::to_string(free_port);
  auto c = Conn::Connect(address, 2000ms);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kNetwork);
  EXPECT_NE(c.status().message().find(address), std::string::npos) << c.status().message();
  EXPECT_EQ(Conn::Connect("bad address", 100ms).status().code(), Code::kInvalidArgument);

  // IPv6 loopback, where the host has it.
  uint16_t port6 = 0;
  testnet::UniqueFd l6 = testnet::ListenTcp("::1", 0, &port6, &error);
  if (l6.valid()) {
    auto c6 = Conn::Connect("[::1]:" + std::to_string(port6), 2000ms);
    EXPECT_TRUE(c6.ok()) << c6.status().ToString();
  }
}

void SendRaw(Conn& conn, const void* data, size_t len) {
  std::string error;
  ASSERT_TRUE(testnet::SendAll(conn.fd(), data, len, testnet::DeadlineIn(1000ms), &error))
      << error;
}

TEST(ConnTest, OversizedAndDamagedHeadersRefusedBeforeAllocation) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  FrameHeader h = MakeHeader(FrameType::kList, 0, {});
  h.payload_len = 1u << 30;  // the header CRC no longer matches
  SendRaw(*p.client, &h, sizeof(h));
  auto f = p.server->Recv(1000ms);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kCorruption);
  EXPECT_NE(f.status().message().find("CRC"), std::string::npos) << f.status().message();

  // A correct header CRC over a 1 GiB length: refused for its size.
  Pair q = MakePair();
  ASSERT_TRUE(q.client && q.server);
  h.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 28);
  SendRaw(*q.client, &h, sizeof(h));
  auto g = q.server->Recv(1000ms);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), Code::kCorruption);
  EXPECT_NE(g.status().message().find("exceeds the limit"), std::string::npos)
      << g.status().message();
}

TEST(ConnTest, ErrorFramesCarryCodeAndMessage) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  ASSERT_TRUE(SendError(*p.server, Status::NotFound("volume 'x' has no snapshots"), 1000ms).ok());
  auto f = p.client->Recv(1000ms);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  Status s = ExpectFrame(f.value(), FrameType::kDone, "server a:1");
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_EQ(s.message(), "server a:1: volume 'x' has no snapshots");

  ASSERT_TRUE(p.server->Send(FrameType::kPong, 0, {}, 1000ms).ok());
  f = p.client->Recv(1000ms);
  ASSERT_TRUE(f.ok());
  s = ExpectFrame(f.value(), FrameType::kDone, "server a:1");
  EXPECT_EQ(s.code(), Code::kNetwork);
  EXPECT_NE(s.message().find("sent PONG where DONE was expected"), std::string::npos)
      << s.message();

  Frame junk;
  junk.header = MakeHeader(FrameType::kError, 0, {});
  junk.payload = {1, 2, 3};
  EXPECT_EQ(StatusFromError(junk, "server a:1").code(), Code::kNetwork);
}

// Keys and a registry of two clients for the handshake tests.
// `pin` is the server identity's fingerprint, as in the clients' key files.
struct Clients {
  ClientRegistry registry;
  ClientKey alice, admin;
  uint8_t pin[kFingerprintBytes] = {};
  Clients() {
    EXPECT_TRUE(registry.EnsureIdentity().ok());
    IdentityFingerprint(registry.identity()->public_key(), pin);
    alice = registry.Add("alice", "append").value();
    admin = registry.Add("root", "admin").value();
  }
};

// Runs ServerHandshake on `p.server` in a thread; then answers PINGs until the
// connection ends.
class HandshakeServer {
 public:
  HandshakeServer(Conn& conn, const ClientRegistry& registry, const uint8_t repo_id[16])
      : thread_([&conn, &registry, repo_id, this] {
          status_ = ServerHandshake(conn, registry, 2000ms, &client_, repo_id);
          while (status_.ok()) {
            auto f = conn.Recv(3000ms);
            if (!f.ok() || f->type() != FrameType::kPing) break;
            if (!AnswerPing(conn, f.value(), 1000ms).ok()) break;
          }
        }) {}
  ~HandshakeServer() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  const Status& status() const { return status_; }
  const ClientKey& client() const { return client_; }

 private:
  Status status_;
  ClientKey client_;
  std::thread thread_;
};

constexpr uint8_t kRepoId[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

TEST(HandshakeTest, AuthenticatesBothSidesAndReturnsRepoId) {
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, c.registry, kRepoId);
  uint64_t server_time = 0;
  uint8_t repo_id[16] = {};
  Status s = ClientHandshake(*p.client, "root", c.admin.key.data(), c.pin, 2000ms, &server_time,
                             repo_id);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(std::memcmp(repo_id, kRepoId, 16), 0);
  int64_t skew = int64_t(server_time) - int64_t(WallClockNs());
  EXPECT_LT(std::abs(skew), int64_t(2e9));
  p.client->Shutdown();
  server.Join();
  EXPECT_TRUE(server.status().ok()) << server.status().ToString();
  EXPECT_EQ(server.client().name, "root");
  EXPECT_EQ(server.client().role, "admin");
}

TEST(HandshakeTest, WrongKeyAndUnknownClientRefusedIdentically) {
  Clients c;
  uint8_t wrong[kKeyBytes];
  std::memcpy(wrong, c.alice.key.data(), kKeyBytes);
  wrong[7] ^= 1;
  struct Attempt {
    const char* name;
    const uint8_t* key;
  };
  std::vector<Status> seen_by_agent, seen_by_server;
  std::vector<std::string> addresses;
  for (Attempt a : {Attempt{"alice", wrong}, Attempt{"mallory", c.alice.key.data()}}) {
    Pair p = MakePair();
    ASSERT_TRUE(p.client && p.server);
    HandshakeServer server(*p.server, c.registry, kRepoId);
    uint64_t t = 0;
    Status s = ClientHandshake(*p.client, a.name, a.key, c.pin, 2000ms, &t);
    server.Join();
    p.server.reset();  // as the server does after a refusal
    // The ERROR was the last frame: the stream ends.
    auto after = p.client->Recv(2000ms);
    ASSERT_FALSE(after.ok());
    EXPECT_NE(after.status().message().find("closed by peer"), std::string::npos);
    seen_by_agent.push_back(s);
    seen_by_server.push_back(server.status());
    addresses.push_back(p.address);
  }
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(seen_by_agent[i].code(), Code::kPermission);
    EXPECT_EQ(seen_by_agent[i].message(),
              "server " + addresses[i] + ": authentication failed");
    EXPECT_EQ(seen_by_server[i].code(), Code::kPermission);
  }
  // The server's own log tells them apart.
  EXPECT_NE(seen_by_server[0].message().find("wrong key"), std::string::npos);
  EXPECT_NE(seen_by_server[1].message().find("unknown client"), std::string::npos);
}

TEST(HandshakeTest, AgentRefusesAServerWithAnotherIdentity) {
  // A real server that knows alice's key (its clients file was copied) but
  // has another identity than the one alice's key file pins.
  Clients c;
  ClientRegistry impostor = c.registry;
  ASSERT_TRUE(impostor.RotateIdentity().ok());
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, impostor, kRepoId);
  uint64_t t = 0;
  Status s = ClientHandshake(*p.client, "alice", c.alice.key.data(), c.pin, 2000ms, &t);
  EXPECT_EQ(s.code(), Code::kPermission);
  EXPECT_NE(s.message().find("is not the server this key file was made for"),
            std::string::npos)
      << s.message();
  p.client->Shutdown();
}

TEST(HandshakeTest, AgentRefusesAPinnedIdentityThatDidNotSign) {
  // The pinned public key replayed from the real server, without its
  // private key: the signature cannot be made for this handshake.
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  std::thread impostor([&] {
    if (!p.server->Recv(2000ms).ok()) return;
    PayloadWriter cw;
    auto eph = Ephemeral::Generate();
    if (!eph.ok()) return;
    cw.Bytes({eph->public_key(), kEphemeralBytes});
    cw.Bytes({c.registry.identity()->public_key(), kIdentityBytes});
    std::vector<uint8_t> sig(kSignatureBytes, 9);
    cw.Bytes(sig);
    (void)p.server->Send(FrameType::kChallenge, 0, cw.bytes(), 1000ms);
  });
  uint64_t t = 0;
  Status s = ClientHandshake(*p.client, "alice", c.alice.key.data(), c.pin, 2000ms, &t);
  impostor.join();
  EXPECT_EQ(s.code(), Code::kPermission);
  EXPECT_NE(s.message().find("did not sign"), std::string::npos) << s.message();
}

TEST(HandshakeTest, FramesAfterTheHandshakeAreSealedAndTamperingBreaksTheConnection) {
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, c.registry, kRepoId);
  uint64_t t = 0;
  ASSERT_TRUE(ClientHandshake(*p.client, "alice", c.alice.key.data(), c.pin, 2000ms, &t).ok());
  EXPECT_TRUE(p.client->sealed());
  // A frame in the clear on the sealed connection is refused.
  PayloadWriter w;
  w.U64(WallClockNs());
  FrameHeader h = MakeHeader(FrameType::kPing, 0, w.bytes());
  std::vector<uint8_t> raw(sizeof(h));
  std::memcpy(raw.data(), &h, sizeof(h));
  raw.insert(raw.end(), w.bytes().begin(), w.bytes().end());
  ASSERT_EQ(::send(p.client->fd(), raw.data(), raw.size(), MSG_NOSIGNAL), ssize_t(raw.size()));
  server.Join();  // the server's receive failed: it ended the session
  p.server.reset();
  auto after = p.client->Recv(2000ms);
  EXPECT_FALSE(after.ok());
}

TEST(HandshakeTest, AnotherProtocolVersionIsNamed) {
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, c.registry, kRepoId);
  PayloadWriter w;
  w.U16(kProtocolVersion + 1);
  w.String("alice");
  uint8_t nonce[kNonceBytes] = {};
  w.Bytes({nonce, kNonceBytes});
  ASSERT_TRUE(p.client->Send(FrameType::kHello, 0, w.bytes(), 1000ms).ok());
  auto f = p.client->Recv(2000ms);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  Status s = ExpectFrame(f.value(), FrameType::kChallenge, "server");
  EXPECT_EQ(s.code(), Code::kVersion);
  EXPECT_NE(s.message().find("this server speaks " + std::to_string(kProtocolVersion)),
            std::string::npos)
      << s.message();
  server.Join();
  EXPECT_EQ(server.status().code(), Code::kVersion);
}

TEST(HandshakeTest, NothingButErrorBeforeAuthentication) {
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, c.registry, kRepoId);
  PayloadWriter w;
  w.String("");
  ASSERT_TRUE(p.client->Send(FrameType::kList, 0, w.bytes(), 1000ms).ok());
  auto f = p.client->Recv(2000ms);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->type(), FrameType::kError);
  server.Join();
  EXPECT_FALSE(server.status().ok());
  p.server.reset();
  auto after = p.client->Recv(2000ms);
  ASSERT_FALSE(after.ok());
  EXPECT_NE(after.status().message().find("closed by peer"), std::string::npos);
}

TEST(HandshakeTest, ClockOffsetOfALocalPeerIsTiny) {
  Clients c;
  Pair p = MakePair();
  ASSERT_TRUE(p.client && p.server);
  HandshakeServer server(*p.server, c.registry, kRepoId);
  uint64_t t = 0;
  ASSERT_TRUE(ClientHandshake(*p.client, "alice", c.alice.key.data(), c.pin, 2000ms, &t).ok());
  auto clock = MeasureClockOffset(*p.client, 5, 2000ms);
  ASSERT_TRUE(clock.ok()) << clock.status().ToString();
  // Same host, same clock: the offset is within the measurement's error.
  EXPECT_LE(std::abs(clock->offset_ns), clock->error_ns + 1000000);
  EXPECT_EQ(clock->error_ns, clock->rtt_ns / 2);
  EXPECT_LT(clock->rtt_ns, 50000000);
  EXPECT_EQ(MeasureClockOffset(*p.client, 0, 100ms).status().code(), Code::kInvalidArgument);
  p.client->Shutdown();
}

}  // namespace
}  // namespace dp420::net
