// An on-path attacker for the network tests: a loopback TCP relay that understands the
// dp420 frame format (docs/PROTOCOL.md) and lets a test rewrite, drop, duplicate or cut
// frames in flight, in either direction, on any connection.
//
// It listens on 127.0.0.1:<any>; for each accepted connection it connects to one target
// and relays both directions frame by frame. Every frame goes through the user's hook,
// which sees the clear header and the payload (ciphertext for a sealed frame) and may edit
// both in place. After the hook, the relay repairs what an attacker without keys can
// repair: payload_len follows the payload's size, payload_crc32c is recomputed for an
// unsealed frame whose payload changed, and header_crc32c for any frame whose header or
// payload changed. So a hook models the strongest CRC-aware attacker: whatever still gets
// through is a hole in the protocol, not luck with checksums.
//
// A direction whose bytes stop looking like frames (bad magic, an absurd length) is
// relayed as raw bytes from there on, so the relay never stalls a session it cannot parse.
//
// It also records every byte each side sent (per connection and direction, as sent,
// before any tampering) for "this secret never appears on the wire" checks, and counts
// frames by type and direction.
//
// Threads: one accepting, and per connection one per direction. Hook calls are serialized
// (one at a time, under the relay's lock), so a hook may keep state without locking of
// its own, and must not call back into the relay. Every wait is a poll of at most one
// tick; Stop() (and the destructor) resets every connection and joins every thread.

