#include "engine/core/prune.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <future>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "engine/core/format.h"
#include "engine/core/group_repo.h"
#include "engine/core/pack.h"
#include "engine/core/relocate.h"
#include "engine/core/table.h"
#include "io/assert.h"
#include "io/file.h"
#include "io/inject.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

constexpr uint64_t kSlot = kRecordAlign;  // one bit of the live bitmap
constexpr const char* kPruneJournal = "/tmp/.prune.journal";

uint64_t Slots(uint32_t stored_len) { return std::max<uint64_t>(1, DivCeil(stored_len, kSlot)); }

// A pack of prune's listing: its size and, once something in it is marked,
// one bit per 4 KiB slot.
struct PackInfo {
  uint64_t size = 0;
  std::vector<uint64_t> live;  // empty until the first mark
  uint64_t live_slots = 0;
  bool in_progress = false;    // named by a backup's journal
  bool Test(uint64_t slot) const {
    return !live.empty() && slot < size / kSlot && (live[slot / 64] >> (slot % 64) & 1);
  }
};
using Packs = std::map<uint32_t, PackInfo>;

// Step 1: the candidates.
Packs ListPacks(const Repository& repo) {
  Packs packs;
  for (uint32_t id : repo.ListPackIds()) {
    struct stat st;
    if (stat(repo.PackPath(id).c_str(), &st) != 0) continue;
    packs[id].size = uint64_t(st.st_size);
  }
  return packs;
}

// Step 2: the packs of backups running, awaiting resume or dead (the next
// backup of their volume rolls those back).
// Packs a backup's journal names are in progress (or a dead backup's, rolled
// back by the volume's next writer): never deleted. A journal that does not
// read makes prune refuse, rather than guess.
Status MarkJournalled(const Repository& repo, Packs* packs, PruneReport* report) {
  DP420_ASSIGN_OR_RETURN(std::vector<uint32_t> journalled, JournalledPackIds(repo));
  for (uint32_t id : journalled) {
    auto it = packs->find(id);
    if (it != packs->end() && !it->second.in_progress) {
      it->second.in_progress = true;
      ++report->packs_in_progress;
    }
  }
  return Status::Ok();
}

// Every relocation file must read: the records it maps could not be found
// otherwise, and prune would not know what is live.
Status CheckRelocationFiles(const Repository& repo) {
  for (uint32_t id : ListRelocations(repo)) {
    auto r = ReadRelocation(repo, id);
    if (!r.ok()) {
      return Status::Corruption("prune refuses: " + r.status().message() +
                                "; the records it maps could not be located, so what is live is "
                                "unknown (`dp420 verify` reports it)");
    }
  }
  return Status::Ok();
}

// Manifests in quarantine/VOLUME/STAMP/ that still read: repair moved them
// aside, their data is kept so that the operator can still recover them.
void ListQuarantined(const Repository& repo, std::vector<Manifest>* out) {
  std::string root = repo.path() + "/quarantine";
  for (const std::string& vol : io::ListDir(root)) {
    for (const std::string& stamp : io::ListDir(root + "/" + vol)) {
      std::string dir = root + "/" + vol + "/" + stamp;
      for (const std::string& name : io::ListDir(dir)) {
        if (name.size() < 9 || name.compare(name.size() - 9, 9, ".manifest") != 0) continue;
        auto text = io::ReadFile(dir + "/" + name);
        if (!text.ok()) continue;
        auto m = Manifest::Parse(text.value(), "quarantine/" + vol + "/" + stamp + "/" + name,
                                 &repo.seal_key());
        if (m.ok() && m->repo_id == repo.repo_id_hex()) out->push_back(std::move(m).value());
      }
    }
  }
}

// Step 3: every manifest. A damaged one in snapshots/ makes prune refuse:
// its references are unknown.
Status LoadManifests(const Repository& repo, std::vector<Manifest>* live, size_t* strict) {
  // Before snapshots/: a member published meanwhile (renamed from groups/
  // into snapshots/) is seen in one of them.
  std::vector<Manifest> staged;
  ListStagedManifests(repo, &staged);
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListManifests("", live, &damaged));
  if (!damaged.empty()) {
    const DamagedFile& d = damaged.front();
    std::string volume = d.path.substr(10, d.path.find('/', 10) - 10);
    return Status::Corruption("prune refuses: " + d.status.message() +
                              "; what it references is unknown. Run `dp420 repair --repo " +
                              repo.path() + " --volume " + volume + "` first");
  }
  *strict = live->size();
  // After snapshots/: a manifest repair moves meanwhile is seen in one of them.
  ListQuarantined(repo, live);
  // Staged members of consistency groups: their own packs are journalled,
  // and what they reference besides (parent pages, dedup hits) is kept for
  // the roll-forward that may publish them.
  for (Manifest& m : staged) live->push_back(std::move(m));
  return Status::Ok();
}

// Walks block tables: every page once per walk, resolving references
// through relocations (preferring them: a repacked pack may still exist
// after an interrupted delete phase).
class TableWalker {
 public:
  // `page`: a resolved page reference; return false to skip its subtree.
  // `record`: a resolved data reference.
  using PageFn = std::function<bool(const ObjRef&)>;
  using RecordFn = std::function<void(const ObjRef&)>;
  TableWalker(const Repository& repo, PageFn page, RecordFn record)
      : cache_(repo), relocator_(repo, true), page_(std::move(page)), record_(std::move(record)) {}
  // `strict`: an unreadable page fails the walk (snapshots/), else it is
  // skipped (quarantine/).
  Status Walk(const Manifest& m, bool strict, const JobControl& control);
  const std::set<uint32_t>& used_relocations() const { return relocator_.used(); }

 private:
  Status Page(uint32_t level, uint64_t index, ObjRef ref);
  Status Resolve(ObjRef* ref);
  PackCache cache_;
  Relocator relocator_;
  PageFn page_;
  RecordFn record_;
  const Manifest* m_ = nullptr;
  bool strict_ = true;
  const JobControl* control_ = nullptr;
  TableShape shape_;
  std::vector<std::vector<Entry>> bufs_;  // one per level
};

Status TableWalker::Walk(const Manifest& m, bool strict, const JobControl& control) {
  m_ = &m;
  strict_ = strict;
  control_ = &control;
  shape_ = TableShape::For(m.blocks_total);
  bufs_.assign(shape_.levels, {});
  return Page(shape_.levels - 1, 0, m.table_root);
}

