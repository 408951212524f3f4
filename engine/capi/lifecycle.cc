// The C API of a repository's life cycle: forget and protect
// (engine/core/forget.h), prune and stats (engine/core/prune.h).
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "dp420/dp420.h"
#include "engine/capi/internal.h"
#include "engine/core/forget.h"
#include "engine/core/prune.h"
#include "engine/net/volumes.h"

using namespace dp420capi;  // NOLINT(google-build-using-namespace): this library's own helpers

namespace {

constexpr uint32_t kDefaultLockWaitMs = 3600 * 1000;

dp420::Result<dp420::ForgetOptions> ForgetOptionsFrom(dp420_ctx_t* ctx, bool remote,
                                                      const dp420_forget_opts_t& in) {
  dp420::ForgetOptions o;
  if (!Missing(in.volume)) {
    if (!dp420::net::ValidRequestVolumeName(in.volume)) {
      return dp420::Status::InvalidArgument(std::string("invalid volume name '") + in.volume + "'");
    }
    o.volume = remote ? std::string(in.volume) : LocalVolumeName(in.volume);
  }
  o.policy.last = in.keep_last;
  o.policy.hourly = in.keep_hourly;
  o.policy.daily = in.keep_daily;
  o.policy.weekly = in.keep_weekly;
  o.policy.monthly = in.keep_monthly;
  o.policy.yearly = in.keep_yearly;
  if (!Missing(in.keep_within)) {
    DP420_ASSIGN_OR_RETURN(o.policy.within, dp420::ParseRetentionSpan(in.keep_within));
  }
  if (in.snapshot_count > 0 && !in.snapshots) {
    return dp420::Status::InvalidArgument("dp420_forget: snapshot_count without snapshots");
  }
  for (size_t i = 0; i < in.snapshot_count; ++i) {
    if (Missing(in.snapshots[i])) {
      return dp420::Status::InvalidArgument("dp420_forget: empty snapshot id");
    }
    o.snapshots.emplace_back(in.snapshots[i]);
  }
  o.dry_run = in.dry_run != 0;
  o.lock_wait = std::chrono::milliseconds(in.lock_wait_ms ? in.lock_wait_ms : kDefaultLockWaitMs);
  o.control = Control(ctx);
  return o;
}

void FillItem(const dp420::ForgetItem& in, dp420_forget_item_t* out) {
  std::memset(out, 0, sizeof(*out));
  CopyId(out->volume, sizeof(out->volume), dp420::net::QualifiedName(in.volume));
  CopyId(out->snapshot_id, sizeof(out->snapshot_id), in.snapshot_id);
  out->sequence = in.sequence;
  out->created_unix_ns = in.created_unix_ns;
  out->keep = in.keep ? 1 : 0;
  out->is_protected = in.is_protected ? 1 : 0;
  std::string reasons;
  for (const auto& r : in.reasons) reasons += (reasons.empty() ? "" : ",") + r;
  CopyId(out->reasons, sizeof(out->reasons), reasons);
}

// Fills `out` from `r`; false when out of memory.
bool FillForgetResult(const dp420::ForgetReport& r, dp420_forget_result_t* out) {
  out->forgotten = r.forgotten;
  out->kept = r.kept;
  out->links_written = r.links_written;
  out->leftovers_removed = r.leftovers_removed;
  if (!r.items.empty()) {
    out->items = static_cast<dp420_forget_item_t*>(
        std::calloc(r.items.size(), sizeof(dp420_forget_item_t)));
    if (!out->items) return false;
    for (size_t i = 0; i < r.items.size(); ++i) FillItem(r.items[i], &out->items[i]);
    out->item_count = r.items.size();
  }
  if (!r.errors.empty()) {
    std::string text;
    for (const auto& e : r.errors) {
      text += dp420::net::QualifiedName(e.volume) + ": " + e.status.message() + "\n";
    }
    out->errors = CopyOut(text);
    if (!out->errors) return false;
    out->error_count = r.errors.size();
  }
  return true;
}

// Forget here, or on the server of a remote handle (ADMIN "forget").
dp420::Result<dp420::ForgetReport> RunForget(dp420_ctx_t* ctx, dp420_repo_t* repo,
                                             const dp420::ForgetOptions& o) {
  if (!repo->remote) return dp420::RunForget(*repo->repo, o);
  DP420_RETURN_IF_ERROR(dp420::ValidateForget(o));
  RemoteLink link(ctx, repo);
  DP420_ASSIGN_OR_RETURN(dp420::Json j,
                         repo->remote->Admin("forget", dp420::ForgetRequestToJson(o), o.control));
  return dp420::ForgetReportFromJson(j);
}

}  // namespace

