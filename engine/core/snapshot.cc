#include "engine/core/snapshot.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

#include "engine/core/group_repo.h"
#include "engine/core/history.h"
#include "engine/core/scanner.h"
#include "engine/core/test_hooks.h"
#include "io/inject.h"
#include "io/assert.h"
#include "io/file.h"
#include "io/random.h"
#include "simd/simd.h"

namespace dp420 {

// ---- PageQueue ----

void PageQueue::Put(std::unique_ptr<LeafPage> page) {
  std::lock_guard lock(mu_);
  ready_.emplace(page->index, std::move(page));
  cv_get_.notify_all();
}

bool PageQueue::HasRoom(uint64_t page_index) {
  std::lock_guard lock(mu_);
  return page_index < next_ + window_;
}

bool PageQueue::WaitForRoom(uint64_t page_index) {
  std::unique_lock lock(mu_);
  cv_put_.wait(lock, [&] { return aborted_ || page_index < next_ + window_; });
  return !aborted_;
}

bool PageQueue::WaitForRoomFor(uint64_t page_index, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  bool room = cv_put_.wait_for(lock, timeout,
                               [&] { return aborted_ || page_index < next_ + window_; });
  return room && !aborted_;
}

std::unique_ptr<LeafPage> PageQueue::Take(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_get_.wait_for(lock, timeout, [&] { return aborted_ || ready_.count(next_); });
  auto it = ready_.find(next_);
  if (aborted_ || it == ready_.end()) return nullptr;
  auto page = std::move(it->second);
  ready_.erase(it);
  ++next_;
  cv_put_.notify_all();
  return page;
}

void PageQueue::Abort() {
  std::lock_guard lock(mu_);
  aborted_ = true;
  cv_put_.notify_all();
  cv_get_.notify_all();
}

bool PageQueue::aborted() {
  std::lock_guard lock(mu_);
  return aborted_;
}

uint64_t DefaultPageWindow(unsigned threads) {
  // Room for every page a worker can have in flight, plus slack.
  uint64_t pages_in_flight = kInFlightBytes / (uint64_t{kPageEntries} * kMinBlockSize);
  return pages_in_flight + uint64_t{threads} * 4;
}

// ---- helpers ----

std::string NewSnapshotId() {
  uint8_t raw[8] = {};
  while (!io::FillRandom(raw, sizeof(raw)).ok()) {
  }
  return simd::ToHex(raw, sizeof(raw));
}

std::string Rfc3339(uint64_t unix_ns) {
  time_t secs = static_cast<time_t>(unix_ns / 1000000000ull);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[64];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, sizeof(buf) - n, ".%06lluZ",
           static_cast<unsigned long long>((unix_ns / 1000) % 1000000));
  return buf;
}

