#include "engine/net/admin.h"

#include <atomic>
#include <chrono>

#include "engine/core/forget.h"
#include "engine/core/group_repo.h"
#include "engine/core/prune.h"
#include "engine/net/group_serve.h"
#include "engine/net/volumes.h"

namespace dp420::net {

namespace {

using OJson = nlohmann::ordered_json;

// How long a forget over the network waits for a running backup's lock.
constexpr std::chrono::minutes kRemoteLockWait{10};

// The repository volume an admin's request names ("" stays "": every volume).
Result<std::string> RepoVolume(Request& rq, const std::string& requested) {
  if (requested.empty()) return std::string();
  DP420_RETURN_IF_ERROR(CheckTextField("volume", requested, kRequestStringMax));
  DP420_ASSIGN_OR_RETURN(ResolvedVolume v, ResolveVolume(rq.ctx.repo, rq.who, requested));
  if (!v.exists) return Status::NotFound("volume '" + v.shown + "' has no snapshots");
  return v.repo;
}

Status HandleForget(Request& rq, const Json& args) {
  DP420_ASSIGN_OR_RETURN(ForgetOptions o, ForgetRequestFromJson(args));
  DP420_ASSIGN_OR_RETURN(o.volume, RepoVolume(rq, o.volume));
  std::atomic<bool> cancel{false};
  o.control.cancel = &cancel;
  o.lock_wait = kRemoteLockWait;
  Result<ForgetReport> report = Status::Internal("forget did not run");
  DP420_RETURN_IF_ERROR(RunKeptAlive(rq, cancel, [&] {
    report = RunGuarded("forget", [&] { return RunForget(rq.ctx.repo, o); });
  }));
  DP420_RETURN_IF_ERROR(report.status());
  for (const auto& it : report->items) {
    if (it.keep || o.dry_run) continue;
    rq.ctx.log.Info("forgot", {{"client", rq.who.client}, {"volume", QualifiedName(it.volume)},
                               {"snapshot", it.snapshot_id}, {"sequence", it.sequence}});
  }
  Json j = ForgetReportToJson(report.value(), [](const std::string& v) { return QualifiedName(v); });
  return rq.Done(OJson::parse(j.dump()));
}

Status HandleProtect(Request& rq, const Json& args, bool protect) {
  std::string volume, snapshot;
  try {
    volume = args.at("volume").get<std::string>();
    snapshot = args.at("snapshot").get<std::string>();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("protect request: ") + e.what());
  }
  DP420_RETURN_IF_ERROR(CheckTextField("snapshot", snapshot, kRequestStringMax));
  if (volume.empty()) return Status::InvalidArgument("protect needs a volume");
  DP420_ASSIGN_OR_RETURN(std::string repo_volume, RepoVolume(rq, volume));
  DP420_ASSIGN_OR_RETURN(std::string id, SetProtected(rq.ctx.repo, repo_volume, snapshot, protect,
                                                      std::chrono::seconds(30)));
  rq.ctx.log.Info(protect ? "protected" : "unprotected",
                  {{"client", rq.who.client}, {"volume", volume}, {"snapshot", id}});
  return rq.Done({{"snapshot_id", id}, {"protected", protect}});
}

// "groups": the group snapshots of one group (args.group) or of all, with
// their damaged files. Admins only: a group names every member's node.
Status HandleGroups(Request& rq, const Json& args) {
  std::string group;
  if (args.contains("group")) {
    if (!args.at("group").is_string()) return Status::InvalidArgument("groups: group is not text");
    group = args.at("group").get<std::string>();
    if (!group.empty() && !ValidGroupName(group)) {
      return Status::InvalidArgument("invalid group name '" + EscapeBytes(group) + "'");
    }
  }
  std::vector<GroupManifest> groups;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(ListGroupManifests(rq.ctx.repo, group, &groups, &damaged));
  OJson out = OJson::object();
  out["groups"] = OJson::array();
  for (const auto& g : groups) out["groups"].push_back(OJson::parse(g.ToJson().dump()));
  out["damaged"] = OJson::array();
  for (const auto& d : damaged) {
    out["damaged"].push_back({{"file", d.path}, {"problem", d.status.message()}});
  }
  return rq.Done(out);
}

Status HandlePrune(Request& rq, const Json& args) {
  PruneOptions o;
  try {
    o.max_unused = args.at("max_unused").get<double>();
    o.dry_run = args.at("dry_run").get<bool>();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("prune request: ") + e.what());
  }
  if (!(o.max_unused >= 0 && o.max_unused <= 1)) {
    return Status::InvalidArgument("prune request: max_unused must be from 0 to 1");
  }
  std::atomic<bool> cancel{false};
  o.control.cancel = &cancel;
  Result<PruneReport> report = Status::Internal("prune did not run");
  DP420_RETURN_IF_ERROR(RunKeptAlive(rq, cancel, [&] {
    report = RunGuarded("prune", [&] { return RunPrune(rq.ctx.repo, o); });
  }));
  DP420_RETURN_IF_ERROR(report.status());
  rq.ctx.log.Info("pruned", {{"client", rq.who.client}, {"dry_run", o.dry_run},
                             {"packs_deleted", report->packs_deleted},
                             {"packs_rewritten", report->packs_rewritten},
                             {"bytes_freed", report->bytes_freed}});
  return rq.Done(OJson::parse(PruneReportToJson(report.value()).dump()));
}

Status HandleStats(Request& rq, const Json& args) {
  StatsOptions o;
  try {
    DP420_ASSIGN_OR_RETURN(o.volume, RepoVolume(rq, args.at("volume").get<std::string>()));
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("stats request: ") + e.what());
  }
  std::atomic<bool> cancel{false};
  o.control.cancel = &cancel;
  Result<StatsReport> report = Status::Internal("stats did not run");
  DP420_RETURN_IF_ERROR(RunKeptAlive(rq, cancel, [&] {
    report = RunGuarded("stats", [&] { return ComputeStats(rq.ctx.repo, o); });
  }));
  DP420_RETURN_IF_ERROR(report.status());
  Json j = StatsReportToJson(report.value(), [](const std::string& v) { return QualifiedName(v); });
  return rq.Done(OJson::parse(j.dump()));
}

}  // namespace

Status HandleAdmin(Request& rq) {
  AdminRequestMsg req;
  if (Status s = ParseAdminRequest(rq.frame.payload, &req); !s.ok()) {
    return Status::Network("malformed ADMIN request: " + s.message());
  }
  DP420_RETURN_IF_ERROR(CheckTextField("operation", req.op, kAdminOpMax));
  if (rq.who.role != "admin") {
    const bool group = req.op == "group-backup" || req.op == "groups";
    return Status::Make(Code::kPermission,
                        req.op + " needs an admin client: client '" + rq.who.client +
                            (group ? "' may back up its own volumes, not coordinate or list "
                                     "groups of every node's"
                                   : "' may add snapshots, never remove them"));
  }
  if (req.op == "forget") return HandleForget(rq, req.args);
  if (req.op == "prune") return HandlePrune(rq, req.args);
  if (req.op == "stats") return HandleStats(rq, req.args);
  if (req.op == "group-backup") return rq.ctx.groups->RunGroupBackup(rq, req.args);
  if (req.op == "groups") return HandleGroups(rq, req.args);
  if (req.op == "protect" || req.op == "unprotect") {
    return HandleProtect(rq, req.args, req.op == "protect");
  }
  return Status::InvalidArgument("unknown ADMIN operation '" + req.op + "'");
}

}  // namespace dp420::net
