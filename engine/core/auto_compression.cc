// `backup --compression auto` in a backup (see auto_compression.h).
#include "engine/core/auto_compression.h"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/core/bench.h"
#include "engine/core/record.h"
#include "io/random.h"
#include "simd/simd.h"

namespace dp420 {
namespace {

constexpr double kTimedReadSeconds = 0.05;
constexpr unsigned kTimedReadDepth = 16;
constexpr uint32_t kTimedReadRequest = 1u << 20;
constexpr uint64_t kMinTimedVolume = 64 * 1024;
constexpr double kMinSaving = 0.02;  // of the sample's slots, for the best candidate
constexpr double kHashCpuSeconds = 0.002;
constexpr size_t kMaxSampleBytes = size_t{8} << 20;
constexpr double kSaturatedBusy = 0.9;  // of the window's wall time
constexpr double kCompressShare = 0.05;
constexpr auto kDefaultWindow = std::chrono::milliseconds(250);

// A positive number from the environment variable `name`, or 0.
double EnvNumber(const char* name) {
  const char* text = std::getenv(name);
  if (!text || !*text) return 0;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  return (*end == '\0' && std::isfinite(v) && v > 0) ? v : 0;
}

// Three significant digits: enough to say why, short in a manifest.
double Round3(double v) { return RoundSignificant(v, 3); }

std::string Rate(double bytes_per_s) {
  char text[32];
  if (bytes_per_s >= 1e9) {
    std::snprintf(text, sizeof(text), "%.2f GB/s", bytes_per_s / 1e9);
  } else {
    std::snprintf(text, sizeof(text), "%.0f MB/s", bytes_per_s / 1e6);
  }
  return text;
}

// The device's read rate, and how it was found; 0 when not measured.
Result<double> DeviceRate(const AutoInputs& in, std::string* how) {
  const double forced = EnvNumber("DP420_TEST_AUTO_DEVICE_BPS");
  if (forced > 0) {
    *how = "forced (DP420_TEST_AUTO_DEVICE_BPS)";
    return forced;
  }
  if (in.source->map) {
    *how = "page cache (the volume is cached: read at memory speed)";
    return 0.0;
  }
  const uint64_t size = in.source->size();
  uint32_t request = kTimedReadRequest;
  while (request > kMinTimedVolume && request > size) request /= 2;
  uint64_t seed = 0;
  (void)io::FillRandom(&seed, sizeof(seed));
  DP420_ASSIGN_OR_RETURN(double rate,
                         MeasureReadBytesPerS(in.source->direct, kTimedReadDepth, request,
                                              kTimedReadSeconds, seed, in.control));
  *how = std::string("timed read (") + std::to_string(kTimedReadDepth) + " x " +
         std::to_string(request >> 10) + " KiB" + (in.source->direct.direct() ? ", O_DIRECT" : "") +
         ")";
  return rate;
}

// The non-zero blocks at `count` places spread over the volume, one after the
// other (offsets ascend: a shorter last block comes last, as CalibrateCodecs
// expects), at most kMaxSampleBytes of them (and one block).
Result<std::vector<uint8_t>> ReadSample(const AutoInputs& in, unsigned count) {
  const uint64_t size = in.source->size();
  std::vector<uint8_t> sample;
  std::vector<uint8_t> block(in.block_size);
  for (uint64_t offset : CalibrationSampleOffsets(size, in.block_size, count)) {
    if (!sample.empty() && sample.size() + in.block_size > kMaxSampleBytes) break;
    const size_t len = static_cast<size_t>(std::min<uint64_t>(in.block_size, size - offset));
    DP420_RETURN_IF_ERROR(in.source->buffered.ReadAt(offset, block.data(), len));
    if (simd::IsZero(block.data(), len)) continue;
    sample.insert(sample.end(), block.begin(), block.begin() + static_cast<ptrdiff_t>(len));
  }
  return sample;
}

// Per core, raw bytes per CPU-second of a worker's work on a changed block besides
// compressing it: zero check, keyed hash, SHA-256, and sealing when encrypted.
Result<double> HashRate(const AutoInputs& in, std::span<const uint8_t> sample) {
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<RecordCodec> sealer, in.repo->NewRecordCodec());
  std::vector<uint8_t> out(MaxEncodedBytes(in.block_size));
  volatile uint64_t sink = 0;  // keeps the hash from being optimized away
  uint64_t bytes = 0;
  const double start = ThreadCpuSeconds();
  double spent = 0;
  // Block after block, round the sample, until kHashCpuSeconds are spent (one
  // block at least): large blocks do not make it a pass over the whole sample.
  for (size_t at = 0; spent < kHashCpuSeconds; at = (at + in.block_size) % sample.size()) {
    const size_t len = std::min<size_t>(in.block_size, sample.size() - at);
    const uint8_t* data = sample.data() + at;
    sink = sink + simd::IsZero(data, len);
    sink = sink + in.hasher->Hash(data, len).lo;
    ObjRef ref{};
    simd::Sha256(data, len, ref.sha256);
    if (sealer->sealed()) DP420_RETURN_IF_ERROR(sealer->Encode({data, len}, &ref, out.data()).status());
    bytes += len;
    spent = ThreadCpuSeconds() - start;
  }
  return static_cast<double>(bytes) / std::max(spent, 1e-9);
}

AutoDecision Off(const std::string& reason, Json measured = Json::object()) {
  AutoDecision d;
  d.ladder = {CodecSpec{}};
  measured["reason"] = reason;
  d.measured = std::move(measured);
  return d;
}

// The chosen codec, then each weaker candidate (strongest first), then off.
std::vector<CodecSpec> Ladder(const CodecSpec& chosen) {
  std::vector<CodecSpec> rungs;
  bool below = false;
  for (auto it = std::rbegin(kAutoCandidates); it != std::rend(kAutoCandidates); ++it) {
    below = below || *it == chosen;
    if (below) rungs.push_back(*it);
  }
  rungs.push_back(CodecSpec{});
  return rungs;
}

// Why ChooseAutoCodec chose `chosen` (its rule, in numbers); `reached`: what the
// workers reach with it, or hashing alone when it is none.
std::string Reason(const CodecSpec& chosen, double device, unsigned workers, double reached) {
  const std::string need = std::to_string(workers) + " worker(s) need " +
                           Rate(kAutoMargin * device) + " (1.25 x the device's " +
                           Rate(device) + ")";
  if (chosen.codec == Codec::kNone) {
    return "no codec keeps up: " + need + ", hashing alone reaches " + Rate(reached);
  }
  return CodecName(chosen) + " is the strongest that keeps up: " + need + ", reach " +
         Rate(reached);
}

}  // namespace

