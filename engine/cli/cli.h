// What the dp420 command's source files share: exit codes, the options
// every command takes, and how a command opens the repository and reports
// a failure. The commands are thin clients of the C API (dp420/dp420.h).
//
// Thread safety: the command runs on one thread; g_ctx is its context.
#pragma once

#include <dp420/dp420.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace dp420cli {

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
  kExitNetwork = 8,
  kExitClockSkew = 9,
  kExitNoSpace = 10,
  kExitBadKey = 11,
  kExitInterrupted = 130,
};

// The C API context of this process.
extern dp420_ctx_t* g_ctx;

// The exit code for a C API return code.
int ExitFor(int rc);

struct Common {
  std::string repo;
  bool json = false;
  bool quiet = false;
  // A repository served by `dp420 serve` instead of --repo.
  std::string remote;        // HOST:PORT
  std::string client;
  std::string key_file;      // "" = $DP420_KEY_FILE
  uint32_t max_clock_skew_ms = 500;
  double heartbeat_seconds = 5;
  double retry_seconds = 60;
  std::string cache_dir;     // "" = $DP420_CACHE_DIR or the default
  // What opens an encrypted repository (key_cmd.h, ApplyKeySource).
  std::string passphrase_file;  // "" = $DP420_PASSPHRASE_FILE
  std::string repo_key_file;    // "" = $DP420_REPO_KEY_FILE
};

// Seconds from the command line as milliseconds, at least 1.
uint32_t Millis(double seconds);
// Prints `j` on stdout as one line. A path or a message may hold bytes that
// are not UTF-8 (a Linux path may hold any byte but NUL), on which dump()
// throws: each is printed as U+FFFD instead.
void PrintJson(const Json& j);
// Reports a failed call: message on stderr, and a JSON error document on
// stdout with --json. Returns the exit code.
int Report(const Common& c, const char* what, int rc);
bool ShowProgress(const Common& c);
// A dp420_progress_fn drawing on the ProgressBar `user`.
void OnProgress(void* user, const dp420_progress_t* p);
// A usage error found after parsing: message on stderr (and the JSON error
// document with --json). Returns kExitUsage.
int UsageError(const Common& c, const char* what, const std::string& msg);
// Exactly one of --repo and --remote; the remote options only with --remote.
// Returns "" when the choice is valid, else what is wrong.
std::string CheckRepoChoice(const Common& c);
int OpenRepo(const Common& c, dp420_repo_t** repo);
// The --remote options of `c` (its strings must outlive `o`).
void FillRemoteOpts(const Common& c, dp420_remote_opts_t* o);
// --json and --quiet.
void AddCommon(CLI::App* cmd, Common* c);
// --repo, or --remote with the client's credentials and the network knobs
// (checked by CheckRepoChoice: the two exclude each other).
// --passphrase-file and --repo-key-file (an encrypted repository).
void AddRepoKeyOptions(CLI::App* cmd, Common* c);
void AddRepoOptions(CLI::App* cmd, Common* c);

// Opens (or connects to) the repository, runs `body`, closes it.
template <typename Body>
inline int WithRepo(const Common& c, const char* what, Body&& body) {
  std::string wrong = CheckRepoChoice(c);
  if (!wrong.empty()) return UsageError(c, what, wrong);
  dp420_repo_t* repo = nullptr;
  int rc = OpenRepo(c, &repo);
  if (rc != 0) return Report(c, what, rc);
  int code = body(repo);
  dp420_repo_close(repo);
  return code;
}


}  // namespace dp420cli
