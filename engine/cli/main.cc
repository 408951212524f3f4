// dp420: the command-line client of the dp420 C API (dp420/dp420.h only).
//
// Exit codes (README.md):
//   0 ok                      1 the operation failed       2 usage error
//   3 damage found            4 not found                  5 busy (volume locked)
//   6 refused to overwrite    7 unsupported format version
//   8 network error (server unreachable, connection lost, protocol error)
//   9 clock skew against the server beyond --max-clock-skew
//  10 no space: a device is full, or a quota or limit of the server is reached
//  11 wrong key: a passphrase or key file that opens none of the key slots
//   130 interrupted
#include <dp420/dp420.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "engine/cli/cli.h"
#include "engine/cli/group_cmd.h"
#include "engine/cli/key_cmd.h"
#include "engine/cli/lifecycle_cmd.h"
#include "engine/cli/progress.h"

namespace {

using namespace dp420cli;  // NOLINT(google-build-using-namespace): the command's own helpers

// CLI11 check: a power of two (block sizes).
CLI::Validator PowerOfTwo() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        unsigned long long n = std::strtoull(text.c_str(), nullptr, 10);
        if (n != 0 && (n & (n - 1)) == 0) return "";
        return "Value " + text + " is not a power of two";
      },
      "POWER OF TWO");
}

// Says at once that the signal was seen: a read stuck in the kernel (a hung device or
// FUSE server) can hold the process long after it (docs/RELIABILITY.md). Not for serve,
// whose log (JSON lines with --json-log) records its stop itself.
volatile sig_atomic_t g_announce_signal = 1;
void OnSignal(int sig) {
  static const char kInt[] = "dp420: SIGINT received: stopping\n";
  static const char kTerm[] = "dp420: SIGTERM received: stopping\n";
  const char* text = sig == SIGINT ? kInt : kTerm;
  size_t len = sig == SIGINT ? sizeof(kInt) - 1 : sizeof(kTerm) - 1;
  if (g_announce_signal) {
    ssize_t written = write(STDERR_FILENO, text, len);
    (void)written;
  }
  dp420_cancel(g_ctx);
}

double Mbps(uint64_t bytes, double secs) { return secs > 0 ? double(bytes) / secs / 1e6 : 0; }

int CmdInit(const Common& c, const std::string& encryption) {
  dp420_init_opts_t o;
  dp420_init_opts_init(&o);
  o.encryption = encryption.c_str();
  int rc = dp420_repo_init_with(g_ctx, c.repo.c_str(), &o);
  if (rc != 0) return Report(c, "init", rc);
  if (c.json) {
    PrintJson(Json{{"repository", c.repo}, {"created", true}, {"encryption", encryption}});
  } else if (!c.quiet) {
    std::cout << "created dp420 repository at " << c.repo
              << (encryption == "none" ? " (not encrypted)" : " (encrypted, " + encryption + ")")
              << std::endl;
  }
  return kExitOk;
}

int CmdUpgrade(const Common& c) {
  uint32_t from = 0;
  uint64_t resealed = 0;
  int rc = dp420_repo_upgrade(g_ctx, c.repo.c_str(), &from, &resealed);
  if (rc != 0) return Report(c, "upgrade", rc);
  if (c.json) {
    PrintJson(Json{{"repository", c.repo}, {"from_version", from}, {"to_version", 3},
                   {"manifests_resealed", resealed}});
  } else if (!c.quiet) {
    if (from >= 3) {
      std::cout << c.repo << " is already at the current format (3)" << std::endl;
    } else {
      std::cout << "upgraded " << c.repo << " from format " << from << " to 3";
      if (from == 1) std::cout << ": " << resealed << " manifest(s) re-sealed with the repository key";
      std::cout << "; new backups may be compressed (--compression)" << std::endl;
    }
  }
  return kExitOk;
}

struct RepairArgs {
  std::string volume;
  bool dry_run = false, read_data = false;
};

void PrintRepair(const Json& r) {
  for (const auto& p : r["problems"]) std::printf("problem: %s\n", p.get<std::string>().c_str());
  bool dry = r["dry_run"].get<bool>();
  for (const auto& q : r["quarantined"]) {
    std::printf("%s %s: %s\n", dry ? "would quarantine" : "quarantined",
                q["file"].get<std::string>().c_str(), q["reason"].get<std::string>().c_str());
  }
  if (!r["quarantine_dir"].get<std::string>().empty()) {
    std::printf("moved to %s\n", r["quarantine_dir"].get<std::string>().c_str());
  }
  std::string newest = r["newest"].is_null() ? "no snapshot"
                                             : r["newest"]["snapshot_id"].get<std::string>();
  if (r["head_rewritten"].get<bool>()) {
    std::printf("%s the volume's newest snapshot: %s\n", dry ? "would make" : "made",
                newest.c_str());
  } else if (r["quarantined"].empty()) {
    std::printf("nothing to repair: the newest snapshot is %s\n", newest.c_str());
  }
}

int CmdRepair(const Common& c, const RepairArgs& a) {
  return WithRepo(c, "repair", [&](dp420_repo_t* repo) -> int {
    dp420_repair_opts_t o;
    dp420_repair_opts_init(&o);
    o.volume = a.volume.c_str();
    o.dry_run = a.dry_run;
    o.read_data = a.read_data;
    char* text = nullptr;
    int rc = dp420_repair(g_ctx, repo, &o, &text);
    if (rc != 0) return Report(c, "repair", rc);
    Json r = Json::parse(text);
    dp420_free(text);
    if (c.json) {
      PrintJson(r);
    } else if (!c.quiet) {
      PrintRepair(r);
    }
    return kExitOk;
  });
}

void PrintNetworkSummary(const dp420_backup_result_t& r) {
  char sent[32], zc[32], copied[32], resent[32];
  std::printf("  sent %s to the server (%s zero-copy, %s of it copied by the kernel),"
              " %s resent, %llu reconnect(s)\n",
              dp420cli::HumanBytes(r.bytes_sent, sent, sizeof(sent)),
              dp420cli::HumanBytes(r.bytes_sent_zerocopy, zc, sizeof(zc)),
              dp420cli::HumanBytes(r.bytes_zerocopy_copied, copied, sizeof(copied)),
              dp420cli::HumanBytes(r.bytes_resent, resent, sizeof(resent)),
              (unsigned long long)r.reconnects);
}

