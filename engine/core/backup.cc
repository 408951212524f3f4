#include "engine/core/backup.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/core/pack.h"
#include "engine/core/table.h"
#include "engine/core/test_hooks.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/random.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

unsigned DefaultThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}

namespace {

using Clock = std::chrono::steady_clock;

// A leaf page being filled by a worker, then handed to the committer.
struct LeafPage {
  uint64_t index = 0;
  uint32_t count = 0;      // entries in this page
  uint32_t remaining = 0;  // blocks not yet hashed
  Entry entries[kPageEntries];
  Entry parent[kPageEntries];
  uint32_t parent_count = 0;
};

// Hands leaf pages from workers to the committer in volume order. Workers
// never block while holding unfinished pages: before reading a new page they
// wait for room (page < next + window), which keeps memory bounded and cannot
// deadlock, because the page the committer needs next is always in room.
class PageQueue {
 public:
  explicit PageQueue(uint64_t window) : window_(window) {}
  void Put(std::unique_ptr<LeafPage> page) {
    std::lock_guard lock(mu_);
    ready_.emplace(page->index, std::move(page));
    cv_get_.notify_all();
  }
  bool HasRoom(uint64_t page_index) {
    std::lock_guard lock(mu_);
    return page_index < next_ + window_;
  }
  // Blocks until `page_index` is in room; false when the job was aborted.
  bool WaitForRoom(uint64_t page_index) {
    std::unique_lock lock(mu_);
    cv_put_.wait(lock, [&] { return aborted_ || page_index < next_ + window_; });
    return !aborted_;
  }
  // Waits up to `timeout` for the next page in order; null on timeout/abort.
  std::unique_ptr<LeafPage> Take(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_get_.wait_for(lock, timeout, [&] { return aborted_ || ready_.count(next_); });
    auto it = ready_.find(next_);
    if (aborted_ || it == ready_.end()) return nullptr;
    auto page = std::move(it->second);
    ready_.erase(it);
    ++next_;
    cv_put_.notify_all();
    return page;
  }
  void Abort() {
    std::lock_guard lock(mu_);
    aborted_ = true;
    cv_put_.notify_all();
    cv_get_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_put_, cv_get_;
  std::map<uint64_t, std::unique_ptr<LeafPage>> ready_;
  uint64_t next_ = 0;
  uint64_t window_;
  bool aborted_ = false;
};

struct Geometry {
  uint64_t volume_size = 0;
  uint32_t block_size = 0;
  uint64_t blocks = 0;
  uint64_t pages = 0;            // leaf pages holding blocks (0 for an empty volume)
  uint32_t extent_bytes = 0;     // one read request
  uint32_t blocks_per_extent = 0;
  uint32_t BlockLen(uint64_t block) const {
    uint64_t start = block * block_size;
    uint64_t left = volume_size - start;
    return static_cast<uint32_t>(left < block_size ? left : block_size);
  }
};

// State shared by the workers and the committer of one backup.
struct Job {
  const Repository& repo;
  const BackupOptions& options;
  Geometry geo;
  unsigned threads = 1;
  const Manifest* parent = nullptr;
  io::File source_direct;    // O_DIRECT when possible
  io::File source_buffered;  // for an unaligned tail
  uint32_t source_align = 1;
  Entry zero_full{};         // the entry of an all-zero block of full length
  Entry zero_tail{};         // ... and of the short last block
  PageQueue queue;
  std::mutex mu;             // guards error, journal
  Status error;
  BackupJournal journal;
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> blocks_written{0};
  std::atomic<bool> registered{true};

  Job(const Repository& r, const BackupOptions& o, uint64_t window)
      : repo(r), options(o), queue(window) {}

  void Fail(Status s) {
    {
      std::lock_guard lock(mu);
      if (error.ok()) error = std::move(s);
    }
    failed.store(true);
    queue.Abort();
  }
  bool Stopped() const { return failed.load(std::memory_order_relaxed); }

  Result<PackWriter> NewPack(bool direct) {
    return PackWriter::Create(repo.PacksDir(), repo.repo_id(), direct, [&](uint32_t id) {
      std::lock_guard lock(mu);
      return journal.AddPack(id);
    });
  }
  const Entry& ZeroEntry(uint32_t len) const {
    return len == geo.block_size ? zero_full : zero_tail;
  }
};

struct WorkerStats {
  uint64_t blocks_changed = 0;
  uint64_t blocks_zero = 0;
  uint64_t blocks_stored = 0;
  uint64_t bytes_written = 0;
};

// One worker: its ring, its buffers, its stripe of leaf pages (w, w+N, ...)
// and its own pack stream. Nothing here is shared on the hot path.
class Worker {
 public:
  Worker(Job& job, unsigned id) : job_(job), id_(id) {}
  void Run();
  WorkerStats stats;

