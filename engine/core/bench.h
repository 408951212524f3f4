// Bench: measures, on the user's own device and CPU, what a backup of SOURCE
// can reach and what limits it:
//   - O_DIRECT read throughput and per-request latency over a grid of queue
//     depths and request sizes (io::Ring with registered io::BufferPool
//     buffers), sequential from a random aligned start, wrapping;
//   - each simd/ kernel (keyed hash, zero detection, CRC-32C, SHA-256) over
//     an in-cache buffer at 16 KiB, 64 KiB and 1 MiB;
//   - the read -> zero-detect -> hash -> table compare pipeline as backup runs
//     it (one ring per thread, stripes, QD 16 x 1 MiB, 64 KiB blocks), with 1
//     and DefaultThreads() threads, with and without SHA-256 per block;
//   - optionally, O_DIRECT write throughput and fdatasync on a scratch file.
// From these it derives a verdict: the limiting resource, a block size and a
// thread count.
//
// SOURCE is opened read-only (O_RDONLY, O_DIRECT when the file system allows)
// and is never written. The scratch file must not exist; it is created with
// O_EXCL, sized min(1 GiB, free space / 4) and deleted before RunBench
// returns, on success, on error and on cancellation alike.
//
// Thread safety: RunBench is re-entrant. It runs on the calling thread and
// starts (and joins) its own threads for the pipeline runs. Progress is
// reported on the calling thread, between measured points.
#pragma once

#include <string>

#include "engine/core/job.h"
#include "engine/core/manifest.h"
#include "io/file.h"

namespace dp420 {

struct BenchOptions {
  std::string source_path;          // file or block device; absolute
  std::string write_test_path;      // "": no write test; else a path that must not exist
  double seconds_per_point = 0.5;   // time bound of one measured point, in (0, 60]
  bool quick = false;               // read grid QD {1, 32} x {64 KiB, 1 MiB}
  JobControl control;               // progress: phase "bench <part>", points done / total
};

inline constexpr double kBenchDefaultSecondsPerPoint = 0.5;

// Runs the benchmark and returns the report as one JSON object:
//   device   {path, kind, size_bytes, direct, dio_mem_align_bytes,
//             dio_offset_align_bytes, registered_buffers, note?}
//   cpu      {threads_available, simd_level}
//   settings {seconds_per_point, quick}
//   read     [{qd, request_bytes, gbps, iops, ops, seconds,
//              lat_us {p50, p90, p99, p999, max}}]
//   kernels  [{kernel (hash, is_zero over a zero block, crc32c, sha256),
//              block_bytes, gbps}]
//   pipeline [{threads, mode ("hash" | "sha256"), qd, request_bytes, block_bytes,
//              gbps, bytes, seconds, cpu_seconds, cpu_seconds_per_gib, cores_busy}]
//   write    [{qd, request_bytes, gbps, iops, ops, seconds, fdatasync_ms, lat_us}]
//             and write_file {path, size_bytes, direct, note?}, only with a write test
//   verdict  {limit, full_backup_limit, device_gbps, recommended_block_size,
//             recommended_threads, reason}
//   seconds  wall time of the whole run
// GB/s are 10^9 bytes per second. Errors: kInvalidArgument (bad options, a
// source that is not a file or block device, or smaller than 1 MiB),
// kNotFound (source, or the scratch file's directory), kExists (the scratch
// file exists), kNoSpace, kIOError, kNoMemory, kCanceled.
Result<Json> RunBench(const BenchOptions& options);

// `v` rounded to `digits` significant digits (0 for 0 and non-finite values): what
// reports and manifests show of a measured rate.
double RoundSignificant(double v, int digits);

// One point of the read grid above, for a caller that needs the device's read rate
// (`backup --compression auto`): `qd` O_DIRECT reads (buffered when `file` is not
// direct) of `request_bytes` in flight, sequential from an aligned start chosen by
// `seed` and wrapping, for `seconds` or one pass over the file, whichever ends
// first. Returns bytes per second. kInvalidArgument when the file is smaller than
// one request; read errors as kIOError naming the file. `request_bytes` must be a
// multiple of 4096 (and of the file's O_DIRECT alignment).
Result<double> MeasureReadBytesPerS(const io::File& file, unsigned qd, uint32_t request_bytes,
                                    double seconds, uint64_t seed, const JobControl& control);

}  // namespace dp420
