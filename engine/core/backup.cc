#include "engine/core/backup.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/core/auto_compression.h"
#include "engine/core/damage.h"
#include "engine/core/dedup.h"
#include "engine/core/group_repo.h"
#include "engine/core/history.h"
#include "engine/core/pack.h"
#include "engine/core/scanner.h"
#include "engine/core/snapshot.h"
#include "engine/core/table.h"
#include "engine/core/test_hooks.h"
#include "engine/core/text.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/inject.h"
#include "io/random.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

unsigned DefaultThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}

uint64_t WorkerBufferBytes(uint32_t block_size) {
  return 6 * std::max<uint64_t>(block_size, kMinExtentBytes);
}

Status CheckRange(const char* name, uint64_t value, uint64_t min, uint64_t max,
                  const char* unit) {
  if (value >= min && value <= max) return Status::Ok();
  std::string u = *unit ? std::string(" ") + unit : "";
  return Status::InvalidArgument(std::string(name) + " is " + std::to_string(value) + u +
                                 "; allowed " + std::to_string(min) + ".." +
                                 std::to_string(max) + u);
}

Result<unsigned> ResolveThreads(unsigned requested, uint32_t block_size) {
  uint64_t per_worker = WorkerBufferBytes(block_size);
  unsigned most = static_cast<unsigned>(
      std::clamp<uint64_t>(kBufferBudgetBytes / per_worker, 1, kMaxThreads));
  if (requested == 0) return std::min(DefaultThreads(), most);
  if (requested > most) {
    return Status::InvalidArgument(
        "threads is " + std::to_string(requested) + "; allowed 1.." + std::to_string(most) +
        " at " + std::to_string(block_size) + "-byte blocks (at most " +
        std::to_string(kMaxThreads) + ", and " + std::to_string(per_worker >> 20) +
        " MiB of buffers per thread within the " + std::to_string(kBufferBudgetBytes >> 20) +
        " MiB budget)");
  }
  return requested;
}

namespace {

using Clock = std::chrono::steady_clock;

// The slots of the blocks a backup stores, appended by every worker to
// tmp/VOLUME.dedup and added to the dedup index once the snapshot is
// committed (never before: a rolled-back backup's records must not be
// offered). On disk, not in memory, whatever the volume's size.
class SlotLog {
 public:
  static Result<std::unique_ptr<SlotLog>> Create(const std::string& path) {
    auto log = std::unique_ptr<SlotLog>(new SlotLog());
    DP420_ASSIGN_OR_RETURN(log->file_,
                           io::File::OpenWrite(path, O_WRONLY | O_CREAT | O_TRUNC, false));
    return log;
  }
  ~SlotLog() {
    std::string path = file_.path();
    file_.Close();
    if (!path.empty()) io::sys::Unlink(path.c_str());
  }
  Status Append(const std::vector<DedupSlot>& slots) {
    std::lock_guard lock(mu_);
    DP420_RETURN_IF_ERROR(file_.WriteAt(size_, slots.data(), slots.size() * sizeof(DedupSlot)));
    size_ += slots.size() * sizeof(DedupSlot);
    return Status::Ok();
  }
  const std::string& path() const { return file_.path(); }

 private:
  SlotLog() = default;
  std::mutex mu_;
  io::File file_;
  uint64_t size_ = 0;
};

// What the workers share for deduplication (all null: off).
struct DedupContext {
  std::unique_ptr<DedupIndex> index;
  std::unique_ptr<RecordCheck> check;
  std::unique_ptr<SlotLog> log;
};

// The local sink: changed blocks are appended to this worker's own packs
// with write_fixed straight from the buffer they were read into; finished
// pages go to the snapshot builder.
class PackSink : public ScanSink {
 public:
  PackSink(SnapshotBuilder& builder, std::atomic<uint64_t>& blocks_written,
           const CodecSpec& compression)
      : builder_(builder), blocks_written_(blocks_written), compression_(compression) {}