struct BackupArgs {
  std::string volume, source, time, compression;
  bool no_dedup = false;
  uint32_t block_size = 0, threads = 0;
  std::string snapshot_source = "auto", freeze_mount, pre_hook, post_hook;
  double max_freeze_s = 7, hook_timeout_s = 300;
};

// How the source was read: the `point_in_time` of --json.
Json PointInTimeJson(const dp420_backup_result_t& r) {
  Json j = {{"consistency", r.consistency}, {"method", r.snapshot_source}};
  if (std::string(r.snapshot_source) != "none") j["hold_ms"] = r.hold_ms;
  if (std::string(r.consistency) == "live") {
    j["source_changed"] = r.source_changed < 0 ? Json(nullptr) : Json(r.source_changed == 1);
  }
  return j;
}

// `--compression auto`: what it chose and why.
void PrintAutoCompression(const dp420_backup_result_t& r) {
  const Json m = Json::parse(r.compression_measured);
  std::printf("  compression %s, chosen by auto: %s", r.compression,
              m.value("reason", std::string("?")).c_str());
  if (m.contains("stepped_down_to")) {
    std::printf("; stepped down to %s (compressing held the workers back)",
                m["stepped_down_to"].get<std::string>().c_str());
  }
  std::printf("\n");
}

void PrintBackupJson(const Common& c, const BackupArgs& a, const dp420_backup_result_t& r) {
  Json j = {{"snapshot_id", r.snapshot_id},
            {"parent", r.parent[0] ? Json(r.parent) : Json(nullptr)},
            {"volume", a.volume},
            {"sequence", r.sequence},
            {"volume_size", r.volume_size},
            {"block_size", r.block_size},
            {"bytes_read", r.bytes_read},
            {"blocks_total", r.blocks_total},
            {"blocks_changed", r.blocks_changed},
            {"blocks_zero", r.blocks_zero},
            {"blocks_stored", r.blocks_stored},
            {"bytes_written", r.bytes_written},
            {"seconds", r.seconds},
            {"checksum_sha256", r.checksum_sha256},
            {"threads", r.threads},
            {"direct_io", bool(r.direct_io)},
            {"registered_buffers", bool(r.registered_buffers)},
            {"blocks_healed", r.blocks_healed},
            {"blocks_compressed", r.blocks_compressed},
            {"blocks_deduplicated", r.blocks_deduplicated},
            {"consistency", r.consistency},
            {"point_in_time", PointInTimeJson(r)},
            {"compression", r.compression},
            {"compression_auto", bool(r.compression_auto)}};
  if (r.compression_auto) j["compression_measured"] = Json::parse(r.compression_measured);
  j["warnings"] = r.warning && r.warning[0] ? Json::array({r.warning}) : Json::array();
  if (!c.remote.empty()) {
    j["bytes_sent"] = r.bytes_sent;
    j["bytes_sent_zerocopy"] = r.bytes_sent_zerocopy;
    j["bytes_zerocopy_copied"] = r.bytes_zerocopy_copied;
    j["bytes_resent"] = r.bytes_resent;
    j["reconnects"] = r.reconnects;
  }
  PrintJson(j);
}

void PrintBackupText(const Common& c, const BackupArgs& a, const dp420_backup_result_t& r) {
  char rd[32], wr[32];
  std::printf("snapshot %s of %s (%s, parent %s)\n", r.snapshot_id, a.volume.c_str(),
              r.parent[0] ? "incremental" : "full", r.parent[0] ? r.parent : "none");
  std::printf("  read %s in %.2f s (%.0f MB/s), %llu of %llu blocks changed, %llu zero,"
              " wrote %s\n",
              dp420cli::HumanBytes(r.bytes_read, rd, sizeof(rd)), r.seconds,
              Mbps(r.bytes_read, r.seconds), (unsigned long long)r.blocks_changed,
              (unsigned long long)r.blocks_total, (unsigned long long)r.blocks_zero,
              dp420cli::HumanBytes(r.bytes_written, wr, sizeof(wr)));
  if (std::string(r.consistency) == "live") {
    std::printf("  read live (%s)%s\n", r.snapshot_source,
                r.source_changed == 1 ? ": the source CHANGED while it was read; the snapshot "
                                        "may be torn"
                : r.source_changed < 0 ? ": whether it changed meanwhile is unknown"
                                       : ": it did not change while read");
  } else {
    std::printf("  point in time by %s (writes held %.1f ms)\n", r.snapshot_source, r.hold_ms);
  }
  if (r.blocks_deduplicated) {
    std::printf("  %llu changed blocks were stored already (this or another volume) and are "
                "shared, not stored again\n", (unsigned long long)r.blocks_deduplicated);
  }
  if (r.blocks_healed) {
    std::printf("  healed %llu blocks: their copies were missing from the repository and "
                "were stored again from the source\n", (unsigned long long)r.blocks_healed);
  }
  if (!c.remote.empty()) PrintNetworkSummary(r);
  if (r.compression_auto) PrintAutoCompression(r);
}

int CmdBackup(const Common& c, const BackupArgs& a) {
  if (!a.time.empty() && !c.remote.empty()) {
    return UsageError(c, "backup", "--time is for a local repository only: the server stamps a "
                                   "remote snapshot with its own clock");
  }
  if (!std::isfinite(a.max_freeze_s) || !std::isfinite(a.hook_timeout_s)) {
    return UsageError(c, "backup", "--max-freeze and --hook-timeout are numbers of seconds");
  }
  return WithRepo(c, "backup", [&](dp420_repo_t* repo) -> int {
    dp420_backup_opts_t o;
    dp420_backup_opts_init(&o);
    o.volume = a.volume.c_str();
    o.source = a.source.c_str();
    o.block_size = a.block_size;
    o.threads = a.threads;
    o.time = a.time.c_str();
    o.compression = a.compression.c_str();
    o.snapshot_source = a.snapshot_source.c_str();
    o.freeze_mount = a.freeze_mount.c_str();
    o.max_freeze_ms = static_cast<uint32_t>(std::lround(a.max_freeze_s * 1000));
    o.hook_timeout_ms = static_cast<uint32_t>(std::lround(a.hook_timeout_s * 1000));
    o.pre_hook = a.pre_hook.c_str();
    o.post_hook = a.post_hook.c_str();
    o.no_dedup = a.no_dedup ? 1 : 0;
    dp420_backup_result_t r{};
    r.struct_size = sizeof(r);
    dp420cli::ProgressBar bar(ShowProgress(c));
    dp420_set_progress(g_ctx, OnProgress, &bar);
    int rc = dp420_backup(g_ctx, repo, &o, &r);
    bar.Finish();
    if (rc != 0) return Report(c, "backup", rc);
    // Said also with --quiet and --json: the snapshot is whole, but the
    // operator should know why blocks were not shared.
    if (r.warning && r.warning[0]) std::fprintf(stderr, "dp420 backup: warning: %s\n", r.warning);
    if (c.json) {
      PrintBackupJson(c, a, r);
    } else if (c.quiet) {
      std::cout << r.snapshot_id << std::endl;
    } else {
      PrintBackupText(c, a, r);
    }
    return kExitOk;
  });
}

