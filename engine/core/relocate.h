// Relocations: where the records of a repacked pack live now.
//
// Manifests and table pages are immutable and sealed, so when prune copies
// the live records of pack X into new packs it cannot rewrite the references
// to X. It writes relocated/XXXXXXXX instead (docs/FORMAT.md, "Relocation
// files"): X's old record offsets mapped to their new pack and offset. A
// reader whose pack file is gone follows that file (chains X -> X' -> X''
// allowed, at most kMaxRelocationDepth hops, so a cycle cannot loop). The
// record's SHA-256 in the reference is still checked on every read, so a
// damaged or forged relocation can only make a read fail, never return
// other bytes.
//
// Thread safety: the free functions are re-entrant; a Relocator belongs to
// one thread (it caches what it looked up).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/core/format.h"
#include "io/status.h"

namespace dp420 {

class Repository;

inline constexpr char kRelocationMagic[8] = {'D', 'P', '4', '2', '0', 'R', 'L', '\0'};
inline constexpr uint32_t kRelocationVersion = 1;
inline constexpr int kMaxRelocationDepth = 16;

struct RelocationEntry {
  uint32_t old_offset_4k;
  uint32_t new_pack_id;
  uint32_t new_offset_4k;
};
static_assert(sizeof(RelocationEntry) == 12);

struct Relocation {
  uint32_t pack_id = 0;                 // the old pack
  std::vector<RelocationEntry> entries;  // sorted by old_offset_4k, unique
  // The entry of `old_offset_4k`, or null.
  const RelocationEntry* Find(uint32_t old_offset_4k) const;
};

// "relocated/1a2b3c4d" (relative) and its absolute path.
std::string RelocationName(uint32_t pack_id);
std::string RelocationPath(const Repository& repo, uint32_t pack_id);
// The file's bytes: 24-byte header, entries, CRC-32C of everything before it.
std::string EncodeRelocation(const Relocation& r);
// kCorruption naming `what` when the bytes are not a valid relocation of
// `expected_pack`.
Result<Relocation> DecodeRelocation(const std::string& bytes, uint32_t expected_pack,
                                    const std::string& what);
// kNotFound when the file does not exist.
Result<Relocation> ReadRelocation(const Repository& repo, uint32_t pack_id);
// Atomically and durably (temp file, fsync, rename, folder fsync).
Status WriteRelocation(const Repository& repo, const Relocation& r);
// The old pack ids that have a relocation file, sorted.
std::vector<uint32_t> ListRelocations(const Repository& repo);

// The packs a reference may name and be read from: the pack files and the
// old packs with a relocation file, sorted (a backup takes a parent's entry
// as unchanged only when its pack is one of these).
std::vector<uint32_t> ListReadablePackIds(const Repository& repo);

class Relocator {
 public:
  // `prefer_relocation`: follow a relocation file that holds the offset even
  // while the old pack still exists (prune: a repack whose delete phase was
  // interrupted). Readers use the pack while it exists.
  explicit Relocator(const Repository& repo, bool prefer_relocation = false)
      : repo_(repo), prefer_(prefer_relocation) {}
  // Rewrites ref->pack_id/offset_4k to where the record is now. A reference
  // whose pack is missing and has no relocation file is left as it is (the
  // caller reports the missing pack). kCorruption when a relocation file is
  // damaged, lacks the offset, or the chain is too long.
  Status Resolve(ObjRef* ref);
  // The old packs whose relocation file a resolution consulted: prune's
  // mark keeps exactly these relocation files.
  const std::set<uint32_t>& used() const { return used_; }

 private:
  bool PackExists(uint32_t pack_id);
  Result<const Relocation*> Load(uint32_t pack_id);  // null when there is none
  const Repository& repo_;
  bool prefer_ = false;
  std::set<uint32_t> used_;
  std::unordered_map<uint32_t, bool> exists_;
  std::unordered_map<uint32_t, std::unique_ptr<Relocation>> files_;  // null: none
};

}  // namespace dp420
