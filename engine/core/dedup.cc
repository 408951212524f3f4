#include "engine/core/dedup.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>

#include <openssl/crypto.h>

#include "engine/core/pack.h"
#include "engine/core/relocate.h"
#include "engine/core/table.h"
#include "io/assert.h"
#include "io/inject.h"
#include "simd/simd.h"

namespace dp420 {

std::string DedupIndexPath(const Repository& repo) { return repo.path() + "/index/dedup.idx"; }

// ---- DedupKey ----

DedupKey::DedupKey(const Repository& repo) {
  uint8_t key[32];
  repo.DedupIndexKey(key);
  // HMAC-SHA-256 (RFC 2104) with the padded key blocks kept: a tag costs two
  // short SHA-256 runs, no context set up per call.
  std::memset(ipad_, 0x36, sizeof(ipad_));
  std::memset(opad_, 0x5c, sizeof(opad_));
  for (size_t i = 0; i < sizeof(key); ++i) {
    ipad_[i] ^= key[i];
    opad_[i] ^= key[i];
  }
  OPENSSL_cleanse(key, sizeof(key));
}

DedupKey::~DedupKey() {
  OPENSSL_cleanse(ipad_, sizeof(ipad_));
  OPENSSL_cleanse(opad_, sizeof(opad_));
}

void DedupKey::Hmac16(const uint8_t* msg, size_t len, uint8_t out[16]) const {
  uint8_t inner[64 + kMaxMessage];
  DP420_ASSERT(len <= kMaxMessage);
  std::memcpy(inner, ipad_, 64);
  std::memcpy(inner + 64, msg, len);
  uint8_t outer[64 + 32];
  std::memcpy(outer, opad_, 64);
  simd::Sha256(inner, 64 + len, outer + 64);
  uint8_t full[32];
  simd::Sha256(outer, sizeof(outer), full);
  std::memcpy(out, full, 16);
}

namespace {

uint64_t Home(const uint8_t tag[16], uint64_t buckets) {
  uint64_t v;
  std::memcpy(&v, tag, 8);
  return v % buckets;
}

bool Empty(const DedupSlot& s) { return s.pack_id == 0; }

}  // namespace

void DedupKey::Tag(const uint8_t sha256[32], uint8_t out[16]) const {
  uint8_t msg[4 + 32] = {'t', 'a', 'g', 0};
  std::memcpy(msg + 4, sha256, 32);
  Hmac16(msg, sizeof(msg), out);
}

void DedupKey::Mac(const uint8_t sha256[32], const DedupSlot& slot, uint8_t out[16]) const {
  // Binds the block's hash to the location and the trailer digest: a slot
  // copied to another tag, or with any byte of its location changed, fails.
  static_assert(offsetof(DedupSlot, mac) - offsetof(DedupSlot, pack_id) == 32);
  uint8_t msg[4 + 32 + 32] = {'m', 'a', 'c', 0};
  std::memcpy(msg + 4, sha256, 32);
  std::memcpy(msg + 36, reinterpret_cast<const uint8_t*>(&slot) + offsetof(DedupSlot, pack_id), 32);
  Hmac16(msg, sizeof(msg), out);
}

void DedupKey::Check(uint8_t out[16]) const {
  static constexpr uint8_t kMsg[] = {'c', 'h', 'e', 'c', 'k'};
  Hmac16(kMsg, sizeof(kMsg), out);
}

DedupSlot DedupKey::MakeSlot(const uint8_t sha256[32], const ObjRef& ref,
                             const uint8_t digest[16]) const {
  uint8_t tag[16];
  Tag(sha256, tag);
  return MakeSlot(tag, sha256, ref, digest);
}

DedupSlot DedupKey::MakeSlot(const uint8_t tag[16], const uint8_t sha256[32], const ObjRef& ref,
                             const uint8_t digest[16]) const {
  DedupSlot s{};
  std::memcpy(s.tag, tag, 16);
  s.pack_id = ref.pack_id;
  s.offset_4k = ref.offset_4k;
  s.stored_len = ref.stored_len;
  s.flags = ref.flags & kObjEncodingFlags;
  s.key_id = ref.key_id;
  std::memcpy(s.digest, digest, 16);
  Mac(sha256, s, s.mac);
  return s;
}

namespace {

// An index file: opened for writing under locks/.dedup.lock, or for reading.
class Table {
 public:
  static Result<Table> Create(const std::string& path, const Repository& repo,
                              const DedupKey& key, uint64_t buckets);
  static Result<Table> OpenExisting(const std::string& path, const Repository& repo,
                                    const DedupKey& key, bool write);
  // Inserts `slots`, a run at a time: the slots whose home buckets lie
  // within kRunBuckets of each other are placed with one read and one write of
  // the buckets they probe. The slots that find no free slot within
  // kDedupProbe buckets of their home go to `*left`.
  Status InsertAll(std::vector<DedupSlot> slots, std::vector<DedupSlot>* left);
  // Whether `more` slots would fill more than 3/4 of the table.
  bool TooFull(uint64_t more) const {
    return (entries_ + more) * 4 > buckets_ * kDedupSlotsPerBucket * 3;
  }
  Status ReadBucket(uint64_t b, DedupSlot* out) const { return ReadBuckets(b, 1, out); }
  Status ReadBuckets(uint64_t first, uint64_t count, DedupSlot* out) const {
    return file_.ReadAt(sizeof(DedupHeader) + first * kDedupBucketBytes, out,
                        count * kDedupBucketBytes);
  }
  Status WriteHeader();
  const std::string& path() const { return file_.path(); }
  uint64_t buckets() const { return buckets_; }
  uint64_t entries() const { return entries_; }
  io::File& file() { return file_; }

