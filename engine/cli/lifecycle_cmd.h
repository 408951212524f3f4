// The commands of a repository's life cycle: forget, protect, unprotect
// (engine/core/forget.h), prune and stats (engine/core/prune.h), through the
// C API.
//
// Thread safety: as cli.h.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cli/cli.h"

namespace dp420cli {

struct ForgetArgs {
  std::string volume, within;
  int32_t last = 0, hourly = 0, daily = 0, weekly = 0, monthly = 0, yearly = 0;
  std::vector<std::string> snapshots;
  bool dry_run = false;
  bool prune = false;
  double max_unused_percent = -1;
};

struct ProtectArgs {
  std::string volume, snapshot;
};

struct PruneArgs {
  double max_unused_percent = -1;  // -1: the library's default
  bool dry_run = false;
};

struct LifecycleArgs {
  ForgetArgs forget;
  ProtectArgs protect;
  PruneArgs prune;
  std::string stats_volume;
};

struct LifecycleCommands {
  CLI::App* forget = nullptr;
  CLI::App* protect = nullptr;
  CLI::App* unprotect = nullptr;
  CLI::App* prune = nullptr;
  CLI::App* stats = nullptr;
};

// Adds the subcommands to `app`, parsing into `a`.
LifecycleCommands AddLifecycleCommands(CLI::App* app, Common* c, LifecycleArgs* a);
// Runs the one that was given; false when none was.
bool RunLifecycleCommand(const Common& c, const LifecycleArgs& a, const LifecycleCommands& cmds,
                         int* exit_code);

}  // namespace dp420cli
