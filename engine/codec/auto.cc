// `--compression auto`: calibration and choice (see auto.h).
#include "engine/codec/auto.h"

#include <algorithm>
#include <cstring>

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

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
  auto start = std::chrono::steady_clock::now();
  DP420_ASSIGN_OR_RETURN(size_t n, compressor.Compress(raw, stored));
  tally->compress_s += SecondsSince(start);
  tally->raw_bytes += raw.size();
  tally->slots_without += SlotRoundUp(raw.size());
  tally->slots_with += SlotRoundUp(n == kStoreRaw ? raw.size() : n);
  if (n == kStoreRaw) return Status::Ok();
  start = std::chrono::steady_clock::now();
  const std::span<uint8_t> out(back.data(), raw.size());
  Status status = decompressor.Decompress(compressor.spec().codec, {stored.data(), n}, out);
  tally->decompress_s += SecondsSince(start);
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
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < blocks; ++i) {
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

double PipelineBytesPerS(double hash_bytes_per_s, double codec_bytes_per_s,
                         unsigned worker_threads) {
  DP420_ASSERT(hash_bytes_per_s > 0 && codec_bytes_per_s >= 0);
  double seconds_per_byte = 1.0 / hash_bytes_per_s;
  if (codec_bytes_per_s > 0) seconds_per_byte += 1.0 / codec_bytes_per_s;
  return worker_threads / seconds_per_byte;
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
