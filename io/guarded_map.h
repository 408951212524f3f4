// GuardedMap: a read-only shared mapping of a file that another process may
// truncate, or whose pages may fail to read, while this one reads it.
//
// A plain MAP_SHARED mapping turns a page past the file's new end (or a page
// the kernel cannot read) into SIGBUS, which kills the process. A GuardedMap
// registers its range with a process-wide SIGBUS handler (installed on first
// use, chaining to the handler that was there before). A fault inside a
// registered range replaces the mapping from the faulting page to the end of
// the range with anonymous zero pages and records the fault's offset; the
// faulting instruction then runs again and reads zeros. Readers call
// fault_offset() after using the bytes: any recorded fault means the bytes
// read may be wrong, and the caller must fail (a backup reports the offset).
// Faults outside every registered range go to the previous handler (by
// default: the process dies, as it would without dp420).
//
// The handler calls only mmap(2) and lock-free atomics. An application that
// installs its own SIGBUS handler after dp420 maps a file takes this
// protection away.
//
// Thread safety: any number of threads may read a GuardedMap and call
// fault_offset() at once; construction, move and destruction need exclusive
// access. At most kMaxGuardedMaps mappings exist at once (Map fails beyond).
#pragma once

#include <cstdint>

#include "io/status.h"

namespace dp420::io {

inline constexpr unsigned kMaxGuardedMaps = 64;
inline constexpr uint64_t kNoFault = UINT64_MAX;

class GuardedMap {
 public:
  // Maps `size` (> 0) bytes of `fd` read-only and shared.
  static Result<GuardedMap> Map(int fd, uint64_t size);

  GuardedMap() = default;
  GuardedMap(GuardedMap&& o) noexcept;
  GuardedMap& operator=(GuardedMap&& o) noexcept;
  GuardedMap(const GuardedMap&) = delete;
  GuardedMap& operator=(const GuardedMap&) = delete;
  ~GuardedMap();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  explicit operator bool() const { return data_ != nullptr; }
  // The lowest offset at which a read faulted so far, or kNoFault.
  uint64_t fault_offset() const;

 private:
  void Reset();
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int slot_ = -1;
};

}  // namespace dp420::io
