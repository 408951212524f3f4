// Pack and block-table throughput: encoding blocks into packs, decoding them,
// building a table's pages and walking its leaves. Each reports bytes/s and
// items/s (records or pages) in wall-clock time, since most of it is I/O.
//
// All files live in a scratch repository under $DP420_BENCH_DIR, or /var/tmp
// when unset (dp420_bench_pack.XXXXXX/), removed at exit; each encode or build
// iteration deletes its pack outside the timed region.
//
//   PackEncode/<path>/<buffered|direct>/64KiB: one iteration hashes (SHA-256)
//     and writes 1024 distinct 64 KiB blocks into a new pack, then Finish()
//     writes the trailer and fdatasyncs. <path> is WriteRecord (synchronous,
//     copies into an aligned buffer) or Reserve+pwrite (the caller writes the
//     block in place at the reserved offset, as the engine's ring does). The
//     blocks come from a 64 MiB arena, 2x the L3 of the machines we run on.
//   PackDecode/ReadRecord/64KiB/<warm|cold>: one iteration reads every record
//     of a 64 MiB pack and checks its SHA-256; cold drops the pack from the
//     page cache before each iteration (untimed).
//   PackDecode/ReadIndex/1024records: footer and trailer index (CRC-checked).
//   TableBuild/1024leaves: TableBuilder (no parent) over 1024 leaf pages of
//     256 entries (a 16 GiB volume of 64 KiB blocks), every page written into
//     a new pack with WriteRecord, then Finish(). Items are pages written.
//   TableWalk/Leaf/1024leaves/<warm|cold>: a fresh TableReader reads every
//     leaf in order, checking each page's SHA-256. Items are leaf pages.
// Table benchmarks also report "block_data": the volume bytes the pages
// describe, per second.
//
// Default minimum time per point: 0.2 s (override with --benchmark_min_time).
// Single-threaded.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/core/format.h"
#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/core/repo.h"
#include "engine/core/table.h"
#include "io/assert.h"
#include "simd/simd.h"

namespace dp420 {
namespace {

constexpr uint32_t kBlockBytes = uint32_t{64} << 10;
constexpr uint32_t kPackRecords = 1024;
constexpr size_t kArenaBytes = size_t{kPackRecords} * kBlockBytes;  // 64 MiB
constexpr uint32_t kLeafPages = 1024;
constexpr uint64_t kTableBlocks = uint64_t{kLeafPages} * kPageEntries;
constexpr size_t kHugePageBytes = size_t{2} << 20;

enum class WritePath { kWriteRecord, kReservePwrite };


struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<uint8_t, FreeDeleter>;

// 2 MiB aligned (so also 4 KiB aligned for O_DIRECT), huge pages if allowed.
AlignedBuf AllocArena(size_t bytes) {
  DP420_ASSERT(bytes % kHugePageBytes == 0);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kHugePageBytes, bytes));
  DP420_ASSERT(p != nullptr);
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // best effort
  return AlignedBuf(p);
}

Status NoJournal(uint32_t) { return Status::Ok(); }

// Drops a file's clean pages from the page cache.
Status DropCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return PosixError("open " + path, errno);
  int err = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (err != 0) return PosixError("posix_fadvise " + path, err);
  return Status::Ok();
}

// Finishes `writer` when `status` is OK; deletes the pack otherwise.
Status FinishOrAbandon(PackWriter* writer, Status status) {
  if (status.ok()) status = writer->Finish();
  if (!status.ok()) writer->Abandon();
  return status;
}

struct PackFixture {
  std::string path;
  uint32_t pack_id = 0;
  std::vector<ObjRef> index;
};

struct TableFixture {
  std::string pack_path;
  Manifest manifest;
};