 private:
  struct ReadSlot {
    io::IoOp op;
    unsigned buffer = 0;
    uint64_t first_block = 0;
    uint32_t nblocks = 0;
    uint32_t pending_writes = 0;
    LeafPage* page = nullptr;
  };
  struct PackSlot {
    PackWriter writer;
    uint32_t pending = 0;
  };
  struct WriteSlot {
    io::IoOp op;
    ReadSlot* read = nullptr;
    PackSlot* pack = nullptr;
    uint32_t nblocks = 0;
  };
  enum Tag : uint64_t { kTagRead = 1, kTagWrite = 2 };

  Status Setup();
  Status Loop();
  bool NextExtent(uint64_t* first_block, uint32_t* nblocks);
  Status StartPage(uint64_t page_index);
  Status QueueRead(unsigned buffer);
  unsigned Fill(Status* first_error, bool may_block);
  Status OnRead(ReadSlot* slot);
  Status OnWrite(WriteSlot* w);
  Status StoreBlock(ReadSlot* slot, uint32_t block_in_extent, uint32_t len, Entry* entry,
                    WriteSlot** open_write);
  Status EnsurePack(uint32_t len);
  Status FinishClosedPacks(bool all);
  void ReleaseRead(ReadSlot* slot);

  Job& job_;
  unsigned id_;
  // The pool is declared before the ring so the ring (which waits for its
  // in-flight ops when destroyed) goes first and no op outlives its buffer.
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<TableReader> parent_;
  std::vector<ReadSlot> reads_;
  std::vector<WriteSlot> writes_;
  std::vector<WriteSlot*> free_writes_;
  std::deque<std::unique_ptr<PackSlot>> packs_;  // back() is the open one
  std::map<uint64_t, std::unique_ptr<LeafPage>> open_pages_;
  unsigned queue_depth_ = 0;
  unsigned reads_in_flight_ = 0;
  bool fixed_source_ = false;
  uint64_t next_page_ = 0;
  uint64_t next_block_ = 0;      // next block to read within next_page_
  std::vector<io::IoOp*> done_;
};

Status Worker::Setup() {
  const Geometry& g = job_.geo;
  uint64_t per_worker = kInFlightBytes / job_.threads;
  queue_depth_ = static_cast<unsigned>(std::max<uint64_t>(4, per_worker / g.extent_bytes));
  unsigned buffers = queue_depth_ + queue_depth_ / 2;
  // Every block may need its own write (changed and unchanged blocks
  // alternating), so the ring has room for one read per buffer plus one write
  // per block of every buffer: in-flight ops never exceed its capacity.
  uint32_t max_writes = buffers * g.blocks_per_extent;
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = buffers + max_writes}));
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(g.extent_bytes, buffers));
  if (!pool_.Register(*ring_).ok()) job_.registered.store(false);
  // The source as registered files: index 0 direct, 1 buffered (tail).
  fixed_source_ = ring_->RegisterFiles({job_.source_direct.fd(), job_.source_buffered.fd()}).ok();
  reads_.resize(buffers);
  writes_.resize(max_writes);
  for (auto& w : writes_) free_writes_.push_back(&w);
  if (job_.parent) parent_ = std::make_unique<TableReader>(job_.repo, *job_.parent);
  next_page_ = id_;
  next_block_ = next_page_ * kPageEntries;
  return Status::Ok();
}

bool Worker::NextExtent(uint64_t* first_block, uint32_t* nblocks) {
  const Geometry& g = job_.geo;
  if (next_page_ >= g.pages) return false;
  uint64_t page_end = std::min<uint64_t>((next_page_ + 1) * kPageEntries, g.blocks);
  *first_block = next_block_;
  *nblocks = static_cast<uint32_t>(std::min<uint64_t>(g.blocks_per_extent, page_end - next_block_));
  next_block_ += *nblocks;
  if (next_block_ >= page_end) {
    next_page_ += job_.threads;
    next_block_ = next_page_ * kPageEntries;
  }
  return true;
}

