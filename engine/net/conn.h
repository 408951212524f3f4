// Conn: one TCP connection speaking dp420 frames (frame.h), with timeouts on
// every blocking step, and the handshake and clock measurement both sides run
// on it (docs/PROTOCOL.md).
//
// After the handshake every frame is sealed (channel.h): Send and Recv seal
// and open frames themselves. Control traffic (requests, answers,
// heartbeats, the handshake) goes through Send/Recv: blocking sockets
// bounded by poll(2) deadlines. Bulk data has its own paths, still sealed:
// the agent seals blocks in place in its registered buffers (BeginSeal,
// SealPiece, EndSeal) and sends them with io_uring send_zc on the fd() of a
// stripe connection; the server opens block payloads straight into its
// registered buffers (RecvHeader, BeginOpen, RecvOpen, EndOpen); the
// agent's restore opens whole payloads in its buffers (OpenInPlace).
//
// Errors: kNetwork for a timeout, a reset, an end of stream or a refused
// connection (the message names the peer and what happened); kCorruption for
// a frame that fails its checks; kVersion for another protocol version.
//
// Thread safety: Send may be called from several threads at once (frames are
// never interleaved); one thread receives. Shutdown may be called from any
// thread and makes blocked calls in other threads return kNetwork.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/net/auth.h"
#include "engine/net/channel.h"
#include "engine/net/frame.h"
#include "io/status.h"

struct iovec;

namespace dp420::net {

using Millis = std::chrono::milliseconds;

struct Frame {
  FrameHeader header{};
  FrameType type() const { return static_cast<FrameType>(header.type); }
  std::vector<uint8_t> payload;
};

class Conn {
 public:
  // Connects to "HOST:PORT" ("[v6]:PORT" for IPv6 literals; names resolved),
  // with TCP_NODELAY and keepalive.
  static Result<std::unique_ptr<Conn>> Connect(const std::string& address, Millis timeout);
  // Takes ownership of an accepted socket; `peer` names it in messages.
  Conn(int fd, std::string peer);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  int fd() const { return fd_; }
  const std::string& peer() const { return peer_; }

  // From now on every frame in both directions is sealed with `keys`;
  // `agent` says which side of the connection this is.
  void StartSealing(const SessionKeys& keys, bool agent);
  bool sealed() const { return send_cipher_ != nullptr; }

  // Sends one whole frame within `timeout` (sealed once sealing started:
  // the payload is copied and encrypted).
  Status Send(FrameType type, uint64_t request_id, std::span<const uint8_t> payload,
              Millis timeout);
  // As Send, but seals `payload` in place and writes the tag right after it:
  // `capacity` must be at least len + kTagBytes. No copy of the payload.
  Status SendInPlace(FrameType type, uint64_t request_id, uint8_t* payload, size_t len,
                     size_t capacity, Millis timeout);

  // Sealing for a sender that puts frames on the wire itself (io_uring): the
  // header of a frame of `plain_len` payload bytes, then its payload in
  // pieces, then the tag that must follow the payload. Frames must reach
  // the wire in the order BeginSeal was called; the caller is then the
  // connection's only sender. Needs sealed().
  FrameHeader BeginSeal(FrameType type, uint64_t request_id, uint32_t plain_len);
  void SealPiece(const uint8_t* in, uint8_t* out, size_t len);
  void EndSeal(uint8_t tag[kTagBytes]);

  // The payload bytes a frame carries, its tag excluded.
  static uint32_t PlainLen(const FrameHeader& h) {
    return IsSealed(h) ? h.payload_len - uint32_t(kTagBytes) : h.payload_len;
  }
  // Receives one frame within `timeout`: header checked (CheckHeader), then
  // the payload read and checked (CheckPayload).
  Result<Frame> Recv(Millis timeout);
  // Receives and checks only a header; the caller then reads the payload:
  // with RecvPayload, or exactly header.payload_len bytes with RecvExact
  // into its own buffer, checking them itself.
  Result<FrameHeader> RecvHeader(Millis timeout);
  // The payload of `header` (from RecvHeader) within `timeout`, checked.
  Result<Frame> RecvPayload(const FrameHeader& header, Millis timeout);
  Status RecvExact(uint8_t* buf, size_t len, Millis timeout);
  // Receives what has arrived, up to `len` bytes, without waiting: the
  // count, 0 when nothing is there yet, kNetwork at the end of the stream or
  // on an error (for a caller that polls the socket itself).
  Result<size_t> RecvAvailable(uint8_t* buf, size_t len);
  // Receiving a payload in pieces (after RecvHeader): BeginOpen, then
  // RecvOpen for PlainLen(header) bytes in all, then EndOpen, which reads
  // the tag (or checks the CRC of a payload in the clear). Bytes RecvOpen
  // delivered must not be acted on before EndOpen succeeded.
  Status BeginOpen(const FrameHeader& header);
  Status RecvOpen(uint8_t* buf, size_t len, Millis timeout);
  Status EndOpen(Millis timeout);
  // Opens a payload already received (header.payload_len bytes at
  // `payload`) in place; the plaintext is the first PlainLen(header) bytes.
  Status OpenInPlace(const FrameHeader& header, uint8_t* payload);
  // shutdown(SHUT_RDWR): wakes blocked calls on other threads; idempotent.
  void Shutdown();
  // True once the transport failed (reset, end of stream, shutdown, a timeout
  // in the middle of a frame): nothing more can be exchanged on this
  // connection. A timeout before a frame's first byte leaves it usable, except
  // a sealed frame's send: its nonce was taken, so the stream breaks.
  bool broken() const { return broken_.load(); }
  // True once a receive met the end of the stream (the peer closed).
  bool closed_by_peer() const { return closed_by_peer_.load(); }

  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  uint64_t bytes_received() const { return bytes_received_.load(std::memory_order_relaxed); }

