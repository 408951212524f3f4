// Types shared by the long-running operations (backup, restore, verify):
// progress reporting, cancellation and the tuning knobs of the I/O pipeline.
//
// Thread safety: a ProgressFn is called from the thread that started the job,
// never from workers. `cancel` is read by every worker.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace dp420 {

struct Progress {
  const char* phase = "";     // "backup", "restore", "verify"
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
};
using ProgressFn = std::function<void(const Progress&)>;

struct JobControl {
  ProgressFn progress;                        // may be empty
  const std::atomic<bool>* cancel = nullptr;  // may be null
  bool Canceled() const { return cancel && cancel->load(std::memory_order_relaxed); }
};

inline constexpr uint32_t kDefaultBlockSize = 64 * 1024;
inline constexpr uint32_t kMinBlockSize = 4096;
inline constexpr uint32_t kMaxBlockSize = 4 * 1024 * 1024;
inline constexpr uint64_t kInFlightBytes = 32ull << 20;  // read bytes queued, all workers
inline constexpr uint32_t kMinExtentBytes = 1u << 20;    // one read request

// Worker threads when the caller passes 0: the CPUs this process may run on.
unsigned DefaultThreads();

}  // namespace dp420
