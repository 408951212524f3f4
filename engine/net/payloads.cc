#include "engine/net/payloads.h"

#include <openssl/crypto.h>

#include <set>

#include "engine/core/format.h"
#include "engine/core/group_repo.h"
#include "engine/core/text.h"
#include "engine/net/id_cache.h"

namespace dp420::net {

namespace {

// Bounds of BACKUP_BEGIN's strings (docs/PROTOCOL.md). Everything the agent
// sends ends up in the manifest, so it must be valid UTF-8 (or the commit's
// JSON dump fails) and small. A path is at most PATH_MAX (4096) bytes, which
// escaping (engine/core/text.h) makes at most 4 times longer; the topology
// holds the source path twice.
constexpr size_t kMaxSourcePathBytes = 4 * 4096;
constexpr size_t kMaxTopologyBytes = 64 * 1024;
constexpr size_t kMaxTopologyDepth = 16;
constexpr size_t kMaxToolVersionBytes = 64;

// Every string of BACKUP_BEGIN against its bound and UTF-8, the source kind
// against its set, the topology as a JSON object of bounded nesting (parsed
// into b->topology). Messages name the field, never quote a bad value.
Status CheckBeginFields(BeginRequest* b) {
  DP420_RETURN_IF_ERROR(CheckTextField("volume", b->volume, 64));
  if (!ValidVolumeName(b->volume)) {
    return Status::InvalidArgument("invalid volume name '" + b->volume + "'");
  }
  DP420_RETURN_IF_ERROR(CheckTextField("source_path", b->source_path, kMaxSourcePathBytes));
  if (b->source_kind != "file" && b->source_kind != "block-device") {
    return Status::InvalidArgument("source_kind must be \"file\" or \"block-device\"");
  }
  DP420_RETURN_IF_ERROR(CheckTextField("node_topology", b->topology_text, kMaxTopologyBytes));
  DP420_RETURN_IF_ERROR(CheckTextField("tool_version", b->tool_version, kMaxToolVersionBytes));
  DP420_RETURN_IF_ERROR(CheckTextField("resume_token", b->resume_token, kMaxTokenBytes));
  // Bounded before parsing: nlohmann::json dumps and destroys recursively.
  if (JsonNestingDepth(b->topology_text) > kMaxTopologyDepth) {
    return Status::InvalidArgument("node_topology nests deeper than " +
                                   std::to_string(kMaxTopologyDepth) + " levels");
  }
  b->topology = Json::parse(b->topology_text, nullptr, false);
  if (b->topology.is_discarded() || !b->topology.is_object()) {
    return Status::InvalidArgument("node_topology is not a JSON object");
  }
  return Status::Ok();
}

}  // namespace

Status ParseHello(Payload p, HelloMsg* out) {
  PayloadReader r(p);
  out->version = r.U16();
  out->client = r.String(kClientNameMax);
  r.Bytes(out->ephemeral.data(), out->ephemeral.size());
  out->read_ok = r.ok();
  return r.Finish("HELLO");
}

Status ParseAuth(Payload p, uint8_t proof[32]) {
  PayloadReader r(p);
  r.Bytes(proof, 32);
  return r.Finish("AUTH");
}

Status ParseAuthOk(Payload p, AuthOkMsg* out) {
  PayloadReader r(p);
  r.Bytes(out->proof, sizeof(out->proof));
  out->server_time_ns = r.U64();
  r.Bytes(out->repo_id, sizeof(out->repo_id));
  return r.Finish("AUTH_OK");
}

Status ParsePing(Payload p, uint64_t* t0) {
  PayloadReader r(p);
  *t0 = r.U64();
  return r.Finish("PING");
}

Status ParsePong(Payload p, uint64_t* echo, uint64_t* t1) {
  PayloadReader r(p);
  *echo = r.U64();
  *t1 = r.U64();
  return r.Finish("PONG");
}

Status ParseError(Payload p, uint16_t* code, std::string* message) {
  PayloadReader r(p);
  *code = r.U16();
  *message = r.String(kErrorMessageMax);
  return r.Finish("ERROR");
}

Status ParseU64(Payload p, const char* what, uint64_t* v) {
  PayloadReader r(p);
  *v = r.U64();
  return r.Finish(what);
}

Status ParseText(Payload p, size_t max_len, const char* what, std::string* text) {
  PayloadReader r(p);
  *text = r.String(max_len);
  return r.Finish(what);
}

Status ParseList(Payload p, std::string* volume) {
  PayloadReader r(p);
  *volume = r.String(kRequestStringMax);
  return r.Finish("LIST");
}

Status ParseVerifyRequest(Payload p, VerifyRequestMsg* out) {
  PayloadReader r(p);
  out->volume = r.String(kRequestStringMax);
  out->snapshot = r.String(kRequestStringMax);
  uint8_t read_data = r.U8();
  Status s = r.Finish("VERIFY");
  if (s.ok() && read_data > 1) s = Status::Corruption("read_data must be 0 or 1");
  out->read_data = read_data == 1;
  return s;
}

Status ParseRestoreRequest(Payload p, std::string* volume, std::string* snapshot) {
  PayloadReader r(p);
  *volume = r.String(kRequestStringMax);
  *snapshot = r.String(kRequestStringMax);
  return r.Finish("RESTORE");
}

Status ParseAdminRequest(Payload p, AdminRequestMsg* out) {
  PayloadReader r(p);
  out->op = r.String(kAdminOpMax);
  std::string args = r.String(kAdminArgsMax);
  DP420_RETURN_IF_ERROR(r.Finish("ADMIN"));
  if (JsonNestingDepth(args) > 8) return Status::Corruption("ADMIN arguments nest too deep");
  out->args = Json::parse(args, nullptr, /*allow_exceptions=*/false);
  if (out->args.is_discarded() || !out->args.is_object()) {
    return Status::Corruption("ADMIN arguments are not a JSON object");
  }
  return Status::Ok();
}

Status ParseParentReq(Payload p, uint64_t* first, uint32_t* count) {
  PayloadReader r(p);
  *first = r.U64();
  *count = r.U32();
  return r.Finish("PARENT_REQ");
}

Status ParseCommit(Payload p, CommitCounters* out) {
  PayloadReader r(p);
  out->sent = r.U64();
  out->zerocopy = r.U64();
  out->copied = r.U64();
  out->resent = r.U64();
  out->point_in_time = nullptr;
  std::string record;
  if (r.ok() && !r.done()) record = r.String(kPointInTimeMax);
  DP420_RETURN_IF_ERROR(r.Finish("COMMIT"));
  if (record.empty()) return Status::Ok();
  DP420_RETURN_IF_ERROR(CheckTextField("COMMIT point_in_time", record, kPointInTimeMax));
  if (JsonNestingDepth(record) > 4) return Status::Corruption("COMMIT point_in_time nests too deep");
  out->point_in_time = Json::parse(record, nullptr, /*allow_exceptions=*/false);
  if (out->point_in_time.is_discarded() || !out->point_in_time.is_object()) {
    return Status::Corruption("COMMIT point_in_time is not a JSON object");
  }
  return Status::Ok();
}

Status ParseStripeJoin(Payload p, std::string* token, uint32_t* stripe) {
  PayloadReader r(p);
  *token = r.String(64);
  *stripe = r.U32();
  Status parsed = r.Finish("STRIPE_JOIN");
  // The token is quoted in the server's refusals: it must be text.
  if (parsed.ok()) parsed = CheckTextField("STRIPE_JOIN token", *token, kMaxTokenBytes);
  return parsed;
}

Result<BeginRequest> ParseBegin(Payload p) {
  PayloadReader r(p);
  BeginRequest b;
  // Strings are read up to the frame's bound and checked by CheckBeginFields,
  // whose refusals name the field.
  b.volume = r.String(kMaxPayloadBytes);
  b.block_size = r.U32();
  b.volume_size = r.U64();
  b.stripes = r.U32();
  b.source_path = r.String(kMaxPayloadBytes);
  b.source_kind = r.String(kMaxPayloadBytes);
  b.topology_text = r.String(kMaxPayloadBytes);
  b.tool_version = r.String(kMaxPayloadBytes);
  b.resume_token = r.String(kMaxPayloadBytes);
  if (r.ok() && !r.done()) {
    b.group = r.String(kRequestStringMax);
    b.group_epoch = r.U64();
  }
  DP420_RETURN_IF_ERROR(r.Finish("BACKUP_BEGIN"));
  if (!b.group.empty() && (!ValidGroupName(b.group) || b.group_epoch == 0)) {
    return Status::InvalidArgument("BACKUP_BEGIN refused: invalid group '" +
                                   EscapeBytes(b.group) + "' or epoch 0");
  }
  DP420_RETURN_IF_ERROR(CheckBeginFields(&b).Prefix("BACKUP_BEGIN refused"));
  if (b.stripes == 0 || b.stripes > kMaxStripes) {
    return Status::InvalidArgument("BACKUP_BEGIN: " + std::to_string(b.stripes) +
                                   " stripes (1.." + std::to_string(kMaxStripes) + ")");
  }
  return b;
}

void WriteGroupMsg(const control::GroupMsg& m, PayloadWriter* w) {
  w->U8(static_cast<uint8_t>(m.kind));
  w->String(m.group);
  w->U64(m.epoch);
  w->String(m.member);
  w->U64(m.probe);
  w->U64(static_cast<uint64_t>(m.wall_ns));
  w->String(m.detail);
}

Status ParseGroupMsg(Payload p, control::GroupMsg* out) {
  PayloadReader r(p);
  uint8_t kind = r.U8();
  out->group = r.String(kRequestStringMax);
  out->epoch = r.U64();
  out->member = r.String(kRequestStringMax);
  out->probe = r.U64();
  out->wall_ns = static_cast<int64_t>(r.U64());
  out->detail = r.String(kGroupDetailMax);
  DP420_RETURN_IF_ERROR(r.Finish("GROUP_MSG"));
  if (kind < uint8_t(control::GroupMsgKind::kPrepare) ||
      kind > uint8_t(control::GroupMsgKind::kCommitted)) {
    return Status::Corruption("GROUP_MSG: unknown kind " + std::to_string(kind));
  }
  out->kind = static_cast<control::GroupMsgKind>(kind);
  if (!ValidGroupName(out->group)) {
    return Status::Corruption("GROUP_MSG: invalid group name '" + EscapeBytes(out->group) + "'");
  }
  size_t colon = out->member.find(':');
  if (colon == std::string::npos || colon == 0 || !ValidVolumeName(out->member.substr(colon + 1))) {
    return Status::Corruption("GROUP_MSG: member '" + EscapeBytes(out->member) +
                              "' is not CLIENT:VOLUME");
  }
  return CheckTextField("GROUP_MSG detail", out->detail, kGroupDetailMax);
}

Status ParseGroupJoin(Payload p, std::vector<std::string>* volumes) {
  PayloadReader r(p);
  uint32_t n = r.U32();
  if (r.ok() && (n == 0 || n > kGroupJoinMax)) {
    return Status::Corruption("GROUP_JOIN: " + std::to_string(n) + " volumes (1.." +
                              std::to_string(kGroupJoinMax) + ")");
  }
  volumes->clear();
  for (uint32_t i = 0; i < n && r.ok(); ++i) volumes->push_back(r.String(kRequestStringMax));
  DP420_RETURN_IF_ERROR(r.Finish("GROUP_JOIN"));
  std::set<std::string> seen;
  for (const auto& v : *volumes) {
    if (!ValidVolumeName(v)) {
      return Status::Corruption("GROUP_JOIN: invalid volume name '" + EscapeBytes(v) + "'");
    }
    if (!seen.insert(v).second) return Status::Corruption("GROUP_JOIN: volume '" + v + "' twice");
  }
  return Status::Ok();
}

void ParsePage(Payload p, size_t tail, const char* what, PageMsg* out) {
  static_assert(kPageMsgEntries == kPageEntries);
  PayloadReader r(p);
  out->page = r.U64();
  out->count = r.U32();
  out->head_ok = r.ok();
  out->entries = 0;
  if (out->head_ok && out->count <= kPageMsgEntries && tail <= 32) {
    for (uint32_t i = 0; i < out->count; ++i) {
      out->kind[i] = r.U8();
      r.Bytes(out->bytes[i].data(), tail);
      if (!r.ok()) break;
      out->entries = i + 1;
    }
  }
  out->finish = r.Finish(what);
}

BackupReadyMsg::~BackupReadyMsg() { OPENSSL_cleanse(key, sizeof(key)); }

Status ParseBackupReady(Payload p, BackupReadyMsg* out) {
  PayloadReader r(p);
  out->token = r.String(64);
  out->snapshot_id = r.String(64);
  out->block_size = r.U32();
  out->parent_text = r.String(1 << 20);
  r.Bytes(out->key, sizeof(out->key));
  r.U64();  // server time
  return r.Finish("BACKUP_READY");
}

Status ParseProblem(Payload p, VerifyProblem* out) {
  PayloadReader r(p);
  out->object = r.String(kMaxPayloadBytes);
  out->message = r.String(kMaxPayloadBytes);
  std::string snapshots = r.String(kMaxPayloadBytes);
  DP420_RETURN_IF_ERROR(r.Finish("PROBLEM"));
  for (size_t pos = 0; pos < snapshots.size();) {
    size_t comma = snapshots.find(',', pos);
    if (comma == std::string::npos) comma = snapshots.size();
    if (comma > pos) out->snapshots.push_back(snapshots.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return Status::Ok();
}

Status ParseParentPage(Payload p, uint64_t pages, uint64_t* page, uint32_t* count) {
  PayloadReader r(p);
  *page = r.U64();
  *count = r.U32();
  if (*count > kPageEntries || *page >= pages || p.size() != 12 + *count * kCacheRecord) {
    return Status::Network("malformed PARENT_PAGE from the server");
  }
  return Status::Ok();
}

}  // namespace dp420::net
