// Conn: one TCP connection speaking dp420 frames (frame.h), with timeouts on
// every blocking step, and the handshake and clock measurement both sides run
// on it (docs/PROTOCOL.md).
//
// Control traffic (requests, answers, heartbeats, the handshake) goes through
// Send/Recv: blocking sockets bounded by poll(2) deadlines. Bulk data has its
// own paths: the agent sends blocks with io_uring send_zc from its registered
// buffers on the fd() of a stripe connection, and the server receives block
// payloads straight into its registered buffers with RecvHeader + RecvExact.
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

  // Sends one whole frame within `timeout`.
  Status Send(FrameType type, uint64_t request_id, std::span<const uint8_t> payload,
              Millis timeout);
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
  // shutdown(SHUT_RDWR): wakes blocked calls on other threads; idempotent.
  void Shutdown();
  // True once the transport failed (reset, end of stream, shutdown, a timeout
  // in the middle of a frame): nothing more can be exchanged on this
  // connection. A timeout before a frame's first byte leaves it usable.
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
  int fd_ = -1;
  std::string peer_;
  std::mutex send_mu_;
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<bool> shut_down_{false};
  std::atomic<bool> broken_{false};  // a send or receive failed: the stream is unusable
  std::atomic<bool> closed_by_peer_{false};
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

// The agent side of the handshake (HELLO, CHALLENGE, AUTH, AUTH_OK). Checks
// the server's proof before returning. `server_time_ns` receives the time the
// server sent in AUTH_OK, `repo_id` (16 bytes, may be null) the id of the
// repository it serves. `timeout` bounds the whole handshake.
Status ClientHandshake(Conn& conn, const std::string& client, const uint8_t key[kKeyBytes],
                       Millis timeout, uint64_t* server_time_ns, uint8_t* repo_id = nullptr);
// The server side: on success `*client` is the authenticated client (name,
// role). An unknown client and a wrong proof both get ERROR "authentication
// failed" and kPermission here. Before authentication succeeds the server sends
// nothing but CHALLENGE and ERROR. `repo_id` (16 bytes; zeros when null) goes
// into AUTH_OK. `timeout` bounds the whole handshake.
Status ServerHandshake(Conn& conn, const ClientRegistry& clients, Millis timeout,
                       ClientKey* client, const uint8_t* repo_id = nullptr);

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
