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
inline constexpr uint16_t kProtocolVersion = 2;
inline constexpr uint32_t kMaxPayloadBytes = (4u << 20) + 4096;  // a 4 MiB block + its entry
// Stripes (agent worker threads, one connection each) of one backup.
inline constexpr uint32_t kMaxStripes = 64;
// FrameHeader::flags: the payload is AES-256-GCM ciphertext and a 16-byte tag,
// the header its associated data (channel.h); payload_crc32c is 0.
inline constexpr uint32_t kFlagSealed = 1;

enum class FrameType : uint16_t {
  kHello = 1,      // client -> server: version, client name, client nonce
  kChallenge = 2,  // server -> client: server nonce, server time
  kAuth = 3,       // client -> server: HMAC proof
  kAuthOk = 4,     // server -> client: server's HMAC proof, server time
  kError = 5,      // either way: code + message; the sender closes
  kPing = 6,       // heartbeat with the sender's clock (ns)
  kPong = 7,       // answer: echoes the ping's clock, adds the responder's
  // Requests on a control connection and their answers (docs/PROTOCOL.md).
  kList = 8,          // a -> s: string volume ("" = all the client may see)
  kSnapshot = 9,      // s -> a: string sealed manifest text
  kDone = 10,         // s -> a: string JSON summary; ends an answer
  kVerify = 11,       // a -> s: string volume, string snapshot, u8 read_data
  kProblem = 12,      // s -> a: string object, string message, string snapshots
  kRestore = 13,      // a -> s: string volume, string snapshot
  kRestorePage = 14,  // s -> a: u64 page, u32 count, count x (u8 kind, sha256[32])
  kRestoreData = 15,  // s -> a: u64 first_block, u32 nblocks, block bytes
  kBackupBegin = 16,  // a -> s: see PROTOCOL.md
  kBackupReady = 17,  // s -> a: token, snapshot id, block size, parent manifest, volume secret
  kParentReq = 18,    // a -> s: u64 first_page, u32 pages
  kParentPage = 19,   // s -> a: u64 page, u32 count, count x (id[16], sha256[32], u8 zero)
  kStripeJoin = 20,   // a -> s (data connection): string token, u32 stripe
  kStripeReady = 21,  // s -> a: u64 next page of the stripe to send
  kBlocks = 22,       // a -> s: u64 first_block, u32 n, n x (id[16], sha256[32]), bytes
  kPage = 23,         // a -> s: u64 page, u32 count, count x (u8 kind, id[16])
  kAck = 24,          // s -> a: u64 page (its blocks are written)
  kCommit = 25,       // a -> s: every stripe is acknowledged; commit the snapshot
  kCommitted = 26,    // s -> a: string sealed manifest text of the new snapshot
  kAdmin = 27,        // a -> s: string operation, string JSON arguments (admins only)
  // Consistency groups (engine/control/group.h, docs/PROTOCOL.md "Groups").
  kGroupJoin = 28,    // a -> s: u32 n, n x string volume: this connection answers for them
  kGroupMsg = 29,     // either way: one group protocol message (payloads.h ParseGroupMsg)
  kMaxType = 29,
};

// The 32 bytes before every payload, little-endian.
struct FrameHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t payload_len;
  uint32_t payload_crc32c;
  uint64_t request_id;   // correlates a response with its request; 0 = none
  uint32_t flags;        // 0, or kFlagSealed
  uint32_t header_crc32c;  // CRC-32C of bytes 0..27
};
static_assert(sizeof(FrameHeader) == 32);

// Builds a header for a payload in the clear (computes both CRCs).
FrameHeader MakeHeader(FrameType type, uint64_t request_id, std::span<const uint8_t> payload);
// The same for a payload the caller sends in pieces and whose CRC-32C it
// computed itself (Crc32c chains across pieces).
FrameHeader MakeHeaderWithCrc(FrameType type, uint64_t request_id, uint32_t payload_len,
                              uint32_t payload_crc32c);

// The header of a sealed frame whose payload is `sealed_len` bytes
// (ciphertext and tag); payload_crc32c is 0.
FrameHeader MakeSealedHeader(FrameType type, uint64_t request_id, uint32_t sealed_len);
inline bool IsSealed(const FrameHeader& h) { return (h.flags & kFlagSealed) != 0; }

// Checks magic, version, type, header CRC, flags and the payload bound.
// kCorruption (or kVersion for another protocol version) with the reason.
Status CheckHeader(const FrameHeader& header);
// Checks a payload in the clear against the header's CRC.
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
