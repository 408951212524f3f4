// The I/O-index fault suite: the real dp420 binary stopped or failed at every
// I/O of a run (io/inject.h). For a small full backup, an incremental backup, a
// restore and a remote backup committed by `dp420 serve`, the test counts the
// I/Os a clean run makes, then for each index:
//   - crash (DP420_CRASH_AT_IO): the operation committed completely or is
//     invisible, every committed snapshot restores bit-exact, verify
//     --read-data is clean, the next run works and leaves no temp files;
//   - fault (DP420_FAULT_AT_IO, × EIO ENOSPC EINTR EAGAIN short reset): exit 0
//     with correct data, or the documented exit code with the failure named;
//     EINTR, EAGAIN and short counts must be invisible; the same checks after;
//   - power loss (DP420_POWERLOSS_AT_IO, dropped and torn): committed
//     snapshots survive, the cut operation committed completely or is
//     invisible, verify --read-data clean.
// Trials run two at a time, each on its own copy of a baseline directory (its
// own repository, anchor state and agent cache). Every failure names the
// trial's variable and value, which replays it on a copy of the baseline.
// DP420_IO_INDEX_LONG=1 (ctest io_index_long, label "long") runs every index
// of more volumes (DP420_IO_INDEX_SEEDS of them, default 30 for crashes and 4
// for faults and power cuts) and more tear seeds.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

namespace fs = std::filesystem;

constexpr int kExitNetwork = 8;
constexpr const char* kVolume = "vol";
constexpr uint64_t kVolumeBytes = 256 * 1024;
constexpr std::chrono::seconds kTrialTimeout{60};

bool LongMode() {
  const char* v = std::getenv("DP420_IO_INDEX_LONG");
  return v != nullptr && std::string(v) == "1";
}

unsigned Workers() {
  unsigned n = std::thread::hardware_concurrency();
  return std::clamp(2 * n, 2u, 8u);  // the runs wait on fsync and the network
}

// How a trial disturbs the run.
struct Disturbance {
  std::string variable;  // DP420_CRASH_AT_IO, DP420_FAULT_AT_IO, DP420_POWERLOSS_AT_IO
  std::string value;
  std::string kind;      // for faults: EIO ... reset; else ""
  std::string Describe() const { return variable + "=" + value; }
};

Env TrialEnv(const std::string& root) {
  return {{"DP420_STATE_DIR", root + "/state"}, {"DP420_CACHE_DIR", root + "/cache"}};
}

Result CliIn(const std::string& root, const std::vector<std::string>& args, const Env& extra = {}) {
  Env env = TrialEnv(root);
  env.insert(env.end(), extra.begin(), extra.end());
  return RunCommand([&] {
    std::vector<std::string> argv{CliPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }(), env, kTrialTimeout);
}

// Files a finished run must not leave behind in `dir` (recursively): temp
// files, partial restores, power-loss stashes, anything in the repository's tmp/.
std::vector<std::string> Leftovers(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::string parent = it->path().parent_path().filename().string();
    bool temp = name.find(".tmp") != std::string::npos ||
                name.find(".dp420-partial") != std::string::npos ||
                name.find(".dp420-powerloss") != std::string::npos ||
                (parent == "tmp" && !it->is_directory());
    if (temp) found.push_back(it->path().string());
  }
  return found;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string CopyTree(const std::string& from, const std::string& to) {
  Result r = RunCommand({"cp", "-a", from, to}, {}, kTrialTimeout);
  return r.exit_code == 0 ? "" : "copying the baseline failed: " + r.Describe();
}

// ---- Scenarios ----

// One operation under test, on a copy of its baseline directory `base`:
// `root` is the copy. `committed` maps the baseline's snapshots to the SHA-256
// of their volumes; `expected_sha` is what a snapshot the operation commits
// (backup) or the target it writes (restore) must hold.
struct Scenario {
  std::string name;
  std::string base;
  bool restore = false;
  bool remote = false;
  std::map<std::string, std::string> committed;
  std::string expected_sha;
  std::function<std::vector<std::string>(const std::string& root)> args;
  // From the undisturbed run's trace (local scenarios): the I/O that publishes
  // the result (the manifest's rename, the target's link or rename), and the
  // fsync of its directory that makes it durable.
  uint64_t commit_io = 0;
  uint64_t durable_io = 0;
};

std::string RepoOf(const std::string& root) { return root + "/repo"; }
std::string TargetOf(const std::string& root) { return root + "/out/target.img"; }

std::vector<std::string> BackupArgs(const std::string& root, const std::string& source) {
  return {"backup", "--repo", RepoOf(root), "--volume", kVolume, "--block-size", "4096",
          "--threads", "1", "--json", source};
}

// Makes `dir`/v1.img and v2.img (v2: v1 with a few changed blocks), the
// repository `dir`/repo and the output folder.
void MakeSources(const std::string& dir, uint64_t seed) {
  WritePatternFile(dir + "/v1.img", kVolumeBytes, seed, 3);
  fs::copy_file(dir + "/v1.img", dir + "/v2.img");
  OverwriteRange(dir + "/v2.img", 8192, 12288, seed + 1);
  OverwriteRange(dir + "/v2.img", kVolumeBytes - 20000, 9000, seed + 2);
  fs::create_directories(dir + "/out");
  Result r = CliIn(dir, {"init", RepoOf(dir), "--encryption", "none"});
  if (r.exit_code != 0) Fail("init failed: " + r.Describe());
}

std::string BackupIn(const std::string& root, const std::string& source) {
  Result r = CliIn(root, BackupArgs(root, source));
  if (r.exit_code != 0) Fail("baseline backup failed: " + r.Describe());
  return ParseJson(r).at("snapshot_id").get<std::string>();
}

Scenario FullBackup(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);
  Scenario s{"full backup", base};
  s.expected_sha = Sha256File(base + "/v1.img");
  s.args = [base](const std::string& root) { return BackupArgs(root, base + "/v1.img"); };
  return s;
}

Scenario IncrementalBackup(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);
  Scenario s{"incremental backup", base};
  s.committed[BackupIn(base, base + "/v1.img")] = Sha256File(base + "/v1.img");
  s.expected_sha = Sha256File(base + "/v2.img");
  s.args = [base](const std::string& root) { return BackupArgs(root, base + "/v2.img"); };
  return s;
}

Scenario RestoreOf(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);
  Scenario s{"restore", base};
  s.restore = true;
  s.committed[BackupIn(base, base + "/v1.img")] = Sha256File(base + "/v1.img");
  std::string s2 = BackupIn(base, base + "/v2.img");
  s.committed[s2] = Sha256File(base + "/v2.img");
  s.expected_sha = s.committed[s2];
  s.args = [s2](const std::string& root) {
    return std::vector<std::string>{"restore", "--repo", RepoOf(root), "--volume", kVolume,
                                    "--snapshot", s2, TargetOf(root)};
  };
  return s;
}

// ---- Checks ----

// errno text a failure of `kind` must show, and the exit codes it may end with.
struct Expectation {
  std::string text;
  std::set<int> codes;
};

// `remote`: the fault hit a server, whose agent sees a failed socket op as a
// lost connection.
Expectation Expected(const std::string& kind, bool remote) {
  if (kind == "EIO" && remote) return {"Input/output error", {kExitFailed, kExitDamage, kExitNetwork}};
  if (kind == "EIO") return {"Input/output error", {kExitFailed, kExitDamage}};
  if (kind == "ENOSPC") return {"No space left on device", {kExitNoSpace}};
  if (kind == "reset") return {"reset", {kExitNetwork}};
  return {"", {kExitOk}};  // EINTR, EAGAIN, short: retried, never seen
}

// The disturbed run itself: killed or finished for a crash or power cut; for
// a fault, exit 0, or the kind's exit code with its errno named in `log`.
std::string CheckRun(const Disturbance& d, const Result& run, const std::string& log,
                     bool remote = false) {
  if (run.timed_out) return "the run hung (killed after the timeout): " + run.Describe();
  if (d.variable != "DP420_FAULT_AT_IO") {
    if (run.term_signal == SIGKILL || run.exit_code == kExitOk) return "";
    return "the run neither died at the index nor finished: " + run.Describe();
  }
  if (run.exit_code == kExitOk) return "";
  Expectation want = Expected(d.kind, remote);
  if (want.codes.count(run.exit_code) == 0) {
    return "exit code " + std::to_string(run.exit_code) + " is not the documented one for " +
           d.kind + ": " + run.Describe() + log;
  }
  if (!ContainsIgnoringCase(run.err + log, want.text)) {
    return "the error does not name the failure (\"" + want.text + "\"): " + run.Describe() + log;
  }
  return "";
}

