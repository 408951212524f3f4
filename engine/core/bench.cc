#include "engine/core/bench.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/codec/auto.h"
#include "engine/core/format.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

constexpr uint32_t kKiB = 1024;
constexpr uint32_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// The pipeline as backup runs it: 1 MiB reads, 16 in flight per thread,
// 64 KiB blocks, stripes of one leaf page (256 blocks = 16 MiB).
constexpr uint32_t kPipeRequestBytes = kMinExtentBytes;
constexpr unsigned kPipeDepth = 16;
constexpr uint32_t kPipeBlockBytes = kDefaultBlockSize;
constexpr uint64_t kPipeStripeExtents =
    uint64_t{kPageEntries} * kPipeBlockBytes / kPipeRequestBytes;

constexpr uint64_t kMinSourceBytes = kMiB;
constexpr uint64_t kScratchMaxBytes = kGiB;
constexpr uint64_t kScratchMinBytes = 16ull * kMiB;
constexpr uint64_t kScratchGrainBytes = 4ull * kMiB;  // the largest write request
constexpr uint32_t kKernelBlocks[] = {16 * kKiB, 64 * kKiB, kMiB};
constexpr double kMaxSecondsPerPoint = 60;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

double Seconds(uint64_t ns) { return double(ns) / 1e9; }
uint64_t Nanos(double seconds) { return uint64_t(seconds * 1e9); }
double Gbps(uint64_t bytes, double seconds) {
  return seconds > 0 ? double(bytes) / seconds / 1e9 : 0;
}

// Rounds to `digits` significant digits, so that JSON stays readable and small
// values stay positive.
double RoundSig(double v, int digits = 4) { return RoundSignificant(v, digits); }

// Time this thread was runnable but waited for a CPU (other load), from
// /proc/thread-self/schedstat; 0 where the kernel does not provide it.
double ThreadRunqueueSeconds() {
  int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128] = {};
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  unsigned long long run_ns = 0, wait_ns = 0;
  // The kernel prints these from u64 counters, which %llu holds.
  // NOLINTNEXTLINE(cert-err34-c)
  if (n <= 0 || std::sscanf(buf, "%llu %llu", &run_ns, &wait_ns) != 2) return 0;
  return double(wait_ns) / 1e9;
}

// Deterministic noise (xorshift64*), for write buffers and kernel input.
void FillRandom(uint8_t* data, size_t len, uint64_t seed) {
  uint64_t x = seed | 1;
  for (size_t i = 0; i < len; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    uint64_t word = x * 0x2545F4914F6CDD1DULL;
    std::memcpy(data + i, &word, std::min<size_t>(8, len - i));
  }
}

std::string SizeName(uint64_t bytes) {
  if (bytes % kMiB == 0) return std::to_string(bytes / kMiB) + " MiB";
  return std::to_string(bytes / kKiB) + " KiB";
}

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// ---- Latency histogram ----

// Log-linear histogram of nanoseconds: 64 linear sub-buckets per power of two
// (resolution 1.6 %), fixed size, so recording never allocates.
class LatencyHistogram {
 public:
  void Record(uint64_t ns) {
    ++counts_[Index(ns)];
    ++count_;
    max_ns_ = std::max(max_ns_, ns);
  }
  uint64_t count() const { return count_; }
  // The `q`-quantile (0 < q <= 1) in microseconds: the middle of its bucket,
  // never above the exact maximum.
  double PercentileUs(double q) const {
    if (count_ == 0) return 0;
    uint64_t rank = std::max<uint64_t>(1, uint64_t(std::ceil(q * double(count_))));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(Middle(i), double(max_ns_)) / 1e3;
    }
    return double(max_ns_) / 1e3;
  }
  double MaxUs() const { return double(max_ns_) / 1e3; }

 private:
  static constexpr int kSubBits = 6;
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
  static size_t Index(uint64_t ns) {
    if (ns < kSub) return size_t(ns);
    int exponent = 63 - std::countl_zero(ns);  // >= kSubBits
    uint64_t sub = (ns >> (exponent - kSubBits)) & (kSub - 1);
    return size_t(exponent - kSubBits + 1) * kSub + sub;
  }
  static double Middle(size_t index) {
    if (index < kSub) return double(index);
    int shift = int(index / kSub) - 1;
    uint64_t low = (kSub + index % kSub) << shift;
    return double(low) + double(uint64_t{1} << shift) / 2;
  }
  std::array<uint64_t, (64 - kSubBits + 1) * kSub> counts_{};
  uint64_t count_ = 0;
  uint64_t max_ns_ = 0;
};

Json LatencyJson(const LatencyHistogram& h) {
  return Json{{"p50", RoundSig(h.PercentileUs(0.50))}, {"p90", RoundSig(h.PercentileUs(0.90))},
              {"p99", RoundSig(h.PercentileUs(0.99))}, {"p999", RoundSig(h.PercentileUs(0.999))},
              {"max", RoundSig(h.MaxUs())}};
}

// ---- One measured I/O point: queue depth x request size ----

struct IoTarget {
  int fd = -1;
  bool write = false;
  uint64_t span_bytes = 0;  // requests stay in [0, span_bytes)
  std::string path;
};

struct IoPointResult {
  unsigned qd = 0;
  uint32_t request_bytes = 0;
  uint64_t ops = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  double fdatasync_seconds = 0;  // writes: the fdatasync after the last write
  bool registered = false;
  std::unique_ptr<LatencyHistogram> latency = std::make_unique<LatencyHistogram>();
  double gbps() const { return Gbps(bytes, seconds + fdatasync_seconds); }
  double iops() const { return seconds > 0 ? double(ops) / seconds : 0; }
};

