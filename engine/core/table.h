// Block tables: a Merkle tree of 16 KiB pages (format.h). Leaves hold one
// Entry per block in volume order; inner pages hold one Entry per child page.
// Pages are content-addressed by SHA-256, so a page equal to the parent
// snapshot's page is not written again: an incremental writes only the pages
// on the paths to changed blocks.
//
// TableReader walks a snapshot's tree (sequential leaf access is cheap: one
// cached page per level) and checks every page against its SHA-256.
// TableBuilder assembles a tree bottom-up from leaf pages given in order.
//
// Thread safety: one thread per object.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "engine/core/format.h"
#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/core/relocate.h"
#include "engine/core/repo.h"

namespace dp420 {

// Number of entries in page `index` of `level` of a tree of `shape`.
uint32_t PageEntryCount(const TableShape& shape, uint32_t level, uint64_t index);

// Caches open packs by id (read side), and resolves references to repacked
// packs through their relocation files (relocate.h). One per thread. At most
// kMaxOpen packs stay open (the least recently used is closed first), so a
// repository of any number of packs fits under any open-file limit.
class PackCache {
 public:
  static constexpr size_t kMaxOpen = 64;
  explicit PackCache(const Repository& repo) : repo_(repo), relocator_(repo) {}
  // The pack file `pack_id` itself (no relocation). Valid until the next Get.
  Result<const PackReader*> Get(uint32_t pack_id);
  size_t open_packs() const { return packs_.size(); }
  // Where `ref`'s record is now (Relocator::Resolve).
  Status Resolve(ObjRef* ref) { return relocator_.Resolve(ref); }
  // Resolves `ref` and reads its object into `raw` (its raw length), decoding
  // it (record.h) and checking it against the reference. kCorruption names the
  // pack and offset.
  Status ReadObject(const ObjRef& ref, std::span<uint8_t> raw);
  // As ReadObject, for a reference already resolved (no relocation followed).
  Status ReadResolved(const ObjRef& ref, std::span<uint8_t> raw);

 private:
  const Repository& repo_;
  Relocator relocator_;
  std::unique_ptr<RecordCodec> codec_;  // made on first use
  std::vector<uint8_t> stored_;         // an encoded record's stored bytes
  struct Open {
    std::unique_ptr<PackReader> reader;
    uint64_t last_use = 0;
  };
  std::unordered_map<uint32_t, Open> packs_;
  uint64_t uses_ = 0;
};

class TableReader {
 public:
  TableReader(const Repository& repo, const Manifest& manifest);
  const TableShape& shape() const { return shape_; }
  // Entries of leaf page `page` (valid until the next call). kCorruption names
  // the pack and offset of a page that fails its SHA-256.
  Result<const Entry*> Leaf(uint64_t page, uint32_t* count);
  // The reference of page `index` at `level`.
  Result<ObjRef> PageRef(uint32_t level, uint64_t index);
  // Reads and checks any page given its reference and entry count.
  Status ReadPage(const ObjRef& ref, uint32_t count, std::vector<Entry>* out);
  // Where a reference's record is now (relocations followed).
  Status Resolve(ObjRef* ref) { return packs_.Resolve(ref); }

 private:
  Result<const std::vector<Entry>*> Page(uint32_t level, uint64_t index);
  PackCache packs_;
  TableShape shape_;
  ObjRef root_;
  struct Cached {
    bool valid = false;
    uint64_t index = 0;
    std::vector<Entry> entries;
  };
  std::vector<Cached> cache_;  // one per level
};

class TableBuilder {
 public:
  // Writes new pages through `write_page` (returns the page's ObjRef with
  // sha256 filled). `parent` (may be null) offers pages to reuse.
  using WritePage = std::function<Status(const uint8_t* bytes, uint32_t len, ObjRef* ref)>;
  TableBuilder(const TableShape& shape, TableReader* parent, WritePage write_page);

  // Adds the next leaf page (entries of blocks page*256 ...), in order.
  Status AddLeaf(const Entry* entries, uint32_t count);
  // After the last leaf: the root reference.
  Result<ObjRef> Finish();
  uint64_t pages_written() const { return pages_written_; }
  uint64_t pages_reused() const { return pages_reused_; }

 private:
  Status AddPage(uint32_t level, const Entry* entries, uint32_t count);
  TableShape shape_;
  TableReader* parent_;
  WritePage write_page_;
  std::vector<std::vector<Entry>> pending_;  // children waiting per level (index = level)
  std::vector<uint64_t> next_index_;         // next page index per level
  std::optional<ObjRef> root_;
  std::map<std::string, ObjRef> written_;    // this session's pages by SHA-256 (dedup)
  uint64_t pages_written_ = 0;
  uint64_t pages_reused_ = 0;
};

}  // namespace dp420
