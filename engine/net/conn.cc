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

#include <openssl/crypto.h>

#include "engine/net/payloads.h"
#include "io/inject.h"
#include "io/assert.h"
#include "simd/simd.h"

namespace dp420::net {

namespace {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

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
      "PAGE",      "ACK",         "COMMIT",       "COMMITTED",   "ADMIN",
      "GROUP_JOIN", "GROUP_MSG"};
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
    ssize_t n = io::sys::Sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
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

void Conn::StartSealing(const SessionKeys& keys, bool agent) {
  DP420_ASSERT(!sealed());
  const SecretKey& out = agent ? keys.agent_to_server : keys.server_to_agent;
  const SecretKey& in = agent ? keys.server_to_agent : keys.agent_to_server;
  ChannelDir out_dir = agent ? ChannelDir::kAgentToServer : ChannelDir::kServerToAgent;
  ChannelDir in_dir = agent ? ChannelDir::kServerToAgent : ChannelDir::kAgentToServer;
  std::lock_guard lock(send_mu_);
  send_cipher_ = std::make_unique<FrameCipher>(out, out_dir, true);
  recv_cipher_ = std::make_unique<FrameCipher>(in, in_dir, false);
}

Status Conn::Send(FrameType type, uint64_t request_id, std::span<const uint8_t> payload,
                  Millis timeout) {
  uint32_t limit = sealed() ? kMaxPlainBytes : kMaxPayloadBytes;
  if (payload.size() > limit) {
    return Status::Internal(FrameTypeName(uint16_t(type)) + " payload of " +
                            std::to_string(payload.size()) + " bytes exceeds the frame limit");
  }
  std::lock_guard lock(send_mu_);
  if (broken_.load()) return Failure(EPIPE, "sending", timeout);
  if (!sealed()) {
    FrameHeader header = MakeHeader(type, request_id, payload);
    iovec iov[2] = {{&header, sizeof(header)},
                    {const_cast<uint8_t*>(payload.data()), payload.size()}};
    return SendIov(iov, payload.empty() ? 1 : 2, Clock::now() + timeout, timeout, true);
  }
  FrameHeader header =
      MakeSealedHeader(type, request_id, static_cast<uint32_t>(payload.size() + kTagBytes));
  send_scratch_.resize(payload.size() + kTagBytes);
  send_cipher_->Begin(header);
  send_cipher_->Update(payload.data(), send_scratch_.data(), payload.size());
  send_cipher_->Seal(send_scratch_.data() + payload.size());
  iovec iov[2] = {{&header, sizeof(header)}, {send_scratch_.data(), send_scratch_.size()}};
  // The frame took a nonce of this direction: unsent, the next one would not
  // open at the peer. A timeout before its first byte breaks the stream too.
  return SendIov(iov, 2, Clock::now() + timeout, timeout, false);
}

Status Conn::SendInPlace(FrameType type, uint64_t request_id, uint8_t* payload, size_t len,
                         size_t capacity, Millis timeout) {
  if (!sealed()) return Send(type, request_id, {payload, len}, timeout);
  DP420_ASSERT(capacity >= len + kTagBytes);
  if (len > kMaxPlainBytes) {
    return Status::Internal(FrameTypeName(uint16_t(type)) + " payload of " +
                            std::to_string(len) + " bytes exceeds the frame limit");
  }
  std::lock_guard lock(send_mu_);
  if (broken_.load()) return Failure(EPIPE, "sending", timeout);
  FrameHeader header =
      MakeSealedHeader(type, request_id, static_cast<uint32_t>(len + kTagBytes));
  send_cipher_->Begin(header);
  send_cipher_->Update(payload, payload, len);
  send_cipher_->Seal(payload + len);
  iovec iov[2] = {{&header, sizeof(header)}, {payload, len + kTagBytes}};
  return SendIov(iov, 2, Clock::now() + timeout, timeout, false);  // a nonce was taken (Send)
}

FrameHeader Conn::BeginSeal(FrameType type, uint64_t request_id, uint32_t plain_len) {
  DP420_ASSERT(sealed());
  DP420_ASSERT(plain_len <= kMaxPlainBytes);
  FrameHeader header = MakeSealedHeader(type, request_id, plain_len + uint32_t(kTagBytes));
  send_cipher_->Begin(header);
  return header;
}

void Conn::SealPiece(const uint8_t* in, uint8_t* out, size_t len) {
  send_cipher_->Update(in, out, len);
}

void Conn::EndSeal(uint8_t tag[kTagBytes]) { send_cipher_->Seal(tag); }

Status Conn::CheckSealing(const FrameHeader& header) {
  if (IsSealed(header) == sealed()) return Status::Ok();
  // A refusal of the handshake itself comes in the clear where the first
  // sealed frame was due (the refusing side may not know the keys). It can
  // only end the connection.
  if (!IsSealed(header) && header.type == uint16_t(FrameType::kError) &&
      recv_cipher_->frames() == 0) {
    return Status::Ok();
  }
  broken_.store(true);
  return Status::Corruption(std::string(FrameTypeName(header.type)) + " frame from " + peer_ +
                            (sealed() ? " is not sealed on a sealed connection"
                                      : " is sealed before the handshake"));
}

Status Conn::RecvUntil(uint8_t* buf, size_t len, Deadline deadline, Millis timeout,
                       bool frame_start) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = io::sys::Recv(fd_, buf + done, len - done, MSG_DONTWAIT);
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
  if (s.ok()) s = CheckSealing(header);
  if (!s.ok()) return s.Prefix("frame from " + peer_);
  return header;
}

