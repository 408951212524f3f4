// Bounded inputs and sources that change under the reader: every numeric
// option out of range is a usage error naming it; a source truncated while a
// backup reads it ends the backup with a clear error (never a signal) and
// commits nothing; concurrent inits of one path leave one valid repository;
// failed operations leave no temporary file behind.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

// Files under `dir` whose names mark them temporary (WriteFileAtomic's
// NAME.tmp.RANDOM, restore's TARGET.dp420-partial, a journal).
std::vector<std::string> TempFiles(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.find(".tmp") != std::string::npos || name.find("partial") != std::string::npos ||
        name.find(".journal") != std::string::npos) {
      found.push_back(e.path().string());
    }
  }
  return found;
}

struct BadValue {
  std::vector<std::string> args;  // the command up to the option
  std::string option;
  std::vector<std::string> values;
};

TEST(BoundsTest, EveryNumericOptionOutOfRangeExits2NamingIt) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "v.raw";
  WritePatternFile(source, 1 << 20, 5);
  std::string key = dir / "k.key";
  std::string clients = dir / "clients.json";
  const std::vector<BadValue> cases = {
      {{"backup", "--repo", repo, "--volume", "v", source}, "--threads",
       {"0", "257", "10000", "-1", "99999999999999999999", "abc"}},
      {{"backup", "--repo", repo, "--volume", "v", source}, "--block-size",
       {"0", "1000", "6000", "8388608", "-4096", "99999999999999999999", "64K"}},
      {{"restore", "--repo", repo, "--volume", "v", dir / "r.img"}, "--threads",
       {"0", "257", "-3", "abc"}},
      {{"restore", "--repo", repo, "--volume", "v", dir / "r.img"}, "--read-through",
       {"4194305", "-1", "99999999999999999999", "lots"}},
      {{"bench", source, "--quick"}, "--seconds", {"0", "61", "-1", "1e400", "soon"}},
      {{"serve", "--repo", repo, "--listen", "127.0.0.1:0", "--clients", clients},
       "--heartbeat-interval", {"0", "3601", "-5", "x"}},
      {{"snapshots", "--remote", "127.0.0.1:1", "--client", "c", "--key-file", key},
       "--heartbeat-interval", {"0", "3601", "-1", "x"}},
      {{"snapshots", "--remote", "127.0.0.1:1", "--client", "c", "--key-file", key},
       "--max-clock-skew", {"0", "3600001", "-1", "x"}},
      {{"snapshots", "--remote", "127.0.0.1:1", "--client", "c", "--key-file", key},
       "--retry-for", {"86401", "-1", "x"}},
      {{"client-set", "--clients", clients, "--client", "c"}, "--max-volumes",
       {"-1", "99999999999999999999", "many"}},
      {{"client-set", "--clients", clients, "--client", "c"}, "--max-stripe-memory",
       {"-1M", "99999999T", "1Q"}},
  };
  for (const BadValue& c : cases) {
    for (const std::string& value : c.values) {
      std::vector<std::string> args = c.args;
      args.push_back(c.option);
      args.push_back(value);
      SCOPED_TRACE(c.option + " " + value);
      Result r = Cli(args);
      EXPECT_EQ(r.exit_code, kExitUsage) << r.Describe();
      EXPECT_EQ(r.term_signal, 0) << r.Describe();
      EXPECT_TRUE(Mentions(r, c.option)) << "names the option\n" << r.Describe();
    }
  }
  EXPECT_FALSE(Exists(dir / "r.img"));
  EXPECT_TRUE(SnapshotIds(repo).empty());
  EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
}

// The engine refuses, not only the CLI: within the CLI's bounds, but over the
// buffer budget at 4 MiB blocks (6 x 4 MiB per thread within 1 GiB).
TEST(BoundsTest, ThreadsOverTheBufferBudgetAreRefusedByTheEngine) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "v.raw";
  WritePatternFile(source, 8 << 20, 6);
  Result r = Cli({"backup", "--repo", repo, "--volume", "v", "--block-size", "4194304",
                  "--threads", "256", source});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.Describe();
  EXPECT_TRUE(Mentions(r, "threads is 256; allowed 1..42")) << r.Describe();
  EXPECT_TRUE(SnapshotIds(repo).empty());
  Json ok = Backup(repo, "v", source, {"--block-size", "4194304", "--threads", "42"});
  EXPECT_EQ(ok.at("threads").get<unsigned>(), 42u);
}

