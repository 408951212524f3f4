#include "engine/core/restore.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/core/table.h"
#include "engine/core/table_check.h"
#include "engine/core/test_hooks.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

using Clock = std::chrono::steady_clock;

// Reads are planned over a window of the volume at once (a worker's buffer):
// at most this much, and never past a leaf page (a worker's stripe unit).
constexpr uint64_t kWindowBytesMax = 4ull << 20;
// One pack read, stale bytes included: a whole window. A window is written
// only once all its reads are back, so smaller reads would not start writing
// sooner; the block layer splits what the device cannot take whole.
constexpr uint64_t kReadBytesMax = kWindowBytesMax;
static_assert(kReadThroughBytesMax <= kReadBytesMax);
// Read-ahead of lone records (see RestoreWorker): leaf pages of the stripe
// looked at ahead of the one being restored, and lines of read-ahead per worker,
// sharing one extra buffer.
constexpr unsigned kAheadPages = 8;
constexpr unsigned kLines = 8;
// Checked blocks go to the target in writes of at most this much, each
// submitted as soon as its blocks are hashed: the device writes one piece
// while the next is hashed. Measured on the 4 GiB volume: 512 KiB pieces
// restored 4 % faster than 1 MiB and 9 % faster than whole 4 MiB windows;
// 256 KiB gained nothing more (docs/PERFORMANCE.md).
constexpr uint64_t kWriteBytesMax = 512ull << 10;

struct RestoreJob {
  const Repository& repo;
  const RestoreOptions& options;
  Manifest m;
  unsigned threads = 1;
  uint64_t pages = 0;
  uint32_t window_blocks = 0;  // blocks per buffer, <= kPageEntries
  uint32_t spare_blocks = 0;   // extra room per buffer for displaced blocks
  unsigned depth = 0;          // buffers per worker
  std::unique_ptr<RestoreTarget> target;
  std::mutex mu;
  Status error;
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> blocks_restored{0};
  std::atomic<uint64_t> blocks_zero{0};
  std::atomic<uint64_t> pack_reads{0};

  RestoreJob(const Repository& r, const RestoreOptions& o) : repo(r), options(o) {}
  uint64_t BufferBytes() const { return uint64_t{window_blocks + spare_blocks} * m.block_size; }
  void Fail(Status s) {
    std::lock_guard lock(mu);
    if (error.ok()) error = std::move(s);
    failed.store(true);
  }
};

// Buffers of a worker: its share of kInFlightBytes in at least 4 buffers, each
// a window of 1 to 4 MiB (whole blocks, never past a leaf page) plus an eighth
// of spare room for blocks displaced by reads run through stale records.
void SizeBuffers(RestoreJob& job) {
  const uint64_t bs = job.m.block_size;
  uint64_t per_worker = kInFlightBytes / job.threads;
  uint64_t extent = std::max<uint64_t>(bs, kMinExtentBytes);
  uint64_t window = std::clamp<uint64_t>(per_worker / 4, extent, std::max(extent, kWindowBytesMax));
  job.window_blocks = static_cast<uint32_t>(std::min<uint64_t>(window / bs, kPageEntries));
  job.spare_blocks = job.window_blocks / 8;
  uint64_t window_bytes = uint64_t{job.window_blocks} * bs;
  job.depth = static_cast<unsigned>(std::max<uint64_t>(4, per_worker / window_bytes));
  DP420_ASSERT(job.window_blocks >= 1);
  DP420_ASSERT(job.window_blocks <= kPageEntries);
}

// One restore worker: its ring and buffers, leaf pages w, w+N, ... taken a
// window at a time.
//
// A window's buffer holds its stored blocks packed densely in volume order
// (each at its "home"; zero blocks take no room), then spare room. Dense
// homes make a run of stored blocks one write, and records that lie next to
// each other in a pack (zero blocks are not stored) one read.
//
// Lone records: a block whose pack has no other block in its window, as the
// scattered changes of a later snapshot are. Its pack holds the snapshot's
// changes in volume order, so the lone records of the next windows of the
// stripe often follow it there. The worker reads them together into a "line"
// of read-ahead; each window copies its record from the line, waiting for the
// line's read if need be. A line is freed when every record it was read for
// has been taken (or the worker has passed them all) and no window still
// copies from it.
class RestoreWorker {
 public:
  RestoreWorker(RestoreJob& job, unsigned id) : job_(job), id_(id), table_(job.repo, job.m) {}
  void Run() {
    Status s = Setup();
    if (s.ok()) s = Loop();
    if (!s.ok()) job_.Fail(s);
  }