Status Conn::RecvExact(uint8_t* buf, size_t len, Millis timeout) {
  return RecvUntil(buf, len, Clock::now() + timeout, timeout, false);
}

Result<size_t> Conn::RecvAvailable(uint8_t* buf, size_t len) {
  for (;;) {
    ssize_t n = io::sys::Recv(fd_, buf, len, MSG_DONTWAIT);
    if (n > 0) {
      bytes_received_.fetch_add(uint64_t(n), std::memory_order_relaxed);
      return size_t(n);
    }
    if (n == 0 && len > 0) {
      closed_by_peer_.store(true);
      return Failure(0, "receiving", Millis(0));
    }
    if (n == 0) return size_t(0);
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) return size_t(0);
    return Failure(err, "receiving", Millis(0));
  }
}

Status Conn::BeginOpen(const FrameHeader& header) {
  DP420_RETURN_IF_ERROR(CheckSealing(header));
  open_header_ = header;
  if (IsSealed(header)) {
    recv_cipher_->Begin(header);
  } else {
    open_crc_ = 0;
  }
  return Status::Ok();
}

Status Conn::RecvOpen(uint8_t* buf, size_t len, Millis timeout) {
  DP420_RETURN_IF_ERROR(RecvExact(buf, len, timeout));
  if (IsSealed(open_header_)) {
    recv_cipher_->Update(buf, buf, len);
  } else {
    open_crc_ = simd::Crc32c(open_crc_, buf, len);
  }
  return Status::Ok();
}

Status Conn::EndOpen(Millis timeout) {
  const std::string what = FrameTypeName(open_header_.type) + " frame from " + peer_;
  if (!IsSealed(open_header_)) {
    if (open_crc_ == open_header_.payload_crc32c) return Status::Ok();
    broken_.store(true);
    return Status::Corruption(what + ": payload fails its CRC-32C");
  }
  uint8_t tag[kTagBytes];
  Status s = RecvExact(tag, kTagBytes, timeout);
  if (!s.ok()) {
    (void)recv_cipher_->Open(tag);  // ends the frame; the stream is broken anyway
    return s;
  }
  if (recv_cipher_->Open(tag)) return Status::Ok();
  broken_.store(true);
  return Status::Corruption(what + " fails its authentication tag (altered, replayed or "
                            "forged on the way)");
}

Status Conn::OpenInPlace(const FrameHeader& header, uint8_t* payload) {
  DP420_RETURN_IF_ERROR(CheckSealing(header));
  if (!IsSealed(header)) {
    Status s = CheckPayload(header, {payload, header.payload_len});
    if (!s.ok()) broken_.store(true);
    return s.ok() ? s : s.Prefix(FrameTypeName(header.type) + " frame from " + peer_);
  }
  uint32_t plain = PlainLen(header);
  recv_cipher_->Begin(header);
  recv_cipher_->Update(payload, payload, plain);
  if (recv_cipher_->Open(payload + plain)) return Status::Ok();
  broken_.store(true);
  return Status::Corruption(FrameTypeName(header.type) + " frame from " + peer_ +
                            " fails its authentication tag (altered, replayed or forged on "
                            "the way)");
}