// The scratch repository and the source data, created on first use and
// removed by the destructor.
class Workspace {
 public:
  Workspace() = default;
  ~Workspace() {
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Creates everything on the first call; later calls return its result.
  const Status& Ensure() {
    if (!created_) {
      created_ = true;
      status_ = Create();
    }
    return status_;
  }
  const Repository& repo() const { return *repo_; }
  const uint8_t* block(uint32_t i) const { return blocks_.get() + size_t{i} * kBlockBytes; }
  const Entry* leaf(uint32_t page) const {
    return reinterpret_cast<const Entry*>(leaves_.get()) + size_t{page} * kPageEntries;
  }
  // A closed pack of the arena's blocks, written once (for decoding).
  Result<const PackFixture*> DecodePack();
  // A closed table over the leaf arena, built and checked once (for walking).
  Result<const TableFixture*> Table();

 private:
  Status Create();
  void FillLeaves();

  bool created_ = false;
  Status status_;
  std::string dir_;
  std::unique_ptr<Repository> repo_;
  AlignedBuf blocks_;
  AlignedBuf leaves_;
  std::optional<PackFixture> decode_pack_;
  std::optional<TableFixture> table_;
};

Status Workspace::Create() {
  const char* base = std::getenv("DP420_BENCH_DIR");
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/var/tmp") +
                        "/dp420_bench_pack.XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return PosixError("mkdtemp " + pattern, errno);
  dir_ = pattern;
  DP420_RETURN_IF_ERROR(Repository::Init(dir_ + "/repo"));
  DP420_ASSIGN_OR_RETURN(repo_, Repository::Open(dir_ + "/repo"));
  blocks_ = AllocArena(kArenaBytes);
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  bench::FillPseudoRandom(&state, blocks_.get(), kArenaBytes);
  FillLeaves();
  return Status::Ok();
}

// Plausible leaf entries: random ids and digests, distinct per block, each
// pointing at a 64 KiB record. Every page differs, so none is deduplicated.
void Workspace::FillLeaves() {
  const size_t bytes = kTableBlocks * sizeof(Entry);
  static_assert(kTableBlocks * sizeof(Entry) % kHugePageBytes == 0);
  leaves_ = AllocArena(bytes);
  auto* entries = reinterpret_cast<Entry*>(leaves_.get());
  uint64_t state = 0xD1B54A32D192ED03ULL;
  for (uint64_t i = 0; i < kTableBlocks; ++i) {
    Entry e{};
    bench::FillPseudoRandom(&state, e.id, sizeof(e.id));
    bench::FillPseudoRandom(&state, e.ref.sha256, sizeof(e.ref.sha256));
    e.ref.pack_id = 1;
    e.ref.offset_4k = static_cast<uint32_t>(1 + i * (kBlockBytes / kRecordAlign));
    e.ref.stored_len = kBlockBytes;
    entries[i] = e;
  }
}

// One pack written by EncodePack().
struct PackWritten {
  std::string path;  // set as soon as the file exists, for the caller to remove
  uint32_t pack_id = 0;
  bool direct = false;
};

// Writes the block in place at the offset Reserve() hands out.
Status ReserveAndPwrite(PackWriter* writer, const uint8_t* data, ObjRef* ref) {
  static_assert(kBlockBytes % kRecordAlign == 0, "no padding needed");
  writer->Reserve(kBlockBytes, ref);
  size_t done = 0;
  while (done < kBlockBytes) {
    ssize_t n = pwrite(writer->fd(), data + done, kBlockBytes - done,
                       static_cast<off_t>(ref->offset_bytes() + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return PosixError("write " + writer->path(), n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Hashes and writes every arena block into a new pack, then finishes it.
Status EncodePack(const Workspace& ws, WritePath how, bool direct, PackWritten* out) {
  DP420_ASSIGN_OR_RETURN(
      PackWriter writer,
      PackWriter::Create(ws.repo().PacksDir(), ws.repo().repo_id(), direct, NoJournal));
  out->path = writer.path();
  out->pack_id = writer.pack_id();
  out->direct = writer.direct();
  Status status;
  for (uint32_t i = 0; i < kPackRecords && status.ok(); ++i) {
    const uint8_t* data = ws.block(i);
    ObjRef ref{};
    simd::Sha256(data, kBlockBytes, ref.sha256);
    status = how == WritePath::kWriteRecord ? writer.WriteRecord(data, kBlockBytes, &ref)
                                            : ReserveAndPwrite(&writer, data, &ref);
  }
  return FinishOrAbandon(&writer, std::move(status));
}

Result<const PackFixture*> Workspace::DecodePack() {
  if (decode_pack_) return &*decode_pack_;
  PackWritten written;
  DP420_RETURN_IF_ERROR(EncodePack(*this, WritePath::kWriteRecord, false, &written));
  DP420_ASSIGN_OR_RETURN(PackReader reader, PackReader::Open(written.path, written.pack_id));
  DP420_ASSIGN_OR_RETURN(std::vector<ObjRef> index, reader.ReadIndex());
  if (index.size() != kPackRecords) return Status::Internal("decode pack: wrong record count");
  decode_pack_ = PackFixture{written.path, written.pack_id, std::move(index)};
  return &*decode_pack_;
}

// Builds a table over the leaf arena into a new pack. Counts the pages
// written and their bytes.
Status BuildTable(const Workspace& ws, PackWritten* out, ObjRef* root, uint64_t* pages,
                  uint64_t* page_bytes) {
  // Table pages go to a buffered pack, as the engine writes them.
  DP420_ASSIGN_OR_RETURN(
      PackWriter writer,
      PackWriter::Create(ws.repo().PacksDir(), ws.repo().repo_id(), false, NoJournal));
  out->path = writer.path();
  out->pack_id = writer.pack_id();
  TableBuilder builder(TableShape::For(kTableBlocks), nullptr,
                       [&](const uint8_t* bytes, uint32_t len, ObjRef* ref) {
                         ++*pages;
                         *page_bytes += len;
                         return writer.WriteRecord(bytes, len, ref);
                       });
  Status status;
  for (uint32_t p = 0; p < kLeafPages && status.ok(); ++p) {
    status = builder.AddLeaf(ws.leaf(p), kPageEntries);
  }
  if (status.ok()) {
    Result<ObjRef> top = builder.Finish();
    status = top.status();
    if (top.ok()) *root = top.value();
  }
  return FinishOrAbandon(&writer, std::move(status));
}

// Reads every leaf of `table` in order; `check` compares each with the arena.
Status WalkLeaves(const Workspace& ws, const TableFixture& table, bool check, uint64_t* sink) {
  TableReader reader(ws.repo(), table.manifest);
  for (uint32_t p = 0; p < kLeafPages; ++p) {
    uint32_t count = 0;
    DP420_ASSIGN_OR_RETURN(const Entry* entries, reader.Leaf(p, &count));
    DP420_ASSERT(count == kPageEntries);
    if (check && std::memcmp(entries, ws.leaf(p), kPageBytes) != 0) {
      return Status::Corruption("leaf page " + std::to_string(p) + " differs from its source");
    }
    *sink += entries[count - 1].ref.offset_4k;
  }
  return Status::Ok();
}

Result<const TableFixture*> Workspace::Table() {
  if (table_) return &*table_;
  PackWritten written;
  ObjRef root{};
  uint64_t pages = 0;
  uint64_t page_bytes = 0;
  DP420_RETURN_IF_ERROR(BuildTable(*this, &written, &root, &pages, &page_bytes));
  TableFixture table;
  table.pack_path = written.path;
  table.manifest.blocks_total = kTableBlocks;
  table.manifest.table_levels = TableShape::For(kTableBlocks).levels;
  table.manifest.table_root = root;
  uint64_t sink = 0;
  DP420_RETURN_IF_ERROR(WalkLeaves(*this, table, true, &sink));
  table_ = std::move(table);
  return &*table_;
}

Workspace* g_workspace = nullptr;

// Runs `body` (returning Status) once per iteration; the first error skips
// the benchmark.
template <typename Body>
void Loop(benchmark::State& state, Body&& body) {
  for (auto _ : state) {
    Status status = body();
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
  }
}

// Runs `fn` (a cache drop) with the clock paused.
Status Untimed(benchmark::State& state, const std::function<Status()>& fn) {
  state.PauseTiming();
  Status status = fn();
  state.ResumeTiming();
  return status;
}

// Deletes a pack an iteration wrote, with the clock paused.
void RemoveUntimed(benchmark::State& state, const std::string& path) {
  if (path.empty()) return;
  state.PauseTiming();
  unlink(path.c_str());
  state.ResumeTiming();
}

void SetRates(benchmark::State& state, uint64_t items_per_iteration, uint64_t bytes_per_iteration) {
  const auto iterations = static_cast<uint64_t>(state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(iterations * items_per_iteration));
  state.SetBytesProcessed(static_cast<int64_t>(iterations * bytes_per_iteration));
}

void BM_PackEncode(benchmark::State& state, WritePath how, bool direct) {
  if (Status s = g_workspace->Ensure(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  bool wrote_direct = false;
  Loop(state, [&] {
    PackWritten written;
    Status status = EncodePack(*g_workspace, how, direct, &written);
    wrote_direct = written.direct;
    RemoveUntimed(state, written.path);
    return status;
  });
  state.SetLabel(wrote_direct ? "O_DIRECT" : "buffered");
  SetRates(state, kPackRecords, kArenaBytes);
}

void BM_PackReadRecord(benchmark::State& state, bool cold) {
  if (Status s = g_workspace->Ensure(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  Result<const PackFixture*> pack = g_workspace->DecodePack();
  if (!pack.ok()) return state.SkipWithError(pack.status().ToString().c_str());
  const PackFixture& fixture = *pack.value();
  Result<PackReader> reader = PackReader::Open(fixture.path, fixture.pack_id);
  if (!reader.ok()) return state.SkipWithError(reader.status().ToString().c_str());
  AlignedBuf buf = AllocArena(kHugePageBytes);
  Loop(state, [&] {
    if (cold) DP420_RETURN_IF_ERROR(Untimed(state, [&] { return DropCache(fixture.path); }));
    for (const ObjRef& ref : fixture.index) {
      DP420_RETURN_IF_ERROR(reader->ReadStored(ref, buf.get()));
      DP420_RETURN_IF_ERROR(reader->CheckRecord(ref, buf.get()));
    }
    return Status::Ok();
  });
  SetRates(state, kPackRecords, kArenaBytes);
}

void BM_PackReadIndex(benchmark::State& state) {
  if (Status s = g_workspace->Ensure(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  Result<const PackFixture*> pack = g_workspace->DecodePack();
  if (!pack.ok()) return state.SkipWithError(pack.status().ToString().c_str());
  Result<PackReader> reader = PackReader::Open(pack.value()->path, pack.value()->pack_id);
  if (!reader.ok()) return state.SkipWithError(reader.status().ToString().c_str());
  Loop(state, [&] {
    DP420_ASSIGN_OR_RETURN(std::vector<ObjRef> index, reader->ReadIndex());
    DP420_ASSERT(index.size() == kPackRecords);
    benchmark::DoNotOptimize(index.data());
    return Status::Ok();
  });
  SetRates(state, kPackRecords, kPackRecords * sizeof(ObjRef));
}

void SetBlockDataRate(benchmark::State& state) {
  state.counters["block_data"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * static_cast<double>(kTableBlocks) * kBlockBytes,
      benchmark::Counter::kIsRate);
}

void BM_TableBuild(benchmark::State& state) {
  if (Status s = g_workspace->Ensure(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  uint64_t pages = 0;
  uint64_t page_bytes = 0;
  Loop(state, [&] {
    PackWritten written;
    ObjRef root{};
    Status status = BuildTable(*g_workspace, &written, &root, &pages, &page_bytes);
    RemoveUntimed(state, written.path);
    return status;
  });
  state.SetItemsProcessed(static_cast<int64_t>(pages));
  state.SetBytesProcessed(static_cast<int64_t>(page_bytes));
  SetBlockDataRate(state);
}

void BM_TableWalk(benchmark::State& state, bool cold) {
  if (Status s = g_workspace->Ensure(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  Result<const TableFixture*> table = g_workspace->Table();
  if (!table.ok()) return state.SkipWithError(table.status().ToString().c_str());
  const TableFixture& fixture = *table.value();
  uint64_t sink = 0;
  Loop(state, [&] {
    if (cold) DP420_RETURN_IF_ERROR(Untimed(state, [&] { return DropCache(fixture.pack_path); }));
    return WalkLeaves(*g_workspace, fixture, false, &sink);
  });
  benchmark::DoNotOptimize(sink);
  SetRates(state, kLeafPages, uint64_t{kLeafPages} * kPageBytes);
  SetBlockDataRate(state);
}

void RegisterAll() {
  for (WritePath how : {WritePath::kWriteRecord, WritePath::kReservePwrite}) {
    for (bool direct : {false, true}) {
      const std::string name = std::string("PackEncode/") +
                               (how == WritePath::kWriteRecord ? "WriteRecord" : "Reserve+pwrite") +
                               (direct ? "/direct" : "/buffered") + "/64KiB";
      benchmark::RegisterBenchmark(name.c_str(), BM_PackEncode, how, direct)->UseRealTime();
    }
  }
  for (bool cold : {false, true}) {
    const std::string suffix = cold ? "/cold" : "/warm";
    benchmark::RegisterBenchmark(("PackDecode/ReadRecord/64KiB" + suffix).c_str(),
                                 BM_PackReadRecord, cold)
        ->UseRealTime();
  }
  benchmark::RegisterBenchmark("PackDecode/ReadIndex/1024records", BM_PackReadIndex)->UseRealTime();
  benchmark::RegisterBenchmark("TableBuild/1024leaves", BM_TableBuild)->UseRealTime();
  for (bool cold : {false, true}) {
    const std::string suffix = cold ? "/cold" : "/warm";
    benchmark::RegisterBenchmark(("TableWalk/Leaf/1024leaves" + suffix).c_str(), BM_TableWalk, cold)
        ->UseRealTime();
  }
}

}  // namespace
}  // namespace dp420

int main(int argc, char** argv) {
  // 0.2 s per point by default; an explicit --benchmark_min_time comes later
  // on the command line and wins.
  std::vector<char*> args(argv, argv + argc);
  char default_min_time[] = "--benchmark_min_time=0.2";
  args.insert(args.begin() + 1, default_min_time);
  int args_count = static_cast<int>(args.size());
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  dp420::Workspace workspace;
  dp420::g_workspace = &workspace;
  dp420::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
