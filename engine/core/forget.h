// Forget and protect: removing snapshots from a volume's history without
// breaking the snapshot hash chain (links.h), and keeping chosen ones.
//
// Forget, per volume, under the volume's lock:
//   1. reads the history; refuses one that cannot be trusted (rolled back,
//      forked, damaged files: `dp420 repair` first) rather than guess;
//   2. decides: a retention policy (retention.h; protected snapshots and the
//      newest are always kept) or named snapshots (the newest and protected
//      ones are refused);
//   3. writes a link for every kept snapshot whose parent goes (the commit
//      point: from then on the forgotten range is gone from the history);
//   4. deletes the forgotten manifests, their links and what an earlier
//      killed forget left, then raises the head one generation, so a
//      snapshots/ folder put back from before the forget is seen as rolled
//      back.
// Forget deletes no data: `dp420 prune` reclaims what no snapshot uses.
//
// Thread safety: functions take the volume's lock; a running backup of the
// volume holds it for its whole run, and forget waits for it (lock_wait).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/job.h"
#include "engine/core/manifest.h"  // Json
#include "engine/core/repo.h"
#include "engine/core/retention.h"

namespace dp420 {

struct ForgetOptions {
  std::string volume;                  // "" = every volume (policy only)
  RetentionPolicy policy;              // used when `snapshots` is empty
  std::vector<std::string> snapshots;  // ids or unique prefixes (needs volume)
  bool dry_run = false;
  // How long to wait for the volume's lock (a backup of it running).
  std::chrono::milliseconds lock_wait{std::chrono::hours(1)};
  JobControl control;
};

struct ForgetItem {
  std::string volume;
  std::string snapshot_id;
  uint64_t sequence = 0;
  uint64_t created_unix_ns = 0;
  std::string created;
  bool keep = true;
  bool is_protected = false;
  std::vector<std::string> reasons;  // why kept ("newest", "protected", a rule, "named" ...)
};

struct ForgetVolumeError {
  std::string volume;
  Status status;
};

struct ForgetReport {
  std::vector<ForgetItem> items;  // every snapshot considered, by volume, newest first
  uint64_t forgotten = 0;
  uint64_t kept = 0;
  uint64_t links_written = 0;
  uint64_t leftovers_removed = 0;  // files an earlier killed forget left
  bool dry_run = false;
  // Volumes that were not changed, and why (the others were done).
  std::vector<ForgetVolumeError> errors;
};

// kInvalidArgument when neither a rule nor a snapshot is given (a policy that
// would forget everything), a rule is out of range, or snapshots are named
// without a volume.
Status ValidateForget(const ForgetOptions& options);
// ValidateForget, then each volume. Per-volume failures land in `errors`
// (a volume named alone fails the call instead).
Result<ForgetReport> RunForget(const Repository& repo, const ForgetOptions& options);

// The request and the report as JSON, for `dp420 serve` (docs/PROTOCOL.md,
// "ADMIN"). `show` names a repository volume as the client knows it.
Json ForgetRequestToJson(const ForgetOptions& o);
Result<ForgetOptions> ForgetRequestFromJson(const Json& j);
Json ForgetReportToJson(const ForgetReport& r,
                        const std::function<std::string(const std::string&)>& show);
Result<ForgetReport> ForgetReportFromJson(const Json& j);

// Protects (or unprotects) snapshot `id` (or a unique prefix) of `volume`;
// returns the full id. Idempotent.
Result<std::string> SetProtected(const Repository& repo, const std::string& volume,
                                 const std::string& id, bool protect,
                                 std::chrono::milliseconds lock_wait);

}  // namespace dp420