// A cached source file truncated while a backup reads it: the
// cached path maps the file, where a page past the new end is SIGBUS unless
// guarded. Each run either failed cleanly naming the shrink (or finished
// before the truncation), never by a signal; nothing half-made is committed.
TEST(ChangingSourceTest, SourceTruncatedDuringBackupFailsCleanly) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  constexpr uint64_t kSize = 512ull << 20;
  std::string pattern = dir / "pattern.raw";
  WritePatternFile(pattern, kSize, 11);
  int failed_cleanly = 0;
  size_t succeeded = 0;
  for (int i = 0; i < 10; ++i) {
    SCOPED_TRACE("iteration " + std::to_string(i));
    std::string source = dir / "shrinking.raw";
    std::filesystem::copy_file(pattern, source,
                               std::filesystem::copy_options::overwrite_existing);
    // Cached: read it once so that backup takes the mapped path.
    ASSERT_EQ(Sh("cat " + ShellQuote(source) + " > /dev/null").exit_code, 0);
    auto backup =
        Process::Start({CliPath(), "backup", "--repo", repo, "--volume", "s", "--json", source});
    // Cut to 1 MiB at varied moments: behind the readers, so that the
    // extents they are hashing lose their pages.
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + 20 * i));
    Truncate(source, 1 << 20);
    Result r = backup->Wait();
    EXPECT_EQ(r.term_signal, 0) << "killed by a signal\n" << r.Describe();
    if (r.exit_code == kExitOk) {
      // It finished before the truncation, or opened the file after it.
      ++succeeded;
      uint64_t size = ParseJson(r).at("volume_size").get<uint64_t>();
      EXPECT_TRUE(size == kSize || size == 1 << 20) << r.Describe();
      continue;
    }
    EXPECT_EQ(r.exit_code, kExitFailed) << r.Describe();
    EXPECT_TRUE(Mentions(r, "shrank")) << r.Describe();
    EXPECT_TRUE(Mentions(r, "offset")) << r.Describe();
    ++failed_cleanly;
  }
  EXPECT_GT(failed_cleanly, 0) << "no run saw the truncation: the test proves nothing";
  // Every snapshot listed is whole, and the failed runs left nothing.
  Result verify = Cli({"verify", "--repo", repo, "--read-data"});
  DP420_EXPECT_EXIT(verify, kExitOk);
  EXPECT_EQ(SnapshotIds(repo).size(), succeeded);
  EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
}

// A source that grows during the backup is backed up to the size measured
// when the backup started.
TEST(ChangingSourceTest, SourceGrownDuringBackupKeepsTheSizeMeasuredAtStart) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  constexpr uint64_t kSize = 256ull << 20;
  std::string source = dir / "growing.raw";
  WritePatternFile(source, kSize, 12);
  ASSERT_EQ(Sh("cat " + ShellQuote(source) + " > /dev/null").exit_code, 0);
  auto backup = Process::Start(
      {CliPath(), "backup", "--repo", repo, "--volume", "g", "--threads", "1", "--json", source});
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(Sh("head -c 1048576 /dev/urandom >> " + ShellQuote(source)).exit_code, 0);
  Result r = backup->Wait();
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(ParseJson(r).at("volume_size").get<uint64_t>(), kSize);
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo, "--read-data"}), kExitOk);
}

// A device-mapper device that fails 4 KiB at 20 MiB with EIO (an `error`
// target between two `linear` ones over a loop device): the backup ends
// with exit code 1 naming the offset, and commits nothing.
class DmErrorDevice {
 public:
  // Empty, with the reason in *why, when dmsetup is missing or refuses.
  static std::unique_ptr<DmErrorDevice> Create(const std::string& loop, uint64_t sectors,
                                               uint64_t bad_sector, std::string* why) {
    std::string name = "dp420-eio-" + std::to_string(getpid());
    std::string table = "0 " + std::to_string(bad_sector) + " linear " + loop + " 0\n" +
                        std::to_string(bad_sector) + " 8 error\n" +
                        std::to_string(bad_sector + 8) + " " +
                        std::to_string(sectors - bad_sector - 8) + " linear " + loop + " " +
                        std::to_string(bad_sector + 8) + "\n";
    Result r = Sh("command -v dmsetup >/dev/null && printf '" + table + "' | dmsetup create " +
                  name + " && dmsetup mknodes " + name);
    if (r.exit_code != 0) {
      *why = "dmsetup create failed: " + r.All();
      return nullptr;
    }
    return std::unique_ptr<DmErrorDevice>(new DmErrorDevice(name));
  }
  ~DmErrorDevice() { Sh("dmsetup remove --retry " + name_ + " || true"); }
  std::string path() const { return "/dev/mapper/" + name_; }

 private:
  explicit DmErrorDevice(std::string name) : name_(std::move(name)) {}
  std::string name_;
};

