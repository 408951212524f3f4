// What verify found damaged, kept for the backups that follow
// (REPO/damaged.json, docs/FORMAT.md "Damage found by verify"): data packs
// that could not be read and records whose bytes failed their SHA-256. A
// backup whose parent references such a record reads that block again from
// the source and stores it anew (blocks_healed), as it does for a lost pack,
// without re-reading the repository itself.
//
// The file can only make a backup store more: one planted or edited by
// someone who can write the repository's files cannot make a backup skip a
// block, so it is plain JSON, not sealed.
//
// Thread safety: writers serialize on locks/damaged.lock; readers need no lock.
#pragma once

#include <cstdint>
#include <set>

#include "engine/core/format.h"
#include "io/status.h"

namespace dp420 {

class Repository;

struct DamageRecord {
  std::set<uint32_t> packs;    // data packs that could not be read
  std::set<uint64_t> records;  // (pack id << 32) | offset_4k of records failing their digest
  bool Holds(const ObjRef& ref) const {
    return packs.count(ref.pack_id) ||
           records.count(uint64_t{ref.pack_id} << 32 | ref.offset_4k);
  }
  bool empty() const { return packs.empty() && records.empty(); }
};

// The repository's record (empty when there is none, or it cannot be read).
DamageRecord LoadDamage(const Repository& repo);

// Records what a verify found. `whole_packs`: every pack was checked, so
// the packs found replace the record's; `whole_records`: every record was
// re-read too, so the records found replace the record's. Otherwise the
// findings are added. Removes the file when nothing is left.
Status SaveDamage(const Repository& repo, const DamageRecord& found, bool whole_packs,
                  bool whole_records);

}  // namespace dp420
