// `dp420 serve --retention FILE`: retention policies the server applies
// itself, per client and volume, on a schedule (docs/FORMAT.md, "The
// retention file"). Each pass forgets, volume by volume, what the first
// matching rule does not keep, and the server's log names every snapshot it
// forgot. A volume no rule matches is left alone.
//
// Thread safety: a schedule is immutable once loaded; ApplyRetentionPass
// runs on the server's retention thread and takes each volume's lock as
// forget does (waiting for a running backup).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/repo.h"
#include "engine/core/retention.h"
#include "engine/net/server.h"  // Logger

namespace dp420::net {

struct RetentionRule {
  std::string client;  // "*" any; "" local backups (no client); else that client
  std::string volume;  // "*" any; else the volume name as its client knows it
  RetentionPolicy policy;
  bool Matches(const std::string& owner, const std::string& volume_name) const {
    return (client == "*" || client == owner) && (volume == "*" || volume == volume_name);
  }
};

struct RetentionSchedule {
  std::chrono::seconds every{3600};
  std::vector<RetentionRule> rules;  // the first that matches a volume applies
};

inline constexpr uint64_t kRetentionEveryMax = 7 * 24 * 3600;
inline constexpr size_t kRetentionRulesMax = 4096;

// Parses the file's text; kInvalidArgument naming `what`, the rule and the
// field that is wrong.
Result<RetentionSchedule> ParseRetentionSchedule(const std::string& text, const std::string& what);
// Reads and parses `path`, which must be owned by this user and not
// writable by group or others (it decides what is deleted), as the clients
// file.
Result<RetentionSchedule> LoadRetentionSchedule(const std::string& path);

struct RetentionPassResult {
  uint64_t volumes = 0;    // volumes a rule matched
  uint64_t forgotten = 0;
};

// One pass over the repository: `log` gets a line per forgotten snapshot
// and per volume that could not be changed; `stop` ends the pass between
// volumes.
RetentionPassResult ApplyRetentionPass(const Repository& repo, const RetentionSchedule& schedule,
                                       Logger& log, const std::atomic<bool>* stop);

}  // namespace dp420::net
