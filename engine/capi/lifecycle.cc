// The C API of a repository's life cycle: forget and protect
// (engine/core/forget.h).
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "dp420/dp420.h"
#include "engine/capi/internal.h"
#include "engine/core/forget.h"
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
