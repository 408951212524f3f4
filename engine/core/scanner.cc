#include "engine/core/scanner.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "io/assert.h"

namespace dp420 {

ScanGeometry ScanGeometry::For(uint64_t volume_size, uint32_t block_size) {
  ScanGeometry g;
  g.volume_size = volume_size;
  g.block_size = block_size;
  g.blocks = DivCeil(volume_size, block_size);
  g.pages = DivCeil(g.blocks, kPageEntries);
  g.extent_bytes = std::max(block_size, kMinExtentBytes);
  g.blocks_per_extent = g.extent_bytes / block_size;
  return g;
}

// Share of the source that must be cached for backup to read it buffered.
constexpr double kWarmFraction = 0.5;

Result<ScanSource> ScanSource::Open(const std::string& path) {
  ScanSource s;
  // Warm input (mostly in the page cache) is not read with O_DIRECT, which
  // would fetch it from the device again. Never a block device: its page cache
  // can hold blocks older than what a file system mounted on it wrote since
  // (the file system's data writes go around it).
  bool warm = false;
  {
    DP420_ASSIGN_OR_RETURN(io::File probe, io::File::OpenRead(path, false));
    warm = !probe.info().is_block_device &&
           io::CachedFraction(probe.fd(), probe.info().size_bytes) >= kWarmFraction;
  }
  DP420_ASSIGN_OR_RETURN(s.direct, io::File::OpenRead(path, !warm));
  DP420_ASSIGN_OR_RETURN(s.buffered, io::File::OpenRead(path, false));
  s.align = s.direct.direct() ? std::max<uint32_t>(s.direct.info().dio_offset_align, 1) : 1;
  if (warm && !s.block_device() && s.size() > 0) {
    // Unmappable (or too many mappings at once): read it instead.
    Result<io::GuardedMap> mapping = io::GuardedMap::Map(s.buffered.fd(), s.size());
    if (mapping.ok()) {
      s.mapping = std::move(mapping).value();
      s.map = s.mapping.data();
    }
  }
  return s;
}

Status ScanSource::CheckSize(uint64_t offset) const {
  struct stat st;
  if (block_device() || fstat(buffered.fd(), &st) != 0 || uint64_t(st.st_size) >= size()) {
    return Status::Ok();
  }
  std::string at = offset == io::kNoFault ? ""
                                          : " (read at offset " + std::to_string(offset) +
                                                " failed)";
  return Status::IOError("source " + direct.path() + " shrank from " + std::to_string(size()) +
                         " to " + std::to_string(st.st_size) + " bytes while being backed up" +
                         at + "; nothing was committed");
}

Status ScanSource::ReadError(uint64_t offset, const Status& cause) const {
  DP420_RETURN_IF_ERROR(CheckSize(offset));
  if (!cause.ok()) return cause;
  return Status::IOError("source " + direct.path() + ": read error at offset " +
                         std::to_string(offset));
}

Entry ZeroBlockEntry(const simd::BlockHasher& hasher, uint32_t len) {
  std::vector<uint8_t> zeros(len, 0);
  Entry e{};
  hasher.Hash(zeros.data(), len).ToBytes(e.id);
  simd::Sha256(zeros.data(), len, e.ref.sha256);
  e.ref.stored_len = 0;
  e.ref.flags = kObjZero;
  return e;
}

Status Scanner::Setup() {
  const ScanGeometry& g = ctx_.geo;
  uint64_t per_worker = kInFlightBytes / ctx_.threads;
  queue_depth_ = static_cast<unsigned>(std::max<uint64_t>(4, per_worker / g.extent_bytes));
  buffers_ = queue_depth_ + queue_depth_ / 2;
  // One read per buffer plus what the sink may keep in flight per buffer:
  // in-flight ops never exceed the ring's capacity.
  unsigned sink_ops = buffers_ * sink_->OpsPerBuffer(g.blocks_per_extent);
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = buffers_ + sink_ops, .max_file_workers = sink_->FileWorkers()}));
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(g.extent_bytes, buffers_));
  if (!pool_.Register(*ring_).ok()) ctx_.registered.store(false);
  // The source as registered files: index 0 direct, 1 buffered (tail).
  fixed_source_ =
      ring_->RegisterFiles({ctx_.source->direct.fd(), ctx_.source->buffered.fd()}).ok();
  reads_.resize(buffers_);
  Restart(id_);
  return sink_->Setup(*this);
}

