#include "engine/core/restore.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/core/table.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

using Clock = std::chrono::steady_clock;

struct RestoreJob {
  const Repository& repo;
  const RestoreOptions& options;
  Manifest m;
  unsigned threads = 1;
  uint64_t pages = 0;
  uint32_t extent_bytes = 0;
  uint32_t blocks_per_extent = 0;
  bool block_device = false;
  io::File target_direct;
  io::File target_buffered;
  uint32_t target_align = 1;
  std::mutex mu;
  Status error;
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> blocks_restored{0};
  std::atomic<uint64_t> blocks_zero{0};

  RestoreJob(const Repository& r, const RestoreOptions& o) : repo(r), options(o) {}
  uint32_t BlockLen(uint64_t block) const {
    uint64_t left = m.volume_size - block * m.block_size;
    return static_cast<uint32_t>(left < m.block_size ? left : m.block_size);
  }
  void Fail(Status s) {
    std::lock_guard lock(mu);
    if (error.ok()) error = std::move(s);
    failed.store(true);
  }
};

// One restore worker: its ring and buffers, leaf pages w, w+N, ...
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
    uint32_t pending = 0;
    bool writing = false;
    Entry entries[kPageEntries];
  };
  struct Op {
    io::IoOp op;
    Slot* slot = nullptr;
  };

  Status Setup();
  Status Loop();
  Status StartExtent(unsigned buffer, bool* started);
  Status OnReadsDone(Slot* slot);
  Status ZeroRange(uint64_t offset, uint64_t len);
  Result<int> PackFd(uint32_t pack_id);
  Op* NewOp(Slot* slot);
  void Finish(Slot* slot);

  RestoreJob& job_;
  unsigned id_;
  TableReader table_;
  io::BufferPool pool_;               // declared before the ring: destroyed after it
  std::unique_ptr<io::Ring> ring_;
  std::vector<Slot> slots_;
  std::vector<Op> ops_;
  std::vector<Op*> free_ops_;
  std::map<uint32_t, io::File> packs_;
  unsigned depth_ = 0;
  uint64_t next_page_ = 0;
  uint64_t next_block_ = 0;
  std::vector<io::IoOp*> done_;
};

Status RestoreWorker::Setup() {
  uint64_t per_worker = kInFlightBytes / job_.threads;
  depth_ = static_cast<unsigned>(std::max<uint64_t>(4, per_worker / job_.extent_bytes));
  // At most one read and one write per block of every buffer are in flight;
  // the ring has room for all of them.
  ops_.resize(size_t{depth_} * job_.blocks_per_extent * 2);
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = unsigned(ops_.size())}));
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(job_.extent_bytes, depth_));
  (void)pool_.Register(*ring_);  // unregistered I/O works too (RLIMIT_MEMLOCK)
  slots_.resize(depth_);
  for (auto& op : ops_) free_ops_.push_back(&op);
  next_page_ = id_;
  next_block_ = next_page_ * kPageEntries;
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
  ++slot->pending;
  return op;
}

// Takes the next extent of this worker's stripe and queues the pack reads of
// its stored blocks (adjacent records in one pack become one read).
Status RestoreWorker::StartExtent(unsigned buffer, bool* started) {
  *started = false;
  if (next_page_ >= job_.pages) return Status::Ok();
  uint64_t page = next_page_;
  uint32_t count = 0;
  DP420_ASSIGN_OR_RETURN(const Entry* entries, table_.Leaf(page, &count));
  uint64_t page_end = page * kPageEntries + count;
  Slot& slot = slots_[buffer];
  slot.buffer = buffer;
  slot.first_block = next_block_;
  slot.nblocks = static_cast<uint32_t>(
      std::min<uint64_t>(job_.blocks_per_extent, page_end - next_block_));
  slot.pending = 0;
  slot.writing = false;
  std::memcpy(slot.entries, entries + (next_block_ - page * kPageEntries),
              slot.nblocks * sizeof(Entry));
  next_block_ += slot.nblocks;
  if (next_block_ >= page_end) {
    next_page_ += job_.threads;
    next_block_ = next_page_ * kPageEntries;
  }
  *started = true;
  uint8_t* base = pool_.data(buffer);
  Op* open = nullptr;
  for (uint32_t b = 0; b < slot.nblocks; ++b) {
    const ObjRef& ref = slot.entries[b].ref;
    if (!ref.stored()) continue;
    uint32_t len = job_.BlockLen(slot.first_block + b);
    if (ref.stored_len != len || ref.flags & (kObjZstd | kObjAesGcm)) {
      return Status::Corruption("snapshot " + job_.m.snapshot_id + ": block " +
                                std::to_string(slot.first_block + b) +
                                " has a table entry of the wrong size or kind");
    }
    DP420_ASSIGN_OR_RETURN(int fd, PackFd(ref.pack_id));
    uint8_t* dst = base + uint64_t{b} * job_.m.block_size;
    uint32_t padded = static_cast<uint32_t>(RoundUp(len, kRecordAlign));
    if (open && open->op.fd == fd && open->op.buf + open->op.len == dst &&
        open->op.offset + open->op.len == ref.offset_bytes()) {
      open->op.len += padded;
      continue;
    }
    if (open) ring_->Queue(&open->op);
    open = NewOp(&slot);
    open->op.kind = io::IoOp::kRead;
    open->op.fd = fd;
    open->op.buf = dst;
    open->op.buf_index = pool_.registered() ? int(buffer) : -1;
    open->op.len = padded;
    open->op.offset = ref.offset_bytes();
  }
  if (open) ring_->Queue(&open->op);
  if (slot.pending == 0) return OnReadsDone(&slot);
  return Status::Ok();
}

