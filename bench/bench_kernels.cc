// Micro-benchmarks of the simd/ kernels: BlockHasher::Hash at every dispatch
// level, IsZero and Crc32c (scalar oracle and dispatched), and Sha256, over
// 4 KiB, 64 KiB and 1 MiB blocks. Each reports bytes/s.
//
// warm: the same block again and again, so it stays in cache (4 KiB and
//       64 KiB in L1/L2; 1 MiB is at or above L2 on most parts).
// cold: blocks walked round-robin over a 256 MiB arena (more than 2x the L3
//       of the machines we run on), so every block streams from DRAM.
//
// Names read Kernel/level/block/warm|cold. Levels the CPU lacks are not
// registered. Single-threaded.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "simd/simd.h"

namespace dp420::simd {
namespace {

constexpr size_t kColdArenaBytes = size_t{256} << 20;
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kBlockSizes[] = {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20};

enum class Kernel { kHash, kIsZero, kCrc32c, kSha256 };
enum class Content { kUnset, kRandom, kZero };

void FillRandom(uint8_t* data, size_t len) {
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  bench::FillPseudoRandom(&state, data, len);
}

void Fill(uint8_t* data, size_t len, Content content) {
  // Zero blocks are written too, so that they get real pages rather than
  // the shared zero page.
  if (content == Content::kZero) {
    std::memset(data, 0, len);
  } else {
    FillRandom(data, len);
  }
}

// A 2 MiB-aligned buffer, backed by huge pages when the kernel allows (as the
// engine's read buffers are), filled with `content` on demand.
class Buffer {
 public:
  explicit Buffer(size_t size)
      : size_(size), data_(static_cast<uint8_t*>(std::aligned_alloc(kHugePageBytes, size))) {
    if (data_ == nullptr) std::abort();
    madvise(data_, size_, MADV_HUGEPAGE);  // best effort
  }
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const uint8_t* Prepare(Content content) {
    if (content_ != content) Fill(data_, size_, content);
    content_ = content;
    return data_;
  }
  size_t size() const { return size_; }

 private:
  size_t size_;
  uint8_t* data_;
  Content content_ = Content::kUnset;
};

Buffer& ColdArena() {
  static Buffer arena(kColdArenaBytes);
  return arena;
}

size_t RoundUpToHugePage(size_t bytes) {
  return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

const BlockHasher& Hasher() {
  static const BlockHasher hasher = [] {
    std::array<uint8_t, kHashSecretBytes> secret;
    FillRandom(secret.data(), secret.size());
    return BlockHasher(secret);
  }();
  return hasher;
}

// One kernel call; the result goes to DoNotOptimize.
template <Kernel kKernel>
uint64_t RunKernel(const uint8_t* data, size_t len) {
  if constexpr (kKernel == Kernel::kHash) {
    const Hash128 h = Hasher().Hash(data, len);
    return h.lo ^ h.hi;
  } else if constexpr (kKernel == Kernel::kIsZero) {
    return IsZero(data, len);
  } else if constexpr (kKernel == Kernel::kCrc32c) {
    return Crc32c(0, data, len);
  } else {
    uint8_t digest[kSha256Bytes];
    Sha256(data, len, digest);
    return digest[0];
  }
}

struct Case {
  Level level;
  size_t block_bytes;
  bool cold;
};

template <Kernel kKernel>
void BM_Kernel(benchmark::State& state, Case c) {
  const Level previous = ForceLevel(c.level);
  const Content content = kKernel == Kernel::kIsZero ? Content::kZero : Content::kRandom;
  Buffer warm(RoundUpToHugePage(c.block_bytes));
  Buffer& buffer = c.cold ? ColdArena() : warm;
  const uint8_t* base = buffer.Prepare(content);
  const size_t span_bytes = c.cold ? buffer.size() : c.block_bytes;
  size_t offset = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(RunKernel<kKernel>(base + offset, c.block_bytes));
    offset += c.block_bytes;
    if (offset + c.block_bytes > span_bytes) offset = 0;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(c.block_bytes));
  state.SetLabel(LevelName(ActiveLevel()));
  ForceLevel(previous);
}

std::string SizeName(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return std::to_string(bytes >> 20) + "MiB";
  return std::to_string(bytes >> 10) + "KiB";
}

template <Kernel kKernel>
void RegisterKernel(const char* kernel_name, const std::vector<Level>& levels) {
  for (Level level : levels) {
    for (size_t block : kBlockSizes) {
      for (bool cold : {false, true}) {
        const std::string name = std::string(kernel_name) + "/" + LevelName(level) + "/" +
                                 SizeName(block) + (cold ? "/cold" : "/warm");
        benchmark::RegisterBenchmark(name.c_str(), BM_Kernel<kKernel>, Case{level, block, cold});
      }
    }
  }
}

void RegisterAll() {
  std::vector<Level> all_levels;
  for (int l = 0; l <= static_cast<int>(DetectedLevel()); ++l) {
    all_levels.push_back(static_cast<Level>(l));
  }
  // Above kScalar, IsZero and Crc32c call the same ISA-L entry at every level.
  const std::vector<Level> oracle_and_best = {Level::kScalar, DetectedLevel()};
  RegisterKernel<Kernel::kHash>("Hash", all_levels);
  RegisterKernel<Kernel::kIsZero>("IsZero", oracle_and_best);
  RegisterKernel<Kernel::kCrc32c>("Crc32c", oracle_and_best);
  RegisterKernel<Kernel::kSha256>("Sha256", {DetectedLevel()});
}

}  // namespace
}  // namespace dp420::simd

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  dp420::simd::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
