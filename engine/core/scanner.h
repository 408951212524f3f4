// Scanner: the read -> hash -> diff half of a backup, one per worker thread,
// shared by the local backup (backup.cc, blocks go to packs) and the network
// agent (engine/net/agent_backup.cc, blocks go on the wire). Where changed
// blocks and finished leaf pages go is the ScanSink's business.
//
// A scanner owns an io_uring and registered buffers; it reads its stripe of
// leaf pages (w, w+N, w+2N, ... for worker w of N) in extents of
// kMinExtentBytes, refilling reads as soon as a buffer frees, hashes every
// block (keyed XXH3-128; ISA-L zero check), and compares it with the parent's
// entry. A changed non-zero block gets its SHA-256 and goes to the sink,
// which may keep the buffer (ScanRead::holds) until its own ops on the same
// ring complete.
//
// When the sink reports a lost connection (kNetwork), the scanner drains its
// ring, drops its unfinished pages, asks the sink to Recover, and restarts
// its stripe at the page the sink names.
//
// Thread safety: a Scanner and its sink belong to one thread; ScanContext is
// shared read-only (its atomics excepted).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "engine/core/format.h"
#include "engine/core/job.h"
#include "engine/core/snapshot.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/guarded_map.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

struct ScanGeometry {
  uint64_t volume_size = 0;
  uint32_t block_size = 0;
  uint64_t blocks = 0;
  uint64_t pages = 0;            // leaf pages holding blocks (0 for an empty volume)
  uint32_t extent_bytes = 0;     // one read request
  uint32_t blocks_per_extent = 0;
  static ScanGeometry For(uint64_t volume_size, uint32_t block_size);
  uint32_t BlockLen(uint64_t block) const { return dp420::BlockLen(volume_size, block_size, block); }
};

// The volume being read: O_DIRECT where possible, buffered for an unaligned
// tail. A regular file that is mostly in the page cache already (cachestat)
// is mapped instead: its blocks are hashed where they lie in the page cache,
// and only changed blocks are copied into a buffer (for the sink). The
// mapping is guarded (io/guarded_map.h): a file that shrinks, or a page that
// fails to read, while it is hashed is a read error, never SIGBUS.
//
// The volume is the size measured at Open: a file that grows during the
// backup is backed up to that size; one that shrinks fails the backup
// (ReadError names the offset and both sizes).
struct ScanSource {
  io::File direct;
  io::File buffered;
  uint32_t align = 1;
  io::GuardedMap mapping;         // the whole file, read-only, when warm
  const uint8_t* map = nullptr;   // mapping.data(), or null
  static Result<ScanSource> Open(const std::string& path);
  uint64_t size() const { return direct.info().size_bytes; }
  bool block_device() const { return direct.info().is_block_device; }
  // The error of a failed read at `offset`: names the offset, and the
  // source's current size when it shrank since Open.
  Status ReadError(uint64_t offset, const Status& cause) const;
  // An error when the source is now smaller than at Open (named with
  // `offset` unless it is io::kNoFault). Checked again before a commit: a
  // file cut inside its last mapped page reads zeros without a fault.
  Status CheckSize(uint64_t offset = io::kNoFault) const;
};

// The entry of an all-zero block of `len` bytes under `hasher`.
Entry ZeroBlockEntry(const simd::BlockHasher& hasher, uint32_t len);

struct ScanContext {
  ScanGeometry geo;
  const ScanSource* source = nullptr;
  const simd::BlockHasher* hasher = nullptr;
  Entry zero_full{};
  Entry zero_tail{};
  unsigned threads = 1;
  PageQueue* window = nullptr;       // bounds pages in flight; null: no bound
  JobControl control;
  std::atomic<bool>* stop = nullptr; // another worker failed
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<bool> registered{true};
  const Entry& ZeroEntry(uint32_t len) const {
    return len == geo.block_size ? zero_full : zero_tail;
  }
  bool Stopped() const { return (stop && stop->load(std::memory_order_relaxed)) ||
                                control.Canceled(); }
};

// One read buffer's extent.
struct ScanRead {
  io::IoOp op;
  unsigned buffer = 0;
  uint64_t first_block = 0;
  uint32_t nblocks = 0;
  uint32_t holds = 0;   // sink ops still using the buffer
  LeafPage* page = nullptr;
  uint8_t* data = nullptr;
};

class Scanner;