Result<Frame> Conn::RecvPayloadUntil(const FrameHeader& header, Deadline deadline,
                                     Millis timeout) {
  DP420_RETURN_IF_ERROR(CheckSealing(header));
  Frame frame;
  frame.header = header;
  // The length was bounded by CheckHeader before anything is allocated.
  frame.payload.resize(header.payload_len);
  DP420_RETURN_IF_ERROR(
      RecvUntil(frame.payload.data(), frame.payload.size(), deadline, timeout, false));
  DP420_RETURN_IF_ERROR(OpenInPlace(header, frame.payload.data()));
  frame.payload.resize(PlainLen(header));
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
  uint16_t code = 0;
  std::string message;
  Status s = ParseError(frame.payload, &code, &message);
  if (!s.ok()) return Malformed(frame, peer, s);
  if (code == 0 || code > uint16_t(kLastCode)) {
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

namespace {

constexpr char kTranscriptLabel[] = "dp420-handshake-v2";
constexpr char kSignatureLabel[] = "dp420-server-signature-v2";

// SHA-256 over the label, HELLO's payload and CHALLENGE's payload up to its
// signature: both ephemeral keys, the client's name and the server's
// identity. The signature, the proofs and the session keys all bind it.
void TranscriptHash(std::span<const uint8_t> hello, std::span<const uint8_t> challenge_signed,
                    uint8_t out[32]) {
  simd::Sha256Stream h;
  h.Update(reinterpret_cast<const uint8_t*>(kTranscriptLabel), sizeof(kTranscriptLabel) - 1);
  uint32_t len = static_cast<uint32_t>(hello.size());
  h.Update(reinterpret_cast<const uint8_t*>(&len), 4);
  h.Update(hello.data(), hello.size());
  h.Update(challenge_signed.data(), challenge_signed.size());
  h.Final(out);
}

std::vector<uint8_t> SignedMessage(const uint8_t transcript[32]) {
  constexpr size_t kLabel = sizeof(kSignatureLabel) - 1;
  std::vector<uint8_t> msg(kLabel + 32);
  std::memcpy(msg.data(), kSignatureLabel, kLabel);
  std::memcpy(msg.data() + kLabel, transcript, 32);
  return msg;
}

// The CHALLENGE fields the signature covers, then the signature.
constexpr size_t kChallengeSigned = kEphemeralBytes + kIdentityBytes;
constexpr size_t kChallengeBytes = kChallengeSigned + kSignatureBytes;

// Checks CHALLENGE: the server's identity is the pinned one and it signed
// this handshake. Fills `server_ephemeral` and `transcript`.
Status CheckChallenge(const Frame& challenge, std::span<const uint8_t> hello,
                      const uint8_t pin[kFingerprintBytes], const std::string& server,
                      uint8_t server_ephemeral[kEphemeralBytes], uint8_t transcript[32]) {
  if (challenge.payload.size() != kChallengeBytes) {
    return Malformed(challenge, server, Status::Corruption("CHALLENGE of the wrong length"));
  }
  const uint8_t* p = challenge.payload.data();
  std::memcpy(server_ephemeral, p, kEphemeralBytes);
  const uint8_t* identity = p + kEphemeralBytes;
  uint8_t fingerprint[kFingerprintBytes];
  IdentityFingerprint(identity, fingerprint);
  if (CRYPTO_memcmp(fingerprint, pin, kFingerprintBytes) != 0) {
    return Status::Make(Code::kPermission,
                        server + " is not the server this key file was made for: its identity " +
                            simd::ToHex(fingerprint, kFingerprintBytes) +
                            " is not the pinned server-id " + simd::ToHex(pin, kFingerprintBytes) +
                            " (an impostor or a relay, or the server's clients file was "
                            "replaced)");
  }
  TranscriptHash(hello, {p, kChallengeSigned}, transcript);
  if (!VerifySignature(identity, SignedMessage(transcript), p + kChallengeSigned)) {
    return Status::Make(Code::kPermission,
                        server + " presented the pinned identity but did not sign this "
                                 "handshake with it: refused");
  }
  return Status::Ok();
}

}  // namespace

Status ClientHandshake(Conn& conn, const std::string& client, const uint8_t key[kKeyBytes],
                       const uint8_t server_fingerprint[kFingerprintBytes], Millis timeout,
                       uint64_t* server_time_ns, uint8_t* repo_id) {
  if (!ValidClientName(client)) {
    return Status::InvalidArgument("invalid client name '" + client + "'");
  }
  Deadline deadline = Clock::now() + timeout;
  const std::string server = "server " + conn.peer();
  DP420_ASSIGN_OR_RETURN(Ephemeral mine, Ephemeral::Generate());
  PayloadWriter hello;
  hello.U16(kProtocolVersion);
  hello.String(client);
  PutBytes(hello, mine.public_key(), kEphemeralBytes);
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kHello, 0, hello.bytes(), Left(deadline)));

  DP420_ASSIGN_OR_RETURN(Frame challenge, conn.Recv(Left(deadline)));
  DP420_RETURN_IF_ERROR(ExpectFrame(challenge, FrameType::kChallenge, server));
  uint8_t server_ephemeral[kEphemeralBytes];
  uint8_t transcript[32];
  DP420_RETURN_IF_ERROR(CheckChallenge(challenge, hello.bytes(), server_fingerprint, server,
                                       server_ephemeral, transcript));
  SecretKey shared;
  DP420_RETURN_IF_ERROR(mine.Agree(server_ephemeral, &shared).Prefix(server));

  uint8_t proof[kProofBytes];
  ComputeProof(key, ProofSide::kClient, transcript, proof);
  DP420_RETURN_IF_ERROR(conn.Send(FrameType::kAuth, 0, {proof, kProofBytes}, Left(deadline)));
  SessionKeys keys;
  DeriveSessionKeys(shared, key, transcript, &keys);
  conn.StartSealing(keys, /*agent=*/true);

  // AUTH_OK is the first sealed frame; an ERROR in its place is in the clear.
  DP420_ASSIGN_OR_RETURN(Frame ok, conn.Recv(Left(deadline)));
  DP420_RETURN_IF_ERROR(ExpectFrame(ok, FrameType::kAuthOk, server));
  AuthOkMsg auth_ok;
  Status s = ParseAuthOk(ok.payload, &auth_ok);
  if (!s.ok()) return Malformed(ok, server, s);
  const uint8_t* server_proof = auth_ok.proof;
  const uint8_t* id = auth_ok.repo_id;
  uint64_t server_time = auth_ok.server_time_ns;
  uint8_t expected[kProofBytes];
  ComputeProof(key, ProofSide::kServer, transcript, expected);
  if (!ProofsEqual(expected, server_proof)) {
    return Status::Make(Code::kPermission,
                        server + " failed to prove that it holds client '" + client +
                            "''s key: not the expected server, or the key was replaced");
  }
  if (server_time_ns) *server_time_ns = server_time;
  if (repo_id) std::memcpy(repo_id, id, sizeof(auth_ok.repo_id));
  return Status::Ok();
}