int CmdSnapshots(const Common& c, const std::string& volume) {
  return WithRepo(c, "snapshots", [&](dp420_repo_t* repo) -> int {
    dp420_snapshot_list_t* list = nullptr;
    int rc = dp420_snapshots(g_ctx, repo, volume.empty() ? nullptr : volume.c_str(), &list);
    if (rc != 0) return Report(c, "snapshots", rc);
    Json all = Json::array();
    for (size_t i = 0; i < dp420_snapshot_count(list); ++i) {
      all.push_back(Json::parse(dp420_snapshot_json(list, i)));
    }
    dp420_snapshot_list_free(list);
    if (c.json) {
      PrintJson(all);
      return kExitOk;
    }
    std::printf("%-16s  %-12s  %4s  %-27s  %10s  %9s  %10s\n", "ID", "VOLUME", "SEQ", "CREATED",
                "SIZE", "CHANGED", "WRITTEN");
    for (const auto& m : all) {
      if (m.value("damaged", false)) {
        std::printf("%-16s  %-12s  %4llu  DAMAGED: %s\n", m["snapshot_id"].get<std::string>().c_str(),
                    m.value("client_volume", m["volume"].get<std::string>()).c_str(),
                    (unsigned long long)m["sequence"].get<uint64_t>(),
                    m["problem"].get<std::string>().c_str());
        continue;
      }
      char size[32], written[32];
      std::printf("%-16s  %-12s  %4llu  %-27s  %10s  %9llu  %10s\n",
                  m["snapshot_id"].get<std::string>().c_str(),
                  m.value("client_volume", m["volume"].get<std::string>()).c_str(),
                  (unsigned long long)m["sequence"].get<uint64_t>(),
                  m["created"].get<std::string>().c_str(),
                  dp420cli::HumanBytes(m["volume_size"].get<uint64_t>(), size, sizeof(size)),
                  (unsigned long long)m["blocks_changed"].get<uint64_t>(),
                  dp420cli::HumanBytes(m["bytes_written"].get<uint64_t>(), written,
                                       sizeof(written)));
    }
    return kExitOk;
  });
}

struct RestoreArgs {
  std::string volume, snapshot = "latest", target;
  bool force = false;
  uint32_t threads = 0;
  uint64_t read_through = 0;
};

int CmdRestore(const Common& c, const RestoreArgs& a) {
  return WithRepo(c, "restore", [&](dp420_repo_t* repo) -> int {
    dp420_restore_opts_t o;
    dp420_restore_opts_init(&o);
    o.volume = a.volume.c_str();
    o.snapshot = a.snapshot.c_str();
    o.target = a.target.c_str();
    o.force = a.force;
    o.threads = a.threads;
    o.read_through = a.read_through;
    dp420_restore_result_t r{};
    r.struct_size = sizeof(r);
    dp420cli::ProgressBar bar(ShowProgress(c));
    dp420_set_progress(g_ctx, OnProgress, &bar);
    int rc = dp420_restore(g_ctx, repo, &o, &r);
    bar.Finish();
    if (rc != 0) return Report(c, "restore", rc);
    if (c.json) {
      Json j = {{"snapshot_id", r.snapshot_id}, {"target", a.target},
                {"volume_size", r.volume_size}, {"bytes_written", r.bytes_written},
                {"blocks_restored", r.blocks_restored}, {"blocks_zero", r.blocks_zero},
                {"checksum_sha256", r.checksum_sha256}, {"verified", true},
                {"seconds", r.seconds}};
      PrintJson(j);
    } else if (!c.quiet) {
      char sz[32];
      std::printf("restored snapshot %s to %s: %s in %.2f s (%.0f MB/s), every block verified\n",
                  r.snapshot_id, a.target.c_str(),
                  dp420cli::HumanBytes(r.volume_size, sz, sizeof(sz)), r.seconds,
                  Mbps(r.volume_size, r.seconds));
    }
    return kExitOk;
  });
}

struct VerifyArgs {
  std::string volume, snapshot;
  bool read_data = false;
  bool stored_only = false;
};

void OnProblem(void* user, const char* object, const char* message, const char* snapshots) {
  Json p = {{"object", object}, {"message", message}, {"snapshots", Json::array()}};
  std::string s = snapshots;
  for (size_t pos = 0; pos < s.size();) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    p["snapshots"].push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  static_cast<Json*>(user)->push_back(p);
}

int PrintVerify(const Common& c, const VerifyArgs& a, const dp420_verify_result_t& r,
                const Json& problems) {
  const bool ok = r.problems_found == 0;
  if (c.json) {
    Json j = {{"ok", ok}, {"read_data", a.read_data || a.stored_only},
              {"snapshots_checked", r.snapshots_checked}, {"packs_checked", r.packs_checked},
              {"pages_checked", r.pages_checked}, {"blocks_checked", r.blocks_checked},
              {"bytes_read", r.bytes_read}, {"unreferenced_packs", r.unreferenced_packs},
              {"problems", problems}, {"snapshots_broken", r.snapshots_broken}};
    if (a.stored_only) j["stored_only"] = true;
    PrintJson(j);
    return ok ? kExitOk : kExitDamage;
  }
  for (const auto& p : problems) {
    std::string snaps;
    for (const auto& s : p["snapshots"]) snaps += (snaps.empty() ? "" : ", ") + s.get<std::string>();
    std::printf("damaged: %s: %s%s%s\n", p["object"].get<std::string>().c_str(),
                p["message"].get<std::string>().c_str(),
                snaps.empty() ? "" : " — breaks snapshot(s) ", snaps.c_str());
  }
  if (c.quiet && ok) return kExitOk;
  if (a.stored_only) {
    std::printf("%s: %llu pack(s), %llu record(s) checked against their stored digests, without "
                "the key; %llu problem(s)\n",
                ok ? "ok" : "DAMAGED", (unsigned long long)r.packs_checked,
                (unsigned long long)r.blocks_checked, (unsigned long long)r.problems_found);
    return ok ? kExitOk : kExitDamage;
  }
  std::printf("%s: %llu snapshot(s), %llu pack(s), %llu table page(s)%s checked; "
              "%llu problem(s), %llu snapshot(s) broken",
              ok ? "ok" : "DAMAGED", (unsigned long long)r.snapshots_checked,
              (unsigned long long)r.packs_checked, (unsigned long long)r.pages_checked,
              a.read_data ? ", every stored block re-hashed" : "",
              (unsigned long long)r.problems_found, (unsigned long long)r.snapshots_broken);
  if (r.unreferenced_packs) {
    std::printf("; %llu pack(s) no snapshot references (`dp420 prune` reclaims them)",
                (unsigned long long)r.unreferenced_packs);
  }
  std::printf("\n");
  return ok ? kExitOk : kExitDamage;
}