// Snapshot ids and their sequence numbers, as `snapshots --json` lists them.
struct Listing {
  std::string error;
  std::map<std::string, int64_t> sequence;
  std::string newest;
};

Listing List(const std::string& root, const std::string& volume) {
  Listing l;
  Result r = CliIn(root, {"snapshots", "--repo", RepoOf(root), "--volume", volume, "--json"});
  if (r.exit_code != kExitOk) {
    l.error = "snapshots failed: " + r.Describe();
    return l;
  }
  for (const auto& m : ParseJson(r)) {
    std::string id = m.at("snapshot_id").get<std::string>();
    l.sequence[id] = m.at("sequence").get<int64_t>();
    if (l.newest.empty() || l.sequence[id] > l.sequence[l.newest]) l.newest = id;
  }
  return l;
}

std::string CheckRestores(const std::string& root, const std::string& volume,
                          const std::string& id, const std::string& sha) {
  std::string target = root + "/check-" + id + ".img";
  Result r = CliIn(root, {"restore", "--repo", RepoOf(root), "--volume", volume, "--snapshot",
                          id, target});
  std::string failure;
  if (r.exit_code != kExitOk) failure = "snapshot " + id + " does not restore: " + r.Describe();
  else if (Sha256File(target) != sha) failure = "snapshot " + id + " restores wrong bytes";
  fs::remove(target);
  return failure;
}

// After the disturbed run: the baseline's snapshots are all there and restore
// bit-exact, a backup added at most one snapshot (restoring to its source),
// a restore's target is missing or exact, and verify --read-data is clean.
// `*added`: the snapshot the run committed, if any.
std::string CheckState(const Scenario& sc, const std::string& root, const std::string& volume,
                       bool fault, std::string* added) {
  Listing l = List(root, volume);
  if (!l.error.empty()) return l.error;
  for (const auto& [id, sha] : sc.committed) {
    if (l.sequence.count(id) == 0) return "committed snapshot " + id + " vanished";
  }
  for (const auto& [id, seq] : l.sequence) {
    if (sc.committed.count(id) != 0) {
      // A restore does not write the repository; after a fault verify
      // --read-data below checks the snapshots the run could not have touched.
      if (sc.restore || fault) continue;
      if (std::string f = CheckRestores(root, volume, id, sc.committed.at(id)); !f.empty()) return f;
      continue;
    }
    if (sc.restore || !added->empty()) return "an unexpected snapshot " + id + " is listed";
    *added = id;
    if (std::string f = CheckRestores(root, volume, id, sc.expected_sha); !f.empty()) {
      return "the interrupted backup's snapshot is listed but incomplete: " + f;
    }
  }
  if (sc.restore && Exists(TargetOf(root)) && Sha256File(TargetOf(root)) != sc.expected_sha) {
    return "the restore target exists with wrong bytes";
  }
  Result verify = CliIn(root, {"verify", "--repo", RepoOf(root), "--read-data"});
  if (verify.exit_code != kExitOk) return "verify --read-data is not clean: " + verify.Describe();
  return "";
}

// After the next, undisturbed run: nothing temporary left, no pack left over.
std::string CheckClean(const std::string& root) {
  std::vector<std::string> left = Leftovers(root + "/repo");
  std::vector<std::string> out = Leftovers(root + "/out");
  left.insert(left.end(), out.begin(), out.end());
  if (!left.empty()) return "left behind after the next run: " + Join(left);
  Result verify = CliIn(root, {"verify", "--repo", RepoOf(root), "--json"});
  if (verify.exit_code != kExitOk) return "verify after the next run: " + verify.Describe();
  if (ParseJson(verify).value("unreferenced_packs", 0) != 0) {
    return "packs of the interrupted backup are left over: " + verify.out;
  }
  return "";
}

// The next local run, undisturbed: works, and a backup builds on the newest.
std::string CheckNextLocalRun(const Scenario& sc, const std::string& root,
                              const std::string& newest) {
  std::vector<std::string> args = sc.args(root);
  if (sc.restore && Exists(TargetOf(root))) args.insert(args.end() - 1, "--force");
  Result r = CliIn(root, args);
  if (r.exit_code != kExitOk) return "the next run failed: " + r.Describe();
  if (sc.restore) {
    if (Sha256File(TargetOf(root)) != sc.expected_sha) return "the next restore wrote wrong bytes";
  } else if (ParseJson(r).value("parent", Json()) != (newest.empty() ? Json() : Json(newest))) {
    return "the next backup's parent is not the newest snapshot " + newest + ": " + r.out;
  }
  return CheckClean(root);
}

std::string NewestAfter(const Scenario& sc, const std::string& added) {
  if (!added.empty()) return added;
  std::string newest;
  for (const auto& [id, sha] : sc.committed) {
    if (!sc.restore) newest = id;  // a backup baseline holds one snapshot at most
  }
  return newest;
}

// The I/O that publishes a scenario's result, and the fsync of its directory.
struct Commit {
  uint64_t io = 0;       // 0: not in the trace
  uint64_t durable = 0;  // 0: not in the trace
};

// Finds, in a DP420_IO_TRACE_FILE's text, the first I/O of a kind in `ops`
// (space-separated: "rename", "link rename") on a path matching `path`, and
// the fsync of that path's directory after it.
Commit FindPublish(const std::string& trace, const std::regex& path_re, const std::string& ops) {
  Commit c;
  std::istringstream in(trace);
  std::string line;
  std::string dir;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    uint64_t index = 0;
    std::string op, path;
    fields >> index >> op >> path;
    if (c.io == 0 && !op.empty() && (" " + ops + " ").find(" " + op + " ") != std::string::npos &&
        std::regex_search(path, path_re)) {
      c.io = index;
      dir = path.substr(0, path.rfind('/'));
    } else if (c.io != 0 && op == "sync" && path == dir) {
      c.durable = index;
      break;
    }
  }
  return c;
}

// A backup publishes its manifest's rename; a restore its target's link or rename.
Commit FindCommit(const std::string& trace, bool restore) {
  static const std::regex kManifest(R"(/repo/snapshots/[^/]+/[^/]+\.manifest$)");
  static const std::regex kTarget(R"(/out/target\.img$)");
  return FindPublish(trace, restore ? kTarget : kManifest, restore ? "link rename" : "rename");
}

// From the run's own trace (the I/O order of two runs may differ a little):
// a run stopped before its commit I/O published nothing; one crashed after it,
// or cut off from power after the fsync that made it durable, published.
std::string CheckCommitPoint(const Scenario& sc, const std::string& root, const Disturbance& d,
                             bool backup_added) {
  if (d.variable == "DP420_FAULT_AT_IO") return "";
  uint64_t index = std::stoull(d.value.substr(0, d.value.find(':')));
  Commit c = FindCommit(Exists(root + ".trace") ? ReadFile(root + ".trace") : "", sc.restore);
  bool published = sc.restore ? Exists(TargetOf(root)) : backup_added;
  uint64_t must = d.variable == "DP420_CRASH_AT_IO" ? c.io : c.durable;
  if ((c.io == 0 || c.io >= index) && published) {
    return "published although stopped before its commit I/O";
  }
  if (must != 0 && must < index && !published) {
    return "lost although stopped after I/O " + std::to_string(must) +
           (d.variable == "DP420_CRASH_AT_IO" ? " (its commit)" : " (its commit's fsync)");
  }
  return "";
}

// One local trial in `root` (a fresh copy of the baseline).
std::string LocalTrial(const Scenario& sc, const std::string& root, const Disturbance& d) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) return f;
  Result run = CliIn(root, sc.args(root), {{d.variable, d.value},
                                           {"DP420_IO_TRACE_FILE", root + ".trace"}});
  if (std::string f = CheckRun(d, run, ""); !f.empty()) return f;
  std::string added;
  bool fault = d.variable == "DP420_FAULT_AT_IO";
  if (std::string f = CheckState(sc, root, kVolume, fault, &added); !f.empty()) return f;
  if (d.variable == "DP420_FAULT_AT_IO" && run.exit_code == kExitOk && !sc.restore &&
      added.empty()) {
    return "the backup exited 0 but committed nothing";
  }
  if (d.variable == "DP420_FAULT_AT_IO" && run.exit_code == kExitOk && sc.restore &&
      !Exists(TargetOf(root))) {
    return "the restore exited 0 but wrote no target";
  }
  if (std::string f = CheckCommitPoint(sc, root, d, !added.empty()); !f.empty()) return f;
  return CheckNextLocalRun(sc, root, NewestAfter(sc, added));
}