 private:
  Status InsertWrapped(std::vector<DedupSlot>* left);
  io::File file_;
  DedupHeader header_{};
  uint64_t buckets_ = 0;
  uint64_t entries_ = 0;
  std::vector<DedupSlot> wrapped_;  // InsertAll's slots whose probe wraps
};

Result<Table> Table::Create(const std::string& path, const Repository& repo,
                            const DedupKey& key, uint64_t buckets) {
  Table t;
  DP420_ASSIGN_OR_RETURN(t.file_, io::File::OpenWrite(path, O_RDWR | O_CREAT | O_TRUNC, false));
  DP420_RETURN_IF_ERROR(t.file_.Truncate(sizeof(DedupHeader) + buckets * kDedupBucketBytes));
  std::memcpy(t.header_.magic, kDedupMagic, 8);
  t.header_.version = kDedupVersion;
  std::memcpy(t.header_.repo_id, repo.repo_id(), 16);
  key.Check(t.header_.key_check);
  t.buckets_ = buckets;
  DP420_RETURN_IF_ERROR(t.WriteHeader());
  return t;
}

Result<Table> Table::OpenExisting(const std::string& path, const Repository& repo,
                                  const DedupKey& key, bool write) {
  Table t;
  if (write) {
    DP420_ASSIGN_OR_RETURN(t.file_, io::File::OpenWrite(path, O_RDWR, false));
  } else {
    DP420_ASSIGN_OR_RETURN(t.file_, io::File::OpenRead(path, false));
  }
  auto bad = [&](const std::string& why) { return Status::Corruption(path + ": " + why); };
  if (t.file_.info().size_bytes < sizeof(DedupHeader)) return bad("shorter than its header");
  DP420_RETURN_IF_ERROR(t.file_.ReadAt(0, &t.header_, sizeof(DedupHeader)));
  const DedupHeader& h = t.header_;
  uint8_t check[16];
  key.Check(check);
  if (std::memcmp(h.magic, kDedupMagic, 8) != 0) return bad("not a dedup index");
  if (simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 4092) != h.crc32c) {
    return bad("header CRC mismatch");
  }
  if (h.version != kDedupVersion) return bad("version " + std::to_string(h.version));
  if (std::memcmp(h.repo_id, repo.repo_id(), 16) != 0) return bad("another repository's");
  if (std::memcmp(h.key_check, check, 16) != 0) return bad("made with another key");
  if (h.buckets == 0 || h.buckets > (1ull << 40) ||
      t.file_.info().size_bytes != sizeof(DedupHeader) + h.buckets * kDedupBucketBytes) {
    return bad("size does not match its " + std::to_string(h.buckets) + " buckets");
  }
  t.buckets_ = h.buckets;
  t.entries_ = h.entries;
  return t;
}

Status Table::WriteHeader() {
  header_.buckets = buckets_;
  header_.entries = entries_;
  header_.crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&header_), 4092);
  return file_.WriteAt(0, &header_, sizeof(header_));
}

