// Chain links and protect markers: the files beside a volume's manifests
// that let snapshots be forgotten without breaking the snapshot hash chain.
//
// A snapshot K whose parent was forgotten keeps its place in the chain
// through its link, snapshots/VOLUME/SEQ-ID.link (sealed like a manifest):
// "the parent K names (by id and seal) descends, through N forgotten
// snapshots, from the kept snapshot A (id, sequence, seal), or from nothing
// when every older snapshot was forgotten". Only a holder of the repository
// key can write a link that reads back, so a link proves what the forgotten
// manifests proved, and the chain reads K -> A. A link also marks the
// sequences strictly between A's and K's as forgotten: a manifest left there
// by a forget that was killed before it deleted it is not part of the
// history any more (forget deletes it next time).
//
// A protect marker, snapshots/VOLUME/SEQ-ID.protected, keeps a snapshot
// from every retention policy. Its existence is what protects (it holds
// only who and when, for people): a marker planted by someone who can write
// the repository's files only keeps data longer.
//
// Thread safety: pure functions over files; writers hold the volume's lock.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/manifest.h"
#include "io/status.h"

namespace dp420 {

class Repository;
struct DamagedFile;

struct ChainLink {
  std::string volume;
  std::string snapshot_id;      // K, the kept snapshot this link belongs to
  uint64_t sequence = 0;        // K's sequence
  std::string parent;           // K's parent, as K's manifest names it
  std::string parent_seal;      // K's parent_manifest_sha256
  std::string ancestor;         // A: the nearest kept ancestor; "" = none
  uint64_t ancestor_sequence = 0;  // 0 when there is none
  std::string ancestor_seal;
  uint64_t forgotten = 0;       // snapshots between A and K
  std::string updated;          // RFC 3339

  // True when `sequence` lies strictly between the ancestor's and K's.
  bool Covers(uint64_t s) const { return s > ancestor_sequence && s < sequence; }
};

// "SEQ-ID.link" and "SEQ-ID.protected": the same stem as the manifest.
std::string LinkFileName(uint64_t sequence, const std::string& id);
std::string ProtectFileName(uint64_t sequence, const std::string& id);

// A link file's sealed text; kCorruption naming `what` when the seal, the
// fields or the repository are wrong.
std::string SealLink(const Repository& repo, const ChainLink& link);
Result<ChainLink> ParseLink(const Repository& repo, const std::string& volume,
                            const std::string& text, const std::string& what);

// What ApplyLinks found besides the history.
struct LinkScan {
  std::vector<ChainLink> links;      // the valid ones
  std::vector<std::string> leftovers;  // files (relative) a killed forget left to delete
};

// Applies `volume`'s links and markers to the manifests just listed from its
// folder: drops manifests (and damaged files) in forgotten ranges, points a
// linked snapshot's chain_parent at its ancestor, sets is_protected. A link
// that cannot be read, or does not belong to its snapshot, goes to `damaged`
// (or fails the call when `damaged` is null).
Status ApplyLinks(const Repository& repo, const std::string& volume,
                  std::vector<Manifest>* manifests, std::vector<DamagedFile>* damaged,
                  LinkScan* scan);

}  // namespace dp420