Status Worker::StartPage(uint64_t page_index) {
  auto page = std::make_unique<LeafPage>();
  page->index = page_index;
  uint64_t first = page_index * kPageEntries;
  page->count = static_cast<uint32_t>(std::min<uint64_t>(kPageEntries, job_.geo.blocks - first));
  page->remaining = page->count;
  if (parent_ && page_index < parent_->shape().PagesAt(0) &&
      first < parent_->shape().blocks) {
    uint32_t count = 0;
    DP420_ASSIGN_OR_RETURN(const Entry* entries, parent_->Leaf(page_index, &count));
    std::memcpy(page->parent, entries, count * sizeof(Entry));
    page->parent_count = count;
  }
  open_pages_.emplace(page_index, std::move(page));
  return Status::Ok();
}

Status Worker::QueueRead(unsigned buffer) {
  uint64_t first_block = 0;
  uint32_t nblocks = 0;
  if (!NextExtent(&first_block, &nblocks)) return Status::Ok();
  uint64_t page_index = first_block / kPageEntries;
  if (!open_pages_.count(page_index)) DP420_RETURN_IF_ERROR(StartPage(page_index));
  const Geometry& g = job_.geo;
  ReadSlot& slot = reads_[buffer];
  slot = ReadSlot{};
  slot.buffer = buffer;
  slot.first_block = first_block;
  slot.nblocks = nblocks;
  slot.page = open_pages_[page_index].get();
  uint64_t offset = first_block * g.block_size;
  uint64_t len = std::min<uint64_t>(uint64_t{nblocks} * g.block_size, g.volume_size - offset);
  bool aligned = len % job_.source_align == 0;
  io::IoOp& op = slot.op;
  op.kind = io::IoOp::kRead;
  if (fixed_source_) {
    op.fd = aligned ? 0 : 1;
    op.fixed_file = true;
  } else {
    op.fd = aligned ? job_.source_direct.fd() : job_.source_buffered.fd();
  }
  op.buf = pool_.data(buffer);
  op.buf_index = pool_.registered() ? int(buffer) : -1;
  op.len = static_cast<uint32_t>(len);
  op.offset = offset;
  op.owner = &slot;
  op.tag = kTagRead;
  ring_->Queue(&op);
  ++reads_in_flight_;
  return Status::Ok();
}

Status Worker::EnsurePack(uint32_t len) {
  if (!packs_.empty() && !packs_.back()->writer.Full(RoundUp(len, kRecordAlign))) {
    return Status::Ok();
  }
  auto slot = std::make_unique<PackSlot>();
  DP420_ASSIGN_OR_RETURN(slot->writer, job_.NewPack(true));
  packs_.push_back(std::move(slot));
  return Status::Ok();
}

// Appends a changed block to the open pack, extending `*open_write` when the
// block directly follows the previous one in both the buffer and the pack.
Status Worker::StoreBlock(ReadSlot* slot, uint32_t block_in_extent, uint32_t len, Entry* entry,
                          WriteSlot** open_write) {
  DP420_RETURN_IF_ERROR(EnsurePack(len));
  PackSlot* pack = packs_.back().get();
  uint8_t* data = pool_.data(slot->buffer) + uint64_t{block_in_extent} * job_.geo.block_size;
  uint32_t padded = static_cast<uint32_t>(RoundUp(len, kRecordAlign));
  if (padded != len) std::memset(data + len, 0, padded - len);
  pack->writer.Reserve(len, &entry->ref);
  WriteSlot* w = *open_write;
  if (w && w->pack == pack && w->op.buf + w->op.len == data &&
      w->op.offset + w->op.len == entry->ref.offset_bytes()) {
    w->op.len += padded;
    ++w->nblocks;
    return Status::Ok();
  }
  if (w) ring_->Queue(&w->op);
  DP420_ASSERT(!free_writes_.empty());
  w = free_writes_.back();
  free_writes_.pop_back();
  *w = WriteSlot{};
  w->read = slot;
  w->pack = pack;
  w->nblocks = 1;
  w->op.kind = io::IoOp::kWrite;
  w->op.fd = pack->writer.fd();
  w->op.buf = data;
  w->op.buf_index = pool_.registered() ? int(slot->buffer) : -1;
  w->op.len = padded;
  w->op.offset = entry->ref.offset_bytes();
  w->op.owner = w;
  w->op.tag = kTagWrite;
  ++slot->pending_writes;
  ++pack->pending;
  *open_write = w;
  return Status::Ok();
}

