// Restore: writes a snapshot to a file (sparse: zero blocks stay holes) or a
// block device, reading blocks from packs with io_uring and checking every
// block's SHA-256 and the snapshot's checksum_sha256 on the way. A file
// target is written under a temporary name and renamed into place only when
// everything checked out, so a failed restore never leaves wrong data under
// TARGET's name.
//
// Thread safety: re-entrant.
#pragma once

#include <string>

#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "engine/core/repo.h"

namespace dp420 {

struct RestoreOptions {
  std::string volume;
  std::string snapshot = "latest";  // id, unique prefix or "latest"
  std::string target_path;          // absolute
  bool force = false;               // overwrite a non-empty file / any block device
  unsigned threads = 0;
  JobControl control;
};

struct RestoreResult {
  Manifest manifest;
  uint64_t bytes_written = 0;   // data written to the target (holes excluded)
  uint64_t blocks_restored = 0;
  uint64_t blocks_zero = 0;
  double seconds = 0;
};

Result<RestoreResult> RunRestore(const Repository& repo, const RestoreOptions& options);

}  // namespace dp420
