// dp420: the command-line client of the dp420 C API (dp420/dp420.h only).
//
// Exit codes (README.md): 0 ok, 1 operation failed, 2 usage error,
// 3 damage found, 4 not found, 5 busy, 6 refused to overwrite,
// 7 unsupported format version, 130 interrupted.
#include <dp420/dp420.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/cli/progress.h"

namespace {

using Json = nlohmann::ordered_json;

enum Exit : int {
  kExitOk = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitDamage = 3,
  kExitNotFound = 4,
  kExitBusy = 5,
  kExitRefused = 6,
  kExitVersion = 7,
  kExitInterrupted = 130,
};

dp420_ctx_t* g_ctx = nullptr;

void OnSignal(int) { dp420_cancel(g_ctx); }

int ExitFor(int rc) {
  switch (-rc) {
    case DP420_OK: return kExitOk;
    case DP420_EINVAL: return kExitUsage;
    case DP420_ENOENT: return kExitNotFound;
    case DP420_ECORRUPT: return kExitDamage;
    case DP420_EBUSY: return kExitBusy;
    case DP420_EEXIST: return kExitRefused;
    case DP420_EVERSION: return kExitVersion;
    case DP420_ECANCELED: return kExitInterrupted;
    default: return kExitFailed;
  }
}

struct Common {
  std::string repo;
  bool json = false;
  bool quiet = false;
};

// Reports a failed call: message on stderr, and a JSON error document on
// stdout with --json. Returns the exit code.
int Report(const Common& c, const char* what, int rc) {
  std::string msg = dp420_errmsg(g_ctx);
  std::fprintf(stderr, "dp420 %s: %s: %s\n", what, dp420_strerror(rc), msg.c_str());
  if (c.json) {
    Json j = {{"error", {{"code", dp420_strerror(rc)}, {"exit_code", ExitFor(rc)},
                         {"message", msg}}}};
    std::cout << j.dump() << std::endl;
  }
  return ExitFor(rc);
}

bool ShowProgress(const Common& c) {
  return !c.quiet && !c.json && isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);
}

void OnProgress(void* user, const dp420_progress_t* p) {
  static_cast<dp420cli::ProgressBar*>(user)->Update(p->phase, p->bytes_done, p->bytes_total);
}

// Opens the repository, runs `body`, closes it.
template <typename Body>
int WithRepo(const Common& c, const char* what, Body&& body) {
  dp420_repo_t* repo = nullptr;
  int rc = dp420_repo_open(g_ctx, c.repo.c_str(), &repo);
  if (rc != 0) return Report(c, what, rc);
  int code = body(repo);
  dp420_repo_close(repo);
  return code;
}

double Mbps(uint64_t bytes, double secs) { return secs > 0 ? double(bytes) / secs / 1e6 : 0; }

int CmdInit(const Common& c) {
  int rc = dp420_repo_init(g_ctx, c.repo.c_str());
  if (rc != 0) return Report(c, "init", rc);
  if (c.json) {
    std::cout << Json{{"repository", c.repo}, {"created", true}}.dump() << std::endl;
  } else if (!c.quiet) {
    std::cout << "created dp420 repository at " << c.repo << std::endl;
  }
  return kExitOk;
}

struct BackupArgs {
  std::string volume, source;
  uint32_t block_size = 0, threads = 0;
};