Status TableWalker::Resolve(ObjRef* ref) {
  Status s = relocator_.Resolve(ref);
  if (s.ok()) return s;
  if (s.code() != Code::kCorruption) {  // the operating system refused: not damage
    return s.Prefix("prune: snapshot " + m_->snapshot_id + " of volume '" + m_->volume + "'");
  }
  return Status::Corruption("prune refuses: snapshot " + m_->snapshot_id + " of volume '" +
                            m_->volume + "': " + s.message());
}

Status TableWalker::Page(uint32_t level, uint64_t index, ObjRef ref) {
  if (control_->Canceled()) return Status::Canceled("prune canceled");
  uint32_t count = PageEntryCount(shape_, level, index);
  if (count == 0 || !ref.stored()) return Status::Ok();
  DP420_RETURN_IF_ERROR(Resolve(&ref));
  if (!page_(ref)) return Status::Ok();
  std::vector<Entry>& page = bufs_[level];
  page.resize(RoundUp(count * sizeof(Entry), kSlot) / sizeof(Entry));
  Status s = cache_.ReadResolved(
      ref, {reinterpret_cast<uint8_t*>(page.data()), count * sizeof(Entry)});
  if (!s.ok()) {
    // The operating system refused (no file descriptors, EIO): not damage,
    // and never a reason to leave what the page references unmarked.
    if (s.code() != Code::kCorruption) {
      return s.Prefix("prune: reading a table page of snapshot " + m_->snapshot_id +
                      " of volume '" + m_->volume + "'");
    }
    if (!strict_) return Status::Ok();
    return Status::Corruption("prune refuses: a table page of snapshot " + m_->snapshot_id +
                              " of volume '" + m_->volume + "' cannot be read (" + s.message() +
                              "), so what it references is unknown. Run `dp420 verify`");
  }
  if (level == 0) {
    for (uint32_t i = 0; i < count; ++i) {
      ObjRef r = page[i].ref;
      if (!r.stored() || (r.flags & kObjZero)) continue;
      DP420_RETURN_IF_ERROR(Resolve(&r));
      record_(r);
    }
    return Status::Ok();
  }
  for (uint32_t i = 0; i < count; ++i) {
    DP420_RETURN_IF_ERROR(Page(level - 1, index * kPageEntries + i, page[i].ref));
  }
  return Status::Ok();
}

// Sets the live bits of `ref`'s record; false when its first slot was set
// already (a page seen before: its subtree was walked) or its pack is not a
// candidate (created after the listing, or missing).
bool MarkRecord(Packs* packs, const ObjRef& ref) {
  auto it = packs->find(ref.pack_id);
  if (it == packs->end()) return true;  // not a candidate: walk it, mark nothing
  PackInfo& p = it->second;
  uint64_t total = p.size / kSlot;
  uint64_t first = ref.offset_4k;
  if (first >= total) return true;
  if (p.live.empty()) p.live.assign(DivCeil(total, 64), 0);
  if (p.Test(first)) return false;
  uint64_t end = std::min(total, first + Slots(ref.stored_len));
  for (uint64_t s = first; s < end; ++s) {
    if (p.Test(s)) continue;
    p.live[s / 64] |= uint64_t{1} << (s % 64);
    ++p.live_slots;
  }
  return true;
}

// The mark: live bits of every record any manifest references, and the
// pack ids every resolution passed through (their relocation files stay).
Status Mark(const Repository& repo, const std::vector<Manifest>& manifests, size_t strict,
            const JobControl& control, Packs* packs, std::set<uint32_t>* touched) {
  TableWalker walker(
      repo, [&](const ObjRef& ref) { return MarkRecord(packs, ref); },
      [&](const ObjRef& ref) { MarkRecord(packs, ref); });
  for (size_t i = 0; i < manifests.size(); ++i) {
    if (control.progress) control.progress({"mark", i, manifests.size()});
    DP420_RETURN_IF_ERROR(walker.Walk(manifests[i], i < strict, control));
  }
  *touched = walker.used_relocations();
  if (control.progress) control.progress({"mark", manifests.size(), manifests.size()});
  return Status::Ok();
}

// Slots of a pack that can hold records: all but the header and (at least)
// one trailer slot.
uint64_t RecordSlots(const PackInfo& p) {
  uint64_t total = p.size / kSlot;
  return total > 2 ? total - 2 : 1;
}


// A record of a repacked pack and where its copy went (16 bytes a record:
// a repack holds one for every record it copies until the relocation files
// are written).
struct Copy {
  uint32_t old_pack = 0;
  uint32_t old_offset_4k = 0;
  uint32_t new_pack = 0;
  uint32_t new_offset_4k = 0;
  auto OldKey() const { return std::pair(old_pack, old_offset_4k); }
};

// The relocation of `copies[0, count)`'s old pack: its entries (an older
// file of it, sorted by old offset) merged with the copies (sorted), a copy
// replacing an entry of the same old offset. One pass, no insertion.
void MergeEntries(const Copy* copies, size_t count, Relocation* r) {
  r->pack_id = copies[0].old_pack;
  std::vector<RelocationEntry> merged;
  merged.reserve(r->entries.size() + count);
  size_t k = 0;
  for (size_t i = 0; i < count; ++i) {
    if (i > 0 && copies[i].old_offset_4k == copies[i - 1].old_offset_4k) continue;
    while (k < r->entries.size() && r->entries[k].old_offset_4k < copies[i].old_offset_4k) {
      merged.push_back(r->entries[k++]);
    }
    if (k < r->entries.size() && r->entries[k].old_offset_4k == copies[i].old_offset_4k) ++k;
    merged.push_back({copies[i].old_offset_4k, copies[i].new_pack, copies[i].new_offset_4k});
  }
  merged.insert(merged.end(), r->entries.begin() + std::ptrdiff_t(k), r->entries.end());
  r->entries = std::move(merged);
}

// Live records are copied in runs: records back to back in the old pack
// (the usual case) are read with one read each. Runs are gathered into
// batches of at most kBatchBytes and kBatchRuns, whose reads are in flight
// together (io_uring, from the device itself when the file system allows
// O_DIRECT); a batch is written to the new pack with one write while the next
// batch is read and this one's records are checked on a second thread.
constexpr uint64_t kBatchBytes = 8 << 20;
constexpr size_t kBatchRuns = 64;
// Batches at once: the one being written and checked, and the reads of the
// next ones (the device reads ahead while the page cache takes the writes).
constexpr size_t kBatchesInFlight = 4;
// What a new pack written through the page cache has written is handed to
// the kernel's writeback every kWritebackBytes (sync_file_range), so the disk
// writes while the next runs are read and the closing fdatasync waits for
// little. (A pack written with O_DIRECT needs no such hint.)
constexpr uint64_t kWritebackBytes = 32 << 20;