#ifndef DP420_TESTS_NET_TAMPER_RELAY_H_
#define DP420_TESTS_NET_TAMPER_RELAY_H_

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dp420::testnet {

// Which way a frame travels. The relay's client side is the agent (it connects to the
// relay); its target is the server.
enum class Direction : int { kAgentToServer = 0, kServerToAgent = 1 };

const char* DirectionName(Direction dir);

// What the relay does with a frame after the hook returned.
enum class Action {
  kPass,       // forward it (as the hook left it)
  kDrop,       // forward nothing
  kDuplicate,  // forward it twice, back to back (a replay)
  kReset,      // reset both sides of this connection (RST) instead of forwarding it
};

// Frame types and fields of the wire protocol, restated here so the relay does not
// depend on the engine (engine/net/frame.h is the source of truth).
inline constexpr uint32_t kWireMagic = 0x57345044;  // "DP4W"
inline constexpr size_t kWireHeaderBytes = 32;
inline constexpr uint32_t kWireFlagSealed = 1u << 0;  // payload = AEAD ciphertext + tag
inline constexpr uint16_t kWireMaxType = 26;
enum WireType : uint16_t {
  kWireHello = 1, kWireChallenge = 2, kWireAuth = 3, kWireAuthOk = 4, kWireError = 5,
  kWirePing = 6, kWirePong = 7, kWireList = 8, kWireSnapshot = 9, kWireDone = 10,
  kWireVerify = 11, kWireProblem = 12, kWireRestore = 13, kWireRestorePage = 14,
  kWireRestoreData = 15, kWireBackupBegin = 16, kWireBackupReady = 17, kWireParentReq = 18,
  kWireParentPage = 19, kWireStripeJoin = 20, kWireStripeReady = 21, kWireBlocks = 22,
  kWirePage = 23, kWireAck = 24, kWireCommit = 25, kWireCommitted = 26,
};

// One frame as the hook sees it: the decoded header fields and the payload bytes, all
// editable. payload_len and the CRCs are the relay's business (see the file comment); a
// hook that wants a frame whose header lies about its length is out of scope.
struct FrameView {
  uint32_t magic = 0;
  uint16_t version = 0;
  uint16_t type = 0;
  uint32_t payload_len = 0;  // as received; rewritten from payload.size() when sent
  uint32_t payload_crc32c = 0;
  uint64_t request_id = 0;
  uint32_t flags = 0;
  uint32_t header_crc32c = 0;
  std::vector<uint8_t> payload;

  bool sealed() const { return (flags & kWireFlagSealed) != 0; }
};

// Called once per frame. `conn_index` counts accepted connections from 0 (in accept
// order), `frame_index` the frames of this connection and direction from 0 (handshake
// frames included).
using FrameHook = std::function<Action(Direction dir, uint64_t conn_index, uint64_t frame_index,
                                       FrameView& frame)>;

struct TamperRelayOptions {
  bool record = false;                  // keep every byte each side sent
  size_t record_bytes_max = 256u << 20;  // per relay; recording stops beyond it
  size_t connections_max = 64;           // more are accepted and reset at once
  std::chrono::milliseconds connect_timeout{2000};
  // A frame longer than this is not parsed: the direction falls back to raw bytes.
  uint32_t payload_bytes_max = 16u << 20;
  // Nothing runs longer: connections end and accepting stops after this.
  std::chrono::milliseconds lifetime_max{300000};
};

// CRC-32C (Castagnoli) as the protocol uses it: Crc32cOf("123456789") == 0xE3069283.
uint32_t Crc32cOf(const uint8_t* data, size_t len);

class TamperRelay {
 public:
  TamperRelay();
  ~TamperRelay();
  TamperRelay(const TamperRelay&) = delete;
  TamperRelay& operator=(const TamperRelay&) = delete;

  // Listens on 127.0.0.1:0 and relays to target_ip:target_port (an IP literal). False with
  // `*error` when it cannot listen. Call once.
  bool Start(const std::string& target_ip, uint16_t target_port,
             const TamperRelayOptions& options, std::string* error);
  uint16_t port() const { return port_; }
  // Resets every connection, stops accepting and joins every thread. Idempotent.
  void Stop();

  // Replaces the hook (none = pass everything). Takes effect from the next frame.
  void SetHook(FrameHook hook);

  // Every byte `dir` carried on every connection so far, as its sender wrote it,
  // connection after connection (only with options.record).
  std::vector<uint8_t> Recorded(Direction dir) const;
  // True when `needle` occurs in what either direction recorded (connections are searched
  // one by one, so a match never spans two connections).
  bool RecordedContains(const uint8_t* needle, size_t len) const;

  // Frames seen (before the hook's action) of `type` in `dir`, over every connection.
  uint64_t FramesSeen(Direction dir, uint16_t type) const;
  uint64_t connections_accepted() const { return connections_accepted_.load(); }
  // Directions that fell back to raw bytes (a header the relay could not parse).
  uint64_t unparsed_streams() const { return unparsed_streams_.load(); }
  // Frames the hook changed, dropped, duplicated or ended the connection with.
  uint64_t frames_tampered() const { return frames_tampered_.load(); }

 private:
  struct Connection;
  void AcceptLoop();
  void ReapFinished(bool all);
  void Serve(Connection* c);
  void Pump(Connection* c, Direction dir);
  void PumpRaw(Connection* c, Direction dir, int from, int to);
  Action RunHook(Direction dir, uint64_t conn_index, uint64_t frame_index, FrameView& frame);
  void Record(uint64_t conn_index, Direction dir, const uint8_t* data, size_t len);
  bool Alive(const Connection* c) const;

  TamperRelayOptions options_;
  sockaddr_storage target_{};
  socklen_t target_len_ = 0;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::chrono::steady_clock::time_point end_of_life_;

  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> connections_accepted_{0};
  std::atomic<uint64_t> unparsed_streams_{0};
  std::atomic<uint64_t> frames_tampered_{0};
  std::thread accept_thread_;

  mutable std::mutex mutex_;  // guards everything below
  FrameHook hook_;
  std::array<std::array<uint64_t, kWireMaxType + 1>, 2> frames_seen_{};
  // recorded_[conn][dir]: what that side sent.
  std::vector<std::array<std::vector<uint8_t>, 2>> recorded_;
  size_t recorded_bytes_ = 0;
  std::list<std::unique_ptr<Connection>> connections_;
};

}  // namespace dp420::testnet

#endif  // DP420_TESTS_NET_TAMPER_RELAY_H_