// ---- Running trials ----

using Trial = std::function<std::string(const std::string& root)>;

struct Planned {
  std::string label;  // scenario and disturbance, to replay
  Trial run;
};

// Runs `trials` on Workers() threads, each in its own directory under `work`;
// returns the failures, each naming its trial. A passing trial's directory is
// removed at once.
std::vector<std::string> RunTrials(const std::string& work, const std::vector<Planned>& trials) {
  fs::create_directories(work);
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::vector<std::string> failures;
  auto worker = [&] {
    for (size_t i = next++; i < trials.size(); i = next++) {
      std::string root = work + "/t" + std::to_string(i);
      std::string failure;
      try {
        failure = trials[i].run(root);
      } catch (const std::exception& e) {
        failure = std::string("exception: ") + e.what();
      }
      std::error_code ec;
      fs::remove_all(root, ec);
      fs::remove(root + ".trace", ec);
      if (failure.empty()) continue;
      std::lock_guard<std::mutex> lock(mu);
      failures.push_back(trials[i].label + ": " + failure);
    }
  };
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < Workers(); ++w) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  return failures;
}

void Report(const std::string& what, size_t trials, const std::vector<std::string>& failures) {
  std::printf("%s: %zu trials, %zu failed\n", what.c_str(), trials, failures.size());
  for (const std::string& f : failures) std::printf("FAILED %s\n", f.substr(0, 400).c_str());
  for (size_t i = 0; i < failures.size() && i < 20; ++i) ADD_FAILURE() << failures[i];
  if (failures.size() > 20) ADD_FAILURE() << failures.size() - 20 << " more failures";
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

uint64_t ReadCount(const std::string& path) {
  if (!Exists(path)) return 0;
  return std::stoull(ReadFile(path));
}

// The number of I/Os an undisturbed run of `sc` makes; notes its commit.
uint64_t CountLocal(Scenario* sc, const std::string& root) {
  if (std::string f = CopyTree(sc->base, root); !f.empty()) Fail(f);
  Result r = CliIn(root, sc->args(root), {{"DP420_IO_COUNT_FILE", root + ".count"},
                                          {"DP420_IO_TRACE_FILE", root + ".trace"}});
  if (r.exit_code != kExitOk) Fail(sc->name + " failed undisturbed: " + r.Describe());
  uint64_t count = ReadCount(root + ".count");
  if (count == 0) Fail(sc->name + ": no I/O counted (DP420_IO_COUNT_FILE not written)");
  Commit c = FindCommit(ReadFile(root + ".trace"), sc->restore);
  if (c.io == 0 || c.durable == 0) {
    Fail(sc->name + ": no commit and directory fsync in the trace:\n" + ReadFile(root + ".trace"));
  }
  sc->commit_io = c.io;
  sc->durable_io = c.durable;
  fs::remove_all(root);
  fs::remove(root + ".count");
  fs::remove(root + ".trace");
  return count;
}

// Indices 1..count, or `budget` of them spread evenly (always the first and last).
std::vector<uint64_t> Spread(uint64_t count, uint64_t budget) {
  std::vector<uint64_t> out;
  if (count <= budget) {
    for (uint64_t i = 1; i <= count; ++i) out.push_back(i);
    return out;
  }
  for (uint64_t k = 0; k < budget; ++k) out.push_back(1 + k * (count - 1) / (budget - 1));
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

const std::vector<std::string>& FaultKinds() {
  static const std::vector<std::string> kinds{"EIO", "ENOSPC", "EINTR", "EAGAIN", "short",
                                              "reset"};
  return kinds;
}

std::string Replay(const Scenario& sc, const Disturbance& d, uint64_t seed) {
  return sc.name + " (volume seed " + std::to_string(seed) + "), " + d.Describe();
}

// ---- Remote: `dp420 serve` commits ----

constexpr const char* kClient = "c1";
constexpr const char* kRemoteVolume = "c1/vol";  // the client's volume, seen locally

bool Alive(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// `dp420 serve` of root/repo on 127.0.0.1, its stderr in root/serve.log.
class Serve {
 public:
  Serve(const std::string& root, const Env& extra) : log_(root + "/serve.log") {
    std::string command = "exec " + ShellQuote(CliPath()) + " serve --repo " +
                          ShellQuote(RepoOf(root)) + " --listen 127.0.0.1:0 --clients " +
                          ShellQuote(root + "/clients.json") + " --heartbeat-interval 1 2>" +
                          ShellQuote(log_);
    Env env = TrialEnv(root);
    env.insert(env.end(), extra.begin(), extra.end());
    fs::remove(log_);  // an earlier server's "listening" line must not be read
    process_ = Process::Start({"bash", "-c", command}, env);
    static const std::regex kListening(R"(dp420 serve: listening on (\S+:\d+))");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline && Alive(process_->pid())) {
      std::smatch m;
      std::string log = Log();
      if (std::regex_search(log, m, kListening)) {
        address_ = m[1].str();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  ~Serve() {
    if (!stopped_) Stop();
  }
  Serve(const Serve&) = delete;
  Serve& operator=(const Serve&) = delete;

  // Empty when the server died (or hung) before listening.
  const std::string& address() const { return address_; }
  std::string Log() const { return Exists(log_) ? ReadFile(log_) : ""; }
  bool alive() const { return Alive(process_->pid()); }
  // SIGTERM unless it is already gone; the finished process.
  Result Stop() {
    stopped_ = true;
    if (Alive(process_->pid())) process_->Kill(SIGTERM);
    return process_->Wait(kTrialTimeout);
  }

 private:
  std::string log_;
  std::string address_;
  bool stopped_ = false;
  std::unique_ptr<Process> process_;
};

std::vector<std::string> RemoteBackupArgs(const std::string& root, const std::string& address,
                                          const std::string& source) {
  return {"backup", "--remote", address, "--client", kClient, "--key-file", root + "/c1.key",
          "--volume", kVolume, "--block-size", "4096", "--threads", "1", "--retry-for", "0",
          "--json", source};
}

// The remote scenario: a baseline whose repository holds snapshot s1 of v1
// committed through a server; the operation backs up v2 through a server.
Scenario RemoteBackup(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);
  Result add = CliIn(base, {"client-add", "--clients", base + "/clients.json", "--client", kClient,
                            "--key-out", base + "/c1.key"});
  if (add.exit_code != kExitOk) Fail("client-add failed: " + add.Describe());
  Scenario s{"remote backup", base};
  s.remote = true;
  {
    Serve server(base, {});
    if (server.address().empty()) Fail("dp420 serve did not start: " + server.Log());
    Result r = CliIn(base, RemoteBackupArgs(base, server.address(), base + "/v1.img"));
    if (r.exit_code != kExitOk) Fail("baseline remote backup failed: " + r.Describe());
    s.committed[ParseJson(r).at("snapshot_id").get<std::string>()] = Sha256File(base + "/v1.img");
    Result stop = server.Stop();
    if (stop.exit_code != kExitOk) Fail("serve did not stop cleanly: " + stop.Describe());
  }
  s.expected_sha = Sha256File(base + "/v2.img");
  return s;  // no args: RemoteTrial runs the agent against its own server
}

// The server's outcome: died at the index, or stopped cleanly by SIGTERM.
std::string CheckServer(const Disturbance& d, const Result& stop) {
  if (stop.timed_out) return "the server hung: " + stop.Describe();
  if (stop.exit_code == kExitOk) return "";
  if (d.variable != "DP420_FAULT_AT_IO" && stop.term_signal == SIGKILL) return "";
  return "the server did not end cleanly: " + stop.Describe();
}

// The next remote backup, through an undisturbed server.
std::string CheckNextRemoteRun(const Scenario& sc, const std::string& root,
                               const std::string& newest) {
  Serve server(root, {});
  if (server.address().empty()) return "the next server did not start: " + server.Log();
  Result r = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"));
  Result stop = server.Stop();
  if (r.exit_code != kExitOk) return "the next remote backup failed: " + r.Describe() + server.Log();
  if (stop.exit_code != kExitOk) return "the next server did not stop cleanly: " + stop.Describe();
  if (ParseJson(r).value("parent", Json()) != Json(newest)) {
    return "the next backup's parent is not the newest snapshot " + newest + ": " + r.out;
  }
  if (auto left = Leftovers(root + "/cache"); !left.empty()) return "left behind: " + Join(left);
  return CheckClean(root);
}

// One remote trial: the server runs disturbed, the agent undisturbed.
std::string RemoteTrial(const Scenario& sc, const std::string& root, const Disturbance& d) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) return f;
  Result run;
  std::string log;
  {
    Serve server(root, {{d.variable, d.value}, {"DP420_IO_TRACE_FILE", root + ".trace"}});
    if (!server.address().empty()) {
      run = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"));
    }
    Result stop = server.Stop();
    log = "\nserver log:\n" + server.Log();
    if (d.variable == "DP420_FAULT_AT_IO" && server.address().empty()) {
      // The fault stopped the server's start: a clear error of its own.
      if (std::string f = CheckRun(d, stop, log); !f.empty()) return "server: " + f;
    } else if (std::string f = CheckServer(d, stop); !f.empty()) {
      return f + log;
    }
  }
  if (run.timed_out) return "the agent hung: " + run.Describe() + log;
  bool agent_ok = run.command.empty() || run.exit_code == kExitOk ||
                  run.exit_code == kExitNetwork;  // the server went away
  if (d.variable == "DP420_FAULT_AT_IO" && !run.command.empty() && run.exit_code != kExitOk) {
    if (std::string f = CheckRun(d, run, log, true); !f.empty()) return "agent: " + f;
  } else if (!agent_ok) {
    return "the agent failed: " + run.Describe() + log;
  }
  std::string added;
  bool fault = d.variable == "DP420_FAULT_AT_IO";
  if (std::string f = CheckState(sc, root, kRemoteVolume, fault, &added); !f.empty()) {
    return f + log;
  }
  if (run.exit_code == kExitOk && !run.command.empty() && added.empty()) {
    return "the agent exited 0 but nothing was committed" + log;
  }
  if (std::string f = CheckCommitPoint(sc, root, d, !added.empty()); !f.empty()) return f + log;
  return CheckNextRemoteRun(sc, root, NewestAfter(sc, added));
}

// The I/Os of a server that starts and stops (`*idle`), and of one that also
// commits the scenario's backup.
uint64_t CountRemote(const Scenario& sc, const std::string& root, uint64_t* idle) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) Fail(f);
  {
    Serve server(root, {{"DP420_IO_COUNT_FILE", root + "/idle.count"}});
    server.Stop();
  }
  *idle = ReadCount(root + "/idle.count");
  uint64_t count = 0;
  {
    Serve server(root, {{"DP420_IO_COUNT_FILE", root + "/busy.count"}});
    if (server.address().empty()) Fail("serve did not start: " + server.Log());
    Result r = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"));
    if (r.exit_code != kExitOk) Fail("undisturbed remote backup failed: " + r.Describe());
    server.Stop();
    count = ReadCount(root + "/busy.count");
  }
  if (*idle == 0 || count <= *idle) Fail("serve's I/O count not written or not grown");
  fs::remove_all(root);
  return count;
}

