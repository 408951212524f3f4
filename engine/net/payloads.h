// The payloads of the protocol's frames (docs/PROTOCOL.md), decoded by pure
// functions over the bytes a peer sent: what the server and the agent parse
// before anything else looks at it. Each returns the decoding's Status
// (kCorruption naming the frame for a short or overlong payload, or the
// refusal of a field); the caller decides how to answer it. Kept apart from
// the sessions so that each can be fuzzed on its own (tests/fuzz/).
//
// Thread safety: pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/control/group.h"
#include "engine/core/manifest.h"  // Json
#include "engine/core/verify.h"    // VerifyProblem
#include "engine/net/channel.h"    // kEphemeralBytes
#include "engine/net/frame.h"
#include "io/status.h"
#include "simd/simd.h"

namespace dp420::net {

using Payload = std::span<const uint8_t>;

inline constexpr size_t kClientNameMax = 64;       // HELLO's client name
inline constexpr size_t kRequestStringMax = 256;   // volume names and snapshot ids of requests
inline constexpr size_t kMaxTokenBytes = 64;       // a backup session's token

// HELLO: u16 version, string client, ephemeral key. `read_ok` is false when
// the payload ended before the fields (the version then means nothing).
struct HelloMsg {
  uint16_t version = 0;
  std::string client;
  std::array<uint8_t, kEphemeralBytes> ephemeral{};
  bool read_ok = false;
};
Status ParseHello(Payload p, HelloMsg* out);
// AUTH: the client's proof.
Status ParseAuth(Payload p, uint8_t proof[32]);
// AUTH_OK: the server's proof, its clock, the repository id.
struct AuthOkMsg {
  uint8_t proof[32] = {};
  uint64_t server_time_ns = 0;
  uint8_t repo_id[16] = {};
};
Status ParseAuthOk(Payload p, AuthOkMsg* out);
// PING: the sender's clock; PONG: the echoed clock and the responder's.
Status ParsePing(Payload p, uint64_t* t0);
Status ParsePong(Payload p, uint64_t* echo, uint64_t* t1);
// ERROR: u16 code, string message (at most 4096 bytes).
inline constexpr size_t kErrorMessageMax = 4096;
Status ParseError(Payload p, uint16_t* code, std::string* message);
// A frame that is one u64 (STRIPE_READY, ACK), named `what`.
Status ParseU64(Payload p, const char* what, uint64_t* v);
// A frame that is one string of at most `max_len` bytes (DONE, SNAPSHOT,
// COMMITTED), named `what`.
Status ParseText(Payload p, size_t max_len, const char* what, std::string* text);

// Requests the server parses on a control connection.
Status ParseList(Payload p, std::string* volume);
struct VerifyRequestMsg {
  std::string volume;
  std::string snapshot;
  bool read_data = false;
};
Status ParseVerifyRequest(Payload p, VerifyRequestMsg* out);
Status ParseRestoreRequest(Payload p, std::string* volume, std::string* snapshot);
Status ParseParentReq(Payload p, uint64_t* first, uint32_t* count);
// ADMIN: an operation of the repository's life cycle and its arguments, a
// JSON object of bounded size and depth. Its implicit members move a Json, as
// BeginRequest's do; they do not throw.
// NOLINTNEXTLINE(bugprone-exception-escape)
struct AdminRequestMsg {
  std::string op;
  Json args;
};
inline constexpr size_t kAdminOpMax = 32;
inline constexpr size_t kAdminArgsMax = 64 * 1024;
Status ParseAdminRequest(Payload p, AdminRequestMsg* out);
// COMMIT: the agent's send counters, for the log, and (optional) how the
// source was read as known after the read: a point-in-time record (pit.h
// PitRecord::ToJson), a JSON object of at most 4 KiB.
inline constexpr size_t kPointInTimeMax = 4096;
// Its implicit members move a Json; they do not throw.
// NOLINTNEXTLINE(bugprone-exception-escape)
struct CommitCounters {
  uint64_t sent = 0, zerocopy = 0, copied = 0, resent = 0;
  Json point_in_time;  // null when not sent
};
Status ParseCommit(Payload p, CommitCounters* out);
// STRIPE_JOIN: the session token (checked as text) and the stripe number.
Status ParseStripeJoin(Payload p, std::string* token, uint32_t* stripe);

// BACKUP_BEGIN, every field checked (CheckBeginFields) and the topology parsed.
// Its implicit members move an ordered_json, whose map's move is not declared
// noexcept; it does not throw.
// NOLINTNEXTLINE(bugprone-exception-escape)
struct BeginRequest {
  std::string volume;
  uint32_t block_size = 0;
  uint64_t volume_size = 0;
  uint32_t stripes = 0;
  std::string source_path;
  std::string source_kind;
  std::string topology_text;
  Json topology;
  std::string tool_version;
  std::string resume_token;
  // A member of a consistency group: staged under (group, epoch), published
  // by the group's commit (engine/core/group_repo.h). Optional trailing
  // fields: absent for a backup of its own.
  std::string group;
  uint64_t group_epoch = 0;
};
Result<BeginRequest> ParseBegin(Payload p);

// GROUP_MSG: one message of the group protocol (engine/control/group.h):
// u8 kind, string group, u64 epoch, string member, u64 probe, u64 wall_ns
// (two's complement), string detail (at most 4096 bytes). Kinds, group and
// member names are checked (the member "CLIENT:VOLUME").
inline constexpr size_t kGroupDetailMax = 4096;
void WriteGroupMsg(const control::GroupMsg& m, PayloadWriter* w);
Status ParseGroupMsg(Payload p, control::GroupMsg* out);
// GROUP_JOIN: u32 n (1..64), n x string volume (valid volume names, no repeats).
inline constexpr uint32_t kGroupJoinMax = 64;
Status ParseGroupJoin(Payload p, std::vector<std::string>* volumes);

// PAGE (u8 verdict, id[16] per block) and RESTORE_PAGE (u8 kind,
// sha256[32] per block): u64 page, u32 count, then `count` entries of a byte
// and `tail` bytes (at most 32). The entries are read only when count is at
// most kPageEntries; the caller checks page and count first, then the
// entries it got, then `finish`.
inline constexpr uint32_t kPageMsgEntries = 256;  // kPageEntries (format.h)
struct PageMsg {
  uint64_t page = 0;
  uint32_t count = 0;
  bool head_ok = false;  // page and count were in the payload
  uint32_t entries = 0;  // complete entries read
  std::array<uint8_t, kPageMsgEntries> kind{};
  std::array<std::array<uint8_t, 32>, kPageMsgEntries> bytes{};
  Status finish;  // every byte consumed, nothing short
};
void ParsePage(Payload p, size_t tail, const char* what, PageMsg* out);

// What the agent parses.
// BACKUP_READY: token, snapshot id, block size, the parent's sealed manifest
// text, the volume's block-id secret (cleansed with the message), server time.
struct BackupReadyMsg {
  std::string token;
  std::string snapshot_id;
  uint32_t block_size = 0;
  std::string parent_text;
  uint8_t key[simd::kHashSecretBytes] = {};
  BackupReadyMsg() = default;
  BackupReadyMsg(const BackupReadyMsg&) = delete;
  BackupReadyMsg& operator=(const BackupReadyMsg&) = delete;
  ~BackupReadyMsg();
};
Status ParseBackupReady(Payload p, BackupReadyMsg* out);
// PROBLEM: object, message, comma-separated snapshot ids.
Status ParseProblem(Payload p, VerifyProblem* out);
// PARENT_PAGE's head, checked against the `pages` of the parent's table and
// the payload's length: u64 page, u32 count, then count 49-byte records
// from byte 12.
Status ParseParentPage(Payload p, uint64_t pages, uint64_t* page, uint32_t* count);

}  // namespace dp420::net
