// Wire frames of the dp420 protocol (docs/PROTOCOL.md): a fixed 32-byte
// header, checksummed on its own, followed by a payload checksummed with
// CRC-32C. Decoding never trusts the peer: lengths are bounded before any
// allocation, and every violation is a Status naming what was wrong, so a
// server can close one session with a logged reason and carry on.
//
// Thread safety: pure functions over caller-owned memory.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/status.h"

namespace dp420::net {

inline constexpr uint32_t kFrameMagic = 0x57345044;  // "DP4W" little-endian
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxPayloadBytes = (4u << 20) + 4096;  // a 4 MiB block + its entry

enum class FrameType : uint16_t {
  kHello = 1,      // client -> server: version, client name, client nonce
  kChallenge = 2,  // server -> client: server nonce, server time
  kAuth = 3,       // client -> server: HMAC proof
  kAuthOk = 4,     // server -> client: server's HMAC proof, server time
  kError = 5,      // either way: code + message; the sender closes
  kPing = 6,       // heartbeat with the sender's clock (ns)
  kPong = 7,       // answer: echoes the ping's clock, adds the responder's
  kMaxType = 7,
};

// The 32 bytes before every payload, little-endian.
struct FrameHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t payload_len;
  uint32_t payload_crc32c;
  uint64_t request_id;   // correlates a response with its request; 0 = none
  uint32_t flags;        // reserved, 0
  uint32_t header_crc32c;  // CRC-32C of bytes 0..27
};
static_assert(sizeof(FrameHeader) == 32);

// Builds a header for `payload` (computes both CRCs).
FrameHeader MakeHeader(FrameType type, uint64_t request_id, std::span<const uint8_t> payload);

// Checks magic, version, type, header CRC and the payload bound. kCorruption
// (or kVersion for another protocol version) with the reason.
Status CheckHeader(const FrameHeader& header);
// Checks the payload against the header's CRC.
Status CheckPayload(const FrameHeader& header, std::span<const uint8_t> payload);

// A little-endian field writer/reader for payloads. Reader errors are sticky:
// after the first overrun every getter returns zero/empty and ok() is false.
class PayloadWriter {
 public:
  void U8(uint8_t v) { bytes_.push_back(v); }
  void U16(uint16_t v);
  void U32(uint32_t v);
  void U64(uint64_t v);
  void Bytes(std::span<const uint8_t> v);      // raw, fixed length known to both sides
  void String(const std::string& v);           // u32 length + bytes
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class PayloadReader {
 public:
  explicit PayloadReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  uint8_t U8();
  uint16_t U16();
  uint32_t U32();
  uint64_t U64();
  bool Bytes(uint8_t* out, size_t len);
  // A length-prefixed string of at most `max_len` bytes.
  std::string String(size_t max_len);
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == bytes_.size(); }
  // kCorruption naming `what` unless every byte was consumed without overrun.
  Status Finish(const std::string& what) const;

 private:
  bool Take(size_t len);
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace dp420::net
