#include "engine/net/conn.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <thread>
#include <cerrno>
#include <climits>
#include <cstring>

#include "io/assert.h"

namespace dp420::net {

namespace {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

constexpr size_t kErrorMessageMax = 4096;
constexpr size_t kClientNameMax = 64;
constexpr int kKeepIdleSeconds = 30;  // first keepalive probe after this much silence

// "15 s", "1.5 s", "250 ms".
std::string Duration(Millis ms) {
  int64_t v = ms.count();
  if (v < 1000) return std::to_string(v) + " ms";
  if (v % 1000 == 0) return std::to_string(v / 1000) + " s";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", double(v) / 1000.0);
  return buf;
}

// Waits until `fd` reports one of `events` (or an error/hangup, which the
// following call then reports). 1 ready, 0 deadline passed, else -errno.
int WaitReady(int fd, short events, Deadline deadline) {
  for (;;) {
    auto left = std::chrono::ceil<Millis>(deadline - Clock::now()).count();
    if (left < 0) left = 0;
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, int(std::min<int64_t>(left, INT_MAX)));
    if (r > 0) return 1;
    if (r == 0) {
      if (Clock::now() >= deadline) return 0;
      continue;
    }
    if (errno != EINTR) return -errno;
  }
}

void SetSocketOptions(int fd) {
  int one = 1;
  // Best effort: a socketpair in a test has no TCP options.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int idle = kKeepIdleSeconds;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
}

std::string ConnectFailure(const std::string& address, int err) {
  return "cannot connect to " + address + ": " + std::strerror(err);
}

// One attempt on one resolved address. Returns the connected (blocking) fd,
// or -1 with `*error` set; `*timed_out` when the deadline passed.
int ConnectOne(const addrinfo* ai, const std::string& address, Deadline deadline,
               std::string* error, bool* timed_out) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                  ai->ai_protocol);
  if (fd < 0) {
    *error = ConnectFailure(address, errno);
    return -1;
  }
  int err = 0;
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    err = errno;
    if (err == EINPROGRESS) {
      int r = WaitReady(fd, POLLOUT, deadline);
      if (r == 0) {
        *timed_out = true;
        close(fd);
        return -1;
      }
      socklen_t len = sizeof(err);
      if (r < 0) {
        err = -r;
      } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
      }
    }
  }
  if (err != 0) {
    *error = ConnectFailure(address, err);
    close(fd);
    return -1;
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    *error = ConnectFailure(address, errno);
    close(fd);
    return -1;
  }
  SetSocketOptions(fd);
  return fd;
}

void PutBytes(PayloadWriter& w, const uint8_t* data, size_t len) { w.Bytes({data, len}); }


Millis Left(Deadline deadline) {
  auto left = std::chrono::ceil<Millis>(deadline - Clock::now());
  return std::max(left, Millis(1));
}

}  // namespace

std::string FrameTypeName(uint16_t type) {
  static const char* const kNames[] = {
      "",          "HELLO",       "CHALLENGE",    "AUTH",        "AUTH_OK",   "ERROR",
      "PING",      "PONG",        "LIST",         "SNAPSHOT",    "DONE",      "VERIFY",
      "PROBLEM",   "RESTORE",     "RESTORE_PAGE", "RESTORE_DATA", "BACKUP_BEGIN",
      "BACKUP_READY", "PARENT_REQ", "PARENT_PAGE", "STRIPE_JOIN", "STRIPE_READY", "BLOCKS",
      "PAGE",      "ACK",         "COMMIT",       "COMMITTED"};
  static_assert(std::size(kNames) == size_t(FrameType::kMaxType) + 1);
  if (type == 0 || type > uint16_t(FrameType::kMaxType)) return "type " + std::to_string(type);
  return kNames[type];
}

Status ParseHostPort(const std::string& address, std::string* host, std::string* port) {
  auto bad = [&] {
    return Status::InvalidArgument("bad address '" + address +
                                   "': expected HOST:PORT or [IPV6]:PORT");
  };
  size_t colon;
  if (!address.empty() && address[0] == '[') {
    size_t close_bracket = address.find(']');
    if (close_bracket == std::string::npos || close_bracket + 1 >= address.size() ||
        address[close_bracket + 1] != ':') {
      return bad();
    }
    *host = address.substr(1, close_bracket - 1);
    colon = close_bracket + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) return bad();
    *host = address.substr(0, colon);
    if (host->find(':') != std::string::npos) return bad();  // a bare IPv6 literal
  }
  *port = address.substr(colon + 1);
  if (host->empty() || port->empty() || port->size() > 5 ||
      port->find_first_not_of("0123456789") != std::string::npos || std::stoi(*port) > 65535) {
    return bad();
  }
  return Status::Ok();
}