// Keeps `qd` requests of `request_bytes` in flight, sequentially from a random
// aligned start and wrapping at the span's end, until the time bound or one
// full pass. Latency is submit -> completion of each request.
class IoPointRunner {
 public:
  IoPointRunner(const IoTarget& target, const JobControl& control, unsigned qd,
                uint32_t request_bytes)
      : target_(target), control_(control), qd_(qd), request_bytes_(request_bytes) {}
  Result<IoPointResult> Run(double seconds, uint64_t seed);

 private:
  Status Setup(uint64_t seed);
  void Issue(unsigned slot);
  Status Complete(io::IoOp* op, uint64_t now_ns);

  const IoTarget& target_;
  const JobControl& control_;
  unsigned qd_;
  uint32_t request_bytes_;
  // Declared before ring_: the ring is destroyed (and drained) first.
  std::vector<io::IoOp> ops_;
  std::vector<uint64_t> issued_ns_;
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::vector<io::IoOp*> done_;
  bool fixed_file_ = false;
  uint64_t total_ops_ = 0;  // requests in one pass over the span
  uint64_t first_op_ = 0;
  uint64_t issued_ = 0;
  IoPointResult result_;
};

Status IoPointRunner::Setup(uint64_t seed) {
  DP420_ASSERT(qd_ > 0);
  DP420_ASSERT(request_bytes_ % 4096 == 0);
  total_ops_ = target_.span_bytes / request_bytes_;
  DP420_ASSERT(total_ops_ > 0);
  first_op_ = seed % total_ops_;
  ops_.resize(qd_);
  issued_ns_.resize(qd_);
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(request_bytes_, qd_));
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = qd_}));
  // Without registration (RLIMIT_MEMLOCK) the point still runs, unregistered.
  result_.registered = pool_.Register(*ring_).ok();
  fixed_file_ = ring_->RegisterFiles({target_.fd}).ok();
  if (target_.write) {
    for (unsigned i = 0; i < qd_; ++i) FillRandom(pool_.data(i), request_bytes_, seed + i);
  }
  done_.reserve(ring_->cq_entries());
  return Status::Ok();
}

void IoPointRunner::Issue(unsigned slot) {
  io::IoOp& op = ops_[slot];
  op = io::IoOp{};
  op.kind = target_.write ? io::IoOp::kWrite : io::IoOp::kRead;
  op.fd = fixed_file_ ? 0 : target_.fd;
  op.fixed_file = fixed_file_;
  op.buf = pool_.data(slot);
  op.buf_index = result_.registered ? int(slot) : -1;
  op.len = request_bytes_;
  op.offset = ((first_op_ + issued_) % total_ops_) * request_bytes_;
  op.tag = slot;
  issued_ns_[slot] = NowNs();
  ring_->Queue(&op);
  ++issued_;
}

Status IoPointRunner::Complete(io::IoOp* op, uint64_t now_ns) {
  auto slot = unsigned(op->tag);
  DP420_ASSERT(slot < qd_);
  pool_.Release(slot);
  if (op->result != 0) return io::IoOpStatus(*op, target_.path);
  DP420_ASSERT(op->done_bytes == op->len);
  result_.latency->Record(now_ns - issued_ns_[slot]);
  result_.bytes += op->len;
  ++result_.ops;
  return Status::Ok();
}

Result<IoPointResult> IoPointRunner::Run(double seconds, uint64_t seed) {
  result_.qd = qd_;
  result_.request_bytes = request_bytes_;
  DP420_RETURN_IF_ERROR(Setup(seed));
  Status error;
  uint64_t start = NowNs();
  uint64_t deadline = start + Nanos(seconds);
  for (;;) {
    bool stop = !error.ok() || control_.Canceled() || NowNs() >= deadline;
    while (!stop && issued_ < total_ops_) {
      std::optional<unsigned> slot = pool_.Acquire();
      if (!slot) break;
      Issue(*slot);
    }
    DP420_ASSERT(ring_->in_flight() <= qd_);
    if (ring_->in_flight() == 0) break;
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    uint64_t now = NowNs();
    for (io::IoOp* op : done_) {
      Status s = Complete(op, now);
      if (error.ok() && !s.ok()) error = s;
    }
  }
  result_.seconds = Seconds(NowNs() - start);
  DP420_RETURN_IF_ERROR(error);
  if (control_.Canceled()) return Status::Canceled("bench canceled");
  if (target_.write) {
    uint64_t sync_start = NowNs();
    if (fdatasync(target_.fd) != 0) return PosixError("fdatasync " + target_.path, errno);
    result_.fdatasync_seconds = Seconds(NowNs() - sync_start);
  }
  return std::move(result_);
}

Json IoPointJson(const IoPointResult& r, bool write) {
  Json j = {{"qd", r.qd},
            {"request_bytes", r.request_bytes},
            {"gbps", RoundSig(r.gbps())},
            {"iops", uint64_t(std::llround(r.iops()))},
            {"ops", r.ops},
            {"seconds", RoundSig(r.seconds)}};
  if (write) j["fdatasync_ms"] = RoundSig(r.fdatasync_seconds * 1e3);
  j["lat_us"] = LatencyJson(*r.latency);
  return j;
}

// ---- Measurements kept for the verdict ----

struct ReadPoint {
  unsigned qd = 0;
  uint32_t request_bytes = 0;
  double gbps = 0;
};

