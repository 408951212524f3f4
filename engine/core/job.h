// Types shared by the long-running operations (backup, restore, verify):
// progress reporting, cancellation, the tuning knobs of the I/O pipeline and
// the bounds of the numeric options (the engine refuses values outside them
// itself; the C API and the CLI only pass them on).
//
// Thread safety: a ProgressFn is called from the thread that started the job,
// never from workers. `cancel` is read by every worker.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "io/status.h"

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

// Worker threads of one operation, whatever the CPU count.
inline constexpr unsigned kMaxThreads = 256;
// Read/write buffers of all workers of one backup or restore together
// (docs/ARCHITECTURE.md, "Memory budget").
inline constexpr uint64_t kBufferBudgetBytes = 1ull << 30;

// Network timing options, in milliseconds (client and server).
inline constexpr uint64_t kMinHeartbeatMs = 10;
inline constexpr uint64_t kMaxHeartbeatMs = 3600000;    // 1 hour
inline constexpr uint64_t kMaxClockSkewMs = 3600000;
inline constexpr uint64_t kMaxRetryMs = 86400000;       // 1 day

// Worker threads when the caller passes 0: the CPUs this process may run on.
unsigned DefaultThreads();

// Buffer bytes one worker holds at least at `block_size`: 4 extents in
// flight and half as many again being hashed or written (backup), or 4
// windows with their spare eighth and a line buffer (restore).
uint64_t WorkerBufferBytes(uint32_t block_size);

// The worker count of a backup or restore at `block_size`. 0 picks
// DefaultThreads(), lowered to what kMaxThreads and kBufferBudgetBytes allow;
// an explicit count above either is refused (InvalidArgument naming the
// option, its value and the allowed range).
Result<unsigned> ResolveThreads(unsigned requested, uint32_t block_size);

// InvalidArgument "NAME is VALUE; allowed MIN..MAX UNIT" when `value` is
// outside [min, max], else Ok.
Status CheckRange(const char* name, uint64_t value, uint64_t min, uint64_t max,
                  const char* unit = "");

}  // namespace dp420