// ---- The tests ----

// What one test plans: per scenario, which indices and disturbances.
using Disturb = std::function<std::vector<Disturbance>(uint64_t index)>;

struct Budget {
  uint64_t local;   // indices per local scenario (0: every one)
  uint64_t remote;  // indices of the remote scenario (0: none)
  uint64_t seeds;   // volumes in the long mode (one in CI)
};

// The volume seeds: one in CI; in the long mode DP420_IO_INDEX_SEEDS, or
// `long_default`.
std::vector<uint64_t> Seeds(uint64_t long_default) {
  uint64_t n = 1;
  if (LongMode()) {
    const char* v = std::getenv("DP420_IO_INDEX_SEEDS");
    n = v != nullptr ? std::stoull(v) : long_default;
  }
  std::vector<uint64_t> seeds;
  for (uint64_t i = 0; i < n; ++i) seeds.push_back(1000 + 17 * i);
  return seeds;
}

void PlanScenario(const Scenario& sc, uint64_t seed, const std::vector<uint64_t>& indices,
                  const Disturb& disturb, std::vector<Planned>* out) {
  for (uint64_t index : indices) {
    for (const Disturbance& d : disturb(index)) {
      Trial run = [sc, d](const std::string& root) {
        return sc.remote ? RemoteTrial(sc, root, d) : LocalTrial(sc, root, d);
      };
      out->push_back({Replay(sc, d, seed), run});
    }
  }
}

// Builds the scenarios' baselines under `dir`, counts their I/Os and plans the
// trials; `backups_only` leaves out the restore scenario.
std::vector<Planned> Plan(const TempDir& dir, const Budget& budget, const Disturb& disturb,
                          bool backups_only) {
  std::vector<Planned> trials;
  for (uint64_t seed : Seeds(budget.seeds)) {
    std::string tag = std::to_string(seed);
    std::vector<Scenario> local{FullBackup(dir / ("full-" + tag), seed),
                                IncrementalBackup(dir / ("incr-" + tag), seed)};
    if (!backups_only) local.push_back(RestoreOf(dir / ("restore-" + tag), seed));
    for (Scenario& sc : local) {
      uint64_t count = CountLocal(&sc, dir / "count");
      std::printf("%s (seed %s): %llu I/Os, published at I/O %llu, durable after %llu\n",
                  sc.name.c_str(), tag.c_str(), static_cast<unsigned long long>(count),
                  static_cast<unsigned long long>(sc.commit_io),
                  static_cast<unsigned long long>(sc.durable_io));
      PlanScenario(sc, seed, Spread(count, budget.local == 0 ? count : budget.local), disturb,
                   &trials);
    }
    if (budget.remote == 0) continue;
    Scenario remote = RemoteBackup(dir / ("remote-" + tag), seed);
    uint64_t idle = 0;
    uint64_t count = CountRemote(remote, dir / "count", &idle);
    std::printf("remote backup (seed %s): serve made %llu I/Os, %llu when idle\n", tag.c_str(),
                static_cast<unsigned long long>(count), static_cast<unsigned long long>(idle));
    uint64_t first = std::max<uint64_t>(1, idle / 2);
    std::vector<uint64_t> indices = Spread(count - first + 1, budget.remote);
    for (uint64_t& i : indices) i += first - 1;
    PlanScenario(remote, seed, indices, disturb, &trials);
  }
  return trials;
}

Disturb CrashAt() {
  return [](uint64_t i) {
    return std::vector<Disturbance>{{"DP420_CRASH_AT_IO", std::to_string(i), ""}};
  };
}

TEST(IoIndexTest, CrashAtEveryIndexKeepsCommittedSnapshotsAndNextRunWorks) {
  TempDir dir;
  // Long: every index of 30 volumes, about 370 crash points each.
  Budget budget = LongMode() ? Budget{0, 400, 30} : Budget{60, 45, 1};
  std::vector<Planned> trials = Plan(dir, budget, CrashAt(), false);
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("crash at I/O index", trials.size(), failures);
  EXPECT_GE(trials.size(), LongMode() ? 10000u : 200u) << "fewer crash points than promised";
}

// `always` at every planned index, and one of `rotating` in turn (every one of
// them in the long mode): each kind is met across the plan without multiplying
// its trials.
Disturb FaultsInTurn(std::vector<std::string> always, std::vector<std::string> rotating) {
  auto turn = std::make_shared<size_t>(0);
  return [always, rotating, turn](uint64_t i) {
    std::vector<std::string> kinds = always;
    if (LongMode()) {
      kinds.insert(kinds.end(), rotating.begin(), rotating.end());
    } else if (!rotating.empty()) {
      kinds.push_back(rotating[(*turn)++ % rotating.size()]);
    }
    std::vector<Disturbance> out;
    for (const std::string& kind : kinds) {
      out.push_back({"DP420_FAULT_AT_IO", std::to_string(i) + ":" + kind, kind});
    }
    return out;
  };
}

// Every kind at every planned index. "reset" is ECONNRESET on socket ops and
// injects nothing elsewhere, so the local scenarios (no socket) skip it.
Disturb FaultAt(bool with_reset) {
  std::vector<std::string> kinds;
  for (const std::string& kind : FaultKinds()) {
    if (kind != "reset" || with_reset) kinds.push_back(kind);
  }
  return FaultsInTurn(kinds, {});
}

