#include "engine/cli/lifecycle_cmd.h"

#include <cstdio>
#include <ctime>
#include <limits>

#include "engine/cli/progress.h"

namespace dp420cli {

namespace {

std::string UtcTime(uint64_t unix_ns) {
  time_t t = static_cast<time_t>(unix_ns / 1000000000ull);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The parts of `text` (may be null) between `sep`s, as a JSON array; a
// trailing separator ends the last part ("a\nb\n" is ["a", "b"]).
Json Split(const char* text, char sep) {
  Json parts = Json::array();
  std::string all = text ? text : "";
  for (size_t at = 0; at < all.size();) {
    size_t end = all.find(sep, at);
    if (end == std::string::npos) end = all.size();
    parts.push_back(all.substr(at, end - at));
    at = end + 1;
  }
  return parts;
}

Json ForgetJson(const dp420_forget_result_t& r, bool dry_run) {
  Json items = Json::array();
  for (size_t i = 0; i < r.item_count; ++i) {
    const auto& it = r.items[i];
    items.push_back({{"volume", it.volume}, {"snapshot_id", it.snapshot_id},
                     {"sequence", it.sequence}, {"created", UtcTime(it.created_unix_ns)},
                     {"keep", bool(it.keep)}, {"protected", bool(it.is_protected)},
                     {"reasons", Split(it.reasons, ',')}});
  }
  return {{"dry_run", dry_run}, {"forgotten", r.forgotten}, {"kept", r.kept},
          {"links_written", r.links_written}, {"leftovers_removed", r.leftovers_removed},
          {"snapshots", items}, {"errors", Split(r.errors, '\n')}};
}

void PrintForget(const dp420_forget_result_t& r, bool dry_run, bool prune_follows) {
  std::string volume;
  for (size_t i = 0; i < r.item_count; ++i) {
    const auto& it = r.items[i];
    if (volume != it.volume) {
      volume = it.volume;
      std::printf("volume %s:\n", volume.c_str());
    }
    const char* verdict = it.keep ? "keep  " : (dry_run ? "would forget" : "forget");
    std::printf("  %-12s %s  %4llu  %s  %s\n", verdict, it.snapshot_id,
                (unsigned long long)it.sequence, UtcTime(it.created_unix_ns).c_str(),
                it.reasons);
  }
  std::printf("%s %llu snapshot(s), kept %llu\n", dry_run ? "would forget" : "forgot",
              (unsigned long long)r.forgotten, (unsigned long long)r.kept);
  if (!dry_run && r.forgotten && !prune_follows) {
    std::printf("no data was deleted: `dp420 prune` reclaims what no snapshot uses\n");
  }
}

std::string Human(uint64_t bytes) {
  char buf[32];
  return dp420cli::HumanBytes(bytes, buf, sizeof(buf));
}

// Prune's progress: the bar while it repacks, and a line on stderr (always)
// when the delete phase waits for running backups, restores or verifies.
struct PruneProgress {
  dp420cli::ProgressBar bar;
  bool quiet;
};

void OnPruneProgress(void* user, const dp420_progress_t* p) {
  auto* pp = static_cast<PruneProgress*>(user);
  if (std::string(p->phase) == "wait") {
    pp->bar.Finish();
    if (!pp->quiet) {
      std::fprintf(stderr, "dp420 prune: waiting for running backups, restores and verifies to "
                           "finish before deleting\n");
    }
    return;
  }
  if (std::string(p->phase) == "repack") pp->bar.Update(p->phase, p->bytes_done, p->bytes_total);
}

void PrintPrune(const Json& r) {
  for (const auto& w : r["warnings"]) {
    std::fprintf(stderr, "warning: %s\n", w.get<std::string>().c_str());
  }
  bool dry = r["dry_run"].get<bool>();
  auto n = [&](const char* key) { return r[key].get<uint64_t>(); };
  std::printf("%s %llu unreferenced pack(s), %s %llu pack(s) (%llu record(s) copied into %llu "
              "new pack(s)); %s %s\n",
              dry ? "would delete" : "deleted", (unsigned long long)n("packs_deleted"),
              dry ? "would rewrite" : "rewrote", (unsigned long long)n("packs_rewritten"),
              (unsigned long long)n("records_copied"), (unsigned long long)n("packs_created"),
              dry ? "would free" : "freed", Human(n("bytes_freed")).c_str());
  std::printf("referenced: %s; still unused: %s", Human(n("bytes_referenced")).c_str(),
              Human(n("bytes_unused")).c_str());
  if (n("packs_in_progress")) {
    std::printf("; %llu pack(s) of unfinished backups kept",
                (unsigned long long)n("packs_in_progress"));
  }
  std::printf("\n");
}

Json PruneJson(const dp420_prune_result_t& r) {
  return {{"dry_run", bool(r.dry_run)},
          {"snapshots", r.snapshots},
          {"packs_before", r.packs_before},
          {"pack_bytes_before", r.pack_bytes_before},
          {"packs_in_progress", r.packs_in_progress},
          {"packs_deleted", r.packs_deleted},
          {"packs_rewritten", r.packs_rewritten},
          {"packs_created", r.packs_created},
          {"records_copied", r.records_copied},
          {"bytes_copied", r.bytes_copied},
          {"bytes_freed", r.bytes_freed},
          {"bytes_referenced", r.bytes_referenced},
          {"bytes_unused", r.bytes_unused},
          {"relocations_written", r.relocations_written},
          {"relocations_deleted", r.relocations_deleted},
          {"warnings", Split(r.warnings, '\n')}};
}

// Runs prune; the report as JSON in *out. The exit code.
int RunPruneCall(const Common& c, dp420_repo_t* repo, const PruneArgs& a, Json* out) {
  dp420_prune_opts_t o;
  dp420_prune_opts_init(&o);
  if (a.max_unused_percent >= 0) o.max_unused_percent = a.max_unused_percent;
  o.dry_run = a.dry_run;
  PruneProgress progress{dp420cli::ProgressBar(ShowProgress(c)), c.quiet};
  dp420_set_progress(g_ctx, OnPruneProgress, &progress);
  dp420_prune_result_t r{};
  r.struct_size = sizeof(r);
  int rc = dp420_prune(g_ctx, repo, &o, &r);
  progress.bar.Finish();
  dp420_set_progress(g_ctx, nullptr, nullptr);
  if (rc != 0) return Report(c, "prune", rc);
  *out = PruneJson(r);
  dp420_prune_result_free(&r);
  return kExitOk;
}

int CmdPrune(const Common& c, const PruneArgs& a) {
  return WithRepo(c, "prune", [&](dp420_repo_t* repo) -> int {
    Json r;
    int code = RunPruneCall(c, repo, a, &r);
    if (code != kExitOk) return code;
    if (c.json) {
      PrintJson(r);
    } else if (!c.quiet) {
      PrintPrune(r);
    }
    return kExitOk;
  });
}

void PrintStats(const Json& r) {
  std::printf("%-24s %-16s %6s %12s %12s %12s\n", "VOLUME", "SNAPSHOT", "SEQ", "REFERENCED",
              "UNIQUE", "SHARED");
  for (const auto& s : r["snapshots"]) {
    std::printf("%-24s %-16s %6llu %12s %12s %12s\n", s["volume"].get<std::string>().c_str(),
                s["snapshot_id"].get<std::string>().c_str(),
                (unsigned long long)s["sequence"].get<uint64_t>(),
                Human(s["bytes_referenced"].get<uint64_t>()).c_str(),
                Human(s["bytes_unique"].get<uint64_t>()).c_str(),
                Human(s["bytes_shared"].get<uint64_t>()).c_str());
  }
  std::printf("repository: %llu pack(s), %s; referenced %s; reclaimable by prune %s\n",
              (unsigned long long)r["packs"].get<uint64_t>(),
              Human(r["pack_bytes"].get<uint64_t>()).c_str(),
              Human(r["bytes_referenced"].get<uint64_t>()).c_str(),
              Human(r["bytes_reclaimable"].get<uint64_t>()).c_str());
}

Json StatsJson(const dp420_stats_result_t& r) {
  Json snapshots = Json::array();
  for (size_t i = 0; i < r.snapshot_count; ++i) {
    const auto& s = r.snapshots[i];
    snapshots.push_back({{"volume", s.volume}, {"snapshot_id", s.snapshot_id},
                         {"sequence", s.sequence}, {"created", s.created},
                         {"bytes_referenced", s.bytes_referenced},
                         {"bytes_unique", s.bytes_unique}, {"bytes_shared", s.bytes_shared}});
  }
  return {{"snapshots", snapshots}, {"packs", r.packs}, {"pack_bytes", r.pack_bytes},
          {"bytes_referenced", r.bytes_referenced}, {"bytes_reclaimable", r.bytes_reclaimable}};
}

int CmdStats(const Common& c, const std::string& volume) {
  return WithRepo(c, "stats", [&](dp420_repo_t* repo) -> int {
    dp420_stats_result_t r{};
    r.struct_size = sizeof(r);
    int rc = dp420_stats(g_ctx, repo, volume.empty() ? nullptr : volume.c_str(), &r);
    if (rc != 0) return Report(c, "stats", rc);
    Json j = StatsJson(r);
    dp420_stats_result_free(&r);
    if (c.json) {
      PrintJson(j);
    } else {
      PrintStats(j);
    }
    return kExitOk;
  });
}

int CmdForget(const Common& c, const ForgetArgs& a) {
  return WithRepo(c, "forget", [&](dp420_repo_t* repo) -> int {
    dp420_forget_opts_t o;
    dp420_forget_opts_init(&o);
    o.volume = a.volume.empty() ? nullptr : a.volume.c_str();
    o.keep_last = a.last;
    o.keep_hourly = a.hourly;
    o.keep_daily = a.daily;
    o.keep_weekly = a.weekly;
    o.keep_monthly = a.monthly;
    o.keep_yearly = a.yearly;
    o.keep_within = a.within.empty() ? nullptr : a.within.c_str();
    std::vector<const char*> ids;
    for (const auto& id : a.snapshots) ids.push_back(id.c_str());
    o.snapshots = ids.data();
    o.snapshot_count = ids.size();
    o.dry_run = a.dry_run;
    dp420_forget_result_t r{};
    r.struct_size = sizeof(r);
    int rc = dp420_forget(g_ctx, repo, &o, &r);
    if (rc != 0 && r.item_count == 0) {
      dp420_forget_result_free(&r);
      return Report(c, "forget", rc);
    }
    Json j = ForgetJson(r, a.dry_run);
    if (!c.json && !c.quiet) PrintForget(r, a.dry_run, a.prune);
    dp420_forget_result_free(&r);
    if (rc != 0) {
      if (c.json) PrintJson(j);
      std::fprintf(stderr, "dp420 forget: %s: %s\n", dp420_strerror(rc), dp420_errmsg(g_ctx));
      return ExitFor(rc);
    }
    int code = kExitOk;
    if (a.prune) {
      // --dry-run: what prune would do now (before anything was forgotten).
      Json pruned;
      code = RunPruneCall(c, repo, PruneArgs{a.max_unused_percent, a.dry_run}, &pruned);
      if (code == kExitOk) {
        j["prune"] = pruned;
        if (!c.json && !c.quiet) PrintPrune(pruned);
      }
    }
    if (c.json) PrintJson(j);
    return code;
  });
}


int CmdProtect(const Common& c, const ProtectArgs& a, bool protect) {
  const char* what = protect ? "protect" : "unprotect";
  return WithRepo(c, what, [&](dp420_repo_t* repo) -> int {
    char id[17] = {};
    int rc = dp420_protect(g_ctx, repo, a.volume.c_str(), a.snapshot.c_str(), protect, id);
    if (rc != 0) return Report(c, what, rc);
    if (c.json) {
      PrintJson(Json{{"volume", a.volume}, {"snapshot_id", id}, {"protected", protect}});
    } else if (!c.quiet) {
      std::printf("%s snapshot %s of %s\n", protect ? "protected" : "unprotected", id,
                  a.volume.c_str());
    }
    return kExitOk;
  });
}

}  // namespace

LifecycleCommands AddLifecycleCommands(CLI::App* app, Common* c, LifecycleArgs* a) {
  LifecycleCommands cmds;
  ForgetArgs* f = &a->forget;
  ProtectArgs* p = &a->protect;
  CLI::App** forget = &cmds.forget;
  CLI::App** protect = &cmds.protect;
  CLI::App** unprotect = &cmds.unprotect;
  *forget = app->add_subcommand(
      "forget", "Forget snapshots by a retention policy or by id (prune reclaims the space)");
  AddRepoOptions(*forget, c);
  (*forget)->add_option("--volume", f->volume, "Only this volume (required with --snapshot)");
  auto rule = CLI::Range(int32_t{-1}, std::numeric_limits<int32_t>::max());
  (*forget)->add_option("--keep-last", f->last, "Keep the N newest (-1: all)")->check(rule);
  (*forget)->add_option("--keep-hourly", f->hourly, "Keep the newest of each of the last N hours")
      ->check(rule);
  (*forget)->add_option("--keep-daily", f->daily, "Keep the newest of each of the last N days")
      ->check(rule);
  (*forget)->add_option("--keep-weekly", f->weekly, "Keep the newest of each of the last N ISO weeks")
      ->check(rule);
  (*forget)->add_option("--keep-monthly", f->monthly, "Keep the newest of each of the last N months")
      ->check(rule);
  (*forget)->add_option("--keep-yearly", f->yearly, "Keep the newest of each of the last N years")
      ->check(rule);
  (*forget)->add_option("--keep-within", f->within,
                        "Keep every snapshot within this span before the newest (7d, 1y6m, 36h)");
  (*forget)->add_option("--snapshot", f->snapshots, "Forget this snapshot (id or unique prefix)");
  (*forget)->add_flag("--dry-run", f->dry_run, "Decide and print; change nothing");
  (*forget)->add_flag("--prune", f->prune, "Then reclaim the space (as `dp420 prune`)");
  (*forget)->add_option("--max-unused", f->max_unused_percent,
                        "With --prune: repack a pack once more than this percentage of it is "
                        "unused (default 10)")
      ->check(CLI::Range(0.0, 100.0));
  for (auto** cmd : {protect, unprotect}) {
    bool on = cmd == protect;
    *cmd = app->add_subcommand(on ? "protect" : "unprotect",
                               on ? "Keep a snapshot from every retention policy"
                                  : "Let retention policies forget a snapshot again");
    AddRepoOptions(*cmd, c);
    (*cmd)->add_option("--volume", p->volume, "Volume name")->required();
    (*cmd)->add_option("--snapshot", p->snapshot, "Snapshot id or unique prefix")->required();
  }
  cmds.prune = app->add_subcommand(
      "prune", "Delete the packs no snapshot references and repack mostly unused ones");
  AddRepoOptions(cmds.prune, c);
  cmds.prune->add_option("--max-unused", a->prune.max_unused_percent,
                         "Repack a pack once more than this percentage of it is unused "
                         "(default 10)")
      ->check(CLI::Range(0.0, 100.0));
  cmds.prune->add_flag("--dry-run", a->prune.dry_run, "Report what would be done; change nothing");
  cmds.stats = app->add_subcommand(
      "stats", "Space per snapshot (referenced, held alone, shared) and reclaimable by prune");
  AddRepoOptions(cmds.stats, c);
  cmds.stats->add_option("--volume", a->stats_volume, "Only this volume's snapshots");
  return cmds;
}

bool RunLifecycleCommand(const Common& c, const LifecycleArgs& a, const LifecycleCommands& cmds,
                         int* exit_code) {
  if (*cmds.forget) *exit_code = CmdForget(c, a.forget);
  else if (*cmds.protect) *exit_code = CmdProtect(c, a.protect, true);
  else if (*cmds.unprotect) *exit_code = CmdProtect(c, a.protect, false);
  else if (*cmds.prune) *exit_code = CmdPrune(c, a.prune);
  else if (*cmds.stats) *exit_code = CmdStats(c, a.stats_volume);
  else return false;
  return true;
}

}  // namespace dp420cli
