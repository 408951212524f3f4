// Test-only crash points. When the environment variable DP420_TEST_CRASH
// names a point, the process SIGKILLs itself there, so end-to-end tests can
// prove that a crash at that instant leaves every committed snapshot intact.
// Points: "after-data:N" (the N-th stored data block's write has completed),
// "before-table", "before-manifest", "before-rename", "after-rename"; in a
// restore, "restore-writing" (a write to the target has completed) and
// "restore-before-rename" (a named partial file is about to become TARGET);
// in a backup's freeze read in place (engine/control/pit.cc), "frozen" (the
// file system is frozen) and "frozen-orphaned" (the same, its watchdog
// process killed first); in a consistency group's commit (group_repo.cc),
// "group-stage-before-rename", "group-stage-after-rename" (a member's staged
// manifest), "group-before-rename", "group-after-rename" (the group
// manifest), "group-before-publish", "group-after-publish" (a member's
// manifest renamed into its volume's folder).
// Unset (the normal case), each check is one predictable branch.
#pragma once

#include <cstdint>
#include <functional>

namespace dp420 {

// A moment an in-process test can act at (run another writer's step exactly
// there: a race made deterministic). Points: "links-listed" (ApplyLinks has
// listed a volume's folder and is about to read its links). Nothing happens
// unless a test set a hook; then it is one atomic load.
void PausePoint(const char* point);
// Sets (or, with nullptr, clears) the hook; not while PausePoint may run.
void SetPausePointHookForTest(std::function<void(const char*)> hook);

// Kills the process if DP420_TEST_CRASH (or the point set below) equals `point`.
void CrashPoint(const char* point);
// Sets the crash point of this process in place of DP420_TEST_CRASH (which
// is read once): for a test's forked child, before it does what is to die.
void SetCrashPointForTest(const char* point);
// Kills the process once `blocks_written` reaches N of "after-data:N".
void CrashAfterData(uint64_t blocks_written);
// True when DP420_TEST_NO_TMPFILE=1: a restore writes its file under a
// partial name as on a file system without O_TMPFILE.
bool NoTmpfileForTest();

}  // namespace dp420
