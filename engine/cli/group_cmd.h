// The commands of consistency groups: `dp420 agent` (a member on this node)
// and `dp420 group-backup` (one group backup, coordinated by the server),
// through the C API (dp420_agent, dp420_group_backup); `snapshots --group`
// lists group snapshots (dp420_group_snapshots).
//
// Thread safety: as cli.h.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cli/cli.h"

namespace dp420cli {

struct GroupArgs {
  // agent
  std::vector<std::string> volumes;  // NAME=SOURCE[,KEY=VALUE]...
  std::string state_dir;
  // group-backup
  std::string group;
  std::vector<std::string> members;  // CLIENT:VOLUME
  double prepare_s = 0, cut_s = 0, member_heartbeat_s = 0, max_skew_s = 0, transfer_s = 0;
};

struct GroupCommands {
  CLI::App* agent = nullptr;
  CLI::App* group_backup = nullptr;
};

GroupCommands AddGroupCommands(CLI::App* app, Common* c, GroupArgs* a);
// Runs the one that was given; false when none was.
bool RunGroupCommand(const Common& c, const GroupArgs& a, const GroupCommands& cmds,
                     int* exit_code);
// `snapshots --group GROUP` (GROUP "" with --groups: every group).
int CmdGroupSnapshots(const Common& c, const std::string& group);

}  // namespace dp420cli