Status Worker::OnRead(ReadSlot* slot) {
  --reads_in_flight_;
  if (slot->op.result != 0) {
    ReleaseRead(slot);
    return io::IoOpStatus(slot->op, job_.options.source_path);
  }
  job_.bytes_read.fetch_add(slot->op.len, std::memory_order_relaxed);
  const Geometry& g = job_.geo;
  const simd::BlockHasher& hasher = job_.repo.hasher();
  LeafPage* page = slot->page;
  uint8_t* base = pool_.data(slot->buffer);
  WriteSlot* open_write = nullptr;
  for (uint32_t b = 0; b < slot->nblocks; ++b) {
    uint64_t block = slot->first_block + b;
    uint32_t len = g.BlockLen(block);
    const uint8_t* data = base + uint64_t{b} * g.block_size;
    uint32_t at = static_cast<uint32_t>(block - page->index * kPageEntries);
    Entry& e = page->entries[at];
    bool zero = simd::IsZero(data, len);
    if (zero) {
      e = job_.ZeroEntry(len);
      ++stats.blocks_zero;
    } else {
      hasher.Hash(data, len).ToBytes(e.id);
    }
    const Entry* old = at < page->parent_count ? &page->parent[at] : nullptr;
    if (old && std::memcmp(old->id, e.id, 16) == 0 &&
        (old->ref.flags & kObjZero) == (zero ? kObjZero : 0)) {
      e.ref = old->ref;  // unchanged: reference the parent's copy, no I/O
      continue;
    }
    if (zero) {
      // A zero block is a change only where the parent had data there.
      if (old) ++stats.blocks_changed;
      continue;
    }
    ++stats.blocks_changed;
    e.ref = ObjRef{};
    simd::Sha256(data, len, e.ref.sha256);
    DP420_RETURN_IF_ERROR(StoreBlock(slot, b, len, &e, &open_write));
    ++stats.blocks_stored;
  }
  if (open_write) ring_->Queue(&open_write->op);
  page->remaining -= slot->nblocks;
  if (page->remaining == 0) {
    auto it = open_pages_.find(page->index);
    std::unique_ptr<LeafPage> done = std::move(it->second);
    open_pages_.erase(it);
    job_.queue.Put(std::move(done));
  }
  if (slot->pending_writes == 0) ReleaseRead(slot);
  return Status::Ok();
}

Status Worker::OnWrite(WriteSlot* w) {
  ReadSlot* slot = w->read;
  PackSlot* pack = w->pack;
  --slot->pending_writes;
  --pack->pending;
  Status s;
  if (w->op.result != 0) {
    s = io::IoOpStatus(w->op, pack->writer.path());
  } else {
    uint64_t total = job_.blocks_written.fetch_add(w->nblocks) + w->nblocks;
    CrashAfterData(total);
  }
  free_writes_.push_back(w);
  if (slot->pending_writes == 0) ReleaseRead(slot);
  return s;
}

void Worker::ReleaseRead(ReadSlot* slot) { pool_.Release(slot->buffer); }

// Closes every pack that is full (all but the open one) or, with `all`, every
// pack, once its writes have completed.
Status Worker::FinishClosedPacks(bool all) {
  while (!packs_.empty() && (all || packs_.size() > 1) && packs_.front()->pending == 0) {
    DP420_RETURN_IF_ERROR(packs_.front()->writer.Finish());
    stats.bytes_written += packs_.front()->writer.final_size();
    packs_.pop_front();
  }
  return Status::Ok();
}

// Queues reads while buffers, depth and the page window allow. Returns the
// number queued; the caller submits. Waits for room in the window only with
// `may_block` and nothing in flight: a caller still holding unprocessed
// completions must never block, since they may complete the page the
// committer needs next.
unsigned Worker::Fill(Status* first_error, bool may_block) {
  unsigned queued = 0;
  bool stop = !first_error->ok() || job_.Stopped() || job_.options.control.Canceled();
  while (!stop && reads_in_flight_ < queue_depth_ && next_page_ < job_.geo.pages) {
    if (!open_pages_.count(next_page_) && !job_.queue.HasRoom(next_page_)) {
      if (!may_block || ring_->in_flight() > 0) break;  // completions first, then room
      if (!job_.queue.WaitForRoom(next_page_)) break;
    }
    auto buffer = pool_.Acquire();
    if (!buffer) break;
    *first_error = QueueRead(*buffer);
    if (!first_error->ok()) break;
    ++queued;
  }
  return queued;
}

