// The forget, protect and unprotect commands (engine/core/forget.h through
// the C API).
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
};

struct ProtectArgs {
  std::string volume, snapshot;
};

// Adds the three subcommands to `app`, parsing into `f` and `p`.
void AddForgetCommands(CLI::App* app, Common* c, ForgetArgs* f, ProtectArgs* p,
                       CLI::App** forget, CLI::App** protect, CLI::App** unprotect);
int CmdForget(const Common& c, const ForgetArgs& a);
int CmdProtect(const Common& c, const ProtectArgs& a, bool protect);

}  // namespace dp420cli
