#include "engine/net/retention_schedule.h"

#include <sys/stat.h>

#include <chrono>

#include "engine/core/forget.h"
#include "engine/net/auth.h"  // CheckPolicyFileSafe
#include "engine/net/volumes.h"
#include "io/file.h"

namespace dp420::net {

namespace {

constexpr const char* kRuleFields[] = {"keep_last",  "keep_hourly",  "keep_daily",
                                       "keep_weekly", "keep_monthly", "keep_yearly"};

Status ParseRule(const Json& j, const std::string& where, RetentionRule* rule) {
  if (!j.is_object()) return Status::InvalidArgument(where + ": not an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = it.key() == "client" || it.key() == "volume" || it.key() == "keep_within";
    for (const char* f : kRuleFields) known = known || it.key() == f;
    if (!known) return Status::InvalidArgument(where + ": unknown field '" + it.key() + "'");
  }
  if (!j.contains("client") || !j["client"].is_string() || !j.contains("volume") ||
      !j["volume"].is_string()) {
    return Status::InvalidArgument(where + ": needs \"client\" and \"volume\" (\"*\" for any)");
  }
  rule->client = j["client"].get<std::string>();
  rule->volume = j["volume"].get<std::string>();
  if (rule->client != "*" && !rule->client.empty() && !ValidVolumeName(rule->client)) {
    return Status::InvalidArgument(where + ": invalid client name '" + rule->client + "'");
  }
  if (rule->volume != "*" && !ValidVolumeName(rule->volume)) {
    return Status::InvalidArgument(where + ": invalid volume name '" + rule->volume + "'");
  }
  int* counts[] = {&rule->policy.last,   &rule->policy.hourly,  &rule->policy.daily,
                   &rule->policy.weekly, &rule->policy.monthly, &rule->policy.yearly};
  for (size_t i = 0; i < std::size(kRuleFields); ++i) {
    if (!j.contains(kRuleFields[i])) continue;
    const Json& v = j[kRuleFields[i]];
    if (!v.is_number_integer() || v.get<int64_t>() < -1 || v.get<int64_t>() > (1 << 30)) {
      return Status::InvalidArgument(where + ": " + kRuleFields[i] +
                                     " must be an integer from -1 (no limit) up");
    }
    *counts[i] = v.get<int>();
  }
  if (j.contains("keep_within")) {
    if (!j["keep_within"].is_string()) {
      return Status::InvalidArgument(where + ": keep_within must be a span such as \"7d\"");
    }
    auto span = ParseRetentionSpan(j["keep_within"].get<std::string>());
    if (!span.ok()) return Status::InvalidArgument(where + ": " + span.status().message());
    rule->policy.within = span.value();
  }
  if (rule->policy.Empty()) {
    return Status::InvalidArgument(where + ": no keep rule: it would forget every snapshot");
  }
  return rule->policy.Validate();
}

// Who owns repository volume `repo_volume` and what it calls it: a
// namespaced volume's client, else the client its newest manifest names
// ("" for a local backup).
void OwnerOf(const Repository& repo, const std::string& repo_volume, std::string* client,
             std::string* volume) {
  if (SplitNamespacedVolume(repo_volume, client, volume)) return;
  *volume = repo_volume;
  client->clear();
  std::vector<Manifest> list;
  std::vector<DamagedFile> damaged;
  if (repo.ListManifests(repo_volume, &list, &damaged).ok() && !list.empty()) {
    *client = list.back().client;
  }
}

}  // namespace

Result<RetentionSchedule> ParseRetentionSchedule(const std::string& text,
                                                 const std::string& what) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::InvalidArgument(what + ": not JSON");
  if (j.value("format", "") != "dp420-retention") {
    return Status::InvalidArgument(what + ": \"format\" must be \"dp420-retention\"");
  }
  if (!j.contains("format_version") || !j["format_version"].is_number_integer() ||
      j["format_version"].get<int64_t>() != 1) {
    return Status::Version(what + ": format_version must be 1");
  }
  RetentionSchedule s;
  if (j.contains("every_seconds")) {
    const Json& v = j["every_seconds"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 ||
        v.get<int64_t>() > int64_t(kRetentionEveryMax)) {
      return Status::InvalidArgument(what + ": every_seconds must be 1 to " +
                                     std::to_string(kRetentionEveryMax));
    }
    s.every = std::chrono::seconds(v.get<int64_t>());
  }
  if (!j.contains("rules") || !j["rules"].is_array() || j["rules"].empty() ||
      j["rules"].size() > kRetentionRulesMax) {
    return Status::InvalidArgument(what + ": \"rules\" must be a list of 1 to " +
                                   std::to_string(kRetentionRulesMax) + " rules");
  }
  for (size_t i = 0; i < j["rules"].size(); ++i) {
    RetentionRule rule;
    DP420_RETURN_IF_ERROR(
        ParseRule(j["rules"][i], what + ": rule " + std::to_string(i + 1), &rule));
    s.rules.push_back(std::move(rule));
  }
  return s;
}

Result<RetentionSchedule> LoadRetentionSchedule(const std::string& path) {
  DP420_ASSIGN_OR_RETURN(std::string text,
                         io::ReadFile(path, [&](const struct stat& st) {
                           return CheckPolicyFileSafe("retention file", path, st);
                         }));
  return ParseRetentionSchedule(text, path);
}

RetentionPassResult ApplyRetentionPass(const Repository& repo, const RetentionSchedule& schedule,
                                       Logger& log, const std::atomic<bool>* stop) {
  RetentionPassResult result;
  auto start = std::chrono::steady_clock::now();
  for (const auto& repo_volume : repo.ListVolumes()) {
    if (stop && stop->load()) break;
    std::string client, volume;
    OwnerOf(repo, repo_volume, &client, &volume);
    size_t index = 0;
    while (index < schedule.rules.size() && !schedule.rules[index].Matches(client, volume)) ++index;
    if (index == schedule.rules.size()) continue;
    ++result.volumes;
    ForgetOptions o;
    o.volume = repo_volume;
    o.policy = schedule.rules[index].policy;
    o.lock_wait = std::chrono::minutes(10);
    o.control.cancel = stop;
    auto r = RunForget(repo, o);
    if (!r.ok()) {
      log.Warn("retention_refused", {{"client", client}, {"volume", QualifiedName(repo_volume)},
                                     {"rule", index + 1}, {"error", r.status().ToString()}});
      continue;
    }
    for (const auto& it : r->items) {
      if (it.keep) continue;
      ++result.forgotten;
      log.Info("retention_forgot", {{"client", client}, {"volume", QualifiedName(repo_volume)},
                                    {"snapshot", it.snapshot_id}, {"sequence", it.sequence},
                                    {"created", it.created}, {"rule", index + 1}});
    }
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log.Info("retention_pass", {{"volumes", result.volumes}, {"forgotten", result.forgotten},
                              {"seconds", seconds}});
  return result;
}

}  // namespace dp420::net