void dp420_forget_opts_init(dp420_forget_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_forget(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_forget_opts_t* opts,
                 dp420_forget_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !opts || !result || opts->struct_size < sizeof(dp420_forget_opts_t) ||
        result->struct_size < sizeof(dp420_forget_result_t)) {
      return Fail(ctx, dp420::Status::InvalidArgument("dp420_forget: bad arguments"));
    }
    size_t size = result->struct_size;
    std::memset(result, 0, sizeof(*result));
    result->struct_size = size;
    auto o = ForgetOptionsFrom(ctx, repo->remote != nullptr, *opts);
    if (!o.ok()) return Fail(ctx, o.status());
    auto r = RunForget(ctx, repo, o.value());
    if (!r.ok()) return Fail(ctx, r.status());
    if (!FillForgetResult(r.value(), result)) {
      dp420_forget_result_free(result);
      return Fail(ctx, dp420::Status::NoMemory("out of memory"));
    }
    if (!r->errors.empty()) {
      std::string all(result->errors);
      while (!all.empty() && all.back() == '\n') all.pop_back();
      return Fail(ctx, dp420::Status::Make(r->errors.front().status.code(), all));
    }
    return Ok(ctx);
  });
}

void dp420_forget_result_free(dp420_forget_result_t* result) {
  if (!result) return;
  std::free(result->items);
  std::free(result->errors);
  result->items = nullptr;
  result->errors = nullptr;
  result->item_count = 0;
  result->error_count = 0;
}

int dp420_protect(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume, const char* snapshot,
                  int protect, char id_out[17]) {
  return Guard(ctx, [&] {
    if (!repo || Missing(volume) || Missing(snapshot)) {
      return Fail(ctx, dp420::Status::InvalidArgument(
                           "dp420_protect: bad arguments (volume and snapshot required)"));
    }
    std::string full;
    if (repo->remote) {
      RemoteLink link(ctx, repo);
      dp420::Json args = {{"volume", volume}, {"snapshot", snapshot}};
      auto j = repo->remote->Admin(protect ? "protect" : "unprotect", args, Control(ctx));
      if (!j.ok()) return Fail(ctx, j.status());
      if (!j->contains("snapshot_id") || !(*j)["snapshot_id"].is_string()) {
        return Fail(ctx, dp420::Status::Network("the server's protect answer has no snapshot_id"));
      }
      full = (*j)["snapshot_id"].get<std::string>();
    } else {
      auto id = dp420::SetProtected(*repo->repo, LocalVolumeName(volume), snapshot, protect != 0,
                                    std::chrono::milliseconds(kDefaultLockWaitMs));
      if (!id.ok()) return Fail(ctx, id.status());
      full = id.value();
    }
    if (id_out) CopyId(id_out, 17, full);
    return Ok(ctx);
  });
}

void dp420_prune_opts_init(dp420_prune_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
  opts->max_unused_percent = dp420::kDefaultMaxUnused * 100;
}

namespace {

void FillPruneResult(const dp420::PruneReport& r, dp420_prune_result_t* out) {
  out->dry_run = r.dry_run ? 1 : 0;
  out->snapshots = r.snapshots;
  out->packs_before = r.packs_before;
  out->pack_bytes_before = r.pack_bytes_before;
  out->packs_in_progress = r.packs_in_progress;
  out->packs_deleted = r.packs_deleted;
  out->packs_rewritten = r.packs_rewritten;
  out->packs_created = r.packs_created;
  out->records_copied = r.records_copied;
  out->bytes_copied = r.bytes_copied;
  out->bytes_freed = r.bytes_freed;
  out->bytes_referenced = r.bytes_referenced;
  out->bytes_unused = r.bytes_unused;
  out->relocations_written = r.relocations_written;
  out->relocations_deleted = r.relocations_deleted;
}

dp420::Result<dp420::PruneReport> RunPrune(dp420_ctx_t* ctx, dp420_repo_t* repo,
                                           const dp420::PruneOptions& o) {
  if (!repo->remote) return dp420::RunPrune(*repo->repo, o);
  RemoteLink link(ctx, repo);
  dp420::Json args = {{"max_unused", o.max_unused}, {"dry_run", o.dry_run}};
  DP420_ASSIGN_OR_RETURN(dp420::Json j, repo->remote->Admin("prune", args, o.control));
  return dp420::PruneReportFromJson(j);
}

dp420::Result<dp420::StatsReport> RunStats(dp420_ctx_t* ctx, dp420_repo_t* repo,
                                           const dp420::StatsOptions& o) {
  if (!repo->remote) return dp420::ComputeStats(*repo->repo, o);
  RemoteLink link(ctx, repo);
  dp420::Json args = {{"volume", o.volume}};
  DP420_ASSIGN_OR_RETURN(dp420::Json j, repo->remote->Admin("stats", args, o.control));
  return dp420::StatsReportFromJson(j);
}

// Clears *result keeping its struct_size; false when it is too small.
template <typename T>
bool ResetResult(T* result) {
  if (!result || result->struct_size < sizeof(T)) return false;
  size_t size = result->struct_size;
  std::memset(result, 0, sizeof(T));
  result->struct_size = size;
  return true;
}

}  // namespace