TEST(IoIndexTest, FaultOfEveryKindAtEveryIndexEndsCleanly) {
  TempDir dir;
  Budget local = LongMode() ? Budget{0, 0, 4} : Budget{12, 0, 1};
  std::vector<Planned> trials = Plan(dir, local, FaultAt(false), false);
  Budget remote = LongMode() ? Budget{0, 400, 4} : Budget{0, 8, 1};
  // The remote scenario on its own plan, with "reset" on the server's sockets.
  std::vector<Planned> remote_trials;
  {
    TempDir rdir;
    for (uint64_t seed : Seeds(remote.seeds)) {
      Scenario sc = RemoteBackup(rdir / ("remote-" + std::to_string(seed)), seed);
      uint64_t idle = 0;
      uint64_t count = CountRemote(sc, rdir / "count", &idle);
      uint64_t first = std::max<uint64_t>(1, idle / 2);
      std::vector<uint64_t> indices = Spread(count - first + 1, remote.remote);
      for (uint64_t& i : indices) i += first - 1;
      PlanScenario(sc, seed, indices, FaultAt(true), &remote_trials);
    }
    std::vector<std::string> failures = RunTrials(rdir / "work", remote_trials);
    Report("remote faults at I/O index", remote_trials.size(), failures);
  }
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("local faults at I/O index", trials.size(), failures);
}

// The server's reads of a volume's history (its manifests, links and head)
// during an undisturbed remote backup of `sc`, from the server's I/O trace.
std::vector<uint64_t> ServerHistoryReads(const Scenario& sc, const std::string& root) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) Fail(f);
  {
    Serve server(root, {{"DP420_IO_TRACE_FILE", root + "/serve.trace"}});
    if (server.address().empty()) Fail("serve did not start: " + server.Log());
    Result r = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"));
    if (r.exit_code != kExitOk) Fail("undisturbed remote backup failed: " + r.Describe());
    server.Stop();
  }
  std::istringstream in(ReadFile(root + "/serve.trace"));
  std::vector<uint64_t> indices;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    uint64_t index = 0;
    std::string op, path;
    fields >> index >> op >> path;
    if (op == "read" && path.find("/repo/snapshots/") != std::string::npos) indices.push_back(index);
  }
  fs::remove_all(root);
  return indices;
}

// An EIO while the server reads a volume's history (which tells it, among
// other things, whose volume it is) is an I/O error naming the failure, never
// a volume "it cannot attribute" or damage: the long mode's every-index run
// found it refusing the backup as a permission matter.
TEST(IoIndexTest, ServerEioReadingAVolumesHistoryIsAnIoError) {
  TempDir dir;
  Scenario sc = RemoteBackup(dir / "remote", 1000);
  std::vector<uint64_t> indices = ServerHistoryReads(sc, dir / "trace");
  ASSERT_FALSE(indices.empty()) << "the server read no manifest";
  std::vector<Planned> trials;
  PlanScenario(sc, 1000, indices,
               [](uint64_t i) {
                 return std::vector<Disturbance>{
                     {"DP420_FAULT_AT_IO", std::to_string(i) + ":EIO", "EIO"}};
               },
               &trials);
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("EIO at the server's history reads", trials.size(), failures);
}

// Power cuts: dropped (no seed) and torn (seeded) unsynced writes.
Disturb PowerLossAt(uint64_t seeds) {
  return [seeds](uint64_t i) {
    std::vector<Disturbance> out{{"DP420_POWERLOSS_AT_IO", std::to_string(i), ""}};
    for (uint64_t s = 1; s <= seeds; ++s) {
      out.push_back({"DP420_POWERLOSS_AT_IO", std::to_string(i) + ":" + std::to_string(s), ""});
    }
    return out;
  };
}

TEST(IoIndexTest, PowerLossAtEveryIndexKeepsCommittedSnapshots) {
  TempDir dir;
  Budget budget = LongMode() ? Budget{0, 0, 4} : Budget{26, 0, 1};
  std::vector<Planned> trials = Plan(dir, budget, PowerLossAt(LongMode() ? 4 : 1),
                                     /*backups_only=*/!LongMode());
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("power loss at I/O index", trials.size(), failures);
  EXPECT_GE(trials.size(), LongMode() ? 1000u : 100u) << "fewer power cuts than promised";
}

// ---- Prune ----

// The prune baseline: volume `vol` with s1 (v1) and s2 (v2, parent s1), s1
// then forgotten (`dp420 forget`: s2 is linked past it), so
// s1's data pack is partly used and its table pack unused; and a volume
// `gone` backed up and forgotten whole. `--max-unused 0` repacks the partly
// used pack. `committed` holds s2.
Scenario PruneOf(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);
  Scenario s{"prune", base};
  // v2 also differs where v1 holds data (MakeSources changes zero stretches).
  OverwriteRange(base + "/v2.img", 70000, 16384, seed + 3);
  std::string s1 = BackupIn(base, base + "/v1.img");
  std::string s2 = BackupIn(base, base + "/v2.img");
  s.committed[s2] = Sha256File(base + "/v2.img");
  std::string repo = RepoOf(base);
  Result forgot = CliIn(base, {"forget", "--repo", repo, "--volume", kVolume, "--snapshot", s1,
                               "-q"});
  if (forgot.exit_code != kExitOk) Fail("baseline forget failed: " + forgot.Describe());
  Result gone = CliIn(base, {"backup", "--repo", repo, "--volume", "gone", "--threads", "1",
                             "--json", base + "/v1.img"});
  if (gone.exit_code != kExitOk) Fail("baseline backup of gone failed: " + gone.Describe());
  fs::remove_all(repo + "/snapshots/gone");
  for (const auto& e : fs::directory_iterator(base + "/state/repos")) fs::remove(e.path() / "gone");
  Result verify = CliIn(base, {"verify", "--repo", repo, "--json"});
  if (verify.exit_code != kExitOk) Fail("the prune baseline does not verify: " + verify.Describe());
  s.args = [](const std::string& root) {
    return std::vector<std::string>{"prune", "--repo", RepoOf(root), "--max-unused", "0",
                                    "--json"};
  };
  return s;
}

// After a prune killed at some I/O: s2 restores bit-exact and verify
// --read-data is clean; the next prune works, after it nothing is left over
// (no temp file, no unreferenced pack) and s2 still restores.
std::string PruneTrial(const Scenario& sc, const std::string& root, const Disturbance& d) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) return f;
  Result run = CliIn(root, sc.args(root), {{d.variable, d.value}});
  if (std::string f = CheckRun(d, run, ""); !f.empty()) return f;
  const auto& [id, sha] = *sc.committed.begin();
  if (std::string f = CheckRestores(root, kVolume, id, sha); !f.empty()) return f;
  Result verify = CliIn(root, {"verify", "--repo", RepoOf(root), "--read-data"});
  if (verify.exit_code != kExitOk) return "verify --read-data is not clean: " + verify.Describe();
  Result next = CliIn(root, sc.args(root));
  if (next.exit_code != kExitOk) return "the next prune failed: " + next.Describe();
  if (std::string f = CheckClean(root); !f.empty()) return f;
  return CheckRestores(root, kVolume, id, sha);
}

// Trials of every planned index of the prune scenario, `disturb` each.
std::vector<Planned> PlanPrune(const TempDir& dir, uint64_t budget, const Disturb& disturb) {
  std::vector<Planned> trials;
  for (uint64_t seed : Seeds(LongMode() ? 4 : 1)) {
    auto sc = std::make_shared<Scenario>(PruneOf(dir / ("prune-" + std::to_string(seed)), seed));
    std::string root = dir / "count";
    if (std::string f = CopyTree(sc->base, root); !f.empty()) Fail(f);
    Result r = CliIn(root, sc->args(root), {{"DP420_IO_COUNT_FILE", root + ".count"}});
    if (r.exit_code != kExitOk) Fail("prune failed undisturbed: " + r.Describe());
    Json j = ParseJson(r);
    if (j.at("packs_rewritten") != 1 || j.at("packs_deleted").get<uint64_t>() < 2) {
      Fail("the prune scenario neither repacks nor deletes: " + r.out);
    }
    uint64_t count = ReadCount(root + ".count");
    if (count == 0) Fail("prune: no I/O counted");
    fs::remove_all(root);
    fs::remove(root + ".count");
    for (uint64_t i : Spread(count, budget)) {
      for (const Disturbance& d : disturb(i)) {
        trials.push_back({Replay(*sc, d, seed),
                          [sc, d](const std::string& root) { return PruneTrial(*sc, root, d); }});
      }
    }
  }
  return trials;
}

