// Read throughput of io::Ring + io::BufferPool against a 1 GiB scratch file,
// by queue depth and request size. Each reports bytes/s, reads/s (items/s
// and the "iops" counter) in wall-clock time.
//
// The scratch file (random bytes) is created on first use in $DP420_BENCH_DIR,
// or /var/tmp when unset, and removed at exit, also on SIGINT/SIGTERM. It must
// live on a file system that supports O_DIRECT (not tmpfs).
//
// Variants (names read RingRead/<variant>/QD<depth>/<request>):
//   direct-fixed: O_DIRECT, registered buffers (read_fixed): the engine's path,
//                 QD {1,4,16,32,64} x {4 KiB, 64 KiB, 256 KiB, 1 MiB};
//   direct:       O_DIRECT, plain buffers, QD32 x 1 MiB;
//   buffered:     page cache, warmed by one full read first, QD32 x 1 MiB.
// The file is a registered file in every variant, as in the engine.
//
// Each benchmark keeps `depth` reads in flight: an iteration is one ring turn
// (submit, wait for at least one completion, requeue what finished), so the
// queue never drains. Reads walk the file sequentially and wrap at its end.
// The Time column is therefore per ring turn; read the rates instead.
//
// Default minimum time per point: 0.2 s (override with --benchmark_min_time).
// Single-threaded.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/ring.h"

namespace dp420::io {
namespace {

constexpr uint64_t kFileBytes = uint64_t{1} << 30;
constexpr size_t kFillChunkBytes = size_t{4} << 20;
constexpr unsigned kDepths[] = {1, 4, 16, 32, 64};
constexpr uint32_t kRequestSizes[] = {uint32_t{4} << 10, uint32_t{64} << 10, uint32_t{256} << 10,
                                      uint32_t{1} << 20};

enum class Mode { kDirectFixed, kDirect, kBuffered };

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kDirectFixed:
      return "direct-fixed";
    case Mode::kDirect:
      return "direct";
    case Mode::kBuffered:
      return "buffered";
  }
  return "?";
}


// The path the signal handler unlinks; set once the file exists.
char g_scratch_path[4096];

void RemoveScratchOnSignal(int sig) {
  if (g_scratch_path[0] != '\0') unlink(g_scratch_path);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// The scratch file: created on first use, removed by the destructor.
class ScratchFile {
 public:
  ScratchFile() = default;
  ~ScratchFile() {
    if (!path_.empty()) unlink(path_.c_str());
    g_scratch_path[0] = '\0';
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // Creates the file on the first call; later calls return the first result.
  const Status& Ensure() {
    if (!created_) {
      created_ = true;
      status_ = Create();
    }
    return status_;
  }
  const std::string& path() const { return path_; }

  // Reads the whole file once through the page cache (for kBuffered).
  Status Warm();

 private:
  Status Create();
  Status Fill(const File& file);

  bool created_ = false;
  bool warm_ = false;
  Status status_;
  std::string path_;
};

Status ScratchFile::Create() {
  const char* dir = std::getenv("DP420_BENCH_DIR");
  std::string pattern =
      std::string(dir != nullptr && *dir != '\0' ? dir : "/var/tmp") + "/dp420_bench_ring.XXXXXX";
  if (pattern.size() >= sizeof(g_scratch_path)) return Status::InvalidArgument("path too long");
  int fd = mkstemp(pattern.data());
  if (fd < 0) return PosixError("mkstemp " + pattern, errno);
  path_ = pattern;
  std::memcpy(g_scratch_path, path_.c_str(), path_.size() + 1);
  File file = File::Adopt(fd, path_, false);
  DP420_RETURN_IF_ERROR(Fill(file));
  DP420_RETURN_IF_ERROR(file.Sync());
  // Written pages are clean after fdatasync; drop them so that only the
  // buffered variant, which warms the file itself, reads from the cache.
  (void)posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED);
  return Status::Ok();
}

Status ScratchFile::Fill(const File& file) {
  std::vector<uint8_t> chunk(kFillChunkBytes);
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  for (uint64_t offset = 0; offset < kFileBytes; offset += chunk.size()) {
    bench::FillPseudoRandom(&state, chunk.data(), chunk.size());
    DP420_RETURN_IF_ERROR(file.WriteAt(offset, chunk.data(), chunk.size()));
  }
  return Status::Ok();
}

Status ScratchFile::Warm() {
  if (warm_) return Status::Ok();
  DP420_ASSIGN_OR_RETURN(File file, File::OpenRead(path_, false));
  std::vector<uint8_t> chunk(kFillChunkBytes);
  for (uint64_t offset = 0; offset < kFileBytes; offset += chunk.size()) {
    DP420_RETURN_IF_ERROR(file.ReadAt(offset, chunk.data(), chunk.size()));
  }
  warm_ = true;
  return Status::Ok();
}

ScratchFile* g_scratch = nullptr;

// Keeps `depth` sequential reads in flight over [0, kFileBytes), wrapping at
// the end. Each op owns one pool buffer while in the kernel.
class QueueReader {
 public:
  QueueReader(Ring* ring, BufferPool* pool, uint32_t request_bytes)
      : ring_(ring), pool_(pool), request_bytes_(request_bytes), ops_(pool->count()) {
    done_.reserve(ring->cq_entries());
  }

  // Queues one read per buffer (submitted by the first Turn()).
  void Start() {
    for (IoOp& op : ops_) QueueNext(&op);
  }
  // One ring turn: submit, wait for >= 1 completion, requeue the finished.
  Status Turn();
  // Waits for every read still in flight; requeues none.
  Status Drain();

  uint64_t reads() const { return reads_; }
  uint64_t bytes() const { return bytes_; }

 private:
  void QueueNext(IoOp* op);

  Ring* ring_;
  BufferPool* pool_;
  uint32_t request_bytes_;
  std::vector<IoOp> ops_;
  std::vector<IoOp*> done_;
  uint64_t next_offset_ = 0;
  uint64_t reads_ = 0;
  uint64_t bytes_ = 0;
};

void QueueReader::QueueNext(IoOp* op) {
  std::optional<unsigned> buffer = pool_->Acquire();
  DP420_ASSERT(buffer.has_value());  // one buffer per op
  if (next_offset_ + request_bytes_ > kFileBytes) next_offset_ = 0;
  *op = IoOp{};
  op->kind = IoOp::kRead;
  op->fd = 0;  // registered file index
  op->fixed_file = true;
  op->buf_index = pool_->registered() ? static_cast<int>(*buffer) : -1;
  op->buf = pool_->data(*buffer);
  op->len = request_bytes_;
  op->offset = next_offset_;
  op->tag = *buffer;
  next_offset_ += request_bytes_;
  ring_->Queue(op);
}

Status QueueReader::Turn() {
  done_.clear();
  DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
  for (IoOp* op : done_) {
    DP420_RETURN_IF_ERROR(IoOpStatus(*op, g_scratch->path()));
    DP420_ASSERT(op->done_bytes == op->len);
    ++reads_;
    bytes_ += op->len;
    pool_->Release(static_cast<unsigned>(op->tag));
    QueueNext(op);
  }
  DP420_ASSERT(ring_->in_flight() <= ops_.size());
  return Status::Ok();
}

Status QueueReader::Drain() {
  Status first;
  while (ring_->in_flight() > 0) {
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(ring_->in_flight(), &done_));
    for (IoOp* op : done_) {
      if (first.ok()) first = IoOpStatus(*op, g_scratch->path());
      pool_->Release(static_cast<unsigned>(op->tag));
    }
  }
  DP420_ASSERT(pool_->available() == pool_->count());
  return first;
}