 private:
  struct Slot {
    unsigned buffer = 0;
    uint64_t first_block = 0;
    uint32_t nblocks = 0;
    uint32_t stored = 0;  // stored blocks: homes [0, stored * block_size)
    uint32_t spare_next = 0;  // next free byte of the spare room
    uint32_t pending = 0;
    bool writing = false;     // its reads are back: verifying and writing
    uint32_t verify_next = 0;  // the next block to check (while writing)
    uint32_t nlines = 0;       // lines it copies from
    uint8_t lines[kLines];
    Entry entries[kPageEntries];
    uint32_t home[kPageEntries];    // buffer offset of block b (stored blocks)
    uint32_t landed[kPageEntries];  // where b's read puts it: home, or spare room
    const uint8_t* from_line[kPageEntries];  // or b's bytes in a line (else null)
    // A window holding an encoded record (record.h) reads every record into
    // its encoded area, packed in read order, and decodes each into its home.
    bool encoded = false;
    uint32_t enc_next = 0;              // next free byte of the encoded area
    uint32_t enc_at[kPageEntries];      // where b's stored bytes land there
  };
  struct Op {
    io::IoOp op;
    Slot* slot = nullptr;  // the window it reads or writes for, or null
    int line = -1;         // the line it reads, or -1
  };
  struct Line {
    bool live = false;
    bool reading = false;
    uint32_t pack_id = 0;
    uint64_t begin = 0;       // pack bytes [begin, end) are at mem
    uint64_t end = 0;
    uint8_t* mem = nullptr;
    uint32_t uses = 0;        // records it was read for, not yet taken
    uint32_t linked = 0;      // windows that copy from it
    uint64_t last_block = 0;  // the last block it was read for
    std::vector<Slot*> waiters;  // windows waiting for its read (capacity: depth)
  };
  struct AheadPage {
    uint64_t page = 0;
    uint32_t count = 0;
    Entry entries[kPageEntries];
  };
  struct Lone {
    uint32_t pack_id;
    uint32_t offset_4k;
    uint64_t block;
  };
  // Read planning, per window (scratch, reused).
  enum Placement : uint8_t { kUnplanned, kAtHome, kDisplaced, kFromLine };
  struct Planned {
    uint32_t pack_blocks;  // blocks of this pack in the window: the larger first
    uint32_t pack_id;
    uint32_t offset_4k;
    uint32_t block;
  };

  Status Setup();
  Status Loop();
  void Complete(Op* op, Status* first_error);
  void Step(Slot* slot, Status* first_error);
  Status FillAhead();
  void IndexLoneRecords();
  void CountPacks(const Entry* entries, uint32_t n);
  uint32_t PackBlocks(uint32_t pack_id) const;
  Status StartWindow(unsigned buffer, bool* started);
  Status PlaceBlocks(Slot& slot);
  Status TakeFromLines(Slot& slot);
  Result<int> StartLine(const Slot& slot, const ObjRef& ref, uint32_t padded);
  int FindLine(uint32_t pack_id, uint64_t offset, uint32_t len) const;
  void ReleaseLines(Slot* slot);
  void FreeDoneLines();
  Status PlanReads(Slot& slot);
  bool CanJoin(Slot& slot, const io::IoOp& read, int fd, uint64_t offset, uint32_t dst,
               uint32_t len);
  bool Displace(Slot& slot, uint32_t from, uint32_t bytes);
  void OnReadsDone(Slot* slot);
  Status VerifySome(Slot* slot);
  Result<int> PackFd(uint32_t pack_id);
  Op* NewOp(Slot* slot);
  void Finish(Slot* slot);
  uint32_t Padded(uint64_t block) const {
    return static_cast<uint32_t>(RoundUp(job_.m.BlockLen(block), kRecordAlign));
  }
  // Bytes of each block's room in a window's encoded area.
  uint64_t EncodedRoom() const { return RoundUp(MaxEncodedBytes(job_.m.block_size), kRecordAlign); }
  Status PlanEncodedReads(Slot& slot);
  Status DecodeBlock(const Slot& slot, uint32_t b, uint8_t* home);

  RestoreJob& job_;
  unsigned id_;
  TableReader table_;
  // The ops and buffers outlive the ring, whose destructor waits for the
  // ops still in flight.
  std::vector<Slot> slots_;
  std::vector<Op> ops_;
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::vector<Op*> free_ops_;
  std::map<uint32_t, io::File> packs_;
  unsigned depth_ = 0;
  uint64_t next_page_ = 0;
  uint64_t next_block_ = 0;
  std::vector<io::IoOp*> done_;
  std::deque<Slot*> ready_;  // windows whose reads are back, to check and write
  std::vector<Planned> order_;
  std::vector<std::pair<uint32_t, uint32_t>> pack_blocks_;  // (pack id, blocks)
  uint32_t home_block_[kPageEntries];  // home k -> block
  Placement placement_[kPageEntries];
  // Pages ahead: a ring whose first page is next_page_'s.
  std::vector<AheadPage> ahead_;
  unsigned ahead_first_ = 0;
  unsigned ahead_count_ = 0;
  uint64_t ahead_next_page_ = 0;
  std::vector<Lone> lone_;  // lone records of the pages ahead, by (pack, offset)
  std::vector<Line> lines_;  // empty when windows are too small to have lone records
  std::vector<AlignedBuf> encoded_;     // each slot's encoded area, made when first needed
  std::unique_ptr<RecordCodec> codec_;
  uint32_t line_bytes_ = 0;
  int line_buffer_ = -1;
};