// Places `s` in the buckets [first, first + count) held in `pages` (probing
// from its home on, as a lookup reads them): false when it finds no room there.
bool Place(const DedupSlot& s, uint64_t home, uint64_t first, uint64_t count, DedupSlot* pages,
           uint64_t* entries) {
  for (uint64_t b = home; b < home + kDedupProbe && b < first + count; ++b) {
    for (DedupSlot* slot = pages + (b - first) * kDedupSlotsPerBucket;
         slot != pages + (b - first + 1) * kDedupSlotsPerBucket; ++slot) {
      const bool same = std::memcmp(slot->tag, s.tag, 16) == 0;
      if (!Empty(*slot) && !same) continue;
      if (Empty(*slot)) ++*entries;
      *slot = s;  // the same tag: the newer location replaces a stale one
      return true;
    }
  }
  return false;
}

// Slots whose homes lie within this many buckets of the run's first go in one
// read and one write (256 KiB, with the probe's spill).
constexpr uint64_t kRunBuckets = 64;

Status Table::InsertAll(std::vector<DedupSlot> slots, std::vector<DedupSlot>* left) {
  std::sort(slots.begin(), slots.end(), [&](const DedupSlot& a, const DedupSlot& b) {
    return Home(a.tag, buckets_) < Home(b.tag, buckets_);
  });
  std::vector<DedupSlot> pages((kRunBuckets + kDedupProbe) * kDedupSlotsPerBucket);
  for (size_t i = 0; i < slots.size();) {
    const uint64_t first = Home(slots[i].tag, buckets_);
    size_t end = i;
    while (end < slots.size() && Home(slots[end].tag, buckets_) < first + kRunBuckets) ++end;
    const uint64_t last = Home(slots[end - 1].tag, buckets_);
    // The probe wraps past the last bucket: those slots read the front too.
    const uint64_t count = std::min(last + kDedupProbe, buckets_) - first;
    DP420_RETURN_IF_ERROR(ReadBuckets(first, count, pages.data()));
    for (; i < end; ++i) {
      const uint64_t home = Home(slots[i].tag, buckets_);
      if (!Place(slots[i], home, first, count, pages.data(), &entries_)) {
        if (home + kDedupProbe <= buckets_) {
          left->push_back(slots[i]);
        } else {
          wrapped_.push_back(slots[i]);
        }
      }
    }
    DP420_RETURN_IF_ERROR(file_.WriteAt(sizeof(DedupHeader) + first * kDedupBucketBytes,
                                        pages.data(), count * kDedupBucketBytes));
  }
  return InsertWrapped(left);
}

