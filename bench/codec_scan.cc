// codec_scan: what per-block compression would do to a whole image, and what
// --compression auto would choose for it.
//
//   dp420_codec_scan IMAGE [BLOCK_BYTES (65536)] [--no-igzip]
//
// Reads IMAGE (read-only) from start to end in blocks of BLOCK_BYTES and, for every
// non-zero block (zero blocks are never stored), compresses it with lz4, zstd:1,
// zstd:3 and igzip:1 and decompresses what pays. Prints, per codec: the blocks stored
// compressed under the 4 KiB slot rule (engine/codec/codec.h) as a fraction of the
// non-zero blocks, the pack bytes without and with compression and what that saves,
// and the codec's compress and decompress rate on this one core over the whole image.
// Then what ChooseAutoCodec picks with 2 worker threads at device rates of 0.5, 1, 2
// and 4 GB/s, from the whole image's rates and from CalibrateCodecs (6 ms, three
// runs) on two samples: the image's first 1 MiB of non-zero blocks (what a backup
// reads first), and the non-zero blocks at CalibrationSampleOffsets (the first block of
// each 16th of the image). The hash rate is measured too: the keyed XXH3-128 and
// SHA-256 of every non-zero block.
//
// Single-threaded; rates are 10^6 bytes of raw data per CPU-second of this thread
// (CLOCK_THREAD_CPUTIME_ID: other load on the machine does not count).
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/codec_util.h"
#include "engine/codec/auto.h"
#include "simd/simd.h"

