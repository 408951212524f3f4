// `--compression auto`: calibration and choice (see auto.h).
#include "engine/codec/auto.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "io/assert.h"

namespace dp420 {
namespace {

// Larger is stronger: every zstd level above every LZ4 acceleration, and LZ4 above none.
int Strength(const CodecSpec& spec) {
  switch (spec.codec) {
    case Codec::kNone:
      return 0;
    case Codec::kLz4:
      return 1 + (kLz4MaxAcceleration - spec.level);  // 1 .. 64
    case Codec::kZstd:
      return 1 + kLz4MaxAcceleration + spec.level;
  }
  return 0;
}

// A step near 0.618 `blocks` that is coprime with it: i -> (i + step) % blocks visits
// every block once, each far from the one before.
size_t CoprimeStride(size_t blocks) {
  if (blocks <= 2) return 1;
  for (size_t step = static_cast<size_t>(static_cast<double>(blocks) * 0.618); step > 1; --step) {
    if (std::gcd(step, blocks) == 1) return step;
  }
  return 1;
}

// A fixed pseudo-random number for `x` (SplitMix64's finalizer).
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

struct Tally {
  double compress_s = 0;
  double decompress_s = 0;
  uint64_t raw_bytes = 0;
  uint64_t paid_raw_bytes = 0;
  uint64_t slots_without = 0;  // pack bytes, stored raw
  uint64_t slots_with = 0;     // pack bytes, with this codec
};

// Compresses one block, decompresses it when it paid and checks it, into `tally`.
Status MeasureBlock(BlockCompressor& compressor, BlockDecompressor& decompressor,
                    std::span<const uint8_t> raw, std::vector<uint8_t>& stored,
                    std::vector<uint8_t>& back, Tally* tally) {
  double start_s = ThreadCpuSeconds();
  DP420_ASSIGN_OR_RETURN(size_t n, compressor.Compress(raw, stored));
  tally->compress_s += ThreadCpuSeconds() - start_s;
  tally->raw_bytes += raw.size();
  tally->slots_without += SlotRoundUp(raw.size());
  tally->slots_with += SlotRoundUp(n == kStoreRaw ? raw.size() : n);
  if (n == kStoreRaw) return Status::Ok();
  start_s = ThreadCpuSeconds();
  const std::span<uint8_t> out(back.data(), raw.size());
  Status status = decompressor.Decompress(compressor.spec().codec, {stored.data(), n}, out);
  tally->decompress_s += ThreadCpuSeconds() - start_s;
  if (!status.ok() || std::memcmp(out.data(), raw.data(), raw.size()) != 0) {
    return Status::Internal("calibrating " + CodecName(compressor.spec()) +
                            ": a block does not decompress to itself (" + status.ToString() +
                            ")");
  }
  tally->paid_raw_bytes += raw.size();
  return Status::Ok();
}

Result<CodecRate> MeasureCodec(const CodecSpec& spec, std::span<const uint8_t> sample,
                               size_t block_bytes, std::chrono::duration<double> budget,
                               BlockDecompressor& decompressor) {
  DP420_ASSIGN_OR_RETURN(BlockCompressor compressor, BlockCompressor::Create(spec));
  std::vector<uint8_t> stored(MaxPayingBytes(block_bytes) + 1);
  std::vector<uint8_t> back(block_bytes);
  const auto block = [&](size_t i) {
    return sample.subspan(i * block_bytes, std::min(block_bytes, sample.size() - i * block_bytes));
  };
  const size_t blocks = (sample.size() + block_bytes - 1) / block_bytes;
  Tally warm_up;  // the contexts' first allocation and page faults, not counted
  DP420_RETURN_IF_ERROR(MeasureBlock(compressor, decompressor, block(0), stored, back, &warm_up));
  Tally tally;
  const size_t stride = CoprimeStride(blocks);
  const auto start = std::chrono::steady_clock::now();
  for (size_t k = 0, i = 0; k < blocks; ++k, i = (i + stride) % blocks) {
    DP420_RETURN_IF_ERROR(MeasureBlock(compressor, decompressor, block(i), stored, back, &tally));
    if (std::chrono::steady_clock::now() - start >= budget) break;
  }
  CodecRate rate;
  rate.spec = spec;
  // A block faster than the clock's resolution is not infinitely fast.
  rate.compress_bytes_per_s = tally.raw_bytes / std::max(tally.compress_s, 1e-9);
  if (tally.paid_raw_bytes > 0) {
    rate.decompress_bytes_per_s = tally.paid_raw_bytes / std::max(tally.decompress_s, 1e-9);
  }
  rate.stored_fraction = static_cast<double>(tally.slots_with) / tally.slots_without;
  return rate;
}

}  // namespace

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double PipelineBytesPerS(double hash_bytes_per_s, double codec_bytes_per_s,
                         unsigned worker_threads) {
  DP420_ASSERT(hash_bytes_per_s > 0 && codec_bytes_per_s >= 0);
  double seconds_per_byte = 1.0 / hash_bytes_per_s;
  if (codec_bytes_per_s > 0) seconds_per_byte += 1.0 / codec_bytes_per_s;
  return worker_threads / seconds_per_byte;
}

std::vector<uint64_t> CalibrationSampleOffsets(uint64_t volume_bytes, size_t block_bytes,
                                               unsigned count) {
  DP420_ASSERT(block_bytes >= 1 && count >= 1);
  const uint64_t blocks = (volume_bytes + block_bytes - 1) / block_bytes;
  std::vector<uint64_t> offsets;
  for (unsigned part = 0; part < count; ++part) {
    const uint64_t first = blocks * part / count;
    const uint64_t end = blocks * (part + 1) / count;
    if (first == end) continue;  // more parts than blocks
    offsets.push_back((first + SplitMix64(part) % (end - first)) * block_bytes);
  }
  return offsets;
}

CodecSpec ChooseAutoCodec(double device_read_bytes_per_s, unsigned worker_threads,
                          const CodecRates& measured) {
  DP420_ASSERT(device_read_bytes_per_s > 0 && worker_threads >= 1);
  DP420_ASSERT(measured.hash_bytes_per_s > 0);
  const double needed_bytes_per_s = kAutoMargin * device_read_bytes_per_s;
  CodecSpec best;  // kNone
  for (const CodecRate& rate : measured.codecs) {
    if (rate.spec.codec == Codec::kNone || rate.compress_bytes_per_s <= 0) continue;
    const double reached = PipelineBytesPerS(measured.hash_bytes_per_s,
                                             rate.compress_bytes_per_s, worker_threads);
    if (reached >= needed_bytes_per_s && Strength(rate.spec) > Strength(best)) best = rate.spec;
  }
  return best;
}

Result<CodecRates> CalibrateCodecs(std::span<const uint8_t> sample, size_t block_bytes,
                                   double hash_bytes_per_s, const CalibrationOptions& options) {
  DP420_ASSERT(!sample.empty() && block_bytes >= 1 && block_bytes <= kCodecMaxBlockBytes);
  CodecRates rates;
  rates.hash_bytes_per_s = hash_bytes_per_s;
  if (options.candidates.empty()) return rates;
  DP420_ASSIGN_OR_RETURN(BlockDecompressor decompressor, BlockDecompressor::Create());
  const std::chrono::duration<double> each =
      std::chrono::duration<double>(options.budget) / options.candidates.size();
  for (const CodecSpec& spec : options.candidates) {
    DP420_ASSIGN_OR_RETURN(CodecRate rate,
                           MeasureCodec(spec, sample, block_bytes, each, decompressor));
    rates.codecs.push_back(rate);
  }
  return rates;
}

}  // namespace dp420
