// The interleaving harness: rounds of real dp420 processes racing on one
// repository — backups of two volumes, forgets by policy and by id, restores,
// verifies and prunes — started in a seeded random order
// with random delays, some killed with SIGKILL at a random moment. A model
// follows what must exist: every snapshot a backup reported, less what a
// forget reported forgotten. After every round:
//   - each finished operation ended as it may (a restore either wrote the
//     exact bytes of its snapshot or found it forgotten; a verify that ran
//     concurrently found nothing);
//   - the volumes list exactly the model's snapshots (a killed backup may
//     have committed, a killed forget may have forgotten: then the listing
//     decides, within what was possible);
//   - verify is clean; every 10 rounds one snapshot of each volume restores
//     bit-exact, and every 100 rounds verify --read-data is clean and every
//     snapshot restores bit-exact.
// DP420_INTERLEAVE_ROUNDS (default 1000, spread over DP420_INTERLEAVE_WORKERS
// independent repositories, default 4) and DP420_INTERLEAVE_SEED set the run;
// a failure names the seed and round, which replays it with one worker.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr uint64_t kVolumeBytes = 256 * 1024;
constexpr const char* kVolumes[] = {"a", "b"};
constexpr std::chrono::seconds kOpTimeout{120};

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

struct Op {
  std::string kind;    // backup, forget, forget-id, restore, verify
  std::string volume;
  std::string snapshot;  // restore, forget-id
  std::string target;    // restore
  int keep = 0;          // forget
  std::chrono::milliseconds delay{0};
  std::chrono::milliseconds kill_after{0};  // 0: not killed
  std::unique_ptr<Process> process;
  Result result;
};

class Harness {
 public:
  Harness(const std::string& root, uint64_t seed) : root_(root), rng_(seed) {
    repo_ = root_ + "/repo";
    Expect(Run({"init", repo_, "--encryption", "none"}).exit_code == kExitOk, "init");
    for (const char* v : kVolumes) {
      std::string source = Source(v);
      WritePatternFile(source, kVolumeBytes, seed + v[0]);
      Result r = Run({"backup", "--repo", repo_, "--volume", v, source, "--block-size", "4096",
                      "--json"});
      Expect(r.exit_code == kExitOk, "first backup: " + r.Describe());
      Adopt(v, Json::parse(r.out).at("snapshot_id").get<std::string>(), Sha256File(source));
    }
  }

  // One round; "" when every check held, else what did not.
  std::string Round(uint64_t round) {
    failure_.clear();
    for (const char* v : kVolumes) {
      for (int i = std::uniform_int_distribution<int>(1, 3)(rng_); i > 0; --i) {
        uint64_t block = std::uniform_int_distribution<uint64_t>(0, kVolumeBytes / 4096 - 1)(rng_);
        OverwriteRange(Source(v), block * 4096, 4096, rng_());
      }
      source_sum_[v] = Sha256File(Source(v));
    }
    std::vector<Op> ops = Draw(round);
    for (auto& op : ops) Launch(op);
    for (auto& op : ops) Finish(op);
    for (const auto& op : ops) Judge(op);
    Reconcile(ops);
    Check(round % 100 == 99, round % 10 == 9);
    if (failure_.empty()) return "";
    std::string all = failure_ + "\nthe round's operations, in start order:";
    for (const auto& op : ops) {
      all += "\n  " + op.kind + " " + op.volume + " " + op.snapshot + " keep " +
             std::to_string(op.keep) + (Killed(op) ? " KILLED" : "") + " -> exit " +
             std::to_string(op.result.exit_code) + " " + op.result.out.substr(0, 2000) +
             op.result.err.substr(0, 300);
    }
    return all;
  }

 private:
  std::string Source(const std::string& v) const { return root_ + "/source-" + v + ".img"; }

  Result Run(const std::vector<std::string>& args) {
    std::vector<std::string> argv{CliPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, RunEnv(), kOpTimeout);
  }
  Env RunEnv() const { return {{"DP420_STATE_DIR", root_ + "/state"}}; }

  void Expect(bool ok, const std::string& what) {
    if (!ok && failure_.empty()) failure_ = what;
  }

  void Adopt(const std::string& v, const std::string& id, const std::string& sum) {
    alive_[v].insert(id);
    sums_[id] = sum;
  }

  std::string AnyAlive(const std::string& v) {
    const auto& set = alive_[v];
    if (set.empty()) return "ffffffffffffffff";
    auto it = set.begin();
    std::advance(it, std::uniform_int_distribution<size_t>(0, set.size() - 1)(rng_));
    return *it;
  }