int CmdBackup(const Common& c, const BackupArgs& a) {
  return WithRepo(c, "backup", [&](dp420_repo_t* repo) -> int {
    dp420_backup_opts_t o;
    dp420_backup_opts_init(&o);
    o.volume = a.volume.c_str();
    o.source = a.source.c_str();
    o.block_size = a.block_size;
    o.threads = a.threads;
    dp420_backup_result_t r{};
    r.struct_size = sizeof(r);
    dp420cli::ProgressBar bar(ShowProgress(c));
    dp420_set_progress(g_ctx, OnProgress, &bar);
    int rc = dp420_backup(g_ctx, repo, &o, &r);
    bar.Finish();
    if (rc != 0) return Report(c, "backup", rc);
    if (c.json) {
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
                {"registered_buffers", bool(r.registered_buffers)}};
      std::cout << j.dump() << std::endl;
    } else if (c.quiet) {
      std::cout << r.snapshot_id << std::endl;
    } else {
      char rd[32], wr[32];
      std::printf("snapshot %s of %s (%s, parent %s)\n", r.snapshot_id, a.volume.c_str(),
                  r.parent[0] ? "incremental" : "full", r.parent[0] ? r.parent : "none");
      std::printf("  read %s in %.2f s (%.0f MB/s), %llu of %llu blocks changed, %llu zero,"
                  " wrote %s\n",
                  dp420cli::HumanBytes(r.bytes_read, rd, sizeof(rd)), r.seconds,
                  Mbps(r.bytes_read, r.seconds), (unsigned long long)r.blocks_changed,
                  (unsigned long long)r.blocks_total, (unsigned long long)r.blocks_zero,
                  dp420cli::HumanBytes(r.bytes_written, wr, sizeof(wr)));
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
      std::cout << all.dump() << std::endl;
      return kExitOk;
    }
    std::printf("%-16s  %-12s  %4s  %-27s  %10s  %9s  %10s\n", "ID", "VOLUME", "SEQ", "CREATED",
                "SIZE", "CHANGED", "WRITTEN");
    for (const auto& m : all) {
      char size[32], written[32];
      std::printf("%-16s  %-12s  %4llu  %-27s  %10s  %9llu  %10s\n",
                  m["snapshot_id"].get<std::string>().c_str(),
                  m["volume"].get<std::string>().c_str(),
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
      std::cout << j.dump() << std::endl;
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

int CmdVerify(const Common& c, const VerifyArgs& a) {
  return WithRepo(c, "verify", [&](dp420_repo_t* repo) -> int {
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
    int rc = dp420_verify(g_ctx, repo, &o, &r);
    bar.Finish();
    if (rc != 0) return Report(c, "verify", rc);
    bool ok = r.problems_found == 0;
    if (c.json) {
      Json j = {{"ok", ok}, {"read_data", a.read_data},
                {"snapshots_checked", r.snapshots_checked}, {"packs_checked", r.packs_checked},
                {"pages_checked", r.pages_checked}, {"blocks_checked", r.blocks_checked},
                {"bytes_read", r.bytes_read}, {"unreferenced_packs", r.unreferenced_packs},
                {"problems", problems}, {"snapshots_broken", r.snapshots_broken}};
      std::cout << j.dump() << std::endl;
    } else {
      for (const auto& p : problems) {
        std::string snaps;
        for (const auto& s : p["snapshots"]) snaps += (snaps.empty() ? "" : ", ") + s.get<std::string>();
        std::printf("damaged: %s: %s%s%s\n", p["object"].get<std::string>().c_str(),
                    p["message"].get<std::string>().c_str(),
                    snaps.empty() ? "" : " — breaks snapshot(s) ", snaps.c_str());
      }
      if (!c.quiet || !ok) {
        std::printf("%s: %llu snapshot(s), %llu pack(s), %llu table page(s)%s checked; "
                    "%llu problem(s), %llu snapshot(s) broken",
                    ok ? "ok" : "DAMAGED", (unsigned long long)r.snapshots_checked,
                    (unsigned long long)r.packs_checked, (unsigned long long)r.pages_checked,
                    a.read_data ? ", every stored block re-hashed" : "",
                    (unsigned long long)r.problems_found,
                    (unsigned long long)r.snapshots_broken);
        if (r.unreferenced_packs) {
          std::printf("; %llu unreferenced pack(s) from interrupted backups",
                      (unsigned long long)r.unreferenced_packs);
        }
        std::printf("\n");
      }
    }
    return ok ? kExitOk : kExitDamage;
  });
}

void AddCommon(CLI::App* cmd, Common* c, bool repo_option) {
  if (repo_option) cmd->add_option("--repo", c->repo, "Repository directory")->required();
  cmd->add_flag("--json", c->json, "Print one JSON document on stdout");
  cmd->add_flag("-q,--quiet", c->quiet, "No progress bar, minimal output");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dp420: block-level incremental backup of volumes"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("dp420 ") + dp420_version_string());
  Common c;
  BackupArgs b;
  RestoreArgs r;
  VerifyArgs v;
  std::string list_volume;

  auto* init = app.add_subcommand("init", "Create a repository");
  init->add_option("REPO", c.repo, "Repository directory")->required();
  AddCommon(init, &c, false);

  auto* backup = app.add_subcommand("backup", "Back up a volume (full first, then incremental)");
  AddCommon(backup, &c, true);
  backup->add_option("--volume", b.volume, "Volume name")->required();
  backup->add_option("SOURCE", b.source, "Regular file or block device")->required();
  backup->add_option("--block-size", b.block_size, "Block size in bytes (power of two)");
  backup->add_option("--threads", b.threads, "Worker threads (default: CPUs available)");

  auto* snaps = app.add_subcommand("snapshots", "List snapshots");
  AddCommon(snaps, &c, true);
  snaps->add_option("--volume", list_volume, "Only this volume");

  auto* restore = app.add_subcommand("restore", "Restore a snapshot to a file or block device");
  AddCommon(restore, &c, true);
  restore->add_option("--volume", r.volume, "Volume name")->required();
  restore->add_option("--snapshot", r.snapshot, "Snapshot id, unique prefix, or latest");
  restore->add_option("TARGET", r.target, "File (written sparse) or block device")->required();
  restore->add_flag("--force", r.force, "Overwrite a non-empty file or a block device");
  restore->add_option("--threads", r.threads, "Worker threads");

  auto* verify = app.add_subcommand("verify", "Check the repository");
  AddCommon(verify, &c, true);
  verify->add_option("--volume", v.volume, "Only this volume");
  verify->add_option("--snapshot", v.snapshot, "Only this snapshot");
  verify->add_flag("--read-data", v.read_data, "Re-read and re-hash every stored block");

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
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  int code = kExitUsage;
  if (*init) code = CmdInit(c);
  if (*backup) code = CmdBackup(c, b);
  if (*snaps) code = CmdSnapshots(c, list_volume);
  if (*restore) code = CmdRestore(c, r);
  if (*verify) code = CmdVerify(c, v);
  dp420_ctx_free(g_ctx);
  return code;
}