namespace {

// Refuses a handshake: ERROR to the agent (best effort) with `to_peer`, which
// names no detail; `why` to the caller, for the log.
Status Refuse(Conn& conn, const Status& to_peer, const Status& why, Millis timeout) {
  (void)SendError(conn, to_peer, std::min(timeout, Millis(1000)));
  return why;
}

Status HandshakeFailed() { return Status::Make(Code::kPermission, "handshake failed"); }

}  // namespace

struct ServerHandshakeSteps::Secrets {
  Ephemeral mine;
  uint8_t transcript[32] = {};
  uint8_t client_ephemeral[kEphemeralBytes] = {};
};

ServerHandshakeSteps::ServerHandshakeSteps(Conn& conn, const ClientRegistry& clients,
                                           const uint8_t* repo_id)
    : conn_(conn), clients_(clients) {
  if (repo_id) std::memcpy(repo_id_, repo_id, sizeof(repo_id_));
}

ServerHandshakeSteps::~ServerHandshakeSteps() = default;

std::span<uint8_t> ServerHandshakeSteps::Want() {
  DP420_ASSERT(state_ == State::kHello || state_ == State::kAuth);
  DP420_ASSERT(have_ < need_ && need_ <= sizeof(buf_));
  return {buf_ + have_, need_ - have_};
}

Status ServerHandshakeSteps::Refuse(const Status& to_peer, const Status& why,
                                    Millis send_timeout) {
  state_ = State::kFailed;
  return net::Refuse(conn_, to_peer, why, send_timeout);
}

