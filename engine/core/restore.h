// Restore: writes a snapshot to a file (sparse: zero blocks stay holes) or a
// block device, reading blocks from packs with io_uring and checking every
// block's SHA-256 and the snapshot's checksum_sha256 on the way. Before
// anything is written, the snapshot's whole table is checked as verify checks
// it (engine/core/table_check.h). A file target has no name until everything
// checked out (engine/core/restore_target.h), so a failed restore never
// leaves wrong data under TARGET's name, and only regular files and block
// devices are ever written.
//
// Reads are planned per window of the volume (up to 4 MiB): the window's
// stored blocks are read in (pack, offset) order, and records adjacent in a
// pack become one read of up to a window. A block that is alone in its window
// with its pack (a later snapshot's scattered change) is read together with
// the lone records of the windows ahead that follow it in that pack. With
// RestoreOptions::read_through_bytes, a read may also run through that many
// stale bytes (older versions of blocks this snapshot replaced) to join the
// next record: fewer requests for more bytes, which pays on devices where a
// request costs more than its bytes (disks that seek); the default reads
// exactly what the snapshot holds.
//
// Once a window's reads are back, its stored blocks are checked in pieces of
// up to 512 KiB and each piece's write is submitted as soon as it checked
// out, so the device writes while the next piece is hashed and nothing
// unchecked reaches the target. Zero blocks stay holes in a file target.
//
// Thread safety: RunRestore is re-entrant.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "engine/core/restore_target.h"
#include "io/file.h"

namespace dp420 {

// The largest RestoreOptions::read_through_bytes: a read is at most a window.
inline constexpr uint64_t kReadThroughBytesMax = 4ull << 20;

struct RestoreOptions {
  std::string volume;
  std::string snapshot = "latest";  // id, unique prefix or "latest"
  std::string target_path;          // absolute
  // Overwrite a non-empty file or a block device, or restore to what a
  // symbolic link points to (restore_target.h).
  bool force = false;
  unsigned threads = 0;
  // Stale pack bytes a read may run through, at most kReadThroughBytesMax;
  // 0 = none. Local repositories only.
  uint64_t read_through_bytes = 0;
  JobControl control;
};

struct RestoreResult {
  Manifest manifest;
  uint64_t bytes_written = 0;   // data written to the target (holes excluded)
  uint64_t blocks_restored = 0;
  uint64_t blocks_zero = 0;
  uint64_t pack_reads = 0;      // read requests queued on packs
  double seconds = 0;
};

Result<RestoreResult> RunRestore(const Repository& repo, const RestoreOptions& options);

}  // namespace dp420