// The longest prefix of refs[0, count) that lies back to back and fits in
// kBatchBytes (at least one record).
size_t RunLength(const ObjRef* refs, size_t count) {
  size_t n = 1;
  while (n < count && Adjacent(refs[n - 1], refs[n]) && RunBytes(refs, n + 1) <= kBatchBytes) ++n;
  return n;
}

// The records live[first, first + count) back to back in their pack.
struct RecordRun {
  size_t first = 0, count = 0;
};

// A pack's live records cut into runs, and the runs into batches (the first
// run of each batch, and the number of runs as the last entry).
struct RunPlan {
  std::vector<RecordRun> runs;
  std::vector<size_t> batch_starts;
  size_t batches() const { return batch_starts.size() - 1; }
};

RunPlan PlanRuns(const std::vector<ObjRef>& live) {
  RunPlan plan;
  uint64_t batch_bytes = 0;
  for (size_t i = 0, n = 0; i < live.size(); i += n) {
    n = RunLength(&live[i], live.size() - i);
    uint64_t bytes = RunBytes(&live[i], n);
    bool full = plan.batch_starts.empty() || batch_bytes + bytes > kBatchBytes ||
                plan.runs.size() - plan.batch_starts.back() >= kBatchRuns;
    if (full) {
      plan.batch_starts.push_back(plan.runs.size());
      batch_bytes = 0;
    }
    plan.runs.push_back({i, n});
    batch_bytes += bytes;
  }
  plan.batch_starts.push_back(plan.runs.size());
  return plan;
}

// The repack: live records of `victims` copied into new packs (journalled
// in tmp/.prune.journal before each exists), made durable, read back and
// checked. A victim whose index or a record cannot be read is left alone.
class Repacker {
 public:
  Repacker(const Repository& repo, const Packs& packs, const PruneOptions& o, PruneReport* r)
      : repo_(repo), packs_(packs), o_(o), report_(r) {}
  ~Repacker() {
    ring_.reset();  // before the buffers its reads fill
    if (journal_fd_ >= 0) close(journal_fd_);
  }
  Status Run(const std::vector<uint32_t>& victims);
  // The victims whose every live record was copied.
  const std::set<uint32_t>& done() const { return done_; }
  Status WriteRelocations(const std::set<uint32_t>& used);
  std::vector<uint32_t> new_packs;
  uint64_t new_overhead = 0;  // bytes of the new packs beyond their records

 private:
  // One batch of runs of the pack being copied: its reads, then its check.
  struct Batch {
    AlignedBuf buf;  // kBatchBytes, aligned for O_DIRECT
    uint64_t used = 0;
    size_t first_run = 0, end_run = 0;
    std::vector<io::IoOp> reads;
    size_t reading = 0;  // reads in flight
    std::vector<std::pair<ObjRef, uint64_t>> records;  // and where each is in buf
    std::future<Status> checked;
  };
  // The pack being copied.
  struct Source {
    uint32_t pack_id;
    const PackReader* reader;
    const std::vector<ObjRef>* live;
    RunPlan plan;
  };
  Status CopyPack(uint32_t pack_id, uint64_t* bytes_done, uint64_t bytes_total);
  Status CopyBatches(const Source& src, std::vector<Copy>* copies, uint64_t* bytes_done,
                     uint64_t bytes_total, Status* failed);
  Status QueueReads(const Source& src, size_t batch, Batch* b, Status* failed);
  Status WaitReads(const Source& src, Batch* b, Status* failed);
  Status AppendBatch(const Source& src, const Batch& b, std::vector<Copy>* copies);
  Status AppendRun(const uint8_t* data, const ObjRef* refs, size_t count, Copy* copies,
                   bool raw_source);
  Status WritePending();
  Status NewWriter();
  Status FinishWriter();
  Status ReadBack();
  Status Journal(uint32_t pack_id);
  void CheckBatch(const PackReader& reader, Batch* b);
  Status Settle(Batch* b);
  const Repository& repo_;
  const Packs& packs_;
  const PruneOptions& o_;
  PruneReport* report_;
  int journal_fd_ = -1;
  std::unique_ptr<PackWriter> writer_;
  // Bytes of the current batch not yet written: `pending_len_` bytes from
  // `pending_` to the writer's offset `pending_at_`.
  const uint8_t* pending_ = nullptr;
  uint64_t pending_at_ = 0, pending_len_ = 0;
  uint64_t written_end_ = 0, writeback_from_ = 0;  // of the current writer
  // Every write to a new pack, for the read-back.
  struct Written {
    uint32_t pack_id;
    uint64_t offset, len;
    uint32_t crc32c;
  };
  std::vector<Written> written_;
  std::vector<Copy> copies_;
  std::set<uint32_t> done_;
  Batch batches_[kBatchesInFlight];
  std::unique_ptr<io::Ring> ring_;  // the reads of a batch
};

Status Repacker::Journal(uint32_t pack_id) {
  std::string path = repo_.path() + kPruneJournal;
  if (journal_fd_ < 0) {
    journal_fd_ = io::sys::Open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC,
                                0600);
    if (journal_fd_ < 0) return PosixError(path, errno);
    DP420_RETURN_IF_ERROR(io::SyncDir(repo_.path() + "/tmp"));
  }
  std::string line = "pack " + PackName(pack_id) + "\n";
  size_t done = 0;  // short writes, EINTR and EAGAIN are retried
  while (done < line.size()) {
    ssize_t n = io::sys::Write(journal_fd_, line.data() + done, line.size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return PosixError("write " + path, n < 0 ? errno : EIO);
    done += size_t(n);
  }
  if (io::sys::Fdatasync(journal_fd_) != 0) return PosixError("fdatasync " + path, errno);
  return Status::Ok();
}

// New packs are written through the page cache, their writeback started as
// they grow (WritePending): the disk writes while the next batches are read,
// and the read-back finds the bytes there. (With O_DIRECT writes, each write
// of a batch would wait for the device, and the copies ran slower.)
Status Repacker::NewWriter() {
  DP420_ASSIGN_OR_RETURN(PackWriter w,
                         PackWriter::Create(repo_.PacksDir(), repo_.repo_id(), false,
                                            [this](uint32_t id) { return Journal(id); },
                                            repo_.pack_version()));
  writer_ = std::make_unique<PackWriter>(std::move(w));
  new_packs.push_back(writer_->pack_id());
  written_end_ = writeback_from_ = writer_->size_bytes();
  return Status::Ok();
}

