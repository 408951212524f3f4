// `dp420 bench`: the JSON report on a file, the table on a loop device, and the
// write test's scratch file. The measured source must never change.

#include <gtest/gtest.h>

#include <string>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr uint64_t kVolumeBytes = 64ull << 20;

void ExpectPositive(const Json& j, const char* key) {
  ASSERT_TRUE(j.contains(key)) << key << " missing in " << j.dump();
  EXPECT_GT(j[key].get<double>(), 0) << key << " in " << j.dump();
}

TEST(BenchCliTest, QuickJsonOnAFileHasEverySectionAndLeavesTheFileUnchanged) {
  TempDir dir;
  std::string source = dir / "volume.raw";
  WritePatternFile(source, kVolumeBytes, 5, 4);
  std::string sha = Sha256File(source);
  Result r = Cli({"bench", "--quick", "--json", "--seconds", "0.05", source});
  DP420_ASSERT_EXIT(r, kExitOk);
  Json j = ParseJson(r);
  EXPECT_EQ(j.at("device").at("path"), source);
  EXPECT_EQ(j.at("device").at("size_bytes").get<uint64_t>(), kVolumeBytes);
  EXPECT_TRUE(j.at("device").contains("direct"));
  ASSERT_EQ(j.at("read").size(), 4u);
  for (const Json& p : j.at("read")) {
    ExpectPositive(p, "gbps");
    ExpectPositive(p, "iops");
    for (const char* key : {"p50", "p90", "p99", "p999", "max"}) {
      ExpectPositive(p.at("lat_us"), key);
    }
  }
  EXPECT_FALSE(j.at("kernels").empty());
  for (const Json& k : j.at("kernels")) ExpectPositive(k, "gbps");
  EXPECT_FALSE(j.at("pipeline").empty());
  for (const Json& p : j.at("pipeline")) ExpectPositive(p, "gbps");
  EXPECT_FALSE(j.contains("write"));
  const Json& v = j.at("verdict");
  for (const char* key : {"limit", "recommended_block_size", "recommended_threads", "reason"}) {
    EXPECT_TRUE(v.contains(key)) << key << " missing in " << v.dump();
  }
  EXPECT_EQ(Sha256File(source), sha);
}

TEST(BenchCliTest, FullGridOnALoopDevicePrintsATableAndLeavesTheDeviceUnchanged) {
  std::string why;
  if (!CanUseLoop(&why)) {
    std::cout << "skipping: needs loop devices: " << why << std::endl;
    GTEST_SKIP() << "needs loop devices: " << why;
  }
  TempDir dir;
  std::string image = dir / "volume.raw";
  WritePatternFile(image, kVolumeBytes, 6, 3);
  auto loop = LoopDevice::Attach(image, &why);
  ASSERT_TRUE(loop) << why;
  std::string sha = Sha256File(loop->device());
  Result r = Cli({"bench", "--seconds", "0.05", loop->device()});
  DP420_ASSERT_EXIT(r, kExitOk);
  for (const char* needle : {"block-device", "read", "kernels", "pipeline", "verdict",
                             "recommended: --block-size"}) {
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.Describe();
  }
  EXPECT_NE(r.out.find("4 MiB"), std::string::npos) << "the full grid\n" << r.Describe();
  EXPECT_EQ(Sha256File(loop->device()), sha);
}

TEST(BenchCliTest, WriteTestRefusesAnExistingFileAndRemovesItsScratchFile) {
  TempDir dir;
  std::string source = dir / "volume.raw";
  WritePatternFile(source, kVolumeBytes, 7);
  std::string existing = dir / "existing";
  WriteFile(existing, "keep me");
  Result refused = Cli({"bench", "--quick", "--json", "--write-test", existing, source});
  DP420_EXPECT_EXIT(refused, kExitRefused);
  EXPECT_TRUE(ContainsIgnoringCase(refused.err, existing)) << refused.Describe();
  EXPECT_TRUE(ParseJson(refused).contains("error")) << refused.Describe();
  EXPECT_EQ(ReadFile(existing), "keep me");

  std::string scratch = dir / "scratch";
  Result r = Cli({"bench", "--quick", "--json", "--seconds", "0.05", "--write-test", scratch,
                  source});
  DP420_ASSERT_EXIT(r, kExitOk);
  Json j = ParseJson(r);
  ASSERT_EQ(j.at("write").size(), 4u);
  for (const Json& p : j.at("write")) ExpectPositive(p, "gbps");
  EXPECT_FALSE(Exists(scratch)) << "the scratch file must be deleted";
}

TEST(BenchCliTest, MissingSourceAndBadSecondsAreReported) {
  TempDir dir;
  Result missing = Cli({"bench", "--quick", dir / "missing.img"});
  DP420_EXPECT_EXIT(missing, kExitNotFound);
  Result bad = Cli({"bench", "--seconds", "0", dir / "missing.img"});
  DP420_EXPECT_EXIT(bad, kExitUsage);
}

}  // namespace
}  // namespace dp420::e2e