 private:
  Status SendAll(const uint8_t* data, size_t len, std::chrono::steady_clock::time_point deadline);
  // `frame_start`: `buf`/`iov` begin a frame, so a timeout before the first
  // byte leaves the stream usable.
  Status SendIov(struct iovec* iov, int count, std::chrono::steady_clock::time_point deadline,
                 Millis timeout, bool frame_start);
  Status RecvUntil(uint8_t* buf, size_t len, std::chrono::steady_clock::time_point deadline,
                   Millis timeout, bool frame_start);
  Result<Frame> RecvPayloadUntil(const FrameHeader& header,
                                 std::chrono::steady_clock::time_point deadline, Millis timeout);
  Status Failure(int err, const char* doing, Millis timeout, bool breaks = true);
  // kCorruption unless the header's sealing matches the connection's.
  Status CheckSealing(const FrameHeader& header);
  int fd_ = -1;
  std::string peer_;
  std::mutex send_mu_;
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> broken_{false};  // a send or receive failed: the stream is unusable
  std::atomic<bool> closed_by_peer_{false};
  // Set once by StartSealing, before any other thread uses the connection.
  std::unique_ptr<FrameCipher> send_cipher_;   // guarded by send_mu_
  std::unique_ptr<FrameCipher> recv_cipher_;   // the receiving thread's
  std::vector<uint8_t> send_scratch_;          // Send's ciphertext; guarded by send_mu_
  uint32_t open_crc_ = 0;                      // BeginOpen..EndOpen of a frame in the clear
  FrameHeader open_header_{};
};

// Splits "HOST:PORT" / "[V6]:PORT" (kInvalidArgument naming `address`).
Status ParseHostPort(const std::string& address, std::string* host, std::string* port);
// "HELLO", "RESTORE_DATA", ... ("type N" for an unknown one).
std::string FrameTypeName(uint16_t type);

// ERROR frames: u16 code (the Status code), string message (<= 4096 bytes).
// Does nothing on a connection whose stream already failed.
Status SendError(Conn& conn, const Status& status, Millis timeout);
// The Status an ERROR frame carries (kNetwork for a malformed one), prefixed
// with "server: " / the peer's name as the caller chooses.
Status StatusFromError(const Frame& frame, const std::string& peer);
// When `frame` is an ERROR frame: its Status; when it is not of `expected`
// type: kNetwork naming both types; else OK.
Status ExpectFrame(const Frame& frame, FrameType expected, const std::string& peer);
// A frame whose payload did not parse (`why`), from `peer`: kNetwork.
Status Malformed(const Frame& frame, const std::string& peer, const Status& why);

// The agent side of the handshake (HELLO, CHALLENGE, AUTH, AUTH_OK;
// docs/PROTOCOL.md). Refuses (kPermission) a server whose identity is not
// `server_fingerprint` (SHA-256 of its public key, from the key file) or
// that cannot prove it holds the client's key; then seals the connection.
// `server_time_ns` receives the time the server sent in AUTH_OK, `repo_id`
// (16 bytes, may be null) the id of the repository it serves. `timeout`
// bounds the whole handshake.
Status ClientHandshake(Conn& conn, const std::string& client, const uint8_t key[kKeyBytes],
                       const uint8_t server_fingerprint[kFingerprintBytes], Millis timeout,
                       uint64_t* server_time_ns, uint8_t* repo_id = nullptr);
// The server side, signing with `clients.identity()`: on success `*client`
// is the authenticated client (name, role) and the connection is sealed. An
// unknown client and a wrong proof both get ERROR "authentication failed"
// and kPermission here. Before authentication succeeds the server sends
// nothing but CHALLENGE and ERROR, and its errors name no detail (the
// returned Status does, for the log). `repo_id` (16 bytes; zeros when null)
// goes into AUTH_OK. `timeout` bounds the whole handshake.
Status ServerHandshake(Conn& conn, const ClientRegistry& clients, Millis timeout,
                       ClientKey* client, const uint8_t* repo_id = nullptr);

// The most payload a frame before authentication may declare: HELLO and AUTH
// are far smaller. A larger header is refused before anything is allocated.
inline constexpr uint32_t kMaxPreAuthPayload = 1024;

// The server side of the handshake as a small state machine over bytes, for
// a caller that moves them itself: ServerHandshake (blocking) and the
// server's event loop (non-blocking, server.cc). The caller receives exactly
// Want().size() bytes into Want(), then calls Received(); the machine checks
// each frame as it completes (header first: payload_len > kMaxPreAuthPayload
// is refused before the payload is read), answers HELLO with CHALLENGE and
// AUTH with AUTH_OK (sealing `conn`), and sends generic refusals as
// ServerHandshake does. It needs a few KiB: one fixed frame buffer and, after
// HELLO, the ephemeral key.
//
// Thread safety: one thread at a time; `conn` and `clients` must outlive it.
class ServerHandshakeSteps {
 public:
  // `repo_id`: 16 bytes for AUTH_OK, copied (zeros when null).
  ServerHandshakeSteps(Conn& conn, const ClientRegistry& clients, const uint8_t* repo_id);
  ~ServerHandshakeSteps();
  ServerHandshakeSteps(const ServerHandshakeSteps&) = delete;
  ServerHandshakeSteps& operator=(const ServerHandshakeSteps&) = delete;