// Writes the pending bytes; through the page cache, starts the writeback of
// every kWritebackBytes (a hint: its failure is left to the fdatasync of
// Finish to report).
Status Repacker::WritePending() {
  if (pending_len_ == 0) return Status::Ok();
  DP420_RETURN_IF_ERROR(writer_->WriteReserved(pending_at_, pending_, pending_len_));
  written_.push_back({writer_->pack_id(), pending_at_, pending_len_,
                      simd::Crc32c(0, pending_, pending_len_)});
  written_end_ = pending_at_ + pending_len_;
  pending_len_ = 0;
  if (!writer_->direct() && written_end_ - writeback_from_ >= kWritebackBytes) {
    (void)sync_file_range(writer_->fd(), off_t(writeback_from_),
                          off_t(written_end_ - writeback_from_), SYNC_FILE_RANGE_WRITE);
    writeback_from_ = written_end_;
  }
  return Status::Ok();
}

// Places the `count` records `refs` laid out back to back in `data` (as
// ReadRunBytes left them) in the new packs, filling copies[i]'s new place;
// they are written with the rest of their batch (WritePending), and a run
// that does not fit the current pack continues in the next.
// `raw_source`: the records come from a pack of version 1, whose trailer
// holds their raw SHA-256; a pack of version 2 takes their stored bytes'
// digest instead.
Status Repacker::AppendRun(const uint8_t* data, const ObjRef* refs, size_t count, Copy* copies,
                           bool raw_source) {
  for (size_t i = 0; i < count; ++i) {
    uint64_t padded = RoundUp(refs[i].stored_len, kRecordAlign);
    if (writer_ && writer_->size_bytes() > sizeof(PackHeader) &&
        writer_->size_bytes() + padded > o_.pack_bytes) {
      DP420_RETURN_IF_ERROR(FinishWriter());
    }
    if (!writer_) DP420_RETURN_IF_ERROR(NewWriter());
    ObjRef copy = refs[i];
    const uint8_t* bytes = data + (refs[i].offset_bytes() - refs[0].offset_bytes());
    writer_->Reserve(refs[i].stored_len, &copy, raw_source ? bytes : nullptr);
    copies[i].new_pack = copy.pack_id;
    copies[i].new_offset_4k = copy.offset_4k;
    if (pending_len_ == 0) {
      pending_ = bytes;
      pending_at_ = copy.offset_bytes();
    }
    DP420_ASSERT(pending_ + pending_len_ == bytes && pending_at_ + pending_len_ == copy.offset_bytes());
    pending_len_ += padded;
  }
  return Status::Ok();
}

Status Repacker::FinishWriter() {
  DP420_RETURN_IF_ERROR(WritePending());
  uint64_t records = writer_->size_bytes() - sizeof(PackHeader);
  DP420_RETURN_IF_ERROR(writer_->Finish());
  new_overhead += writer_->final_size() - records;
  report_->bytes_copied += writer_->final_size();
  ++report_->packs_created;
  writer_.reset();
  return Status::Ok();
}

// Starts checking `b`'s records on another thread.
void Repacker::CheckBatch(const PackReader& reader, Batch* b) {
  if (b->records.empty()) return;
  b->checked = std::async(std::launch::async, [&reader, b] {
    for (const auto& [ref, at] : b->records) {
      DP420_RETURN_IF_ERROR(reader.CheckRecord(ref, b->buf.get() + at));
    }
    return Status::Ok();
  });
}

// Waits for `b`'s check and empties it for the next runs.
Status Repacker::Settle(Batch* b) {
  Status s = b->checked.valid() ? b->checked.get() : Status::Ok();
  b->records.clear();
  b->used = 0;
  return s;
}

// Queues the reads of batch `batch` of `src` into `b` (one per run). A run
// that cannot be read goes to `*failed` (nothing is queued); the ring's own
// failure is returned.
Status Repacker::QueueReads(const Source& src, size_t batch, Batch* b, Status* failed) {
  if (!b->buf && !(b->buf = AllocAligned(kBatchBytes))) {
    *failed = Status::NoMemory("repack buffer");
    return Status::Ok();
  }
  b->first_run = src.plan.batch_starts[batch];
  b->end_run = src.plan.batch_starts[batch + 1];
  b->reads.assign(b->end_run - b->first_run, io::IoOp{});
  b->used = 0;
  for (size_t r = b->first_run; r < b->end_run; ++r) {
    const RecordRun& run = src.plan.runs[r];
    const ObjRef* refs = &(*src.live)[run.first];
    uint8_t* at = b->buf.get() + b->used;
    Result<PackReader::RunRead> read = src.reader->PlanRunRead(refs, run.count, at);
    if (!read.ok()) {
      *failed = read.status();
      return Status::Ok();
    }
    io::IoOp& op = b->reads[r - b->first_run];
    op.owner = b;
    op.kind = io::IoOp::kRead;
    op.fd = read->fd;
    op.buf = at;
    op.len = uint32_t(read->len);
    op.offset = read->offset;
    b->used += RunBytes(refs, run.count);
    DP420_ASSERT(b->used <= kBatchBytes);
  }
  for (io::IoOp& op : b->reads) ring_->Queue(&op);
  b->reading = b->reads.size();
  return ring_->Submit();
}

// Waits for every read of `b` and zeroes each record's padding; the first
// read that failed, naming the pack, goes to `*failed`. The ring's own
// failure is returned: reads may then still be in flight.
Status Repacker::WaitReads(const Source& src, Batch* b, Status* failed) {
  std::vector<io::IoOp*> done;
  while (b->reading > 0) {
    done.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done));
    for (io::IoOp* op : done) --static_cast<Batch*>(op->owner)->reading;
  }
  for (const io::IoOp& op : b->reads) {
    if (Status s = io::IoOpStatus(op, src.reader->path()); !s.ok()) {
      *failed = s;
      return Status::Ok();
    }
  }
  for (size_t r = b->first_run; r < b->end_run; ++r) {
    const RecordRun& run = src.plan.runs[r];
    const ObjRef* refs = &(*src.live)[run.first];
    PackReader::ZeroPadding(refs, run.count, b->reads[r - b->first_run].buf);
  }
  return Status::Ok();
}