struct KernelPoint {
  std::string kernel;
  uint32_t block_bytes = 0;
  double gbps = 0;
};

struct PipePoint {
  unsigned threads = 0;
  bool sha = false;
  double gbps = 0;
  double cores_busy = 0;  // CPU seconds / (wall seconds x threads)
  double cpu_wait = 0;    // seconds waiting for a CPU / (wall seconds x threads)
};

struct Measured {
  std::vector<ReadPoint> reads;
  std::vector<KernelPoint> kernels;
  std::vector<PipePoint> pipes;
};

// ---- Scratch file for the write test ----

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// min(1 GiB, free space / 4) in 4 MiB steps, at least 16 MiB.
Result<uint64_t> ScratchSize(const std::string& dir) {
  struct statvfs vfs = {};
  if (statvfs(dir.c_str(), &vfs) != 0) {
    return PosixError("--write-test: directory " + dir, errno);
  }
  uint64_t free_bytes = uint64_t(vfs.f_bavail) * uint64_t(vfs.f_frsize);
  uint64_t size = std::min(kScratchMaxBytes, free_bytes / 4) / kScratchGrainBytes *
                  kScratchGrainBytes;
  if (size < kScratchMinBytes) {
    return Status::NoSpace("--write-test: " + dir + " has " + SizeName(free_bytes / kMiB * kMiB) +
                           " free; the write test needs 4 x " + SizeName(kScratchMinBytes));
  }
  return size;
}

// A file this run created (O_EXCL) and deletes when it goes out of scope.
class ScratchFile {
 public:
  ScratchFile() = default;
  ~ScratchFile() { Remove(); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // Refuses an existing path (kExists), then creates and sizes the file.
  Status Create(const std::string& path);
  void Remove() {
    file_.Close();
    if (created_) unlink(path_.c_str());
    created_ = false;
  }
  const io::File& file() const { return file_; }
  uint64_t size_bytes() const { return size_bytes_; }

 private:
  io::File file_;
  std::string path_;
  bool created_ = false;
  uint64_t size_bytes_ = 0;
};

Status ScratchFile::Create(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    return Status::Exists(path + " exists: --write-test needs the name of a new file (it is " +
                          "created, written and deleted); nothing was written");
  }
  if (errno != ENOENT) return PosixError("--write-test: " + path, errno);
  DP420_ASSIGN_OR_RETURN(uint64_t size, ScratchSize(DirName(path)));
  DP420_ASSIGN_OR_RETURN(file_, io::File::OpenWrite(path, O_CREAT | O_EXCL | O_WRONLY, true));
  path_ = path;
  created_ = true;
  // Allocated up front: the points then measure writes, not block allocation
  // serialised by a growing file size.
  if (fallocate(file_.fd(), 0, 0, off_t(size)) != 0) {
    if (errno != EOPNOTSUPP) return PosixError("fallocate " + path, errno);
    DP420_RETURN_IF_ERROR(file_.Truncate(size));
  }
  size_bytes_ = size;
  return Status::Ok();
}

// ---- The run ----

struct Grid {
  std::vector<unsigned> depths;
  std::vector<uint32_t> requests;
  size_t points() const { return depths.size() * requests.size(); }
};

Grid ReadGrid(bool quick) {
  if (quick) return {{1, 32}, {64 * kKiB, kMiB}};
  return {{1, 4, 16, 32, 64}, {4 * kKiB, 64 * kKiB, 256 * kKiB, kMiB, 4 * kMiB}};
}

Grid WriteGrid(bool quick) {
  if (quick) return {{1, 32}, {64 * kKiB, kMiB}};
  return {{1, 16, 32}, {64 * kKiB, kMiB, 4 * kMiB}};
}

std::vector<unsigned> PipeThreads() {
  // All CPUs, within the buffer budget (kPipeDepth MiB per thread).
  constexpr uint64_t kPerThread = uint64_t{kPipeDepth} * kPipeRequestBytes;
  unsigned n = static_cast<unsigned>(
      std::min<uint64_t>(DefaultThreads(), kBufferBudgetBytes / kPerThread));
  if (n <= 1) return {1};
  return {1, n};
}

class Bench {
 public:
  explicit Bench(const BenchOptions& o) : o_(o), rng_(std::random_device{}()) {}
  Result<Json> Run();

 private:
  Status Open();
  Json DeviceJson() const;
  Status ReadPoints(Json* out);
  Status Kernels(Json* out);
  Result<PipePoint> Pipeline(unsigned threads, bool sha, Json* out);
  Status Pipelines(Json* out);
  Status WritePoints(Json* out);
  bool Aligned(uint32_t request, const io::FileInfo& info) const;
  Result<IoPointResult> IoPoint(const IoTarget& t, unsigned qd, uint32_t request);
  void Tick(const char* phase);

  const BenchOptions& o_;
  double seconds_ = kBenchDefaultSecondsPerPoint;
  std::mt19937_64 rng_;
  io::File source_;
  ScratchFile scratch_;
  bool registered_ = true;
  unsigned points_done_ = 0;
  unsigned points_total_ = 0;
  Measured m_;
};

void Bench::Tick(const char* phase) {
  DP420_ASSERT(points_done_ <= points_total_);
  if (o_.control.progress) o_.control.progress({phase, points_done_, points_total_});
}

