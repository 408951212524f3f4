// Implementation of the C API (engine/include/dp420/dp420.h) over the C++
// engine. Every entry point catches everything: no exception crosses it.
#include "dp420/dp420.h"
#include "io/inject.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/control/pit.h"
#include "engine/control/topology.h"
#include "engine/core/backup.h"
#include "engine/core/bench.h"
#include "engine/core/prune.h"
#include "engine/core/repo.h"
#include "engine/core/repair.h"
#include "engine/core/restore.h"
#include "engine/core/snapshot.h"
#include "engine/core/stored_check.h"
#include "engine/core/upgrade.h"
#include "engine/core/verify.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/server.h"
#include "engine/net/volumes.h"
#include "engine/capi/internal.h"

// The bounds dp420.h promises are the ones the engine enforces.
static_assert(DP420_MAX_THREADS == dp420::kMaxThreads);
static_assert(DP420_MAX_REMOTE_THREADS == dp420::net::kMaxStripes);
static_assert(DP420_BUFFER_BUDGET == dp420::kBufferBudgetBytes);
static_assert(DP420_MIN_BLOCK_SIZE == dp420::kMinBlockSize);
static_assert(DP420_MAX_BLOCK_SIZE == dp420::kMaxBlockSize);
static_assert(DP420_MAX_READ_THROUGH == dp420::kReadThroughBytesMax);
static_assert(DP420_MIN_HEARTBEAT_MS == dp420::kMinHeartbeatMs);
static_assert(DP420_MAX_HEARTBEAT_MS == dp420::kMaxHeartbeatMs);
static_assert(DP420_MAX_CLOCK_SKEW_MS == dp420::kMaxClockSkewMs);
static_assert(DP420_MAX_RETRY_MS == dp420::kMaxRetryMs);

namespace dp420capi {

using dp420::Code;
using dp420::Status;

int ErrorCode(Code code) {
  switch (code) {
    case Code::kOk: return DP420_OK;
    case Code::kInvalidArgument: return DP420_EINVAL;
    case Code::kNotFound: return DP420_ENOENT;
    case Code::kIOError: return DP420_EIO;
    case Code::kCorruption: return DP420_ECORRUPT;
    case Code::kNoSpace: return DP420_ENOSPC;
    case Code::kVersion: return DP420_EVERSION;
    case Code::kExists: return DP420_EEXIST;
    case Code::kBusy: return DP420_EBUSY;
    case Code::kNoMemory: return DP420_ENOMEM;
    case Code::kPermission: return DP420_EPERM;
    case Code::kCanceled: return DP420_ECANCELED;
    case Code::kInternal: return DP420_EINTERNAL;
    case Code::kNetwork: return DP420_ENET;
    case Code::kClockSkew: return DP420_ESKEW;
    case Code::kBadKey: return DP420_EKEY;
  }
  return DP420_EINTERNAL;
}

int Fail(dp420_ctx_t* ctx, const Status& s) {
  if (ctx) ctx->errmsg = s.message();
  return -ErrorCode(s.code());
}

int Ok(dp420_ctx_t* ctx) {
  if (ctx) ctx->errmsg.clear();
  return 0;
}

dp420::JobControl Control(dp420_ctx_t* ctx) {
  ctx->cancel.store(false);
  dp420::JobControl control;
  control.cancel = &ctx->cancel;
  if (ctx->progress) {
    control.progress = [ctx](const dp420::Progress& p) {
      dp420_progress_t cp{p.phase, p.bytes_done, p.bytes_total};
      ctx->progress(ctx->progress_user, &cp);
    };
  }
  return control;
}

void CopyId(char* dst, size_t cap, const std::string& src) {
  std::strncpy(dst, src.c_str(), cap - 1);
  dst[cap - 1] = '\0';
}

bool Missing(const char* s) { return s == nullptr || *s == '\0'; }

// A remote client's volume named "CLIENT/VOLUME" in a local repository is
// the repository volume engine/net/volumes.h maps it to.
std::string LocalVolumeName(const std::string& volume) {
  size_t slash = volume.find('/');
  if (slash == std::string::npos || !dp420::net::ValidRequestVolumeName(volume)) return volume;
  return dp420::net::NamespacedVolume(volume.substr(0, slash), volume.substr(slash + 1));
}

char* CopyOut(const std::string& text) {
  auto* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out) std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

}  // namespace dp420capi

using namespace dp420capi;  // NOLINT(google-build-using-namespace): this library's own helpers

struct dp420_snapshot_list {
  std::vector<dp420::Manifest> manifests;
  std::vector<std::string> json;
};