Status ServerHandshakeSteps::Abandon(const Status& why, Millis send_timeout) {
  return Refuse(HandshakeFailed(), why, send_timeout);
}

Status ServerHandshakeSteps::Received(size_t n, Millis send_timeout) {
  DP420_ASSERT(n > 0 && have_ + n <= need_);
  have_ += n;
  if (have_ < need_) return Status::Ok();
  if (need_ == sizeof(FrameHeader)) {
    DP420_RETURN_IF_ERROR(OnHeader(send_timeout));
    if (need_ > have_) return Status::Ok();  // the payload follows
  }
  return OnFrame(send_timeout);
}

// Checks a header before its payload is read: the payload bound is the
// pre-authentication one, and nothing before AUTH_OK may be sealed. Only
// another protocol version is named to the peer.
Status ServerHandshakeSteps::OnHeader(Millis send_timeout) {
  FrameHeader header;
  std::memcpy(&header, buf_, sizeof(header));
  const std::string what = "frame from " + conn_.peer();
  Status s = CheckHeader(header);
  if (!s.ok()) {
    return Refuse(s.code() == Code::kVersion ? s : HandshakeFailed(), s.Prefix(what),
                  send_timeout);
  }
  if (IsSealed(header)) {
    return Refuse(HandshakeFailed(),
                  Status::Corruption(what + ": " + FrameTypeName(header.type) +
                                     " is sealed before the handshake"),
                  send_timeout);
  }
  if (header.payload_len > kMaxPreAuthPayload) {
    return Refuse(HandshakeFailed(),
                  Status::Corruption(what + ": " + FrameTypeName(header.type) + " declares " +
                                     std::to_string(header.payload_len) +
                                     " payload bytes before authentication (at most " +
                                     std::to_string(kMaxPreAuthPayload) + ")"),
                  send_timeout);
  }
  need_ = sizeof(FrameHeader) + header.payload_len;
  return Status::Ok();
}

Status ServerHandshakeSteps::OnFrame(Millis send_timeout) {
  FrameHeader header;
  std::memcpy(&header, buf_, sizeof(header));
  std::span<const uint8_t> payload{buf_ + sizeof(header), header.payload_len};
  have_ = 0;
  need_ = sizeof(FrameHeader);
  Status s = CheckPayload(header, payload);
  if (!s.ok()) {
    return Refuse(HandshakeFailed(), s.Prefix(FrameTypeName(header.type) + " frame from " +
                                              conn_.peer()),
                  send_timeout);
  }
  if (state_ == State::kHello) {
    if (header.type != uint16_t(FrameType::kHello)) {
      return Refuse(HandshakeFailed(),
                    Status::Network(conn_.peer() + " sent " + FrameTypeName(header.type) +
                                    " before HELLO"),
                    send_timeout);
    }
    return OnHello(payload, send_timeout);
  }
  return OnAuth(header, payload, send_timeout);
}

// Parses HELLO and answers with CHALLENGE. Every refusal is answered without
// detail, except another protocol version, which the agent's operator needs.
Status ServerHandshakeSteps::OnHello(std::span<const uint8_t> payload, Millis send_timeout) {
  const std::string& peer = conn_.peer();
  const ServerIdentity* identity = clients_.identity();
  if (identity == nullptr) return Refuse(HandshakeFailed(),
                                         Status::Internal("the server has no identity"),
                                         send_timeout);
  auto secrets = std::make_unique<Secrets>();
  HelloMsg hello;
  Status s = ParseHello(payload, &hello);
  client_name_ = hello.client;
  std::memcpy(secrets->client_ephemeral, hello.ephemeral.data(), kEphemeralBytes);
  uint16_t version = hello.version;
  if (version != kProtocolVersion && hello.read_ok) {
    s = Status::Version("agent speaks protocol version " + std::to_string(version) +
                        "; this server speaks " + std::to_string(kProtocolVersion));
    return Refuse(s, s.Prefix(peer), send_timeout);
  }
  if (!s.ok()) {
    return Refuse(HandshakeFailed(),
                  Status::Network(peer + " sent a malformed HELLO frame (" + s.message() + ")"),
                  send_timeout);
  }
  auto mine = Ephemeral::Generate();
  if (!mine.ok()) return Refuse(HandshakeFailed(), mine.status(), send_timeout);
  secrets->mine = std::move(mine).value();
  PayloadWriter cw;
  PutBytes(cw, secrets->mine.public_key(), kEphemeralBytes);
  PutBytes(cw, identity->public_key(), kIdentityBytes);
  TranscriptHash(payload, cw.bytes(), secrets->transcript);
  uint8_t sig[kSignatureBytes];
  s = identity->Sign(SignedMessage(secrets->transcript), sig);
  if (!s.ok()) return Refuse(HandshakeFailed(), s, send_timeout);
  PutBytes(cw, sig, kSignatureBytes);
  secrets_ = std::move(secrets);
  state_ = State::kAuth;
  s = conn_.Send(FrameType::kChallenge, 0, cw.bytes(), send_timeout);
  if (!s.ok()) state_ = State::kFailed;
  return s;
}