  unsigned OpsPerBuffer(uint32_t blocks_per_extent) const override {
    // Every block may need its own write (changed and unchanged blocks alternating).
    return blocks_per_extent;
  }
  // The worker's writes go to its one pack file: O_DIRECT appends that the
  // kernel hands to async workers, where they queue on the pack's inode lock.
  unsigned FileWorkers() const override { return 1; }
  Status Setup(Scanner& scanner) override {
    scanner_ = &scanner;
    const uint32_t per_extent = scanner.ctx().geo.blocks_per_extent;
    writes_.resize(size_t{scanner.buffers()} * per_extent);
    for (auto& w : writes_) free_writes_.push_back(&w);
    DP420_ASSIGN_OR_RETURN(codec_, builder_.repo().NewRecordCodec(compression_));
    if (codec_->transforms()) {
      // Each read buffer's encoded blocks, laid out as they go into the pack.
      const uint64_t slot = RoundUp(MaxEncodedBytes(scanner.ctx().geo.block_size), kRecordAlign);
      staging_.resize(scanner.buffers());
      staging_used_.assign(scanner.buffers(), 0);
      for (auto& buf : staging_) {
        if (!(buf = AllocAligned(slot * per_extent))) return Status::NoMemory("encoding buffers");
      }
    }
    return Status::Ok();
  }
  Status ParentLeaf(uint64_t page, Entry* out, uint32_t* count) override;
  Status Changed(ScanRead& read, uint32_t index, uint32_t len, Entry& entry) override;
  Status ReadDone(ScanRead& read) override {
    if (open_write_) scanner_->QueueSinkOp(&open_write_->op);
    open_write_ = nullptr;
    // The buffer's encoded blocks stay until their writes complete; the next
    // read into the buffer (after they did) encodes from the start again.
    if (!staging_.empty()) staging_used_[read.buffer] = 0;
    return Status::Ok();
  }
  Status PageDone(std::unique_ptr<LeafPage> page) override {
    builder_.queue().Put(std::move(page));
    return Status::Ok();
  }
  Status OnOp(io::IoOp* op) override;
  Status Turn() override {
    if (watch_) DP420_RETURN_IF_ERROR(FollowLadder());
    return FinishClosedPacks(false);
  }
  // `--compression auto`: this worker watches whether compressing makes it the
  // backup's bottleneck, and follows the ladder's steps down.
  void SetAutoLadder(AutoLadder* ladder) {
    if (ladder) watch_ = std::make_unique<AutoWatch>(ladder);
  }
  Result<bool> Finish() override {
    for (const auto& p : packs_) {
      if (p->pending > 0) return false;  // writes still in flight
    }
    DP420_RETURN_IF_ERROR(FinishClosedPacks(true));
    DP420_RETURN_IF_ERROR(FlushSlots());
    return true;
  }
  // After a failure: deletes this worker's unfinished packs.
  void Abandon() {
    for (auto& p : packs_) p->writer.Abandon();
    packs_.clear();
  }
  // `present`: the repository's pack ids (sorted) when the backup began;
  // `damage`: what verify found damaged. A parent block in a pack that is not
  // there, or whose reference verify recorded, is read again from the source.
  void SetParent(const Manifest* parent, const std::vector<uint32_t>* present,
                 const DamageRecord* damage) {
    if (parent) parent_ = std::make_unique<TableReader>(builder_.repo(), *parent);
    present_ = present;
    damage_ = damage;
  }
  uint64_t bytes_written() const { return bytes_written_; }
  uint64_t blocks_compressed() const { return codec_ ? codec_->records_compressed() : 0; }
  uint64_t blocks_healed() const { return blocks_healed_; }
  uint64_t blocks_deduplicated() const { return blocks_deduplicated_; }
  void SetDedup(const DedupContext* dedup) { dedup_ = dedup && dedup->index ? dedup : nullptr; }

 private:
  struct PackSlot {
    PackWriter writer;
    uint32_t pending = 0;
  };
  struct WriteSlot {
    io::IoOp op;
    ScanRead* read = nullptr;
    PackSlot* pack = nullptr;
    uint32_t nblocks = 0;
  };
  static constexpr uint64_t kTagWrite = 2;
  Status EnsurePack(uint32_t len);
  Status FinishClosedPacks(bool all);
  // Whether the block of `entry` (its SHA-256 set) is stored already under a
  // dedup slot whose record is still there; if so, entry.ref references it.
  // `tag` receives the block's tag (for its slot when it is stored).
  bool Deduplicate(Entry& entry, uint8_t tag[16]);
  Status FlushSlots() {
    if (slots_.empty()) return Status::Ok();
    Status s = dedup_->log->Append(slots_);
    slots_.clear();
    return s;
  }
  Status FollowLadder();

