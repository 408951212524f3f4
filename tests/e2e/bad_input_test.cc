// Wrong input and failing storage: the contract's exit codes, messages that name what is
// wrong, and a repository left as it was (the same snapshots listed, verify clean).

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

void ExpectCleanExit(const Result& r, int code) {
  EXPECT_EQ(r.exit_code, code) << r.Describe();
  EXPECT_EQ(r.term_signal, 0) << "no crash\n" << r.Describe();
}

// A repository with one snapshot of a small volume.
class BadInputTest : public testing::Test {
 protected:
  void SetUp() override {
    repo_ = InitRepo(dir_);
    source_ = dir_ / "volume.raw";
    WritePatternFile(source_, 8 << 20, 71, 3);
    source_sha_ = Sha256File(source_);
    snapshot_ = Backup(repo_, "v", source_).at("snapshot_id").get<std::string>();
    before_ = SnapshotIds(repo_);
  }

  Result BackupOf(const std::string& source, const Env& env = {}) {
    return Cli({"backup", "--repo", repo_, "--volume", "v", source}, env);
  }
  // The repository still lists the same snapshots, verifies clean, and restores.
  void ExpectRepositoryUntouched() {
    EXPECT_EQ(SnapshotIds(repo_), before_);
    Result verify = Cli({"verify", "--repo", repo_, "--read-data"});
    DP420_EXPECT_EXIT(verify, kExitOk);
    std::string target = dir_ / "untouched-check.img";
    Result r = Restore(repo_, "v", snapshot_, target);
    DP420_EXPECT_EXIT(r, kExitOk);
    if (r.exit_code == kExitOk) {
      EXPECT_EQ(Sha256File(target), source_sha_);
    }
    std::filesystem::remove(target);
  }

  TempDir dir_;
  std::string repo_;
  std::string source_;
  std::string source_sha_;
  std::string snapshot_;
  std::vector<std::string> before_;
};

TEST_F(BadInputTest, UsageErrorsExit2) {
  ExpectCleanExit(Cli({}), kExitUsage);
  ExpectCleanExit(Cli({"no-such-command"}), kExitUsage);
  ExpectCleanExit(Cli({"backup", "--repo", repo_}), kExitUsage);
  ExpectCleanExit(
      Cli({"backup", "--repo", repo_, "--volume", "v", "--block-size", "banana", source_}),
      kExitUsage);
  Result too_far = Cli({"restore", "--repo", repo_, "--volume", "v", "--read-through",
                        "4194305", dir_ / "r.img"});
  ExpectCleanExit(too_far, kExitUsage);
  EXPECT_TRUE(Mentions(too_far, "--read-through")) << too_far.Describe();
  EXPECT_FALSE(Exists(dir_ / "r.img"));
  EXPECT_FALSE(Exists(dir_ / "r.img.dp420-partial"));
  ExpectRepositoryUntouched();
}

TEST_F(BadInputTest, MissingSourceExits4NamingIt) {
  std::string missing = dir_ / "no-such-volume.img";
  Result r = BackupOf(missing);
  ExpectCleanExit(r, kExitNotFound);
  EXPECT_TRUE(Mentions(r, missing)) << r.Describe();
  ExpectRepositoryUntouched();
}

TEST_F(BadInputTest, DirectoryAsSourceExits2) {
  Result r = BackupOf(dir_.path());
  ExpectCleanExit(r, kExitUsage);
  EXPECT_TRUE(Mentions(r, dir_.path())) << r.Describe();
  ExpectRepositoryUntouched();
}

TEST_F(BadInputTest, UnreadableSourceFailsNamingIt) {
  if (IsRoot()) GTEST_SKIP() << "root reads a chmod 000 file anyway";
  ASSERT_EQ(chmod(source_.c_str(), 0), 0);
  Result r = BackupOf(source_);
  chmod(source_.c_str(), 0644);
  EXPECT_NE(r.exit_code, kExitOk) << r.Describe();
  EXPECT_EQ(r.term_signal, 0) << r.Describe();
  EXPECT_TRUE(Mentions(r, source_)) << r.Describe();
  ExpectRepositoryUntouched();
}