// Checks AUTH; on success seals the connection and sends AUTH_OK. An unknown
// client is checked against a random key, so both refusals cost the same and
// look the same to the peer.
Status ServerHandshakeSteps::OnAuth(const FrameHeader& header, std::span<const uint8_t> payload,
                                    Millis send_timeout) {
  DP420_ASSERT(state_ == State::kAuth && secrets_ != nullptr);
  const std::string& peer = conn_.peer();
  uint8_t proof[kProofBytes] = {};
  Status s = ParseAuth(payload, proof);
  if (header.type != uint16_t(FrameType::kAuth) || !s.ok()) {
    s = header.type != uint16_t(FrameType::kAuth)
            ? Status::Network(peer + " sent " + FrameTypeName(header.type) + " instead of AUTH")
            : Status::Network(peer + " sent a malformed AUTH frame (" + s.message() + ")");
    return Refuse(HandshakeFailed(), s, send_timeout);
  }
  const ClientKey* known = clients_.Find(client_name_);
  SecretKey key;
  if (known) {
    key = known->key;
  } else if (Status r = RandomNonce(key.data(), kKeyBytes); !r.ok()) {
    return Refuse(HandshakeFailed(), r, send_timeout);
  }
  const uint8_t* transcript = secrets_->transcript;
  uint8_t expected[kProofBytes];
  ComputeProof(key.data(), ProofSide::kClient, transcript, expected);
  bool proof_ok = ProofsEqual(expected, proof);
  SecretKey shared;
  Status agreed = secrets_->mine.Agree(secrets_->client_ephemeral, &shared);
  if (!known || !proof_ok || !agreed.ok()) {
    Status why = Status::Make(Code::kPermission,
                              "authentication of client '" + client_name_ + "' from " + peer +
                                  " failed: " +
                                  (!known ? "unknown client"
                                          : !proof_ok ? "wrong key" : agreed.message()));
    return Refuse(Status::Make(Code::kPermission, "authentication failed"), why, send_timeout);
  }
  SessionKeys keys;
  DeriveSessionKeys(shared, key.data(), transcript, &keys);
  conn_.StartSealing(keys, /*agent=*/false);
  PayloadWriter ow;
  uint8_t server_proof[kProofBytes];
  ComputeProof(key.data(), ProofSide::kServer, transcript, server_proof);
  PutBytes(ow, server_proof, kProofBytes);
  ow.U64(WallClockNs());
  PutBytes(ow, repo_id_, sizeof(repo_id_));
  secrets_.reset();
  state_ = State::kFailed;
  DP420_RETURN_IF_ERROR(conn_.Send(FrameType::kAuthOk, 0, ow.bytes(), send_timeout));
  client_ = *known;
  state_ = State::kDone;
  return Status::Ok();
}

Status ServerHandshake(Conn& conn, const ClientRegistry& clients, Millis timeout,
                       ClientKey* client, const uint8_t* repo_id) {
  Deadline deadline = Clock::now() + timeout;
  if (clients.identity() == nullptr) return Status::Internal("the server has no identity");
  ServerHandshakeSteps steps(conn, clients, repo_id);
  while (!steps.done()) {
    std::span<uint8_t> want = steps.Want();
    Status s = conn.RecvExact(want.data(), want.size(), Left(deadline));
    if (!s.ok()) return steps.Abandon(s, timeout);
    DP420_RETURN_IF_ERROR(steps.Received(want.size(), Left(deadline)));
  }
  *client = steps.client();
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
      uint64_t echo = 0, t1 = 0;
      Status s = ParsePong(f.payload, &echo, &t1);
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
  uint64_t t0 = 0;
  Status s = ParsePing(ping.payload, &t0);
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
