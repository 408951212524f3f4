// Repository: a directory holding packs, manifests, the config and the hash
// key (layout in format.h, bytes in docs/FORMAT.md).
//
// Everything a manifest references is immutable and durable before the
// manifest appears. Backups, restores and verifies hold the repository lock
// shared so that prune deletes nothing while they run (LockRepository).
// Writers of a volume hold its lock (flock on locks/VOL.lock); a backup
// journals the packs it creates in tmp/VOL.journal so the next writer can
// delete the packs of a backup that died before committing.
//
// Thread safety: a Repository is immutable after Open() and may be shared
// by threads; BackupJournal and VolumeLock belong to one thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/codec/codec.h"
#include "engine/core/keystore.h"
#include "engine/core/manifest.h"
#include "engine/core/record.h"
#include "engine/crypto/keys.h"
#include "io/status.h"
#include "simd/simd.h"

namespace dp420 {

// How long a backup waits for a volume lock that forget, protect or repair
// holds (they hold it for moments); a running backup holds it longer.
inline constexpr std::chrono::milliseconds kBriefLockWait{5000};

// A held flock() (a volume's writer lock, or a repository-wide lock):
// released when destroyed.
class VolumeLock {
 public:
  VolumeLock() = default;
  explicit VolumeLock(int fd) : fd_(fd) {}
  ~VolumeLock();
  VolumeLock(VolumeLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  VolumeLock& operator=(VolumeLock&& o) noexcept;

 private:
  int fd_ = -1;
};

struct DamagedFile {
  std::string path;  // relative to the repository
  Status status;
};

// Whether a file that did not read is damaged (its bytes are wrong:
// kCorruption, or kVersion for a format this build does not know) rather than
// unreadable just now (EIO, EMFILE, EACCES ...). Damage is reported as
// damage; the rest as what it is, and nothing is concluded from the file.
inline bool IsDamage(const Status& s) {
  return s.code() == Code::kCorruption || s.code() == Code::kVersion;
}

struct InitOptions {
  // AES-256-GCM at rest (docs/FORMAT.md "Encryption"): a random master key
  // wrapped by a first key slot under `key_source`.
  bool encrypted = false;
  KeySource key_source;
};

class Repository {
 public:
  // Creates a repository of format 3 at `path` (an absent or empty
  // directory). kExists when `path` already holds files; for an encrypted
  // one, kInvalidArgument when `options.key_source` gives no secret.
  static Status Init(const std::string& path, const InitOptions& options = {});
  // Opens and checks config and key. kNotFound when `path` is not a
  // repository; kVersion when its format is newer than this build, or is
  // format 1 (unkeyed seals), which `dp420 upgrade` brings to this format.
  // An encrypted repository is unlocked with `key_source` (keystore.h:
  // kBadKey when it opens no key slot, kInvalidArgument when it gives nothing).
  static Result<std::unique_ptr<Repository>> Open(const std::string& path,
                                                   const KeySource& key_source = {});
  // Whether the repository at `path` says it is encrypted (its config, read
  // without the key; only for choosing what to do: Open checks everything).
  static Result<bool> IsEncrypted(const std::string& path);
  // Opens without any secret, for the checks a holder of the files alone can
  // make (stored_check.h): the config's format is checked, not its seal, and
  // an encrypted repository's keys are not loaded. Only the pack-level API
  // (PackPath, ListPackIds, LockRepository, repo_id) may be used on it.
  static Result<std::unique_ptr<Repository>> OpenWithoutKey(const std::string& path);
  // Whether `master` is the master key of the encrypted repository at `path`
  // (id `repo_id`): the config's seal checks under the seal key it derives.
  // kBadKey when it does not (another repository's key, a mistyped recovery
  // form that still passed its check values, or a damaged config).
  static Status CheckMasterKey(const std::string& path, const crypto::RepoId& repo_id,
                               const crypto::MasterKey& master);
  // Opens a format-1 repository for UpgradeRepository (engine/core/upgrade.h),
  // checking its config's plain seal; a current one opens as with Open().
  static Result<std::unique_ptr<Repository>> OpenForUpgrade(const std::string& path);
  uint32_t format_version() const { return format_version_; }
  // The version of the packs this repository writes (format.h).
  uint32_t pack_version() const {
    return format_version_ >= 3 ? kPackVersionEncoded : kPackVersionRaw;
  }
  // Whether its records, table pages and manifests are sealed (AES-256-GCM).
  bool encrypted() const { return keys_ != nullptr; }
  // A record codec of this repository for one thread: sealing when it is
  // encrypted, compressing with `compression` (ignored in format 2, whose
  // records are stored raw).
  Result<std::unique_ptr<RecordCodec>> NewRecordCodec(const CodecSpec& compression = {}) const;
  crypto::RepoId repo_id_array() const;

