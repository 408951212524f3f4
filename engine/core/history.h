// The history of a volume: which snapshot is its newest, and proof that no
// one rolled it back or forked it.
//
// Every volume has a head (snapshots/VOLUME/HEAD, sealed with the repository
// key): a generation counter raised by every change of the volume's history,
// and the newest snapshot's sequence, id and seal. A backup writes its
// manifest, then the head. "latest" is the head's snapshot, or the chain of
// manifests that descends from it when a crash came between the two writes:
// never the file name that sorts last.
//
// What the head cannot see — the whole snapshots/ folder put back as it was
// yesterday, head included — the anchor sees: every process that reads a
// volume keeps the highest head it has seen in its state folder
// ($DP420_STATE_DIR, else $XDG_STATE_HOME/dp420, else ~/.local/state/dp420),
// at repos/REPO_ID/VOLUME, and refuses a repository whose head is older (as
// borg's replay check does). An operator who restores a repository from an
// older copy on purpose removes that file.
//
// Thread safety: functions are safe to call from several threads and
// processes; writing a head requires the volume's lock.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/repo.h"
#include "io/status.h"

namespace dp420 {

// A volume's head. generation 0 means "no head written yet".
struct VolumeHead {
  uint64_t generation = 0;
  uint64_t sequence = 0;      // of the newest snapshot; 0 when the volume has none
  std::string snapshot_id;    // empty when the volume has none
  std::string seal;           // the newest manifest's seal (hex)
};

// A volume's manifests, checked as one history.
struct VolumeHistory {
  std::string volume;
  std::vector<Manifest> manifests;   // intact ones, by sequence
  std::vector<DamagedFile> damaged;  // unreadable, mis-sealed or misnamed files
  VolumeHead head;                   // as recorded on disk
  bool head_present = false;
  // The newest snapshot: the head's, or the one a crash left ahead of it.
  // Null when the volume has no snapshot, or when `problems` say the newest
  // cannot be trusted.
  const Manifest* tip = nullptr;
  // Each a sentence: a rollback, a fork, a missing or damaged head or newest
  // snapshot. Non-empty means the history cannot be trusted as it stands.
  std::vector<std::string> problems;
  // The anchor this machine keeps for the volume (generation 0: none, or
  // no state folder could be read: anchoring is then best effort).
  VolumeHead anchor;

  // The tip, or kCorruption naming the problems (kNotFound: no snapshots).
  Result<const Manifest*> Newest(const std::string& where) const;
  // Snapshot `id`, or the one a unique prefix of at least 4 digits names;
  // kCorruption when the damaged manifest asked for is the one it names.
  Result<const Manifest*> Find(const std::string& id) const;
};

// Reads and checks `volume`'s history: its manifests, head and the anchor;
// advances the anchor when the head moved forward. Fails only when the
// snapshots folder cannot be read; everything else lands in `problems`.
Result<VolumeHistory> LoadHistory(const Repository& repo, const std::string& volume);

// The parent of the next backup of `volume`: its newest snapshot, nullopt when
// it has none; kCorruption (with what to run) when its history cannot be
// trusted. Damaged older snapshots do not stand in the way.
Result<std::optional<Manifest>> ParentOfNextBackup(const Repository& repo,
                                                   const std::string& volume);

// Records `newest` (null: the volume has no snapshot left) as `volume`'s
// head, one generation past the head on disk, then advances this machine's
// anchor. Requires the volume's lock.
Status AdvanceHead(const Repository& repo, const std::string& volume, const Manifest* newest);

// Reads a volume's head file; kNotFound when it has none.
Result<VolumeHead> ReadHead(const Repository& repo, const std::string& volume);

// A head file's sealed text, checked under `key` (null: the seal is read,
// not checked) and against the repository and volume it must belong to;
// kCorruption naming `what` when anything is wrong.
Result<VolumeHead> ParseHead(const std::string& text, const std::string& repo_id_hex,
                             const std::string& volume, const std::string& what,
                             const SealKey* key);

// An anchor file's line "generation sequence snapshot_id seal" ("- -" when
// the volume has no snapshot); kCorruption naming `path` when it is not one.
Result<VolumeHead> ParseAnchor(const std::string& text, const std::string& path);

// Volumes this machine holds an anchor for (they may be gone from the
// repository: a deleted volume folder is a rollback too).
std::vector<std::string> AnchoredVolumes(const Repository& repo);

// The folder holding this machine's anchors of the repository.
std::string AnchorDir(const Repository& repo);

}  // namespace dp420
