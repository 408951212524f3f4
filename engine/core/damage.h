// What verify found damaged, kept for the backups that follow
// (REPO/damaged.json, docs/FORMAT.md "Damage found by verify"): the block
// references (pack, offset as a block table holds them, before any
// relocation) whose record could not be read or failed its SHA-256. A backup
// whose parent holds such a reference reads that block again from the source
// and stores it anew (blocks_healed), as it does for a lost pack, without
// re-reading the repository itself.
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
  std::set<uint64_t> records;  // (pack id << 32) | offset_4k, as the tables hold them
  static uint64_t Key(uint32_t pack_id, uint32_t offset_4k) {
    return uint64_t{pack_id} << 32 | offset_4k;
  }
  static uint64_t Key(const ObjRef& ref) { return Key(ref.pack_id, ref.offset_4k); }
  bool HoldsAt(uint32_t pack_id, uint32_t offset_4k) const {
    return !records.empty() && records.count(Key(pack_id, offset_4k));
  }
  bool Holds(const ObjRef& ref) const { return HoldsAt(ref.pack_id, ref.offset_4k); }
  bool empty() const { return records.empty(); }
};

// The repository's record (empty when there is none, or it cannot be read).
DamageRecord LoadDamage(const Repository& repo);

// Records what a verify found: with `replace` (every record of every
// snapshot was re-read) the findings replace the record's, else they are
// added. Removes the file when nothing is left.
Status SaveDamage(const Repository& repo, const DamageRecord& found, bool replace);

}  // namespace dp420