  const std::string& path() const { return path_; }
  const uint8_t* repo_id() const { return repo_id_; }
  std::string repo_id_hex() const;
  ~Repository();
  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;

  // The block-id hasher of `volume` (docs/FORMAT.md "Block ids"): keyed with
  // a secret derived from keys/hash.key and the volume's name, so the secret
  // of one volume, handed to the agent that backs it up, tells nothing about
  // another volume's ids or the repository key.
  std::unique_ptr<simd::BlockHasher> VolumeHasher(const std::string& volume) const;
  // That volume's secret (simd::kHashSecretBytes bytes).
  void VolumeSecret(const std::string& volume, uint8_t* out) const;

  // The key of the dedup index's tags and MACs (dedup.h): HMAC-SHA-256 under
  // the block-id secret (keys/hash.key, or the master key's subkey in an
  // encrypted repository) of a label, so the index names no plaintext hash.
  void DedupIndexKey(uint8_t out[32]) const;

  // The key that seals config, manifests and heads (derived from keys/hash.key).
  const SealKey& seal_key() const { return seal_key_; }

  std::string PacksDir() const { return path_ + "/packs"; }
  std::string PackPath(uint32_t pack_id) const;
  // The ids of the pack files in packs/ ("xxxxxxxx.pack"), sorted.
  std::vector<uint32_t> ListPackIds() const;
  std::string SnapshotsDir(const std::string& volume) const;

  std::vector<std::string> ListVolumes() const;
  // Manifests of `volume` (every volume when empty), ordered by volume and
  // sequence. Unreadable or damaged manifests go to `damaged` when given,
  // else the first one fails the call.
  // Snapshots that were forgotten are not listed (links.h), and each
  // manifest's chain_parent and is_protected are set.
  Status ListManifests(const std::string& volume, std::vector<Manifest>* out,
                       std::vector<DamagedFile>* damaged) const;
  // The manifest files of one volume as they are, links not applied.
  Status ListVolumeManifests(const std::string& volume, std::vector<Manifest>* out,
                             std::vector<DamagedFile>* damaged) const;
  // `id` is "latest" (the newest snapshot of the volume's history, see
  // history.h: kCorruption when that history was rolled back, forked or its
  // newest snapshot is damaged), a snapshot id, or a unique prefix of at
  // least 4 digits.
  Result<Manifest> FindSnapshot(const std::string& volume, const std::string& id) const;

  // Takes the writer lock of `volume`, waiting up to `wait` for another
  // process to release it (kBusy after that; kCanceled when `cancel` turns).
  Result<VolumeLock> LockVolume(const std::string& volume,
                                std::chrono::milliseconds wait = std::chrono::milliseconds(0),
                                const std::atomic<bool>* cancel = nullptr) const;