namespace {

// Reads the fields of an RFC 3339 time from `s`; false when the text is not one.
struct TimeFields {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  uint64_t fraction_ns = 0;
  int64_t offset_s = 0;  // east of UTC
};

class TimeReader {
 public:
  explicit TimeReader(const std::string& s) : s_(s) {}
  bool Number(int digits, int* out) {
    if (i_ + size_t(digits) > s_.size()) return false;
    int v = 0;
    for (int k = 0; k < digits; ++k) {
      char c = s_[i_ + size_t(k)];
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    *out = v;
    i_ += size_t(digits);
    return true;
  }
  bool Literal(char c) {
    if (i_ >= s_.size() || s_[i_] != c) return false;
    ++i_;
    return true;
  }
  bool Fraction(uint64_t* ns) {
    uint64_t scale = 100000000;
    size_t digits = 0;
    for (; i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; ++i_, ++digits) {
      *ns += uint64_t(s_[i_] - '0') * scale;
      scale /= 10;  // digits past the ninth add 0
    }
    return digits > 0;
  }
  bool AtEnd() const { return i_ == s_.size(); }

 private:
  const std::string& s_;
  size_t i_ = 0;
};

bool ReadTimeFields(const std::string& s, TimeFields* f) {
  TimeReader r(s);
  if (!(r.Number(4, &f->year) && r.Literal('-') && r.Number(2, &f->month) && r.Literal('-') &&
        r.Number(2, &f->day))) {
    return false;
  }
  if (!(r.Literal('T') || r.Literal('t') || r.Literal(' '))) return false;
  if (!(r.Number(2, &f->hour) && r.Literal(':') && r.Number(2, &f->minute) && r.Literal(':') &&
        r.Number(2, &f->second))) {
    return false;
  }
  if (r.Literal('.') && !r.Fraction(&f->fraction_ns)) return false;
  if (!r.Literal('Z') && !r.Literal('z')) {
    int sign = r.Literal('+') ? 1 : r.Literal('-') ? -1 : 0;
    int hours = 0, minutes = 0;
    if (sign == 0 || !(r.Number(2, &hours) && r.Literal(':') && r.Number(2, &minutes)) ||
        hours > 23 || minutes > 59) {
      return false;
    }
    f->offset_s = sign * (hours * 3600 + minutes * 60);
  }
  return r.AtEnd();
}

}  // namespace

Result<uint64_t> ParseRfc3339(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("'" + text + "' " + why);
  };
  TimeFields f;
  if (!ReadTimeFields(text, &f)) {
    return bad("is not a time like 2026-12-01T03:00:00Z (RFC 3339: date, time to the second, "
               "Z or an offset like +01:00)");
  }
  struct tm tm {};
  tm.tm_year = f.year - 1900;
  tm.tm_mon = f.month - 1;
  tm.tm_mday = f.day;
  tm.tm_hour = f.hour;
  tm.tm_min = f.minute;
  tm.tm_sec = f.second;
  time_t local = timegm(&tm);
  // timegm normalises (February 30 becomes March 2): a field out of range shows there.
  if (tm.tm_year != f.year - 1900 || tm.tm_mon != f.month - 1 || tm.tm_mday != f.day ||
      tm.tm_hour != f.hour || tm.tm_min != f.minute || tm.tm_sec != f.second) {
    return bad("is not a date and time that exists");
  }
  int64_t unix_s = int64_t(local) - f.offset_s;
  if (unix_s < 0) return bad("is before 1970");
  return uint64_t(unix_s) * 1000000000ull + f.fraction_ns;
}

Status CheckBackupTime(uint64_t unix_ns, const Manifest* parent) {
  uint64_t now = NowUnixNs();
  if (unix_ns > now) {
    return Status::InvalidArgument("the backup time " + Rfc3339(unix_ns) +
                                   " is in the future (now " + Rfc3339(now) + ")");
  }
  if (parent && unix_ns < parent->created_unix_ns) {
    return Status::InvalidArgument(
        "the backup time " + Rfc3339(unix_ns) + " is before that of the volume's newest "
        "snapshot " + parent->snapshot_id + " (" + parent->created + "): a volume's snapshots "
        "are in time order");
  }
  return Status::Ok();
}

uint64_t NowUnixNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

Result<uint32_t> ChooseBlockSize(const std::string& volume, uint32_t requested,
                                 const Manifest* parent) {
  if (requested == 0) return parent ? parent->block_size : kDefaultBlockSize;
  if (requested < kMinBlockSize || requested > kMaxBlockSize ||
      (requested & (requested - 1)) != 0) {
    return Status::InvalidArgument("block size " + std::to_string(requested) +
                                   " must be a power of two from 4096 to 4194304");
  }
  if (parent && parent->block_size != requested) {
    return Status::InvalidArgument(
        "volume '" + volume + "' was backed up with block size " +
        std::to_string(parent->block_size) + "; --block-size " + std::to_string(requested) +
        " differs (a chain keeps one block size: use another volume name for a new chain)");
  }
  return requested;
}

// ---- SnapshotBuilder ----