TEST_F(BadInputTest, NotARepositoryExits4NamingIt) {
  std::string plain = dir_ / "plain-dir";
  std::filesystem::create_directories(plain);
  WriteFile(plain + "/readme.txt", "not a repository\n");
  std::string missing = dir_ / "no-such-repo";
  for (const std::string& repo : {plain, missing}) {
    SCOPED_TRACE(repo);
    Result backup = Cli({"backup", "--repo", repo, "--volume", "v", source_});
    ExpectCleanExit(backup, kExitNotFound);
    EXPECT_TRUE(Mentions(backup, repo)) << backup.Describe();
    Result list = Cli({"snapshots", "--repo", repo});
    ExpectCleanExit(list, kExitNotFound);
    EXPECT_TRUE(Mentions(list, repo)) << list.Describe();
  }
  EXPECT_EQ(ReadFile(plain + "/readme.txt"), "not a repository\n");
  EXPECT_FALSE(Exists(missing)) << "a failed command must not create the repository";
}

TEST_F(BadInputTest, NewerFormatVersionExits7) {
  std::string config = repo_ + "/config";
  EditSignedFile(
      repo_, config,
      [](std::string* line) {
        size_t key = line->find("\"format_version\"");
        if (key == std::string::npos) Fail("no format_version in config: " + *line);
        size_t begin = line->find_first_of("0123456789", key);
        size_t end = line->find_first_not_of("0123456789", begin);
        if (begin == std::string::npos) Fail("format_version is not a number: " + *line);
        line->replace(begin, end - begin, "999");
      },
      Reseal::kRepositoryKey);
  ExpectCleanExit(Cli({"snapshots", "--repo", repo_}), kExitUnsupported);
  ExpectCleanExit(BackupOf(source_), kExitUnsupported);
  ExpectCleanExit(Restore(repo_, "v", snapshot_, dir_ / "r.img"), kExitUnsupported);
  ExpectCleanExit(Cli({"verify", "--repo", repo_}), kExitUnsupported);
  EXPECT_FALSE(Exists(dir_ / "r.img"));
}

TEST_F(BadInputTest, UnknownSnapshotOrVolumeExits4) {
  std::string bogus = "0123456789abcdef0123456789abcdef";
  Result r = Restore(repo_, "v", bogus, dir_ / "r.img");
  ExpectCleanExit(r, kExitNotFound);
  EXPECT_TRUE(Mentions(r, bogus)) << r.Describe();
  EXPECT_FALSE(Exists(dir_ / "r.img"));
  ExpectCleanExit(Restore(repo_, "no-such-volume", "latest", dir_ / "r.img"), kExitNotFound);
  ExpectCleanExit(Cli({"verify", "--repo", repo_, "--volume", "v", "--snapshot", bogus}),
                  kExitNotFound);
  EXPECT_FALSE(Exists(dir_ / "r.img"));
}

TEST_F(BadInputTest, RestoreOverNonEmptyTargetNeedsForce) {
  std::string target = dir_ / "busy.img";
  // Larger than the volume: a forced restore must also cut the file to size.
  WritePatternFile(target, 9 << 20, 72);
  std::string target_sha = Sha256File(target);
  Result refused = Restore(repo_, "v", snapshot_, target);
  ExpectCleanExit(refused, kExitRefused);
  EXPECT_TRUE(Mentions(refused, target)) << refused.Describe();
  EXPECT_EQ(Sha256File(target), target_sha) << "a refused restore leaves the target alone";
  Result forced = Restore(repo_, "v", snapshot_, target, /*force=*/true);
  ExpectCleanExit(forced, kExitOk);
  EXPECT_EQ(Sha256File(target), source_sha_);
}

TEST_F(BadInputTest, InitOnExistingRepositoryExits6) {
  ExpectCleanExit(Cli({"init", repo_}), kExitRefused);
  ExpectRepositoryUntouched();
}

// The fault seam fails the Nth I/O operation of a kind and every later one. Writes of
// neighbouring changed blocks are merged into one operation, so the volume holds 64 MiB
// of new data: many reads and writes, whatever the read size.
TEST_F(BadInputTest, InjectedWriteEnospcExits10AndLeavesRepositoryClean) {
  std::string big = dir_ / "big.raw";
  WritePatternFile(big, 64 << 20, 73);
  Result r =
      Cli({"backup", "--repo", repo_, "--volume", "big", big}, {{"DP420_FAULT", "write:ENOSPC:5"}});
  ExpectCleanExit(r, kExitNoSpace);
  EXPECT_TRUE(ContainsIgnoringCase(r.All(), "space")) << r.Describe();
  ExpectRepositoryUntouched();
  // The same backup without the fault then works.
  Json j = Backup(repo_, "big", big);
  EXPECT_TRUE(j.at("parent").is_null()) << j.dump();
}