struct Case {
  Mode mode;
  unsigned depth;
  uint32_t request_bytes;
};

// Opens the scratch file as `c` wants it; kInvalidArgument when O_DIRECT is
// wanted and refused.
Result<File> OpenScratch(const Case& c) {
  DP420_RETURN_IF_ERROR(g_scratch->Ensure());
  const bool direct = c.mode != Mode::kBuffered;
  if (!direct) DP420_RETURN_IF_ERROR(g_scratch->Warm());
  DP420_ASSIGN_OR_RETURN(File file, File::OpenRead(g_scratch->path(), direct));
  if (direct && !file.direct()) {
    return Status::InvalidArgument(g_scratch->path() +
                                   ": O_DIRECT refused (set DP420_BENCH_DIR to a disk)");
  }
  return file;
}

// Sets up the ring and pool for `c`, then runs the timed loop.
Status RunCase(benchmark::State& state, const Case& c) {
  DP420_ASSIGN_OR_RETURN(File file, OpenScratch(c));
  // The pool outlives the ring: ~Ring drains reads still writing into it.
  DP420_ASSIGN_OR_RETURN(BufferPool pool, BufferPool::Create(c.request_bytes, c.depth));
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<Ring> ring, Ring::Create({.depth = c.depth}));
  if (c.mode == Mode::kDirectFixed) DP420_RETURN_IF_ERROR(pool.Register(*ring));
  DP420_RETURN_IF_ERROR(ring->RegisterFiles({file.fd()}));
  QueueReader reader(ring.get(), &pool, c.request_bytes);
  reader.Start();
  for (auto _ : state) {
    Status status = reader.Turn();
    if (!status.ok()) return status;
  }
  // Outside the timed loop: reads still in flight are not counted.
  const uint64_t reads = reader.reads();
  const uint64_t bytes = reader.bytes();
  DP420_RETURN_IF_ERROR(reader.Drain());
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.SetItemsProcessed(static_cast<int64_t>(reads));
  state.counters["iops"] =
      benchmark::Counter(static_cast<double>(reads), benchmark::Counter::kIsRate);
  return Status::Ok();
}

void BM_RingRead(benchmark::State& state, Case c) {
  Status status = RunCase(state, c);
  if (!status.ok()) state.SkipWithError(status.ToString().c_str());
}

std::string SizeName(uint32_t bytes) {
  if (bytes >= (uint32_t{1} << 20)) return std::to_string(bytes >> 20) + "MiB";
  return std::to_string(bytes >> 10) + "KiB";
}

void Register(const Case& c) {
  const std::string name = std::string("RingRead/") + ModeName(c.mode) + "/QD" +
                           std::to_string(c.depth) + "/" + SizeName(c.request_bytes);
  benchmark::RegisterBenchmark(name.c_str(), BM_RingRead, c)->UseRealTime();
}

void RegisterAll() {
  for (unsigned depth : kDepths) {
    for (uint32_t request : kRequestSizes) Register({Mode::kDirectFixed, depth, request});
  }
  Register({Mode::kDirect, 32, uint32_t{1} << 20});
  Register({Mode::kBuffered, 32, uint32_t{1} << 20});
}

}  // namespace
}  // namespace dp420::io

int main(int argc, char** argv) {
  // 0.2 s per point keeps a full run near half a minute; an explicit
  // --benchmark_min_time comes later on the command line and wins.
  std::vector<char*> args(argv, argv + argc);
  char default_min_time[] = "--benchmark_min_time=0.2";
  args.insert(args.begin() + 1, default_min_time);
  int args_count = static_cast<int>(args.size());
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  dp420::io::ScratchFile scratch;
  dp420::io::g_scratch = &scratch;
  std::signal(SIGINT, dp420::io::RemoveScratchOnSignal);
  std::signal(SIGTERM, dp420::io::RemoveScratchOnSignal);
  dp420::io::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