Result<std::unique_ptr<Conn>> Conn::Connect(const std::string& address, Millis timeout) {
  std::string host, port;
  DP420_RETURN_IF_ERROR(ParseHostPort(address, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) {
    return Status::Network("cannot resolve " + address + ": " + gai_strerror(rc));
  }
  Deadline deadline = Clock::now() + timeout;
  std::string error = "cannot connect to " + address + ": no address";
  bool timed_out = false;
  int fd = -1;
  for (const addrinfo* ai = list; ai && fd < 0 && !timed_out; ai = ai->ai_next) {
    fd = ConnectOne(ai, address, deadline, &error, &timed_out);
  }
  freeaddrinfo(list);
  if (fd >= 0) return std::make_unique<Conn>(fd, address);
  if (timed_out) {
    return Status::Network("connection to " + address + " timed out after " + Duration(timeout) +
                           " (connecting)");
  }
  return Status::Network(error);
}

Conn::Conn(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {
  DP420_ASSERT(fd_ >= 0);
  SetSocketOptions(fd_);
}

Conn::~Conn() {
  if (fd_ >= 0) close(fd_);
}

void Conn::Shutdown() {
  shut_down_.store(true);
  broken_.store(true);
  ::shutdown(fd_, SHUT_RDWR);
}

// err: an errno, 0 for an orderly end of stream, -1 for a deadline.
Status Conn::Failure(int err, const char* doing, Millis timeout, bool breaks) {
  if (breaks) broken_.store(true);
  std::string what = "connection to " + peer_;
  if (shut_down_.load()) return Status::Network(what + " was closed by this side (" + doing + ")");
  if (err == -1) {
    return Status::Network(what + " timed out after " + Duration(timeout) + " (" + doing + ")");
  }
  if (err == 0 || err == EPIPE) return Status::Network(what + " closed by peer (" + doing + ")");
  if (err == ECONNRESET) return Status::Network(what + " reset by peer (" + doing + ")");
  return Status::Network(what + " failed (" + doing + "): " + std::strerror(err));
}

Status Conn::SendIov(iovec* iov, int count, Deadline deadline, Millis timeout,
                     bool frame_start) {
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = size_t(count);
  bool sent_some = false;
  while (msg.msg_iovlen > 0) {
    ssize_t n = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err != EAGAIN && err != EWOULDBLOCK) return Failure(err, "sending", timeout);
      int r = WaitReady(fd_, POLLOUT, deadline);
      if (r == 0) return Failure(-1, "sending", timeout, sent_some || !frame_start);
      if (r < 0) return Failure(-r, "sending", timeout);
      continue;
    }
    sent_some = true;
    bytes_sent_.fetch_add(uint64_t(n), std::memory_order_relaxed);
    size_t left = size_t(n);
    while (msg.msg_iovlen > 0 && left >= msg.msg_iov->iov_len) {
      left -= msg.msg_iov->iov_len;
      ++msg.msg_iov;
      --msg.msg_iovlen;
    }
    if (msg.msg_iovlen > 0) {
      msg.msg_iov->iov_base = static_cast<uint8_t*>(msg.msg_iov->iov_base) + left;
      msg.msg_iov->iov_len -= left;
    }
  }
  return Status::Ok();
}

Status Conn::SendAll(const uint8_t* data, size_t len, Deadline deadline) {
  iovec iov{const_cast<uint8_t*>(data), len};
  return SendIov(&iov, 1, deadline, std::chrono::ceil<Millis>(deadline - Clock::now()), false);
}

Status Conn::Send(FrameType type, uint64_t request_id, std::span<const uint8_t> payload,
                  Millis timeout) {
  if (payload.size() > kMaxPayloadBytes) {
    return Status::Internal(FrameTypeName(uint16_t(type)) + " payload of " +
                            std::to_string(payload.size()) + " bytes exceeds the frame limit");
  }
  FrameHeader header = MakeHeader(type, request_id, payload);
  iovec iov[2] = {{&header, sizeof(header)},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  std::lock_guard lock(send_mu_);
  if (broken_.load()) return Failure(EPIPE, "sending", timeout);
  return SendIov(iov, payload.empty() ? 1 : 2, Clock::now() + timeout, timeout, true);
}

Status Conn::RecvUntil(uint8_t* buf, size_t len, Deadline deadline, Millis timeout,
                       bool frame_start) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = recv(fd_, buf + done, len - done, MSG_DONTWAIT);
    if (n > 0) {
      done += size_t(n);
      bytes_received_.fetch_add(uint64_t(n), std::memory_order_relaxed);
      continue;
    }
    if (n == 0) {
      closed_by_peer_.store(true);
      return Failure(0, "receiving", timeout);
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) return Failure(err, "receiving", timeout);
    int r = WaitReady(fd_, POLLIN, deadline);
    if (r == 0) return Failure(-1, "receiving", timeout, done > 0 || !frame_start);
    if (r < 0) return Failure(-r, "receiving", timeout);
  }
  return Status::Ok();
}