namespace dp420::bench {
namespace {

using Clock = std::chrono::steady_clock;

// CPU time of this thread, so that other load on the machine does not count.
double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct CodecTally {
  uint64_t paying_blocks = 0;
  uint64_t pack_bytes = 0;  // with this codec, slot-rounded
  uint64_t paid_raw_bytes = 0;
  double compress_s = 0, decompress_s = 0;
};

struct ScanTally {
  uint64_t blocks = 0, zero_blocks = 0, raw_bytes = 0, pack_bytes_raw = 0;
  double hash_s = 0;
  std::vector<uint8_t> first_blocks;  // the first 1 MiB of non-zero blocks
  std::vector<uint8_t> spread_blocks;  // the non-zero ones of CalibrationSampleOffsets
};

constexpr size_t kCalibrationBytes = size_t{1} << 20;

// One non-zero block through the hash and every codec.
void ScanBlock(std::span<const uint8_t> block, const simd::BlockHasher& hasher,
               std::vector<std::unique_ptr<BenchCodec>>& codecs, std::vector<CodecTally>& tallies,
               ScanTally* scan) {
  static std::vector<uint8_t> stored(MaxPayingBytes(kCodecMaxBlockBytes));
  static std::vector<uint8_t> back(kCodecMaxBlockBytes);
  const std::span<uint8_t> out(back.data(), block.size());
  double start_s = CpuSeconds();
  uint8_t id[16], digest[simd::kSha256Bytes];
  hasher.Hash(block.data(), block.size()).ToBytes(id);
  simd::Sha256(block.data(), block.size(), digest);
  scan->hash_s += CpuSeconds() - start_s;
  scan->raw_bytes += block.size();
  scan->pack_bytes_raw += SlotRoundUp(block.size());
  for (size_t c = 0; c < codecs.size(); ++c) {
    CodecTally& t = tallies[c];
    start_s = CpuSeconds();
    const size_t n = codecs[c]->Compress(block, stored);
    t.compress_s += CpuSeconds() - start_s;
    t.pack_bytes += SlotRoundUp(n == kStoreRaw ? block.size() : n);
    if (n == kStoreRaw) continue;
    ++t.paying_blocks;
    t.paid_raw_bytes += block.size();
    start_s = CpuSeconds();
    const bool ok = codecs[c]->Decompress({stored.data(), n}, out);
    t.decompress_s += CpuSeconds() - start_s;
    if (!ok || std::memcmp(out.data(), block.data(), block.size()) != 0) {
      std::fprintf(stderr, "codec_scan: %s: a block does not decompress to itself\n",
                   codecs[c]->name().c_str());
      std::exit(1);
    }
  }
}

void PrintChoices(const char* label, const CodecRates& rates) {
  std::printf("auto with 2 worker threads, %s (hash %.0f MB/s per core):\n", label,
              rates.hash_bytes_per_s / 1e6);
  for (const CodecRate& r : rates.codecs) {
    std::printf("  %-8s compress %7.0f MB/s, 2 workers reach %6.0f MB/s, stores %.3f\n",
                CodecName(r.spec).c_str(), r.compress_bytes_per_s / 1e6,
                PipelineBytesPerS(rates.hash_bytes_per_s, r.compress_bytes_per_s, 2) / 1e6,
                r.stored_fraction);
  }
  for (double device_gbps : {0.5, 1.0, 2.0, 4.0}) {
    std::printf("  device %.1f GB/s -> %s\n", device_gbps,
                CodecName(ChooseAutoCodec(device_gbps * 1e9, 2, rates)).c_str());
  }
}

// Reads the whole image at `fd` and runs every non-zero block through ScanBlock.
bool ScanImage(int fd, const std::string& path, size_t block_bytes,
               std::vector<std::unique_ptr<BenchCodec>>& codecs, std::vector<CodecTally>& tallies,
               ScanTally* scan) {
  const off_t image_bytes = ::lseek(fd, 0, SEEK_END);
  const std::vector<uint64_t> spread =
      CalibrationSampleOffsets(static_cast<uint64_t>(std::max<off_t>(image_bytes, 0)), block_bytes);
  size_t next_spread = 0;
  std::array<uint8_t, simd::kHashSecretBytes> secret;
  uint64_t seed = 42;
  FillPseudoRandom(&seed, secret.data(), secret.size());
  const simd::BlockHasher hasher(secret);
  const size_t chunk_bytes = std::max(block_bytes, size_t{4} << 20) / block_bytes * block_bytes;
  std::vector<uint8_t> chunk(chunk_bytes);
  for (off_t at = 0;; at += static_cast<off_t>(chunk_bytes)) {
    const ssize_t got = ::pread(fd, chunk.data(), chunk_bytes, at);
    if (got < 0) {
      std::perror(path.c_str());
      return false;
    }
    if (got == 0) return true;
    for (size_t off = 0; off < static_cast<size_t>(got); off += block_bytes) {
      const std::span<const uint8_t> block(chunk.data() + off,
                                           std::min(block_bytes, static_cast<size_t>(got) - off));
      ++scan->blocks;
      const uint64_t block_at = static_cast<uint64_t>(at) + off;
      const bool sampled = next_spread < spread.size() && spread[next_spread] == block_at;
      next_spread += sampled;
      if (simd::IsZero(block.data(), block.size())) {
        ++scan->zero_blocks;
        continue;
      }
      if (scan->first_blocks.size() < kCalibrationBytes) {
        scan->first_blocks.insert(scan->first_blocks.end(), block.begin(), block.end());
      }
      if (sampled) {
        scan->spread_blocks.insert(scan->spread_blocks.end(), block.begin(), block.end());
      }
      ScanBlock(block, hasher, codecs, tallies, scan);
    }
  }
}

// Prints one line per codec; returns the rates of the auto candidates over the image.
CodecRates PrintCodecs(const std::vector<std::unique_ptr<BenchCodec>>& codecs,
                       const std::vector<CodecTally>& tallies, const ScanTally& scan) {
  const uint64_t data_blocks = std::max<uint64_t>(scan.blocks - scan.zero_blocks, 1);
  const double mib = 1024.0 * 1024.0;
  std::printf("%-8s %14s %14s %16s %18s %10s %10s\n", "codec", "blocks paying", "pack MiB raw",
              "pack MiB codec", "saved MiB", "comp MB/s", "dec MB/s");
  CodecRates whole{scan.raw_bytes / scan.hash_s, {}};
  for (size_t c = 0; c < codecs.size(); ++c) {
    const CodecTally& t = tallies[c];
    const double saved = static_cast<double>(scan.pack_bytes_raw - t.pack_bytes);
    const double decompress = t.decompress_s > 0 ? t.paid_raw_bytes / t.decompress_s : 0;
    std::printf("%-8s %12.1f %% %14.1f %16.1f %9.1f (%4.1f %%) %10.0f %10.0f\n",
                codecs[c]->name().c_str(), 100.0 * t.paying_blocks / data_blocks,
                scan.pack_bytes_raw / mib, t.pack_bytes / mib, saved / mib,
                100.0 * saved / std::max<uint64_t>(scan.pack_bytes_raw, 1),
                scan.raw_bytes / t.compress_s / 1e6, decompress / 1e6);
    if (c < std::size(kAutoCandidates)) {
      whole.codecs.push_back({kAutoCandidates[c], scan.raw_bytes / t.compress_s, decompress,
                              static_cast<double>(t.pack_bytes) / scan.pack_bytes_raw});
    }
  }
  return whole;
}

int Run(const std::string& path, size_t block_bytes, bool with_igzip) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::perror(path.c_str());
    return 1;
  }
  std::vector<std::unique_ptr<BenchCodec>> codecs = MakeBenchCodecs(with_igzip);
  std::vector<CodecTally> tallies(codecs.size());
  ScanTally scan;
  const auto start = Clock::now();
  const bool read = ScanImage(fd, path, block_bytes, codecs, tallies, &scan);
  ::close(fd);
  if (!read) return 1;
  std::printf("%s: %llu blocks of %zu bytes, %llu zero (%.1f %%), %llu with data, scanned in "
              "%.0f s\n", path.c_str(), static_cast<unsigned long long>(scan.blocks), block_bytes,
              static_cast<unsigned long long>(scan.zero_blocks),
              100.0 * scan.zero_blocks / std::max<uint64_t>(scan.blocks, 1),
              static_cast<unsigned long long>(scan.blocks - scan.zero_blocks),
              std::chrono::duration<double>(Clock::now() - start).count());
  if (scan.first_blocks.empty()) return 0;
  PrintChoices("rates over the whole image", PrintCodecs(codecs, tallies, scan));
  const std::pair<const char*, const std::vector<uint8_t>*> samples[] = {
      {"CalibrateCodecs on the first 1 MiB of data", &scan.first_blocks},
      {"CalibrateCodecs on CalibrationSampleOffsets' non-zero blocks", &scan.spread_blocks}};
  for (int run = 0; run < 3; ++run) {
    for (const auto& [label, sample] : samples) {
      Result<CodecRates> calibrated =
          CalibrateCodecs(*sample, block_bytes, scan.raw_bytes / scan.hash_s);
      if (!calibrated.ok()) {
        std::fprintf(stderr, "codec_scan: %s\n", calibrated.status().ToString().c_str());
        return 1;
      }
      PrintChoices((label + std::string(", run ") + std::to_string(run + 1)).c_str(),
                   *calibrated);
    }
  }
  return 0;
}

}  // namespace
}  // namespace dp420::bench

int main(int argc, char** argv) {
  std::string path;
  size_t block_bytes = size_t{64} << 10;
  bool with_igzip = true;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--no-igzip") {
      with_igzip = false;
    } else if (positional == 0) {
      path = arg;
      ++positional;
    } else if (positional == 1) {
      block_bytes = std::strtoull(arg.c_str(), nullptr, 10);
      ++positional;
    } else {
      path.clear();
      break;
    }
  }
  if (path.empty() || block_bytes < 4096 || block_bytes > dp420::kCodecMaxBlockBytes ||
      block_bytes % 4096 != 0) {
    std::fprintf(stderr, "usage: %s IMAGE [BLOCK_BYTES: 4096..4194304, a multiple of 4096, "
                 "default 65536] [--no-igzip]\n", argv[0]);
    return 2;
  }
  return dp420::bench::Run(path, block_bytes, with_igzip);
}