Status RestoreWorker::Setup() {
  depth_ = job_.depth;
  // Lines only pay off with windows of many blocks (those have spare room).
  bool lines = job_.spare_blocks > 0;
  unsigned buffers = depth_ + (lines ? 1 : 0);
  // At most one read and one write per block of every window, and one read
  // per line, are in flight; the ring has room for all of them.
  ops_.resize(size_t{depth_} * job_.window_blocks * 2 + (lines ? kLines : 0));
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = unsigned(ops_.size())}));
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(job_.BufferBytes(), buffers));
  (void)pool_.Register(*ring_);  // unregistered I/O works too (RLIMIT_MEMLOCK)
  slots_.resize(buffers);
  for (auto& op : ops_) free_ops_.push_back(&op);
  order_.reserve(kPageEntries);
  pack_blocks_.reserve(kPageEntries);
  if (lines) {
    unsigned line_buffer = *pool_.Acquire();  // never released: the lines' memory
    line_bytes_ = static_cast<uint32_t>(job_.BufferBytes() / kLines / kRecordAlign * kRecordAlign);
    lines_.resize(kLines);
    for (unsigned i = 0; i < kLines; ++i) {
      lines_[i].mem = pool_.data(line_buffer) + uint64_t{i} * line_bytes_;
      lines_[i].waiters.reserve(depth_);
    }
    line_buffer_ = int(line_buffer);
  }
  encoded_.resize(buffers);
  DP420_ASSIGN_OR_RETURN(codec_, job_.repo.NewRecordCodec());
  ahead_.resize(lines ? kAheadPages + 1 : 1);
  lone_.reserve(ahead_.size() * kPageEntries);
  next_page_ = id_;
  next_block_ = next_page_ * kPageEntries;
  ahead_next_page_ = next_page_;
  return Status::Ok();
}

Result<int> RestoreWorker::PackFd(uint32_t pack_id) {
  auto it = packs_.find(pack_id);
  if (it != packs_.end()) return it->second.fd();
  auto file = io::File::OpenRead(job_.repo.PackPath(pack_id), true);
  if (!file.ok()) {
    return Status::Corruption("snapshot " + job_.m.snapshot_id + " needs packs/" +
                              PackName(pack_id) + ".pack: " + file.status().message());
  }
  int fd = file->fd();
  packs_.emplace(pack_id, std::move(file).value());
  return fd;
}

RestoreWorker::Op* RestoreWorker::NewOp(Slot* slot) {
  DP420_ASSERT(!free_ops_.empty());
  Op* op = free_ops_.back();
  free_ops_.pop_back();
  *op = Op{};
  op->slot = slot;
  op->op.owner = op;
  if (slot) ++slot->pending;
  return op;
}

// Keeps the stripe's pages from next_page_ on read, as many as the ring holds.
Status RestoreWorker::FillAhead() {
  bool added = false;
  while (ahead_count_ < ahead_.size() && ahead_next_page_ < job_.pages) {
    AheadPage& p = ahead_[(ahead_first_ + ahead_count_) % ahead_.size()];
    DP420_ASSIGN_OR_RETURN(const Entry* entries, table_.Leaf(ahead_next_page_, &p.count));
    std::memcpy(p.entries, entries, p.count * sizeof(Entry));
    // Every read below is by (pack, offset): records of repacked packs are
    // read where they are now.
    for (uint32_t i = 0; i < p.count; ++i) {
      DP420_RETURN_IF_ERROR(table_.Resolve(&p.entries[i].ref));
    }
    p.page = ahead_next_page_;
    ahead_next_page_ += job_.threads;
    ++ahead_count_;
    added = true;
  }
  if (added && !lines_.empty()) IndexLoneRecords();
  return Status::Ok();
}

// Lists the lone records of the pages ahead, cut into windows as
// StartWindow() will cut them.
void RestoreWorker::IndexLoneRecords() {
  lone_.clear();
  for (unsigned i = 0; i < ahead_count_; ++i) {
    const AheadPage& p = ahead_[(ahead_first_ + i) % ahead_.size()];
    for (uint32_t w = 0; w < p.count; w += job_.window_blocks) {
      uint32_t n = std::min(job_.window_blocks, p.count - w);
      CountPacks(p.entries + w, n);
      for (uint32_t b = w; b < w + n; ++b) {
        const ObjRef& ref = p.entries[b].ref;
        if (!ref.stored() || PackBlocks(ref.pack_id) != 1 || (ref.flags & kObjEncodingFlags)) {
          continue;
        }
        lone_.push_back({ref.pack_id, ref.offset_4k, p.page * kPageEntries + b});
      }
    }
  }
  std::sort(lone_.begin(), lone_.end(), [](const Lone& a, const Lone& b) {
    return a.pack_id != b.pack_id ? a.pack_id < b.pack_id : a.offset_4k < b.offset_4k;
  });
}

// Fills pack_blocks_ with how many of `entries` each pack holds.
void RestoreWorker::CountPacks(const Entry* entries, uint32_t n) {
  pack_blocks_.clear();
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t pack_id = entries[i].ref.pack_id;
    if (pack_id == 0) continue;
    auto it = std::find_if(pack_blocks_.begin(), pack_blocks_.end(),
                           [&](const auto& p) { return p.first == pack_id; });
    if (it == pack_blocks_.end()) {
      pack_blocks_.emplace_back(pack_id, 1);
    } else {
      ++it->second;
    }
  }
}

uint32_t RestoreWorker::PackBlocks(uint32_t pack_id) const {
  for (const auto& [id, n] : pack_blocks_) {
    if (id == pack_id) return n;
  }
  return 0;
}

