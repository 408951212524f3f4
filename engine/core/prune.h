// Prune and stats: reclaiming the space no snapshot needs, and measuring it.
//
// Prune marks what is live by walking the block table of every manifest in
// snapshots/, quarantine/ and staged in groups/ (table pages only, never
// block data), keeping a bitmap of live 4 KiB slots per pack that doubles as
// the visited set of shared pages. Packs with no live slot are deleted; packs whose unused share
// exceeds max_unused are repacked: their live records are copied into new
// packs, read back and checked, and a relocation file (relocate.h) maps the
// old references to the copies before the old pack is deleted. The order of
// the steps and the locks make it safe against concurrent backups, restores
// and verifies without clocks (docs/RELIABILITY.md, "Prune").
//
// Stats walks every snapshot's table and attributes every live record to the
// snapshots that reference it.
//
// Thread safety: RunPrune takes locks/.prune.lock (one prune per repository)
// and, for its delete phase only, locks/.repository.lock exclusively.
// ComputeStats takes the repository lock shared. Both are re-entrant.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/format.h"
#include "engine/core/job.h"
#include "engine/core/manifest.h"  // Json
#include "engine/core/repo.h"

namespace dp420 {

// Repack a pack once more than this share of its record area is unused.
// 10 %: a repack copies the live 90 % to free 10 %, so the write cost per
// byte freed is at most 9x; higher values leave more space, lower ones copy
// more (docs/ARCHITECTURE.md, "Prune").
inline constexpr double kDefaultMaxUnused = 0.10;

struct PruneOptions {
  double max_unused = kDefaultMaxUnused;  // 0..1
  bool dry_run = false;                    // report what would be done; change nothing
  JobControl control;                      // progress phases "mark", "repack"
  // Messages for the operator while prune runs (e.g. that it waits for
  // running backups before deleting). May be empty.
  std::function<void(const std::string&)> notice;
  // Tests: called after the repack, before the delete phase takes its lock.
  std::function<void()> before_delete;
  // Tests: the size past which the repack closes a new pack (small packs
  // make a run of records continue in the next pack).
  uint64_t pack_bytes = kPackMaxBytes;
};

struct PruneReport {
  bool dry_run = false;
  uint64_t snapshots = 0;            // manifests marked (snapshots/ and quarantine/)
  uint64_t packs_before = 0;         // pack files listed
  uint64_t pack_bytes_before = 0;
  uint64_t packs_in_progress = 0;    // named by a backup's journal: kept
  uint64_t packs_deleted = 0;        // unreferenced packs removed
  uint64_t packs_rewritten = 0;      // repacked (and then removed)
  uint64_t packs_created = 0;        // new packs holding the repacked records
  uint64_t records_copied = 0;
  uint64_t bytes_copied = 0;         // bytes of the new packs
  uint64_t bytes_freed = 0;          // pack bytes removed less bytes_copied
  uint64_t bytes_referenced = 0;     // live record bytes (4 KiB slots) after prune
  uint64_t bytes_unused = 0;         // pack bytes still not referenced after prune
  uint64_t relocations_written = 0;
  uint64_t relocations_deleted = 0;
  std::vector<std::string> warnings; // packs left alone, and why
};

Result<PruneReport> RunPrune(const Repository& repo, const PruneOptions& options);

struct StatsOptions {
  std::string volume;  // empty: every volume (sharing is always counted over all)
  JobControl control;
};

struct SnapshotSpace {
  std::string volume;
  std::string snapshot_id;
  uint64_t sequence = 0;
  std::string created;
  uint64_t bytes_referenced = 0;  // its records (data and table pages), 4 KiB slots
  uint64_t bytes_unique = 0;      // of those, referenced by no other manifest
  uint64_t bytes_shared = 0;      // referenced - unique
};

struct StatsReport {
  std::vector<SnapshotSpace> snapshots;  // by volume and sequence
  uint64_t packs = 0;
  uint64_t pack_bytes = 0;         // sizes of the pack files
  uint64_t bytes_referenced = 0;   // records any manifest references, 4 KiB slots
  uint64_t bytes_reclaimable = 0;  // pack_bytes - bytes_referenced: what prune can free at most
};

Result<StatsReport> ComputeStats(const Repository& repo, const StatsOptions& options);

// The reports as JSON (the CLI's --json, and ADMIN answers of `dp420 serve`);
// `show` names a repository volume as the client knows it.
Json PruneReportToJson(const PruneReport& r);
Result<PruneReport> PruneReportFromJson(const Json& j);
Json StatsReportToJson(const StatsReport& r,
                       const std::function<std::string(const std::string&)>& show);
Result<StatsReport> StatsReportFromJson(const Json& j);

}  // namespace dp420