Status Bench::Open() {
  double s = o_.seconds_per_point;
  if (!(s > 0 && s <= kMaxSecondsPerPoint)) {
    return Status::InvalidArgument("seconds per point must be in (0, 60], not " +
                                   Fixed(s, 3));
  }
  seconds_ = s;
  if (o_.source_path.empty()) return Status::InvalidArgument("no source given");
  // Read-only, always: OpenRead never asks for write access.
  DP420_ASSIGN_OR_RETURN(source_, io::File::OpenRead(o_.source_path, true));
  if (source_.info().size_bytes < kMinSourceBytes) {
    return Status::InvalidArgument(o_.source_path + " is too small to measure (" +
                                   std::to_string(source_.info().size_bytes) +
                                   " bytes; bench needs at least 1 MiB)");
  }
  if (!o_.write_test_path.empty()) DP420_RETURN_IF_ERROR(scratch_.Create(o_.write_test_path));
  return Status::Ok();
}

bool Bench::Aligned(uint32_t request, const io::FileInfo& info) const {
  uint32_t align = std::max<uint32_t>({info.dio_mem_align, info.dio_offset_align, 1});
  return request % align == 0;
}

Result<IoPointResult> Bench::IoPoint(const IoTarget& t, unsigned qd, uint32_t request) {
  IoPointRunner runner(t, o_.control, qd, request);
  DP420_ASSIGN_OR_RETURN(IoPointResult r, runner.Run(seconds_, rng_()));
  registered_ = registered_ && r.registered;
  return r;
}

Status Bench::ReadPoints(Json* out) {
  Grid grid = ReadGrid(o_.quick);
  IoTarget target{source_.fd(), false, 0, o_.source_path};
  for (uint32_t request : grid.requests) {
    for (unsigned qd : grid.depths) {
      ++points_done_;
      target.span_bytes = source_.info().size_bytes / request * request;
      if (target.span_bytes == 0 || (source_.direct() && !Aligned(request, source_.info()))) {
        continue;
      }
      // Buffered: drop the cached pages first, so each point reads the device.
      if (!source_.direct()) (void)posix_fadvise(source_.fd(), 0, 0, POSIX_FADV_DONTNEED);
      DP420_ASSIGN_OR_RETURN(IoPointResult r, IoPoint(target, qd, request));
      m_.reads.push_back({qd, request, r.gbps()});
      out->push_back(IoPointJson(r, false));
      Tick("bench read");
    }
  }
  return Status::Ok();
}

// Calls `fn` over `len` bytes for `seconds` (after one warm-up call); GB/s.
template <typename Fn>
double TimeKernel(Fn&& fn, size_t len, double seconds) {
  fn();
  size_t batch = std::max<size_t>(1, 4 * kMiB / len);
  uint64_t bytes = 0;
  uint64_t start = NowNs();
  uint64_t end = start + Nanos(seconds);
  uint64_t now = start;
  do {
    for (size_t i = 0; i < batch; ++i) fn();
    bytes += batch * len;
    now = NowNs();
  } while (now < end);
  return Gbps(bytes, Seconds(now - start));
}

Status Bench::Kernels(Json* out) {
  double seconds = std::clamp(seconds_ / 5, 0.005, 0.1);
  std::vector<uint8_t> data(kMiB), zeros(kMiB, 0);
  FillRandom(data.data(), data.size(), rng_());
  std::array<uint8_t, simd::kHashSecretBytes> secret;
  FillRandom(secret.data(), secret.size(), rng_());
  simd::BlockHasher hasher(secret);
  volatile uint64_t sink = 0;
  for (uint32_t len : kKernelBlocks) {
    const uint8_t* d = data.data();
    auto hash = [&] { sink = sink + hasher.Hash(d, len).lo; };
    auto zero = [&] { sink = sink + simd::IsZero(zeros.data(), len); };
    auto crc = [&] { sink = sink + simd::Crc32c(0, d, len); };
    auto sha = [&] {
      uint8_t digest[simd::kSha256Bytes];
      simd::Sha256(d, len, digest);
      sink = sink + digest[0];
    };
    m_.kernels.push_back({"hash", len, TimeKernel(hash, len, seconds)});
    m_.kernels.push_back({"is_zero", len, TimeKernel(zero, len, seconds)});
    m_.kernels.push_back({"crc32c", len, TimeKernel(crc, len, seconds)});
    m_.kernels.push_back({"sha256", len, TimeKernel(sha, len, seconds)});
  }
  for (const KernelPoint& k : m_.kernels) {
    out->push_back({{"kernel", k.kernel}, {"block_bytes", k.block_bytes},
                    {"gbps", RoundSig(k.gbps)}});
  }
  ++points_done_;
  Tick("bench kernels");
  return Status::Ok();
}

// ---- The read -> hash -> diff pipeline ----

// One pipeline run: threads, what they share, and the first error.
struct PipeJob {
  PipeJob(const io::File& f, unsigned n, bool with_sha, const JobControl& c, unsigned latch_count)
      : source(f), threads(n), sha(with_sha), control(c), ready(latch_count) {}
  const io::File& source;
  unsigned threads;
  bool sha;
  const JobControl& control;
  std::latch ready;            // workers set up; the clock starts
  uint64_t extents = 0;        // 1 MiB extents in the source
  uint64_t stripes = 0;        // 16-extent stripes
  uint64_t first_stripe = 0;   // random start, wrapping
  double seconds = 0;
  std::array<uint8_t, simd::kHashSecretBytes> secret{};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status error;
  void Fail(Status s) {
    std::lock_guard lock(mu);
    if (error.ok()) error = std::move(s);
    failed.store(true);
  }
};