TEST_F(BadInputTest, InjectedReadEioExits1AndLeavesRepositoryClean) {
  std::string big = dir_ / "big.raw";
  WritePatternFile(big, 64 << 20, 74);
  Result r =
      Cli({"backup", "--repo", repo_, "--volume", "big", big}, {{"DP420_FAULT", "read:EIO:3"}});
  ExpectCleanExit(r, kExitFailed);
  EXPECT_TRUE(Mentions(r, big)) << "names the source that failed\n" << r.Describe();
  ExpectRepositoryUntouched();
}

// io_uring_setup can answer ENOMEM while RAM is full of page cache (the ring's pages are
// allocated without waiting for reclaim). DP420_RING_SETUP_ENOMEM=N fails the first N
// ring setups of the process: a few are retried and the backup goes through; when it
// persists, the backup ends with a clear error that blames the memlock limit only when
// the limit applies (root has CAP_IPC_LOCK), and the repository is left alone.
TEST_F(BadInputTest, RingSetupOutOfMemoryIsRetriedThenAClearError) {
  std::string img = dir_ / "small.raw";
  WritePatternFile(img, 4 << 20, 75);
  Result passing = Cli({"backup", "--repo", repo_, "--volume", "nomem", "--json", img},
                       {{"DP420_RING_SETUP_ENOMEM", "3"}});
  DP420_ASSERT_EXIT(passing, kExitOk);
  std::string target = dir_ / "small.out";
  DP420_ASSERT_EXIT(Restore(repo_, "nomem", "latest", target), kExitOk);
  EXPECT_EQ(Sha256File(target), Sha256File(img));

  std::vector<std::string> before = SnapshotIds(repo_);
  Result failing = Cli({"backup", "--repo", repo_, "--volume", "nomem", img},
                       {{"DP420_RING_SETUP_ENOMEM", "1000000"}});
  ExpectCleanExit(failing, kExitFailed);
  EXPECT_NE(failing.All().find("io_uring_queue_init: Cannot allocate memory"), std::string::npos)
      << failing.Describe();
  if (IsRoot()) {
    EXPECT_NE(failing.All().find("RLIMIT_MEMLOCK does not apply"), std::string::npos)
        << failing.Describe();
  }
  EXPECT_EQ(SnapshotIds(repo_), before);
  DP420_EXPECT_EXIT(Cli({"verify", "--repo", repo_, "--read-data"}), kExitOk);
}

// A real full file system: a 40 MiB tmpfs holds the repository.
TEST(EnospcTest, FullRepositoryFileSystemExits10AndKeepsEarlierSnapshots) {
  if (!IsRoot()) GTEST_SKIP() << "mounting a tmpfs needs root";
  TempDir dir;
  std::string why;
  auto mount = Mount::Create("tmpfs", dir / "small-fs", "tmpfs", "size=40m,mode=0700", &why);
  if (!mount) GTEST_SKIP() << "cannot mount a tmpfs: " << why;
  std::string repo = mount->target() + "/repo";
  Result init = Cli({"init", repo, "--encryption", "none"});
  DP420_ASSERT_EXIT(init, kExitOk);
  std::string small = dir / "small.raw";
  WritePatternFile(small, 8 << 20, 81, 4);
  std::string small_id = Backup(repo, "small", small).at("snapshot_id").get<std::string>();
  std::vector<std::string> before = SnapshotIds(repo);

  std::string big = dir / "big.raw";
  WritePatternFile(big, 64 << 20, 82);  // 64 MiB of non-zero data into 40 MiB
  Result r = Cli({"backup", "--repo", repo, "--volume", "big", big});
  ExpectCleanExit(r, kExitNoSpace);
  EXPECT_TRUE(ContainsIgnoringCase(r.All(), "space")) << r.Describe();

  EXPECT_EQ(SnapshotIds(repo), before);
  Result verify = Cli({"verify", "--repo", repo, "--read-data"});
  DP420_EXPECT_EXIT(verify, kExitOk);
  std::string target = dir / "small.out";
  Result restore = Restore(repo, "small", small_id, target);
  DP420_ASSERT_EXIT(restore, kExitOk);
  EXPECT_EQ(Sha256File(target), Sha256File(small));
}

}  // namespace
}  // namespace dp420::e2e