// Runs one verify (keyed on `repo`, or --stored-only on the path when `repo` is
// null) with the progress bar and prints its report.
int RunVerify(const Common& c, const VerifyArgs& a, dp420_repo_t* repo) {
  Json problems = Json::array();
  dp420_verify_opts_t o;
  dp420_verify_opts_init(&o);
  o.volume = a.volume.empty() ? nullptr : a.volume.c_str();
  o.snapshot = a.snapshot.empty() ? nullptr : a.snapshot.c_str();
  o.read_data = a.read_data;
  o.on_problem = OnProblem;
  o.user = &problems;
  dp420_verify_result_t r{};
  r.struct_size = sizeof(r);
  dp420cli::ProgressBar bar(ShowProgress(c));
  dp420_set_progress(g_ctx, OnProgress, &bar);
  int rc = repo ? dp420_verify(g_ctx, repo, &o, &r)
                : dp420_verify_stored(g_ctx, c.repo.c_str(), &o, &r);
  bar.Finish();
  if (rc != 0) return Report(c, "verify", rc);
  return PrintVerify(c, a, r, problems);
}

int CmdVerify(const Common& c, const VerifyArgs& a) {
  if (!a.stored_only) {
    return WithRepo(c, "verify", [&](dp420_repo_t* repo) { return RunVerify(c, a, repo); });
  }
  // --stored-only: no key, no snapshot; every pack against its own trailer.
  if (!c.remote.empty() || c.repo.empty()) {
    return UsageError(c, "verify", "--stored-only checks a local repository (--repo)");
  }
  if (!a.volume.empty() || !a.snapshot.empty() || a.read_data) {
    return UsageError(c, "verify", "--stored-only reads every pack: it takes no --volume, "
                                   "--snapshot or --read-data");
  }
  return RunVerify(c, a, nullptr);
}

// ---- serve, client-add, client-remove, client-set ----

// The --max-* (client-add, client-set) or --default-max-* (serve) options:
// "" unchanged, "default" the server's default, else a number (0: no limit)
// with an optional K, M, G or T (powers of 1024).
struct LimitArgs {
  std::string max_volumes, max_bytes, max_backups, max_waiting, max_stripe_memory, max_sessions;
  bool any() const {
    return !(max_volumes + max_bytes + max_backups + max_waiting + max_stripe_memory +
             max_sessions).empty();
  }
};

// A --max-* value as dp420_client_limits2_t wants it; false when malformed.
bool ParseLimit(const std::string& text, int64_t* out) {
  if (text.empty()) return (*out = DP420_LIMIT_UNCHANGED), true;
  if (text == "default") return (*out = DP420_LIMIT_DEFAULT), true;
  size_t used = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(text, &used);
  } catch (const std::exception&) {
    return false;
  }
  if (text[0] == '-') return false;
  std::string unit = text.substr(used);
  int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30
            : unit == "T" ? 40 : -1;
  if (shift < 0 || n > (uint64_t(INT64_MAX) >> shift)) return false;
  *out = int64_t(n << shift);
  return true;
}

// `a`, the options --PREFIX-*, as limits; "" when well formed, else the
// usage error.
std::string ParseLimits(const LimitArgs& a, const std::string& prefix,
                        dp420_client_limits2_t* l) {
  dp420_client_limits2_init(l);
  std::tuple<const char*, const std::string*, int64_t*> fields[] = {
      {"volumes", &a.max_volumes, &l->max_volumes},
      {"bytes", &a.max_bytes, &l->max_bytes},
      {"backups", &a.max_backups, &l->max_backups},
      {"waiting", &a.max_waiting, &l->max_waiting},
      {"stripe-memory", &a.max_stripe_memory, &l->max_stripe_memory},
      {"sessions", &a.max_sessions, &l->max_sessions}};
  for (auto& [name, text, value] : fields) {
    if (!ParseLimit(*text, value)) {
      return "--" + prefix + "-" + name + " is '" + *text + "'; allowed a number from 0 (no "
             "limit) to " + std::to_string(INT64_MAX) + " with an optional K, M, G or T, or "
             "'default'";
    }
  }
  return "";
}

struct ServeArgs {
  std::string repo, listen, clients, retention;
  bool json_log = false;
  double heartbeat_seconds = 5;
  // 0: the server's default (server.h ServerOptions).
  uint32_t max_pending = 0, max_pending_per_source = 0, max_sessions = 0;
  double handshake_timeout_seconds = 0;
  LimitArgs client_defaults;  // --default-max-*
};

// "HOST:PORT" with the bound port: the host part of --listen as given.
void OnListening(void* user, uint16_t port) {
  const std::string& listen = static_cast<ServeArgs*>(user)->listen;
  size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  std::fprintf(stderr, "dp420 serve: listening on %s:%u\n", host.c_str(), unsigned(port));
  std::fflush(stderr);
}