  // The bytes block `index` of `read` is stored as (encoded into the read
  // buffer's staging area when the repository transforms records), with
  // entry.ref's stored_len and flags set; `*registered` when they lie in
  // the read buffer itself.
  Result<uint8_t*> Encode(ScanRead& read, uint32_t index, uint32_t len, Entry& entry,
                          bool* registered);

  SnapshotBuilder& builder_;
  std::atomic<uint64_t>& blocks_written_;  // all workers: the crash test hook counts them
  CodecSpec compression_;
  std::unique_ptr<RecordCodec> codec_;
  std::unique_ptr<AutoWatch> watch_;
  std::vector<AlignedBuf> staging_;     // per read buffer, when records are transformed
  std::vector<uint64_t> staging_used_;  // bytes of each staging area in use
  Scanner* scanner_ = nullptr;
  std::unique_ptr<TableReader> parent_;
  std::vector<WriteSlot> writes_;
  std::vector<WriteSlot*> free_writes_;
  WriteSlot* open_write_ = nullptr;
  std::deque<std::unique_ptr<PackSlot>> packs_;  // back() is the open one
  uint64_t bytes_written_ = 0;
  const std::vector<uint32_t>* present_ = nullptr;
  const DamageRecord* damage_ = nullptr;
  uint64_t blocks_healed_ = 0;
  const DedupContext* dedup_ = nullptr;
  std::vector<DedupSlot> slots_;  // for the slot log, written in batches
  uint64_t blocks_deduplicated_ = 0;
};

bool PackSink::Deduplicate(Entry& entry, uint8_t tag[16]) {
  std::optional<DedupSlot> slot = dedup_->index->Find(entry.ref.sha256, tag);
  if (!slot) return false;
  std::optional<ObjRef> ref = dedup_->check->Find(*slot);
  if (!ref) return false;
  // A record verify found damaged is not referenced again: the block is
  // stored anew. Verify records a damaged copy of a repacked record under
  // the reference the table holds, which is what the slot names.
  if (damage_ && (damage_->Holds(*ref) || damage_->HoldsAt(slot->pack_id, slot->offset_4k))) {
    return false;
  }
  std::memcpy(ref->sha256, entry.ref.sha256, sizeof(ref->sha256));
  entry.ref = *ref;
  ++blocks_deduplicated_;
  return true;
}

Status PackSink::ParentLeaf(uint64_t page, Entry* out, uint32_t* count) {
  *count = 0;
  if (!parent_ || page >= parent_->shape().PagesAt(0) ||
      page * kPageEntries >= parent_->shape().blocks) {
    return Status::Ok();
  }
  DP420_ASSIGN_OR_RETURN(const Entry* entries, parent_->Leaf(page, count));
  std::memcpy(out, entries, *count * sizeof(Entry));
  if (!present_) return Status::Ok();
  // A block whose stored copy is gone or damaged must not be called
  // unchanged: with its id inverted it differs from whatever the source
  // holds, and is stored again (self-healing); the new snapshot never
  // references the lost pack or the damaged record.
  for (uint32_t i = 0; i < *count; ++i) {
    Entry& e = out[i];
    bool lost = !std::binary_search(present_->begin(), present_->end(), e.ref.pack_id);
    if (!e.ref.stored() || (!lost && !(damage_ && damage_->Holds(e.ref)))) continue;
    for (uint8_t& b : e.id) b = static_cast<uint8_t>(~b);
    ++blocks_healed_;
  }
  return Status::Ok();
}

Status PackSink::EnsurePack(uint32_t len) {
  if (!packs_.empty() && !packs_.back()->writer.Full(RoundUp(len, kRecordAlign))) {
    return Status::Ok();
  }
  auto slot = std::make_unique<PackSlot>();
  DP420_ASSIGN_OR_RETURN(slot->writer, builder_.NewPack(true));
  packs_.push_back(std::move(slot));
  return Status::Ok();
}

Result<uint8_t*> PackSink::Encode(ScanRead& read, uint32_t index, uint32_t len, Entry& entry,
                                  bool* registered) {
  uint8_t* raw = read.data + uint64_t{index} * scanner_->ctx().geo.block_size;
  *registered = true;
  entry.ref.stored_len = len;
  if (staging_.empty()) return raw;
  uint8_t* out = staging_[read.buffer].get() + staging_used_[read.buffer];
  DP420_ASSIGN_OR_RETURN(const uint8_t* stored, codec_->Encode({raw, len}, &entry.ref, out));
  if (stored == raw) return raw;
  *registered = false;
  staging_used_[read.buffer] += RoundUp(entry.ref.stored_len, kRecordAlign);
  return out;  // Changed() zeroes the padding, as it does a raw block's
}

// Appends a changed block to the open pack, extending the open write when
// the block directly follows the previous one in both the buffer and the pack.
Status PackSink::Changed(ScanRead& read, uint32_t index, uint32_t len, Entry& entry) {
  uint8_t tag[16];
  if (dedup_ && Deduplicate(entry, tag)) return Status::Ok();
  bool registered = true;
  DP420_ASSIGN_OR_RETURN(uint8_t* data, Encode(read, index, len, entry, &registered));
  const uint32_t stored_len = entry.ref.stored_len;
  DP420_RETURN_IF_ERROR(EnsurePack(stored_len));
  PackSlot* pack = packs_.back().get();
  uint32_t padded = static_cast<uint32_t>(RoundUp(stored_len, kRecordAlign));
  if (padded != stored_len) std::memset(data + stored_len, 0, padded - stored_len);
  pack->writer.Reserve(stored_len, &entry.ref, data);
  if (dedup_) {
    slots_.push_back(dedup_->index->key().MakeSlot(tag, entry.ref.sha256, entry.ref,
                                                   pack->writer.last_reserved().sha256));
    if (slots_.size() >= 1024) DP420_RETURN_IF_ERROR(FlushSlots());
  }
  const int buf_index =
      registered && scanner_->pool().registered() ? int(read.buffer) : -1;
  WriteSlot* w = open_write_;
  if (w && w->pack == pack && w->op.buf + w->op.len == data && w->op.buf_index == buf_index &&
      w->op.offset + w->op.len == entry.ref.offset_bytes()) {
    w->op.len += padded;
    ++w->nblocks;
    return Status::Ok();
  }
  if (w) scanner_->QueueSinkOp(&w->op);
  DP420_ASSERT(!free_writes_.empty());
  w = free_writes_.back();
  free_writes_.pop_back();
  *w = WriteSlot{};
  w->read = &read;
  w->pack = pack;
  w->nblocks = 1;
  w->op.kind = io::IoOp::kWrite;
  w->op.fd = pack->writer.fd();
  w->op.buf = data;
  w->op.buf_index = buf_index;
  w->op.len = padded;
  w->op.offset = entry.ref.offset_bytes();
  w->op.owner = w;
  w->op.tag = kTagWrite;
  ++read.holds;
  ++pack->pending;
  open_write_ = w;
  return Status::Ok();
}

Status PackSink::OnOp(io::IoOp* op) {
  WriteSlot* w = static_cast<WriteSlot*>(op->owner);
  PackSlot* pack = w->pack;
  --pack->pending;
  Status s;
  if (w->op.result != 0) {
    s = io::IoOpStatus(w->op, pack->writer.path());
  } else {
    CrashAfterData(blocks_written_.fetch_add(w->nblocks) + w->nblocks);
  }
  ScanRead* read = w->read;
  free_writes_.push_back(w);
  scanner_->Unhold(read);
  return s;
}

Status PackSink::FollowLadder() {
  const ScanStats& stats = scanner_->stats;
  const size_t in_use = watch_->rung();
  const size_t rung =
      watch_->Check(AutoWatch::Clock::now(), stats.busy_ns, codec_->compress_ns());
  if (rung == in_use) return Status::Ok();
  // Between batches no block is being encoded; the staging areas fit any codec.
  return codec_->SetCompression(watch_->spec(rung));
}

// Closes every pack that is full (all but the open one) or, with `all`, every
// pack, once its writes have completed.
Status PackSink::FinishClosedPacks(bool all) {
  while (!packs_.empty() && (all || packs_.size() > 1) && packs_.front()->pending == 0) {
    DP420_RETURN_IF_ERROR(packs_.front()->writer.Finish());
    bytes_written_ += packs_.front()->writer.final_size();
    packs_.pop_front();
  }
  return Status::Ok();
}

// The dedup index, the committed packs its slots may name, and the slot log
// of this backup; all null (dedup off for this run) when the index cannot be
// opened, with the reason in `*warning`.
DedupContext OpenDedup(const Repository& repo, const std::string& volume,
                       std::string* warning) {
  auto off = [&](const Status& why) {
    *warning = "deduplication off for this backup: " + why.message();
    return DedupContext();
  };
  auto index = DedupIndex::Open(repo);
  if (!index.ok()) return off(index.status());
  auto committed = CommittedPackIds(repo);
  if (!committed.ok()) return off(committed.status());
  auto log = SlotLog::Create(repo.path() + "/tmp/" + volume + ".dedup");
  if (!log.ok()) return off(log.status());
  DedupContext d;
  d.index = std::move(index).value();
  d.check = std::make_unique<RecordCheck>(repo, std::move(committed).value());
  d.log = std::move(log).value();
  return d;
}

// The codec the backup starts with, recorded in the manifest: the option's, or
// with `auto` the one measured (and `*ladder` to step down, unless that is off).
Result<CodecSpec> ChooseCompression(const Repository& repo, const BackupOptions& o,
                                    const ScanSource& source, unsigned threads,
                                    SnapshotBuilder& builder, std::unique_ptr<AutoLadder>* ladder) {
  Manifest& m = builder.manifest();
  // A format-2 repository stores every record raw, whatever was asked.
  CodecSpec compression = repo.format_version() >= 3 ? o.compression : CodecSpec{};
  if (o.compression_auto) {
    DP420_ASSIGN_OR_RETURN(AutoDecision d,
                           DecideAutoCompression({&repo, &source, m.block_size, threads,
                                                  &builder.hasher(), o.control}));
    compression = d.ladder.front();
    m.compression_auto = true;
    m.compression_measured = std::move(d.measured);
    if (d.ladder.size() > 1) *ladder = std::make_unique<AutoLadder>(std::move(d.ladder));
  }
  m.compression = CodecName(compression);
  return compression;
}

// The draft manifest's fields that come from the options and the source.
void DraftManifest(const BackupOptions& o, const ScanSource& source, Manifest* m) {
  // A file name may be any bytes; the manifest is JSON (docs/FORMAT.md).
  m->source_path = EscapeBytes(o.source_path);
  m->source_kind = SourceKind(o, source);
  m->node_topology = o.node_topology;
  m->tool_version = o.tool_version;
  if (o.time_unix_ns != 0) {
    m->created_unix_ns = o.time_unix_ns;
    m->created = Rfc3339(o.time_unix_ns);
  }
}

// One backup's workers: a scanner and its sink per thread.
struct Workers {
  std::vector<std::unique_ptr<PackSink>> sinks;
  std::vector<std::unique_ptr<Scanner>> scanners;
};

// What the workers did, summed once every thread is done.
struct WorkerTotals {
  SnapshotStats stats;
  uint64_t healed = 0;
  uint64_t compressed = 0;
  uint64_t deduplicated = 0;
};

WorkerTotals SumWorkers(const Workers& w, const ScanContext& ctx) {
  WorkerTotals t;
  for (size_t i = 0; i < w.sinks.size(); ++i) {
    const PackSink& sink = *w.sinks[i];
    const ScanStats& scanned = w.scanners[i]->stats;
    t.compressed += sink.blocks_compressed();
    t.deduplicated += sink.blocks_deduplicated();
    t.healed += sink.blocks_healed();
    t.stats.blocks_changed += scanned.blocks_changed;
    t.stats.blocks_zero += scanned.blocks_zero;
    // The scanner counts every changed block it handed the sink; the sink
    // referenced the deduplicated ones instead of storing them.
    t.stats.blocks_stored += scanned.blocks_stored - sink.blocks_deduplicated();
    t.stats.bytes_written += sink.bytes_written();
  }
  t.stats.bytes_read = ctx.bytes_read.load();
  return t;
}

// Runs every scanner on its own thread while this one hands the builder its
// pages; the first error stops them all (and the builder rolls back).
Status RunWorkers(Workers& w, SnapshotBuilder& builder, ScanContext& ctx,
                  const JobControl& control, std::atomic<bool>& failed) {
  std::mutex mu;
  Status error;
  auto fail = [&](Status s) {
    {
      std::lock_guard lock(mu);
      if (error.ok()) error = std::move(s);
    }
    failed.store(true);
    builder.queue().Abort();
  };
  std::vector<std::thread> pool;
  for (size_t i = 0; i < w.scanners.size(); ++i) {
    pool.emplace_back([&, i] {
      Status s = w.scanners[i]->Run();
      if (!s.ok()) {
        w.sinks[i]->Abandon();
        fail(s);
      }
    });
  }
  auto last = Clock::now() - std::chrono::seconds(1);
  Status consumed = builder.Consume(
      [&] { return failed.load(); },
      [&] {
        auto now = Clock::now();
        if (!control.progress || now - last < std::chrono::milliseconds(200)) return;
        last = now;
        control.progress({"backup", ctx.bytes_read.load(), ctx.geo.volume_size});
      });
  if (!consumed.ok()) fail(consumed);
  for (auto& t : pool) t.join();
  if (control.Canceled() && error.code() != Code::kCanceled) {
    // Asked to stop: that is the outcome, also when a read the kernel held until then
    // failed on the way out (a hung source whose connection was aborted).
    error = Status::Canceled(error.ok() ? "backup canceled"
                                        : "backup canceled (then: " + error.message() + ")");
  }
  return error;
}

// Where a backup's snapshot goes: committed (null), or staged under a group's
// epoch, its builder handed to the caller.
struct StageTo {
  std::string group;
  uint64_t epoch = 0;
  std::unique_ptr<SnapshotBuilder>* builder = nullptr;
};

Result<BackupResult> Backup(const Repository& repo, const BackupOptions& o,
                            const Manifest* parent, const StageTo* stage = nullptr) {
  auto start = Clock::now();
  // The chain's block size decides the buffers per thread (an invalid
  // --block-size is refused by SnapshotBuilder::Start with its own message).
  uint32_t bs = o.block_size ? o.block_size : parent ? parent->block_size : kDefaultBlockSize;
  DP420_ASSIGN_OR_RETURN(unsigned threads,
                         ResolveThreads(o.threads, std::min(bs, kMaxBlockSize)));
  DP420_ASSIGN_OR_RETURN(ScanSource source,
                         ScanSource::Open(o.read_path.empty() ? o.source_path : o.read_path));
  DP420_ASSIGN_OR_RETURN(auto builder,
                         SnapshotBuilder::Start(repo, o.volume, parent, o.block_size,
                                                source.size(), DefaultPageWindow(threads)));
  Manifest& m = builder->manifest();
  std::unique_ptr<AutoLadder> ladder;
  DP420_ASSIGN_OR_RETURN(
      const CodecSpec compression,
      ChooseCompression(repo, o, source, threads, *builder, &ladder));
  DP420_RETURN_IF_ERROR(builder->SetCompression(compression));
  DraftManifest(o, source, &m);

  std::atomic<bool> failed{false};
  std::atomic<uint64_t> blocks_written{0};
  ScanContext ctx;
  ctx.geo = ScanGeometry::For(m.volume_size, m.block_size);
  ctx.source = &source;
  ctx.hasher = &builder->hasher();
  ctx.zero_full = builder->ZeroEntry(m.block_size);
  ctx.zero_tail = builder->ZeroEntry(ctx.geo.blocks ? ctx.geo.BlockLen(ctx.geo.blocks - 1) : 0);
  ctx.threads = threads;
  ctx.window = &builder->queue();
  ctx.control = o.control;
  ctx.stop = &failed;

  const std::vector<uint32_t> present =
      parent ? ListReadablePackIds(repo) : std::vector<uint32_t>();
  std::string dedup_warning;
  // After SnapshotBuilder::Start took the repository lock: the packs listed
  // now stay until this backup ends.
  DedupContext dedup = o.dedup ? OpenDedup(repo, o.volume, &dedup_warning) : DedupContext();
  const DamageRecord damage = parent || dedup.index ? LoadDamage(repo) : DamageRecord();
  Workers w;
  for (unsigned i = 0; i < threads; ++i) {
    w.sinks.push_back(std::make_unique<PackSink>(*builder, blocks_written, compression));
    w.sinks.back()->SetAutoLadder(ladder.get());
    w.sinks.back()->SetParent(parent, &present, &damage);
    w.sinks.back()->SetDedup(&dedup);
    w.scanners.push_back(std::make_unique<Scanner>(ctx, i, w.sinks.back().get()));
  }
  DP420_RETURN_IF_ERROR(RunWorkers(w, *builder, ctx, o.control, failed));
  DP420_RETURN_IF_ERROR(source.CheckSize());
  const WorkerTotals totals = SumWorkers(w, ctx);
  if (o.end_point_in_time) DP420_RETURN_IF_ERROR(o.end_point_in_time(&m.node_topology));
  m.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (ladder && ladder->rung() > 0) {
    m.compression_measured["stepped_down_to"] = CodecName(ladder->spec(ladder->rung()));
  }
  DP420_ASSIGN_OR_RETURN(Manifest committed,
                         stage ? builder->Stage(totals.stats, stage->group, stage->epoch)
                               : builder->Commit(totals.stats));
  if (dedup.log && !stage) {
    // Committed: its records may be offered to other backups now. A failure
    // costs later backups dedup opportunities, never this snapshot.
    Status added = AddToDedupIndex(repo, dedup.log->path());
    if (!added.ok()) dedup_warning = "the dedup index was not updated: " + added.message();
  }
  BackupResult r;
  r.manifest = committed;
  r.bytes_read = committed.bytes_read;
  r.bytes_written = committed.bytes_written;
  r.table_pages_written = builder->table_pages_written();
  r.table_pages_reused = builder->table_pages_reused();
  r.blocks_healed = totals.healed;
  r.blocks_compressed = totals.compressed;
  r.blocks_deduplicated = totals.deduplicated;
  r.dedup_warning = dedup_warning;
  r.threads = threads;
  r.direct_io = source.direct.direct();
  r.registered_buffers = ctx.registered.load();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.control.progress) o.control.progress({"backup", ctx.geo.volume_size, ctx.geo.volume_size});
  if (stage) *stage->builder = std::move(builder);
  return r;
}