  std::vector<Op> Draw(uint64_t round) {
    static const char* kKinds[] = {"backup",  "backup", "forget", "forget-id",
                                   "restore", "verify", "prune"};
    std::vector<Op> ops(std::uniform_int_distribution<int>(2, 4)(rng_));
    for (size_t i = 0; i < ops.size(); ++i) {
      Op& op = ops[i];
      op.kind = kKinds[std::uniform_int_distribution<int>(0, 6)(rng_)];
      op.volume = kVolumes[std::uniform_int_distribution<int>(0, 1)(rng_)];
      op.keep = std::uniform_int_distribution<int>(1, 4)(rng_);
      op.snapshot = AnyAlive(op.volume);
      op.target = root_ + "/restored-" + std::to_string(round) + "-" + std::to_string(i);
      op.delay = std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 30)(rng_));
      if (std::uniform_int_distribution<int>(0, 9)(rng_) == 0) {
        op.kill_after = std::chrono::milliseconds(std::uniform_int_distribution<int>(1, 60)(rng_));
      }
    }
    std::sort(ops.begin(), ops.end(), [](const Op& x, const Op& y) { return x.delay < y.delay; });
    return ops;
  }

  std::vector<std::string> Args(const Op& op) const {
    if (op.kind == "backup") {
      return {"backup", "--repo", repo_, "--volume", op.volume, Source(op.volume),
              "--block-size", "4096", "--json"};
    }
    if (op.kind == "forget") {
      return {"forget", "--repo", repo_, "--volume", op.volume, "--keep-last",
              std::to_string(op.keep), "--json"};
    }
    if (op.kind == "forget-id") {
      return {"forget", "--repo", repo_, "--volume", op.volume, "--snapshot", op.snapshot, "--json"};
    }
    if (op.kind == "restore") {
      return {"restore", "--repo", repo_, "--volume", op.volume, "--snapshot", op.snapshot,
              op.target, "-q"};
    }
    if (op.kind == "prune") return {"prune", "--repo", repo_, "--max-unused", "5", "--json"};
    return {"verify", "--repo", repo_};
  }

  void Launch(Op& op) {
    std::this_thread::sleep_for(op.delay);  // sorted by delay: a staggered start
    std::vector<std::string> argv{CliPath()};
    auto args = Args(op);
    argv.insert(argv.end(), args.begin(), args.end());
    op.process = Process::Start(argv, RunEnv());
  }

  void Finish(Op& op) {
    if (op.kill_after.count() > 0) {
      std::this_thread::sleep_for(op.kill_after);
      op.process->Kill(SIGKILL);
    }
    op.result = op.process->Wait(kOpTimeout);
  }

  bool Killed(const Op& op) const { return op.result.term_signal == SIGKILL; }

  void Judge(const Op& op) {
    if (Killed(op)) return;
    const Result& r = op.result;
    std::string where = op.kind + " " + op.volume + ": " + r.Describe();
    if (op.kind == "backup") {
      Expect(r.exit_code == kExitOk, where);
    } else if (op.kind == "forget") {
      Expect(r.exit_code == kExitOk, where);
    } else if (op.kind == "forget-id") {
      // The newest cannot go (refused); a snapshot another forget took is gone.
      Expect(r.exit_code == kExitOk || r.exit_code == kExitRefused || r.exit_code == kExitNotFound,
             where);
    } else if (op.kind == "restore") {
      Expect(r.exit_code == kExitOk || r.exit_code == kExitNotFound, where);
      if (r.exit_code == kExitOk) {
        Expect(Sha256File(op.target) == sums_[op.snapshot], "restore of " + op.snapshot +
                                                                "wrote other bytes");
      }
    } else if (op.kind == "prune") {
      Expect(r.exit_code == kExitOk || r.exit_code == kExitBusy, where);  // busy: another prune
    } else {
      Expect(r.exit_code == kExitOk, where);
    }
  }

  // Applies the finished operations to the model, then what the killed ones did.
  void Reconcile(const std::vector<Op>& ops) {
    for (const auto& op : ops) {
      if (Killed(op) || op.result.exit_code != kExitOk) continue;
      if (op.kind == "backup") {
        Adopt(op.volume, Json::parse(op.result.out).at("snapshot_id").get<std::string>(),
              source_sum_[op.volume]);
      } else if (op.kind == "forget" || op.kind == "forget-id") {
        Json report = Json::parse(op.result.out);  // outlives the loop over its part
        for (const auto& s : report.at("snapshots")) {
          if (!s.at("keep").get<bool>()) alive_[op.volume].erase(s.at("snapshot_id").get<std::string>());
        }
      }
    }
    std::map<std::string, std::set<std::string>> all = Listed();
    for (const char* v : kVolumes) {
      std::set<std::string>& listed = all[v];
      bool killed_backup = false, killed_forget = false;
      for (const auto& op : ops) {
        if (!Killed(op) || op.volume != v) continue;
        killed_backup |= op.kind == "backup";
        killed_forget |= op.kind != "backup" && op.kind.rfind("forget", 0) == 0;
      }
      for (const auto& id : listed) {
        if (alive_[v].count(id)) continue;
        // Only a killed backup may have added it, with the round's bytes.
        Expect(killed_backup && !sums_.count(id), "volume " + std::string(v) + " lists " + id +
                                                      ", which no backup reported");
        Adopt(v, id, source_sum_[v]);
      }
      for (auto it = alive_[v].begin(); it != alive_[v].end();) {
        if (listed.count(*it)) {
          ++it;
          continue;
        }
        Expect(killed_forget, "volume " + std::string(v) + " lost snapshot " + *it);
        it = alive_[v].erase(it);
      }
    }
  }

  // Every volume's listed snapshots (one process).
  std::map<std::string, std::set<std::string>> Listed() {
    Result r = Run({"snapshots", "--repo", repo_, "--json"});
    Expect(r.exit_code == kExitOk, "snapshots: " + r.Describe());
    std::map<std::string, std::set<std::string>> ids;
    if (r.exit_code != kExitOk) return ids;
    Json list = Json::parse(r.out);
    for (const auto& s : list) {
      Expect(!s.value("damaged", false), "damaged snapshot listed: " + s.dump());
      ids[s.at("volume").get<std::string>()].insert(s.at("snapshot_id").get<std::string>());
    }
    return ids;
  }

  // verify after every round; with `restore` one snapshot of each volume
  // restored, `thorough`: --read-data and every snapshot.
  void Check(bool thorough, bool restore) {
    std::vector<std::string> verify{"verify", "--repo", repo_};
    if (thorough) verify.push_back("--read-data");
    Result v = Run(verify);
    Expect(v.exit_code == kExitOk, "verify: " + v.Describe());
    for (const char* vol : kVolumes) {
      if (!restore && !thorough) break;
      std::vector<std::string> ids(alive_[vol].begin(), alive_[vol].end());
      if (!thorough && !ids.empty()) ids = {AnyAlive(vol)};
      for (const auto& id : ids) {
        std::string target = root_ + "/check.img";
        Result r = Run({"restore", "--repo", repo_, "--volume", vol, "--snapshot", id, target,
                        "--force", "-q"});
        Expect(r.exit_code == kExitOk && Sha256File(target) == sums_[id],
               "restore " + id + ": " + r.Describe());
      }
    }
    for (const auto& e : fs::directory_iterator(root_)) {
      if (e.path().filename().string().rfind("restored-", 0) == 0) fs::remove(e.path());
    }
  }

  std::string root_, repo_;
  std::mt19937_64 rng_;
  std::map<std::string, std::set<std::string>> alive_;  // volume -> snapshot ids
  std::map<std::string, std::string> sums_;             // snapshot id -> image SHA-256
  std::map<std::string, std::string> source_sum_;       // volume -> this round's image
  std::string failure_;
};