// The slots near the end whose probe wraps to the first buckets: the last
// and the first kDedupProbe buckets, as one ring.
Status Table::InsertWrapped(std::vector<DedupSlot>* left) {
  if (wrapped_.empty()) return Status::Ok();
  const uint64_t tail = std::min<uint64_t>(kDedupProbe, buckets_);
  const uint64_t head = std::min<uint64_t>(kDedupProbe, buckets_ - tail);
  std::vector<DedupSlot> ring((tail + head) * kDedupSlotsPerBucket);
  DP420_RETURN_IF_ERROR(ReadBuckets(buckets_ - tail, tail, ring.data()));
  DP420_RETURN_IF_ERROR(ReadBuckets(0, head, ring.data() + tail * kDedupSlotsPerBucket));
  for (const DedupSlot& s : wrapped_) {
    // Ring bucket k is table bucket (buckets_ - tail + k) % buckets_.
    const uint64_t home = Home(s.tag, buckets_) - (buckets_ - tail);
    if (!Place(s, home, 0, tail + head, ring.data(), &entries_)) left->push_back(s);
  }
  wrapped_.clear();
  DP420_RETURN_IF_ERROR(file_.WriteAt(sizeof(DedupHeader) + (buckets_ - tail) * kDedupBucketBytes,
                                      ring.data(), tail * kDedupBucketBytes));
  return file_.WriteAt(sizeof(DedupHeader), ring.data() + tail * kDedupSlotsPerBucket,
                       head * kDedupBucketBytes);
}

std::string TempPath(const Repository& repo, unsigned n) {
  return DedupIndexPath(repo) + ".tmp." + std::to_string(n);
}

// Builds tables under temp names and renames the last into place.
class Writer {
 public:
  Writer(const Repository& repo, const DedupKey& key) : repo_(repo), key_(key) {}
  Status Start(bool rebuild);
  // Inserts `s` (with the others put, kBatch at a time), growing the table
  // when it is too full.
  Status Put(const DedupSlot& s);
  Status Finish();

 private:
  static constexpr size_t kBatch = 65536;  // 4 MiB of slots
  Status Flush();
  Status Grow();
  std::vector<DedupSlot> batch_;
  const Repository& repo_;
  const DedupKey& key_;
  Table table_;
  std::vector<uint32_t> present_;
  unsigned temps_ = 0;
};

Status Writer::Start(bool rebuild) {
  DP420_RETURN_IF_ERROR(io::MakeDirs(repo_.path() + "/index"));
  for (const std::string& name : io::ListDir(repo_.path() + "/index")) {
    if (name.rfind("dedup.idx.tmp.", 0) == 0) {
      io::sys::Unlink((repo_.path() + "/index/" + name).c_str());
    }
  }
  if (!rebuild) {
    auto t = Table::OpenExisting(DedupIndexPath(repo_), repo_, key_, true);
    if (t.ok()) {
      table_ = std::move(t).value();
      return Status::Ok();
    }
    if (!IsDamage(t.status()) && t.status().code() != Code::kNotFound) return t.status();
    // Missing or damaged: a table of this backup's slots alone would hide
    // every other block from later backups; the next open rebuilds it whole.
    return Status::NotFound(DedupIndexPath(repo_) + ": " + t.status().message());
  }
  DP420_ASSIGN_OR_RETURN(table_, Table::Create(TempPath(repo_, temps_++), repo_, key_,
                                               kDedupMinBuckets));
  return Status::Ok();
}

// A table twice as large holding the slots of the current one whose pack can
// still be read from: a pack file, or a pack prune repacked, whose slots a
// lookup follows through its relocation file (the stale ones of deleted packs go).
Status Writer::Grow() {
  if (present_.empty()) present_ = ListReadablePackIds(repo_);
  DP420_ASSIGN_OR_RETURN(Table bigger, Table::Create(TempPath(repo_, temps_++), repo_, key_,
                                                     table_.buckets() * 2 + 1));
  // The old table is read 64 buckets (256 KiB) at a time, in order.
  constexpr uint64_t kRun = 64;
  std::vector<DedupSlot> run(kRun * kDedupSlotsPerBucket);
  std::vector<DedupSlot> live, dropped;  // a slot that finds no room is dropped
  for (uint64_t b = 0; b < table_.buckets(); b += kRun) {
    const uint64_t n = std::min(kRun, table_.buckets() - b);
    DP420_RETURN_IF_ERROR(table_.ReadBuckets(b, n, run.data()));
    for (uint64_t i = 0; i < n * kDedupSlotsPerBucket; ++i) {
      const DedupSlot& s = run[i];
      if (!Empty(s) && std::binary_search(present_.begin(), present_.end(), s.pack_id)) {
        live.push_back(s);
      }
    }
    if (live.size() >= kBatch) {
      DP420_RETURN_IF_ERROR(bigger.InsertAll(std::move(live), &dropped));
      live.clear();
    }
  }
  DP420_RETURN_IF_ERROR(bigger.InsertAll(std::move(live), &dropped));
  if (table_.path() != DedupIndexPath(repo_)) io::sys::Unlink(table_.path().c_str());
  table_ = std::move(bigger);
  return Status::Ok();
}

