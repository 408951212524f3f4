#include "engine/cli/group_cmd.h"

#include <cstdio>
#include <ctime>

namespace dp420cli {

namespace {

uint32_t MillisOrZero(double seconds) { return seconds > 0 ? Millis(seconds) : 0; }

void OnAgentEvent(void* user, const char* line) {
  const Common& c = *static_cast<const Common*>(user);
  if (c.json) {
    PrintJson(Json{{"time", std::time(nullptr)}, {"event", line}});
  } else if (!c.quiet) {
    std::fprintf(stderr, "dp420 agent: %s\n", line);
  }
}

int CmdAgent(const Common& c, const GroupArgs& a) {
  if (c.remote.empty()) return UsageError(c, "agent", "--remote HOST:PORT[,HOST:PORT...] is required");
  if (c.client.empty()) return UsageError(c, "agent", "--client NAME is required");
  if (a.volumes.empty()) return UsageError(c, "agent", "at least one --volume NAME=SOURCE is required");
  dp420_remote_opts_t r;
  FillRemoteOpts(c, &r);
  std::vector<const char*> volumes;
  for (const auto& v : a.volumes) volumes.push_back(v.c_str());
  dp420_agent_opts_t o;
  dp420_agent_opts_init(&o);
  o.remote = &r;
  o.volumes = volumes.data();
  o.volume_count = volumes.size();
  o.state_dir = a.state_dir.empty() ? nullptr : a.state_dir.c_str();
  o.on_event = OnAgentEvent;
  o.user = const_cast<Common*>(&c);
  int rc = dp420_agent(g_ctx, &o);
  return rc == 0 ? kExitOk : Report(c, "agent", rc);
}

void PrintGroupText(const Json& s) {
  const bool ok = s.value("outcome", "") == "committed";
  std::printf("group %s epoch %llu: %s", s.value("group", "").c_str(),
              (unsigned long long)s.value("epoch", uint64_t{0}), ok ? "committed" : "ABORTED");
  if (ok) std::printf(", group snapshot %s", s.value("group_snapshot_id", "").c_str());
  std::printf("\n");
  auto ms = [&](const char* key) { return s.contains(key) && s[key].is_number() ? s[key].get<double>() : -1.0; };
  std::printf("  all holding after %.1f ms, all cut after %.1f ms, %.1f ms in all\n",
              ms("prepare_ms"), ms("cut_ms"), ms("total_ms"));
  for (const auto& m : s.value("members", Json::array())) {
    std::printf("  %-32s %s  skew %+.1f ms (± %.1f)\n", m.value("member", "").c_str(),
                m.value("snapshot_id", std::string(ok ? "?" : "-")).c_str(),
                m.value("skew_ms", 0.0), m.value("skew_error_ms", 0.0));
  }
}

int CmdGroupBackup(const Common& c, const GroupArgs& a) {
  if (c.remote.empty()) {
    return UsageError(c, "group-backup", "--remote HOST:PORT is required: the server coordinates "
                                         "the group");
  }
  std::vector<const char*> members;
  for (const auto& m : a.members) members.push_back(m.c_str());
  return WithRepo(c, "group-backup", [&](dp420_repo_t* repo) -> int {
    dp420_group_backup_opts_t o;
    dp420_group_backup_opts_init(&o);
    o.group = a.group.c_str();
    o.members = members.data();
    o.member_count = members.size();
    o.prepare_ms = MillisOrZero(a.prepare_s);
    o.cut_ms = MillisOrZero(a.cut_s);
    o.heartbeat_ms = MillisOrZero(a.member_heartbeat_s);
    o.max_skew_ms = MillisOrZero(a.max_skew_s);
    o.transfer_ms = MillisOrZero(a.transfer_s);
    char* text = nullptr;
    int rc = dp420_group_backup(g_ctx, repo, &o, &text);
    Json summary = text ? Json::parse(text, nullptr, false) : Json();
    dp420_free(text);
    if (summary.is_discarded() || summary.is_null()) return rc == 0 ? kExitFailed : Report(c, "group-backup", rc);
    if (rc != 0) {
      std::string msg = dp420_errmsg(g_ctx);
      std::fprintf(stderr, "dp420 group-backup: %s: %s\n", dp420_strerror(rc), msg.c_str());
      summary["error"] = {{"code", dp420_strerror(rc)}, {"exit_code", ExitFor(rc)},
                          {"message", msg}};
    }
    if (c.json) {
      PrintJson(summary);
    } else if (!c.quiet) {
      PrintGroupText(summary);
    }
    return rc == 0 ? kExitOk : ExitFor(rc);
  });
}

}  // namespace

int CmdGroupSnapshots(const Common& c, const std::string& group) {
  return WithRepo(c, "snapshots", [&](dp420_repo_t* repo) -> int {
    char* text = nullptr;
    int rc = dp420_group_snapshots(g_ctx, repo, group.c_str(), &text);
    if (rc != 0) return Report(c, "snapshots", rc);
    Json all = Json::parse(text, nullptr, false);
    dp420_free(text);
    if (c.json) {
      PrintJson(all);
      return all.value("damaged", Json::array()).empty() ? kExitOk : kExitDamage;
    }
    std::printf("%-16s  %-16s  %8s  %-27s  %s\n", "GROUP SNAPSHOT", "GROUP", "EPOCH", "CREATED",
                "MEMBERS");
    for (const auto& g : all.value("groups", Json::array())) {
      std::printf("%-16s  %-16s  %8llu  %-27s ", g.value("group_snapshot_id", "").c_str(),
                  g.value("group", "").c_str(), (unsigned long long)g.value("epoch", uint64_t{0}),
                  g.value("created", "").c_str());
      for (const auto& m : g.value("members", Json::array())) {
        std::printf(" %s=%s", m.value("member", "").c_str(), m.value("snapshot_id", "").c_str());
      }
      std::printf("\n");
    }
    for (const auto& d : all.value("damaged", Json::array())) {
      std::printf("DAMAGED %s: %s\n", d.value("file", "").c_str(), d.value("problem", "").c_str());
    }
    return all.value("damaged", Json::array()).empty() ? kExitOk : kExitDamage;
  });
}

GroupCommands AddGroupCommands(CLI::App* app, Common* c, GroupArgs* a) {
  GroupCommands cmds;
  cmds.agent = app->add_subcommand(
      "agent", "Run a member of consistency groups on this node (until SIGTERM)");
  AddRepoOptions(cmds.agent, c);
  cmds.agent->add_option("--volume", a->volumes,
                         "NAME=SOURCE[,snapshot-source=M][,freeze-mount=DIR][,max-freeze=MS]"
                         "[,pre-hook=CMD][,post-hook=CMD][,hook-timeout=MS][,block-size=N]"
                         "[,threads=N]; repeat for each volume")
      ->required();
  cmds.agent->add_option("--state-dir", a->state_dir,
                         "Where the newest epoch of each volume is kept (default: the cache "
                         "folder's agent-CLIENT)");

  cmds.group_backup = app->add_subcommand(
      "group-backup", "Back up volumes of several nodes at one point in time, all or none");
  AddRepoOptions(cmds.group_backup, c);
  cmds.group_backup->add_option("--group", a->group, "Group name")->required();
  cmds.group_backup->add_option("--member", a->members, "CLIENT:VOLUME, served by a running "
                                                        "dp420 agent; repeat for each")
      ->required();
  cmds.group_backup->add_option("--prepare-timeout", a->prepare_s,
                                "Seconds for every member to hold (default 10)")
      ->check(CLI::Range(0.001, 86400.0));
  cmds.group_backup->add_option("--cut-timeout", a->cut_s,
                                "Seconds for every member to cut (default 5)")
      ->check(CLI::Range(0.001, 86400.0));
  cmds.group_backup->add_option("--member-heartbeat", a->member_heartbeat_s,
                                "Seconds between a transferring member's heartbeats; lost "
                                "after 3 missed (default 5; agents beat every second)")
      ->check(CLI::Range(1.0, 86400.0));
  cmds.group_backup->add_option("--transfer-timeout", a->transfer_s,
                                "Seconds from the cut for every member's data to be durable "
                                "(default 86400): a member that only beats holds the others' "
                                "volumes no longer")
      ->check(CLI::Range(1.0, 604800.0));
  cmds.group_backup->add_option("--max-member-skew", a->max_skew_s,
                                "Largest clock skew of a member against the server, seconds "
                                "(default 0.5)")
      ->check(CLI::Range(0.001, 3600.0));
  return cmds;
}

bool RunGroupCommand(const Common& c, const GroupArgs& a, const GroupCommands& cmds,
                     int* exit_code) {
  if (*cmds.agent) {
    *exit_code = CmdAgent(c, a);
    return true;
  }
  if (*cmds.group_backup) {
    *exit_code = CmdGroupBackup(c, a);
    return true;
  }
  return false;
}

}  // namespace dp420cli
