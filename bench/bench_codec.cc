// Per-block compression on one core: compress and decompress bytes/s and what each
// codec saves under the 4 KiB slot rule (engine/codec/codec.h), for lz4, zstd:1,
// zstd:3 (--compression auto's candidates) and ISA-L's igzip:1 (a reference dp420 does
// not offer), on 64 KiB blocks of:
//
//   random  64 MiB of pseudo-random bytes (nothing pays);
//   noise   64 MiB of zeros with noise: each byte random with probability 1/64;
//   real    256 MiB of the non-zero 64 KiB blocks of a real ext4 image, read from 8
//           places spread over it: DP420_BENCH_IMAGE, by default
//           /var/tmp/dp420-perf/volume-4G/base.img. Without it the real cases are
//           skipped, saying why.
//
// Every arena is larger than the L3 cache, so blocks come from DRAM, as a backup's do.
// Compress/CODEC/DATA walks every block (counters: paying = the fraction of blocks
// stored compressed, stored_ratio = pack bytes with the codec / without, payload_ratio
// = bytes written with / without, before the slot rounding). Decompress/CODEC/DATA
// walks the blocks that pay (bytes/s counts raw bytes out). WorkerHash/real is what a
// backup worker spends on each stored block besides compression (zero detection, the
// keyed hash, SHA-256): the hash rate ChooseAutoCodec takes.
//
// Single-threaded. Names read Op/codec/data.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "bench/codec_util.h"
#include "simd/simd.h"

namespace dp420::bench {
namespace {

constexpr size_t kBlockBytes = size_t{64} << 10;
constexpr size_t kSyntheticBytes = size_t{64} << 20;
constexpr size_t kRealBytes = size_t{256} << 20;

enum class Data { kRandom, kNoise, kReal };
constexpr Data kAllData[] = {Data::kRandom, Data::kNoise, Data::kReal};

const char* DataName(Data data) {
  switch (data) {
    case Data::kRandom: return "random";
    case Data::kNoise: return "noise";
    case Data::kReal: return "real";
  }
  return "?";
}

std::vector<uint8_t> MakeNoise(size_t len) {
  std::vector<uint8_t> out(len, 0);
  uint64_t state = 0x2545F4914F6CDD1DULL;
  std::vector<uint8_t> random(len);
  FillPseudoRandom(&state, random.data(), len);
  // A byte is kept when the low 6 bits of its successor are zero (probability 1/64).
  for (size_t i = 0; i + 1 < len; ++i) {
    if ((random[i + 1] & 63) == 0) out[i] = random[i] | 1;
  }
  return out;
}

// The bytes of one data set (made or read once); empty with `why` when unavailable.
struct Arena {
  std::vector<uint8_t> bytes;
  std::string why;
  size_t blocks() const { return bytes.size() / kBlockBytes; }
  std::span<const uint8_t> Block(size_t i) const {
    return {bytes.data() + i * kBlockBytes, kBlockBytes};
  }
};

const Arena& GetArena(Data data) {
  static std::map<Data, Arena> arenas;
  Arena& arena = arenas[data];
  if (!arena.bytes.empty() || !arena.why.empty()) return arena;
  if (data == Data::kRandom) {
    arena.bytes.resize(kSyntheticBytes);
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    FillPseudoRandom(&state, arena.bytes.data(), arena.bytes.size());
  } else if (data == Data::kNoise) {
    arena.bytes = MakeNoise(kSyntheticBytes);
  } else {
    arena.bytes = ReadNonZeroBlocks(BenchImagePath(), kBlockBytes, kRealBytes, 8, &arena.why);
    if (arena.bytes.empty()) {
      arena.why = "no real data (" + arena.why + "; set DP420_BENCH_IMAGE to an image)";
      std::fprintf(stderr, "bench_codec: %s\n", arena.why.c_str());
    }
  }
  return arena;
}

// Every block of one arena through one codec, kept for the decompress cases.
struct Encoded {
  std::vector<uint8_t> stored;       // MaxPayingBytes(kBlockBytes) per paying block
  std::vector<uint32_t> paid_block;  // the arena's block behind each record
  std::vector<uint32_t> paid_bytes;  // each record's length
  double paying = 0, stored_ratio = 0, payload_ratio = 0;
};

BenchCodec& GetCodec(size_t index) {
  static std::vector<std::unique_ptr<BenchCodec>> codecs = MakeBenchCodecs(true);
  return *codecs[index];
}

const Encoded& GetEncoded(size_t codec_index, Data data) {
  // One at a time: the cases of one codec and data set run one after the other.
  static std::pair<size_t, Data> key{~size_t{0}, Data::kRandom};
  static Encoded encoded;
  if (key == std::make_pair(codec_index, data)) return encoded;
  key = {codec_index, data};
  encoded = Encoded();
  const Arena& arena = GetArena(data);
  BenchCodec& codec = GetCodec(codec_index);
  const size_t slot = MaxPayingBytes(kBlockBytes);
  uint64_t with_slots = 0, with_payload = 0;
  for (size_t i = 0; i < arena.blocks(); ++i) {
    encoded.stored.resize((encoded.paid_block.size() + 1) * slot);
    uint8_t* record = encoded.stored.data() + encoded.paid_block.size() * slot;
    const size_t n = codec.Compress(arena.Block(i), {record, slot});
    with_slots += SlotRoundUp(n == kStoreRaw ? kBlockBytes : n);
    with_payload += n == kStoreRaw ? kBlockBytes : n;
    if (n == kStoreRaw) continue;
    encoded.paid_block.push_back(static_cast<uint32_t>(i));
    encoded.paid_bytes.push_back(static_cast<uint32_t>(n));
  }
  const double without = static_cast<double>(arena.blocks()) * kBlockBytes;
  encoded.paying = static_cast<double>(encoded.paid_block.size()) / arena.blocks();
  encoded.stored_ratio = with_slots / without;
  encoded.payload_ratio = with_payload / without;
  return encoded;
}

void SetRatios(benchmark::State& state, const Encoded& encoded) {
  state.counters["paying"] = encoded.paying;
  state.counters["stored_ratio"] = encoded.stored_ratio;
  state.counters["payload_ratio"] = encoded.payload_ratio;
}

void BM_Compress(benchmark::State& state, size_t codec_index, Data data) {
  const Arena& arena = GetArena(data);
  if (arena.bytes.empty()) return state.SkipWithError(arena.why.c_str());
  BenchCodec& codec = GetCodec(codec_index);
  std::vector<uint8_t> out(MaxPayingBytes(kBlockBytes));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(codec.Compress(arena.Block(i), out));
    i = i + 1 == arena.blocks() ? 0 : i + 1;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBlockBytes));
  SetRatios(state, GetEncoded(codec_index, data));
}