TEST(IoIndexTest, FaultAtEveryIndexOfPruneEndsCleanly) {
  TempDir dir;
  // Prune makes no socket I/O: every kind but "reset".
  Disturb faults = FaultsInTurn({"EIO", "ENOSPC"}, {"EINTR", "EAGAIN", "short"});
  std::vector<Planned> trials = PlanPrune(dir, LongMode() ? 2000 : 60, faults);
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("prune faults at I/O index", trials.size(), failures);
  EXPECT_GE(trials.size(), 60u);
}

TEST(IoIndexTest, CrashAtEveryIndexOfPruneLeavesRepositoryCleanAndNextPruneReclaims) {
  TempDir dir;
  std::vector<Planned> trials;
  for (uint64_t seed : Seeds(LongMode() ? 4 : 1)) {
    auto sc = std::make_shared<Scenario>(PruneOf(dir / ("prune-" + std::to_string(seed)), seed));
    std::string root = dir / "count";
    if (std::string f = CopyTree(sc->base, root); !f.empty()) Fail(f);
    Result r = CliIn(root, sc->args(root), {{"DP420_IO_COUNT_FILE", root + ".count"}});
    if (r.exit_code != kExitOk) Fail("prune failed undisturbed: " + r.Describe());
    Json j = ParseJson(r);
    ASSERT_EQ(j.at("packs_rewritten").get<uint64_t>(), 1u) << r.out;
    ASSERT_GE(j.at("packs_deleted").get<uint64_t>(), 2u) << r.out;
    uint64_t count = ReadCount(root + ".count");
    ASSERT_GT(count, 0u);
    fs::remove_all(root);
    fs::remove(root + ".count");
    for (uint64_t i : Spread(count, LongMode() ? 2000 : 400)) {
      Disturbance d{"DP420_CRASH_AT_IO", std::to_string(i), ""};
      trials.push_back({Replay(*sc, d, seed),
                        [sc, d](const std::string& root) { return PruneTrial(*sc, root, d); }});
    }
  }
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("prune crash at I/O index", trials.size(), failures);
  EXPECT_GE(trials.size(), 20u) << "fewer crash points than promised";
}

// ---- Forget and prune under power loss ----

// A history for forget and prune to work on: s1..s4 of `vol`, each version
// overwriting stretches the one before had written, so that forgetting s1
// and s2 leaves their data packs partly used (repacked at --max-unused 0)
// and their table packs unused (deleted).
struct Lifecycle {
  std::vector<std::string> ids;            // s1..s4, oldest first
  std::map<std::string, std::string> sha;  // id -> the SHA-256 of its volume
};

Lifecycle MakeLifecycle(const std::string& base, uint64_t seed) {
  fs::create_directories(base);
  MakeSources(base, seed);  // v1.img, v2.img (v1 with a few blocks changed), the repository
  OverwriteRange(base + "/v2.img", 70000, 16384, seed + 3);  // where v1 holds data
  fs::copy_file(base + "/v2.img", base + "/v3.img");
  OverwriteRange(base + "/v3.img", 74000, 8192, seed + 4);   // part of what v2 wrote
  OverwriteRange(base + "/v3.img", 110000, 16384, seed + 5);
  fs::copy_file(base + "/v3.img", base + "/v4.img");
  OverwriteRange(base + "/v4.img", 150000, 16384, seed + 6);
  Lifecycle l;
  for (int k = 1; k <= 4; ++k) {
    std::string img = base + "/v" + std::to_string(k) + ".img";
    l.ids.push_back(BackupIn(base, img));
    l.sha[l.ids.back()] = Sha256File(img);
  }
  return l;
}

// One lifecycle command on a copy of `base`: what it must keep, what it
// forgets, and the I/O that commits it.
struct LifecycleCase {
  std::string name;
  std::string base;
  std::map<std::string, std::string> kept;       // id -> SHA-256: listed before and after
  std::map<std::string, std::string> forgotten;  // listed before, gone once it commits
  std::function<std::vector<std::string>(const std::string& root)> args;
  // The commit: the first I/O of a kind in `ops` on a path matching `publish`
  // (FindPublish), and whether a trial's repository shows it.
  std::regex publish;
  std::string ops;
  std::function<bool(const std::string& root, const Listing& l)> published;
};

// A relocation file (relocated/PACK) exists: prune published a repack.
bool HasRelocation(const std::string& root) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(RepoOf(root) + "/relocated", ec)) {
    std::string name = e.path().filename().string();
    if (name.find(".tmp") == std::string::npos && name[0] != '.') return true;
  }
  return false;
}

// `dp420 prune --max-unused 0` after s1 and s2 were forgotten (without
// prune): it repacks their data packs and deletes their table packs. It
// commits with the rename of its first relocation file.
LifecycleCase PruneCase(const std::string& base, uint64_t seed) {
  Lifecycle l = MakeLifecycle(base, seed);
  Result forgot = CliIn(base, {"forget", "--repo", RepoOf(base), "--volume", kVolume,
                               "--snapshot", l.ids[0], "--snapshot", l.ids[1], "-q"});
  if (forgot.exit_code != kExitOk) Fail("baseline forget failed: " + forgot.Describe());
  LifecycleCase c{"prune after forget", base};
  for (size_t i = 2; i < 4; ++i) c.kept[l.ids[i]] = l.sha[l.ids[i]];
  c.args = [](const std::string& root) {
    return std::vector<std::string>{"prune", "--repo", RepoOf(root), "--max-unused", "0",
                                    "--json"};
  };
  c.publish = std::regex(R"(/repo/relocated/[^/.]+$)");
  c.ops = "rename";
  c.published = [](const std::string& root, const Listing&) { return HasRelocation(root); };
  return c;
}

// `dp420 forget --keep-last 2 --prune --max-unused 0` over s1..s4: forgets
// s1 and s2 (committed by the rename of s3's link past them), then prunes
// as above.
LifecycleCase ForgetCase(const std::string& base, uint64_t seed) {
  Lifecycle l = MakeLifecycle(base, seed);
  LifecycleCase c{"forget --prune", base};
  for (size_t i = 0; i < 4; ++i) (i < 2 ? c.forgotten : c.kept)[l.ids[i]] = l.sha[l.ids[i]];
  c.args = [](const std::string& root) {
    return std::vector<std::string>{"forget", "--repo", RepoOf(root), "--volume", kVolume,
                                    "--keep-last", "2", "--prune", "--max-unused", "0", "-q"};
  };
  c.publish = std::regex(R"(/repo/snapshots/vol/[^/]+\.link$)");
  c.ops = "rename";
  c.published = [c](const std::string&, const Listing& listed) {
    for (const auto& [id, sha] : c.forgotten) {
      if (listed.sequence.count(id) != 0) return false;
    }
    return true;
  };
  return c;
}