// Places batch `b`'s records in the new packs and writes them (one write,
// or two when a new pack begins inside the batch).
Status Repacker::AppendBatch(const Source& src, const Batch& b, std::vector<Copy>* copies) {
  for (size_t r = b.first_run; r < b.end_run; ++r) {
    const RecordRun& run = src.plan.runs[r];
    DP420_RETURN_IF_ERROR(AppendRun(b.reads[r - b.first_run].buf, &(*src.live)[run.first],
                                    run.count, &(*copies)[run.first],
                                    src.reader->version() == kPackVersionRaw));
  }
  return WritePending();
}

// Copies the batches of `src`: batch k is written while the next
// kBatchesInFlight - 1 are read and batch k's records are checked on a second
// thread. The first read or check that fails goes to `*failed` (the pack is
// then left alone); an error that ends the repack is returned: a write, the
// ring's own failure, or cancellation.
Status Repacker::CopyBatches(const Source& src, std::vector<Copy>* copies, uint64_t* bytes_done,
                             uint64_t bytes_total, Status* failed) {
  const std::vector<ObjRef>& live = *src.live;
  const size_t batches = src.plan.batches();
  size_t queued = 0;  // batches whose reads are queued
  for (; queued < std::min(batches, kBatchesInFlight - 1) && failed->ok(); ++queued) {
    DP420_RETURN_IF_ERROR(QueueReads(src, queued, &batches_[queued % kBatchesInFlight], failed));
  }
  for (size_t k = 0; k < batches && failed->ok(); ++k) {
    if (o_.control.Canceled()) return Status::Canceled("prune canceled");
    Batch* b = &batches_[k % kBatchesInFlight];
    DP420_RETURN_IF_ERROR(WaitReads(src, b, failed));
    if (!failed->ok()) break;
    for (size_t r = b->first_run; r < b->end_run; ++r) {
      const RecordRun& run = src.plan.runs[r];
      uint64_t at = uint64_t(b->reads[r - b->first_run].buf - b->buf.get());
      for (size_t i = run.first; i < run.first + run.count; ++i) {
        (*copies)[i] = Copy{src.pack_id, live[i].offset_4k, 0, 0};
        b->records.emplace_back(live[i], at + (live[i].offset_bytes() - live[run.first].offset_bytes()));
        *bytes_done += live[i].stored_len;
      }
    }
    CheckBatch(*src.reader, b);
    if (queued < batches) {  // batch k - 1's buffer, once checked, takes the next reads
      Batch* free = &batches_[queued % kBatchesInFlight];
      *failed = Settle(free);
      if (failed->ok()) DP420_RETURN_IF_ERROR(QueueReads(src, queued++, free, failed));
    }
    DP420_RETURN_IF_ERROR(AppendBatch(src, *b, copies));
    if (o_.control.progress) o_.control.progress({"repack", *bytes_done, bytes_total});
  }
  return Status::Ok();
}

// Copies the live records of `pack_id`. A pack whose index, a read or a
// check fails is left alone (not done): what was copied of it stays unused
// in the new pack.
Status Repacker::CopyPack(uint32_t pack_id, uint64_t* bytes_done, uint64_t bytes_total) {
  const PackInfo& info = packs_.at(pack_id);
  auto reader = PackReader::Open(repo_.PackPath(pack_id), pack_id);
  auto index = reader.ok() ? reader->ReadIndex() : Result<std::vector<ObjRef>>(reader.status());
  if (!index.ok()) {
    report_->warnings.push_back("packs/" + PackName(pack_id) + ".pack kept, not repacked: " +
                                index.status().message());
    return Status::Ok();
  }
  std::vector<ObjRef> live;
  for (const ObjRef& ref : index.value()) {
    if (info.Test(ref.offset_4k)) live.push_back(ref);
  }
  std::sort(live.begin(), live.end(),
            [](const ObjRef& a, const ObjRef& b) { return a.offset_4k < b.offset_4k; });
  if (live.empty()) {
    done_.insert(pack_id);
    return Status::Ok();
  }
  reader->OpenDirect();  // read once: past the page cache where the file system allows
  Source src{pack_id, &*reader, &live, PlanRuns(live)};
  // No read or check of this pack outlives its reader, whatever the way out.
  struct SettleAll {
    Repacker* r;
    ~SettleAll() {
      std::vector<io::IoOp*> done;
      while (r->ring_->in_flight() > 0 && r->ring_->Wait(1, &done).ok()) {
      }
      for (Batch& b : r->batches_) (void)r->Settle(&b);
    }
  } settle_all{this};
  std::vector<Copy> copies(live.size());
  Status failed;  // the first read or check that failed: the pack is left alone
  DP420_RETURN_IF_ERROR(CopyBatches(src, &copies, bytes_done, bytes_total, &failed));
  for (Batch& b : batches_) {
    if (Status s = Settle(&b); !s.ok() && failed.ok()) failed = s;
  }
  if (!failed.ok()) {
    report_->warnings.push_back("packs/" + PackName(pack_id) + ".pack kept, not repacked: " +
                                failed.message());
    return Status::Ok();
  }
  copies_.insert(copies_.end(), copies.begin(), copies.end());
  report_->records_copied += copies.size();
  done_.insert(pack_id);
  return Status::Ok();
}

// Every new pack read back before anything is deleted: its header, trailer
// and index checked, and every write compared with the CRC-32C of what was
// written (each record's SHA-256 was checked when it was read from its old
// pack, right before).
Status Repacker::ReadBack() {
  for (Batch& b : batches_) b.buf.reset();
  std::vector<uint8_t> buf;
  std::map<uint32_t, std::unique_ptr<PackReader>> readers;
  for (const Written& w : written_) {
    auto& reader = readers[w.pack_id];
    if (!reader) {
      auto opened = PackReader::Open(repo_.PackPath(w.pack_id), w.pack_id);
      Status s = opened.ok() ? opened->ReadIndex().status() : opened.status();
      if (!s.ok()) return s.Prefix("prune: a repacked pack does not read back");
      reader = std::make_unique<PackReader>(std::move(opened).value());
    }
    buf.resize(w.len);
    DP420_RETURN_IF_ERROR(reader->ReadBytes(w.offset, buf.data(), w.len)
                              .Prefix("prune: a repacked pack does not read back"));
    if (simd::Crc32c(0, buf.data(), w.len) != w.crc32c) {
      return Status::Corruption("prune: " + reader->path() + " does not read back the " +
                                std::to_string(w.len) + " bytes written at offset " +
                                std::to_string(w.offset));
    }
  }
  return Status::Ok();
}