void Scanner::Restart(uint64_t page) {
  next_page_ = page;
  next_block_ = next_page_ * kPageEntries;
}

bool Scanner::NextExtent(uint64_t* first_block, uint32_t* nblocks) {
  const ScanGeometry& g = ctx_.geo;
  if (next_page_ >= g.pages) return false;
  uint64_t page_end = std::min<uint64_t>((next_page_ + 1) * kPageEntries, g.blocks);
  *first_block = next_block_;
  *nblocks = static_cast<uint32_t>(std::min<uint64_t>(g.blocks_per_extent, page_end - next_block_));
  next_block_ += *nblocks;
  if (next_block_ >= page_end) Restart(next_page_ + ctx_.threads);
  return true;
}

Status Scanner::StartPage(uint64_t page_index) {
  auto page = std::make_unique<LeafPage>();
  page->index = page_index;
  uint64_t first = page_index * kPageEntries;
  page->count = static_cast<uint32_t>(std::min<uint64_t>(kPageEntries, ctx_.geo.blocks - first));
  page->remaining = page->count;
  DP420_RETURN_IF_ERROR(sink_->ParentLeaf(page_index, page->parent, &page->parent_count));
  open_pages_.emplace(page_index, std::move(page));
  return Status::Ok();
}

// Takes the next extent of the stripe for `buffer`: fills its ScanRead (the
// op's length and offset included) and opens its page. *out is null at the
// end of the stripe.
Status Scanner::NextRead(unsigned buffer, ScanRead** out) {
  *out = nullptr;
  uint64_t first_block = 0;
  uint32_t nblocks = 0;
  if (!NextExtent(&first_block, &nblocks)) return Status::Ok();
  uint64_t page_index = first_block / kPageEntries;
  if (!open_pages_.count(page_index)) DP420_RETURN_IF_ERROR(StartPage(page_index));
  const ScanGeometry& g = ctx_.geo;
  ScanRead& read = reads_[buffer];
  read = ScanRead{};
  read.buffer = buffer;
  read.first_block = first_block;
  read.nblocks = nblocks;
  read.page = open_pages_[page_index].get();
  read.data = pool_.data(buffer);
  uint64_t offset = first_block * g.block_size;
  read.op.kind = io::IoOp::kRead;
  read.op.len = static_cast<uint32_t>(
      std::min<uint64_t>(uint64_t{nblocks} * g.block_size, g.volume_size - offset));
  read.op.offset = offset;
  read.op.owner = &read;
  read.op.tag = kTagRead;
  *out = &read;
  return Status::Ok();
}

Status Scanner::QueueRead(unsigned buffer) {
  ScanRead* read = nullptr;
  DP420_RETURN_IF_ERROR(NextRead(buffer, &read));
  if (read == nullptr) return Status::Ok();
  io::IoOp& op = read->op;
  bool aligned = op.len % ctx_.source->align == 0;
  if (fixed_source_) {
    op.fd = aligned ? 0 : 1;
    op.fixed_file = true;
  } else {
    op.fd = aligned ? ctx_.source->direct.fd() : ctx_.source->buffered.fd();
  }
  op.buf = read->data;
  op.buf_index = pool_.registered() ? int(buffer) : -1;
  ring_->Queue(&op);
  ++reads_in_flight_;
  return Status::Ok();
}

Status Scanner::MappedRead(unsigned buffer) {
  ScanRead* found = nullptr;
  Status next = NextRead(buffer, &found);
  if (!next.ok() || found == nullptr) {
    pool_.Release(buffer);
    return next;
  }
  ScanRead& read = *found;
  uint64_t offset = read.op.offset;
  uint64_t len = read.op.len;
  // Map the extent's pages in one call rather than one fault per 64 KiB; a
  // range past the end of a file that shrank fails here (EFAULT). A file
  // that shrinks after this call faults while hashing: the guarded mapping
  // turns that into zeros and a recorded fault, checked in OnRead.
  const uint8_t* at = ctx_.source->map + offset;
  uint8_t* page_start = const_cast<uint8_t*>(at - (offset % 4096));
  read.op.result = ring_->InjectedFault(read.op);
  if (read.op.result == 0 &&
      madvise(page_start, len + (offset % 4096), MADV_POPULATE_READ) != 0 &&
      (errno == EFAULT || errno == EIO || errno == EHWPOISON)) {
    read.op.result = -EIO;  // an I/O error, or the file shrank under us
  }
  // As if the ring had completed it: OnRead reports a failed read.
  ++reads_in_flight_;
  uint64_t end_block = read.first_block + read.nblocks;
  DP420_RETURN_IF_ERROR(OnRead(&read));
  // At the end of a leaf page, unmap it: its pages stay in the page cache,
  // and this process's resident set stays at the pages it works on (changed
  // blocks were copied out). Once per page, not per extent: each call costs
  // a TLB flush.
  const ScanGeometry& g = ctx_.geo;
  if (end_block % kPageEntries == 0 || end_block == g.blocks) {
    uint64_t page_offset = (end_block - 1) / kPageEntries * kPageEntries * g.block_size;
    (void)madvise(const_cast<uint8_t*>(ctx_.source->map + page_offset),
                  std::min<uint64_t>(uint64_t{kPageEntries} * g.block_size,
                                     g.volume_size - page_offset),
                  MADV_DONTNEED);
  }
  // The sink's writes or sends for this extent leave now, while the next
  // extent is hashed, not at the next wait.
  return ring_->Submit();
}

