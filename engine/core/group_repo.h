// Consistency groups in the repository: epochs (the fencing tokens), member
// snapshots staged under an epoch, the group manifest that publishes every
// member at once, and the roll-forward after a crash. The protocol that
// drives them is engine/control/group.h; the server wires the two
// (engine/net/group_serve.cc).
//
//   REPO/groups/.lock                    flock()ed around every change below
//   REPO/groups/.epoch                   newest epoch issued, of any group (sealed)
//   REPO/groups/GROUP/EPOCH.open         the epoch is open (begun, not ended)
//   REPO/groups/GROUP/EPOCH/VOL.manifest a member's staged manifest (sealed text)
//   REPO/groups/GROUP/EPOCH-ID.group     the committed group manifest (sealed)
//
// EPOCH is 20 decimal digits. A member snapshot is staged by its backup
// (SnapshotBuilder::Stage): data and table durable, its journal kept and
// marked with the group and epoch, its manifest written into the epoch's
// folder, the volume lock still held by the builder. CommitGroup is the one
// atomic step: the group manifest's rename. Then each member is published
// (SnapshotBuilder::Publish, or RecoverGroups after a crash): its staged
// manifest renamed into snapshots/VOL/, the head advanced, the journal
// removed. Before the rename nothing of the epoch is visible; after it the
// members are published, or will be by the roll-forward after a crash
// (RecoverGroups, or the journal recovery of any member volume's next
// writer, which publishes the other members too): a group is published in
// part only between its members' publishes, never for good. The order of
// each step, and what every crash leaves: docs/FORMAT.md "Consistency groups".
//
// Locks: changes serialize on groups/.lock (flock, also between processes,
// held for short steps). A volume's writer takes it while holding the
// volume's lock; no one waits for a volume lock while holding it, and waits
// for volume locks are bounded (lock_wait): a second flock of a volume this
// process holds already would wait for itself.
//
// Thread safety: functions over a Repository, callable from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "engine/core/verify.h"
#include "io/status.h"