Status Worker::Loop() {
  Status first_error;
  for (;;) {
    Fill(&first_error, /*may_block=*/true);
    if (ring_->in_flight() == 0) break;
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* op : done_) {
      Status s = op->tag == kTagRead ? OnRead(static_cast<ReadSlot*>(op->owner))
                                     : OnWrite(static_cast<WriteSlot*>(op->owner));
      if (first_error.ok() && !s.ok()) first_error = s;
      // Refill as soon as a buffer is free, so the device keeps working
      // while this thread hashes the rest of the batch.
      if (Fill(&first_error, /*may_block=*/false) > 0) DP420_RETURN_IF_ERROR(ring_->Submit());
    }
    if (first_error.ok()) first_error = FinishClosedPacks(false);
  }
  DP420_RETURN_IF_ERROR(first_error);
  if (job_.options.control.Canceled()) return Status::Canceled("backup canceled");
  if (job_.Stopped()) return Status::Ok();
  return FinishClosedPacks(true);
}

void Worker::Run() {
  Status s = Setup();
  if (s.ok()) s = Loop();
  if (!s.ok()) {
    for (auto& p : packs_) p->writer.Abandon();
    job_.Fail(s);
  }
}

std::string NewSnapshotId() {
  uint8_t raw[8] = {};
  while (!io::FillRandom(raw, sizeof(raw)).ok()) {
  }
  return simd::ToHex(raw, sizeof(raw));
}

std::string Rfc3339(uint64_t unix_ns) {
  time_t secs = static_cast<time_t>(unix_ns / 1000000000ull);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[64];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, sizeof(buf) - n, ".%06lluZ",
           static_cast<unsigned long long>((unix_ns / 1000) % 1000000));
  return buf;
}

uint64_t NowUnixNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// Chooses the block size and checks it against the parent's chain.
Result<uint32_t> ChooseBlockSize(const BackupOptions& o, const Manifest* parent) {
  uint32_t bs = o.block_size;
  if (bs == 0) return parent ? parent->block_size : kDefaultBlockSize;
  if (bs < kMinBlockSize || bs > kMaxBlockSize || (bs & (bs - 1)) != 0) {
    return Status::InvalidArgument("block size " + std::to_string(bs) +
                                   " must be a power of two from 4096 to 4194304");
  }
  if (parent && parent->block_size != bs) {
    return Status::InvalidArgument(
        "volume '" + o.volume + "' was backed up with block size " +
        std::to_string(parent->block_size) + "; --block-size " + std::to_string(bs) +
        " differs (a chain keeps one block size: use another volume name for a new chain)");
  }
  return bs;
}

// Share of the source that must be cached for backup to read it buffered.
constexpr double kWarmFraction = 0.5;

Status OpenSource(Job& job) {
  const std::string& path = job.options.source_path;
  // Warm input (mostly in the page cache) is read buffered: O_DIRECT would
  // fetch it from the device again.
  bool warm = false;
  {
    DP420_ASSIGN_OR_RETURN(io::File probe, io::File::OpenRead(path, false));
    warm = io::CachedFraction(probe.fd(), probe.info().size_bytes) >= kWarmFraction;
  }
  DP420_ASSIGN_OR_RETURN(job.source_direct, io::File::OpenRead(path, !warm));
  DP420_ASSIGN_OR_RETURN(job.source_buffered, io::File::OpenRead(path, false));
  const io::FileInfo& info = job.source_direct.info();
  job.source_align = job.source_direct.direct() ? std::max<uint32_t>(info.dio_offset_align, 1) : 1;
  return Status::Ok();
}

void PrepareGeometry(Job& job, uint32_t block_size) {
  Geometry& g = job.geo;
  g.volume_size = job.source_direct.info().size_bytes;
  g.block_size = block_size;
  g.blocks = DivCeil(g.volume_size, block_size);
  g.pages = DivCeil(g.blocks, kPageEntries);
  g.extent_bytes = std::max(block_size, kMinExtentBytes);
  g.blocks_per_extent = g.extent_bytes / block_size;
  const simd::BlockHasher& hasher = job.repo.hasher();
  std::vector<uint8_t> zeros(block_size, 0);
  auto make_zero = [&](uint32_t len, Entry* e) {
    *e = Entry{};
    hasher.Hash(zeros.data(), len).ToBytes(e->id);
    simd::Sha256(zeros.data(), len, e->ref.sha256);
    e->ref.stored_len = 0;
    e->ref.flags = kObjZero;
  };
  make_zero(block_size, &job.zero_full);
  make_zero(g.blocks ? g.BlockLen(g.blocks - 1) : 0, &job.zero_tail);
}