Status Scanner::OnRead(ScanRead* read) {
  const auto start = std::chrono::steady_clock::now();
  Status status = ProcessRead(read);
  stats.busy_ns += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count());
  return status;
}

Status Scanner::ProcessRead(ScanRead* read) {
  --reads_in_flight_;
  if (read->op.result != 0) {
    pool_.Release(read->buffer);
    return ctx_.source->ReadError(read->op.offset + read->op.done_bytes,
                                  io::IoOpStatus(read->op, ctx_.source->direct.path()));
  }
  ctx_.bytes_read.fetch_add(read->op.len, std::memory_order_relaxed);
  const ScanGeometry& g = ctx_.geo;
  const simd::BlockHasher& hasher = *ctx_.hasher;
  LeafPage* page = read->page;
  // Blocks are hashed where they are: in the buffer, or in the mapping.
  const uint8_t* source = ctx_.source->map
                              ? ctx_.source->map + read->first_block * g.block_size
                              : read->data;
  // The buffer stays ours until every block is handed over.
  ++read->holds;
  Status status;
  for (uint32_t b = 0; b < read->nblocks && status.ok(); ++b) {
    uint64_t block = read->first_block + b;
    uint32_t len = g.BlockLen(block);
    const uint8_t* data = source + uint64_t{b} * g.block_size;
    uint32_t at = static_cast<uint32_t>(block - page->index * kPageEntries);
    Entry& e = page->entries[at];
    bool zero = simd::IsZero(data, len);
    if (zero) {
      e = ctx_.ZeroEntry(len);
      ++stats.blocks_zero;
    } else {
      hasher.Hash(data, len).ToBytes(e.id);
    }
    const Entry* old = at < page->parent_count ? &page->parent[at] : nullptr;
    if (old && std::memcmp(old->id, e.id, 16) == 0 &&
        (old->ref.flags & kObjZero) == (zero ? kObjZero : 0)) {
      e.ref = old->ref;  // unchanged: reference the parent's copy, no I/O
      page->verdict[at] = kUnchanged;
      continue;
    }
    if (zero) {
      // A zero block is a change only where the parent had data there.
      if (old) ++stats.blocks_changed;
      page->verdict[at] = kZero;
      continue;
    }
    ++stats.blocks_changed;
    page->verdict[at] = kData;
    e.ref = ObjRef{};
    if (data != read->data + uint64_t{b} * g.block_size) {
      // Mapped: the sink writes or sends from the (registered) buffer.
      std::memcpy(read->data + uint64_t{b} * g.block_size, data, len);
      data = read->data + uint64_t{b} * g.block_size;
    }
    simd::Sha256(data, len, e.ref.sha256);
    status = sink_->Changed(*read, b, len, e);
    if (status.ok()) ++stats.blocks_stored;
  }
  if (status.ok() && ctx_.source->map) {
    // Bytes of a page that failed to map read as zeros (io/guarded_map.h):
    // nothing hashed after a fault may reach a snapshot.
    uint64_t fault = ctx_.source->mapping.fault_offset();
    if (fault != io::kNoFault) status = ctx_.source->ReadError(fault, Status::Ok());
  }
  if (status.ok()) status = sink_->ReadDone(*read);
  if (status.ok()) {
    page->remaining -= read->nblocks;
    if (page->remaining == 0) {
      auto it = open_pages_.find(page->index);
      std::unique_ptr<LeafPage> done = std::move(it->second);
      open_pages_.erase(it);
      status = sink_->PageDone(std::move(done));
    }
  }
  Unhold(read);
  return status;
}