// Takes the next window of this worker's stripe and queues its pack reads.
Status RestoreWorker::StartWindow(unsigned buffer, bool* started) {
  *started = false;
  if (next_page_ >= job_.pages) return Status::Ok();
  DP420_RETURN_IF_ERROR(FillAhead());
  const AheadPage& page = ahead_[ahead_first_];
  DP420_ASSERT(ahead_count_ > 0);
  DP420_ASSERT(page.page == next_page_);
  uint64_t page_end = page.page * kPageEntries + page.count;
  Slot& slot = slots_[buffer];
  slot.buffer = buffer;
  slot.first_block = next_block_;
  slot.nblocks = static_cast<uint32_t>(
      std::min<uint64_t>(job_.window_blocks, page_end - next_block_));
  slot.pending = 0;
  slot.writing = false;
  slot.nlines = 0;
  std::memcpy(slot.entries, page.entries + (next_block_ - page.page * kPageEntries),
              slot.nblocks * sizeof(Entry));
  next_block_ += slot.nblocks;
  if (next_block_ >= page_end) {
    ahead_first_ = (ahead_first_ + 1) % ahead_.size();
    --ahead_count_;
    next_page_ += job_.threads;
    next_block_ = next_page_ * kPageEntries;
  }
  *started = true;
  DP420_RETURN_IF_ERROR(PlaceBlocks(slot));
  CountPacks(slot.entries, slot.nblocks);
  DP420_RETURN_IF_ERROR(TakeFromLines(slot));
  DP420_RETURN_IF_ERROR(PlanReads(slot));
  FreeDoneLines();
  if (slot.pending == 0) OnReadsDone(&slot);
  return Status::Ok();
}

// Checks the window's entries and gives each stored block its home.
Status RestoreWorker::PlaceBlocks(Slot& slot) {
  const uint32_t bs = job_.m.block_size;
  uint32_t k = 0;
  slot.encoded = false;
  slot.enc_next = 0;
  for (uint32_t b = 0; b < slot.nblocks; ++b) {
    const ObjRef& ref = slot.entries[b].ref;
    if (!ref.stored()) continue;
    uint32_t len = job_.m.BlockLen(slot.first_block + b);
    const bool encoded = ref.flags & kObjEncodingFlags;
    if (!StoredLengthFits(ref, len) || (ref.flags & (kObjTableLeaf | kObjTableInner))) {
      return Status::Corruption("snapshot " + job_.m.snapshot_id + ": block " +
                                std::to_string(slot.first_block + b) +
                                " has a table entry of the wrong size or kind");
    }
    slot.encoded = slot.encoded || encoded;
    slot.home[b] = k * bs;
    slot.landed[b] = slot.home[b];
    slot.from_line[b] = nullptr;
    placement_[b] = kUnplanned;
    home_block_[k++] = b;
  }
  slot.stored = k;
  slot.spare_next = k * bs;
  if (slot.encoded && !encoded_[slot.buffer]) {
    encoded_[slot.buffer] = AllocAligned(EncodedRoom() * job_.window_blocks);
    if (!encoded_[slot.buffer]) return Status::NoMemory("restore: buffers for encoded records");
  }
  return Status::Ok();
}

// Takes the window's records that a line holds, and starts a line for each
// lone record with lone records of windows ahead after it in its pack.
Status RestoreWorker::TakeFromLines(Slot& slot) {
  if (lines_.empty() || slot.encoded) return Status::Ok();
  for (uint32_t b = 0; b < slot.nblocks; ++b) {
    const ObjRef& ref = slot.entries[b].ref;
    if (!ref.stored()) continue;
    uint32_t padded = Padded(slot.first_block + b);
    int index = FindLine(ref.pack_id, ref.offset_bytes(), padded);
    if (index < 0 && PackBlocks(ref.pack_id) == 1) {
      DP420_ASSIGN_OR_RETURN(index, StartLine(slot, ref, padded));
    }
    if (index < 0) continue;
    Line& line = lines_[index];
    placement_[b] = kFromLine;
    slot.from_line[b] = line.mem + (ref.offset_bytes() - line.begin);
    if (line.uses > 0) --line.uses;
    if (std::find(slot.lines, slot.lines + slot.nlines, index) != slot.lines + slot.nlines) {
      continue;
    }
    DP420_ASSERT(slot.nlines < kLines);
    slot.lines[slot.nlines++] = static_cast<uint8_t>(index);
    ++line.linked;
    if (line.reading) {
      DP420_ASSERT(line.waiters.size() < depth_);
      line.waiters.push_back(&slot);
      ++slot.pending;
    }
  }
  return Status::Ok();
}

