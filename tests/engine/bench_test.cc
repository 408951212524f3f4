// The storage benchmark through the engine's C++ API, on a 64 MiB file: every
// section of the report, a source that stays unchanged, and the scratch file
// of the write test (refused when it exists, removed afterwards).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <string>

#include "engine/core/bench.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

constexpr size_t kSourceBytes = 64u << 20;

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string Sha256Of(const std::string& path) {
  std::vector<uint8_t> bytes = ReadAll(path);
  uint8_t digest[simd::kSha256Bytes];
  simd::Sha256(bytes.data(), bytes.size(), digest);
  return simd::ToHex(digest, sizeof(digest));
}

class BenchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = dir_.path() + "/source.img";
    WriteAll(source_, MakeVolume(kSourceBytes, 7));
    source_sha_ = Sha256Of(source_);
  }
  BenchOptions Quick() const {
    BenchOptions o;
    o.source_path = source_;
    o.seconds_per_point = 0.05;
    o.quick = true;
    return o;
  }
  TempDir dir_;
  std::string source_, source_sha_;
};

void ExpectPositive(const Json& j, const char* key) {
  ASSERT_TRUE(j.contains(key)) << key << " missing in " << j.dump();
  EXPECT_GT(j[key].get<double>(), 0) << key << " in " << j.dump();
}

void ExpectIoPoints(const Json& points, size_t count) {
  ASSERT_TRUE(points.is_array());
  EXPECT_EQ(points.size(), count);
  for (const Json& p : points) {
    for (const char* key : {"qd", "request_bytes", "gbps", "iops", "ops", "seconds"}) {
      ExpectPositive(p, key);
    }
    for (const char* key : {"p50", "p90", "p99", "p999", "max"}) ExpectPositive(p["lat_us"], key);
    EXPECT_LE(p["lat_us"]["p50"].get<double>(), p["lat_us"]["p99"].get<double>());
    EXPECT_LE(p["lat_us"]["p99"].get<double>(), p["lat_us"]["max"].get<double>());
  }
}

TEST_F(BenchTest, QuickRunReportsEverySectionAndLeavesSourceAndDiskAsTheyWere) {
  BenchOptions o = Quick();
  o.write_test_path = dir_.path() + "/scratch";
  unsigned progress_calls = 0;
  o.control.progress = [&](const Progress& p) {
    EXPECT_LE(p.bytes_done, p.bytes_total);
    ++progress_calls;
  };
  Result<Json> r = RunBench(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Json& j = *r;
  EXPECT_EQ(j["device"]["path"], source_);
  EXPECT_EQ(j["device"]["size_bytes"].get<uint64_t>(), kSourceBytes);
  EXPECT_TRUE(j["device"]["direct"].get<bool>()) << "ext4 under /var/tmp allows O_DIRECT";
  ExpectPositive(j["device"], "dio_offset_align_bytes");
  ExpectIoPoints(j["read"], 4);
  ASSERT_EQ(j["kernels"].size(), 12u);
  for (const Json& k : j["kernels"]) ExpectPositive(k, "gbps");
  ASSERT_GE(j["pipeline"].size(), 2u);
  for (const Json& p : j["pipeline"]) {
    for (const char* key : {"threads", "gbps", "bytes", "seconds", "cpu_seconds"}) {
      ExpectPositive(p, key);
    }
  }
  ExpectIoPoints(j["write"], 4);
  EXPECT_EQ(j["write_file"]["size_bytes"].get<uint64_t>() % (4u << 20), 0u);
  const Json& v = j["verdict"];
  for (const char* key : {"limit", "full_backup_limit", "reason"}) {
    EXPECT_FALSE(v[key].get<std::string>().empty()) << key;
  }
  uint64_t block = v["recommended_block_size"].get<uint64_t>();
  EXPECT_TRUE(block >= kMinBlockSize && block <= kMaxBlockSize && (block & (block - 1)) == 0);
  EXPECT_GE(v["recommended_threads"].get<unsigned>(), 1u);
  EXPECT_GT(progress_calls, 4u);
  EXPECT_FALSE(PathExists(o.write_test_path)) << "the scratch file must be deleted";
  EXPECT_EQ(Sha256Of(source_), source_sha_);
}

TEST_F(BenchTest, WriteTestRefusesAnExistingFileBeforeMeasuring) {
  BenchOptions o = Quick();
  o.write_test_path = dir_.path() + "/precious";
  WriteAll(o.write_test_path, {1, 2, 3});
  unsigned progress_calls = 0;
  o.control.progress = [&](const Progress&) { ++progress_calls; };
  Result<Json> r = RunBench(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kExists) << r.status().ToString();
  EXPECT_NE(r.status().message().find(o.write_test_path), std::string::npos);
  EXPECT_EQ(progress_calls, 0u) << "refused before anything was measured";
  EXPECT_EQ(ReadAll(o.write_test_path), (std::vector<uint8_t>{1, 2, 3}));
}

TEST_F(BenchTest, CancelDuringTheWriteTestRemovesTheScratchFile) {
  std::atomic<bool> cancel{false};
  BenchOptions o = Quick();
  o.write_test_path = dir_.path() + "/scratch";
  o.control.cancel = &cancel;
  bool saw_scratch = false;
  o.control.progress = [&](const Progress& p) {
    if (std::string(p.phase) != "bench write") return;
    saw_scratch = PathExists(o.write_test_path);
    cancel.store(true);
  };
  Result<Json> r = RunBench(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCanceled) << r.status().ToString();
  EXPECT_TRUE(saw_scratch);
  EXPECT_FALSE(PathExists(o.write_test_path));
  EXPECT_EQ(Sha256Of(source_), source_sha_);
}

TEST_F(BenchTest, RefusesBadInput) {
  BenchOptions o = Quick();
  o.source_path = dir_.path() + "/missing.img";
  EXPECT_EQ(RunBench(o).status().code(), Code::kNotFound);
  o.source_path = dir_.path();
  EXPECT_EQ(RunBench(o).status().code(), Code::kInvalidArgument);
  o.source_path = dir_.path() + "/tiny.img";
  WriteAll(o.source_path, std::vector<uint8_t>(4096, 1));
  EXPECT_EQ(RunBench(o).status().code(), Code::kInvalidArgument);
  o = Quick();
  o.seconds_per_point = 0;
  EXPECT_EQ(RunBench(o).status().code(), Code::kInvalidArgument);
  o = Quick();
  o.write_test_path = dir_.path() + "/no/such/dir/scratch";
  EXPECT_EQ(RunBench(o).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace dp420