void BM_Decompress(benchmark::State& state, size_t codec_index, Data data) {
  const Arena& arena = GetArena(data);
  if (arena.bytes.empty()) return state.SkipWithError(arena.why.c_str());
  const Encoded& encoded = GetEncoded(codec_index, data);
  if (encoded.paid_block.empty()) {
    return state.SkipWithError("no block pays: nothing stored compressed");
  }
  BenchCodec& codec = GetCodec(codec_index);
  const size_t slot = MaxPayingBytes(kBlockBytes);
  std::vector<uint8_t> raw(kBlockBytes);
  // Each record is checked once against its block; the timed loop only decodes.
  for (size_t r = 0; r < encoded.paid_block.size(); ++r) {
    if (!codec.Decompress({encoded.stored.data() + r * slot, encoded.paid_bytes[r]}, raw) ||
        std::memcmp(raw.data(), arena.Block(encoded.paid_block[r]).data(), kBlockBytes) != 0) {
      return state.SkipWithError("a record does not decompress to its block");
    }
  }
  size_t r = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        codec.Decompress({encoded.stored.data() + r * slot, encoded.paid_bytes[r]}, raw));
    r = r + 1 == encoded.paid_block.size() ? 0 : r + 1;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBlockBytes));
  SetRatios(state, encoded);
}

// Zero detection, the keyed XXH3-128 and SHA-256 of each block, as a backup worker
// does for every block it stores (engine/core/scanner.cc).
void BM_WorkerHash(benchmark::State& state, Data data) {
  const Arena& arena = GetArena(data);
  if (arena.bytes.empty()) return state.SkipWithError(arena.why.c_str());
  std::array<uint8_t, simd::kHashSecretBytes> secret;
  uint64_t seed = 42;
  FillPseudoRandom(&seed, secret.data(), secret.size());
  const simd::BlockHasher hasher(secret);
  uint8_t digest[simd::kSha256Bytes];
  uint8_t id[16];
  size_t i = 0;
  for (auto _ : state) {
    const std::span<const uint8_t> block = arena.Block(i);
    benchmark::DoNotOptimize(simd::IsZero(block.data(), block.size()));
    hasher.Hash(block.data(), block.size()).ToBytes(id);
    simd::Sha256(block.data(), block.size(), digest);
    benchmark::DoNotOptimize(id);
    benchmark::DoNotOptimize(digest);
    i = i + 1 == arena.blocks() ? 0 : i + 1;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBlockBytes));
}

void RegisterAll() {
  const size_t codecs = MakeBenchCodecs(true).size();
  for (Data data : kAllData) {
    benchmark::RegisterBenchmark((std::string("WorkerHash/") + DataName(data)).c_str(),
                                 BM_WorkerHash, data);
    for (size_t c = 0; c < codecs; ++c) {
      const std::string suffix = "/" + GetCodec(c).name() + "/" + DataName(data);
      benchmark::RegisterBenchmark(("Compress" + suffix).c_str(), BM_Compress, c, data);
      benchmark::RegisterBenchmark(("Decompress" + suffix).c_str(), BM_Decompress, c, data);
    }
  }
}

}  // namespace
}  // namespace dp420::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  dp420::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