Result<std::unique_ptr<SnapshotBuilder>> SnapshotBuilder::Start(const Repository& repo,
                                                                const std::string& volume,
                                                                const Manifest* parent,
                                                                uint32_t requested_block_size,
                                                                uint64_t volume_size,
                                                                uint64_t page_window) {
  DP420_ASSIGN_OR_RETURN(uint32_t block_size,
                         ChooseBlockSize(volume, requested_block_size, parent));
  std::unique_ptr<SnapshotBuilder> b(new SnapshotBuilder(repo, page_window));
  DP420_ASSIGN_OR_RETURN(b->repo_lock_, repo.LockRepository(false));
  Manifest& m = b->m_;
  m.repo_id = repo.repo_id_hex();
  m.snapshot_id = NewSnapshotId();
  m.volume = volume;
  if (parent) {
    m.parent = parent->snapshot_id;
    m.parent_manifest_sha256 = parent->seal;
    m.sequence = parent->sequence + 1;
  } else {
    m.sequence = 1;
  }
  m.created_unix_ns = NowUnixNs();
  m.created = Rfc3339(m.created_unix_ns);
  m.block_size = block_size;
  m.volume_size = volume_size;
  m.blocks_total = DivCeil(volume_size, block_size);
  m.table_levels = TableShape::For(m.blocks_total).levels;

  b->hasher_ = repo.VolumeHasher(volume);
  b->zero_full_ = ZeroBlockEntry(*b->hasher_, block_size);
  b->zero_tail_ = ZeroBlockEntry(*b->hasher_, m.blocks_total ? b->BlockLen(m.blocks_total - 1) : 0);

  DP420_ASSIGN_OR_RETURN(b->journal_, BackupJournal::Start(repo, volume, m.snapshot_id));
  if (parent) b->parent_reader_ = std::make_unique<TableReader>(repo, *parent);
  DP420_RETURN_IF_ERROR(b->SetCompression(CodecSpec{}));
  SnapshotBuilder* self = b.get();
  b->builder_ = std::make_unique<TableBuilder>(
      TableShape::For(m.blocks_total), b->parent_reader_.get(),
      [self](const uint8_t* bytes, uint32_t len, ObjRef* ref) {
        return self->WritePage(bytes, len, ref);
      });
  return b;
}

SnapshotBuilder::~SnapshotBuilder() {
  if (!committed_) Rollback();
}

uint32_t SnapshotBuilder::BlockLen(uint64_t block) const { return m_.BlockLen(block); }

Result<PackWriter> SnapshotBuilder::NewPack(bool direct) {
  return PackWriter::Create(
      repo_.PacksDir(), repo_.repo_id(), direct,
      [&](uint32_t id) {
        std::lock_guard lock(journal_mu_);
        return journal_.AddPack(id);
      },
      repo_.pack_version());
}

Status SnapshotBuilder::SetCompression(const CodecSpec& compression) {
  DP420_ASSIGN_OR_RETURN(page_codec_, repo_.NewRecordCodec(compression));
  return Status::Ok();
}

Status SnapshotBuilder::WritePage(const uint8_t* bytes, uint32_t len, ObjRef* ref) {
  if (!table_pack_) {
    DP420_ASSIGN_OR_RETURN(PackWriter w, NewPack(false));
    table_pack_ = std::make_unique<PackWriter>(std::move(w));
  }
  if (!page_codec_->transforms()) return table_pack_->WriteRecord(bytes, len, ref);
  page_buf_.resize(MaxEncodedBytes(len));
  DP420_ASSIGN_OR_RETURN(const uint8_t* stored, page_codec_->Encode({bytes, len}, ref,
                                                                     page_buf_.data()));
  return table_pack_->WriteRecord(stored, ref->stored_len, ref);
}

Status SnapshotBuilder::Consume(const std::function<bool()>& stopped,
                                const std::function<void()>& tick) {
  if (tick) tick();
  if (pages() == 0) {
    if (!empty_done_) DP420_RETURN_IF_ERROR(builder_->AddLeaf(nullptr, 0));
    empty_done_ = true;
    return Status::Ok();
  }
  while (consumed_ < pages()) {
    auto page = queue_.Take(std::chrono::milliseconds(100));
    if (tick) tick();
    if (!page) {
      if (stopped()) return Status::Ok();
      continue;
    }
    DP420_ASSERT(page->index == consumed_);
    for (uint32_t i = 0; i < page->count; ++i) volume_sha_.Update(page->entries[i].ref.sha256, 32);
    DP420_RETURN_IF_ERROR(builder_->AddLeaf(page->entries, page->count));
    ++consumed_;
  }
  return Status::Ok();
}

