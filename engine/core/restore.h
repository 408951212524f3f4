// Restore: writes a snapshot to a file (sparse: zero blocks stay holes) or a
// block device, reading blocks from packs with io_uring and checking every
// block's SHA-256 and the snapshot's checksum_sha256 on the way. A file
// target is written under a temporary name and renamed into place only when
// everything checked out, so a failed restore never leaves wrong data under
// TARGET's name.
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
// Thread safety: RunRestore is re-entrant. A RestoreTarget may be written
// through its descriptors and ZeroRange() from several threads at once;
// Commit() and the destructor run alone.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "io/file.h"

namespace dp420 {

// The largest RestoreOptions::read_through_bytes: a read is at most a window.
inline constexpr uint64_t kReadThroughBytesMax = 4ull << 20;

struct RestoreOptions {
  std::string volume;
  std::string snapshot = "latest";  // id, unique prefix or "latest"
  std::string target_path;          // absolute
  bool force = false;               // overwrite a non-empty file / any block device
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

// The target of a restore: a file written as TARGET.dp420-partial and renamed
// into place by Commit(), or a block device written in place.
class RestoreTarget {
 public:
  // Checks and opens `path` for a volume of `volume_size` bytes. Errors:
  // kInvalidArgument for a directory or a block device smaller than the
  // volume; kExists for a non-empty file or any block device without `force`;
  // the open's own error otherwise. A file target is created empty and sparse
  // at TARGET.dp420-partial (a stale one is replaced) with the volume's size.
  static Result<std::unique_ptr<RestoreTarget>> Open(const std::string& path,
                                                     uint64_t volume_size, bool force);
  ~RestoreTarget();  // not committed: deletes the partial file
  RestoreTarget(const RestoreTarget&) = delete;
  RestoreTarget& operator=(const RestoreTarget&) = delete;

  const std::string& path() const { return path_; }  // TARGET, as given
  bool block_device() const { return block_device_; }
  int direct_fd() const { return direct_.fd(); }  // O_DIRECT when possible (else buffered)
  int buffered_fd() const { return buffered_.fd(); }
  // Offset/length alignment direct_fd needs (1 when not direct). Memory
  // handed to direct_fd must be aligned too (page-aligned buffers are).
  uint32_t align() const { return align_; }
  // Makes [offset, offset+len) read as zeros (nothing for a fresh sparse file:
  // it is a hole already). On a block device: FALLOC_FL_ZERO_RANGE, or zeros
  // written when the device refuses it.
  Status ZeroRange(uint64_t offset, uint64_t len);
  // fdatasync; for a file, renames the partial file over TARGET and fsyncs
  // the directory. After a failed rename the partial file is still deleted by
  // the destructor; after a successful one it is TARGET's and stays.
  Status Commit();

 private:
  RestoreTarget() = default;
  std::string path_;
  std::string partial_path_;  // empty for a block device, and once renamed
  bool block_device_ = false;
  io::File direct_;
  io::File buffered_;
  uint32_t align_ = 1;
};

Result<RestoreResult> RunRestore(const Repository& repo, const RestoreOptions& options);

}  // namespace dp420
