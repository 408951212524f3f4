// Crashes during a backup (the CLI's DP420_TEST_CRASH hook, and kill -9 at random
// moments): committed snapshots survive intact, verify stays clean, the next backup works.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

using ExpectedSha = std::function<std::string(const Json& manifest)>;

// Restores every listed snapshot and compares it with what its source was; returns the
// listed manifests.
Json ExpectListedSnapshotsRestoreExactly(const std::string& repo, const TempDir& dir,
                                         const ExpectedSha& expected_sha) {
  Json manifests = Snapshots(repo);
  for (const auto& m : manifests) {
    std::string id = m.at("snapshot_id").get<std::string>();
    std::string volume = m.at("volume").get<std::string>();
    SCOPED_TRACE("snapshot " + id + " of " + volume);
    std::string target = dir / ("check-" + id + ".img");
    Result r = Restore(repo, volume, id, target);
    EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
    if (r.exit_code == kExitOk) {
      EXPECT_EQ(Sha256File(target), expected_sha(m));
    }
    std::filesystem::remove(target);
  }
  return manifests;
}

bool Listed(const Json& manifests, const std::string& id) {
  return std::any_of(manifests.begin(), manifests.end(),
                     [&](const Json& m) { return m.at("snapshot_id") == id; });
}

void ExpectVerifyClean(const std::string& repo) {
  Result verify = Cli({"verify", "--repo", repo, "--read-data"});
  DP420_EXPECT_EXIT(verify, kExitOk);
}

std::string PointName(const testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  std::replace_if(
      name.begin(), name.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); },
      '_');
  return name;
}

class CrashPointTest : public testing::TestWithParam<std::string> {};

TEST_P(CrashPointTest, CommittedSnapshotsSurviveAndNextBackupWorks) {
  const std::string point = GetParam();
  TempDir dir;
  Ext4Volume vol = MakeExt4Volume(dir, "vol", 128, 48, 8);
  std::string repo = InitRepo(dir);
  // 64 KiB blocks, so that the change below spans well over 50 changed blocks.
  const std::vector<std::string> block_size{"--block-size", "65536"};
  Json s1 = Backup(repo, "vol", vol.image, block_size);
  const std::string s1_id = s1.at("snapshot_id").get<std::string>();
  const std::string s1_sha = Sha256File(vol.image);
  MutateExt4Volume(vol, dir, 41, 2.0, /*add_file_mib=*/16);
  const std::string s2_sha = Sha256File(vol.image);
  std::vector<std::string> before = SnapshotIds(repo);

  Result crashed = Cli(
      {"backup", "--repo", repo, "--volume", "vol", "--block-size", "65536", "--json", vol.image},
      {{"DP420_TEST_CRASH", point}});
  ASSERT_EQ(crashed.term_signal, SIGKILL) << "the backup did not crash at " << point << "\n"
                                          << crashed.Describe();

  ExpectedSha expected = [&](const Json& m) {
    return m.at("snapshot_id") == s1_id ? s1_sha : s2_sha;
  };
  Json listed = ExpectListedSnapshotsRestoreExactly(repo, dir, expected);
  EXPECT_TRUE(Listed(listed, s1_id)) << "the committed snapshot vanished: " << listed.dump();
  const bool renamed = point == "after-rename" || point == "before-head";
  if (!renamed) {
    // Nothing is published before the manifest's rename.
    EXPECT_EQ(SnapshotIds(repo), before) << listed.dump();
  } else {
    // The manifest is in place; the head may still name the snapshot before it,
    // and the newest is found by descent from it.
    EXPECT_EQ(listed.size(), 2u) << listed.dump();
  }
  ExpectVerifyClean(repo);

  // The next backup finds the repository usable (no stale lock, no half-written state).
  Json next = Backup(repo, "vol", vol.image, block_size);
  auto latest = std::max_element(listed.begin(), listed.end(), [](const Json& a, const Json& b) {
    return a.at("sequence").get<int64_t>() < b.at("sequence").get<int64_t>();
  });
  ASSERT_NE(latest, listed.end());
  EXPECT_EQ(next.at("parent"), latest->at("snapshot_id")) << "parent is the latest snapshot";
  ExpectListedSnapshotsRestoreExactly(repo, dir, expected);
  ExpectVerifyClean(repo);
}