Status Writer::Put(const DedupSlot& s) {
  batch_.push_back(s);
  return batch_.size() >= kBatch ? Flush() : Status::Ok();
}

Status Writer::Flush() {
  while (table_.TooFull(batch_.size())) DP420_RETURN_IF_ERROR(Grow());
  std::vector<DedupSlot> left;
  DP420_RETURN_IF_ERROR(table_.InsertAll(std::move(batch_), &left));
  batch_.clear();
  if (left.empty()) return Status::Ok();
  // Some found no room within their probe: once more in a table twice as large;
  // no room even then: dropped (a lost dedup, no more).
  DP420_RETURN_IF_ERROR(Grow());
  std::vector<DedupSlot> dropped;
  return table_.InsertAll(std::move(left), &dropped);
}

Status Writer::Finish() {
  DP420_RETURN_IF_ERROR(Flush());
  DP420_RETURN_IF_ERROR(table_.WriteHeader());
  if (table_.path() == DedupIndexPath(repo_)) return Status::Ok();
  // A cache: no fsync. A crash leaves an old, a torn or no index; each slot
  // is checked before use and a damaged header makes the next open rebuild.
  if (io::sys::Rename(table_.path().c_str(), DedupIndexPath(repo_).c_str()) != 0) {
    return PosixError(table_.path() + ": rename", errno);
  }
  return Status::Ok();
}

}  // namespace

// ---- DedupIndex ----

Result<std::unique_ptr<DedupIndex>> DedupIndex::Open(const Repository& repo) {
  std::unique_ptr<DedupIndex> index(new DedupIndex(repo));
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto t = Table::OpenExisting(DedupIndexPath(repo), repo, index->key_, false);
    if (t.ok()) {
      index->buckets_ = t->buckets();
      index->entries_ = t->entries();
      index->file_ = std::move(t->file());
      return index;
    }
    if (!IsDamage(t.status()) && t.status().code() != Code::kNotFound) return t.status();
    if (attempt == 0) DP420_RETURN_IF_ERROR(RebuildDedupIndex(repo));
  }
  return Status::Corruption(DedupIndexPath(repo) + ": does not read after a rebuild");
}

std::optional<DedupSlot> DedupIndex::Find(const uint8_t sha256[32], uint8_t tag[16]) const {
  key_.Tag(sha256, tag);
  if (entries_ == 0) return std::nullopt;  // a first backup: nothing to read
  DedupSlot page[kDedupSlotsPerBucket];
  const uint64_t home = Home(tag, buckets_);
  for (uint32_t i = 0; i < kDedupProbe && i < buckets_; ++i) {
    const uint64_t b = (home + i) % buckets_;
    if (!file_.ReadAt(sizeof(DedupHeader) + b * kDedupBucketBytes, page, sizeof(page)).ok()) {
      return std::nullopt;
    }
    for (const DedupSlot& s : page) {
      if (Empty(s)) return std::nullopt;  // inserts fill a probe sequence in order
      if (std::memcmp(s.tag, tag, 16) != 0) continue;
      uint8_t mac[16];
      key_.Mac(sha256, s, mac);
      if (CRYPTO_memcmp(mac, s.mac, 16) != 0) return std::nullopt;
      return s;
    }
  }
  return std::nullopt;
}

// ---- RecordCheck ----