int dp420_prune(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_prune_opts_t* opts,
                dp420_prune_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !opts || opts->struct_size < sizeof(dp420_prune_opts_t) || !ResetResult(result)) {
      return Fail(ctx, dp420::Status::InvalidArgument("dp420_prune: bad arguments"));
    }
    if (!(opts->max_unused_percent >= 0 && opts->max_unused_percent <= 100)) {
      return Fail(ctx, dp420::Status::InvalidArgument(
                           "--max-unused must be a percentage from 0 to 100"));
    }
    dp420::PruneOptions o;
    o.max_unused = opts->max_unused_percent / 100;
    o.dry_run = opts->dry_run != 0;
    o.control = Control(ctx);
    o.notice = [ctx](const std::string&) {
      if (!ctx->progress) return;
      dp420_progress_t p{"wait", 0, 0};
      ctx->progress(ctx->progress_user, &p);
    };
    auto r = RunPrune(ctx, repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    FillPruneResult(r.value(), result);
    if (!r->warnings.empty()) {
      std::string text;
      for (const auto& w : r->warnings) text += w + "\n";
      result->warnings = CopyOut(text);
      if (!result->warnings) return Fail(ctx, dp420::Status::NoMemory("out of memory"));
      result->warning_count = r->warnings.size();
    }
    return Ok(ctx);
  });
}

void dp420_prune_result_free(dp420_prune_result_t* result) {
  if (!result) return;
  std::free(result->warnings);
  result->warnings = nullptr;
  result->warning_count = 0;
}

int dp420_stats(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume,
                dp420_stats_result_t* result) {
  return Guard(ctx, [&] {
    if (!repo || !ResetResult(result)) {
      return Fail(ctx, dp420::Status::InvalidArgument("dp420_stats: bad arguments"));
    }
    dp420::StatsOptions o;
    if (!Missing(volume)) o.volume = repo->remote ? std::string(volume) : LocalVolumeName(volume);
    o.control = Control(ctx);
    auto r = RunStats(ctx, repo, o);
    if (!r.ok()) return Fail(ctx, r.status());
    result->packs = r->packs;
    result->pack_bytes = r->pack_bytes;
    result->bytes_referenced = r->bytes_referenced;
    result->bytes_reclaimable = r->bytes_reclaimable;
    if (!r->snapshots.empty()) {
      result->snapshots = static_cast<dp420_snapshot_space_t*>(
          std::calloc(r->snapshots.size(), sizeof(dp420_snapshot_space_t)));
      if (!result->snapshots) return Fail(ctx, dp420::Status::NoMemory("out of memory"));
      result->snapshot_count = r->snapshots.size();
      for (size_t i = 0; i < r->snapshots.size(); ++i) {
        const auto& in = r->snapshots[i];
        dp420_snapshot_space_t& out = result->snapshots[i];
        CopyId(out.volume, sizeof(out.volume), dp420::net::QualifiedName(in.volume));
        CopyId(out.snapshot_id, sizeof(out.snapshot_id), in.snapshot_id);
        CopyId(out.created, sizeof(out.created), in.created);
        out.sequence = in.sequence;
        out.bytes_referenced = in.bytes_referenced;
        out.bytes_unique = in.bytes_unique;
        out.bytes_shared = in.bytes_shared;
      }
    }
    return Ok(ctx);
  });
}

void dp420_stats_result_free(dp420_stats_result_t* result) {
  if (!result) return;
  std::free(result->snapshots);
  result->snapshots = nullptr;
  result->snapshot_count = 0;
}