// After a cut at some I/O of the command: every kept snapshot is listed and
// restores bit-exact; the forgotten ones are all listed (and restore) or none
// is; the command committed exactly when cut after its commit's fsync, and
// never when cut before its commit I/O; verify --read-data is clean. The
// command run again completes: only the kept snapshots are listed, they
// restore bit-exact, nothing temporary and no unreferenced pack is left.
std::string LifecycleTrial(const LifecycleCase& c, const std::string& root, const Disturbance& d) {
  if (std::string f = CopyTree(c.base, root); !f.empty()) return f;
  Result run = CliIn(root, c.args(root), {{d.variable, d.value},
                                          {"DP420_IO_TRACE_FILE", root + ".trace"}});
  if (std::string f = CheckRun(d, run, ""); !f.empty()) return f;
  Listing l = List(root, kVolume);
  if (!l.error.empty()) return l.error;
  size_t forgotten_listed = 0;
  for (const auto& [id, seq] : l.sequence) {
    if (c.kept.count(id) != 0) continue;
    if (c.forgotten.count(id) == 0) return "an unexpected snapshot " + id + " is listed";
    ++forgotten_listed;
  }
  for (const auto& [id, sha] : c.kept) {
    if (l.sequence.count(id) == 0) return "kept snapshot " + id + " vanished";
  }
  if (forgotten_listed != 0 && forgotten_listed != c.forgotten.size()) {
    return std::to_string(forgotten_listed) + " of the " + std::to_string(c.forgotten.size()) +
           " forgotten snapshots are listed: half a forget";
  }
  for (const auto& [id, seq] : l.sequence) {
    const std::string& sha = c.kept.count(id) ? c.kept.at(id) : c.forgotten.at(id);
    if (std::string f = CheckRestores(root, kVolume, id, sha); !f.empty()) return f;
  }
  if (d.variable != "DP420_FAULT_AT_IO") {
    uint64_t index = std::stoull(d.value.substr(0, d.value.find(':')));
    Commit cp = FindPublish(Exists(root + ".trace") ? ReadFile(root + ".trace") : "", c.publish,
                            c.ops);
    bool published = c.published(root, l);
    if ((cp.io == 0 || cp.io >= index) && published) {
      return "committed although stopped before its commit I/O";
    }
    uint64_t must = d.variable == "DP420_CRASH_AT_IO" ? cp.io : cp.durable;
    if (must != 0 && must < index && !published) {
      return "lost although stopped after I/O " + std::to_string(must) + " (its commit" +
             (d.variable == "DP420_CRASH_AT_IO" ? ")" : "'s fsync)");
    }
  }
  Result verify = CliIn(root, {"verify", "--repo", RepoOf(root), "--read-data"});
  if (verify.exit_code != kExitOk) return "verify --read-data is not clean: " + verify.Describe();
  Result next = CliIn(root, c.args(root));
  if (next.exit_code != kExitOk) return "the command run again failed: " + next.Describe();
  Listing after = List(root, kVolume);
  if (!after.error.empty()) return after.error;
  if (after.sequence.size() != c.kept.size()) {
    return "after the command ran again " + std::to_string(after.sequence.size()) +
           " snapshots are listed, not the " + std::to_string(c.kept.size()) + " kept";
  }
  for (const auto& [id, sha] : c.kept) {
    if (after.sequence.count(id) == 0) return "kept snapshot " + id + " vanished at the re-run";
  }
  if (std::string f = CheckClean(root); !f.empty()) return f;
  // The oldest kept snapshot: its blocks were repacked (verify above checked
  // every pack and page the others need).
  std::string oldest = c.kept.begin()->first;
  for (const auto& [id, sha] : c.kept) {
    if (after.sequence.at(id) < after.sequence.at(oldest)) oldest = id;
  }
  return CheckRestores(root, kVolume, oldest, c.kept.at(oldest));
}

// Builds a lifecycle case's baseline per seed (`make`), runs the command
// undisturbed to count its I/Os and find its commit, and plans `budget`
// indices of it (0: every one), `disturb` each.
std::vector<Planned> PlanLifecycle(
    const TempDir& dir, const std::string& tag,
    const std::function<LifecycleCase(const std::string& base, uint64_t seed)>& make,
    uint64_t budget, const Disturb& disturb) {
  std::vector<Planned> trials;
  for (uint64_t seed : Seeds(4)) {
    std::string base = dir / (tag + "-" + std::to_string(seed));
    auto c = std::make_shared<LifecycleCase>(make(base, seed));
    std::string root = dir / "count";
    if (std::string f = CopyTree(c->base, root); !f.empty()) Fail(f);
    std::vector<std::string> args = c->args(root);
    Result r = CliIn(root, args, {{"DP420_IO_COUNT_FILE", root + ".count"},
                                  {"DP420_IO_TRACE_FILE", root + ".trace"}});
    if (r.exit_code != kExitOk) Fail(c->name + " failed undisturbed: " + r.Describe());
    std::string trace = ReadFile(root + ".trace");
    uint64_t repacked = 0, deleted = 0;
    std::istringstream lines(trace);
    for (std::string line; std::getline(lines, line);) {
      bool pack = line.find("/repo/packs/") != std::string::npos &&
                  line.find(".pack") != std::string::npos;
      if (pack && line.find(" unlink ") != std::string::npos) ++deleted;
      if (line.find(" rename ") != std::string::npos &&
          line.find("/repo/relocated/") != std::string::npos) {
        ++repacked;
      }
    }
    if (repacked == 0 || deleted < 2) {
      Fail(c->name + " neither repacks nor deletes packs (" + std::to_string(repacked) +
           " relocation files, " + std::to_string(deleted) + " packs deleted):\n" + trace);
    }
    Listing l = List(root, kVolume);
    if (!l.error.empty() || l.sequence.size() != c->kept.size() || !c->published(root, l)) {
      Fail(c->name + " undisturbed did not leave exactly the kept snapshots");
    }
    Commit cp = FindPublish(trace, c->publish, c->ops);
    if (cp.io == 0 || cp.durable == 0) Fail(c->name + ": no commit and its fsync in the trace");
    uint64_t count = ReadCount(root + ".count");
    if (count == 0) Fail(c->name + ": no I/O counted");
    std::printf("%s (seed %llu): %llu I/Os, committed at I/O %llu, durable after %llu; "
                "%llu packs deleted, %llu relocation files\n",
                c->name.c_str(), static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(count), static_cast<unsigned long long>(cp.io),
                static_cast<unsigned long long>(cp.durable),
                static_cast<unsigned long long>(deleted),
                static_cast<unsigned long long>(repacked));
    fs::remove_all(root);
    fs::remove(root + ".count");
    fs::remove(root + ".trace");
    std::vector<uint64_t> indices = Spread(count, budget == 0 ? count : budget);
    // The commit and its fsync, and the I/Os around them, always.
    for (uint64_t i : {cp.io, cp.io + 1, cp.durable, cp.durable + 1}) {
      if (i <= count) indices.push_back(i);
    }
    std::sort(indices.begin(), indices.end());
    indices.erase(std::unique(indices.begin(), indices.end()), indices.end());
    for (uint64_t i : indices) {
      for (const Disturbance& d : disturb(i)) {
        trials.push_back({c->name + " (volume seed " + std::to_string(seed) + "), " + d.Describe(),
                          [c, d](const std::string& root) { return LifecycleTrial(*c, root, d); }});
      }
    }
  }
  return trials;
}

TEST(IoIndexTest, PowerLossAtEveryIndexOfPruneKeepsEverySnapshot) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  std::vector<Planned> trials =
      PlanLifecycle(dir, "prune", PruneCase, LongMode() ? 0 : 16,
                    PowerLossAt(LongMode() ? 4 : 1));
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("prune power loss at I/O index", trials.size(), failures);
  std::printf("in %.1f s\n", SecondsSince(start));
  EXPECT_GE(trials.size(), 32u) << "fewer power cuts than promised";
}

TEST(IoIndexTest, PowerLossAtEveryIndexOfForgetWithPruneKeepsEverySnapshot) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  std::vector<Planned> trials = PlanLifecycle(dir, "forget", ForgetCase, LongMode() ? 0 : 16,
                                              PowerLossAt(LongMode() ? 4 : 1));
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("forget --prune power loss at I/O index", trials.size(), failures);
  std::printf("in %.1f s\n", SecondsSince(start));
  EXPECT_GE(trials.size(), 32u) << "fewer power cuts than promised";
}

// ---- The agent's side of a remote backup ----

// One agent trial: `dp420 serve` runs undisturbed, the agent of the remote
// scenario's backup (v2 over the baseline's s1) disturbed. After it: the
// server is still up and stops cleanly, the baseline's snapshot verifies
// (restores bit-exact after a crash), a snapshot the agent committed
// restores to v2, and the next remote backup works and restores bit-exact.
std::string AgentTrial(const Scenario& sc, const std::string& root, const Disturbance& d) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) return f;
  Result run;
  std::string log;
  {
    Serve server(root, {});
    if (server.address().empty()) return "the server did not start: " + server.Log();
    // The agent may reconnect and resume its session (a reset, a lost COMMIT).
    std::vector<std::string> args =
        RemoteBackupArgs(root, server.address(), sc.base + "/v2.img");
    *(std::find(args.begin(), args.end(), "--retry-for") + 1) = "10";
    run = CliIn(root, args, {{d.variable, d.value}, {"DP420_IO_TRACE_FILE", root + ".trace"}});
    bool up = server.alive();
    auto stopping = std::chrono::steady_clock::now();
    Result stop = server.Stop();
    double stop_s = SecondsSince(stopping);
    log = "\nserver log:\n" + server.Log();
    if (!up) return "the server died while its agent was disturbed: " + stop.Describe() + log;
    // A backup awaiting a lost agent ends at once: no agent comes back to a
    // stopping server (never the 30 s drain, nor the resume grace).
    if (stop_s > 10) return "the server took " + std::to_string(stop_s) + " s to stop" + log;
    if (stop.timed_out || stop.exit_code != kExitOk) {
      return "the server did not stop cleanly: " + stop.Describe() + log;
    }
  }
  if (std::string f = CheckRun(d, run, "", /*remote=*/true); !f.empty()) {
    return "agent: " + f + log;
  }
  std::string added;
  bool fault = d.variable == "DP420_FAULT_AT_IO";
  if (std::string f = CheckState(sc, root, kRemoteVolume, fault, &added); !f.empty()) {
    return f + log;
  }
  if (run.exit_code == kExitOk && added.empty()) {
    return "the agent exited 0 but nothing was committed" + log;
  }
  std::string f = CheckNextRemoteRun(sc, root, NewestAfter(sc, added));
  if (!f.empty()) return f;
  Listing l = List(root, kRemoteVolume);
  if (!l.error.empty()) return l.error;
  return CheckRestores(root, kRemoteVolume, l.newest, sc.expected_sha);
}