INSTANTIATE_TEST_SUITE_P(Points, CrashPointTest,
                         testing::Values("after-data:1", "after-data:50", "before-table",
                                         "before-manifest", "before-rename", "after-rename",
                                         "before-head"),
                         PointName);

TEST(CrashTest, CrashDuringFirstBackupLeavesUsableRepository) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "volume.raw";
  WritePatternFile(source, 32 << 20, 51, 4);
  Result crashed = Cli({"backup", "--repo", repo, "--volume", "v", source},
                       {{"DP420_TEST_CRASH", "after-data:1"}});
  ASSERT_EQ(crashed.term_signal, SIGKILL) << crashed.Describe();
  EXPECT_TRUE(SnapshotIds(repo).empty());
  ExpectVerifyClean(repo);
  Json j = Backup(repo, "v", source);
  EXPECT_TRUE(j.at("parent").is_null()) << "still the first backup of v: " << j.dump();
  std::string sha = Sha256File(source);
  ExpectListedSnapshotsRestoreExactly(repo, dir, [&](const Json&) { return sha; });
}

// kill -9 at random moments of a larger backup. The seed is printed; set
// DP420_E2E_SEED to replay it.
TEST(CrashTest, KillAtRandomMomentOfLargeBackup) {
  constexpr int kAttempts = 3;
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string small = dir / "small.raw";
  WritePatternFile(small, 16 << 20, 61, 4);
  Json s1 = Backup(repo, "small", small);
  const std::string small_sha = Sha256File(small);
  std::string big = dir / "big.raw";
  WritePatternFile(big, 384ull << 20, 62, 7);
  const std::string big_sha = Sha256File(big);
  ExpectedSha expected = [&](const Json& m) {
    return m.at("volume") == "small" ? small_sha : big_sha;
  };

  // How long an undisturbed backup of the big volume takes, in a scratch repository.
  std::string scratch = InitRepo(dir, "scratch");
  auto t0 = std::chrono::steady_clock::now();
  Backup(scratch, "big", big);
  double full_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::filesystem::remove_all(scratch);

  const char* seed_env = std::getenv("DP420_E2E_SEED");
  uint64_t seed = seed_env != nullptr ? std::stoull(seed_env) : std::random_device{}();
  std::cout << "[ info ] DP420_E2E_SEED=" << seed << ", undisturbed backup " << full_s << " s"
            << std::endl;
  testing::Test::RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> moment(0.05, 0.95);

  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    SCOPED_TRACE("attempt " + std::to_string(attempt));
    double delay_s = moment(rng) * full_s;
    auto backup =
        Process::Start({CliPath(), "backup", "--repo", repo, "--volume", "big", "--json", big});
    std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
    backup->Kill(SIGKILL);
    Result r = backup->Wait();
    std::cout << "[ info ] attempt " << attempt << ": kill -9 after " << delay_s << " s: "
              << (r.term_signal == SIGKILL
                      ? "killed"
                      : "had already finished, exit " + std::to_string(r.exit_code))
              << std::endl;
    if (r.term_signal != SIGKILL) {
      EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
    }
    Json listed = ExpectListedSnapshotsRestoreExactly(repo, dir, expected);
    EXPECT_TRUE(Listed(listed, s1.at("snapshot_id").get<std::string>())) << listed.dump();
    ExpectVerifyClean(repo);
  }
  Json last = Backup(repo, "big", big);
  Result r = Restore(repo, "big", last.at("snapshot_id").get<std::string>(), dir / "big.out");
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(Sha256File(dir / "big.out"), big_sha);
  ExpectVerifyClean(repo);
}

}  // namespace
}  // namespace dp420::e2e
