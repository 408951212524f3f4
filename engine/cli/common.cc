#include "engine/cli/cli.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "engine/cli/progress.h"

namespace dp420cli {

dp420_ctx_t* g_ctx = nullptr;

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
    case DP420_ENET: return kExitNetwork;
    case DP420_ESKEW: return kExitClockSkew;
    case DP420_ENOSPC: return kExitNoSpace;
    case DP420_EKEY: return kExitBadKey;
    default: return kExitFailed;
  }
}


// Seconds from the command line as milliseconds, at least 1.
uint32_t Millis(double seconds) {
  return uint32_t(std::max(1.0, std::min(std::round(seconds * 1000), 4e9)));
}

void PrintJson(const Json& j) {
  std::cout << j.dump(-1, ' ', false, Json::error_handler_t::replace) << std::endl;
}

// Reports a failed call: message on stderr, and a JSON error document on
// stdout with --json. Returns the exit code.
int Report(const Common& c, const char* what, int rc) {
  std::string msg = dp420_errmsg(g_ctx);
  std::fprintf(stderr, "dp420 %s: %s: %s\n", what, dp420_strerror(rc), msg.c_str());
  if (c.json) {
    Json j = {{"error", {{"code", dp420_strerror(rc)}, {"exit_code", ExitFor(rc)},
                         {"message", msg}}}};
    PrintJson(j);
  }
  return ExitFor(rc);
}

bool ShowProgress(const Common& c) {
  return !c.quiet && !c.json && isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);
}

void OnProgress(void* user, const dp420_progress_t* p) {
  static_cast<dp420cli::ProgressBar*>(user)->Update(p->phase, p->bytes_done, p->bytes_total);
}

// A usage error found after parsing: message on stderr (and the JSON error
// document with --json). Returns kExitUsage.
int UsageError(const Common& c, const char* what, const std::string& msg) {
  std::fprintf(stderr, "dp420 %s: %s\nRun with --help for more information.\n", what,
               msg.c_str());
  if (c.json) {
    Json j = {{"error", {{"code", "usage"}, {"exit_code", kExitUsage}, {"message", msg}}}};
    PrintJson(j);
  }
  return kExitUsage;
}

// Exactly one of --repo and --remote; the remote options only with --remote.
// Returns "" when the choice is valid, else what is wrong.
std::string CheckRepoChoice(const Common& c) {
  if (!c.repo.empty() && !c.remote.empty()) {
    return "--repo and --remote exclude each other: give one of them";
  }
  if (c.repo.empty() && c.remote.empty()) {
    return "give --repo REPO, or --remote HOST:PORT --client NAME --key-file KEYFILE";
  }
  if (c.remote.empty()) {
    if (!c.client.empty() || !c.key_file.empty()) return "--client and --key-file need --remote";
    return "";
  }
  if (c.client.empty()) return "--remote needs --client NAME";
  // The key of an encrypted repository opens a local one; a served repository is not
  // encrypted, and a secret must never look used when it is not.
  if (!c.passphrase_file.empty() || !c.repo_key_file.empty()) {
    return "--passphrase-file and --repo-key-file open a local repository (--repo); a "
           "repository served by `dp420 serve` is not encrypted: leave them out with --remote";
  }
  const char* env = std::getenv("DP420_KEY_FILE");
  if (c.key_file.empty() && (env == nullptr || *env == '\0')) {
    return "--remote needs --key-file KEYFILE (or DP420_KEY_FILE in the environment); "
           "a key is never accepted on the command line";
  }
  return "";
}

int OpenRepo(const Common& c, dp420_repo_t** repo) {
  if (c.remote.empty()) return dp420_repo_open(g_ctx, c.repo.c_str(), repo);
  dp420_remote_opts_t o;
  FillRemoteOpts(c, &o);
  return dp420_repo_connect(g_ctx, &o, repo);
}

void FillRemoteOpts(const Common& c, dp420_remote_opts_t* o) {
  dp420_remote_opts_init(o);
  o->address = c.remote.c_str();
  o->client = c.client.c_str();
  o->key_file = c.key_file.empty() ? nullptr : c.key_file.c_str();
  o->heartbeat_interval_ms = Millis(c.heartbeat_seconds);
  o->max_clock_skew_ms = c.max_clock_skew_ms;
  o->retry_ms = Millis(c.retry_seconds);
  o->cache_dir = c.cache_dir.empty() ? nullptr : c.cache_dir.c_str();
}

void AddCommon(CLI::App* cmd, Common* c) {
  cmd->add_flag("--json", c->json, "Print one JSON document on stdout");
  cmd->add_flag("-q,--quiet", c->quiet, "No progress bar, minimal output");
}

// --repo, or --remote with the client's credentials and the network knobs
// (checked by CheckRepoChoice: the two exclude each other).
void AddRepoKeyOptions(CLI::App* cmd, Common* c) {
  cmd->add_option("--passphrase-file", c->passphrase_file,
                  "File holding the passphrase of an encrypted repository (default: "
                  "$DP420_PASSPHRASE_FILE, else asked on a terminal)");
  cmd->add_option("--repo-key-file", c->repo_key_file,
                  "Key file of an encrypted repository, mode 0600 (default: $DP420_REPO_KEY_FILE)");
}

void AddRepoOptions(CLI::App* cmd, Common* c) {
  AddCommon(cmd, c);
  cmd->add_option("--repo", c->repo, "Repository directory (or --remote)");
  AddRepoKeyOptions(cmd, c);
  auto* g = cmd->add_option_group("remote", "A repository served by `dp420 serve`");
  g->add_option("--remote", c->remote,
                "Server address HOST:PORT (instead of --repo), or several paths to the same "
                "server, HOST:PORT,HOST:PORT...: one that fails gives way to the next, also in "
                "the middle of a backup");
  g->add_option("--client", c->client, "Client name registered on the server");
  g->add_option("--key-file", c->key_file,
                "The client's key file, mode 0600 (default: $DP420_KEY_FILE)");
  g->add_option("--max-clock-skew", c->max_clock_skew_ms,
                "Largest clock offset from the server a backup accepts, in ms (default 500)")
      ->check(CLI::Range(1u, 3600000u));
  g->add_option("--heartbeat-interval", c->heartbeat_seconds,
                "Seconds between heartbeats; the peer is lost after 3 missed (default 5)")
      ->check(CLI::Range(0.01, 3600.0));
  g->add_option("--retry-for", c->retry_seconds,
                "Seconds to keep reconnecting after a lost connection (default 60)")
      ->check(CLI::Range(0.0, 86400.0));
  g->add_option("--cache-dir", c->cache_dir,
                "Where the agent keeps the parent's block ids (default: $DP420_CACHE_DIR, "
                "/var/cache/dp420 as root, else ~/.cache/dp420)");
}

}  // namespace dp420cli