int CmdServe(ServeArgs* a) {
  dp420_serve_opts_t o;
  dp420_serve_opts_init(&o);
  o.repo = a->repo.c_str();
  o.listen = a->listen.c_str();
  o.clients = a->clients.c_str();
  o.json_log = a->json_log;
  o.heartbeat_interval_ms = Millis(a->heartbeat_seconds);
  o.max_pending = a->max_pending;
  o.max_pending_per_source = a->max_pending_per_source;
  o.handshake_timeout_ms =
      a->handshake_timeout_seconds > 0 ? Millis(a->handshake_timeout_seconds) : 0;
  o.max_sessions = a->max_sessions;
  dp420_client_limits2_t defaults;
  std::string bad = ParseLimits(a->client_defaults, "default-max", &defaults);
  if (!bad.empty()) return UsageError(Common{}, "serve", bad);
  o.client_defaults = &defaults;
  o.retention_file = a->retention.empty() ? nullptr : a->retention.c_str();
  o.on_listening = OnListening;
  o.user = a;
  int rc = dp420_serve(g_ctx, &o);
  return rc == 0 ? kExitOk : Report(Common{}, "serve", rc);
}

void AddLimitOptions(CLI::App* cmd, LimitArgs* a, const std::string& prefix);

// docs/PROTOCOL.md, "Limits before authentication" and "Per-client limits".
void AddServeLimitOptions(CLI::App* serve, ServeArgs* a) {
  serve->add_option("--max-pending", a->max_pending,
                    "Unauthenticated connections at once; over it the oldest is closed "
                    "(default 256)")
      ->check(CLI::Range(1, 1 << 20));
  serve->add_option("--max-pending-per-source", a->max_pending_per_source,
                    "Of them from one IP address, at most --max-pending (default 64)")
      ->check(CLI::Range(1, 1 << 20));
  serve->add_option("--handshake-timeout", a->handshake_timeout_seconds,
                    "Seconds from accept to authenticated (default 5)")
      ->check(CLI::Range(0.1, 600.0));
  serve->add_option("--max-sessions", a->max_sessions,
                    "Authenticated connections at once, of all clients (default 1024)")
      ->check(CLI::Range(1, 1 << 20));
  auto* defaults = serve->add_option_group(
      "client defaults", "Limits of clients whose entry in the clients file does not set them "
                         "(a number, 0 for none)");
  AddLimitOptions(defaults, &a->client_defaults, "default-max");
}

CLI::App* AddServeCommand(CLI::App* app, ServeArgs* a) {
  auto* serve = app->add_subcommand("serve", "Serve a repository to backup agents over TCP");
  serve->add_option("--repo", a->repo, "Repository directory")->required();
  serve->add_option("--listen", a->listen, "Address to listen on, ADDR:PORT (port 0: any free)")
      ->required();
  serve->add_option("--clients", a->clients, "Clients file (dp420 client-add)")->required();
  serve->add_flag("--json-log", a->json_log, "Log one JSON object per line on stderr");
  serve->add_option("--retention", a->retention,
                    "Retention policies to apply on a schedule (docs/FORMAT.md, \"The retention "
                    "file\")");
  serve->add_option("--heartbeat-interval", a->heartbeat_seconds,
                    "Seconds between heartbeats; an agent is lost after 3 missed (default 5)")
      ->check(CLI::Range(0.01, 3600.0));
  AddServeLimitOptions(serve, a);
  return serve;
}

struct ClientArgs {
  std::string clients, name, key_out, role = "append";
  LimitArgs limits;
  bool any_limit() const { return limits.any(); }
};

// Sets the limits given on the command line; kExitOk when none were.
int SetClientLimits(const Common& c, const char* what, const ClientArgs& a) {
  if (!a.any_limit()) return kExitOk;
  dp420_client_limits2_t l;
  if (std::string bad = ParseLimits(a.limits, "max", &l); !bad.empty()) {
    return UsageError(c, what, bad);
  }
  int rc = dp420_client_set_limits2(g_ctx, a.clients.c_str(), a.name.c_str(), &l);
  return rc == 0 ? kExitOk : Report(c, what, rc);
}

int CmdClientSet(const Common& c, const ClientArgs& a) {
  if (!a.any_limit()) return UsageError(c, "client-set", "no limit given (--max-...)");
  int code = SetClientLimits(c, "client-set", a);
  if (code != kExitOk) return code;
  if (c.json) {
    PrintJson(Json{{"client", a.name}, {"clients", a.clients}, {"updated", true}});
  } else if (!c.quiet) {
    std::printf("updated the limits of client %s in %s\n", a.name.c_str(), a.clients.c_str());
  }
  return kExitOk;
}

int CmdClientAdd(const Common& c, const ClientArgs& a) {
  dp420_client_limits2_t check;
  if (std::string bad = ParseLimits(a.limits, "max", &check); !bad.empty()) {
    return UsageError(c, "client-add", bad);
  }
  int rc = dp420_client_add(g_ctx, a.clients.c_str(), a.name.c_str(), a.role.c_str(),
                            a.key_out.c_str());
  if (rc != 0) return Report(c, "client-add", rc);
  if (int code = SetClientLimits(c, "client-add", a); code != kExitOk) return code;
  if (c.json) {
    Json j = {{"client", a.name}, {"role", a.role}, {"clients", a.clients},
              {"key_file", a.key_out}};
    PrintJson(j);
  } else if (!c.quiet) {
    std::printf("registered client %s (%s) in %s; its key is in %s (mode 0600): copy it to "
                "the client and pass it with --key-file\n",
                a.name.c_str(), a.role.c_str(), a.clients.c_str(), a.key_out.c_str());
  }
  return kExitOk;
}

int CmdClientRemove(const Common& c, const ClientArgs& a) {
  int rc = dp420_client_remove(g_ctx, a.clients.c_str(), a.name.c_str());
  if (rc != 0) return Report(c, "client-remove", rc);
  if (c.json) {
    PrintJson(Json{{"client", a.name}, {"clients", a.clients}, {"removed", true}});
  } else if (!c.quiet) {
    std::printf("removed client %s from %s\n", a.name.c_str(), a.clients.c_str());
  }
  return kExitOk;
}

// The limit options as --PREFIX-volumes and so on (client-add and
// client-set: "max"; serve, for the defaults: "default-max").
void AddLimitOptions(CLI::App* cmd, LimitArgs* a, const std::string& prefix) {
  cmd->add_option("--" + prefix + "-volumes", a->max_volumes, "Volumes it may own (default 256)");
  cmd->add_option("--" + prefix + "-bytes", a->max_bytes,
                  "Quota: bytes its snapshots may have written, e.g. 500G (default: none)");
  cmd->add_option("--" + prefix + "-backups", a->max_backups,
                  "Backups at once, running or awaiting resume (default 8)");
  cmd->add_option("--" + prefix + "-waiting", a->max_waiting,
                  "Backups awaiting their agent's resume; the oldest is rolled back (default 2)");
  cmd->add_option("--" + prefix + "-stripe-memory", a->max_stripe_memory,
                  "Receive buffers its stripes may pin, e.g. 512M (default 512M)");
  cmd->add_option("--" + prefix + "-sessions", a->max_sessions,
                  "Authenticated connections at once, each stripe one (default 128)");
}