void Scanner::Unhold(ScanRead* read) {
  DP420_ASSERT(read->holds > 0);
  if (--read->holds == 0) pool_.Release(read->buffer);
}

// Queues reads while buffers, depth and the page window allow. Returns the
// number queued; the caller submits. Waits for room in the window only with
// `may_block` and nothing in flight: a caller still holding unprocessed
// completions must never block, since they may complete the page the
// committer needs next.
unsigned Scanner::Fill(Status* first_error, bool may_block) {
  unsigned queued = 0;
  bool stop = !first_error->ok() || ctx_.Stopped();
  while (!stop && reads_in_flight_ < queue_depth_ && next_page_ < ctx_.geo.pages) {
    if (ctx_.window && !open_pages_.count(next_page_) && !ctx_.window->HasRoom(next_page_)) {
      if (!may_block || ring_->in_flight() > 0) break;  // completions first, then room
      if (!ctx_.window->WaitForRoom(next_page_)) break;
    }
    auto buffer = pool_.Acquire();
    if (!buffer) break;
    if (ctx_.source->map) {
      // No I/O: the extent is processed now (the buffer is released here
      // unless changed blocks went to the sink).
      *first_error = MappedRead(*buffer);
      if (!first_error->ok()) break;
      continue;
    }
    *first_error = QueueRead(*buffer);
    if (!first_error->ok()) {
      pool_.Release(*buffer);
      break;
    }
    ++queued;
  }
  return queued;
}

// After a lost connection: waits for every op in flight (reads are dropped,
// the sink's ops finish with errors), and forgets the unfinished pages.
Status Scanner::Drain() {
  while (ring_->in_flight() > 0) {
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* op : done_) {
      if (op->tag == kTagRead) {
        --reads_in_flight_;
        pool_.Release(static_cast<ScanRead*>(op->owner)->buffer);
      } else {
        (void)sink_->OnOp(op);
      }
    }
  }
  open_pages_.clear();
  return Status::Ok();
}

Status Scanner::Loop() {
  Status first_error;
  for (;;) {
    if (first_error.code() == Code::kNetwork && !ctx_.Stopped()) {
      DP420_RETURN_IF_ERROR(Drain());
      DP420_ASSIGN_OR_RETURN(uint64_t page, sink_->Recover(first_error));
      DP420_ASSERT(page >= ctx_.geo.pages || page % ctx_.threads == id_);
      Restart(page);
      first_error = Status::Ok();
    }
    Fill(&first_error, /*may_block=*/true);
    bool read_all = next_page_ >= ctx_.geo.pages && reads_in_flight_ == 0 && open_pages_.empty();
    if (first_error.ok() && !ctx_.Stopped() && read_all) {
      Result<bool> finished = sink_->Finish();
      if (!finished.ok()) {
        first_error = finished.status();
        continue;
      }
      if (*finished) {
        DP420_ASSERT(ring_->in_flight() == 0);
        break;
      }
      DP420_ASSERT(ring_->in_flight() > 0);
    }
    if (ring_->in_flight() == 0) {
      if (first_error.code() == Code::kNetwork && !ctx_.Stopped()) continue;
      break;
    }
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* op : done_) {
      Status s = op->tag == kTagRead ? OnRead(static_cast<ScanRead*>(op->owner))
                                     : sink_->OnOp(op);
      if (first_error.ok() && !s.ok()) first_error = s;
      // Refill as soon as a buffer is free, so the device keeps working
      // while this thread hashes the rest of the batch; the sink's new ops
      // (the next send) go out as soon, so the socket does not run dry.
      bool queued = Fill(&first_error, /*may_block=*/false) > 0;
      if (std::exchange(sink_queued_, false) || queued) DP420_RETURN_IF_ERROR(ring_->Submit());
    }
    if (first_error.ok()) first_error = sink_->Turn();
  }
  if (!first_error.ok() || ctx_.Stopped()) {
    sink_->Abort();
    DP420_RETURN_IF_ERROR(Drain());
  }
  DP420_RETURN_IF_ERROR(first_error);
  if (ctx_.control.Canceled()) return Status::Canceled("backup canceled");
  return Status::Ok();
}

Status Scanner::Run() {
  DP420_RETURN_IF_ERROR(Setup());
  return Loop();
}

}  // namespace dp420
