// The dedup index: where a block with a given SHA-256 is stored already, for
// every volume of the repository (docs/FORMAT.md "Dedup index",
// docs/ARCHITECTURE.md "Deduplication across volumes").
//
// Block ids are keyed per volume and cannot be compared across volumes; the
// SHA-256 of a block's raw bytes can. REPO/index/dedup.idx maps a keyed hash
// of that SHA-256 (the tag) to a record location. It is a cache: nothing in
// it is trusted for correctness. A slot is used only when its MAC (keyed
// with a key derived from the repository's keys, bound to the SHA-256 and
// the location) holds and the location still holds that very record (the
// pack is committed, its trailer has a record at that offset with that
// length, flags, key and stored digest). A missing or damaged index is
// rebuilt from the newest snapshot of every volume; a lost or edited slot
// loses a dedup opportunity, never a block.
//
// On disk it is an open-addressed hash table of 4 KiB buckets of 64 slots:
// a lookup is one pread (page cache, not process memory), so memory stays
// bounded whatever the repository's size. Slots are added only after a
// backup's manifest is committed, under locks/.dedup.lock; a table too full
// is rebuilt doubled.
//
// Thread safety: DedupIndex::Find and MakeSlot, and RecordCheck::Find, may be
// called from any thread; the free functions take locks/.dedup.lock.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/core/format.h"
#include "engine/core/relocate.h"
#include "engine/core/repo.h"
#include "io/file.h"
#include "io/status.h"

namespace dp420 {

inline constexpr char kDedupMagic[8] = {'D', 'P', '4', '2', '0', 'D', 'X', '\0'};
inline constexpr uint32_t kDedupVersion = 1;
inline constexpr uint32_t kDedupBucketBytes = 4096;
inline constexpr uint32_t kDedupSlotsPerBucket = 64;
// Buckets a lookup or an insert probes from the tag's home bucket on.
inline constexpr uint32_t kDedupProbe = 8;
// A new table's buckets (1 MiB); doubled when more than 3/4 of its slots
// would be used, or when an insert finds no free slot within kDedupProbe buckets.
inline constexpr uint64_t kDedupMinBuckets = 255;

// The index file's first 4 KiB.
struct DedupHeader {
  char magic[8];          // "DP420DX\0"
  uint32_t version;       // kDedupVersion
  uint32_t reserved0;
  uint8_t repo_id[16];
  uint64_t buckets;       // bucket pages after this header
  uint64_t entries;       // slots in use (what decides growing)
  uint8_t key_check[16];  // HMAC-SHA-256(dedup key, "check"), first 16 bytes
  uint8_t reserved[4028];
  uint32_t crc32c;        // CRC-32C of the preceding 4092 bytes
};
static_assert(sizeof(DedupHeader) == 4096);

// One slot. 64 bytes; pack_id == 0: empty.
struct DedupSlot {
  uint8_t tag[16];       // HMAC-SHA-256(dedup key, "tag" || SHA-256 of the raw block)[0, 16)
  uint32_t pack_id;      // the record's location, as in ObjRef
  uint32_t offset_4k;
  uint32_t stored_len;
  uint16_t flags;        // the record's encoding flags (ObjFlags)
  uint16_t key_id;
  uint8_t digest[16];    // the first 16 bytes of the record's trailer digest
  uint8_t mac[16];       // HMAC-SHA-256(dedup key, "mac" || SHA-256 || bytes 16..48)[0, 16)
};
static_assert(sizeof(DedupSlot) == 64);
static_assert(kDedupSlotsPerBucket * sizeof(DedupSlot) == kDedupBucketBytes);

// "REPO/index/dedup.idx".
std::string DedupIndexPath(const Repository& repo);

// Computes tags and MACs (a key derived from the repository's keys).
class DedupKey {
 public:
  explicit DedupKey(const Repository& repo);
  ~DedupKey();
  void Tag(const uint8_t sha256[32], uint8_t out[16]) const;
  void Mac(const uint8_t sha256[32], const DedupSlot& slot, uint8_t out[16]) const;
  void Check(uint8_t out[16]) const;
  // A slot for the record `ref` of a block whose raw SHA-256 is `sha256`;
  // `digest`: the first 16 bytes of the record's trailer digest. With `tag`,
  // the block's tag computed already (DedupIndex::Find gives it).
  DedupSlot MakeSlot(const uint8_t sha256[32], const ObjRef& ref, const uint8_t digest[16]) const;
  DedupSlot MakeSlot(const uint8_t tag[16], const uint8_t sha256[32], const ObjRef& ref,
                     const uint8_t digest[16]) const;