Status RestoreWorker::ZeroRange(uint64_t offset, uint64_t len) {
  if (!job_.block_device) return Status::Ok();  // a fresh sparse file is already zero
  if (fallocate(job_.target_buffered.fd(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) {
    return Status::Ok();
  }
  std::vector<uint8_t> zeros(std::min<uint64_t>(len, 1 << 20), 0);
  for (uint64_t done = 0; done < len;) {
    uint64_t n = std::min<uint64_t>(zeros.size(), len - done);
    DP420_RETURN_IF_ERROR(job_.target_buffered.WriteAt(offset + done, zeros.data(), n));
    done += n;
  }
  return Status::Ok();
}

// Every read of the extent is back: check each block, then write runs of
// stored blocks to the target and zero runs of zero blocks.
Status RestoreWorker::OnReadsDone(Slot* slot) {
  uint8_t* base = pool_.data(slot->buffer);
  const uint32_t bs = job_.m.block_size;
  slot->writing = true;
  uint32_t b = 0;
  while (b < slot->nblocks) {
    bool stored = slot->entries[b].ref.stored();
    uint32_t end = b;
    uint64_t run_bytes = 0;
    while (end < slot->nblocks && slot->entries[end].ref.stored() == stored) {
      uint64_t block = slot->first_block + end;
      uint32_t len = job_.BlockLen(block);
      if (stored) {
        uint8_t digest[32];
        simd::Sha256(base + uint64_t{end} * bs, len, digest);
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
      DP420_RETURN_IF_ERROR(ZeroRange(offset, run_bytes));
      job_.blocks_zero.fetch_add(end - b);
    } else {
      bool aligned = run_bytes % job_.target_align == 0;
      Op* op = NewOp(slot);
      op->op.kind = io::IoOp::kWrite;
      op->op.fd = aligned ? job_.target_direct.fd() : job_.target_buffered.fd();
      op->op.buf = base + uint64_t{b} * bs;
      op->op.buf_index = pool_.registered() ? int(slot->buffer) : -1;
      op->op.len = static_cast<uint32_t>(run_bytes);
      op->op.offset = offset;
      ring_->Queue(&op->op);
      job_.blocks_restored.fetch_add(end - b);
    }
    b = end;
  }
  if (slot->pending == 0) Finish(slot);
  return Status::Ok();
}

void RestoreWorker::Finish(Slot* slot) {
  uint64_t bytes = 0;
  for (uint32_t b = 0; b < slot->nblocks; ++b) bytes += job_.BlockLen(slot->first_block + b);
  job_.bytes_done.fetch_add(bytes, std::memory_order_relaxed);
  pool_.Release(slot->buffer);
}

Status RestoreWorker::Loop() {
  Status first_error;
  for (;;) {
    bool stop = !first_error.ok() || job_.failed.load() || job_.options.control.Canceled();
    while (!stop && next_page_ < job_.pages) {
      auto buffer = pool_.Acquire();
      if (!buffer) break;
      bool started = false;
      first_error = StartExtent(*buffer, &started);
      if (!started) pool_.Release(*buffer);
      if (!first_error.ok()) break;
    }
    if (ring_->in_flight() == 0) {
      if (stop || next_page_ >= job_.pages) break;
      continue;
    }
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* iop : done_) {
      Op* op = static_cast<Op*>(iop->owner);
      Slot* slot = op->slot;
      Status s;
      if (iop->result != 0) {
        s = iop->kind == io::IoOp::kRead
                ? io::IoOpStatus(*iop, "packs/ (snapshot " + job_.m.snapshot_id + ")")
                : io::IoOpStatus(*iop, job_.options.target_path);
        if (iop->kind == io::IoOp::kRead) s = Status::Corruption(s.message());
      } else if (iop->kind == io::IoOp::kWrite) {
        job_.bytes_written.fetch_add(iop->len, std::memory_order_relaxed);
      }
      free_ops_.push_back(op);
      --slot->pending;
      if (first_error.ok() && !s.ok()) first_error = s;
      if (slot->pending == 0) {
        if (!slot->writing && first_error.ok()) {
          s = OnReadsDone(slot);
          if (!s.ok()) first_error = s;
        } else if (slot->writing) {
          Finish(slot);
        }
      }
    }
  }
  DP420_RETURN_IF_ERROR(first_error);
  if (job_.options.control.Canceled()) return Status::Canceled("restore canceled");
  return Status::Ok();
}

// Recomputes checksum_sha256 from the table before anything is written, so a
// table that does not match its manifest never reaches the target.
Status CheckTable(RestoreJob& job) {
  TableReader table(job.repo, job.m);
  simd::Sha256Stream sha;
  for (uint64_t p = 0; p < job.pages; ++p) {
    uint32_t count = 0;
    auto entries = table.Leaf(p, &count);
    if (!entries.ok()) {
      return Status::Corruption("snapshot " + job.m.snapshot_id + " is damaged: " +
                                entries.status().message());
    }
    for (uint32_t i = 0; i < count; ++i) sha.Update(entries.value()[i].ref.sha256, 32);
  }
  uint8_t digest[32];
  sha.Final(digest);
  if (simd::ToHex(digest, 32) != job.m.checksum_sha256) {
    return Status::Corruption("snapshot " + job.m.snapshot_id +
                              " is damaged: its block table does not match the manifest's "
                              "checksum_sha256");
  }
  return Status::Ok();
}

Status OpenTarget(RestoreJob& job, std::string* temp_path) {
  const std::string& target = job.options.target_path;
  struct stat st;
  bool exists = stat(target.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument(target + " is a directory; give a file or block device");
  }
  job.block_device = exists && S_ISBLK(st.st_mode);
  if (exists && !job.options.force && (job.block_device || st.st_size > 0)) {
    return Status::Exists(target + (job.block_device ? " is a block device" : " is not empty") +
                          ": restore would overwrite it; pass --force");
  }
  if (job.block_device) {
    DP420_ASSIGN_OR_RETURN(job.target_direct, io::File::OpenWrite(target, O_WRONLY, true));
    DP420_ASSIGN_OR_RETURN(job.target_buffered, io::File::OpenWrite(target, O_WRONLY, false));
    if (job.target_direct.info().size_bytes < job.m.volume_size) {
      return Status::InvalidArgument(
          target + " holds " + std::to_string(job.target_direct.info().size_bytes) +
          " bytes; the snapshot needs " + std::to_string(job.m.volume_size));
    }
  } else {
    *temp_path = target + ".dp420-partial";
    unlink(temp_path->c_str());
    DP420_ASSIGN_OR_RETURN(job.target_direct,
                           io::File::OpenWrite(*temp_path, O_CREAT | O_EXCL | O_WRONLY, true));
    DP420_ASSIGN_OR_RETURN(job.target_buffered, io::File::OpenWrite(*temp_path, O_WRONLY, false));
    DP420_RETURN_IF_ERROR(job.target_buffered.Truncate(job.m.volume_size));
  }
  job.target_align = job.target_direct.direct()
                         ? std::max<uint32_t>(job.target_direct.info().dio_offset_align, 512)
                         : 1;
  return Status::Ok();
}

Status RunWorkers(RestoreJob& job) {
  std::vector<std::unique_ptr<RestoreWorker>> workers;
  std::vector<std::thread> threads;
  std::atomic<unsigned> finished{0};
  for (unsigned i = 0; i < job.threads; ++i) {
    workers.push_back(std::make_unique<RestoreWorker>(job, i));
  }
  for (auto& w : workers) {
    threads.emplace_back([&w, &finished] {
      w->Run();
      finished.fetch_add(1);
    });
  }
  const auto& progress = job.options.control.progress;
  while (finished.load() < job.threads) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (progress) progress({"restore", job.bytes_done.load(), job.m.volume_size});
  }
  for (auto& t : threads) t.join();
  return job.error;
}

}  // namespace