struct PipeStats {
  uint64_t bytes = 0;
  uint64_t blocks = 0;
  uint64_t blocks_zero = 0;
  uint64_t blocks_same = 0;
  double cpu_seconds = 0;
  double cpu_wait_seconds = 0;  // runnable, waiting for a CPU
};

// One thread: its ring, its buffers, its stripes (id, id + N, ...), and a
// parent table page to compare against, as a backup worker has.
class PipeWorker {
 public:
  PipeWorker(PipeJob& job, unsigned id)
      : job_(job), id_(id), hasher_(job.secret), stripe_pos_(id) {}
  void Run();
  PipeStats stats;

 private:
  Status Setup();
  Status Loop();
  bool NextExtent(uint64_t* extent);
  void Issue(unsigned slot, uint64_t extent);
  Status OnRead(io::IoOp* op);
  void Digest(const uint8_t* data, uint64_t block);

  PipeJob& job_;
  unsigned id_;
  simd::BlockHasher hasher_;
  std::vector<io::IoOp> ops_;  // before ring_: the ring is drained first
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::vector<io::IoOp*> done_;
  bool registered_ = false;
  bool fixed_file_ = false;
  uint64_t stripe_pos_;        // position in the (rotated) stripe order
  uint64_t in_stripe_ = 0;     // next extent within that stripe
  Entry parent_[kPageEntries];
};

Status PipeWorker::Setup() {
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(kPipeRequestBytes, kPipeDepth));
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = kPipeDepth}));
  registered_ = pool_.Register(*ring_).ok();
  fixed_file_ = ring_->RegisterFiles({job_.source.fd()}).ok();
  ops_.resize(kPipeDepth);
  done_.reserve(ring_->cq_entries());
  // A parent page of other content: every compare runs to the end, as for
  // changed blocks; the cost of a compare does not depend on its outcome.
  std::mt19937_64 rng(id_ + 1);
  for (Entry& e : parent_) {
    e = Entry{};
    for (uint8_t& b : e.id) b = uint8_t(rng());
  }
  return Status::Ok();
}

bool PipeWorker::NextExtent(uint64_t* extent) {
  while (stripe_pos_ < job_.stripes) {
    uint64_t stripe = (stripe_pos_ + job_.first_stripe) % job_.stripes;
    uint64_t e = stripe * kPipeStripeExtents + in_stripe_;
    if (in_stripe_ < kPipeStripeExtents && e < job_.extents) {
      ++in_stripe_;
      *extent = e;
      return true;
    }
    stripe_pos_ += job_.threads;
    in_stripe_ = 0;
  }
  return false;
}

void PipeWorker::Issue(unsigned slot, uint64_t extent) {
  io::IoOp& op = ops_[slot];
  op = io::IoOp{};
  op.kind = io::IoOp::kRead;
  op.fd = fixed_file_ ? 0 : job_.source.fd();
  op.fixed_file = fixed_file_;
  op.buf = pool_.data(slot);
  op.buf_index = registered_ ? int(slot) : -1;
  op.len = kPipeRequestBytes;
  op.offset = extent * kPipeRequestBytes;
  op.tag = slot;
  ring_->Queue(&op);
}

// What backup does per block: zero detection, keyed hash, compare with the
// parent's entry, and (sha mode) the SHA-256 a stored block needs.
void PipeWorker::Digest(const uint8_t* data, uint64_t block) {
  ++stats.blocks;
  Entry e{};
  bool zero = simd::IsZero(data, kPipeBlockBytes);
  if (zero) {
    e.ref.flags = kObjZero;
    ++stats.blocks_zero;
  } else {
    hasher_.Hash(data, kPipeBlockBytes).ToBytes(e.id);
  }
  const Entry& old = parent_[block % kPageEntries];
  if (std::memcmp(old.id, e.id, sizeof(e.id)) == 0 &&
      (old.ref.flags & kObjZero) == (e.ref.flags & kObjZero)) {
    ++stats.blocks_same;
    return;
  }
  if (job_.sha && !zero) simd::Sha256(data, kPipeBlockBytes, e.ref.sha256);
}

Status PipeWorker::OnRead(io::IoOp* op) {
  auto slot = unsigned(op->tag);
  if (op->result != 0) {
    pool_.Release(slot);
    return io::IoOpStatus(*op, job_.source.path());
  }
  DP420_ASSERT(op->len % kPipeBlockBytes == 0);
  uint64_t first_block = op->offset / kPipeBlockBytes;
  for (uint32_t b = 0; b < op->len / kPipeBlockBytes; ++b) {
    Digest(op->buf + uint64_t{b} * kPipeBlockBytes, first_block + b);
  }
  stats.bytes += op->len;
  pool_.Release(slot);
  return Status::Ok();
}

Status PipeWorker::Loop() {
  uint64_t deadline = NowNs() + Nanos(job_.seconds);
  Status error;
  for (;;) {
    bool stop = !error.ok() || job_.failed.load(std::memory_order_relaxed) ||
                job_.control.Canceled() || NowNs() >= deadline;
    uint64_t extent = 0;
    while (!stop && pool_.available() > 0 && NextExtent(&extent)) Issue(*pool_.Acquire(), extent);
    DP420_ASSERT(ring_->in_flight() <= kPipeDepth);
    if (ring_->in_flight() == 0) break;
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* op : done_) {
      Status s = OnRead(op);
      if (error.ok() && !s.ok()) error = s;
    }
  }
  return error;
}