Result<FrameHeader> Conn::RecvHeader(Millis timeout) {
  FrameHeader header;
  DP420_RETURN_IF_ERROR(RecvUntil(reinterpret_cast<uint8_t*>(&header), sizeof(header),
                                  Clock::now() + timeout, timeout, true));
  Status s = CheckHeader(header);
  if (!s.ok()) return s.Prefix("frame from " + peer_);
  return header;
}

Status Conn::RecvExact(uint8_t* buf, size_t len, Millis timeout) {
  return RecvUntil(buf, len, Clock::now() + timeout, timeout, false);
}

Result<Frame> Conn::RecvPayloadUntil(const FrameHeader& header, Deadline deadline,
                                     Millis timeout) {
  Frame frame;
  frame.header = header;
  // The length was bounded by CheckHeader before anything is allocated.
  frame.payload.resize(header.payload_len);
  DP420_RETURN_IF_ERROR(
      RecvUntil(frame.payload.data(), frame.payload.size(), deadline, timeout, false));
  Status s = CheckPayload(header, frame.payload);
  if (!s.ok()) return s.Prefix(FrameTypeName(header.type) + " frame from " + peer_);
  return frame;
}

Result<Frame> Conn::RecvPayload(const FrameHeader& header, Millis timeout) {
  return RecvPayloadUntil(header, Clock::now() + timeout, timeout);
}

Result<Frame> Conn::Recv(Millis timeout) {
  Deadline deadline = Clock::now() + timeout;
  FrameHeader header;
  DP420_RETURN_IF_ERROR(RecvUntil(reinterpret_cast<uint8_t*>(&header), sizeof(header), deadline,
                                  timeout, true));
  Status s = CheckHeader(header);
  if (!s.ok()) return s.Prefix("frame from " + peer_);
  return RecvPayloadUntil(header, deadline, timeout);
}

Status SendError(Conn& conn, const Status& status, Millis timeout) {
  if (conn.broken()) return Status::Ok();
  DP420_ASSERT(!status.ok());
  PayloadWriter w;
  w.U16(uint16_t(status.code()));
  w.String(status.message().substr(0, kErrorMessageMax));
  return conn.Send(FrameType::kError, 0, w.bytes(), timeout);
}

Status StatusFromError(const Frame& frame, const std::string& peer) {
  PayloadReader r(frame.payload);
  uint16_t code = r.U16();
  std::string message = r.String(kErrorMessageMax);
  Status s = r.Finish("ERROR");
  if (!s.ok()) return Malformed(frame, peer, s);
  if (code == 0 || code > uint16_t(Code::kClockSkew)) {
    return Status::Network(peer + " sent an ERROR with unknown code " + std::to_string(code) +
                           ": " + message);
  }
  return Status::Make(Code(code), peer.empty() ? message : peer + ": " + message);
}

Status Malformed(const Frame& frame, const std::string& peer, const Status& why) {
  return Status::Network(peer + " sent a malformed " + FrameTypeName(frame.header.type) +
                         " frame (" + why.message() + ")");
}

Status ExpectFrame(const Frame& frame, FrameType expected, const std::string& peer) {
  if (frame.type() == FrameType::kError) return StatusFromError(frame, peer);
  if (frame.type() != expected) {
    return Status::Network(peer + " sent " + FrameTypeName(frame.header.type) + " where " +
                           FrameTypeName(uint16_t(expected)) + " was expected");
  }
  return Status::Ok();
}