Status SnapshotBuilder::WriteManifest(bool* renamed) {
  std::string dir = repo_.SnapshotsDir(m_.volume);
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  std::string text = SealJson(m_.ToJson(), repo_.seal_key(), &m_.seal);
  m_.file_name = m_.FileName();
  std::string tmp = repo_.path() + "/tmp/" + m_.snapshot_id + ".manifest.tmp";
  io::TempFileGuard tmp_guard(tmp);  // a failed write or rename leaves no temp
  {
    DP420_ASSIGN_OR_RETURN(io::File f,
                           io::File::OpenWrite(tmp, O_CREAT | O_TRUNC | O_WRONLY, false));
    DP420_RETURN_IF_ERROR(f.WriteAt(0, text.data(), text.size()));
    DP420_RETURN_IF_ERROR(f.Sync());
  }
  CrashPoint("before-rename");
  std::string final_path = dir + "/" + m_.file_name;
  if (io::sys::Rename(tmp.c_str(), final_path.c_str()) != 0) {
    return PosixError("rename " + tmp + " -> " + final_path, errno);
  }
  tmp_guard.Keep();
  CrashPoint("after-rename");
  // The snapshot is visible now: from here on a failure must not roll back.
  *renamed = true;
  Status synced = io::SyncDir(dir);
  if (!synced.ok()) synced = io::SyncDir(dir);
  if (!synced.ok()) {
    return synced.Prefix("snapshot " + m_.snapshot_id + " was written but its directory could "
                         "not be made durable");
  }
  CrashPoint("before-head");
  // Until the head names it, the snapshot is the newest by descent from the
  // head (history.h), so a failure here loses nothing; it is still reported.
  Status head = AdvanceHead(repo_, m_.volume, &m_);
  if (!head.ok()) {
    return head.Prefix("snapshot " + m_.snapshot_id + " was written but the volume's head "
                       "could not be advanced");
  }
  return Status::Ok();
}

Status SnapshotBuilder::FinishData(const SnapshotStats& stats) {
  if (!complete()) return Status::Internal("commit before every leaf page was consumed");
  CrashPoint("before-table");
  DP420_ASSIGN_OR_RETURN(m_.table_root, builder_->Finish());
  uint64_t table_bytes = 0;
  if (table_pack_) {
    DP420_RETURN_IF_ERROR(table_pack_->Finish());
    table_bytes = table_pack_->final_size();
  }
  DP420_RETURN_IF_ERROR(io::SyncDir(repo_.PacksDir()));
  CrashPoint("before-manifest");
  uint8_t checksum[32];
  volume_sha_.Final(checksum);
  m_.checksum_sha256 = simd::ToHex(checksum, 32);
  m_.blocks_changed = stats.blocks_changed;
  m_.blocks_zero = stats.blocks_zero;
  m_.blocks_stored = stats.blocks_stored;
  m_.bytes_written = stats.bytes_written + table_bytes;
  m_.bytes_read = stats.bytes_read;
  return Status::Ok();
}

Result<Manifest> SnapshotBuilder::Commit(const SnapshotStats& stats) {
  DP420_ASSERT(!committed_);
  DP420_ASSERT(!staged());
  DP420_RETURN_IF_ERROR(FinishData(stats));
  bool renamed = false;
  Status written = WriteManifest(&renamed);
  if (renamed) {
    committed_ = true;
    journal_.Commit();  // referenced now: never delete these packs
  }
  DP420_RETURN_IF_ERROR(written);
  return m_;
}

void SnapshotBuilder::Rollback() {
  if (committed_) return;
  queue_.Abort();
  if (staged() && !Unstage()) return;
  if (table_pack_) table_pack_->Abandon();
  table_pack_.reset();
  journal_.Rollback();
}