Status Repacker::Run(const std::vector<uint32_t>& victims) {
  // Only the copies read through the ring: a prune that repacks nothing
  // (it may still delete packs) needs none, and works where io_uring cannot
  // be set up.
  if (victims.empty()) return Status::Ok();
  DP420_ASSIGN_OR_RETURN(ring_,
                         io::Ring::Create({.depth = kBatchRuns * (kBatchesInFlight - 1)}));
  uint64_t total = 0, done = 0;
  for (uint32_t id : victims) total += packs_.at(id).live_slots * kSlot;
  for (uint32_t id : victims) DP420_RETURN_IF_ERROR(CopyPack(id, &done, total));
  if (writer_) DP420_RETURN_IF_ERROR(FinishWriter());
  if (!new_packs.empty()) DP420_RETURN_IF_ERROR(io::SyncDir(repo_.PacksDir()));
  return ReadBack();
}

// relocated/X for every repacked X (merged with an older file of X), and
// the entries of the other relocation files in use that pointed into a
// repacked pack pointed at the copies, so chains stay one hop long.
Status Repacker::WriteRelocations(const std::set<uint32_t>& used) {
  // The copies of the packs copied whole, by old (pack, offset); the rest
  // are dropped (their copies stay unused).
  std::erase_if(copies_, [this](const Copy& c) { return !done_.count(c.old_pack); });
  std::sort(copies_.begin(), copies_.end(),
            [](const Copy& a, const Copy& b) { return a.OldKey() < b.OldKey(); });
  auto moved = [this](uint32_t pack, uint32_t offset_4k) -> const Copy* {
    auto it = std::lower_bound(
        copies_.begin(), copies_.end(), std::pair(pack, offset_4k),
        [](const Copy& c, const std::pair<uint32_t, uint32_t>& key) { return c.OldKey() < key; });
    return it != copies_.end() && it->OldKey() == std::pair(pack, offset_4k) ? &*it : nullptr;
  };
  std::map<uint32_t, Relocation> files;
  for (uint32_t id : used) {
    DP420_ASSIGN_OR_RETURN(files[id], ReadRelocation(repo_, id));
  }
  std::set<uint32_t> changed(done_.begin(), done_.end());
  for (uint32_t id : done_) files[id].pack_id = id;
  for (auto& [id, r] : files) {
    for (RelocationEntry& e : r.entries) {
      const Copy* c = moved(e.new_pack_id, e.new_offset_4k);
      if (!c) continue;
      e.new_pack_id = c->new_pack;
      e.new_offset_4k = c->new_offset_4k;
      changed.insert(id);
    }
  }
  for (size_t i = 0; i < copies_.size();) {
    size_t end = i;
    while (end < copies_.size() && copies_[end].old_pack == copies_[i].old_pack) ++end;
    MergeEntries(&copies_[i], end - i, &files[copies_[i].old_pack]);
    i = end;
  }
  for (uint32_t id : changed) {
    DP420_RETURN_IF_ERROR(WriteRelocation(repo_, files[id]));
    ++report_->relocations_written;
  }
  return Status::Ok();
}

// What to delete and what to repack.
struct Plan {
  std::vector<uint32_t> dead;     // no live slot
  std::vector<uint32_t> victims;  // to repack
};

Plan MakePlan(const Packs& packs, double max_unused, PruneReport* report) {
  Plan plan;
  for (const auto& [id, p] : packs) {
    report->bytes_referenced += p.live_slots * kSlot;
    if (p.in_progress) continue;
    if (p.live_slots == 0) {
      plan.dead.push_back(id);
      continue;
    }
    uint64_t slots = RecordSlots(p);
    double unused = slots > p.live_slots ? double(slots - p.live_slots) / double(slots) : 0;
    if (unused > max_unused) plan.victims.push_back(id);
  }
  return plan;
}

// Under the exclusive lock no backup runs, so the snapshots listed now are
// every snapshot that will reference the packs prune deletes. One committed
// after the listing of step 3 may reference a record the mark found dead: a
// dedup hit (dedup.h) on a record of another volume whose snapshots were
// forgotten meanwhile. Such packs are kept (a repacked one with its old
// file: its relocation goes, its copies are reclaimed by the next prune).
// Pages the mark walked are skipped: everything under them was kept.
Status KeepWhatNewSnapshotsReference(const Repository& repo,
                                     const std::vector<Manifest>& marked, Packs* packs,
                                     std::vector<uint32_t>* dead, std::set<uint32_t>* repacked,
                                     PruneReport* report) {
  std::vector<Manifest> staged;  // first: see LoadManifests
  ListStagedManifests(repo, &staged);
  std::vector<Manifest> now;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListManifests("", &now, &damaged));
  if (!damaged.empty()) {
    return Status::Corruption("prune deletes nothing: " + damaged.front().status.message() +
                              " (a snapshot committed while prune ran does not read)");
  }
  std::set<std::pair<std::string, std::string>> seen;
  for (const Manifest& m : marked) seen.emplace(m.volume, m.snapshot_id);
  std::set<uint32_t> candidates(dead->begin(), dead->end());
  candidates.insert(repacked->begin(), repacked->end());
  std::set<uint32_t> keep;
  auto check = [&](const ObjRef& ref) {
    if (candidates.count(ref.pack_id)) keep.insert(ref.pack_id);
  };
  TableWalker walker(
      repo,
      [&](const ObjRef& ref) {
        check(ref);
        return MarkRecord(packs, ref);
      },
      check);
  JobControl none;
  for (const Manifest& m : now) {
    if (seen.count({m.volume, m.snapshot_id})) continue;
    DP420_RETURN_IF_ERROR(walker.Walk(m, true, none));
  }
  for (const Manifest& m : staged) {
    if (seen.count({m.volume, m.snapshot_id})) continue;
    DP420_RETURN_IF_ERROR(walker.Walk(m, false, none));
  }
  for (uint32_t id : keep) {
    std::erase(*dead, id);
    repacked->erase(id);
    report->warnings.push_back("kept packs/" + PackName(id) +
                               ".pack: a snapshot committed while prune ran references it");
  }
  return Status::Ok();
}