  // Where the next bytes of the current frame go; never past its end, so the
  // caller cannot read into the sealed stream that follows AUTH_OK.
  std::span<uint8_t> Want();
  // `n` bytes were written at the start of Want() (0 < n <= Want().size()).
  // Sends within `send_timeout` (0: never wait; a few hundred bytes always
  // fit a new socket's send buffer). An error ends the handshake: the peer
  // got a generic ERROR (best effort), the Status names the detail for the log.
  Status Received(size_t n, Millis send_timeout);
  // Ends the handshake for `why` (a timeout, a failed receive): a generic
  // ERROR to the peer, best effort within `send_timeout`; returns `why`.
  Status Abandon(const Status& why, Millis send_timeout);
  // AUTH_OK went out; the connection is sealed and client() is who it is.
  bool done() const { return state_ == State::kDone; }
  // True once a byte of the current frame arrived (a receive timeout then
  // breaks the stream).
  bool mid_frame() const { return have_ > 0; }
  const ClientKey& client() const { return client_; }

 private:
  enum class State { kHello, kAuth, kDone, kFailed };
  struct Secrets;  // the ephemeral key and transcript between HELLO and AUTH
  Status OnHeader(Millis send_timeout);
  Status OnFrame(Millis send_timeout);
  Status OnHello(std::span<const uint8_t> payload, Millis send_timeout);
  Status OnAuth(const FrameHeader& header, std::span<const uint8_t> payload,
                Millis send_timeout);
  Status Refuse(const Status& to_peer, const Status& why, Millis send_timeout);

  Conn& conn_;
  const ClientRegistry& clients_;
  uint8_t repo_id_[16] = {};
  State state_ = State::kHello;
  size_t have_ = 0;   // bytes of the current frame in buf_
  size_t need_ = sizeof(FrameHeader);
  std::unique_ptr<Secrets> secrets_;
  std::string client_name_;
  ClientKey client_;
  alignas(8) uint8_t buf_[sizeof(FrameHeader) + kMaxPreAuthPayload];
};

// NTP-style clock offset of the server against this host: `samples` PINGs,
// the one with the smallest round trip wins. offset = server - local.
struct ClockOffset {
  int64_t offset_ns = 0;
  int64_t error_ns = 0;   // half the winning round trip
  int64_t rtt_ns = 0;
};
Result<ClockOffset> MeasureClockOffset(Conn& conn, unsigned samples, Millis timeout);
// Answers a PING frame with a PONG carrying this host's clock.
Status AnswerPing(Conn& conn, const Frame& ping, Millis timeout);

// The pause before reconnect attempt `attempt` (0-based): 250 ms doubling up
// to 8 s, with +-25 % jitter so that agents lost together do not return
// together.
Millis ReconnectDelay(unsigned attempt);
// Sleeps for ReconnectDelay(attempt), but not past `deadline`, looking at
// `stop` every 100 ms; false when `stop` said so.
bool PauseBeforeReconnect(unsigned attempt, std::chrono::steady_clock::time_point deadline,
                          const std::function<bool()>& stop);

// CLOCK_REALTIME in Unix nanoseconds.
uint64_t WallClockNs();

}  // namespace dp420::net