RecordCheck::Trailer RecordCheck::Load(uint32_t pack_id) {
  if (!std::binary_search(committed_.begin(), committed_.end(), pack_id)) return nullptr;
  auto reader = PackReader::Open(repo_.PackPath(pack_id), pack_id);
  if (!reader.ok()) return nullptr;
  auto index = reader->ReadIndex();
  if (!index.ok()) return nullptr;
  std::vector<ObjRef> refs = std::move(index).value();
  // Writers append records in offset order, and their trailers list them so.
  auto by_offset = [](const ObjRef& a, const ObjRef& b) { return a.offset_4k < b.offset_4k; };
  if (!std::is_sorted(refs.begin(), refs.end(), by_offset)) {
    std::sort(refs.begin(), refs.end(), by_offset);
  }
  return std::make_shared<const std::vector<ObjRef>>(std::move(refs));
}

std::optional<RecordCheck::Trailer> RecordCheck::Cached(uint32_t pack_id) {
  std::lock_guard lock(mu_);
  auto it = map_.find(pack_id);
  if (it == map_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

RecordCheck::Trailer RecordCheck::Remember(uint32_t pack_id, Trailer trailer) {
  std::lock_guard lock(mu_);
  if (auto it = map_.find(pack_id); it != map_.end()) return it->second->second;
  lru_.emplace_front(pack_id, trailer);
  map_[pack_id] = lru_.begin();
  bytes_ += trailer ? trailer->size() * sizeof(ObjRef) : 0;
  while (bytes_ > kTrailerCacheBytes && lru_.size() > 1) {
    auto& [id, t] = lru_.back();
    bytes_ -= t ? t->size() * sizeof(ObjRef) : 0;
    map_.erase(id);
    lru_.pop_back();
  }
  return trailer;
}

std::optional<ObjRef> RecordCheck::TrailerEntry(uint32_t pack_id, uint32_t offset_4k) {
  std::optional<Trailer> cached = Cached(pack_id);
  // Read outside the lock: the other workers go on meanwhile. Two that miss
  // the same pack at once read it twice; the first one cached is kept.
  const Trailer trailer = cached ? *cached : Remember(pack_id, Load(pack_id));
  if (!trailer) return std::nullopt;
  auto it = std::lower_bound(trailer->begin(), trailer->end(), offset_4k,
                             [](const ObjRef& r, uint32_t off) { return r.offset_4k < off; });
  if (it == trailer->end() || it->offset_4k != offset_4k) return std::nullopt;
  return *it;
}

namespace {

// Whether the trailer entry `t` is the record of that length, encoding and key.
bool SameRecord(const ObjRef& t, uint32_t stored_len, uint16_t flags, uint16_t key_id) {
  return t.stored_len == stored_len && t.flags == flags && t.key_id == key_id;
}

}  // namespace

std::optional<ObjRef> RecordCheck::Find(const DedupSlot& slot) {
  ObjRef ref{};
  ref.pack_id = slot.pack_id;
  ref.offset_4k = slot.offset_4k;
  ref.stored_len = slot.stored_len;
  ref.flags = slot.flags;
  ref.key_id = slot.key_id;
  if (!std::binary_search(committed_.begin(), committed_.end(), ref.pack_id)) {
    // Repacked by prune: its copy, byte for byte (the same stored digest),
    // is where the relocation file says; the new entry names the copy.
    std::lock_guard lock(mu_);
    if (!relocator_.Resolve(&ref).ok() || ref.pack_id == slot.pack_id) return std::nullopt;
  }
  std::optional<ObjRef> t = TrailerEntry(ref.pack_id, ref.offset_4k);
  // The slot's flags are encoding flags alone (its MAC held), so the trailer's are too.
  if (!t || !SameRecord(*t, slot.stored_len, slot.flags, slot.key_id) ||
      std::memcmp(t->sha256, slot.digest, 16) != 0) {
    return std::nullopt;
  }
  return ref;
}

bool RecordCheck::Digest(const ObjRef& ref, uint8_t out[16]) {
  std::optional<ObjRef> t = TrailerEntry(ref.pack_id, ref.offset_4k);
  if (!t || !SameRecord(*t, ref.stored_len, ref.flags & kObjEncodingFlags, ref.key_id)) {
    return false;
  }
  std::memcpy(out, t->sha256, 16);
  return true;
}

Result<std::vector<uint32_t>> CommittedPackIds(const Repository& repo) {
  std::vector<uint32_t> packs = repo.ListPackIds();
  // After the listing, as prune reads them: a pack of a backup not committed
  // then is named by its journal now, or its manifest was renamed meanwhile.
  DP420_ASSIGN_OR_RETURN(std::vector<uint32_t> journalled, JournalledPackIds(repo));
  std::erase_if(packs, [&](uint32_t id) {
    return std::binary_search(journalled.begin(), journalled.end(), id);
  });
  return packs;
}

// ---- writing ----

Status AddToDedupIndex(const Repository& repo, const std::string& slots_path) {
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockDedupIndex());
  DedupKey key(repo);
  Writer w(repo, key);
  Status started = w.Start(false);
  if (started.code() == Code::kNotFound) return Status::Ok();  // rebuilt at the next open
  DP420_RETURN_IF_ERROR(started);
  DP420_ASSIGN_OR_RETURN(io::File in, io::File::OpenRead(slots_path, false));
  std::vector<DedupSlot> buf(4096);
  const uint64_t count = in.info().size_bytes / sizeof(DedupSlot);
  for (uint64_t done = 0; done < count;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), count - done));
    DP420_RETURN_IF_ERROR(in.ReadAt(done * sizeof(DedupSlot), buf.data(), n * sizeof(DedupSlot)));
    for (size_t i = 0; i < n; ++i) DP420_RETURN_IF_ERROR(w.Put(buf[i]));  // batched by Writer
    done += n;
  }
  return w.Finish();
}

