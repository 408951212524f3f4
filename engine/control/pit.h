// Point in time of one source: how a backup reads a volume that is in use
// without tearing it (`backup --snapshot-source`).
//
//   reflink   a file volume on a file system that shares extents (XFS, btrfs):
//             an instant FICLONE copy into an unnamed file (O_TMPFILE) of the
//             source's folder, read through /proc/self/fd. It has no name, so
//             nothing can be planted under it and nothing is left after a crash:
//             its blocks are freed when the descriptor closes, however dp420 ends.
//   fsfreeze  a block device whose file system is mounted (`--freeze-mount DIR`):
//             FIFREEZE flushes the file system and holds its writes. When the
//             device is a loop device over a whole file (no offset, no size
//             limit) on a file system that shares extents, that file is cloned
//             while frozen and the clone is read (frozen for milliseconds);
//             otherwise the device is read while frozen (with O_DIRECT: its page
//             cache may be older than the file system's writes), and when
//             `--max-freeze` ends first the file system is thawed and the rest
//             of the read is live (reported so). The thaw at the deadline is
//             done by a watchdog process forked after the freeze: it thaws when
//             the deadline passes or when dp420 ends in any way (its pipe from
//             dp420 closes). A note in /run/dp420/frozen (the mount, its device)
//             lets the next backup thaw what a SIGKILL of both left frozen.
//   hook      `--pre-hook CMD` before and `--post-hook CMD` after the read
//             (e.g. a database's backup start and stop); with reflink or
//             fsfreeze, around taking the point in time instead (for a freeze
//             read in place, the post hook runs after the thaw). The post hook
//             runs whenever the pre hook ran, also after a failure. Without a
//             pre hook nothing quiesces the source: recorded live.
//   none      the live source. Its write counters (block devices) or change
//             and modification times and size (files) before and after the
//             read tell whether it changed while read (stores through a shared
//             mapping into pages already dirty change no time: not seen).
//   auto      reflink for a file where the file system shares extents, then
//             fsfreeze when --freeze-mount is given, then hook when a hook is
//             given, else none; what it chose and why is recorded.
//
// The record (PitRecord::ToJson) goes into the snapshot's node_topology, in
// the member of the volume (docs/FORMAT.md): consistency "point-in-time" or
// "live", the method, how long writes were held, and for live reads whether
// the source changed.
//
// Thread safety: a PointInTime belongs to one thread.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "engine/core/manifest.h"
#include "io/status.h"

namespace dp420::control {

enum class PitMethod : uint8_t { kAuto, kReflink, kFsfreeze, kHook, kNone };

Result<PitMethod> ParsePitMethod(std::string_view text);
const char* PitMethodName(PitMethod method);

inline constexpr std::chrono::milliseconds kDefaultMaxFreeze{7000};
inline constexpr std::chrono::milliseconds kDefaultHookTimeout{300000};

struct PitOptions {
  PitMethod method = PitMethod::kAuto;
  std::string freeze_mount;  // fsfreeze: the mount point of the file system on the source
  std::chrono::milliseconds max_freeze = kDefaultMaxFreeze;
  std::string pre_hook;      // run with /bin/sh -c; exit 0 expected
  std::string post_hook;
  std::chrono::milliseconds hook_timeout = kDefaultHookTimeout;
  // The repository, when local: a freeze of the file system it lives on would
  // stall the backup's own writes, and is refused.
  std::string repo_path;
  // Set when the backup is asked to stop: a running hook is killed.
  const std::atomic<bool>* cancel = nullptr;
  // Called once the source is held (the pre hook ran, the file system is
  // frozen) and before the point in time is taken (the copy made): a
  // member of a consistency group answers QUIET there and waits for the
  // coordinator's CUT. An error ends the hold (thaw, post hook) and fails
  // Take with it.
  std::function<Status()> at_hold;
};

// How the source was read, for the manifest and --json.
struct PitRecord {
  PitMethod method = PitMethod::kNone;
  bool point_in_time = false;   // false: live
  double hold_ms = 0;           // writes held: freeze (fsfreeze) or pre to post hook
  bool source_changed = false;  // a live read of a source that changed meanwhile
  bool change_known = true;     // false when nothing could tell (reported as unknown)
  std::string note;             // why auto chose what it did, why a freeze ended early
  const char* consistency() const { return point_in_time ? "point-in-time" : "live"; }
  Json ToJson() const;
};

// Thaws every file system a dp420 that is gone left frozen (a SIGKILL of it
// and of its watchdog: the notes in /run/dp420/frozen). Take does it first;
// `dp420 agent` at its start.
void ThawLeftFrozen();

class PointInTime {
 public:
  // Takes the point in time of `source` (absolute path of a file or block
  // device). Errors name what did not work (kInvalidArgument for
  // a method that does not apply, kUnavailable for a hook that failed or
  // timed out); nothing is left frozen or behind.
  static Result<std::unique_ptr<PointInTime>> Take(const std::string& source,
                                                   const PitOptions& options);
  ~PointInTime();  // thaws, runs the post hook, drops the copy (when Finish did not)
  PointInTime(const PointInTime&) = delete;
  PointInTime& operator=(const PointInTime&) = delete;

  // What the backup reads: the source or its copy.
  const std::string& read_path() const { return read_path_; }
  // After the read: ends the point in time (thaw, post hook, copy removed)
  // and completes the record. An error of the post hook fails the backup.
  Result<PitRecord> Finish();
  // The record as known before the read (method, consistency, note): what a
  // remote backup sends with its start.
  PitRecord Provisional() const;

 private:
  PointInTime() = default;
  Status Begin(PitMethod method, bool automatic, const struct stat& st);
  Status BeginFreeze(const struct stat& st);
  struct State;
  std::string source_;
  std::string read_path_;
  std::unique_ptr<State> state_;
};


}  // namespace dp420::control
