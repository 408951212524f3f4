// The check that needs no key: every pack of a repository read back against
// its own trailer (`dp420 verify --stored-only`). What a holder of the
// repository's files alone can check, an encrypted repository's included:
// each pack's header (its CRC, pack id and repository id), footer and trailer
// index (CRC-32C), every record inside
// the data area, not overlapping the next, of a length a record can have, its
// padding zero, and its stored bytes against the trailer's digest (XXH3-128
// of the stored bytes in a pack of version 2, SHA-256 of the raw bytes in
// version 1).
//
// What it cannot check, by design: which snapshots a record belongs to and
// whether a record opens under the key (a pack rewritten whole, trailer and
// all, by someone who can write the repository checks clean here; the keyed
// verify catches it). docs/SECURITY.md says so.
//
// Thread safety: re-entrant; holds the repository lock shared (prune deletes
// nothing meanwhile).
#pragma once

#include <string>

#include "engine/core/job.h"
#include "engine/core/verify.h"

namespace dp420 {

// Opens the repository at `path` without a key (Repository::OpenWithoutKey)
// and checks every pack. The report counts packs_checked, blocks_checked (every
// record, table pages included) and bytes_read; problems name the pack and the
// record's offset. A non-OK Status only when the check could not run.
Result<VerifyReport> RunStoredCheck(const std::string& path, const JobControl& control);

}  // namespace dp420
