// Repair: brings a volume whose history cannot be trusted back to what its
// data supports. The newest snapshot whose table and data check out becomes
// the volume's newest; every manifest that is damaged, newer than it, or a
// fork of its chain is moved to REPO/quarantine/VOLUME/STAMP/ (never
// deleted), and the head is rewritten, one generation past both the old head
// and this machine's anchor: repair is how an operator accepts a rollback.
//
// Thread safety: takes the volume's lock.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/job.h"
#include "engine/core/repo.h"

namespace dp420 {

struct RepairOptions {
  std::string volume;
  bool dry_run = false;    // report what would be done; change nothing
  bool read_data = false;  // judge candidates by re-reading their blocks too
  JobControl control;
};

struct RepairReport {
  std::string volume;
  std::vector<std::string> problems;  // what was wrong with the history
  std::string newest_id;              // the newest snapshot after repair ("" none)
  uint64_t newest_sequence = 0;
  struct Quarantined {
    std::string file;    // relative to the repository
    std::string reason;
  };
  std::vector<Quarantined> quarantined;
  std::string quarantine_dir;  // relative; empty when nothing moved
  bool head_rewritten = false;
  bool dry_run = false;
};

// kNotFound when the volume has no manifests and no head.
Result<RepairReport> RunRepair(const Repository& repo, const RepairOptions& options);

}  // namespace dp420