void PipeWorker::Run() {
  Status s = Setup();
  job_.ready.arrive_and_wait();  // also on failure: the others wait for this
  if (!s.ok()) {
    job_.Fail(s);
    return;
  }
  double cpu_start = ThreadCpuSeconds();
  double wait_start = ThreadRunqueueSeconds();
  s = Loop();
  stats.cpu_seconds = ThreadCpuSeconds() - cpu_start;
  stats.cpu_wait_seconds = ThreadRunqueueSeconds() - wait_start;
  if (!s.ok()) job_.Fail(s);
}

Json PipeJson(unsigned threads, bool sha, const PipeStats& t, double wall) {
  double gib = double(t.bytes) / double(kGiB);
  return Json{{"threads", threads},
              {"mode", sha ? "sha256" : "hash"},
              {"qd", kPipeDepth},
              {"request_bytes", kPipeRequestBytes},
              {"block_bytes", kPipeBlockBytes},
              {"gbps", RoundSig(Gbps(t.bytes, wall))},
              {"bytes", t.bytes},
              {"blocks", t.blocks},
              {"blocks_zero", t.blocks_zero},
              {"seconds", RoundSig(wall)},
              {"cpu_seconds", RoundSig(t.cpu_seconds)},
              {"cpu_wait_seconds", RoundSig(t.cpu_wait_seconds)},
              {"cpu_seconds_per_gib", RoundSig(gib > 0 ? t.cpu_seconds / gib : 0)},
              {"cores_busy", RoundSig(wall > 0 ? t.cpu_seconds / wall / threads : 0, 3)}};
}

Result<PipePoint> Bench::Pipeline(unsigned threads, bool sha, Json* out) {
  PipeJob job(source_, threads, sha, o_.control, threads + 1);
  job.extents = source_.info().size_bytes / kPipeRequestBytes;
  DP420_ASSERT(job.extents > 0);  // Open() refuses sources under 1 MiB
  job.stripes = DivCeil(job.extents, kPipeStripeExtents);
  job.first_stripe = rng_() % job.stripes;
  job.seconds = 2 * seconds_;
  FillRandom(job.secret.data(), job.secret.size(), rng_());
  if (!source_.direct()) (void)posix_fadvise(source_.fd(), 0, 0, POSIX_FADV_DONTNEED);
  std::vector<std::unique_ptr<PipeWorker>> workers;
  for (unsigned i = 0; i < threads; ++i) workers.push_back(std::make_unique<PipeWorker>(job, i));
  std::vector<std::thread> pool;
  pool.reserve(workers.size());
  for (auto& w : workers) pool.emplace_back([&w] { w->Run(); });
  job.ready.arrive_and_wait();
  uint64_t start = NowNs();
  for (auto& t : pool) t.join();
  double wall = Seconds(NowNs() - start);
  DP420_RETURN_IF_ERROR(job.error);
  if (o_.control.Canceled()) return Status::Canceled("bench canceled");
  PipeStats total;
  for (auto& w : workers) {
    total.bytes += w->stats.bytes;
    total.blocks += w->stats.blocks;
    total.blocks_zero += w->stats.blocks_zero;
    total.cpu_seconds += w->stats.cpu_seconds;
    total.cpu_wait_seconds += w->stats.cpu_wait_seconds;
  }
  out->push_back(PipeJson(threads, sha, total, wall));
  double thread_seconds = wall * threads;
  if (thread_seconds <= 0) return Status::Internal("pipeline run took no time");
  return PipePoint{threads, sha, Gbps(total.bytes, wall), total.cpu_seconds / thread_seconds,
                   total.cpu_wait_seconds / thread_seconds};
}

Status Bench::Pipelines(Json* out) {
  for (bool sha : {false, true}) {
    for (unsigned threads : PipeThreads()) {
      DP420_ASSIGN_OR_RETURN(PipePoint p, Pipeline(threads, sha, out));
      m_.pipes.push_back(p);
      ++points_done_;
      Tick("bench pipeline");
    }
  }
  return Status::Ok();
}

Status Bench::WritePoints(Json* out) {
  Grid grid = WriteGrid(o_.quick);
  const io::File& f = scratch_.file();
  IoTarget target{f.fd(), true, scratch_.size_bytes(), o_.write_test_path};
  for (uint32_t request : grid.requests) {
    for (unsigned qd : grid.depths) {
      ++points_done_;
      if (f.direct() && !Aligned(request, f.info())) continue;
      DP420_ASSIGN_OR_RETURN(IoPointResult r, IoPoint(target, qd, request));
      out->push_back(IoPointJson(r, true));
      Tick("bench write");
    }
  }
  return Status::Ok();
}

// ---- Verdict ----

const ReadPoint* BestRead(const Measured& m) {
  const ReadPoint* best = nullptr;
  for (const ReadPoint& r : m.reads) {
    if (!best || r.gbps > best->gbps) best = &r;
  }
  return best;
}

// The best read at `request` with at most kInFlightBytes in flight: what the
// engine's reads of that size can reach. 0 when not measured.
double EngineReadGbps(const Measured& m, uint32_t request) {
  double best = 0;
  for (const ReadPoint& r : m.reads) {
    if (r.request_bytes == request && uint64_t{r.qd} * request <= kInFlightBytes) {
      best = std::max(best, r.gbps);
    }
  }
  return best;
}

double KernelGbps(const Measured& m, const char* kernel, uint32_t block) {
  for (const KernelPoint& k : m.kernels) {
    if (k.kernel == kernel && k.block_bytes == block) return k.gbps;
  }
  return 0;
}