void AddClientCommands(CLI::App* app, Common* c, ClientArgs* a, CLI::App** add,
                       CLI::App** remove, CLI::App** set) {
  *add = app->add_subcommand("client-add", "Register a client with a new key");
  AddCommon(*add, c);
  (*add)->add_option("--clients", a->clients, "Clients file (created when absent)")->required();
  (*add)->add_option("--client", a->name, "Client name")->required();
  (*add)->add_option("--key-out", a->key_out, "New key file to write (mode 0600)")->required();
  (*add)->add_option("--role", a->role, "append (default) or admin")
      ->check(CLI::IsMember({"append", "admin"}));
  AddLimitOptions(*add, &a->limits, "max");
  *set = app->add_subcommand("client-set",
                             "Change a client's limits (a number, 0 for none, or 'default')");
  AddCommon(*set, c);
  (*set)->add_option("--clients", a->clients, "Clients file")->required();
  (*set)->add_option("--client", a->name, "Client name")->required();
  AddLimitOptions(*set, &a->limits, "max");
  *remove = app->add_subcommand("client-remove", "Unregister a client");
  AddCommon(*remove, c);
  (*remove)->add_option("--clients", a->clients, "Clients file")->required();
  (*remove)->add_option("--client", a->name, "Client name")->required();
}

// ---- bench ----

struct BenchArgs {
  std::string source, write_test;
  double seconds = 0;  // 0: the library's default
  bool quick = false;
};