// The I/Os an undisturbed agent makes backing up v2 over s1.
uint64_t CountAgent(const Scenario& sc, const std::string& root) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) Fail(f);
  Serve server(root, {});
  if (server.address().empty()) Fail("serve did not start: " + server.Log());
  Result r = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"),
                   {{"DP420_IO_COUNT_FILE", root + ".count"}});
  if (r.exit_code != kExitOk) Fail("undisturbed remote backup failed: " + r.Describe());
  server.Stop();
  uint64_t count = ReadCount(root + ".count");
  if (count == 0) Fail("the agent's I/O count was not written");
  fs::remove_all(root);
  fs::remove(root + ".count");
  return count;
}

std::vector<Planned> PlanAgent(const TempDir& dir, uint64_t budget, const Disturb& disturb) {
  std::vector<Planned> trials;
  for (uint64_t seed : Seeds(4)) {
    std::string base = dir / ("agent-" + std::to_string(seed));
    auto sc = std::make_shared<Scenario>(RemoteBackup(base, seed));
    sc->name = "remote backup's agent";
    uint64_t count = CountAgent(*sc, dir / "count");
    std::printf("remote backup (seed %llu): the agent made %llu I/Os\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(count));
    for (uint64_t i : Spread(count, budget == 0 ? count : budget)) {
      for (const Disturbance& d : disturb(i)) {
        trials.push_back({Replay(*sc, d, seed),
                          [sc, d](const std::string& root) { return AgentTrial(*sc, root, d); }});
      }
    }
  }
  return trials;
}

TEST(IoIndexTest, AgentCrashAtEveryIndexLeavesTheServerServing) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  std::vector<Planned> trials = PlanAgent(dir, LongMode() ? 0 : 16, CrashAt());
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("agent crash at I/O index", trials.size(), failures);
  std::printf("in %.1f s\n", SecondsSince(start));
  EXPECT_GE(trials.size(), 16u);
}

TEST(IoIndexTest, AgentFaultAtEveryIndexLeavesTheServerServing) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  Disturb faults = FaultsInTurn({"EIO", "reset"}, {"ENOSPC", "EINTR", "EAGAIN", "short"});
  std::vector<Planned> trials = PlanAgent(dir, LongMode() ? 0 : 8, faults);
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("agent faults at I/O index", trials.size(), failures);
  std::printf("in %.1f s\n", SecondsSince(start));
  EXPECT_GE(trials.size(), 24u);
}

// The agent's host loses power: what the agent wrote and had not made durable
// yet (a block id cache being fetched or written) is dropped or torn, the
// server goes on. The next remote backup must still be correct, whatever the
// cache holds then.
TEST(IoIndexTest, AgentPowerLossAtEveryIndexLeavesTheNextBackupCorrect) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  std::vector<Planned> trials = PlanAgent(dir, LongMode() ? 0 : 24, PowerLossAt(LongMode() ? 4 : 1));
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("agent power loss at I/O index", trials.size(), failures);
  std::printf("in %.1f s\n", SecondsSince(start));
  EXPECT_GE(trials.size(), 32u) << "fewer power cuts than promised";
}

// The agent's block id caches under `root`/cache (VOLUME.ids), recursively.
std::vector<std::string> IdCaches(const std::string& root) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root + "/cache", ec);
       !ec && it != fs::end(it); it.increment(ec)) {
    if (it->path().extension() == ".ids") found.push_back(it->path().string());
  }
  return found;
}

// EIO at each read of the agent's block id caches (the parent's, and the new
// one it holds the commit against): the backup goes on (a parent's cache
// that does not read is fetched again) or ends with an I/O error naming EIO
// and the caches — never as damaged data (exit 3) — and the parent's cache
// stays; the next backup works.
std::string CacheEioTrial(const Scenario& sc, const std::string& root, uint64_t index) {
  if (std::string f = CopyTree(sc.base, root); !f.empty()) return f;
  if (IdCaches(root).size() != 1) return "the baseline holds no id cache";
  Result run;
  {
    Serve server(root, {});
    if (server.address().empty()) return "the server did not start: " + server.Log();
    run = CliIn(root, RemoteBackupArgs(root, server.address(), sc.base + "/v2.img"),
                {{"DP420_FAULT_AT_IO", std::to_string(index) + ":EIO"},
                 {"DP420_IO_TRACE_FILE", root + ".trace"}});
    server.Stop();
  }
  // The agent's threads may order their I/Os a little differently from the
  // counted run: what did this run's index `index` hit?
  std::string hit;
  std::istringstream lines(Exists(root + ".trace") ? ReadFile(root + ".trace") : "");
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(std::to_string(index) + " ", 0) == 0) hit = line;
  }
  bool cache_read = hit.find(" read ") != std::string::npos &&
                    hit.find("/cache/") != std::string::npos &&
                    hit.find(".ids") != std::string::npos;
  if (!cache_read) {
    Disturbance d{"DP420_FAULT_AT_IO", std::to_string(index) + ":EIO", "EIO"};
    if (std::string f = CheckRun(d, run, "", true); !f.empty()) return "(hit: " + hit + ") " + f;
  } else if (run.exit_code != kExitOk) {
    if (run.exit_code != kExitFailed) {
      return "exit code " + std::to_string(run.exit_code) + ", not 1 (an I/O error): " +
             run.Describe();
    }
    if (!ContainsIgnoringCase(run.err, "Input/output error") ||
        run.err.find(".ids") == std::string::npos) {
      return "the error names neither EIO nor the cache: " + run.Describe();
    }
  }
  if (IdCaches(root).empty()) return "the id cache was deleted: " + run.Describe();
  std::string added;
  if (std::string f = CheckState(sc, root, kRemoteVolume, true, &added); !f.empty()) return f;
  return CheckNextRemoteRun(sc, root, NewestAfter(sc, added));
}

TEST(IoIndexTest, AgentEioReadingItsIdCacheIsAnIoErrorAndKeepsTheCache) {
  TempDir dir;
  auto sc = std::make_shared<Scenario>(RemoteBackup(dir / "cache-eio", 1000));
  std::string root = dir / "count";
  if (std::string f = CopyTree(sc->base, root); !f.empty()) FAIL() << f;
  {
    Serve server(root, {});
    ASSERT_FALSE(server.address().empty()) << server.Log();
    Result r = CliIn(root, RemoteBackupArgs(root, server.address(), sc->base + "/v2.img"),
                     {{"DP420_IO_TRACE_FILE", root + ".trace"}});
    ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
    server.Stop();
  }
  std::vector<Planned> trials;
  std::istringstream lines(ReadFile(root + ".trace"));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    uint64_t index = 0;
    std::string op, path;
    fields >> index >> op >> path;
    if (op != "read" || path.find("/cache/") == std::string::npos ||
        path.find(".ids") == std::string::npos) {
      continue;
    }
    trials.push_back({"remote backup's agent (volume seed 1000), DP420_FAULT_AT_IO=" +
                          std::to_string(index) + ":EIO (" + path + ")",
                      [sc, index](const std::string& root) {
                        return CacheEioTrial(*sc, root, index);
                      }});
  }
  fs::remove_all(root);
  ASSERT_GE(trials.size(), 2u) << "the agent read no id cache";
  std::vector<std::string> failures = RunTrials(dir / "work", trials);
  Report("agent EIO reading its id caches", trials.size(), failures);
}

}  // namespace
}  // namespace dp420::e2e