const PipePoint* BestPipe(const Measured& m, bool sha) {
  const PipePoint* best = nullptr;
  for (const PipePoint& p : m.pipes) {
    if (p.sha == sha && (!best || p.gbps > best->gbps)) best = &p;
  }
  return best;
}

// What limits one pipeline run. The device, when the run reaches 90 % of the
// device's best or its threads spend less than half their time on a CPU (or
// waiting for one). Otherwise the CPU: SHA-256 or the hash when that kernel,
// at its in-cache speed, accounts for most of the CPU time; else moving the
// data (memory: cache misses, copies, the ring).
const char* PipeLimit(const Measured& m, const PipePoint& p, double device_gbps) {
  if (p.gbps >= 0.9 * device_gbps || p.cores_busy + p.cpu_wait < 0.5) return "device";
  double busy_gbps = p.gbps / (p.threads * p.cores_busy);  // per second of CPU time
  double sha = KernelGbps(m, "sha256", kPipeBlockBytes);
  double hash = KernelGbps(m, "hash", kPipeBlockBytes);
  if (p.sha && sha > 0 && busy_gbps / sha >= 0.5) return "sha256";
  if (hash > 0 && busy_gbps / hash >= 0.5) return "hash";
  return "memory";
}

// The smallest measured block size whose table costs at most 0.1 % of the
// volume (one 64-byte entry per block) and whose reads, as the engine issues
// them (max(block, 1 MiB) per request, 32 MiB in flight), reach 90 % of the
// best point of the read grid.
uint32_t RecommendBlockSize(const Measured& m, double read_gbps, std::string* why) {
  std::vector<uint32_t> sizes;
  for (const ReadPoint& r : m.reads) sizes.push_back(r.request_bytes);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  uint32_t fallback = 0;
  double fallback_gbps = 0;
  for (uint32_t block : sizes) {
    if (double(sizeof(Entry)) / block > 0.001) continue;
    uint32_t request = std::max(block, kMinExtentBytes);
    double gbps = EngineReadGbps(m, request);
    if (gbps >= 0.9 * read_gbps) {
      *why = SizeName(block) + " blocks: the engine reads them " + SizeName(request) +
             " at a time, which reached " + Fixed(gbps, 2) + " GB/s, and their table costs " +
             Fixed(100.0 * sizeof(Entry) / block, 3) + " % of the volume";
      return block;
    }
    if (gbps > fallback_gbps) {
      fallback = block;
      fallback_gbps = gbps;
    }
  }
  if (fallback == 0) fallback = kDefaultBlockSize;
  *why = SizeName(fallback) + " blocks: none of the engine's read sizes reached 90 % of the " +
         "best point; reads of " + SizeName(std::max(fallback, kMinExtentBytes)) +
         " came closest (" + Fixed(fallback_gbps, 2) + " GB/s)";
  return fallback;
}

// The fewest threads whose hash pipeline reaches 95 % of the device's best;
// else the fastest run's.
unsigned RecommendThreads(const Measured& m, double device_gbps, std::string* why) {
  const PipePoint* pick = nullptr;
  for (const PipePoint& p : m.pipes) {
    if (!p.sha && p.gbps >= 0.95 * device_gbps && (!pick || p.threads < pick->threads)) pick = &p;
  }
  bool reached = pick != nullptr;
  if (!pick) pick = BestPipe(m, false);
  if (!pick) {
    return static_cast<unsigned>(std::min<uint64_t>(
        DefaultThreads(), kBufferBudgetBytes / WorkerBufferBytes(kDefaultBlockSize)));
  }
  *why = std::to_string(pick->threads) + " thread(s): " + Fixed(pick->gbps, 2) + " GB/s, " +
         (reached ? "the fewest that reach 95 % of the device's best"
                  : "the fastest pipeline measured");
  return pick->threads;
}

std::string PipeSentence(const char* what, const PipePoint& p, const char* limit,
                         double device_gbps) {
  std::string s = std::string(what) + " " + Fixed(p.gbps, 2) + " GB/s with " +
                  std::to_string(p.threads) + " thread(s) (" +
                  Fixed(100 * p.gbps / device_gbps, 0) + " % of the device, cores " +
                  Fixed(100 * p.cores_busy, 0) + " % busy";
  if (p.cpu_wait >= 0.1) {
    s += ", " + Fixed(100 * p.cpu_wait, 0) + " % waiting for a CPU held by other threads";
  }
  return s + "): limited by " + limit;
}

// The device's best: the fastest it was seen to deliver, by the read grid or
// by a pipeline run (which reads it too).
double DeviceGbps(const Measured& m) {
  double best = 0;
  for (const ReadPoint& r : m.reads) best = std::max(best, r.gbps);
  for (const PipePoint& p : m.pipes) best = std::max(best, p.gbps);
  return best;
}

Json Verdict(const Measured& m) {
  const ReadPoint* best = BestRead(m);
  const PipePoint* hash = BestPipe(m, false);
  const PipePoint* sha = BestPipe(m, true);
  if (!best || !hash || !sha) return Json{{"limit", "unknown"}, {"reason", "too few points"}};
  double device = DeviceGbps(m);
  const char* limit = PipeLimit(m, *hash, device);
  const char* full_limit = PipeLimit(m, *sha, device);
  std::string block_why, threads_why;
  uint32_t block = RecommendBlockSize(m, best->gbps, &block_why);
  unsigned threads = RecommendThreads(m, device, &threads_why);
  std::string reason = "The device delivered up to " + Fixed(device, 2) + " GB/s (read grid: " +
                       Fixed(best->gbps, 2) + " GB/s at QD " + std::to_string(best->qd) +
                       " x " + SizeName(best->request_bytes) + "). " +
                       PipeSentence("Incremental pipeline:", *hash, limit, device) + ". " +
                       PipeSentence("Full backup (SHA-256 per block):", *sha, full_limit, device) +
                       ". " + block_why + ". " + threads_why + ".";
  return Json{{"limit", limit},
              {"full_backup_limit", full_limit},
              {"device_gbps", RoundSig(device)},
              {"recommended_block_size", block},
              {"recommended_threads", threads},
              {"reason", reason}};
}