// The bench reports measured points, not bytes: its own one-line bar.
class BenchProgress {
 public:
  explicit BenchProgress(bool enabled) : enabled_(enabled) {}
  void Update(const char* phase, uint64_t done, uint64_t total) {
    if (!enabled_) return;
    int width = 24;
    int filled = total ? int(double(done) / double(total) * width) : width;
    std::string bar(size_t(width), '.');
    for (int i = 0; i < filled && i < width; ++i) bar[size_t(i)] = '#';
    std::fprintf(stderr, "\r%-15s [%s] %llu/%llu points   ", phase, bar.c_str(),
                 (unsigned long long)done, (unsigned long long)total);
    std::fflush(stderr);
    drawn_ = true;
  }
  void Finish() {
    if (!drawn_) return;
    std::fprintf(stderr, "\r%80s\r", "");
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
};

void OnBenchProgress(void* user, const dp420_progress_t* p) {
  static_cast<BenchProgress*>(user)->Update(p->phase, p->bytes_done, p->bytes_total);
}

std::string BenchSize(uint64_t bytes) {
  if (bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

double Num(const Json& j, const char* key) { return j.at(key).get<double>(); }

void PrintBenchDevice(const Json& d) {
  char size[32];
  std::printf("device   %s (%s, %s, %s", d["path"].get<std::string>().c_str(),
              d["kind"].get<std::string>().c_str(),
              dp420cli::HumanBytes(d["size_bytes"].get<uint64_t>(), size, sizeof(size)),
              d["direct"].get<bool>() ? "O_DIRECT" : "buffered");
  if (d["direct"].get<bool>()) {
    std::printf(", alignment %u/%u", d["dio_mem_align_bytes"].get<unsigned>(),
                d["dio_offset_align_bytes"].get<unsigned>());
  }
  std::printf(", %s buffers)\n", d["registered_buffers"].get<bool>() ? "registered" : "plain");
  if (d.contains("note")) std::printf("  note: %s\n", d["note"].get<std::string>().c_str());
}

// The read or write points: one row per queue depth x request size.
void PrintBenchIo(const char* title, const Json& points, bool write) {
  std::printf("\n%s\n  %5s %9s %8s %9s %9s %9s %9s %9s %9s%s\n", title, "QD", "request",
              "GB/s", "IOPS", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us",
              write ? "  fdatasync ms" : "");
  for (const Json& p : points) {
    const Json& l = p["lat_us"];
    std::printf("  %5u %9s %8.3f %9.0f %9.1f %9.1f %9.1f %9.1f %9.1f", p["qd"].get<unsigned>(),
                BenchSize(p["request_bytes"].get<uint64_t>()).c_str(), Num(p, "gbps"),
                Num(p, "iops"), Num(l, "p50"), Num(l, "p90"), Num(l, "p99"), Num(l, "p999"),
                Num(l, "max"));
    if (write) std::printf("  %12.1f", Num(p, "fdatasync_ms"));
    std::printf("\n");
  }
}

void PrintBenchKernels(const Json& kernels, const Json& cpu) {
  std::printf("\nkernels (GB/s, one core, in cache, %s, %u CPUs)\n  %-8s",
              cpu["simd_level"].get<std::string>().c_str(),
              cpu["threads_available"].get<unsigned>(), "");
  std::vector<uint64_t> sizes;
  for (const Json& k : kernels) {
    uint64_t b = k["block_bytes"].get<uint64_t>();
    if (std::find(sizes.begin(), sizes.end(), b) == sizes.end()) sizes.push_back(b);
  }
  for (uint64_t b : sizes) std::printf(" %9s", BenchSize(b).c_str());
  for (const char* name : {"hash", "is_zero", "crc32c", "sha256"}) {
    std::printf("\n  %-8s", name);
    for (uint64_t b : sizes) {
      for (const Json& k : kernels) {
        if (k["kernel"] == name && k["block_bytes"].get<uint64_t>() == b) {
          std::printf(" %9.2f", Num(k, "gbps"));
        }
      }
    }
  }
  std::printf("\n");
}

void PrintBenchPipeline(const Json& pipeline) {
  std::printf("\npipeline (read QD 16 x 1 MiB per thread, 64 KiB blocks)\n"
              "  %7s  %-26s %8s %8s %10s %7s\n",
              "threads", "per block", "GB/s", "CPU s", "CPU s/GiB", "busy");
  for (const Json& p : pipeline) {
    bool sha = p["mode"] == "sha256";
    std::printf("  %7u  %-26s %8.3f %8.2f %10.3f %6.0f%%\n", p["threads"].get<unsigned>(),
                sha ? "zero, hash, diff, SHA-256" : "zero, hash, diff", Num(p, "gbps"),
                Num(p, "cpu_seconds"), Num(p, "cpu_seconds_per_gib"),
                100 * Num(p, "cores_busy"));
  }
}

void PrintBenchVerdict(const Json& v, bool first) {
  std::printf("%sverdict\n  limit (incremental): %s\n", first ? "" : "\n",
              v["limit"].get<std::string>().c_str());
  if (v.contains("recommended_block_size")) {
    std::printf("  limit (full backup): %s\n  recommended: --block-size %llu (%s) "
                "--threads %u\n",
                v["full_backup_limit"].get<std::string>().c_str(),
                (unsigned long long)v["recommended_block_size"].get<uint64_t>(),
                BenchSize(v["recommended_block_size"].get<uint64_t>()).c_str(),
                v["recommended_threads"].get<unsigned>());
  }
  std::printf("  %s\n", v["reason"].get<std::string>().c_str());
}

void PrintBench(const Json& j, bool quiet) {
  if (!quiet) {
    PrintBenchDevice(j["device"]);
    PrintBenchIo("read (sequential from a random offset)", j["read"], false);
    PrintBenchKernels(j["kernels"], j["cpu"]);
    PrintBenchPipeline(j["pipeline"]);
    if (j.contains("write")) {
      std::string title = "write (" + j["write_file"]["path"].get<std::string>() +
                          (j["write_file"]["direct"].get<bool>() ? ", O_DIRECT" : ", buffered") +
                          "; GB/s include the fdatasync; file deleted)";
      PrintBenchIo(title.c_str(), j["write"], true);
    }
  }
  PrintBenchVerdict(j["verdict"], quiet);
}

int CmdBench(const Common& c, const BenchArgs& a) {
  dp420_bench_opts_t o;
  dp420_bench_opts_init(&o);
  o.source = a.source.c_str();
  o.write_test = a.write_test.empty() ? nullptr : a.write_test.c_str();
  if (a.seconds > 0) o.seconds_per_point = a.seconds;
  o.quick = a.quick;
  BenchProgress bar(ShowProgress(c));
  dp420_set_progress(g_ctx, OnBenchProgress, &bar);
  char* report = nullptr;
  int rc = dp420_bench(g_ctx, &o, &report);
  bar.Finish();
  if (rc != 0) return Report(c, "bench", rc);
  Json j = Json::parse(report);
  dp420_free(report);
  if (c.json) {
    PrintJson(j);
  } else {
    PrintBench(j, c.quiet);
  }
  return kExitOk;
}

CLI::App* AddBenchCommand(CLI::App* app, Common* c, BenchArgs* a) {
  auto* bench = app->add_subcommand("bench", "Measure the device and CPU (SOURCE is only read)");
  AddCommon(bench, c);
  bench->add_option("SOURCE", a->source, "Regular file or block device (opened read-only)")
      ->required();
  bench->add_option("--write-test", a->write_test,
                    "Also measure writes on this new scratch file (must not exist; deleted)");
  bench->add_option("--seconds", a->seconds, "Time bound of each measured point (default 0.5)")
      ->check(CLI::Range(0.001, 60.0));
  bench->add_flag("--quick", a->quick, "Small grid: QD 1, 32 x 64 KiB, 1 MiB");
  return bench;
}

// A key or passphrase on the command line would show in ps(1) and shell histories: say so
// instead of a generic "unexpected argument".
bool KeyOnCommandLine(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--key" || arg.rfind("--key=", 0) == 0) {
      std::fprintf(stderr, "dp420: a key is never accepted on the command line: pass its file "
                           "with --key-file KEYFILE or DP420_KEY_FILE\n");
      return true;
    }
    if (arg == "--passphrase" || arg.rfind("--passphrase=", 0) == 0) {
      std::fprintf(stderr, "dp420: a passphrase is never accepted on the command line: pass its "
                           "file with --passphrase-file FILE or DP420_PASSPHRASE_FILE\n");
      return true;
    }
  }
  return false;
}

// Parses the command line and runs its command; returns the exit code.
int Run(int argc, char** argv) {
  // Every command may hold secrets (the repository's key, client keys, session
  // keys): no core dump and no ptrace by other processes of the same user.
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  CLI::App app{"dp420: block-level incremental backup of volumes"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dp420 ") + dp420_version_string());
  Common c;
  BackupArgs b;
  RestoreArgs r;
  VerifyArgs v;
  BenchArgs bn;
  ServeArgs sv;
  ClientArgs cl;
  std::string list_volume;

  auto* init = app.add_subcommand("init", "Create a repository");
  init->add_option("REPO", c.repo, "Repository directory")->required();
  std::string encryption = "aes-256-gcm";
  init->add_option("--encryption", encryption,
                   "aes-256-gcm (default): blocks, tables and manifests encrypted at rest under "
                   "a master key that a passphrase or key file opens; none: stored in the clear")
      ->check(CLI::IsMember({"aes-256-gcm", "none"}));
  AddRepoKeyOptions(init, &c);
  AddCommon(init, &c);

  auto* upgrade = app.add_subcommand(
      "upgrade", "Bring a repository of format 1 or 2 to format 3 (compression; packs of "
                 "version 2)");
  upgrade->add_option("REPO", c.repo, "Repository directory")->required();
  AddCommon(upgrade, &c);

  RepairArgs rp;
  auto* repair = app.add_subcommand(
      "repair", "Roll a volume back to the newest snapshot its data supports, quarantining the rest");
  AddRepoOptions(repair, &c);
  repair->add_option("--volume", rp.volume, "Volume name")->required();
  repair->add_flag("--dry-run", rp.dry_run, "Report what would be done; change nothing");
  repair->add_flag("--read-data", rp.read_data, "Re-read the blocks of the candidates too");

  auto* backup = app.add_subcommand("backup", "Back up a volume (full first, then incremental)");
  AddRepoOptions(backup, &c);
  backup->add_option("--volume", b.volume, "Volume name")->required();
  backup->add_option("SOURCE", b.source, "Regular file or block device")->required();
  backup->add_option("--block-size", b.block_size, "Block size in bytes (power of two)")
      ->check(CLI::Range(uint32_t{DP420_MIN_BLOCK_SIZE}, uint32_t{DP420_MAX_BLOCK_SIZE}) &
              PowerOfTwo());
  backup->add_option("--threads", b.threads, "Worker threads (default: CPUs available)")
      ->check(CLI::Range(1u, unsigned{DP420_MAX_THREADS}));
  backup->add_option("--time", b.time,
                     "The snapshot's time instead of now, RFC 3339 (2026-12-01T03:00:00Z); "
                     "local repositories only, not before the volume's newest snapshot");
  backup->add_option("--compression", b.compression,
                     "auto (default: the strongest codec that keeps up with the device, by "
                     "measurement), off, lz4[:ACCEL] or zstd[:LEVEL]: changed blocks stored "
                     "compressed when it saves a 4 KiB slot (format-3 repositories; auto is off "
                     "with --remote)");
  backup->add_option("--snapshot-source", b.snapshot_source,
                     "How the source is read at one point in time: auto (default), reflink, "
                     "fsfreeze, hook, or none (the live source)")
      ->check(CLI::IsMember({"auto", "reflink", "fsfreeze", "hook", "none"}));
  backup->add_option("--freeze-mount", b.freeze_mount,
                     "fsfreeze: the mount point of the file system on the source block device");
  backup->add_option("--max-freeze", b.max_freeze_s,
                     "Longest freeze in seconds, whatever hangs (default 7)")
      ->check(CLI::Range(0.001, 600.0));
  backup->add_option("--pre-hook", b.pre_hook,
                     "Command (/bin/sh -c) run before the point in time is taken");
  backup->add_option("--post-hook", b.post_hook,
                     "Command run after it (always, once the pre hook ran)");
  backup->add_option("--hook-timeout", b.hook_timeout_s,
                     "Seconds each hook may run before it is killed (default 300)")
      ->check(CLI::Range(0.001, 86400.0));
  backup->add_flag("--no-dedup", b.no_dedup,
                   "Store changed blocks even when another snapshot (of any volume) stores "
                   "them already, and add nothing to the dedup index");

  auto* snaps = app.add_subcommand("snapshots", "List snapshots");
  AddRepoOptions(snaps, &c);
  auto* by_volume = snaps->add_option("--volume", list_volume, "Only this volume");
  std::string list_group;
  bool list_groups = false;
  auto* by_group = snaps->add_option("--group", list_group,
                                     "The group snapshots of this consistency group");
  auto* all_groups = snaps->add_flag("--groups", list_groups, "The group snapshots of every group");
  by_group->excludes(by_volume)->excludes(all_groups);
  all_groups->excludes(by_volume);

  auto* restore = app.add_subcommand("restore", "Restore a snapshot to a file or block device");
  AddRepoOptions(restore, &c);
  restore->add_option("--volume", r.volume, "Volume name")->required();
  restore->add_option("--snapshot", r.snapshot, "Snapshot id, unique prefix, or latest");
  restore->add_option("TARGET", r.target, "File (written sparse) or block device")->required();
  restore->add_flag("--force", r.force, "Overwrite a non-empty file or a block device");
  restore->add_option("--threads", r.threads, "Worker threads (default: CPUs available)")
      ->check(CLI::Range(1u, unsigned{DP420_MAX_THREADS}));
  restore->add_option("--read-through", r.read_through,
                      "Stale pack bytes a read may run through to save a request, for disks "
                      "that seek (default 0; at most 4194304)")
      ->check(CLI::Range(uint64_t{0}, uint64_t{DP420_MAX_READ_THROUGH}));

  auto* verify = app.add_subcommand("verify", "Check the repository");
  AddRepoOptions(verify, &c);
  verify->add_option("--volume", v.volume, "Only this volume");
  verify->add_option("--snapshot", v.snapshot, "Only this snapshot");
  verify->add_flag("--read-data", v.read_data, "Re-read and re-hash every stored block");
  verify->add_flag("--stored-only", v.stored_only,
                   "Without the key: read every pack back against its own trailer (digests of "
                   "the stored bytes); says nothing of snapshots");
  LifecycleArgs lc;
  LifecycleCommands lifecycle = AddLifecycleCommands(&app, &c, &lc);
  auto* bench = AddBenchCommand(&app, &c, &bn);
  auto* serve = AddServeCommand(&app, &sv);
  CLI::App* client_add = nullptr;
  CLI::App* client_remove = nullptr;
  CLI::App* client_set = nullptr;
  AddClientCommands(&app, &c, &cl, &client_add, &client_remove, &client_set);
  KeyArgs ka;
  KeyCommands keys = AddKeyCommands(&app, &c, &ka);
  GroupArgs ga;
  GroupCommands groups = AddGroupCommands(&app, &c, &ga);

  if (KeyOnCommandLine(argc, argv)) return kExitUsage;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  g_ctx = dp420_ctx_new();
  if (!g_ctx) return kExitFailed;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  g_announce_signal = *serve || *groups.agent ? 0 : 1;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  int code = kExitUsage;
  if (std::string why = ApplyKeySource({c.passphrase_file, c.repo_key_file}); !why.empty()) {
    std::fprintf(stderr, "dp420: %s\n", why.c_str());
    dp420_ctx_free(g_ctx);
    return kExitUsage;
  }
  if (*init) code = CmdInit(c, encryption);
  if (*upgrade) code = CmdUpgrade(c);
  if (*repair) code = CmdRepair(c, rp);
  if (*backup) code = CmdBackup(c, b);
  if (*snaps) {
    code = !list_group.empty() || list_groups ? CmdGroupSnapshots(c, list_group)
                                              : CmdSnapshots(c, list_volume);
  }
  (void)RunGroupCommand(c, ga, groups, &code);
  if (*restore) code = CmdRestore(c, r);
  if (*verify) code = CmdVerify(c, v);
  (void)RunLifecycleCommand(c, lc, lifecycle, &code);
  (void)RunKeyCommand(c, ka, keys, &code);
  if (*bench) code = CmdBench(c, bn);
  if (*serve) code = CmdServe(&sv);
  if (*client_add) code = CmdClientAdd(c, cl);
  if (*client_remove) code = CmdClientRemove(c, cl);
  if (*client_set) code = CmdClientSet(c, cl);
  dp420_ctx_free(g_ctx);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // An exception that leaves a command (a bug) ends it with exit code 1 and
  // its message on stderr, not with std::terminate's abort.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp420: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "dp420: internal error: unknown exception\n");
  }
  return kExitFailed;
}
