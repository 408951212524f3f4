// BufferPool: I/O buffers allocated once at start-up, 2 MiB aligned and backed
// by transparent huge pages (MADV_HUGEPAGE) so the virtio disk can merge large
// O_DIRECT requests, and optionally registered with a Ring (read_fixed /
// write_fixed). The data path never allocates.
//
// Thread safety: none; one pool per worker thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "io/status.h"

namespace dp420::io {

class Ring;

class BufferPool {
 public:
  BufferPool() = default;
  ~BufferPool();
  BufferPool(BufferPool&&) noexcept;
  BufferPool& operator=(BufferPool&&) noexcept;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // `count` buffers of `buffer_bytes` each (a multiple of 4096), from one
  // mmap'ed region aligned to 2 MiB. kNoMemory when the mapping fails.
  static Result<BufferPool> Create(size_t buffer_bytes, unsigned count);

  // Registers every buffer with `ring` (io_uring_register_buffers). On ENOMEM
  // returns kNoMemory with a message that names RLIMIT_MEMLOCK (registered
  // memory counts against it: 8 MiB for non-root on the build machines) so the
  // caller can fall back to unregistered I/O. registered() tells which.
  Status Register(Ring& ring);
  bool registered() const { return registered_; }

  unsigned count() const { return count_; }
  size_t buffer_bytes() const { return buffer_bytes_; }
  uint8_t* data(unsigned index) const;

  // Free-list of buffer indices. Acquire returns nullopt when all are in use.
  std::optional<unsigned> Acquire();
  void Release(unsigned index);
  unsigned available() const { return static_cast<unsigned>(free_.size()); }

 private:
  uint8_t* base_ = nullptr;
  size_t map_bytes_ = 0;
  size_t buffer_bytes_ = 0;
  unsigned count_ = 0;
  bool registered_ = false;
  std::vector<unsigned> free_;
  std::vector<uint8_t> in_use_;  // DP420_ASSERT against double release
};

}  // namespace dp420::io