 private:
  static constexpr size_t kMaxMessage = 4 + 32 + 32;
  void Hmac16(const uint8_t* msg, size_t len, uint8_t out[16]) const;
  uint8_t ipad_[64];  // the key XOR 0x36, zero-padded to SHA-256's block
  uint8_t opad_[64];  // ... XOR 0x5c
};

// The index, opened for lookups.
class DedupIndex {
 public:
  // Opens the index; rebuilds it first when it is missing or damaged (or
  // made with another key). Errors only when the file system refuses.
  static Result<std::unique_ptr<DedupIndex>> Open(const Repository& repo);
  // The slot of the block whose raw SHA-256 is `sha256` whose MAC holds, if
  // any (a read error is a miss); `tag` receives the block's tag either way.
  // An index that held no slot when opened is not read. Thread-safe.
  std::optional<DedupSlot> Find(const uint8_t sha256[32], uint8_t tag[16]) const;
  const DedupKey& key() const { return key_; }

 private:
  explicit DedupIndex(const Repository& repo) : key_(repo) {}
  DedupKey key_;
  io::File file_;
  uint64_t buckets_ = 0;
  uint64_t entries_ = 0;  // when opened
};

// Checks a slot's location against the pack's trailer, for packs that were
// committed when the backup began (`committed`, sorted: no backup in
// progress can roll them back). Caches trailers up to kTrailerCacheBytes.
class RecordCheck {
 public:
  static constexpr uint64_t kTrailerCacheBytes = 32ull << 20;
  RecordCheck(const Repository& repo, std::vector<uint32_t> committed)
      : repo_(repo), committed_(std::move(committed)), relocator_(repo) {}
  // The reference of the slot's record when its pack (or, for a pack prune
  // repacked, the pack its relocation file names) is committed and its
  // trailer holds a record at that offset with the same stored length,
  // encoding flags, key id and digest; else nullopt. Thread-safe.
  std::optional<ObjRef> Find(const DedupSlot& slot);
  // The first 16 bytes of the trailer digest of the record `ref` names (a
  // resolved data reference), when its pack is committed and its trailer
  // agrees on length, flags and key; false otherwise.
  bool Digest(const ObjRef& ref, uint8_t out[16]);

 private:
  using Trailer = std::shared_ptr<const std::vector<ObjRef>>;  // sorted by offset
  std::optional<ObjRef> TrailerEntry(uint32_t pack_id, uint32_t offset_4k);
  // The cached trailer of `pack_id` (null: unreadable), or nullopt when none is.
  std::optional<Trailer> Cached(uint32_t pack_id);
  // Caches `trailer` unless another thread did first; returns the cached one.
  Trailer Remember(uint32_t pack_id, Trailer trailer);
  Trailer Load(uint32_t pack_id);  // no lock held
  const Repository& repo_;
  std::vector<uint32_t> committed_;
  std::mutex mu_;
  Relocator relocator_;  // under mu_
  std::list<std::pair<uint32_t, Trailer>> lru_;  // front: most recent; null: unreadable
  std::unordered_map<uint32_t, std::list<std::pair<uint32_t, Trailer>>::iterator> map_;
  uint64_t bytes_ = 0;
};

// The packs of packs/ that no backup's journal names (listed in that order, as
// prune does): committed, so never rolled back. Sorted. Errors: a journal
// that does not read (JournalledPackIds).
Result<std::vector<uint32_t>> CommittedPackIds(const Repository& repo);

// Adds the slots in the file `slots_path` (DedupSlot after DedupSlot) to the
// index, under locks/.dedup.lock; creates or grows the table as needed.
Status AddToDedupIndex(const Repository& repo, const std::string& slots_path);

// Writes a new index from the newest snapshot of every volume (DedupIndex::Open,
// when the index is missing or damaged), unless the index opens once the lock
// is held (another process rebuilt it meanwhile).
Status RebuildDedupIndex(const Repository& repo);

}  // namespace dp420