namespace {

using dp420::Code;
using dp420::Status;

// dp420_backup_opts_t before its time; dp420_backup_result_t up to
// registered_buffers (what callers built before the network counters were
// appended pass this struct_size). Later fields: DP420_COVERS.
constexpr size_t kBackupOptsV1Size = offsetof(dp420_backup_opts_t, time);
constexpr size_t kBackupOptsV2Size = offsetof(dp420_backup_opts_t, compression);
static_assert(kBackupOptsV1Size == 32);
constexpr size_t kBackupResultV1Size = offsetof(dp420_backup_result_t, bytes_sent);
static_assert(kBackupResultV1Size == 208);
// Whether a caller's struct of `size` bytes holds `field` of T.
#define DP420_COVERS(size, T, field) \
  ((size) >= offsetof(T, field) + sizeof(static_cast<T*>(nullptr)->field))

Status ReadPointInTimeOpts(const dp420_backup_opts_t& opts, dp420::control::PitOptions* pit) {
  if (!DP420_COVERS(opts.struct_size, dp420_backup_opts_t, post_hook)) {
    pit->method = dp420::control::PitMethod::kNone;  // an older caller: the live source
    return Status::Ok();
  }
  if (!Missing(opts.snapshot_source)) {
    DP420_ASSIGN_OR_RETURN(pit->method, dp420::control::ParsePitMethod(opts.snapshot_source));
  }
  if (!Missing(opts.freeze_mount)) {
    pit->freeze_mount = dp420::control::AbsolutePath(opts.freeze_mount);
  }
  if (opts.max_freeze_ms) pit->max_freeze = std::chrono::milliseconds(opts.max_freeze_ms);
  if (opts.hook_timeout_ms) pit->hook_timeout = std::chrono::milliseconds(opts.hook_timeout_ms);
  if (!Missing(opts.pre_hook)) pit->pre_hook = opts.pre_hook;
  if (!Missing(opts.post_hook)) pit->post_hook = opts.post_hook;
  return Status::Ok();
}

Status ReadBackupOpts(const dp420_backup_opts_t& opts, bool remote, bool* auto_asked,
                      dp420::BackupOptions* o,
                      dp420::control::PitOptions* pit) {
  if (Missing(opts.volume)) return Status::InvalidArgument("no volume name given");
  if (Missing(opts.source)) return Status::InvalidArgument("no source given");
  o->volume = opts.volume;
  o->source_path = dp420::control::AbsolutePath(opts.source);
  o->block_size = opts.block_size;
  o->threads = opts.threads;
  // A remote repository refuses a time (RemoteRepository::Backup).
  // Compression: auto unless the caller's struct names another.
  dp420::CompressionOption compression{.automatic = true};
  if (DP420_COVERS(opts.struct_size, dp420_backup_opts_t, compression) &&
      !Missing(opts.compression)) {
    auto c = dp420::ParseCompressionOption(opts.compression);
    if (!c.ok()) return c.status().Prefix("--compression");
    compression = *c;
  }
  if (remote && compression.spec.codec != dp420::Codec::kNone) {
    return Status::InvalidArgument(
        "--compression: backups to a remote repository are not compressed yet; use auto or off");
  }
  // Remote: auto means off (records go over the network raw).
  o->compression = compression.spec;
  o->compression_auto = compression.automatic && !remote;
  *auto_asked = compression.automatic;
  if (opts.struct_size >= kBackupOptsV2Size && !Missing(opts.time)) {
    auto t = dp420::ParseRfc3339(opts.time);
    if (!t.ok()) return t.status().Prefix("backup time");
    o->time_unix_ns = *t;
  }
  if (DP420_COVERS(opts.struct_size, dp420_backup_opts_t, no_dedup)) o->dedup = opts.no_dedup == 0;
  return ReadPointInTimeOpts(opts, pit);
}

void FillBackupResult(const dp420::BackupResult& r, const dp420::control::PitRecord& pit,
                      dp420_backup_result_t* result) {
  if (!result || result->struct_size < kBackupResultV1Size) return;
  const size_t size = result->struct_size;
  const dp420::Manifest& m = r.manifest;
  CopyId(result->snapshot_id, sizeof(result->snapshot_id), m.snapshot_id);
  CopyId(result->parent, sizeof(result->parent), m.parent);
  CopyId(result->checksum_sha256, sizeof(result->checksum_sha256), m.checksum_sha256);
  result->sequence = m.sequence;
  result->volume_size = m.volume_size;
  result->block_size = m.block_size;
  result->bytes_read = r.bytes_read;
  result->blocks_total = m.blocks_total;
  result->blocks_changed = m.blocks_changed;
  result->blocks_zero = m.blocks_zero;
  result->blocks_stored = m.blocks_stored;
  result->bytes_written = r.bytes_written;
  result->seconds = r.seconds;
  result->threads = r.threads;
  result->direct_io = r.direct_io;
  result->registered_buffers = r.registered_buffers;
  if (DP420_COVERS(size, dp420_backup_result_t, reconnects)) {
    result->bytes_sent = r.bytes_sent;
    result->bytes_sent_zerocopy = r.bytes_sent_zerocopy;
    result->bytes_zerocopy_copied = r.bytes_zerocopy_copied;
    result->bytes_resent = r.bytes_resent;
    result->reconnects = r.reconnects;
  }
  if (DP420_COVERS(size, dp420_backup_result_t, blocks_healed)) {
    result->blocks_healed = r.blocks_healed;
  }
  if (DP420_COVERS(size, dp420_backup_result_t, blocks_compressed)) {
    result->blocks_compressed = r.blocks_compressed;
  }
  if (DP420_COVERS(size, dp420_backup_result_t, hold_ms)) {
    CopyId(result->consistency, sizeof(result->consistency), pit.consistency());
    CopyId(result->snapshot_source, sizeof(result->snapshot_source),
           dp420::control::PitMethodName(pit.method));
    result->source_changed = pit.point_in_time ? 0 : !pit.change_known ? -1 : pit.source_changed;
    result->hold_ms = pit.hold_ms;
  }
  if (DP420_COVERS(size, dp420_backup_result_t, blocks_deduplicated)) {
    result->blocks_deduplicated = r.blocks_deduplicated;
  }
}

// What compression the backup used, with auto what it measured, and what went
// wrong without failing it (the strings live in the context until its next call).
void FillCompressionResult(dp420_ctx_t* ctx, const dp420::BackupResult& r, bool auto_asked,
                           bool remote, dp420_backup_result_t* result) {
  if (!result || !DP420_COVERS(result->struct_size, dp420_backup_result_t,
                               compression_measured)) {
    return;
  }
  CopyId(result->compression, sizeof(result->compression),
         remote ? "off" : r.manifest.compression);
  result->compression_auto = auto_asked;
  ctx->compression_measured =
      !auto_asked ? ""
      : remote    ? dp420::Json{{"reason", "remote repository: records go over the network raw"}}
                        .dump()
                  : r.manifest.compression_measured.dump();
  result->compression_measured = ctx->compression_measured.c_str();
  if (DP420_COVERS(result->struct_size, dp420_backup_result_t, warning)) {
    ctx->backup_warning = r.dedup_warning;
    result->warning = ctx->backup_warning.c_str();
  }
}

// Hands verify's problems to the caller's callback and fills its result.
void ReportVerify(const dp420::VerifyReport& r, const dp420_verify_opts_t& opts,
                  dp420_verify_result_t* result) {
  if (opts.on_problem) {
    for (const auto& p : r.problems) {
      std::string snaps;
      for (const auto& id : p.snapshots) snaps += (snaps.empty() ? "" : ",") + id;
      opts.on_problem(opts.user, p.object.c_str(), p.message.c_str(), snaps.c_str());
    }
  }
  if (result && result->struct_size >= sizeof(dp420_verify_result_t)) {
    result->snapshots_checked = r.snapshots_checked;
    result->packs_checked = r.packs_checked;
    result->pages_checked = r.pages_checked;
    result->blocks_checked = r.blocks_checked;
    result->bytes_read = r.bytes_read;
    result->unreferenced_packs = r.unreferenced_packs;
    result->problems_found = r.problems.size();
    result->snapshots_broken = r.broken_snapshots.size();
  }
}

// dp420_restore_opts_t before read_through was appended.
constexpr size_t kRestoreOptsV1Size = offsetof(dp420_restore_opts_t, read_through);
// dp420_serve_opts_t before its limits were appended.
constexpr size_t kServeOptsV1Size = offsetof(dp420_serve_opts_t, max_pending);
// ... before retention_file was appended.
constexpr size_t kServeOptsV2Size = offsetof(dp420_serve_opts_t, retention_file);
// dp420_client_limits2_t as first published.
constexpr size_t kClientLimits2V1Size = sizeof(dp420_client_limits2_t);
static_assert(std::atomic<std::atomic<bool>*>::is_always_lock_free);


// The control a remote handle keeps for its whole life (RemoteOptions).
dp420::JobControl HandleControl(dp420_repo_t* handle) {
  dp420::JobControl control;
  control.cancel = &handle->cancel;
  control.progress = [handle](const dp420::Progress& p) {
    dp420_ctx_t* ctx = handle->active;
    if (!ctx || !ctx->progress) return;
    dp420_progress_t cp{p.phase, p.bytes_done, p.bytes_total};
    ctx->progress(ctx->progress_user, &cp);
  };
  return control;
}

dp420::net::Millis MillisOr(uint32_t ms, uint32_t fallback) {
  return dp420::net::Millis(ms == 0 ? fallback : ms);
}

// The key file named by the options, else $DP420_KEY_FILE, made absolute.
dp420::Result<std::string> KeyFilePath(const dp420_remote_opts_t* opts) {
  const char* path = opts->key_file;
  if (Missing(path)) path = std::getenv("DP420_KEY_FILE");
  if (Missing(path)) {
    return Status::InvalidArgument("no key file given (set key_file or DP420_KEY_FILE)");
  }
  return dp420::control::AbsolutePath(path);
}

// A network error whose message does not name the address gets it prefixed.
Status NameAddress(const Status& s, const std::string& address) {
  if (s.code() != Code::kNetwork || s.message().find(address) != std::string::npos) return s;
  return s.Prefix(address);
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// The clients file, or an empty registry when it does not exist yet.
dp420::Result<dp420::net::ClientRegistry> LoadOrNewRegistry(const std::string& path) {
  auto reg = dp420::net::ClientRegistry::Load(path);
  if (!reg.ok() && reg.status().code() == Code::kNotFound && !PathExists(path)) {
    return dp420::net::ClientRegistry();
  }
  return reg;
}

// Applies `in` to *out: DP420_LIMIT_UNCHANGED keeps a limit,
// DP420_LIMIT_DEFAULT clears it (with keep_on_default, keeps it too), a
// value >= 0 sets it.
Status ApplyLimits(const dp420_client_limits2_t& in, bool keep_on_default,
                   dp420::net::ClientLimits* out) {
  std::pair<int64_t, std::optional<uint64_t>*> fields[] = {
      {in.max_volumes, &out->max_volumes},   {in.max_bytes, &out->max_bytes},
      {in.max_backups, &out->max_backups},   {in.max_waiting, &out->max_waiting},
      {in.max_stripe_memory, &out->max_stripe_memory},
      {in.max_sessions, &out->max_sessions}};
  for (auto& [value, field] : fields) {
    if (value < DP420_LIMIT_DEFAULT) {
      return Status::InvalidArgument("a limit must be at least 0 (0: no limit)");
    }
    if (value == DP420_LIMIT_DEFAULT && !keep_on_default) field->reset();
    if (value >= 0) *field = static_cast<uint64_t>(value);
  }
  return Status::Ok();
}

// The limits of dp420_serve_opts_t (0: the default) into ServerOptions.
Status ApplyServeLimits(const dp420_serve_opts_t& in, dp420::net::ServerOptions* o) {
  if (in.max_pending) o->max_pending = in.max_pending;
  if (in.max_pending_per_source) o->max_pending_per_source = in.max_pending_per_source;
  if (in.handshake_timeout_ms) o->handshake_timeout = dp420::net::Millis(in.handshake_timeout_ms);
  if (in.max_sessions) o->max_sessions = in.max_sessions;
  if (o->max_pending_per_source > o->max_pending) {
    return Status::InvalidArgument("max_pending_per_source (" +
                                   std::to_string(o->max_pending_per_source) +
                                   ") is above max_pending (" + std::to_string(o->max_pending) +
                                   ")");
  }
  if (in.client_defaults == nullptr) return Status::Ok();
  if (in.client_defaults->struct_size < kClientLimits2V1Size) {
    return Status::InvalidArgument("client_defaults: bad struct_size");
  }
  return ApplyLimits(*in.client_defaults, /*keep_on_default=*/true, &o->client_defaults);
}

}  // namespace

extern "C" {

uint32_t dp420_version(void) { return DP420_VERSION; }

const char* dp420_version_string(void) { return "0.1.0"; }

const char* dp420_strerror(int code) {
  switch (code < 0 ? -code : code) {
    case DP420_OK: return "success";
    case DP420_EINVAL: return "invalid argument";
    case DP420_ENOENT: return "not found";
    case DP420_EIO: return "I/O error";
    case DP420_ECORRUPT: return "damaged data";
    case DP420_ENOSPC: return "no space left on device";
    case DP420_EVERSION: return "unsupported format version";
    case DP420_EEXIST: return "refused";
    case DP420_EBUSY: return "locked by another process";
    case DP420_ENOMEM: return "out of memory";
    case DP420_EPERM: return "permission denied";
    case DP420_ECANCELED: return "canceled";
    case DP420_EINTERNAL: return "internal error";
    case DP420_ENET: return "network error";
    case DP420_ESKEW: return "clock skew too large";
    case DP420_EKEY: return "wrong passphrase or key file";
  }
  return "unknown error";
}

dp420_ctx_t* dp420_ctx_new(void) {
  try {
    return new dp420_ctx();
  } catch (...) {
    return nullptr;
  }
}

void dp420_ctx_free(dp420_ctx_t* ctx) { delete ctx; }

const char* dp420_errmsg(const dp420_ctx_t* ctx) { return ctx ? ctx->errmsg.c_str() : ""; }

void dp420_set_progress(dp420_ctx_t* ctx, dp420_progress_fn fn, void* user) {
  if (!ctx) return;
  ctx->progress = fn;
  ctx->progress_user = user;
}

void dp420_cancel(dp420_ctx_t* ctx) {
  if (!ctx) return;
  ctx->cancel.store(true);
  // Lock-free atomics only: this runs in signal handlers.
  std::atomic<bool>* linked = ctx->linked_cancel.load();
  if (linked) linked->store(true);
}

int dp420_repo_init(dp420_ctx_t* ctx, const char* path) {
  return dp420_repo_init_with(ctx, path, nullptr);
}

void dp420_init_opts_init(dp420_init_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_repo_init_with(dp420_ctx_t* ctx, const char* path, const dp420_init_opts_t* opts) {
  return Guard(ctx, [&] {
    if (Missing(path)) return Fail(ctx, Status::InvalidArgument("repository path is empty"));
    if (opts && opts->struct_size < sizeof(dp420_init_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_repo_init_with: bad arguments"));
    }
    dp420::InitOptions o;
    const std::string encryption = opts && !Missing(opts->encryption) ? opts->encryption : "none";
    if (encryption != "none" && encryption != "aes-256-gcm") {
      return Fail(ctx, Status::InvalidArgument("--encryption is '" + encryption +
                                               "'; use aes-256-gcm or none"));
    }
    o.encrypted = encryption == "aes-256-gcm";
    o.key_source = ctx->key_source;
    // A secret for a repository made without encryption would be ignored, and
    // every later command given it refuses the repository (Repository::Open).
    if (!o.encrypted &&
        (!o.key_source.passphrase_file.empty() || !o.key_source.key_file.empty())) {
      return Fail(ctx, Status::InvalidArgument(
                           "a passphrase or key file was given for a repository without "
                           "encryption: add --encryption aes-256-gcm, or leave out "
                           "--passphrase-file and --repo-key-file (and DP420_PASSPHRASE_FILE, "
                           "DP420_REPO_KEY_FILE)"));
    }
    Status s = dp420::Repository::Init(dp420::control::AbsolutePath(path), o);
    return s.ok() ? Ok(ctx) : Fail(ctx, s);
  });
}

int dp420_repo_open(dp420_ctx_t* ctx, const char* path, dp420_repo_t** out) {
  return Guard(ctx, [&] {
    if (Missing(path) || !out) {
      return Fail(ctx, Status::InvalidArgument("repository path is empty"));
    }
    auto repo = dp420::Repository::Open(dp420::control::AbsolutePath(path), ctx->key_source);
    if (!repo.ok()) return Fail(ctx, repo.status());
    *out = new dp420_repo{std::move(repo).value()};
    return Ok(ctx);
  });
}

void dp420_repo_close(dp420_repo_t* repo) { delete repo; }

int dp420_repo_upgrade(dp420_ctx_t* ctx, const char* path, uint32_t* from_version,
                       uint64_t* manifests_resealed) {
  return Guard(ctx, [&] {
    if (Missing(path)) return Fail(ctx, Status::InvalidArgument("repository path is empty"));
    auto r = dp420::UpgradeRepository(dp420::control::AbsolutePath(path));
    if (!r.ok()) return Fail(ctx, r.status());
    if (from_version) *from_version = r->from_version;
    if (manifests_resealed) *manifests_resealed = r->manifests_resealed;
    return Ok(ctx);
  });
}

void dp420_remote_opts_init(dp420_remote_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

}  // extern "C"

namespace dp420capi {

dp420::Result<dp420::net::RemoteOptions> ReadRemoteOpts(const dp420_remote_opts_t& opts) {
  if (Missing(opts.address)) return Status::InvalidArgument("no address given");
  if (Missing(opts.client)) return Status::InvalidArgument("no client name given");
  DP420_ASSIGN_OR_RETURN(std::string key_file, KeyFilePath(&opts));
  // Refuse a missing or loosely protected key before touching the network.
  uint8_t key[dp420::net::kKeyBytes];
  uint8_t server_id[dp420::net::kFingerprintBytes];
  Status key_ok = dp420::net::ReadKeyFile(key_file, key, server_id);
  dp420::net::Cleanse(key, sizeof(key));
  DP420_RETURN_IF_ERROR(key_ok);
  dp420::net::RemoteOptions o;
  o.address = opts.address;
  o.client = opts.client;
  o.key_file = key_file;
  o.heartbeat_interval = MillisOr(opts.heartbeat_interval_ms, 5000);
  o.max_clock_skew = MillisOr(opts.max_clock_skew_ms, 500);
  o.retry_for = MillisOr(opts.retry_ms, 60000);
  if (!Missing(opts.cache_dir)) o.cache_dir = dp420::control::AbsolutePath(opts.cache_dir);
  return o;
}

}  // namespace dp420capi

extern "C" {

int dp420_repo_connect(dp420_ctx_t* ctx, const dp420_remote_opts_t* opts, dp420_repo_t** out) {
  return Guard(ctx, [&] {
    if (!opts || !out || opts->struct_size < sizeof(dp420_remote_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_repo_connect: bad arguments"));
    }
    auto read = ReadRemoteOpts(*opts);
    if (!read.ok()) return Fail(ctx, read.status());
    dp420::net::RemoteOptions o = std::move(read).value();
    auto handle = std::make_unique<dp420_repo>();
    o.control = HandleControl(handle.get());
    ctx->cancel.store(false);
    handle->active = ctx;
    ctx->linked_cancel.store(&handle->cancel);
    auto remote = dp420::net::RemoteRepository::Connect(o);
    ctx->linked_cancel.store(nullptr);
    handle->active = nullptr;
    if (!remote.ok()) return Fail(ctx, NameAddress(remote.status(), o.address));
    handle->remote = std::move(remote).value();
    *out = handle.release();
    return Ok(ctx);
  });
}

int64_t dp420_repo_clock_offset_ns(const dp420_repo_t* repo) {
  return repo && repo->remote ? repo->remote->clock().offset_ns : 0;
}

void dp420_backup_opts_init(dp420_backup_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_backup(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_backup_opts_t* opts,
                 dp420_backup_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !opts || opts->struct_size < kBackupOptsV1Size) {
      return Fail(ctx, Status::InvalidArgument("dp420_backup: bad arguments"));
    }
    dp420::BackupOptions o;
    dp420::control::PitOptions pit_options;
    bool auto_asked = false;
    if (Status s = ReadBackupOpts(*opts, repo->remote != nullptr, &auto_asked, &o, &pit_options);
        !s.ok()) {
      return Fail(ctx, s);
    }
    o.node_topology = dp420::control::LocalTopology(o.volume, o.source_path);
    o.tool_version = std::string("dp420 ") + dp420_version_string();
    o.control = Control(ctx);
    // Before any hook runs or anything is frozen: a volume name the backup refuses.
    if (!dp420::ValidVolumeName(o.volume)) {
      return Fail(ctx, Status::InvalidArgument("invalid volume name '" + o.volume +
                                               "' (1-64 characters of A-Z a-z 0-9 . _ -)"));
    }
    pit_options.cancel = o.control.cancel;
    if (!repo->remote) pit_options.repo_path = repo->repo->path();
    auto pit = dp420::control::PointInTime::Take(o.source_path, pit_options);
    if (!pit.ok()) return Fail(ctx, pit.status());
    o.read_path = (*pit)->read_path();
    // A remote backup's manifest is written by the server from the topology
    // sent at the start: what is known then (Provisional).
    if (repo->remote) {
      dp420::control::SetPointInTime(&o.node_topology, (*pit)->Provisional().ToJson());
    }
    dp420::control::PitRecord record;
    o.end_point_in_time = [&](dp420::Json* topology) -> Status {
      DP420_ASSIGN_OR_RETURN(record, (*pit)->Finish());
      dp420::control::SetPointInTime(topology, record.ToJson());
      return Status::Ok();
    };
    RemoteLink link(ctx, repo);
    auto r = repo->remote ? repo->remote->Backup(o) : dp420::RunBackup(*repo->repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    FillBackupResult(*r, record, result);
    FillCompressionResult(ctx, *r, auto_asked, repo->remote != nullptr, result);
    return Ok(ctx);
  });
}

}  // extern "C"

// Helpers of the functions below, with C++ linkage (they return C++ types).
namespace {

// A damaged manifest stays in the list, known by its file name: a stub whose
// node_topology carries the problem (SnapshotJson shows it as such).
void ListDamaged(const std::vector<dp420::DamagedFile>& damaged,
                 std::vector<dp420::Manifest>* out) {
  for (const auto& d : damaged) {
    dp420::Manifest stub;
    size_t slash = d.path.find_last_of('/');
    size_t first = d.path.find('/');
    stub.volume = d.path.substr(first + 1, slash - first - 1);
    if (!dp420::ParseManifestName(d.path.substr(slash + 1), &stub.sequence, &stub.snapshot_id)) {
      stub.snapshot_id = d.path.substr(slash + 1);
    }
    stub.format_version = 0;  // marks the stub
    stub.node_topology = dp420::Json{{"file", d.path}, {"problem", d.status.message()}};
    out->push_back(std::move(stub));
  }
}

std::string SnapshotJson(const dp420::Manifest& m) {
  dp420::Json j;
  if (m.format_version == 0) {
    j = {{"snapshot_id", m.snapshot_id}, {"volume", m.volume}, {"sequence", m.sequence},
         {"damaged", true}, {"file", m.node_topology["file"]},
         {"problem", m.node_topology["problem"]}};
  } else {
    j = m.ToJson();
    j["manifest_sha256"] = m.seal;
    if (m.is_protected) j["protected"] = true;
  }
  // A remote client's volume, by the name it is known by (engine/net/volumes.h).
  std::string qualified = dp420::net::QualifiedName(m.volume);
  if (qualified != m.volume) j["client_volume"] = qualified;
  return j.dump();
}

}  // namespace

extern "C" {

int dp420_snapshots(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume,
                    dp420_snapshot_list_t** out) {
  return Guard(ctx, [&] {
    if (!repo || !out) return Fail(ctx, Status::InvalidArgument("dp420_snapshots: bad arguments"));
    *out = nullptr;
    std::string vol = volume ? volume : "";
    if (!vol.empty() && !dp420::net::ValidRequestVolumeName(vol)) {
      return Fail(ctx, Status::InvalidArgument("invalid volume name '" + vol + "'"));
    }
    if (!repo->remote) vol = LocalVolumeName(vol);
    auto list = std::make_unique<dp420_snapshot_list>();
    std::vector<dp420::DamagedFile> damaged;
    ctx->cancel.store(false);
    RemoteLink link(ctx, repo);
    Status s = repo->remote ? repo->remote->ListManifests(vol, &list->manifests, &damaged)
                            : repo->repo->ListManifests(vol, &list->manifests, &damaged);
    if (!s.ok()) return Fail(ctx, s);
    ListDamaged(damaged, &list->manifests);
    std::stable_sort(list->manifests.begin(), list->manifests.end(),
                     [](const dp420::Manifest& a, const dp420::Manifest& b) {
                       return std::tie(a.volume, a.sequence) < std::tie(b.volume, b.sequence);
                     });
    for (const auto& m : list->manifests) list->json.push_back(SnapshotJson(m));
    *out = list.release();
    return Ok(ctx);
  });
}

size_t dp420_snapshot_count(const dp420_snapshot_list_t* list) {
  return list ? list->manifests.size() : 0;
}

const char* dp420_snapshot_id(const dp420_snapshot_list_t* list, size_t i) {
  return list && i < list->manifests.size() ? list->manifests[i].snapshot_id.c_str() : nullptr;
}

const char* dp420_snapshot_volume(const dp420_snapshot_list_t* list, size_t i) {
  return list && i < list->manifests.size() ? list->manifests[i].volume.c_str() : nullptr;
}

const char* dp420_snapshot_json(const dp420_snapshot_list_t* list, size_t i) {
  return list && i < list->json.size() ? list->json[i].c_str() : nullptr;
}

void dp420_snapshot_list_free(dp420_snapshot_list_t* list) { delete list; }

void dp420_restore_opts_init(dp420_restore_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_restore(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_restore_opts_t* opts,
                  dp420_restore_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !opts || opts->struct_size < kRestoreOptsV1Size) {
      return Fail(ctx, Status::InvalidArgument("dp420_restore: bad arguments"));
    }
    if (Missing(opts->volume)) return Fail(ctx, Status::InvalidArgument("no volume name given"));
    if (Missing(opts->target)) return Fail(ctx, Status::InvalidArgument("no target given"));
    dp420::RestoreOptions o;
    o.volume = repo->remote ? opts->volume : LocalVolumeName(opts->volume);
    o.snapshot = Missing(opts->snapshot) ? "latest" : opts->snapshot;
    o.target_path = dp420::control::AbsolutePath(opts->target);
    o.force = opts->force != 0;
    o.threads = opts->threads;
    // A local restore refuses more threads than its buffer budget allows; a
    // remote one reads through one connection, but takes no absurd count either.
    if (Status s = dp420::CheckRange("threads", o.threads, 0, dp420::kMaxThreads); !s.ok()) {
      return Fail(ctx, s);
    }
    if (opts->struct_size >= sizeof(dp420_restore_opts_t)) {
      o.read_through_bytes = opts->read_through;
    }
    o.control = Control(ctx);
    RemoteLink link(ctx, repo);
    auto r = repo->remote ? repo->remote->Restore(o) : dp420::RunRestore(*repo->repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    if (result && result->struct_size >= sizeof(dp420_restore_result_t)) {
      CopyId(result->snapshot_id, sizeof(result->snapshot_id), r->manifest.snapshot_id);
      CopyId(result->checksum_sha256, sizeof(result->checksum_sha256),
             r->manifest.checksum_sha256);
      result->volume_size = r->manifest.volume_size;
      result->bytes_written = r->bytes_written;
      result->blocks_restored = r->blocks_restored;
      result->blocks_zero = r->blocks_zero;
      result->seconds = r->seconds;
    }
    return Ok(ctx);
  });
}

void dp420_verify_opts_init(dp420_verify_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_verify(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_verify_opts_t* opts,
                 dp420_verify_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !opts || opts->struct_size < sizeof(dp420_verify_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_verify: bad arguments"));
    }
    dp420::VerifyOptions o;
    o.volume = opts->volume ? opts->volume : "";
    if (!repo->remote) o.volume = LocalVolumeName(o.volume);
    o.snapshot = opts->snapshot ? opts->snapshot : "";
    o.read_data = opts->read_data != 0;
    o.control = Control(ctx);
    RemoteLink link(ctx, repo);
    auto r = repo->remote ? repo->remote->Verify(o) : dp420::RunVerify(*repo->repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    ReportVerify(*r, *opts, result);
    return Ok(ctx);
  });
}

int dp420_verify_stored(dp420_ctx_t* ctx, const char* repo_path, const dp420_verify_opts_t* opts,
                        dp420_verify_result_t* result) {
  return Guard(ctx, [&] {
    if (Missing(repo_path) || !opts || opts->struct_size < sizeof(dp420_verify_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_verify_stored: bad arguments"));
    }
    if (!Missing(opts->volume) || !Missing(opts->snapshot)) {
      return Fail(ctx, Status::InvalidArgument(
                           "--stored-only checks every pack of the repository: it takes no "
                           "--volume or --snapshot (records are not tied to snapshots without "
                           "the key)"));
    }
    auto r = dp420::RunStoredCheck(dp420::control::AbsolutePath(repo_path), Control(ctx));
    if (!r.ok()) return Fail(ctx, r.status());
    ReportVerify(*r, *opts, result);
    return Ok(ctx);
  });
}

// ---- Repair ----

void dp420_repair_opts_init(dp420_repair_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

}  // extern "C"

// Helpers of the functions below, with C++ linkage (they return C++ types).
namespace {

dp420::Json RepairJson(const dp420::RepairReport& r) {
  dp420::Json quarantined = dp420::Json::array();
  for (const auto& q : r.quarantined) quarantined.push_back({{"file", q.file}, {"reason", q.reason}});
  dp420::Json newest = nullptr;
  if (!r.newest_id.empty()) {
    newest = {{"snapshot_id", r.newest_id}, {"sequence", r.newest_sequence}};
  }
  return {{"volume", dp420::net::QualifiedName(r.volume)}, {"problems", r.problems},
          {"newest", newest}, {"quarantined", quarantined},
          {"quarantine_dir", r.quarantine_dir}, {"head_rewritten", r.head_rewritten},
          {"dry_run", r.dry_run}};
}


}  // namespace

extern "C" {

int dp420_repair(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_repair_opts_t* opts,
                 char** report_json) {
  return Guard(ctx, [&] {
    if (!repo || !opts || !report_json || opts->struct_size < sizeof(dp420_repair_opts_t) ||
        Missing(opts->volume)) {
      return Fail(ctx, Status::InvalidArgument("dp420_repair: bad arguments (volume required)"));
    }
    *report_json = nullptr;
    if (repo->remote) {
      return Fail(ctx, Status::InvalidArgument(
                           "repair runs where the repository is: on the server, by its operator"));
    }
    dp420::RepairOptions o;
    o.volume = LocalVolumeName(opts->volume);
    o.dry_run = opts->dry_run != 0;
    o.read_data = opts->read_data != 0;
    o.control = Control(ctx);
    auto r = dp420::RunRepair(*repo->repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    *report_json = CopyOut(RepairJson(r.value()).dump());
    if (!*report_json) return Fail(ctx, Status::NoMemory("out of memory"));
    return Ok(ctx);
  });
}

// ---- Storage benchmark ----

void dp420_bench_opts_init(dp420_bench_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
  opts->seconds_per_point = dp420::kBenchDefaultSecondsPerPoint;
}

int dp420_bench(dp420_ctx_t* ctx, const dp420_bench_opts_t* opts, char** report_json) {
  return Guard(ctx, [&] {
    if (!opts || !report_json || opts->struct_size < sizeof(dp420_bench_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_bench: bad arguments"));
    }
    *report_json = nullptr;
    if (Missing(opts->source)) return Fail(ctx, Status::InvalidArgument("no source given"));
    dp420::BenchOptions o;
    o.source_path = dp420::control::AbsolutePath(opts->source);
    if (!Missing(opts->write_test)) {
      o.write_test_path = dp420::control::AbsolutePath(opts->write_test);
    }
    o.seconds_per_point = opts->seconds_per_point == 0 ? dp420::kBenchDefaultSecondsPerPoint
                                                       : opts->seconds_per_point;
    o.quick = opts->quick != 0;
    o.control = Control(ctx);
    auto r = dp420::RunBench(o);
    if (!r.ok()) return Fail(ctx, r.status());
    *report_json = CopyOut(r->dump());
    if (!*report_json) return Fail(ctx, Status::NoMemory("out of memory"));
    return Ok(ctx);
  });
}

void dp420_free(void* p) { std::free(p); }

// ---- Repository server ----

void dp420_serve_opts_init(dp420_serve_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_serve(dp420_ctx_t* ctx, const dp420_serve_opts_t* opts) {
  return Guard(ctx, [&] {
    if (!opts || opts->struct_size < kServeOptsV1Size) {
      return Fail(ctx, Status::InvalidArgument("dp420_serve: bad arguments"));
    }
    if (Missing(opts->repo)) return Fail(ctx, Status::InvalidArgument("no repository given"));
    if (Missing(opts->listen)) return Fail(ctx, Status::InvalidArgument("no listen address given"));
    if (Missing(opts->clients)) return Fail(ctx, Status::InvalidArgument("no clients file given"));
    dp420::net::ServerOptions o;
    o.tool_version = std::string("dp420 ") + dp420_version_string();
    o.repo_path = dp420::control::AbsolutePath(opts->repo);
    o.listen = opts->listen;
    o.clients_file = dp420::control::AbsolutePath(opts->clients);
    o.json_log = opts->json_log != 0;
    o.heartbeat_interval = MillisOr(opts->heartbeat_interval_ms, 5000);
    if (opts->struct_size >= kServeOptsV2Size) {
      Status s = ApplyServeLimits(*opts, &o);
      if (!s.ok()) return Fail(ctx, s);
    }
    if (opts->struct_size >= sizeof(dp420_serve_opts_t) && !Missing(opts->retention_file)) {
      o.retention_file = dp420::control::AbsolutePath(opts->retention_file);
    }
    o.stop = &ctx->cancel;
    if (opts->on_listening) {
      auto fn = opts->on_listening;
      void* user = opts->user;
      o.on_listening = [fn, user](uint16_t port) { fn(user, port); };
    }
    ctx->cancel.store(false);
    Status s = dp420::net::RunServer(o);
    // Stopping is how a server ends: a cancel is its success.
    if (!s.ok() && s.code() != Code::kCanceled) return Fail(ctx, s);
    return Ok(ctx);
  });
}

int dp420_client_add(dp420_ctx_t* ctx, const char* clients_file, const char* name,
                     const char* role, const char* key_out) {
  return Guard(ctx, [&] {
    if (Missing(clients_file)) return Fail(ctx, Status::InvalidArgument("no clients file given"));
    if (Missing(name)) return Fail(ctx, Status::InvalidArgument("no client name given"));
    if (Missing(key_out)) return Fail(ctx, Status::InvalidArgument("no key file given"));
    std::string path = dp420::control::AbsolutePath(clients_file);
    std::string key_path = dp420::control::AbsolutePath(key_out);
    auto lock = dp420::net::ClientsFileLock::Acquire(path);
    if (!lock.ok()) return Fail(ctx, lock.status());
    auto reg = LoadOrNewRegistry(path);
    if (!reg.ok()) return Fail(ctx, reg.status());
    // Every refusal comes before the first write: nothing is ever half done.
    if (reg->Find(name)) {
      return Fail(ctx, Status::Exists("client '" + std::string(name) +
                                      "' is already registered in " + path));
    }
    if (PathExists(key_path)) {
      return Fail(ctx, Status::Exists(key_path + " exists; a key file is never overwritten"));
    }
    auto key = reg->Add(name, Missing(role) ? "append" : role);
    if (!key.ok()) return Fail(ctx, key.status());
    Status s = reg->EnsureIdentity();
    if (!s.ok()) return Fail(ctx, s);
    s = dp420::net::WriteKeyFile(key_path, key->key.data(), reg->identity()->FingerprintHex());
    if (!s.ok()) return Fail(ctx, s);
    s = reg->Save(path);
    if (!s.ok()) {
      dp420::io::sys::Unlink(key_path.c_str());
      return Fail(ctx, s);
    }
    return Ok(ctx);
  });
}

int dp420_client_remove(dp420_ctx_t* ctx, const char* clients_file, const char* name) {
  return Guard(ctx, [&] {
    if (Missing(clients_file)) return Fail(ctx, Status::InvalidArgument("no clients file given"));
    if (Missing(name)) return Fail(ctx, Status::InvalidArgument("no client name given"));
    std::string path = dp420::control::AbsolutePath(clients_file);
    auto lock = dp420::net::ClientsFileLock::Acquire(path);
    if (!lock.ok()) return Fail(ctx, lock.status());
    auto reg = dp420::net::ClientRegistry::Load(path);
    if (!reg.ok()) return Fail(ctx, reg.status());
    Status s = reg->Remove(name);
    if (!s.ok()) return Fail(ctx, s.Prefix(path));
    s = reg->Save(path);
    return s.ok() ? Ok(ctx) : Fail(ctx, s);
  });
}

void dp420_client_limits_init(dp420_client_limits_t* limits) {
  if (!limits) return;
  limits->max_volumes = limits->max_bytes = limits->max_backups = limits->max_waiting =
      limits->max_stripe_memory = DP420_LIMIT_UNCHANGED;
}

void dp420_client_limits2_init(dp420_client_limits2_t* limits) {
  if (!limits) return;
  limits->struct_size = sizeof(*limits);
  limits->max_volumes = limits->max_bytes = limits->max_backups = limits->max_waiting =
      limits->max_stripe_memory = limits->max_sessions = DP420_LIMIT_UNCHANGED;
}

int dp420_client_set_limits(dp420_ctx_t* ctx, const char* clients_file, const char* name,
                            const dp420_client_limits_t* limits) {
  if (!limits) return dp420_client_set_limits2(ctx, clients_file, name, nullptr);
  dp420_client_limits2_t l;
  dp420_client_limits2_init(&l);
  l.max_volumes = limits->max_volumes;
  l.max_bytes = limits->max_bytes;
  l.max_backups = limits->max_backups;
  l.max_waiting = limits->max_waiting;
  l.max_stripe_memory = limits->max_stripe_memory;
  return dp420_client_set_limits2(ctx, clients_file, name, &l);
}

int dp420_client_set_limits2(dp420_ctx_t* ctx, const char* clients_file, const char* name,
                             const dp420_client_limits2_t* limits) {
  return Guard(ctx, [&] {
    if (Missing(clients_file)) return Fail(ctx, Status::InvalidArgument("no clients file given"));
    if (Missing(name)) return Fail(ctx, Status::InvalidArgument("no client name given"));
    if (!limits || limits->struct_size < kClientLimits2V1Size) {
      return Fail(ctx, Status::InvalidArgument("no limits given"));
    }
    std::string path = dp420::control::AbsolutePath(clients_file);
    auto lock = dp420::net::ClientsFileLock::Acquire(path);
    if (!lock.ok()) return Fail(ctx, lock.status());
    auto reg = dp420::net::ClientRegistry::Load(path);
    if (!reg.ok()) return Fail(ctx, reg.status());
    const dp420::net::ClientKey* key = reg->Find(name);
    if (!key) {
      return Fail(ctx, Status::NotFound("client '" + std::string(name) + "' is not registered in " +
                                        path));
    }
    dp420::net::ClientLimits l = key->limits;
    Status s = ApplyLimits(*limits, /*keep_on_default=*/false, &l);
    if (s.ok()) s = reg->SetLimits(name, l);
    if (s.ok()) s = reg->Save(path);
    return s.ok() ? Ok(ctx) : Fail(ctx, s);
  });
}

}  // extern "C"
