// The C API of consistency groups: the agent (engine/net/group_agent.h), a
// group backup asked of the server (engine/net/group_serve.h), and the group
// snapshots of a repository (engine/core/group_repo.h).
#include <cstring>
#include <string>

#include "dp420/dp420.h"
#include "engine/capi/internal.h"
#include "engine/control/topology.h"
#include "engine/core/group_repo.h"
#include "engine/net/group_agent.h"

using namespace dp420capi;  // NOLINT(google-build-using-namespace): this library's own helpers

namespace {

using dp420::Status;

// The server's summary of an aborted group, as the Status it reports.
Status AbortedStatus(const dp420::Json& summary) {
  int code = summary.value("code", int(dp420::Code::kInternal));
  if (code <= 0 || code > int(dp420::kLastCode)) code = int(dp420::Code::kInternal);
  return Status::Make(dp420::Code(code), "group '" + summary.value("group", std::string()) +
                                             "' aborted, nothing published: " +
                                             summary.value("error", std::string("no reason")));
}

dp420::Result<dp420::Json> GroupBackupArgs(const dp420_group_backup_opts_t& in) {
  if (Missing(in.group)) return Status::InvalidArgument("no group given (--group)");
  if (in.member_count == 0 || !in.members) {
    return Status::InvalidArgument("no members given (--member CLIENT:VOLUME)");
  }
  dp420::Json members = dp420::Json::array();
  for (size_t i = 0; i < in.member_count; ++i) {
    if (Missing(in.members[i])) return Status::InvalidArgument("an empty --member");
    members.push_back(in.members[i]);
  }
  dp420::Json args = {{"group", in.group}, {"members", members}};
  if (in.prepare_ms) args["prepare_ms"] = in.prepare_ms;
  if (in.cut_ms) args["cut_ms"] = in.cut_ms;
  if (in.heartbeat_ms) args["heartbeat_ms"] = in.heartbeat_ms;
  if (in.max_skew_ms) args["max_skew_ms"] = in.max_skew_ms;
  if (in.transfer_ms) args["transfer_ms"] = in.transfer_ms;
  return args;
}

}  // namespace

extern "C" {

void dp420_agent_opts_init(dp420_agent_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_agent(dp420_ctx_t* ctx, const dp420_agent_opts_t* opts) {
  return Guard(ctx, [&] {
    if (!opts || opts->struct_size < sizeof(dp420_agent_opts_t) || !opts->remote ||
        (opts->volume_count > 0 && !opts->volumes)) {
      return Fail(ctx, Status::InvalidArgument("dp420_agent: bad arguments"));
    }
    auto remote = ReadRemoteOpts(*opts->remote);
    if (!remote.ok()) return Fail(ctx, remote.status());
    dp420::net::AgentOptions o;
    o.remote = std::move(remote).value();
    o.remote.control = Control(ctx);
    o.tool_version = std::string("dp420 ") + dp420_version_string();
    for (size_t i = 0; i < opts->volume_count; ++i) {
      auto v = dp420::net::ParseAgentVolume(opts->volumes[i] ? opts->volumes[i] : "");
      if (!v.ok()) return Fail(ctx, v.status());
      o.volumes.push_back(std::move(v).value());
    }
    if (!Missing(opts->state_dir)) o.state_dir = dp420::control::AbsolutePath(opts->state_dir);
    if (opts->on_event) {
      auto fn = opts->on_event;
      void* user = opts->user;
      o.on_event = [fn, user](const std::string& line) { fn(user, line.c_str()); };
    }
    Status s = dp420::net::RunAgent(o);
    return s.ok() ? Ok(ctx) : Fail(ctx, s);
  });
}

void dp420_group_backup_opts_init(dp420_group_backup_opts_t* opts) {
  std::memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
}

int dp420_group_backup(dp420_ctx_t* ctx, dp420_repo_t* repo,
                       const dp420_group_backup_opts_t* opts, char** summary_json) {
  return Guard(ctx, [&] {
    if (summary_json) *summary_json = nullptr;
    if (!repo || !opts || opts->struct_size < sizeof(dp420_group_backup_opts_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_group_backup: bad arguments"));
    }
    if (!repo->remote) {
      return Fail(ctx, Status::InvalidArgument(
                           "a group backup runs on the repository server: give --remote "
                           "HOST:PORT of the `dp420 serve` the members' agents connect to"));
    }
    auto args = GroupBackupArgs(*opts);
    if (!args.ok()) return Fail(ctx, args.status());
    RemoteLink link(ctx, repo);
    auto summary = repo->remote->Admin("group-backup", *args, Control(ctx));
    if (!summary.ok()) return Fail(ctx, summary.status());
    if (summary_json) {
      *summary_json = CopyOut(summary->dump());
      if (!*summary_json) return Fail(ctx, Status::NoMemory("out of memory"));
    }
    if (summary->value("outcome", std::string()) != "committed") {
      return Fail(ctx, AbortedStatus(*summary));
    }
    return Ok(ctx);
  });
}

int dp420_group_snapshots(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* group, char** json) {
  return Guard(ctx, [&] {
    if (!repo || !json) return Fail(ctx, Status::InvalidArgument("dp420_group_snapshots: bad arguments"));
    *json = nullptr;
    std::string name = Missing(group) ? "" : group;
    if (!name.empty() && !dp420::ValidGroupName(name)) {
      return Fail(ctx, Status::InvalidArgument("invalid group name '" + name + "'"));
    }
    dp420::Json out;
    if (repo->remote) {
      RemoteLink link(ctx, repo);
      auto r = repo->remote->Admin("groups", {{"group", name}}, Control(ctx));
      if (!r.ok()) return Fail(ctx, r.status());
      out = std::move(r).value();
    } else {
      std::vector<dp420::GroupManifest> groups;
      std::vector<dp420::DamagedFile> damaged;
      Status s = dp420::ListGroupManifests(*repo->repo, name, &groups, &damaged);
      if (!s.ok()) return Fail(ctx, s);
      out = {{"groups", dp420::Json::array()}, {"damaged", dp420::Json::array()}};
      for (const auto& g : groups) out["groups"].push_back(g.ToJson());
      for (const auto& d : damaged) {
        out["damaged"].push_back({{"file", d.path}, {"problem", d.status.message()}});
      }
    }
    *json = CopyOut(out.dump());
    if (!*json) return Fail(ctx, Status::NoMemory("out of memory"));
    return Ok(ctx);
  });
}

}  // extern "C"
