#include "io/buffer_pool.h"

#include <sys/mman.h>
#include <sys/uio.h>

#include <cerrno>
#include <utility>

#include "io/assert.h"
#include "io/ring.h"

namespace dp420::io {

namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kHugePageBytes = 2 * 1024 * 1024;

size_t RoundUp(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Maps `bytes` (a multiple of 2 MiB) at a 2 MiB-aligned address: over-map by
// one huge page, then unmap the unaligned head and the tail.
uint8_t* MapAligned(size_t bytes) {
  size_t map_bytes = bytes + kHugePageBytes;
  void* raw = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = RoundUp(start, kHugePageBytes);
  size_t head_bytes = aligned - start;
  if (head_bytes > 0) munmap(raw, head_bytes);
  size_t tail_bytes = map_bytes - head_bytes - bytes;
  if (tail_bytes > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail_bytes);
  return reinterpret_cast<uint8_t*>(aligned);
}

// Touches every page so the data path never takes a page fault.
void Prefault(uint8_t* base, size_t bytes) {
  for (size_t offset = 0; offset < bytes; offset += kPageBytes) {
    *reinterpret_cast<volatile uint8_t*>(base + offset) = 0;
  }
}

}  // namespace

BufferPool::~BufferPool() {
  if (base_ != nullptr) munmap(base_, map_bytes_);
}

BufferPool::BufferPool(BufferPool&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      buffer_bytes_(std::exchange(other.buffer_bytes_, 0)),
      count_(std::exchange(other.count_, 0)),
      registered_(std::exchange(other.registered_, false)),
      free_(std::move(other.free_)),
      in_use_(std::move(other.in_use_)) {}

BufferPool& BufferPool::operator=(BufferPool&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, map_bytes_);
    base_ = std::exchange(other.base_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    buffer_bytes_ = std::exchange(other.buffer_bytes_, 0);
    count_ = std::exchange(other.count_, 0);
    registered_ = std::exchange(other.registered_, false);
    free_ = std::move(other.free_);
    in_use_ = std::move(other.in_use_);
  }
  return *this;
}

Result<BufferPool> BufferPool::Create(size_t buffer_bytes, unsigned count) {
  if (buffer_bytes == 0 || buffer_bytes % kPageBytes != 0 || count == 0) {
    return Status::InvalidArgument("BufferPool: " + std::to_string(count) + " buffers of " +
                                   std::to_string(buffer_bytes) +
                                   " bytes (need count > 0, a positive multiple of 4096)");
  }
  if (buffer_bytes > (SIZE_MAX - 2 * kHugePageBytes) / count) {
    return Status::InvalidArgument("BufferPool: size overflows");
  }
  size_t map_bytes = RoundUp(buffer_bytes * count, kHugePageBytes);
  uint8_t* base = MapAligned(map_bytes);
  if (base == nullptr) {
    return PosixError("BufferPool: mmap of " + std::to_string(map_bytes) + " bytes", errno);
  }
  DP420_ASSERT(reinterpret_cast<uintptr_t>(base) % kHugePageBytes == 0);
  // Huge pages let the disk merge large O_DIRECT requests; without them the
  // pool still works, so a refusal is not an error.
  (void)madvise(base, map_bytes, MADV_HUGEPAGE);
  Prefault(base, map_bytes);

  BufferPool pool;
  pool.base_ = base;
  pool.map_bytes_ = map_bytes;
  pool.buffer_bytes_ = buffer_bytes;
  pool.count_ = count;
  pool.in_use_.assign(count, 0);
  pool.free_.reserve(count);
  // Reverse order so Acquire() hands out index 0 first.
  for (unsigned i = count; i > 0; --i) pool.free_.push_back(i - 1);
  return pool;
}

Status BufferPool::Register(Ring& ring) {
  DP420_ASSERT(base_ != nullptr);
  DP420_ASSERT(!registered_);
  std::vector<struct iovec> iovs(count_);
  for (unsigned i = 0; i < count_; ++i) {
    iovs[i].iov_base = data(i);
    iovs[i].iov_len = buffer_bytes_;
  }
  Status status = ring.RegisterBuffers(iovs.data(), count_);
  if (!status.ok()) {
    return status.Prefix("registering " + std::to_string(count_) + " buffers of " +
                         std::to_string(buffer_bytes_) + " bytes");
  }
  registered_ = true;
  return Status::Ok();
}

uint8_t* BufferPool::data(unsigned index) const {
  DP420_ASSERT(index < count_);
  return base_ + static_cast<size_t>(index) * buffer_bytes_;
}

std::optional<unsigned> BufferPool::Acquire() {
  if (free_.empty()) return std::nullopt;
  unsigned index = free_.back();
  free_.pop_back();
  DP420_ASSERT(index < count_);
  DP420_ASSERT(in_use_[index] == 0);
  in_use_[index] = 1;
  return index;
}

void BufferPool::Release(unsigned index) {
  DP420_ASSERT(index < count_);
  DP420_ASSERT(in_use_[index] == 1);  // double release
  in_use_[index] = 0;
  free_.push_back(index);
  DP420_ASSERT(free_.size() <= count_);
}

}  // namespace dp420::io