// The delete phase, under the repository lock held exclusively: the dead
// and the repacked packs, then the relocation files no reference needs.
Status DeletePhase(const Repository& repo, const PruneOptions& o, Plan plan,
                   std::set<uint32_t> repacked, const std::set<uint32_t>& used, Packs& packs,
                   const std::vector<Manifest>& marked, PruneReport* report) {
  if (o.before_delete) o.before_delete();
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockRepository(true, [&] {
    if (o.notice) o.notice("waiting for running backups, restores and verifies to finish");
  }));
  DP420_RETURN_IF_ERROR(
      KeepWhatNewSnapshotsReference(repo, marked, &packs, &plan.dead, &repacked, report));
  uint64_t removed = 0;
  auto remove = [&](uint32_t id) {
    if (io::sys::Unlink(repo.PackPath(id).c_str()) == 0 || errno == ENOENT) {
      removed += packs.at(id).size;
      return true;
    }
    report->warnings.push_back("could not delete packs/" + PackName(id) + ".pack: " +
                               std::strerror(errno));
    return false;
  };
  for (uint32_t id : plan.dead) report->packs_deleted += remove(id) ? 1 : 0;
  for (uint32_t id : repacked) report->packs_rewritten += remove(id) ? 1 : 0;
  DP420_RETURN_IF_ERROR(io::SyncDir(repo.PacksDir()));
  for (uint32_t id : ListRelocations(repo)) {
    if (used.count(id) || repacked.count(id)) continue;
    if (io::sys::Unlink(RelocationPath(repo, id).c_str()) == 0) ++report->relocations_deleted;
  }
  if (report->relocations_deleted) DP420_RETURN_IF_ERROR(io::SyncDir(repo.path() + "/relocated"));
  report->bytes_freed = removed > report->bytes_copied ? removed - report->bytes_copied : 0;
  return Status::Ok();
}

// What the report says prune would do, without doing it.
void DryRun(const Repository& repo, const Plan& plan, const Packs& packs,
            const std::set<uint32_t>& used, PruneReport* report) {
  uint64_t removed = 0, copied = 0;
  for (uint32_t id : plan.dead) removed += packs.at(id).size;
  for (uint32_t id : plan.victims) {
    removed += packs.at(id).size;
    copied += packs.at(id).live_slots * kSlot;
  }
  if (copied) copied += sizeof(PackHeader) + kSlot * DivCeil(copied, kPackMaxBytes);
  report->packs_deleted = plan.dead.size();
  report->packs_rewritten = plan.victims.size();
  report->bytes_copied = copied;
  report->bytes_freed = removed > copied ? removed - copied : 0;
  for (uint32_t id : ListRelocations(repo)) {
    if (!used.count(id)) ++report->relocations_deleted;
  }
}

// Temp files of relocation files a killed prune was writing (only prune
// writes relocated/, and it holds the prune lock).
void RemoveRelocationTemps(const Repository& repo) {
  for (const std::string& name : io::ListDir(repo.path() + "/relocated")) {
    if (name.find(".tmp.") != std::string::npos) {
      io::sys::Unlink((repo.path() + "/relocated/" + name).c_str());
    }
  }
}

Result<PruneReport> Prune(const Repository& repo, const PruneOptions& o) {
  PruneReport report;
  report.dry_run = o.dry_run;
  if (!o.dry_run) RemoveRelocationTemps(repo);
  Packs packs = ListPacks(repo);
  report.packs_before = packs.size();
  for (const auto& [id, p] : packs) report.pack_bytes_before += p.size;
  DP420_RETURN_IF_ERROR(MarkJournalled(repo, &packs, &report));
  DP420_RETURN_IF_ERROR(CheckRelocationFiles(repo));
  std::vector<Manifest> manifests;
  size_t strict = 0;
  DP420_RETURN_IF_ERROR(LoadManifests(repo, &manifests, &strict));
  report.snapshots = manifests.size();
  std::set<uint32_t> used;
  DP420_RETURN_IF_ERROR(Mark(repo, manifests, strict, o.control, &packs, &used));
  Plan plan = MakePlan(packs, o.max_unused, &report);
  if (o.dry_run) {
    DryRun(repo, plan, packs, used, &report);
    uint64_t left =
        report.pack_bytes_before - std::min(report.pack_bytes_before, report.bytes_freed);
    report.bytes_unused = left > report.bytes_referenced ? left - report.bytes_referenced : 0;
    return report;
  }
  Repacker repacker(repo, packs, o, &report);
  Status repack = repacker.Run(plan.victims);
  if (repack.ok()) repack = repacker.WriteRelocations(used);
  std::set<uint32_t> repacked = repacker.done();
  if (!repack.ok()) {
    // A full device: the unreferenced packs are still deleted (which is
    // what frees room); the repacked ones stay, their copies are reclaimed
    // by the next prune.
    if (repack.code() != Code::kNoSpace) return repack;
    report.warnings.push_back("repacking stopped (" + repack.message() +
                              "); only unreferenced packs were deleted: run prune again");
    repacked.clear();
  }
  DP420_RETURN_IF_ERROR(DeletePhase(repo, o, plan, repacked, used, packs, manifests, &report));
  io::sys::Unlink((repo.path() + kPruneJournal).c_str());
  uint64_t after = 0;
  for (uint32_t id : repo.ListPackIds()) {
    struct stat st;
    if (stat(repo.PackPath(id).c_str(), &st) == 0) after += uint64_t(st.st_size);
  }
  report.bytes_unused = after > report.bytes_referenced ? after - report.bytes_referenced : 0;
  return report;
}

}  // namespace

namespace {

// Record key: pack id and offset of a resolved reference.
uint64_t Key(const ObjRef& ref) { return uint64_t{ref.pack_id} << 32 | ref.offset_4k; }

constexpr uint32_t kShared = UINT32_MAX;

// Walks every manifest's table (pages once per manifest) and attributes
// every record to its first manifest, or to kShared once a second one
// references it.
Status Attribute(const Repository& repo, const std::vector<Manifest>& manifests, size_t strict,
                 const JobControl& control, StatsReport* report,
                 std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>>* owners) {
  std::unordered_set<uint64_t> seen;  // this manifest's records
  uint32_t current = 0;
  auto add = [&](const ObjRef& ref) {
    if (!seen.insert(Key(ref)).second) return false;
    auto [it, added] = owners->try_emplace(Key(ref), current, uint32_t(Slots(ref.stored_len)));
    if (!added && it->second.first != current) it->second.first = kShared;
    if (current < strict) {
      report->snapshots[current].bytes_referenced += Slots(ref.stored_len) * kSlot;
    }
    return true;
  };
  TableWalker walker(repo, add, [&](const ObjRef& ref) { add(ref); });
  for (size_t i = 0; i < manifests.size(); ++i) {
    if (control.progress) control.progress({"stats", i, manifests.size()});
    current = uint32_t(i);
    seen.clear();
    DP420_RETURN_IF_ERROR(walker.Walk(manifests[i], i < strict, control));
  }
  return Status::Ok();
}

}  // namespace