// True for a loop device whose backing file is read through the page cache
// (/sys/dev/block/MAJ:MIN/loop/dio is 0): its "device" reads are memory reads.
bool CachedLoopDevice(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISBLK(st.st_mode)) return false;
  std::string path = io::SysBlockPath(st.st_rdev, "loop/dio");
  int dio = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (dio < 0) return false;
  char c = 0;
  bool cached = read(dio, &c, 1) == 1 && c == '0';
  close(dio);
  return cached;
}

Json Bench::DeviceJson() const {
  const io::FileInfo& info = source_.info();
  Json d = {{"path", o_.source_path},
            {"kind", info.is_block_device ? "block-device" : "file"},
            {"size_bytes", info.size_bytes},
            {"direct", source_.direct()},
            {"dio_mem_align_bytes", info.dio_mem_align},
            {"dio_offset_align_bytes", info.dio_offset_align},
            {"registered_buffers", registered_}};
  std::string note;
  if (!source_.direct()) {
    note = "O_DIRECT is not possible on this source (no direct I/O alignment reported, e.g. "
           "tmpfs): reads are buffered, the page cache is dropped before each point, and the "
           "numbers may still include cached data. ";
  }
  if (CachedLoopDevice(source_.fd())) {
    note += "A loop device without direct I/O: its reads may come from the page cache of its "
            "backing file (losetup --direct-io=on measures the backing device). ";
  }
  if (info.size_bytes < kGiB) {
    note += "The source is small: each point stops after one pass over it, so its numbers "
            "come from short runs. ";
  }
  if (!registered_) {
    note += "Some points ran without registered buffers (RLIMIT_MEMLOCK too low). ";
  }
  while (!note.empty() && note.back() == ' ') note.pop_back();
  if (!note.empty()) d["note"] = note;
  return d;
}

Result<Json> Bench::Run() {
  uint64_t start = NowNs();
  DP420_RETURN_IF_ERROR(Open());
  points_total_ = unsigned(ReadGrid(o_.quick).points() + 1 + 2 * PipeThreads().size());
  if (!o_.write_test_path.empty()) points_total_ += unsigned(WriteGrid(o_.quick).points());
  Tick("bench read");
  Json read = Json::array(), kernels = Json::array(), pipeline = Json::array();
  DP420_RETURN_IF_ERROR(ReadPoints(&read));
  DP420_RETURN_IF_ERROR(Kernels(&kernels));
  DP420_RETURN_IF_ERROR(Pipelines(&pipeline));
  Json doc = {{"device", DeviceJson()},
              {"cpu", {{"threads_available", DefaultThreads()},
                       {"simd_level", simd::LevelName(simd::ActiveLevel())}}},
              {"settings", {{"seconds_per_point", seconds_}, {"quick", o_.quick}}},
              {"read", read}, {"kernels", kernels}, {"pipeline", pipeline}};
  if (!o_.write_test_path.empty()) {
    Json write = Json::array();
    DP420_RETURN_IF_ERROR(WritePoints(&write));
    doc["write"] = write;
    doc["write_file"] = {{"path", o_.write_test_path}, {"size_bytes", scratch_.size_bytes()},
                         {"direct", scratch_.file().direct()}};
    if (!scratch_.file().direct()) {
      doc["write_file"]["note"] = "O_DIRECT is not possible there: writes are buffered and "
                                  "reach the device at each point's fdatasync";
    }
    scratch_.Remove();
  }
  doc["verdict"] = Verdict(m_);
  doc["seconds"] = RoundSig(Seconds(NowNs() - start));
  return doc;
}

}  // namespace

double RoundSignificant(double v, int digits) {
  if (v == 0 || !std::isfinite(v)) return 0;
  int magnitude = int(std::ceil(std::log10(std::fabs(v))));
  double scale = std::pow(10.0, digits - magnitude);
  return std::round(v * scale) / scale;
}

Result<double> MeasureReadBytesPerS(const io::File& file, unsigned qd, uint32_t request_bytes,
                                    double seconds, uint64_t seed, const JobControl& control) {
  const uint64_t span = file.info().size_bytes / request_bytes * request_bytes;
  if (span == 0) {
    return Status::InvalidArgument(file.path() + " is smaller than one " +
                                   std::to_string(request_bytes) + "-byte read request");
  }
  // The runner keeps a reference to its target: a named one, alive as long as it.
  const IoTarget target{file.fd(), false, span, file.path()};
  IoPointRunner runner(target, control, qd, request_bytes);
  DP420_ASSIGN_OR_RETURN(IoPointResult r, runner.Run(seconds, seed));
  return r.seconds > 0 ? static_cast<double>(r.bytes) / r.seconds : 0.0;
}

Result<Json> RunBench(const BenchOptions& options) {
  Bench bench(options);
  return bench.Run();
}

}  // namespace dp420