Status ClientHandshake(Conn& conn, const std::string& client, const uint8_t key[kKeyBytes],
                       Millis timeout, uint64_t* server_time_ns, uint8_t* repo_id) {
  if (!ValidClientName(client)) {
    return Status::InvalidArgument("invalid client name '" + client + "'");
  }
  Deadline deadline = Clock::now() + timeout;
  const std::string server = "server " + conn.peer();
  uint8_t client_nonce[kNonceBytes];
  DP420_RETURN_IF_ERROR(RandomNonce(client_nonce, kNonceBytes));
  PayloadWriter hello;
  hello.U16(kProtocolVersion);
  hello.String(client);
  PutBytes(hello, client_nonce, kNonceBytes);
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kHello, 0, hello.bytes(), Left(deadline)));

  DP420_ASSIGN_OR_RETURN(Frame challenge, conn.Recv(Left(deadline)));
  DP420_RETURN_IF_ERROR(ExpectFrame(challenge, FrameType::kChallenge, server));
  uint8_t server_nonce[kNonceBytes];
  PayloadReader cr(challenge.payload);
  cr.Bytes(server_nonce, kNonceBytes);
  cr.U64();
  Status s = cr.Finish("CHALLENGE");
  if (!s.ok()) return Malformed(challenge, server, s);

  uint8_t proof[kProofBytes];
  ComputeProof(key, ProofSide::kClient, client, client_nonce, server_nonce, proof);
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kAuth, 0, {proof, kProofBytes}, Left(deadline)));

  DP420_ASSIGN_OR_RETURN(Frame ok, conn.Recv(Left(deadline)));
  DP420_RETURN_IF_ERROR(ExpectFrame(ok, FrameType::kAuthOk, server));
  uint8_t server_proof[kProofBytes];
  uint8_t id[16];
  PayloadReader r(ok.payload);
  r.Bytes(server_proof, kProofBytes);
  uint64_t server_time = r.U64();
  r.Bytes(id, sizeof(id));
  s = r.Finish("AUTH_OK");
  if (!s.ok()) return Malformed(ok, server, s);
  uint8_t expected[kProofBytes];
  ComputeProof(key, ProofSide::kServer, client, client_nonce, server_nonce, expected);
  if (!ProofsEqual(expected, server_proof)) {
    return Status::Make(Code::kPermission,
                        server + " failed to prove that it holds client '" + client +
                            "''s key: not the expected server, or the key was replaced");
  }
  if (server_time_ns) *server_time_ns = server_time;
  if (repo_id) std::memcpy(repo_id, id, sizeof(id));
  return Status::Ok();
}

namespace {

// Refuses a handshake: ERROR to the agent (best effort), `why` to the caller.
Status Refuse(Conn& conn, const Status& to_peer, const Status& why, Millis timeout) {
  (void)SendError(conn, to_peer, std::min(timeout, Millis(1000)));
  return why;
}

}  // namespace

Status ServerHandshake(Conn& conn, const ClientRegistry& clients, Millis timeout,
                       ClientKey* client, const uint8_t* repo_id) {
  Deadline deadline = Clock::now() + timeout;
  const std::string& peer = conn.peer();
  auto received = conn.Recv(Left(deadline));
  if (!received.ok()) {
    // A frame that fails its checks (or speaks another version) is answered;
    // a broken transport is not.
    return Refuse(conn, received.status(), received.status(), timeout);
  }
  Frame hello = std::move(received).value();
  if (hello.type() != FrameType::kHello) {
    Status s = Status::Network(peer + " sent " + FrameTypeName(hello.header.type) +
                               " before HELLO");
    return Refuse(conn, Status::Network("expected HELLO"), s, timeout);
  }
  PayloadReader hr(hello.payload);
  uint16_t version = hr.U16();
  std::string name = hr.String(kClientNameMax);
  uint8_t client_nonce[kNonceBytes];
  hr.Bytes(client_nonce, kNonceBytes);
  Status s = hr.Finish("HELLO");
  if (!s.ok()) {
    s = Malformed(hello, peer, s);
    return Refuse(conn, s, s, timeout);
  }
  if (version != kProtocolVersion) {
    s = Status::Version("agent speaks protocol version " + std::to_string(version) +
                        "; this server speaks " + std::to_string(kProtocolVersion));
    return Refuse(conn, s, s.Prefix(peer), timeout);
  }

  uint8_t server_nonce[kNonceBytes];
  DP420_RETURN_IF_ERROR(RandomNonce(server_nonce, kNonceBytes));
  PayloadWriter cw;
  PutBytes(cw, server_nonce, kNonceBytes);
  cw.U64(WallClockNs());
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kChallenge, 0, cw.bytes(), Left(deadline)));

  received = conn.Recv(Left(deadline));
  if (!received.ok()) return Refuse(conn, received.status(), received.status(), timeout);
  Frame auth = std::move(received).value();
  uint8_t proof[kProofBytes] = {};
  PayloadReader ar(auth.payload);
  ar.Bytes(proof, kProofBytes);
  s = ar.Finish("AUTH");
  if (auth.type() != FrameType::kAuth || !s.ok()) {
    s = auth.type() != FrameType::kAuth
            ? Status::Network(peer + " sent " + FrameTypeName(auth.header.type) + " instead of AUTH")
            : Malformed(auth, peer, s);
    return Refuse(conn, Status::Network("expected AUTH"), s, timeout);
  }

  // An unknown client is checked against a random key, so both refusals cost
  // the same and look the same to the peer.
  const ClientKey* known = clients.Find(name);
  uint8_t key[kKeyBytes];
  if (known) {
    std::memcpy(key, known->key, kKeyBytes);
  } else {
    DP420_RETURN_IF_ERROR(RandomNonce(key, kKeyBytes));
  }
  uint8_t expected[kProofBytes];
  ComputeProof(key, ProofSide::kClient, name, client_nonce, server_nonce, expected);
  bool proof_ok = ProofsEqual(expected, proof);
  if (!known || !proof_ok) {
    Status why = Status::Make(Code::kPermission,
                              "authentication of client '" + name + "' from " + peer +
                                  " failed: " + (known ? "wrong key" : "unknown client"));
    return Refuse(conn, Status::Make(Code::kPermission, "authentication failed"), why, timeout);
  }

  PayloadWriter ow;
  uint8_t server_proof[kProofBytes];
  ComputeProof(key, ProofSide::kServer, name, client_nonce, server_nonce, server_proof);
  PutBytes(ow, server_proof, kProofBytes);
  ow.U64(WallClockNs());
  uint8_t id[16] = {};
  if (repo_id) std::memcpy(id, repo_id, sizeof(id));
  PutBytes(ow, id, sizeof(id));
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kAuthOk, 0, ow.bytes(), Left(deadline)));
  *client = *known;
  return Status::Ok();
}

