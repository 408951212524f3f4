// `backup --compression auto` in a backup: measure, choose (engine/codec/auto.h),
// and step down during the backup when the choice turns out too slow.
//
// Before the first read, DecideAutoCompression measures on this machine and this
// volume:
//   - the device's read rate: a timed read of about 50 ms (MeasureReadBytesPerS,
//     bench.h: 16 O_DIRECT reads of 1 MiB in flight, as the scanner reads, from a
//     random aligned start). A volume found in the page cache (ScanSource maps it)
//     is read at memory speed, faster than any codec: auto means off without a
//     read. A disk the host caches reads fast and so gets a fast codec or none:
//     the error goes the safe way. A device the timed read underrates (its first
//     requests slower than its stream) is what the step-down below is for;
//   - a sample of the volume's blocks (CalibrationSampleOffsets; zero blocks
//     dropped; 64 places instead when 16 found fewer than 4 with data; at most
//     8 MiB);
//   - per core, the rest of a worker's per-block work on that sample: zero check,
//     keyed hash, SHA-256, and sealing when the repository is encrypted;
//   - each candidate codec on the sample (CalibrateCodecs),
// then ChooseAutoCodec picks. Off, without measuring codecs, for: a format-2
// repository (stores raw), an empty volume or one under 64 KiB (one block: nothing
// to gain, too short to time), a sample that is all zero (nothing to measure: a
// volume of zeros stores nothing), or one that no candidate shrinks by 2 % of its
// slots (incompressible data: compressing it only costs CPU).
//
// During the backup each worker weighs, over windows of 250 ms, the time it spent
// on its completed reads (ScanStats::busy_ns) against the window's wall time. A
// worker busy 90 % of the window sets the pace itself: the device (or the
// repository's writes, or the committer) is not what it waits for. When
// compressing (RecordCodec::compress_ns) took 5 % of its busy time or more, it
// steps the whole backup down one rung of the ladder (the weaker candidates, then
// off), and every worker switches at its next turn. A worker waiting on slow
// writes is busy a small share of the window and never steps down: a weaker codec
// would only send more bytes to the device that is the bottleneck. So a sample
// that misled, a device the timed read
// underrated, or cores taken by other work cost at most a few windows of the slower
// codec; a step is never undone. A snapshot may thus hold blocks of several codecs
// (each record's flags name its own).
//
// Test and measurement hooks (environment; not for production use):
//   DP420_TEST_AUTO_DEVICE_BPS  the device read rate in bytes/s instead of the
//                               timed read (also for a volume in the page cache)
//   DP420_TEST_AUTO_WINDOW_MS   the step-down window instead of 250 ms
//
// Thread safety: DecideAutoCompression runs on the calling thread. AutoLadder is
// shared by the workers (atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "engine/codec/auto.h"
#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "engine/core/scanner.h"

namespace dp420 {

struct AutoDecision {
  // The codec first, then each weaker candidate, strongest first, then kNone;
  // just {kNone} when the choice is off.
  std::vector<CodecSpec> ladder;
  // What was measured and why (the manifest's compression_measured):
  // {reason, device_read_bytes_per_s, device_read, workers, hash_bytes_per_s,
  //  sample_blocks, codecs: [{codec, compress_bytes_per_s, workers_bytes_per_s,
  //  stored_fraction}]}, the rates only when measured.
  Json measured = Json::object();
};

struct AutoInputs {
  const Repository* repo = nullptr;
  const ScanSource* source = nullptr;
  uint32_t block_size = 0;
  unsigned workers = 1;
  const simd::BlockHasher* hasher = nullptr;
  JobControl control;
};

Result<AutoDecision> DecideAutoCompression(const AutoInputs& in);

// The rungs a backup may step down, shared by its workers.
class AutoLadder {
 public:
  explicit AutoLadder(std::vector<CodecSpec> rungs) : rungs_(std::move(rungs)) {}
  size_t rung() const { return rung_.load(std::memory_order_acquire); }
  const CodecSpec& spec(size_t rung) const { return rungs_[rung]; }
  // Steps down from `from` to the next rung, unless another worker already did
  // (two workers that saw the same window step once) or `from` is the last.
  void StepDownFrom(size_t from) {
    if (from + 1 < rungs_.size()) rung_.compare_exchange_strong(from, from + 1);
  }

 private:
  std::vector<CodecSpec> rungs_;
  std::atomic<size_t> rung_{0};
};

// One worker's view of the ladder (PackSink::Turn calls Check).
class AutoWatch {
 public:
  using Clock = std::chrono::steady_clock;
  explicit AutoWatch(AutoLadder* ladder);
  // At `now`, with the worker's busy and compressing time so far (ns): steps
  // the ladder down when a window ended with the worker saturated and
  // compressing. Returns the rung the worker is to use now.
  size_t Check(Clock::time_point now, uint64_t busy_ns, uint64_t compress_ns);
  std::chrono::nanoseconds window() const { return window_; }
  // The rung the worker uses (the last Check's; 0 before the first), and a rung's codec.
  size_t rung() const { return rung_; }
  const CodecSpec& spec(size_t rung) const { return ladder_->spec(rung); }

 private:
  AutoLadder* ladder_;
  std::chrono::nanoseconds window_;
  Clock::time_point start_;
  uint64_t busy_start_ = 0;
  uint64_t compress_start_ = 0;
  size_t rung_ = 0;  // the rung this window measures, and the worker uses
  bool started_ = false;
};

}  // namespace dp420