TEST(ChangingSourceTest, SourceReturningEioFailsNamingTheOffset) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << "needs loop devices: " << why;
  if (Sh("command -v dmsetup").exit_code != 0) GTEST_SKIP() << "needs dmsetup (device-mapper)";
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string image = dir / "disk.img";
  constexpr uint64_t kSize = 64ull << 20;
  WritePatternFile(image, kSize, 21);
  auto loop = LoopDevice::Attach(image, &why);
  if (!loop) GTEST_SKIP() << "losetup failed: " << why;
  constexpr uint64_t kBadSector = (20ull << 20) / 512;
  auto dm = DmErrorDevice::Create(loop->device(), kSize / 512, kBadSector, &why);
  if (!dm) GTEST_SKIP() << why;
  Result r = Cli({"backup", "--repo", repo, "--volume", "eio", dm->path()});
  EXPECT_EQ(r.exit_code, kExitFailed) << r.Describe();
  EXPECT_EQ(r.term_signal, 0) << r.Describe();
  EXPECT_TRUE(Mentions(r, "offset 20971520")) << r.Describe();
  EXPECT_TRUE(ContainsIgnoringCase(r.All(), "input/output error")) << r.Describe();
  EXPECT_TRUE(SnapshotIds(repo).empty());
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo}), kExitOk);
  EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
}

// Where device-mapper is missing, the fault seam stands in for EIO: the
// third read fails, on the mapped path of a cached file and on the O_DIRECT
// path of one that is not cached, and the error names the offset.
TEST(ChangingSourceTest, InjectedEioNamesTheOffsetOnBothReadPaths) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "v.raw";
  WritePatternFile(source, 64 << 20, 22);
  const std::string cache = "cat " + ShellQuote(source) + " > /dev/null";
  const std::string drop = "sync && dd if=" + ShellQuote(source) +
                           " iflag=nocache count=0 status=none";
  for (const std::string& prepare : {cache, drop}) {
    SCOPED_TRACE(prepare);
    ASSERT_EQ(Sh(prepare).exit_code, 0);
    Result r = Cli({"backup", "--repo", repo, "--volume", "v", source},
                   {{"DP420_FAULT", "read:EIO:3"}});
    EXPECT_EQ(r.exit_code, kExitFailed) << r.Describe();
    EXPECT_EQ(r.term_signal, 0) << r.Describe();
    EXPECT_TRUE(Mentions(r, "at offset ")) << r.Describe();
    EXPECT_TRUE(ContainsIgnoringCase(r.All(), "input/output error")) << r.Describe();
  }
  EXPECT_TRUE(SnapshotIds(repo).empty());
  EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
}

// N processes run `init` on one new path at once: one succeeds, the others
// say it already exists, and the repository works.
TEST(InitRaceTest, ConcurrentInitsOfOnePathLeaveOneValidRepository) {
  TempDir dir;
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::string repo = dir / ("repo" + std::to_string(round));
    std::vector<std::unique_ptr<Process>> inits;
    for (int i = 0; i < 8; ++i) inits.push_back(Process::Start({CliPath(), "init", repo, "--encryption", "none"}));
    int ok = 0;
    for (auto& p : inits) {
      Result r = p->Wait();
      EXPECT_EQ(r.term_signal, 0) << r.Describe();
      if (r.exit_code == kExitOk) {
        ++ok;
        continue;
      }
      EXPECT_EQ(r.exit_code, kExitRefused) << r.Describe();
      EXPECT_TRUE(Mentions(r, "already exists")) << r.Describe();
    }
    EXPECT_EQ(ok, 1);
    std::string source = dir / "v.raw";
    WritePatternFile(source, 4 << 20, 13 + round);
    Backup(repo, "v", source);
    DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo, "--read-data"}), kExitOk);
    EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
  }
}

// An init killed half-way leaves dp420's empty subdirectories and no config:
// the next init of that path finishes the job instead of refusing it.
TEST(InitRaceTest, InitAfterAKilledInitSucceeds) {
  TempDir dir;
  std::string repo = dir / "repo";
  for (const char* sub : {"packs", "snapshots", "locks", "tmp", "keys"}) {
    std::filesystem::create_directories(repo + "/" + sub);
  }
  WriteFile(repo + "/keys/hash.key.tmp.0123456789abcdef", "half");
  Result r = Cli({"init", repo, "--encryption", "none"});
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(TempFiles(repo), std::vector<std::string>{});
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo}), kExitOk);
  // Anything else in the directory is not ours to remove.
  std::string other = dir / "other";
  std::filesystem::create_directories(other + "/packs");
  WriteFile(other + "/notes.txt", "mine\n");
  Result refused = Cli({"init", other, "--encryption", "none"});
  DP420_EXPECT_EXIT(refused, kExitRefused);
  EXPECT_EQ(ReadFile(other + "/notes.txt"), "mine\n");
}

}  // namespace
}  // namespace dp420::e2e