namespace dp420 {

// A group name: 1-64 of [A-Za-z0-9._-], not starting with '.'.
bool ValidGroupName(const std::string& name);

struct GroupMemberRecord {
  std::string member;          // as the coordinator names it: "CLIENT:VOLUME"
  std::string volume;          // the repository volume
  std::string snapshot_id;     // filled by CommitGroup from the staged manifest
  uint64_t sequence = 0;       // likewise: with snapshot_id, the manifest's file name
  std::string manifest_seal;   // the member manifest's seal (hex): its hash
  int64_t skew_ns = 0;         // the member's wall clock minus the server's
  int64_t skew_error_ns = 0;
};

struct GroupManifest {
  uint32_t format_version = kFormatVersion;
  std::string repo_id;            // hex
  std::string group;
  std::string group_snapshot_id;  // 16 hex digits
  uint64_t epoch = 0;             // the fencing token it was committed under
  std::string created;            // RFC 3339, UTC
  uint64_t created_unix_ns = 0;
  std::vector<GroupMemberRecord> members;  // sorted by member
  // {"members": [every member manifest's node_topology members: node_id,
  // host, volume, device, point_in_time]}.
  Json node_topology = Json::object();
  std::string tool_version;
  // Derived when read:
  std::string seal;
  std::string file_name;  // "EPOCH-ID.group"
  Json ToJson() const;
  static Result<GroupManifest> FromJson(const Json& j, const std::string& what);
  // A sealed group manifest's text, unsealed under `key` and parsed, with
  // seal and file_name set; kCorruption naming `what` when anything is wrong.
  static Result<GroupManifest> Parse(const std::string& sealed, const std::string& what,
                                     const SealKey* key);
  std::string FileName() const;  // "%020llu-<group_snapshot_id>.group"
};

enum class GroupEpochState { kOpen, kCommitted, kAborted };

// A new epoch, newer than every epoch issued before in this repository (of
// any group), durable before it returns; `group`'s EPOCH.open is created.
// kInvalidArgument for an invalid group name.
Result<uint64_t> BeginGroupEpoch(const Repository& repo, const std::string& group);

// kCommitted when the group manifest of (group, epoch) exists; kOpen while
// its EPOCH.open does; else kAborted (also never begun). An error when the
// repository cannot tell (unreadable folder).
Result<GroupEpochState> GroupEpochStateOf(const Repository& repo, const std::string& group,
                                          uint64_t epoch);

// The seal of `volume`'s manifest staged under (group, epoch), if any.
Result<std::optional<std::string>> StagedSeal(const Repository& repo, const std::string& group,
                                              uint64_t epoch, const std::string& volume);

// The atomic commit: refused unless `epoch` is the newest issued, still
// open, and every member's staged manifest has the seal named (kBusy: "epoch
// E of GROUP is not the newest (N): fenced", "... is not open";
// kInvalidArgument: "member M staged nothing", "member M staged seal S, not
// T"). Writes the group manifest (fsync, rename, fsync of the folder), then
// ends the epoch (EPOCH.open removed). After an OK return, or after an
// error once the rename happened (GroupEpochStateOf tells), the caller
// publishes each member (SnapshotBuilder::Publish), or RecoverGroups does.
Result<GroupManifest> CommitGroup(const Repository& repo, const std::string& group,
                                  uint64_t epoch, std::vector<GroupMemberRecord> members,
                                  const std::string& tool_version);

// Ends an open epoch without a commit: EPOCH.open removed, the staged
// manifests removed. A committed epoch is left as it is; one never begun is
// not touched. The staged packs are rolled back by their builders (or by
// the next writer of the volume: BackupJournal sees the epoch aborted).
Status AbortGroupEpoch(const Repository& repo, const std::string& group, uint64_t epoch);

// After a crash, each member under its volume's lock (waiting up to
// `lock_wait` for it), groups/.lock for short steps: every committed epoch
// whose members are not all published is rolled forward (staged manifest
// into snapshots/VOL/, head advanced, journal removed, then EPOCH.open and
// the staging folder removed), also one whose EPOCH.open is gone; with
// `abort_open`, every open epoch is aborted and the journals of its staged
// members rolled back (the server at start: no coordinator outlives its
// server); what an abort left is removed. What it did goes to `log` lines
// when given. A volume it could not lock (kBusy) or recover does not stop
// the others: the first such error is returned at the end.
Status RecoverGroups(const Repository& repo, bool abort_open, std::chrono::milliseconds lock_wait,
                     std::vector<std::string>* log = nullptr);

// Group manifests of `group` ("" every group), oldest epoch first. Damaged
// ones go to `damaged` when given, else the first fails the call.
Status ListGroupManifests(const Repository& repo, const std::string& group,
                          std::vector<GroupManifest>* out,
                          std::vector<DamagedFile>* damaged = nullptr);

// Verify's part: every group manifest's seal, repository id, and each
// member: its snapshot exists with the seal recorded (a member forgotten
// since is not a problem, nor one still staged with that seal; a member
// manifest with another seal, or missing while not forgotten, is). Problems
// are added to `report`, named "groups/GROUP/EPOCH-ID.group". RunVerify
// calls it when it verifies the whole repository.
Status VerifyGroups(const Repository& repo, VerifyReport* report);

// ---- the member's side: SnapshotBuilder (snapshot.cc) and BackupJournal (repo.cc) ----

// Writes a member's sealed manifest text into groups/GROUP/EPOCH/VOL.manifest
// (tmp/ID.manifest.tmp, fsync, rename, fsync of the folder), under
// groups/.lock; kBusy when the epoch is not open, or not the newest
// (fenced: it could not commit). The journal of the
// snapshot is marked with (group, epoch) before. Requires the volume lock.
Status StageManifest(const Repository& repo, const std::string& group, uint64_t epoch,
                     const std::string& volume, const std::string& snapshot_id,
                     const std::string& sealed_text);

// Whether (group, epoch) is committed with `member` (its volume and seal)
// among the group manifest's members.
Result<bool> GroupCommittedWith(const Repository& repo, const std::string& group, uint64_t epoch,
                                const GroupMemberRecord& member);

// A staged member that is to be rolled back: under groups/.lock, when the
// epoch is committed with it, `*committed` is set and nothing is removed
// (a committed member is published, never rolled back); otherwise its staged
// manifest is removed, so that no commit can name it any more, and its packs
// may go. An error when the repository cannot tell (keep everything then).
Status UnstageManifest(const Repository& repo, const std::string& group, uint64_t epoch,
                       const GroupMemberRecord& member, bool* committed);

// Publishes a member of a committed epoch: its staged manifest (checked
// against member.manifest_seal) renamed into snapshots/VOL/, the folder
// fsynced, the head advanced unless it is there already. Idempotent: when
// the staged manifest is gone, the published one must be there with that
// seal. Returns the published manifest. Requires the volume lock; the
// caller removes the journal.
Result<Manifest> PublishStaged(const Repository& repo, const std::string& group, uint64_t epoch,
                               const GroupMemberRecord& member);

// After a published member's journal is removed: the staging folder of
// (group, epoch) goes when nothing is left in it. Until then a crash leaves
// the folder, which RecoverGroups looks at.
void RemoveStagingIfEmpty(const Repository& repo, const std::string& group, uint64_t epoch);

// The journal's recovery of a dead member (BackupJournal::Recover, under the
// volume lock): when (group, epoch) is committed with `snapshot_id` of
// `volume`, every member of the epoch is published (this volume's first; the
// others' whose lock comes within kBriefLockWait) and `*rolled_forward` is
// set: the packs stay. Otherwise the epoch is aborted when still open (the
// member's stager is dead: the epoch cannot commit whole) and the staged
// manifest removed: the caller rolls the packs back.
Status RecoverMemberJournal(const Repository& repo, const std::string& volume,
                            const std::string& group, uint64_t epoch,
                            const std::string& snapshot_id, bool* rolled_forward);

// Where `volume`'s manifest staged under (group, epoch) is (or was).
std::string StagedManifestPath(const Repository& repo, const std::string& group, uint64_t epoch,
                               const std::string& volume);

// Every manifest staged in groups/ that reads (prune marks what they
// reference: a committed one is published by the roll-forward).
void ListStagedManifests(const Repository& repo, std::vector<Manifest>* out);

}  // namespace dp420