// Reads the lone record `ref` and the lone records of windows ahead that
// follow it in its pack (stale gaps of at most read_through_bytes between them) into
// a free line. -1 when none follows or every line is in use.
Result<int> RestoreWorker::StartLine(const Slot& slot, const ObjRef& ref, uint32_t padded) {
  const uint64_t ahead_from = slot.first_block + slot.nblocks;
  auto it = std::upper_bound(lone_.begin(), lone_.end(), Lone{ref.pack_id, ref.offset_4k, 0},
                             [](const Lone& a, const Lone& b) {
                               return a.pack_id != b.pack_id ? a.pack_id < b.pack_id
                                                             : a.offset_4k < b.offset_4k;
                             });
  uint64_t end = ref.offset_bytes() + padded;
  uint32_t found = 0;
  uint64_t last_block = 0;
  for (; it != lone_.end() && it->pack_id == ref.pack_id; ++it) {
    uint64_t offset = uint64_t{it->offset_4k} * kRecordAlign;
    uint32_t len = Padded(it->block);
    if (it->block < ahead_from || offset < end) continue;  // behind, or a duplicate
    if (offset - end > job_.options.read_through_bytes || offset + len - ref.offset_bytes() > line_bytes_) break;
    end = offset + len;
    last_block = std::max(last_block, it->block);
    ++found;
  }
  if (found == 0) return -1;
  auto free_line =
      std::find_if(lines_.begin(), lines_.end(), [](const Line& l) { return !l.live; });
  if (free_line == lines_.end()) return -1;
  DP420_ASSIGN_OR_RETURN(int fd, PackFd(ref.pack_id));
  Line& line = *free_line;
  DP420_ASSERT(line.linked == 0);
  DP420_ASSERT(line.waiters.empty());
  line.live = true;
  line.reading = true;
  line.pack_id = ref.pack_id;
  line.begin = ref.offset_bytes();
  line.end = end;
  line.uses = found + 1;
  line.last_block = last_block;
  Op* op = NewOp(nullptr);
  op->line = static_cast<int>(free_line - lines_.begin());
  op->op.kind = io::IoOp::kRead;
  op->op.fd = fd;
  op->op.buf = line.mem;
  op->op.buf_index = pool_.registered() ? line_buffer_ : -1;
  op->op.len = static_cast<uint32_t>(end - line.begin);
  op->op.offset = line.begin;
  ring_->Queue(&op->op);
  job_.pack_reads.fetch_add(1, std::memory_order_relaxed);
  return op->line;
}

