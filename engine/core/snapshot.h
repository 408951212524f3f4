// SnapshotBuilder: everything a backup does after the blocks are hashed, the
// same for a local backup (backup.cc) and for the server side of a network
// backup (engine/net/store.cc): the journal of the packs it creates, leaf
// pages taken in volume order, the block table (Merkle tree, parent pages
// reused), the volume checksum, and the commit:
//   data packs durable -> table pages durable -> manifest fsynced, renamed,
//   directory fsynced.
// A builder that is not committed rolls back: the packs it created are
// deleted (or, after a crash, by the next writer of the volume).
//
// Thread safety: NewPack, ZeroEntry and queue() may be used from any thread;
// the rest belongs to the thread that runs Consume and Commit. The caller
// holds the volume lock for the builder's lifetime.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/core/format.h"
#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/core/repo.h"
#include "engine/core/table.h"

namespace dp420 {

struct GroupMemberRecord;  // group_repo.h

// What a block of a leaf page is, relative to the parent snapshot.
enum BlockVerdict : uint8_t { kUnchanged = 0, kZero = 1, kData = 2 };

// A leaf page being filled, then handed to the builder.
struct LeafPage {
  uint64_t index = 0;
  uint32_t count = 0;      // entries in this page
  uint32_t remaining = 0;  // blocks not yet hashed
  Entry entries[kPageEntries];
  Entry parent[kPageEntries];
  uint32_t parent_count = 0;
  uint8_t verdict[kPageEntries] = {};  // BlockVerdict of each entry
};

// Hands leaf pages to the builder in volume order. Producers never block
// while holding unfinished pages: before starting a new page they wait for
// room (page < next + window), which keeps memory bounded and cannot
// deadlock, because the page the builder needs next is always in room.
class PageQueue {
 public:
  explicit PageQueue(uint64_t window) : window_(window) {}
  void Put(std::unique_ptr<LeafPage> page);
  bool HasRoom(uint64_t page_index);
  // Blocks until `page_index` is in room; false when aborted.
  bool WaitForRoom(uint64_t page_index);
  // As WaitForRoom, for at most `timeout`; false on timeout or abort.
  bool WaitForRoomFor(uint64_t page_index, std::chrono::milliseconds timeout);
  // Waits up to `timeout` for the next page in order; null on timeout/abort.
  std::unique_ptr<LeafPage> Take(std::chrono::milliseconds timeout);
  void Abort();
  bool aborted();

 private:
  std::mutex mu_;
  std::condition_variable cv_put_, cv_get_;
  std::map<uint64_t, std::unique_ptr<LeafPage>> ready_;
  uint64_t next_ = 0;
  uint64_t window_;
  bool aborted_ = false;
};

// Counters the producers report at commit.
struct SnapshotStats {
  uint64_t blocks_changed = 0;
  uint64_t blocks_zero = 0;
  uint64_t blocks_stored = 0;
  uint64_t bytes_written = 0;  // data packs, whole files
  uint64_t bytes_read = 0;
};

// Leaf pages of a backup in flight at most (memory bound of the queue).
uint64_t DefaultPageWindow(unsigned threads);

class SnapshotBuilder {
 public:
  // Chooses the block size against the parent's chain (kInvalidArgument on
  // a mismatch), drafts the manifest (ids, chain, time, geometry) and starts
  // the journal (rolling back what a dead backup of the volume left).
  static Result<std::unique_ptr<SnapshotBuilder>> Start(const Repository& repo,
                                                        const std::string& volume,
                                                        const Manifest* parent,
                                                        uint32_t block_size,
                                                        uint64_t volume_size,
                                                        uint64_t page_window);
  ~SnapshotBuilder();  // rolls back unless committed

  // The draft: callers fill source_path, source_kind, node_topology,
  // tool_version, client (and may replace created/created_unix_ns).
  Manifest& manifest() { return m_; }
  const Repository& repo() const { return repo_; }
  uint64_t blocks() const { return m_.blocks_total; }
  uint64_t pages() const { return DivCeil(m_.blocks_total, kPageEntries); }
  uint32_t BlockLen(uint64_t block) const;
  // The volume's block-id hasher (Repository::VolumeHasher).
  const simd::BlockHasher& hasher() const { return *hasher_; }
  // The entry of an all-zero block of `len` bytes.
  const Entry& ZeroEntry(uint32_t len) const {
    return len == m_.block_size ? zero_full_ : zero_tail_;
  }
  PageQueue& queue() { return queue_; }
  // A new pack, journaled before it exists.
  Result<PackWriter> NewPack(bool direct);