  // The repository-wide lock locks/.repository.lock (docs/RELIABILITY.md,
  // "Who waits for whom"): backup, restore and verify hold it shared for
  // their whole run; prune holds it exclusively only while it deletes.
  // Waits until it is granted; `on_wait` is called first when it is not free
  // at once. (Lock names start with "." so that no volume's can match.)
  Result<VolumeLock> LockRepository(bool exclusive,
                                    const std::function<void()>& on_wait = nullptr) const;
  // locks/.prune.lock, exclusively: one prune at a time (kBusy otherwise).
  Result<VolumeLock> LockPrune() const;
  // locks/.dedup.lock, exclusively, waiting for its holder: one writer of the
  // dedup index at a time (dedup.h).
  Result<VolumeLock> LockDedupIndex() const;

 private:
  Repository() = default;
  static Result<std::unique_ptr<Repository>> OpenAny(const std::string& path, bool legacy_ok,
                                                    const KeySource& key_source,
                                                    bool keyless = false);
  static Status InitEncrypted(const std::string& path, const KeySource& key_source);
  Status LoadKey(const Json& config);
  Status Unlock(const KeySource& key_source);
  std::string path_;
  uint32_t format_version_ = kFormatVersion;
  SealKey seal_key_;
  uint8_t repo_id_[16] = {};
  std::array<uint8_t, simd::kHashSecretBytes> hash_key_{};  // cleansed on destruction
  std::unique_ptr<crypto::RepositoryKeys> keys_;  // an encrypted repository's subkeys
};

// The packs named by the "pack XXXXXXXX" lines of a journal's `text` (a torn
// last line names nothing; other lines, "snapshot ID" and "group GROUP
// EPOCH", name no pack).
std::vector<uint32_t> JournalPackIds(const std::string& text);
// The consistency group and epoch a journal's "group GROUP EPOCH" line marks
// it staged under (SnapshotBuilder::Stage); false when it has none (or only
// a torn one: the staged manifest is written after that line is durable).
bool JournalGroupMark(const std::string& text, std::string* group, uint64_t* epoch);
// The packs every backup's journal (tmp/VOL.journal; not prune's own,
// tmp/.prune.journal) names now, sorted: backups in progress, or dead ones not
// yet rolled back. A journal that went meanwhile (its backup committed or
// rolled back) names nothing; one that does not read is an error.
Result<std::vector<uint32_t>> JournalledPackIds(const Repository& repo);

// Journal of an unfinished backup: tmp/VOL.journal lists the snapshot being
// made and every pack created for it, each line durable before the pack is;
// a member of a consistency group adds "group GROUP EPOCH" when it stages.
class BackupJournal {
 public:
  // What a dead backup of `volume` left: its packs are deleted unless its
  // manifest exists; a member staged under a group epoch is rolled forward
  // (published, with the group's other members) when the epoch committed
  // with it (`*rolled_forward` then: the volume's newest snapshot changed),
  // else the epoch is aborted if still open and the packs deleted
  // (group_repo.h). Requires the volume lock; call it before choosing the
  // parent of a backup.
  static Status Recover(const Repository& repo, const std::string& volume,
                        bool* rolled_forward = nullptr);
  // Recovers (kBusy when that rolled a group member forward: the parent
  // chosen before is not the newest any more), then starts a journal for
  // `snapshot_id`. Requires the volume lock.
  static Result<BackupJournal> Start(const Repository& repo, const std::string& volume,
                                     const std::string& snapshot_id);
  BackupJournal() = default;
  BackupJournal(BackupJournal&& o) noexcept;
  BackupJournal& operator=(BackupJournal&& o) noexcept;
  ~BackupJournal();
  Status AddPack(uint32_t pack_id);
  // Before a staged manifest is written: "group GROUP EPOCH", durable.
  Status MarkGroup(const std::string& group, uint64_t epoch);
  // After the manifest is durable: removes the journal.
  void Commit();
  // After a failed backup: deletes the packs it created and the journal.
  void Rollback();

 private:
  const Repository* repo_ = nullptr;
  std::string path_;
  int fd_ = -1;
  std::vector<uint32_t> packs_;
};

}  // namespace dp420