// The committer: consumes leaf pages in order, builds the table and the
// volume checksum. Runs on the calling thread while the workers read.
struct Committer {
  Job& job;
  std::unique_ptr<TableReader> parent_reader;
  std::unique_ptr<PackWriter> table_pack;
  simd::Sha256Stream volume_sha;
  uint64_t bytes_written = 0;

  Status WritePage(const uint8_t* bytes, uint32_t len, ObjRef* ref) {
    if (!table_pack) {
      DP420_ASSIGN_OR_RETURN(PackWriter w, job.NewPack(false));
      table_pack = std::make_unique<PackWriter>(std::move(w));
    }
    return table_pack->WriteRecord(bytes, len, ref);
  }

  void Tick(const Clock::time_point& start, Clock::time_point* last) {
    const auto& progress = job.options.control.progress;
    if (!progress) return;
    auto now = Clock::now();
    if (now - *last < std::chrono::milliseconds(200) && now != start) return;
    *last = now;
    progress({"backup", job.bytes_read.load(), job.geo.volume_size});
  }

  Status Consume(TableBuilder* builder) {
    auto start = Clock::now();
    auto last = start;
    Tick(start, &last);
    if (job.geo.pages == 0) return builder->AddLeaf(nullptr, 0);
    for (uint64_t p = 0; p < job.geo.pages;) {
      auto page = job.queue.Take(std::chrono::milliseconds(100));
      Tick(start, &last);
      if (!page) {
        if (job.Stopped()) return Status::Ok();
        continue;
      }
      DP420_ASSERT(page->index == p);
      for (uint32_t i = 0; i < page->count; ++i) volume_sha.Update(page->entries[i].ref.sha256, 32);
      DP420_RETURN_IF_ERROR(builder->AddLeaf(page->entries, page->count));
      ++p;
    }
    return Status::Ok();
  }
};

Status WriteManifest(const Repository& repo, Manifest* m, bool* renamed) {
  std::string dir = repo.SnapshotsDir(m->volume);
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  std::string text = SealJson(m->ToJson(), &m->seal);
  m->file_name = m->FileName();
  std::string tmp = repo.path() + "/tmp/" + m->snapshot_id + ".manifest.tmp";
  {
    DP420_ASSIGN_OR_RETURN(io::File f,
                           io::File::OpenWrite(tmp, O_CREAT | O_TRUNC | O_WRONLY, false));
    DP420_RETURN_IF_ERROR(f.WriteAt(0, text.data(), text.size()));
    DP420_RETURN_IF_ERROR(f.Sync());
  }
  CrashPoint("before-rename");
  std::string final_path = dir + "/" + m->file_name;
  if (rename(tmp.c_str(), final_path.c_str()) != 0) {
    Status s = PosixError("rename " + tmp + " -> " + final_path, errno);
    unlink(tmp.c_str());
    return s;
  }
  CrashPoint("after-rename");
  // The snapshot is visible now: from here on a failure must not roll back.
  *renamed = true;
  Status synced = io::SyncDir(dir);
  if (!synced.ok()) synced = io::SyncDir(dir);
  if (!synced.ok()) {
    return synced.Prefix("snapshot " + m->snapshot_id + " was written but its directory could "
                         "not be made durable");
  }
  return Status::Ok();
}