// Takes the volume's lock, recovers what a dead writer left (which may
// publish a group member: before the parent is chosen) and finds the parent.
Status LockAndFindParent(const Repository& repo, const BackupOptions& o, VolumeLock* lock,
                         std::optional<Manifest>* parent) {
  if (!ValidVolumeName(o.volume)) {
    return Status::InvalidArgument("invalid volume name '" + o.volume +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -)");
  }
  DP420_ASSIGN_OR_RETURN(*lock, repo.LockVolume(o.volume, kBriefLockWait, o.control.cancel));
  DP420_RETURN_IF_ERROR(BackupJournal::Recover(repo, o.volume));
  DP420_ASSIGN_OR_RETURN(*parent, ParentOfNextBackup(repo, o.volume));
  if (o.time_unix_ns != 0) {
    DP420_RETURN_IF_ERROR(CheckBackupTime(o.time_unix_ns, *parent ? &**parent : nullptr));
  }
  return Status::Ok();
}

}  // namespace

const char* SourceKind(const BackupOptions& o, const ScanSource& read) {
  bool block = read.block_device();
  struct stat st;
  if (!o.read_path.empty() && o.read_path != o.source_path) {
    block = stat(o.source_path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
  }
  return block ? "block-device" : "file";
}

Result<BackupResult> RunBackup(const Repository& repo, const BackupOptions& o) {
  VolumeLock lock;
  std::optional<Manifest> parent;
  DP420_RETURN_IF_ERROR(LockAndFindParent(repo, o, &lock, &parent));
  return Backup(repo, o, parent ? &*parent : nullptr);
}

Result<StagedBackup> StageBackup(const Repository& repo, const BackupOptions& o,
                                 const std::string& group, uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(GroupEpochState state, GroupEpochStateOf(repo, group, epoch));
  if (state != GroupEpochState::kOpen) {
    return Status::Busy("epoch " + std::to_string(epoch) + " of group '" + group +
                        "' is not open: nothing is staged under it");
  }
  StagedBackup staged;
  std::optional<Manifest> parent;
  DP420_RETURN_IF_ERROR(LockAndFindParent(repo, o, &staged.lock, &parent));
  StageTo to{group, epoch, &staged.builder};
  DP420_ASSIGN_OR_RETURN(staged.result, Backup(repo, o, parent ? &*parent : nullptr, &to));
  return staged;
}

}  // namespace dp420