// ---- a member of a consistency group ----

GroupMemberRecord SnapshotBuilder::SelfRecord() const {
  GroupMemberRecord r;
  r.volume = m_.volume;
  r.snapshot_id = m_.snapshot_id;
  r.sequence = m_.sequence;
  r.manifest_seal = m_.seal;
  return r;
}

// The volume lock is held from Start on, so the parent drafted then is still
// the volume's newest; a head past it means a writer did not hold the lock.
Status SnapshotBuilder::CheckStillNewest() const {
  auto head = ReadHead(repo_, m_.volume);
  if (head.ok() && head->sequence >= m_.sequence) {
    return Status::Busy("volume '" + m_.volume + "' gained snapshot " + head->snapshot_id +
                        " (sequence " + std::to_string(head->sequence) + ") while snapshot " +
                        m_.snapshot_id + " was taken: not staged");
  }
  return Status::Ok();
}

Result<Manifest> SnapshotBuilder::Stage(const SnapshotStats& stats, const std::string& group,
                                        uint64_t epoch) {
  DP420_ASSERT(!committed_);
  DP420_ASSERT(!staged());
  if (!ValidGroupName(group) || epoch == 0) {
    return Status::InvalidArgument("invalid group '" + group + "' or epoch " +
                                   std::to_string(epoch));
  }
  DP420_RETURN_IF_ERROR(FinishData(stats));
  DP420_RETURN_IF_ERROR(CheckStillNewest());
  {
    std::lock_guard lock(journal_mu_);
    DP420_RETURN_IF_ERROR(journal_.MarkGroup(group, epoch));
  }
  // From here on a rollback also removes the staged manifest.
  stage_group_ = group;
  stage_epoch_ = epoch;
  const std::string text = SealJson(m_.ToJson(), repo_.seal_key(), &m_.seal);
  m_.file_name = m_.FileName();
  DP420_RETURN_IF_ERROR(StageManifest(repo_, group, epoch, m_.volume, m_.snapshot_id, text));
  return m_;
}

Status SnapshotBuilder::Publish() {
  if (committed_) return Status::Ok();
  const std::string what = "snapshot " + m_.snapshot_id + " of volume '" + m_.volume + "'";
  if (!staged()) return Status::InvalidArgument(what + " was not staged: nothing to publish");
  const std::string epoch = "epoch " + std::to_string(stage_epoch_) + " of group '" +
                            stage_group_ + "'";
  DP420_ASSIGN_OR_RETURN(GroupEpochState state,
                         GroupEpochStateOf(repo_, stage_group_, stage_epoch_));
  if (state == GroupEpochState::kOpen) {
    return Status::Busy(epoch + " is not committed yet: " + what + " stays staged");
  }
  if (state == GroupEpochState::kAborted) {
    return Status::InvalidArgument(epoch + " was aborted: " + what + " is not published");
  }
  DP420_ASSIGN_OR_RETURN(bool member, GroupCommittedWith(repo_, stage_group_, stage_epoch_,
                                                         SelfRecord()));
  if (!member) {
    return Status::InvalidArgument(epoch + " was committed without " + what);
  }
  auto published = PublishStaged(repo_, stage_group_, stage_epoch_, SelfRecord());
  const bool visible =
      published.ok() || io::ReadFile(repo_.SnapshotsDir(m_.volume) + "/" + m_.file_name).ok();
  if (visible) {
    committed_ = true;
    journal_.Commit();  // referenced now: never delete these packs
  }
  DP420_RETURN_IF_ERROR(published.status());
  RemoveStagingIfEmpty(repo_, stage_group_, stage_epoch_);
  return Status::Ok();
}

bool SnapshotBuilder::Unstage() {
  bool committed = false;
  // Cannot tell: the packs stay, the volume's next writer decides (BackupJournal).
  if (!UnstageManifest(repo_, stage_group_, stage_epoch_, SelfRecord(), &committed).ok()) {
    return false;
  }
  if (committed) {
    (void)Publish();
    return false;
  }
  stage_group_.clear();
  return true;
}

}  // namespace dp420