namespace {

// Inserts the data records of `m`'s table (resolved through relocations),
// each with its trailer digest.
Status AddSnapshot(const Repository& repo, const Manifest& m, const DedupKey& key,
                   RecordCheck& check, Writer& w) {
  TableReader reader(repo, m);
  const uint64_t pages = m.blocks_total ? reader.shape().PagesAt(0) : 0;
  for (uint64_t p = 0; p < pages; ++p) {
    uint32_t count = 0;
    DP420_ASSIGN_OR_RETURN(const Entry* entries, reader.Leaf(p, &count));
    for (const Entry& e : std::span<const Entry>(entries, count)) {
      ObjRef ref = e.ref;
      if (!ref.stored() || (ref.flags & ~kObjEncodingFlags) != 0) continue;
      if (!reader.Resolve(&ref).ok()) continue;
      uint8_t digest[16];
      if (!check.Digest(ref, digest)) continue;
      // The slot names the reference as the table holds it (a lookup follows
      // relocations as the table's readers do), so that verify's damage
      // record, kept under that reference, applies to it.
      DP420_RETURN_IF_ERROR(w.Put(key.MakeSlot(e.ref.sha256, e.ref, digest)));
    }
  }
  return Status::Ok();
}

}  // namespace

Status RebuildDedupIndex(const Repository& repo) {
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockDedupIndex());
  DedupKey key(repo);
  // Another backup may have rebuilt it while this one waited for the lock.
  if (Table::OpenExisting(DedupIndexPath(repo), repo, key, false).ok()) return Status::Ok();
  Writer w(repo, key);
  DP420_RETURN_IF_ERROR(w.Start(true));
  DP420_ASSIGN_OR_RETURN(std::vector<uint32_t> committed, CommittedPackIds(repo));
  RecordCheck check(repo, std::move(committed));
  for (const std::string& volume : repo.ListVolumes()) {
    auto m = repo.FindSnapshot(volume, "latest");
    if (!m.ok()) continue;  // a volume whose history does not read: its blocks are not offered
    Status s = AddSnapshot(repo, *m, key, check, w);
    if (!s.ok() && !IsDamage(s)) return s;  // a damaged table: what was read is offered
  }
  return w.Finish();
}

}  // namespace dp420
