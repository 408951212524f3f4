// `--compression auto`: choose, by measurement, the strongest codec that cannot make a
// backup slower than its device.
//
// CalibrateCodecs measures, in a few milliseconds on a sample of the volume's blocks
// taken before the backup starts (CalibrationSampleOffsets: spread over the volume,
// never just its first blocks), each candidate codec's compress and decompress rate
// on one core and how much it saves under the 4 KiB slot rule (codec.h).
// ChooseAutoCodec, a pure function of those rates, the device's read rate and the
// number of worker threads, then picks:
//
//   A worker spends 1/hash + 1/compress seconds per byte (hash: everything else it
//   does to a block, per core: zero detection, the keyed hash, SHA-256), so W workers
//   process W / (1/hash + 1/compress) bytes per second (counting every byte read as
//   stored: zero and unchanged blocks, neither compressed nor SHA-256'd, only make
//   the workers faster). A codec keeps up when that is at least kAutoMargin (1.25)
//   times the device's read rate. The choice is the strongest codec that keeps up,
//   strongest first: zstd by level (higher first), then LZ4 by acceleration (lower
//   first); none when no codec keeps up (including when hashing alone does not).
//
// Rates are raw bytes per CPU-second of the measuring thread (CLOCK_THREAD_CPUTIME_ID),
// so other load on the machine does not distort them; a machine whose cores are busy
// with other work has fewer to give, which the worker count should say. The margin
// covers what a calibration of a few milliseconds on a sample cannot see: data that
// compresses more slowly than the sample did (measured: within 20 % on a real image,
// bench/codec_scan.cc), and the workers' other costs.
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

// What one codec did on one core (per CPU-second).
struct CodecRate {
  CodecSpec spec;
  double compress_bytes_per_s = 0;    // raw bytes in (every block tried)
  double decompress_bytes_per_s = 0;  // raw bytes out (paying blocks); 0: none paid
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

// CPU seconds of the calling thread (CLOCK_THREAD_CPUTIME_ID): what work costs,
// whatever else runs on the machine.
double ThreadCpuSeconds();

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
  // Wall time for all candidates together, shared equally (it bounds how long the
  // calibration delays a backup); every candidate measures at least one block after one
  // untimed warm-up block.
  std::chrono::microseconds budget = std::chrono::microseconds(6000);
};

// Where to take a calibration sample from a volume of `volume_bytes`: the byte offsets
// of up to `count` blocks of `block_bytes`, one in each of `count` equal parts of the
// volume, at a fixed pseudo-random place within its part (block-aligned, ascending,
// distinct; fewer when the volume has fewer blocks than parts). The caller reads them
// and drops the zero blocks.
//
// The sample must be spread so: a volume's first blocks are not its data. On a 4 GiB
// ext4 image of real files (bench/codec_scan.cc), the first 1 MiB of non-zero 64 KiB
// blocks (superblock, group descriptors, bitmaps, inode tables) compressed 10 times
// faster than the image's data did (zstd:3 2.3-5 GB/s against 0.21 GB/s), which would
// have chosen zstd:3 for a 1 GB/s device that it slows to 0.36 GB/s. Nor is it taken
// at round offsets within the parts, which on a file system are where its block groups
// start, with their metadata.
std::vector<uint64_t> CalibrationSampleOffsets(uint64_t volume_bytes, size_t block_bytes,
                                               unsigned count = 16);

// Measures each candidate on `sample`: blocks of `block_bytes` one after the other (the
// last may be shorter), non-zero (zero blocks are not stored, and compress faster than
// any data) and spread over the volume (CalibrationSampleOffsets). Each candidate visits
// the blocks in an order that strides across the sample, so that a budget spent before
// the last block still saw blocks from all over it. Returns the rates with
// `hash_bytes_per_s` passed through. Errors: what BlockCompressor::Create and
// BlockDecompressor::Create return; kInternal when a block does not decompress to
// itself (a codec bug). Preconditions: sample not empty, block_bytes 1 to
// kCodecMaxBlockBytes.
Result<CodecRates> CalibrateCodecs(std::span<const uint8_t> sample, size_t block_bytes,
                                   double hash_bytes_per_s,
                                   const CalibrationOptions& options = CalibrationOptions());

}  // namespace dp420