Result<AutoDecision> DecideAutoCompression(const AutoInputs& in) {
  if (in.repo->format_version() < 3) return Off("format-2 repository: blocks are stored raw");
  if (in.source->size() < kMinTimedVolume) {
    return Off("volume under 64 KiB: nothing to gain, too short to time");
  }
  Json m;
  std::string how;
  // A source that fails a read here fails the backup's own read too, which
  // names it and the offset as a backup does: measuring gives way.
  auto measured_rate = DeviceRate(in, &how);
  if (!measured_rate.ok() && measured_rate.status().code() == Code::kCanceled) {
    return measured_rate.status();
  }
  if (!measured_rate.ok()) {
    return Off("the source failed a read while measuring: compression off", std::move(m));
  }
  const double device = *measured_rate;
  m["device_read"] = how;
  if (device <= 0) {
    return Off("the volume is in the page cache: read faster than any codec compresses",
               std::move(m));
  }
  m["device_read_bytes_per_s"] = Round3(device);
  m["workers"] = in.workers;
  auto read = ReadSample(in, 16);
  if (read.ok() && read->size() < 4 * uint64_t{in.block_size}) read = ReadSample(in, 64);
  if (!read.ok()) {
    if (read.status().code() == Code::kCanceled) return read.status();
    return Off("the source failed a read while sampling: compression off", std::move(m));
  }
  std::vector<uint8_t> sample = std::move(read).value();
  const size_t blocks = (sample.size() + in.block_size - 1) / in.block_size;
  m["sample_blocks"] = blocks;
  if (sample.empty()) return Off("the sample is all zero: nothing to measure", std::move(m));
  DP420_ASSIGN_OR_RETURN(const double hash, HashRate(in, sample));
  m["hash_bytes_per_s"] = Round3(hash);
  DP420_ASSIGN_OR_RETURN(CodecRates rates, CalibrateCodecs(sample, in.block_size, hash));
  Json codecs = Json::array();
  double best_fraction = 1;
  for (const CodecRate& r : rates.codecs) {
    best_fraction = std::min(best_fraction, r.stored_fraction);
    codecs.push_back({{"codec", CodecName(r.spec)},
                      {"compress_bytes_per_s", Round3(r.compress_bytes_per_s)},
                      {"workers_bytes_per_s",
                       Round3(PipelineBytesPerS(hash, r.compress_bytes_per_s, in.workers))},
                      {"stored_fraction", Round3(r.stored_fraction)}});
  }
  m["codecs"] = std::move(codecs);
  if (best_fraction > 1 - kMinSaving) {
    return Off("the sample does not compress (no codec saves 2 % of its slots)", std::move(m));
  }
  const CodecSpec chosen = ChooseAutoCodec(device, in.workers, rates);
  double reached = PipelineBytesPerS(hash, 0, in.workers);
  for (const CodecRate& r : rates.codecs) {
    if (r.spec == chosen) reached = PipelineBytesPerS(hash, r.compress_bytes_per_s, in.workers);
  }
  m["reason"] = Reason(chosen, device, in.workers, reached);
  AutoDecision d;
  d.ladder = Ladder(chosen);
  d.measured = std::move(m);
  return d;
}

AutoWatch::AutoWatch(AutoLadder* ladder) : ladder_(ladder), window_(kDefaultWindow) {
  const double ms = EnvNumber("DP420_TEST_AUTO_WINDOW_MS");
  if (ms > 0) window_ = std::chrono::nanoseconds(static_cast<int64_t>(ms * 1e6));
}

size_t AutoWatch::Check(Clock::time_point now, uint64_t busy_ns, uint64_t compress_ns) {
  if (started_ && ladder_->rung() == rung_) {
    const auto elapsed = now - start_;
    if (elapsed < window_) return rung_;
    const double busy = static_cast<double>(busy_ns - busy_start_);
    const double compressing = static_cast<double>(compress_ns - compress_start_);
    const double wall = static_cast<double>(std::chrono::nanoseconds(elapsed).count());
    if (busy >= kSaturatedBusy * wall && compressing >= kCompressShare * busy) {
      ladder_->StepDownFrom(rung_);
    }
  }
  // A new window, also after another worker stepped: it measures one codec only.
  started_ = true;
  start_ = now;
  busy_start_ = busy_ns;
  compress_start_ = compress_ns;
  rung_ = ladder_->rung();
  return rung_;
}

}  // namespace dp420