int RestoreWorker::FindLine(uint32_t pack_id, uint64_t offset, uint32_t len) const {
  for (size_t i = 0; i < lines_.size(); ++i) {
    const Line& l = lines_[i];
    if (l.live && l.pack_id == pack_id && offset >= l.begin && offset + len <= l.end) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

// The window has copied what it needed from its lines.
void RestoreWorker::ReleaseLines(Slot* slot) {
  for (uint32_t i = 0; i < slot->nlines; ++i) {
    Line& line = lines_[slot->lines[i]];
    DP420_ASSERT(line.linked > 0);
    --line.linked;
  }
  slot->nlines = 0;
  FreeDoneLines();
}

// Frees the lines no window copies from whose records have all been taken,
// or lie behind the windows started so far.
void RestoreWorker::FreeDoneLines() {
  uint64_t started_to = next_page_ >= job_.pages ? UINT64_MAX : next_block_;
  for (Line& line : lines_) {
    if (!line.live || line.reading || line.linked > 0) continue;
    if (line.uses == 0 || line.last_block < started_to) line.live = false;
  }
}

// Queues the window's pack reads. Records go in (pack, offset) order, the
// pack holding most of the window's blocks first: a read of it may run
// through stale records, whose bytes land on homes of blocks that live in
// other packs. Those blocks are "displaced": read into spare room and copied
// home once every read of the window is back. Every read's memory is disjoint
// from every other's: it covers homes of its own blocks and of displaced ones.
Status RestoreWorker::PlanReads(Slot& slot) {
  if (slot.encoded) return PlanEncodedReads(slot);
  order_.clear();
  for (uint32_t k = 0; k < slot.stored; ++k) {
    uint32_t b = home_block_[k];
    if (placement_[b] == kFromLine) continue;
    const ObjRef& ref = slot.entries[b].ref;
    order_.push_back({PackBlocks(ref.pack_id), ref.pack_id, ref.offset_4k, b});
  }
  std::sort(order_.begin(), order_.end(), [](const Planned& a, const Planned& b) {
    if (a.pack_blocks != b.pack_blocks) return a.pack_blocks > b.pack_blocks;
    if (a.pack_id != b.pack_id) return a.pack_id < b.pack_id;
    if (a.offset_4k != b.offset_4k) return a.offset_4k < b.offset_4k;
    return a.block < b.block;
  });
  uint8_t* base = pool_.data(slot.buffer);
  Op* open = nullptr;
  for (const Planned& p : order_) {
    const uint32_t b = p.block;
    const ObjRef& ref = slot.entries[b].ref;
    uint32_t padded = Padded(slot.first_block + b);
    DP420_ASSIGN_OR_RETURN(int fd, PackFd(ref.pack_id));
    if (placement_[b] == kUnplanned) placement_[b] = kAtHome;
    uint32_t dst = slot.landed[b];
    if (open && CanJoin(slot, open->op, fd, ref.offset_bytes(), dst, padded)) {
      open->op.len = static_cast<uint32_t>(ref.offset_bytes() + padded - open->op.offset);
      continue;
    }
    if (open) ring_->Queue(&open->op);
    open = NewOp(&slot);
    open->op.kind = io::IoOp::kRead;
    open->op.fd = fd;
    open->op.buf = base + dst;
    open->op.buf_index = pool_.registered() ? int(slot.buffer) : -1;
    open->op.len = padded;
    open->op.offset = ref.offset_bytes();
    job_.pack_reads.fetch_add(1, std::memory_order_relaxed);
  }
  if (open) ring_->Queue(&open->op);
  return Status::Ok();
}

// PlanReads for a window with encoded records: every record is read into the
// window's encoded area, in (pack, offset) order, one read for records that
// lie back to back in a pack (no stale bytes read through).
Status RestoreWorker::PlanEncodedReads(Slot& slot) {
  order_.clear();
  for (uint32_t k = 0; k < slot.stored; ++k) {
    uint32_t b = home_block_[k];
    const ObjRef& ref = slot.entries[b].ref;
    order_.push_back({0, ref.pack_id, ref.offset_4k, b});
  }
  std::sort(order_.begin(), order_.end(), [](const Planned& a, const Planned& b) {
    if (a.pack_id != b.pack_id) return a.pack_id < b.pack_id;
    if (a.offset_4k != b.offset_4k) return a.offset_4k < b.offset_4k;
    return a.block < b.block;
  });
  uint8_t* area = encoded_[slot.buffer].get();
  Op* open = nullptr;
  for (const Planned& p : order_) {
    const ObjRef& ref = slot.entries[p.block].ref;
    const uint32_t padded = static_cast<uint32_t>(RoundUp(ref.stored_len, kRecordAlign));
    DP420_ASSIGN_OR_RETURN(int fd, PackFd(ref.pack_id));
    slot.enc_at[p.block] = slot.enc_next;
    uint8_t* dst = area + slot.enc_next;
    slot.enc_next += padded;
    if (open && open->op.fd == fd && open->op.offset + open->op.len == ref.offset_bytes() &&
        open->op.buf + open->op.len == dst && open->op.len + padded <= kReadBytesMax) {
      open->op.len += padded;
      continue;
    }
    if (open) ring_->Queue(&open->op);
    open = NewOp(&slot);
    open->op.kind = io::IoOp::kRead;
    open->op.fd = fd;
    open->op.buf = dst;
    open->op.buf_index = -1;
    open->op.len = padded;
    open->op.offset = ref.offset_bytes();
    job_.pack_reads.fetch_add(1, std::memory_order_relaxed);
  }
  if (open) ring_->Queue(&open->op);
  return Status::Ok();
}

// Decodes block b of an encoded window into `home` (record.h): kCorruption
// naming the snapshot, the block and the record when it does not open,
// decompress or hash to its reference.
Status RestoreWorker::DecodeBlock(const Slot& slot, uint32_t b, uint8_t* home) {
  const ObjRef& ref = slot.entries[b].ref;
  const uint64_t block = slot.first_block + b;
  Status s = codec_->Decode(ref, encoded_[slot.buffer].get() + slot.enc_at[b],
                            {home, job_.m.BlockLen(block)});
  if (s.ok()) return s;
  return s.Prefix("snapshot " + job_.m.snapshot_id + " is damaged: block " +
                  std::to_string(block) + " (packs/" + PackName(ref.pack_id) +
                  ".pack at offset " + std::to_string(ref.offset_bytes()) + ")");
}

// Whether `read` can grow to end with the record at pack `offset` (`len`
// bytes) landing at buffer offset `dst`: same pack, a stale gap of at most
// read_through_bytes that can be displaced, at most kReadBytesMax in all.
bool RestoreWorker::CanJoin(Slot& slot, const io::IoOp& read, int fd, uint64_t offset,
                            uint32_t dst, uint32_t len) {
  uint64_t end = read.offset + read.len;
  if (read.fd != fd || offset < end) return false;
  uint64_t gap = offset - end;
  if (gap > job_.options.read_through_bytes || offset + len - read.offset > kReadBytesMax) {
    return false;
  }
  uint32_t read_end = static_cast<uint32_t>(read.buf + read.len - pool_.data(slot.buffer));
  if (uint64_t{read_end} + gap != dst) return false;
  return gap == 0 || Displace(slot, read_end, static_cast<uint32_t>(gap));
}

// Frees the homes in [from, from + bytes) for a read's stale bytes: their
// blocks not yet read are given spare room instead. False (nothing changed)
// when the range is not whole homes, a home there is already a read's target,
// or the spare room is short.
bool RestoreWorker::Displace(Slot& slot, uint32_t from, uint32_t bytes) {
  const uint32_t bs = job_.m.block_size;
  if (from % bs != 0 || bytes % bs != 0) return false;
  uint32_t first = from / bs;
  uint32_t last = first + bytes / bs;  // exclusive
  if (last > slot.stored) return false;
  uint64_t need = 0;
  for (uint32_t k = first; k < last; ++k) {
    Placement p = placement_[home_block_[k]];
    if (p == kAtHome) return false;
    if (p == kUnplanned) need += bs;
  }
  if (slot.spare_next + need > job_.BufferBytes()) return false;
  for (uint32_t k = first; k < last; ++k) {
    uint32_t b = home_block_[k];
    if (placement_[b] != kUnplanned) continue;
    placement_[b] = kDisplaced;
    slot.landed[b] = slot.spare_next;
    slot.spare_next += bs;
  }
  return true;
}

// Every read of the window (and of the lines it copies from) is back: bring
// displaced blocks and blocks from lines home, and queue the window to be
// checked and written.
void RestoreWorker::OnReadsDone(Slot* slot) {
  uint8_t* base = pool_.data(slot->buffer);
  const uint32_t bs = job_.m.block_size;
  slot->writing = true;
  slot->verify_next = 0;
  for (uint32_t b = 0; b < slot->nblocks && !slot->encoded; ++b) {
    if (!slot->entries[b].ref.stored()) continue;
    uint32_t len = job_.m.BlockLen(slot->first_block + b);
    if (slot->from_line[b]) {
      std::memcpy(base + slot->home[b], slot->from_line[b], len);
    } else if (slot->landed[b] != slot->home[b]) {
      DP420_ASSERT(slot->landed[b] >= slot->stored * bs);
      std::memcpy(base + slot->home[b], base + slot->landed[b], len);
    }
  }
  ReleaseLines(slot);
  ready_.push_back(slot);
}

// Checks the next piece of the window at the head of ready_: a run of zero
// blocks is zeroed on the target; up to kWriteBytesMax of a run of stored
// blocks is checked against its SHA-256s, and its write queued and submitted
// at once, so the device writes one piece while the next is hashed. Nothing
// reaches the target before it checked out.
Status RestoreWorker::VerifySome(Slot* slot) {
  uint8_t* base = pool_.data(slot->buffer);
  const uint32_t bs = job_.m.block_size;
  RestoreTarget& target = *job_.target;
  uint32_t b = slot->verify_next;
  DP420_ASSERT(b < slot->nblocks);
  bool stored = slot->entries[b].ref.stored();
  uint32_t end = b;
  uint64_t run_bytes = 0;
  while (end < slot->nblocks && slot->entries[end].ref.stored() == stored &&
         (!stored || run_bytes < kWriteBytesMax)) {
    uint64_t block = slot->first_block + end;
    uint32_t len = job_.m.BlockLen(block);
    if (stored && slot->encoded) {
      DP420_DASSERT(slot->home[end] == slot->home[b] + run_bytes);
      DP420_RETURN_IF_ERROR(DecodeBlock(*slot, end, base + slot->home[end]));
    } else if (stored) {
      DP420_DASSERT(slot->home[end] == slot->home[b] + run_bytes);
      uint8_t digest[32];
      simd::Sha256(base + slot->home[end], len, digest);
      const ObjRef& ref = slot->entries[end].ref;
      if (std::memcmp(digest, ref.sha256, 32) != 0) {
        return Status::Corruption(
            "snapshot " + job_.m.snapshot_id + " is damaged: block " + std::to_string(block) +
            " (packs/" + PackName(ref.pack_id) + ".pack at offset " +
            std::to_string(ref.offset_bytes()) + ") fails its SHA-256");
      }
    }
    run_bytes += len;
    ++end;
  }
  uint64_t offset = (slot->first_block + b) * bs;
  if (!stored) {
    DP420_RETURN_IF_ERROR(target.ZeroRange(offset, run_bytes));
    job_.blocks_zero.fetch_add(end - b);
  } else {
    bool aligned = run_bytes % target.align() == 0;
    Op* op = NewOp(slot);
    op->op.kind = io::IoOp::kWrite;
    op->op.fd = aligned ? target.direct_fd() : target.buffered_fd();
    op->op.buf = base + slot->home[b];
    op->op.buf_index = pool_.registered() ? int(slot->buffer) : -1;
    op->op.len = static_cast<uint32_t>(run_bytes);
    op->op.offset = offset;
    ring_->Queue(&op->op);
    job_.blocks_restored.fetch_add(end - b);
  }
  slot->verify_next = end;
  if (end == slot->nblocks) {
    DP420_ASSERT(ready_.front() == slot);
    ready_.pop_front();
    if (slot->pending == 0) Finish(slot);
  }
  return Status::Ok();
}

void RestoreWorker::Finish(Slot* slot) {
  uint64_t bytes = 0;
  for (uint32_t b = 0; b < slot->nblocks; ++b) bytes += job_.m.BlockLen(slot->first_block + b);
  job_.bytes_done.fetch_add(bytes, std::memory_order_relaxed);
  pool_.Release(slot->buffer);
}

// Starts windows while buffers are free, then checks one piece of a window
// whose reads are back, handing new requests and finished ones to the kernel
// between pieces: the hashing never leaves the device idle.
Status RestoreWorker::Loop() {
  Status first_error;
  for (;;) {
    bool stop = !first_error.ok() || job_.failed.load() || job_.options.control.Canceled();
    while (!stop && next_page_ < job_.pages) {
      auto buffer = pool_.Acquire();
      if (!buffer) break;
      bool started = false;
      first_error = StartWindow(*buffer, &started);
      if (!started) pool_.Release(*buffer);
      if (!first_error.ok()) break;
    }
    unsigned min_complete = 1;
    if (!stop && first_error.ok() && !ready_.empty()) {
      DP420_RETURN_IF_ERROR(ring_->Submit());
      first_error = VerifySome(ready_.front());
      min_complete = 0;  // only what has finished meanwhile
    } else if (ring_->in_flight() == 0) {
      if (stop || (next_page_ >= job_.pages && ready_.empty())) break;
      continue;
    }
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(min_complete, &done_));
    for (io::IoOp* iop : done_) Complete(static_cast<Op*>(iop->owner), &first_error);
  }
  DP420_RETURN_IF_ERROR(first_error);
  if (job_.options.control.Canceled()) return Status::Canceled("restore canceled");
  return Status::Ok();
}

// A finished read or write: of a window, or of a line (whose waiting windows
// then move on).
void RestoreWorker::Complete(Op* op, Status* first_error) {
  const io::IoOp& iop = op->op;
  Status s;
  if (iop.result != 0) {
    s = iop.kind == io::IoOp::kRead
            ? io::IoOpStatus(iop, "packs/ (snapshot " + job_.m.snapshot_id + ")")
            : io::IoOpStatus(iop, job_.options.target_path);
    if (iop.kind == io::IoOp::kRead) s = Status::Corruption(s.message());
  } else if (iop.kind == io::IoOp::kWrite) {
    job_.bytes_written.fetch_add(iop.len, std::memory_order_relaxed);
    CrashPoint("restore-writing");
  }
  if (first_error->ok() && !s.ok()) *first_error = s;
  Slot* slot = op->slot;
  int line_index = op->line;
  free_ops_.push_back(op);
  if (slot) {
    Step(slot, first_error);
    return;
  }
  Line& line = lines_[line_index];
  DP420_ASSERT(line.reading);
  line.reading = false;
  for (Slot* waiter : line.waiters) Step(waiter, first_error);
  line.waiters.clear();
  FreeDoneLines();
}

// One of the window's reads or writes (or a line it waits for) is done.
void RestoreWorker::Step(Slot* slot, Status* first_error) {
  DP420_ASSERT(slot->pending > 0);
  if (--slot->pending > 0) return;
  if (!slot->writing) {
    if (first_error->ok()) OnReadsDone(slot);
  } else if (slot->verify_next == slot->nblocks) {
    Finish(slot);
  }
}

// Checks the whole table before anything is written, as verify does: every
// page against its SHA-256 (TableReader), every leaf entry's shape for its
// block, and checksum_sha256 recomputed from the blocks' digests. A table
// that does not match its manifest never reaches the target.
Status CheckTable(RestoreJob& job) {
  TableReader table(job.repo, job.m);
  EntryChecker checker;
  VolumeChecksum volume_sha;
  const std::string damaged = "snapshot " + job.m.snapshot_id + " is damaged: ";
  for (uint64_t p = 0; p < job.pages; ++p) {
    uint32_t count = 0;
    auto entries = table.Leaf(p, &count);
    if (!entries.ok()) return Status::Corruption(damaged + entries.status().message());
    for (uint32_t i = 0; i < count; ++i) {
      std::string defect = checker.Defect(job.m, entries.value()[i], p * kPageEntries + i);
      if (!defect.empty()) return Status::Corruption(damaged + defect);
    }
    volume_sha.Add(entries.value(), count);
  }
  if (!ChecksumMatches(job.m, volume_sha.FinishHex())) {
    return Status::Corruption(damaged +
                              "its block table does not match the manifest's checksum_sha256");
  }
  return Status::Ok();
}

Status RunWorkers(RestoreJob& job) {
  std::vector<std::unique_ptr<RestoreWorker>> workers;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::condition_variable all_done;
  unsigned finished = 0;  // guarded by mu
  for (unsigned i = 0; i < job.threads; ++i) {
    workers.push_back(std::make_unique<RestoreWorker>(job, i));
  }
  threads.reserve(workers.size());
  for (auto& w : workers) {
    threads.emplace_back([&job, &mu, &all_done, &finished, worker = w.get()] {
      worker->Run();
      std::lock_guard<std::mutex> lock(mu);
      if (++finished == job.threads) all_done.notify_one();
    });
  }
  // Progress every 50 ms; the restore ends as soon as its last worker does (a small
  // one in a millisecond, not at the next tick).
  const auto& progress = job.options.control.progress;
  std::unique_lock<std::mutex> lock(mu);
  while (!all_done.wait_for(lock, std::chrono::milliseconds(50),
                            [&] { return finished == job.threads; })) {
    if (progress) progress({"restore", job.bytes_done.load(), job.m.volume_size});
  }
  lock.unlock();
  if (progress) progress({"restore", job.bytes_done.load(), job.m.volume_size});
  for (auto& t : threads) t.join();
  return job.error;
}

}  // namespace

