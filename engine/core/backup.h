// Backup: reads a volume (file or block device) with one io_uring worker per
// thread, hashes every block, diffs it against the parent snapshot's table,
// appends changed blocks to packs, and commits a new snapshot durably.
//
// Pipeline and threads: docs/ARCHITECTURE.md. Commit order: data packs
// durable -> table pages durable -> manifest written, fsynced, renamed, the
// directory fsynced. A failure at any point leaves the repository as it was
// (the packs this backup created are deleted now, or by the next writer when
// the process died).
//
// Thread safety: RunBackup is re-entrant; it takes the volume's lock.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "engine/core/snapshot.h"

namespace dp420 {

struct ScanSource;
class SnapshotBuilder;

struct BackupOptions {
  std::string volume;
  std::string source_path;    // absolute
  // What is read, when not the source itself: its point-in-time copy
  // (engine/control/pit.h). The manifest still names source_path.
  std::string read_path;
  uint32_t block_size = 0;    // 0: the parent's, or kDefaultBlockSize
  unsigned threads = 0;       // 0: DefaultThreads()
  Json node_topology = Json::object();
  std::string tool_version;
  // The snapshot's time in Unix ns (0: now). Not in the future, not before the
  // parent's (CheckBackupTime); for a local repository only: a server stamps a remote
  // snapshot with its own clock.
  uint64_t time_unix_ns = 0;
  // How changed blocks and new table pages are compressed (format-3
  // repositories; a block is stored compressed only when that saves a 4 KiB slot).
  CodecSpec compression;
  // Changed blocks are looked up in the repository's dedup index (dedup.h)
  // and referenced where another snapshot, of any volume, stores them; the
  // blocks this backup stores are added to it. False: neither.
  bool dedup = true;
  // `--compression auto`: measure, choose and step down (auto_compression.h);
  // `compression` is then ignored.
  bool compression_auto = false;
  JobControl control;
  // Ends the point in time (engine/control/pit.h: thaw, post hook, copy
  // dropped), after the last block was read and before the commit, local and
  // remote alike: an error fails the backup and nothing is committed. It may
  // record how the source was read in the node topology it is given: the
  // manifest's for a local backup; a remote one sent its topology at the start,
  // and what is written then is dropped.
  std::function<Status(Json* node_topology)> end_point_in_time;
  // A member of a consistency group (remote only, engine/control/group.h):
  // the snapshot is staged under (group, group_epoch) and published by the
  // group's commit, or never.
  std::string group;
  uint64_t group_epoch = 0;
};

// "block-device" or "file": what the source is, also when `read` is its
// point-in-time copy (a file, also for a block device's).
const char* SourceKind(const BackupOptions& options, const ScanSource& read);

struct BackupResult {
  Manifest manifest;          // the committed snapshot
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0; // data + table pages + pack trailers
  uint64_t table_pages_written = 0;
  uint64_t table_pages_reused = 0;
  // Blocks the parent held in packs that are gone from the repository, read
  // again from the source and stored anew (never referenced missing).
  uint64_t blocks_healed = 0;
  uint64_t blocks_compressed = 0;  // changed blocks stored compressed
  // Changed blocks found in the dedup index and referenced, not stored.
  uint64_t blocks_deduplicated = 0;
  // Why the dedup index was not used or not updated ("" when it was).
  std::string dedup_warning;
  double seconds = 0;
  unsigned threads = 0;
  bool direct_io = false;     // the source was read with O_DIRECT
  bool registered_buffers = false;
  // Network backups (engine/net/agent_backup.cc); 0 for a local one.
  uint64_t bytes_sent = 0;             // frame bytes put on the wire (headers and data)
  uint64_t bytes_sent_zerocopy = 0;    // block bytes sent with send_zc
  uint64_t bytes_zerocopy_copied = 0;  // ... of which the kernel copied anyway
  uint64_t bytes_resent = 0;           // block bytes sent again after a reconnect
  // A group member's: this host's anchor of the volume (id_cache.h), to be
  // written once the group is published (a staged snapshot may never be).
  std::string anchor_path, anchor_text;
  uint64_t reconnects = 0;
};

Result<BackupResult> RunBackup(const Repository& repo, const BackupOptions& options);

// A member of a consistency group backed up from this machine
// (group_repo.h): as RunBackup, but the snapshot is staged under (group,
// epoch) (SnapshotBuilder::Stage), not committed; kBusy when the epoch is
// not open. The StagedBackup holds the volume lock and the builder until its
// group's outcome: `builder->Publish()` once CommitGroup succeeded; dropping
// it rolls the snapshot back (publishes it when its group committed). The
// blocks it stores are not added to the dedup index.
struct StagedBackup {
  StagedBackup() = default;
  StagedBackup(StagedBackup&&) = default;
  // The builder this one held is done (rolled back or published) before
  // the volume lock it held goes.
  StagedBackup& operator=(StagedBackup&& o) noexcept {
    builder.reset();
    builder = std::move(o.builder);
    lock = std::move(o.lock);
    result = std::move(o.result);
    return *this;
  }

  VolumeLock lock;  // first: released after the builder is destroyed
  std::unique_ptr<SnapshotBuilder> builder;
  BackupResult result;  // result.manifest: the staged manifest, seal set
};
Result<StagedBackup> StageBackup(const Repository& repo, const BackupOptions& options,
                                 const std::string& group, uint64_t epoch);

}  // namespace dp420