  // Takes leaf pages in order until all are in. Returns early (OK) when
  // `stopped()` turns true; `tick()` runs between pages (progress).
  Status Consume(const std::function<bool()>& stopped, const std::function<void()>& tick);
  bool complete() const { return consumed_ == pages() || (pages() == 0 && empty_done_); }
  // After every data pack is finished and durable: writes the table and the
  // manifest. The snapshot is committed once this returns OK.
  Result<Manifest> Commit(const SnapshotStats& stats);
  // Deletes what this snapshot wrote (also done by the destructor). A staged
  // snapshot whose group committed with it is published instead, never
  // deleted (or, when that fails, left to the volume's next writer).
  void Rollback();

  // A member of a consistency group (group_repo.h): as Commit, but the
  // manifest goes into groups/GROUP/EPOCH/VOL.manifest instead of the
  // volume's folder, and the journal is kept, marked with the group and
  // epoch (durably, before the manifest is written). kBusy when the epoch is
  // not open, or not the newest (fenced). The builder (and the volume lock its owner holds) must live on
  // until the group's outcome: then Publish (the group committed) or
  // Rollback (it did not). Returns the manifest, its seal set: the staged
  // file's bytes are the ones Publish puts into the volume's folder.
  Result<Manifest> Stage(const SnapshotStats& stats, const std::string& group, uint64_t epoch);
  // After the group manifest is durable: the staged manifest renamed into
  // the volume's folder, the head advanced, the journal removed. kBusy while
  // the epoch is open, kInvalidArgument when it was aborted or committed
  // without this snapshot. Idempotent (also after RecoverGroups published it).
  Status Publish();
  bool staged() const { return !stage_group_.empty(); }
  bool committed() const { return committed_; }

  uint64_t table_pages_written() const { return builder_->pages_written(); }
  // The codec table pages are compressed with (none until set); they are
  // sealed in an encrypted repository either way.
  Status SetCompression(const CodecSpec& compression);
  uint64_t table_pages_reused() const { return builder_->pages_reused(); }

 private:
  SnapshotBuilder(const Repository& repo, uint64_t window) : repo_(repo), queue_(window) {}
  Status WritePage(const uint8_t* bytes, uint32_t len, ObjRef* ref);
  // Table and packs durable, checksum and counters into the manifest.
  Status FinishData(const SnapshotStats& stats);
  Status WriteManifest(bool* renamed);
  Status CheckStillNewest() const;
  // Removes the staged manifest unless the group committed with it; false
  // when the packs must stay (committed, or the repository cannot tell).
  bool Unstage();
  GroupMemberRecord SelfRecord() const;

  const Repository& repo_;
  // The repository lock, shared: held from Start() on, so prune deletes
  // nothing while this backup runs (declared first: released last).
  VolumeLock repo_lock_;
  Manifest m_;
  Entry zero_full_{};
  Entry zero_tail_{};
  PageQueue queue_;
  std::mutex journal_mu_;
  BackupJournal journal_;
  std::unique_ptr<TableReader> parent_reader_;
  std::unique_ptr<simd::BlockHasher> hasher_;
  std::unique_ptr<TableBuilder> builder_;
  std::unique_ptr<PackWriter> table_pack_;
  std::unique_ptr<RecordCodec> page_codec_;
  std::vector<uint8_t> page_buf_;
  simd::Sha256Stream volume_sha_;
  uint64_t consumed_ = 0;
  bool empty_done_ = false;
  bool committed_ = false;
  std::string stage_group_;  // Stage()d under (group, epoch)
  uint64_t stage_epoch_ = 0;
};

// A new snapshot id (or group snapshot id): 16 hex digits, 64 random bits.
std::string NewSnapshotId();
// Checks `requested` (0: the parent's, or kDefaultBlockSize) against the chain.
Result<uint32_t> ChooseBlockSize(const std::string& volume, uint32_t requested,
                                 const Manifest* parent);
// CLOCK_REALTIME in Unix ns, and as RFC 3339 UTC with microseconds.
uint64_t NowUnixNs();
std::string Rfc3339(uint64_t unix_ns);
// A time as a user writes it, in Unix ns: RFC 3339 with seconds, an optional
// fraction and Z or an offset ("2026-12-01T03:00:00Z", "2026-12-01 04:00:00+01:00");
// kInvalidArgument naming the text when it is not one, or before 1970.
Result<uint64_t> ParseRfc3339(const std::string& text);
// The time a backup gives its snapshot (`dp420 backup --time`) checked against the
// chain: not in the future, not before the parent's; kInvalidArgument otherwise.
Status CheckBackupTime(uint64_t unix_ns, const Manifest* parent);

}  // namespace dp420
