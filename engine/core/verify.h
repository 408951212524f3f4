// Verify: checks a repository's structure, the snapshot hash chain, every
// table page, every pack's header and trailer, and with read_data every
// referenced block against its SHA-256 and every snapshot's checksum_sha256
// against its table. Reports each damaged object once, with every snapshot
// it breaks. Never modifies the repository.
//
// Thread safety: re-entrant; holds the repository lock shared while it runs
// (prune deletes nothing meanwhile). Readers never see uncommitted data.
#pragma once

#include <string>
#include <vector>

#include "engine/core/job.h"
#include "engine/core/repo.h"

namespace dp420 {

struct VerifyOptions {
  std::string volume;      // empty: every volume
  std::string snapshot;    // empty: every snapshot (of `volume`); else an id/prefix/"latest"
  bool read_data = false;
  // Check the volume's history: rollbacks, forks, head problems (history.h)
  // and the chain of manifest seals. Repair turns it off to judge a snapshot
  // by its own table and data alone.
  bool check_history = true;
  JobControl control;
};

struct VerifyProblem {
  std::string object;                  // "packs/1a2b3c4d.pack", "snapshots/vm1/0000000003-....manifest"
  std::string message;                 // what is wrong, with offsets
  std::vector<std::string> snapshots;  // ids of the snapshots it breaks (may be empty)
};

struct VerifyReport {
  uint64_t snapshots_checked = 0;
  uint64_t packs_checked = 0;
  uint64_t pages_checked = 0;
  uint64_t blocks_checked = 0;        // data records read and re-hashed
  uint64_t bytes_read = 0;
  uint64_t unreferenced_packs = 0;    // forgotten snapshots' or interrupted backups'; prune reclaims them
  std::vector<VerifyProblem> problems;
  std::vector<std::string> broken_snapshots;  // sorted, unique
};

// Returns the report; a non-OK Status only when verify itself could not run
// (e.g. the repository cannot be opened). Damage is in report.problems.
Result<VerifyReport> RunVerify(const Repository& repo, const VerifyOptions& options);

}  // namespace dp420