Result<ClockOffset> MeasureClockOffset(Conn& conn, unsigned samples, Millis timeout) {
  if (samples == 0) return Status::InvalidArgument("clock measurement needs at least one sample");
  const std::string server = "server " + conn.peer();
  ClockOffset best;
  bool have = false;
  for (unsigned i = 0; i < samples; ++i) {
    uint64_t t0 = WallClockNs();
    PayloadWriter w;
    w.U64(t0);
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kPing, i + 1, w.bytes(), timeout));
    Deadline deadline = Clock::now() + timeout;
    for (;;) {
      DP420_ASSIGN_OR_RETURN(Frame f, conn.Recv(Left(deadline)));
      if (f.type() == FrameType::kPing) {
        DP420_RETURN_IF_ERROR(AnswerPing(conn, f, timeout));
        continue;
      }
      DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kPong, server));
      PayloadReader r(f.payload);
      uint64_t echo = r.U64();
      uint64_t t1 = r.U64();
      Status s = r.Finish("PONG");
      if (!s.ok()) return Malformed(f, server, s);
      if (echo != t0) continue;  // a late answer to an earlier ping
      uint64_t t2 = WallClockNs();
      int64_t rtt = t2 >= t0 ? int64_t(t2 - t0) : 0;
      if (!have || rtt < best.rtt_ns) {
        best.rtt_ns = rtt;
        best.error_ns = rtt / 2;
        best.offset_ns = int64_t(t1) - int64_t(t0 / 2 + t2 / 2 + (t0 % 2 + t2 % 2) / 2);
        have = true;
      }
      break;
    }
  }
  return best;
}

Status AnswerPing(Conn& conn, const Frame& ping, Millis timeout) {
  PayloadReader r(ping.payload);
  uint64_t t0 = r.U64();
  Status s = r.Finish("PING");
  if (!s.ok()) return Malformed(ping, conn.peer(), s);
  PayloadWriter w;
  w.U64(t0);
  w.U64(WallClockNs());
  return conn.Send(FrameType::kPong, ping.header.request_id, w.bytes(), timeout);
}

uint64_t WallClockNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

Millis ReconnectDelay(unsigned attempt) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  double base = 250.0 * static_cast<double>(1u << std::min(attempt, 5u));  // 8 s at 5
  return Millis(static_cast<int64_t>(base * jitter(rng)));
}

bool PauseBeforeReconnect(unsigned attempt, Clock::time_point deadline,
                          const std::function<bool()>& stop) {
  constexpr Millis kSlice{100};
  Clock::time_point until = std::min(Clock::now() + ReconnectDelay(attempt), deadline);
  for (;;) {
    if (stop()) return false;
    Clock::time_point now = Clock::now();
    if (now >= until) return true;
    std::this_thread::sleep_for(std::min<Clock::duration>(kSlice, until - now));
  }
}

}  // namespace dp420::net