Result<BackupResult> Commit(Job& job, Committer& committer, TableBuilder& builder,
                            std::vector<std::unique_ptr<Worker>>& workers, Manifest m) {
  CrashPoint("before-table");
  DP420_ASSIGN_OR_RETURN(m.table_root, builder.Finish());
  if (committer.table_pack) {
    DP420_RETURN_IF_ERROR(committer.table_pack->Finish());
    committer.bytes_written = committer.table_pack->final_size();
  }
  DP420_RETURN_IF_ERROR(io::SyncDir(job.repo.PacksDir()));
  CrashPoint("before-manifest");
  uint8_t checksum[32];
  committer.volume_sha.Final(checksum);
  m.checksum_sha256 = simd::ToHex(checksum, 32);
  for (auto& w : workers) {
    m.blocks_changed += w->stats.blocks_changed;
    m.blocks_zero += w->stats.blocks_zero;
    m.blocks_stored += w->stats.blocks_stored;
    m.bytes_written += w->stats.bytes_written;
  }
  m.bytes_written += committer.bytes_written;
  m.bytes_read = job.bytes_read.load();
  bool renamed = false;
  Status written = WriteManifest(job.repo, &m, &renamed);
  if (renamed) job.journal.Commit();  // referenced now: never delete these packs
  DP420_RETURN_IF_ERROR(written);
  BackupResult r;
  r.manifest = m;
  r.bytes_read = m.bytes_read;
  r.bytes_written = m.bytes_written;
  r.table_pages_written = builder.pages_written();
  r.table_pages_reused = builder.pages_reused();
  r.threads = job.threads;
  r.direct_io = job.source_direct.direct();
  r.registered_buffers = job.registered;
  return r;
}

Result<BackupResult> Backup(const Repository& repo, const BackupOptions& o,
                            const Manifest* parent) {
  auto start = Clock::now();
  unsigned threads = o.threads ? o.threads : DefaultThreads();
  // Room for every page a worker can have in flight, plus slack.
  uint64_t pages_in_flight = kInFlightBytes / (uint64_t{kPageEntries} * kMinBlockSize);
  Job job(repo, o, pages_in_flight + uint64_t{threads} * 4);
  job.threads = threads;
  job.parent = parent;
  DP420_ASSIGN_OR_RETURN(uint32_t block_size, ChooseBlockSize(o, parent));
  DP420_RETURN_IF_ERROR(OpenSource(job));
  PrepareGeometry(job, block_size);

  Manifest m;
  m.repo_id = repo.repo_id_hex();
  m.snapshot_id = NewSnapshotId();
  m.volume = o.volume;
  if (parent) {
    m.parent = parent->snapshot_id;
    m.parent_manifest_sha256 = parent->seal;
    m.sequence = parent->sequence + 1;
  } else {
    m.sequence = 1;
  }
  m.created_unix_ns = NowUnixNs();
  m.created = Rfc3339(m.created_unix_ns);
  m.block_size = block_size;
  m.volume_size = job.geo.volume_size;
  m.blocks_total = job.geo.blocks;
  m.table_levels = TableShape::For(m.blocks_total).levels;
  m.source_path = o.source_path;
  m.source_kind = job.source_direct.info().is_block_device ? "block-device" : "file";
  m.node_topology = o.node_topology;
  m.tool_version = o.tool_version;

  DP420_ASSIGN_OR_RETURN(job.journal, BackupJournal::Start(repo, o.volume, m.snapshot_id));
  Committer committer{job};
  if (parent) committer.parent_reader = std::make_unique<TableReader>(repo, *parent);
  TableBuilder builder(TableShape::For(m.blocks_total), committer.parent_reader.get(),
                       [&](const uint8_t* b, uint32_t len, ObjRef* ref) {
                         return committer.WritePage(b, len, ref);
                       });
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i) workers.push_back(std::make_unique<Worker>(job, i));
  for (auto& w : workers) pool.emplace_back([&w] { w->Run(); });
  Status consumed = committer.Consume(&builder);
  if (!consumed.ok()) job.Fail(consumed);
  for (auto& t : pool) t.join();

  Result<BackupResult> result = job.error;
  if (job.error.ok()) {
    m.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    result = Commit(job, committer, builder, workers, m);
  }
  if (!result.ok()) {
    if (committer.table_pack) committer.table_pack->Abandon();
    job.journal.Rollback();
    return result.status();
  }
  result->seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.control.progress) o.control.progress({"backup", job.geo.volume_size, job.geo.volume_size});
  return result;
}

}  // namespace

Result<BackupResult> RunBackup(const Repository& repo, const BackupOptions& o) {
  if (!ValidVolumeName(o.volume)) {
    return Status::InvalidArgument("invalid volume name '" + o.volume +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -)");
  }
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockVolume(o.volume));
  std::vector<Manifest> chain;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListManifests(o.volume, &chain, &damaged));
  if (!damaged.empty()) {
    return Status::Corruption(damaged.front().status.message() +
                              " — run `dp420 verify` before backing up this volume again");
  }
  const Manifest* parent = chain.empty() ? nullptr : &chain.back();
  return Backup(repo, o, parent);
}

}  // namespace dp420
