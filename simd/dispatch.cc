// Runtime CPU dispatch: the one place that reads CPUID and picks variants.
//
// kTable is a const table of function pointers, one row per Level. The active
// level is DetectedLevel() (CPUID, read once) unless ForceLevel() lowered it;
// it is an atomic int so that a racing reader sees some valid row, although
// ForceLevel is documented as not thread-safe against concurrent kernel calls.
#include <atomic>

#include "simd/check.h"
#include "simd/simd.h"
#include "simd/variants.h"

#if !defined(__x86_64__)
#error "simd/dispatch.cc: dp420 targets x86-64 (libxxhash's x86 dispatcher, ISA-L)"
#endif

namespace dp420::simd {
namespace {

constexpr int kLevelCount = 4;

constexpr internal::Kernels kTable[kLevelCount] = {
    // kScalar: the oracles.
    {internal::HashScalar, internal::IsZeroScalar, internal::Crc32cScalar},
    // kSse2: the x86-64 baseline; ISA-L checks SSE4.2/PCLMUL itself.
    {internal::HashSse2, internal::IsZeroIsal, internal::Crc32cIsal},
    {internal::HashAvx2, internal::IsZeroIsal, internal::Crc32cIsal},
    {internal::HashAvx512, internal::IsZeroIsal, internal::Crc32cIsal},
};

// -1 until the first kernel call or level query.
constinit std::atomic<int> g_active_level{-1};

Level Detect() {
  __builtin_cpu_init();
  // libgcc also checks XCR0, so these are false when the OS does not save
  // the YMM/ZMM state.
  if (__builtin_cpu_supports("avx512f")) return Level::kAvx512;
  if (__builtin_cpu_supports("avx2")) return Level::kAvx2;
  return Level::kSse2;
}

int ActiveIndex() {
  int level = g_active_level.load(std::memory_order_relaxed);
  if (level < 0) {
    level = static_cast<int>(DetectedLevel());
    g_active_level.store(level, std::memory_order_relaxed);
  }
  return level;
}

}  // namespace

Level DetectedLevel() {
  static const Level detected = Detect();
  return detected;
}

Level ActiveLevel() { return static_cast<Level>(ActiveIndex()); }

Level ForceLevel(Level level) {
  const int wanted = static_cast<int>(level);
  DP420_SIMD_CHECK(wanted >= 0);
  DP420_SIMD_CHECK(wanted < kLevelCount);
  const Level previous = ActiveLevel();
  const int ceiling = static_cast<int>(DetectedLevel());
  g_active_level.store(wanted < ceiling ? wanted : ceiling, std::memory_order_relaxed);
  return previous;
}

const char* LevelName(Level level) {
  switch (level) {
    case Level::kScalar:
      return "scalar";
    case Level::kSse2:
      return "sse2";
    case Level::kAvx2:
      return "avx2";
    case Level::kAvx512:
      return "avx512";
  }
  return "unknown";
}

namespace internal {

const Kernels& ActiveKernels() { return kTable[ActiveIndex()]; }

}  // namespace internal
}  // namespace dp420::simd