Result<StatsReport> ComputeStats(const Repository& repo, const StatsOptions& options) {
  if (!options.volume.empty() && !ValidVolumeName(options.volume)) {
    return Status::InvalidArgument("invalid volume name '" + options.volume + "'");
  }
  DP420_ASSIGN_OR_RETURN(VolumeLock repo_lock, repo.LockRepository(false));
  StatsReport report;
  for (const auto& [id, p] : ListPacks(repo)) {
    ++report.packs;
    report.pack_bytes += p.size;
  }
  DP420_RETURN_IF_ERROR(CheckRelocationFiles(repo));
  std::vector<Manifest> manifests;
  size_t strict = 0;
  DP420_RETURN_IF_ERROR(LoadManifests(repo, &manifests, &strict));
  for (size_t i = 0; i < strict; ++i) {
    const Manifest& m = manifests[i];
    report.snapshots.push_back({m.volume, m.snapshot_id, m.sequence, m.created, 0, 0, 0});
  }
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> owners;  // key -> owner, slots
  DP420_RETURN_IF_ERROR(Attribute(repo, manifests, strict, options.control, &report, &owners));
  for (const auto& [key, owner] : owners) {
    report.bytes_referenced += uint64_t{owner.second} * kSlot;
    if (owner.first < strict) {
      report.snapshots[owner.first].bytes_unique += uint64_t{owner.second} * kSlot;
    }
  }
  for (SnapshotSpace& s : report.snapshots) s.bytes_shared = s.bytes_referenced - s.bytes_unique;
  report.bytes_reclaimable =
      report.pack_bytes > report.bytes_referenced ? report.pack_bytes - report.bytes_referenced : 0;
  if (!options.volume.empty()) {
    std::erase_if(report.snapshots,
                  [&](const SnapshotSpace& s) { return s.volume != options.volume; });
  }
  return report;
}

Result<PruneReport> RunPrune(const Repository& repo, const PruneOptions& options) {
  if (!(options.max_unused >= 0 && options.max_unused <= 1)) {
    return Status::InvalidArgument("max_unused is " + std::to_string(options.max_unused) +
                                   "; allowed 0..1 (0 %..100 %)");
  }
  DP420_ASSIGN_OR_RETURN(VolumeLock prune_lock, repo.LockPrune());
  return Prune(repo, options);
}

namespace {

// The counters of a prune report, by their JSON names.
std::vector<std::pair<const char*, uint64_t PruneReport::*>> PruneCounters() {
  return {{"snapshots", &PruneReport::snapshots},
          {"packs_before", &PruneReport::packs_before},
          {"pack_bytes_before", &PruneReport::pack_bytes_before},
          {"packs_in_progress", &PruneReport::packs_in_progress},
          {"packs_deleted", &PruneReport::packs_deleted},
          {"packs_rewritten", &PruneReport::packs_rewritten},
          {"packs_created", &PruneReport::packs_created},
          {"records_copied", &PruneReport::records_copied},
          {"bytes_copied", &PruneReport::bytes_copied},
          {"bytes_freed", &PruneReport::bytes_freed},
          {"bytes_referenced", &PruneReport::bytes_referenced},
          {"bytes_unused", &PruneReport::bytes_unused},
          {"relocations_written", &PruneReport::relocations_written},
          {"relocations_deleted", &PruneReport::relocations_deleted}};
}

}  // namespace

Json PruneReportToJson(const PruneReport& r) {
  Json j = {{"dry_run", r.dry_run}};
  for (const auto& [name, field] : PruneCounters()) j[name] = r.*field;
  j["warnings"] = r.warnings;
  return j;
}

Result<PruneReport> PruneReportFromJson(const Json& j) {
  PruneReport r;
  try {
    r.dry_run = j.at("dry_run").get<bool>();
    for (const auto& [name, field] : PruneCounters()) r.*field = JsonUint<uint64_t>(j.at(name));
    r.warnings = j.at("warnings").get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    return Status::Network(std::string("the server's prune report is malformed: ") + e.what());
  }
  return r;
}

Json StatsReportToJson(const StatsReport& r,
                       const std::function<std::string(const std::string&)>& show) {
  Json snapshots = Json::array();
  for (const auto& s : r.snapshots) {
    snapshots.push_back({{"volume", show(s.volume)}, {"snapshot_id", s.snapshot_id},
                         {"sequence", s.sequence}, {"created", s.created},
                         {"bytes_referenced", s.bytes_referenced},
                         {"bytes_unique", s.bytes_unique}, {"bytes_shared", s.bytes_shared}});
  }
  return {{"snapshots", snapshots}, {"packs", r.packs}, {"pack_bytes", r.pack_bytes},
          {"bytes_referenced", r.bytes_referenced}, {"bytes_reclaimable", r.bytes_reclaimable}};
}

Result<StatsReport> StatsReportFromJson(const Json& j) {
  StatsReport r;
  try {
    for (const auto& s : j.at("snapshots")) {
      SnapshotSpace one;
      one.volume = s.at("volume").get<std::string>();
      one.snapshot_id = s.at("snapshot_id").get<std::string>();
      one.sequence = JsonUint<uint64_t>(s.at("sequence"));
      one.created = s.at("created").get<std::string>();
      one.bytes_referenced = JsonUint<uint64_t>(s.at("bytes_referenced"));
      one.bytes_unique = JsonUint<uint64_t>(s.at("bytes_unique"));
      one.bytes_shared = JsonUint<uint64_t>(s.at("bytes_shared"));
      r.snapshots.push_back(std::move(one));
    }
    r.packs = JsonUint<uint64_t>(j.at("packs"));
    r.pack_bytes = JsonUint<uint64_t>(j.at("pack_bytes"));
    r.bytes_referenced = JsonUint<uint64_t>(j.at("bytes_referenced"));
    r.bytes_reclaimable = JsonUint<uint64_t>(j.at("bytes_reclaimable"));
  } catch (const std::exception& e) {
    return Status::Network(std::string("the server's stats report is malformed: ") + e.what());
  }
  return r;
}

}  // namespace dp420