class ScanSink {
 public:
  virtual ~ScanSink() = default;
  // Ops the sink may have in flight per read buffer (sizes the ring).
  virtual unsigned OpsPerBuffer(uint32_t blocks_per_extent) const = 0;
  // The ring's bound on the kernel's async file workers (io::RingOptions::
  // max_file_workers): a sink that writes one file at a time says 1.
  virtual unsigned FileWorkers() const { return 0; }
  // The ring and buffers exist now.
  virtual Status Setup(Scanner& scanner) = 0;
  // The parent's entries of leaf `page` (id and ref.flags are compared);
  // *count = 0 when the parent has no such page.
  virtual Status ParentLeaf(uint64_t page, Entry* out, uint32_t* count) = 0;
  // A changed non-zero block: entry.id and entry.ref.sha256 are set.
  virtual Status Changed(ScanRead& read, uint32_t index, uint32_t len, Entry& entry) = 0;
  // Every block of `read` was diffed.
  virtual Status ReadDone(ScanRead& read) = 0;
  // Every block of the page was diffed (after its reads' ReadDone).
  virtual Status PageDone(std::unique_ptr<LeafPage> page) = 0;
  // One of the sink's own ops on the ring finished.
  virtual Status OnOp(io::IoOp* op) = 0;
  // Between batches of completions.
  virtual Status Turn() { return Status::Ok(); }
  // Called once the stripe is read and every page handed over, and again
  // after each batch of completions until it returns true: the sink is done
  // and has nothing in flight. While false, it must have ops in flight.
  virtual Result<bool> Finish() = 0;
  // The scanner stops on an error or on a stop request: end the ops that
  // would not end by themselves (e.g. a receive). The ring is drained next.
  virtual void Abort() {}
  // After a kNetwork error and a drained ring: reconnect, and return the
  // page of this stripe to read next. The default gives up.
  virtual Result<uint64_t> Recover(const Status& lost) { return lost; }
};

struct ScanStats {
  uint64_t blocks_changed = 0;
  uint64_t blocks_zero = 0;
  uint64_t blocks_stored = 0;
  // Wall time spent on completed reads (zero check, hash, diff, the sink's
  // Changed and ReadDone): a worker busy nearly all the time sets the pace
  // itself (what `--compression auto` watches).
  uint64_t busy_ns = 0;
};

class Scanner {
 public:
  Scanner(ScanContext& ctx, unsigned id, ScanSink* sink) : ctx_(ctx), id_(id), sink_(sink) {}
  Status Run();

  unsigned id() const { return id_; }
  const ScanContext& ctx() const { return ctx_; }
  io::Ring& ring() { return *ring_; }
  io::BufferPool& pool() { return pool_; }
  unsigned buffers() const { return buffers_; }
  // A sink op that used `read`'s buffer is done.
  void Unhold(ScanRead* read);
  // Queues `op` (tag must not be kTagRead).
  void QueueSinkOp(io::IoOp* op) {
    ring_->Queue(op);
    sink_queued_ = true;
  }
  ScanStats stats;

  static constexpr uint64_t kTagRead = 1;

 private:
  Status Setup();
  Status Loop();
  bool NextExtent(uint64_t* first_block, uint32_t* nblocks);
  Status StartPage(uint64_t page_index);
  Status NextRead(unsigned buffer, ScanRead** out);
  Status QueueRead(unsigned buffer);
  unsigned Fill(Status* first_error, bool may_block);
  Status OnRead(ScanRead* read);  // ProcessRead, timed into stats.busy_ns
  Status ProcessRead(ScanRead* read);
  // Mapped source: "reads" the extent from the mapping (no I/O).
  Status MappedRead(unsigned buffer);
  Status Drain();
  void Restart(uint64_t page);

  ScanContext& ctx_;
  unsigned id_;
  ScanSink* sink_;
  // The reads and buffers outlive the ring, whose destructor waits for the
  // ops still in flight.
  std::vector<ScanRead> reads_;
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::map<uint64_t, std::unique_ptr<LeafPage>> open_pages_;
  unsigned buffers_ = 0;
  unsigned queue_depth_ = 0;
  unsigned reads_in_flight_ = 0;
  bool sink_queued_ = false;  // the sink queued ops not yet submitted
  bool fixed_source_ = false;
  uint64_t next_page_ = 0;
  uint64_t next_block_ = 0;      // next block to read within next_page_
  std::vector<io::IoOp*> done_;
};

}  // namespace dp420