Result<RestoreResult> RunRestore(const Repository& repo, const RestoreOptions& o) {
  if (o.read_through_bytes > kReadThroughBytesMax) {
    return Status::InvalidArgument("read_through is " + std::to_string(o.read_through_bytes) +
                                   " bytes; at most " + std::to_string(kReadThroughBytesMax));
  }
  auto start = Clock::now();
  // Shared: prune deletes no pack or relocation file while this restore runs.
  DP420_ASSIGN_OR_RETURN(VolumeLock repo_lock, repo.LockRepository(false));
  RestoreJob job(repo, o);
  DP420_ASSIGN_OR_RETURN(job.m, repo.FindSnapshot(o.volume, o.snapshot));
  DP420_ASSIGN_OR_RETURN(job.threads, ResolveThreads(o.threads, job.m.block_size));
  job.pages = DivCeil(job.m.blocks_total, kPageEntries);
  SizeBuffers(job);
  DP420_RETURN_IF_ERROR(CheckTable(job));
  // On any error below, job.target's destructor drops the unfinished file.
  DP420_ASSIGN_OR_RETURN(job.target,
                         RestoreTarget::Open(o.target_path, job.m.volume_size, o.force));
  DP420_RETURN_IF_ERROR(RunWorkers(job));
  if (job.blocks_restored.load() + job.blocks_zero.load() != job.m.blocks_total) {
    return Status::Internal("restore of snapshot " + job.m.snapshot_id + " wrote " +
                            std::to_string(job.blocks_restored.load() + job.blocks_zero.load()) +
                            " of " + std::to_string(job.m.blocks_total) + " blocks");
  }
  DP420_RETURN_IF_ERROR(job.target->Commit());
  RestoreResult r;
  r.manifest = job.m;
  r.bytes_written = job.bytes_written.load();
  r.blocks_restored = job.blocks_restored.load();
  r.blocks_zero = job.blocks_zero.load();
  r.pack_reads = job.pack_reads.load();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.control.progress) o.control.progress({"restore", job.m.volume_size, job.m.volume_size});
  return r;
}

}  // namespace dp420
