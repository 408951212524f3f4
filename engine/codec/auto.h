// `--compression auto`: choose, by measurement, the strongest codec that cannot make a
// backup slower than its device.
//
// CalibrateCodecs measures, on the first blocks of a backup and in a few
// milliseconds, each candidate codec's compress and decompress rate on one core and
// how much it saves under the 4 KiB slot rule (codec.h). ChooseAutoCodec, a pure
// function of those rates, the device's read rate and the number of worker threads,
// then picks:
//
//   A worker spends 1/hash + 1/compress seconds per byte (hash: everything else it does
//   to a block, per core: zero detection, the keyed hash, SHA-256), so W workers
//   process W / (1/hash + 1/compress) bytes per second. A codec keeps up when that is
//   at least kAutoMargin (1.25) times the device's read rate. The choice is the
//   strongest codec that keeps up, strongest first: zstd by level (higher first), then
//   LZ4 by acceleration (lower first); none when no codec keeps up (including when
//   hashing alone does not).
//
// The margin covers what a calibration of a few milliseconds on the first blocks
// cannot see: noise on a shared CPU and later data that compresses more slowly.
//
// Thread safety: ChooseAutoCodec is pure. CalibrateCodecs runs on the calling thread,
// with its own compressors; concurrent calls do not share state.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/codec/codec.h"
#include "io/status.h"

namespace dp420 {

inline constexpr double kAutoMargin = 1.25;

// What one codec did on one core.
struct CodecRate {
  CodecSpec spec;
  double compress_bytes_per_s = 0;    // raw bytes in per second (every block tried)
  double decompress_bytes_per_s = 0;  // raw bytes out per second (paying blocks); 0: none paid
  double stored_fraction = 1;         // pack bytes with this codec / without (slot rule)
};

struct CodecRates {
  // Per core, raw bytes per second of a worker's other per-block work (zero
  // detection, hashing): given by the caller, not measured here.
  double hash_bytes_per_s = 0;
  std::vector<CodecRate> codecs;
};

// The codecs `auto` tries, weakest first.
inline constexpr CodecSpec kAutoCandidates[] = {
    {Codec::kLz4, kLz4DefaultAcceleration}, {Codec::kZstd, 1}, {Codec::kZstd, 3}};

// Bytes per second that `worker_threads` workers reach with `codec_bytes_per_s` per
// core of compression after `hash_bytes_per_s` per core of hashing; a
// `codec_bytes_per_s` of 0 means no compression.
double PipelineBytesPerS(double hash_bytes_per_s, double codec_bytes_per_s,
                         unsigned worker_threads);

// The strongest codec of `measured` that keeps up with the device (above), or kNone.
// Codecs with a compress rate of 0 (not measured) are never chosen. Preconditions:
// device_read_bytes_per_s > 0, worker_threads >= 1, measured.hash_bytes_per_s > 0.
CodecSpec ChooseAutoCodec(double device_read_bytes_per_s, unsigned worker_threads,
                          const CodecRates& measured);

struct CalibrationOptions {
  std::span<const CodecSpec> candidates = kAutoCandidates;
  // Wall time for all candidates together, shared equally; every candidate measures
  // at least one block after one untimed warm-up block.
  std::chrono::microseconds budget = std::chrono::microseconds(6000);
};

// Measures each candidate on `sample`: consecutive blocks of `block_bytes` (the last
// may be shorter), which should be the backup's first non-zero blocks (zero blocks are
// not stored, and compress faster than any data). Returns the rates with
// `hash_bytes_per_s` passed through. Errors: what BlockCompressor::Create and
// BlockDecompressor::Create return; kInternal when a block does not decompress to
// itself (a codec bug). Preconditions: sample not empty, block_bytes 1 to
// kCodecMaxBlockBytes.
Result<CodecRates> CalibrateCodecs(std::span<const uint8_t> sample, size_t block_bytes,
                                   double hash_bytes_per_s,
                                   const CalibrationOptions& options = CalibrationOptions());

}  // namespace dp420