TEST(InterleaveTest, RacingProcessesNeverLoseOrCorruptASnapshot) {
  // Independent repositories in parallel: each round waits on fsyncs and
  // process starts far more than on the CPU.
  uint64_t rounds = EnvOr("DP420_INTERLEAVE_ROUNDS", 1000);
  uint64_t seed = EnvOr("DP420_INTERLEAVE_SEED", 20261206);
  unsigned workers = unsigned(std::clamp<uint64_t>(EnvOr("DP420_INTERLEAVE_WORKERS", 4), 1, 16));
  // On tmpfs when there is one: the rounds are about ordering, not durability
  // (the crash and power-loss suites cover that), and fsyncs on a disk would
  // make 1,000 rounds take many minutes.
  std::string base = fs::exists("/dev/shm") ? "/dev/shm" : "/var/tmp";
  std::string dir = base + "/dp420-interleave-" + std::to_string(getpid());
  fs::create_directories(dir);
  struct Cleanup {
    std::string path;
    ~Cleanup() { std::error_code ec; fs::remove_all(path, ec); }
  } cleanup{dir};
  std::vector<std::string> failures(workers);
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      std::string root = dir + "/w" + std::to_string(w);
      fs::create_directories(root);
      Harness h(root, seed + w);
      for (uint64_t round = w; round < rounds; round += workers) {
        std::string failure = h.Round(round);
        if (!failure.empty()) {
          failures[w] = "DP420_INTERLEAVE_SEED=" + std::to_string(seed + w) +
                        " DP420_INTERLEAVE_WORKERS=1, round " + std::to_string(round / workers) +
                        ": " + failure;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& f : failures) EXPECT_EQ(f, "");
  RecordProperty("rounds", std::to_string(rounds));
}

}  // namespace
}  // namespace dp420::e2e