Result<RestoreResult> RunRestore(const Repository& repo, const RestoreOptions& o) {
  auto start = Clock::now();
  RestoreJob job(repo, o);
  DP420_ASSIGN_OR_RETURN(job.m, repo.FindSnapshot(o.volume, o.snapshot));
  job.threads = o.threads ? o.threads : DefaultThreads();
  job.pages = DivCeil(job.m.blocks_total, kPageEntries);
  job.extent_bytes = std::max(job.m.block_size, kMinExtentBytes);
  job.blocks_per_extent = job.extent_bytes / job.m.block_size;
  DP420_RETURN_IF_ERROR(CheckTable(job));
  std::string temp;
  Status s = OpenTarget(job, &temp);
  if (s.ok()) s = RunWorkers(job);
  if (s.ok()) s = job.target_buffered.Sync();
  if (s.ok() && !temp.empty()) {
    if (rename(temp.c_str(), o.target_path.c_str()) != 0) {
      s = PosixError("rename " + temp + " -> " + o.target_path, errno);
    } else {
      std::string dir = o.target_path.substr(0, o.target_path.find_last_of('/'));
      s = io::SyncDir(dir.empty() ? "/" : dir);
      temp.clear();
    }
  }
  if (!s.ok()) {
    if (!temp.empty()) unlink(temp.c_str());
    return s;
  }
  RestoreResult r;
  r.manifest = job.m;
  r.bytes_written = job.bytes_written.load();
  r.blocks_restored = job.blocks_restored.load();
  r.blocks_zero = job.blocks_zero.load();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.control.progress) o.control.progress({"restore", job.m.volume_size, job.m.volume_size});
  return r;
}

}  // namespace dp420
