// `backup --compression auto`, the default, end to end through the CLI: with the
// device's read rate forced (DP420_TEST_AUTO_DEVICE_BPS, a test hook) auto picks no
// codec when the device outruns every codec and the strongest on a slow device; a
// volume in the page cache, a volume of zeros, an incompressible volume and a volume
// smaller than the sample are stored raw (or as chosen) and say why; the choice and
// the rates are in --json and in the manifest; a chain of auto-compressed snapshots
// (encrypted and not), also one whose workers stepped down to a faster codec during
// the backup, restores bit-exact.

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

const Env kFastDevice = {{"DP420_TEST_AUTO_DEVICE_BPS", "1e13"}};  // 10 TB/s
// 1 MB/s, and no step down within the test (a sanitized build compresses slowly
// enough to step down, which these tests do not look at).
const Env kSlowDevice = {{"DP420_TEST_AUTO_DEVICE_BPS", "1e6"},
                         {"DP420_TEST_AUTO_WINDOW_MS", "1e9"}};

// `size` bytes of text-like data (numbered lines): compresses well with any codec.
void WriteCompressible(const std::string& path, uint64_t size, int seed) {
  std::string text;
  for (uint64_t line = 0; text.size() < size; ++line) {
    text += "line " + std::to_string(line * 7 + seed) + " of a volume that compresses well\n";
  }
  text.resize(size);
  WriteFile(path, text);
}

class AutoCompressionTest : public testing::Test {
 protected:
  std::string NewRepo(const std::string& name, bool encrypted) {
    std::string repo = dir_ / name;
    std::vector<std::string> args{"init", repo};
    if (encrypted) {
      args.insert(args.end(), {"--encryption", "aes-256-gcm", "--repo-key-file", key_});
    } else {
      args.insert(args.end(), {"--encryption", "none"});
    }
    Result r = Cli(args);
    if (r.exit_code != kExitOk) Fail(r.Describe());
    if (encrypted) keys_[repo] = key_;
    return repo;
  }
  std::vector<std::string> WithKey(const std::string& repo, std::vector<std::string> args) {
    auto it = keys_.find(repo);
    if (it != keys_.end()) args.insert(args.end(), {"--repo-key-file", it->second});
    return args;
  }
  Json Backup(const std::string& repo, const std::string& volume, const std::string& source,
              const Env& env, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"backup", "--repo", repo, "--volume", volume, source, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = Cli(WithKey(repo, args), env);
    if (r.exit_code != kExitOk) Fail(r.Describe());
    return ParseJson(r);
  }
  // The manifest of the volume's latest snapshot, as `snapshots --json` shows it.
  Json Latest(const std::string& repo, const std::string& volume) {
    Result r = Cli(WithKey(repo, {"snapshots", "--repo", repo, "--volume", volume, "--json"}));
    if (r.exit_code != kExitOk) Fail(r.Describe());
    Json all = ParseJson(r);
    if (all.empty()) Fail("no snapshot of " + volume);
    return all.back();
  }
  void ExpectRestores(const std::string& repo, const std::string& volume,
                      const std::string& snapshot, const std::string& sha) {
    std::string target = dir_ / ("restored-" + std::to_string(restores_++));
    Result r = Cli(WithKey(repo, {"restore", "--repo", repo, "--volume", volume, "--snapshot",
                                  snapshot, target}));
    ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
    EXPECT_EQ(Sha256File(target), sha) << volume << " " << snapshot;
  }
  // The latest snapshot restores bit-exact, and every record reads back.
  void ExpectRestoresAndVerifies(const std::string& repo, const std::string& volume,
                                 const std::string& sha) {
    ExpectRestores(repo, volume, "latest", sha);
    Result verify = Cli(WithKey(repo, {"verify", "--repo", repo, "--read-data"}));
    EXPECT_EQ(verify.exit_code, kExitOk) << verify.Describe();
  }

  TempDir dir_;
  std::string key_ = dir_ / "repo.key";
  std::map<std::string, std::string> keys_;
  int restores_ = 0;
};

TEST_F(AutoCompressionTest, FastDevicePicksNoCodecAndSaysWhy) {
  std::string repo = NewRepo("repo", false);
  std::string vol = dir_ / "vol.img";
  WriteCompressible(vol, 8 << 20, 1);
  Json b = Backup(repo, "v", vol, kFastDevice);
  EXPECT_EQ(b["compression"], "off") << b.dump();
  EXPECT_EQ(b["compression_auto"], true);
  EXPECT_EQ(b["blocks_compressed"], 0u);
  const Json& m = b["compression_measured"];
  EXPECT_NE(m["reason"].get<std::string>().find("no codec keeps up"), std::string::npos)
      << m.dump();
  EXPECT_NEAR(m["device_read_bytes_per_s"].get<double>(), 1e13, 1e10);
  ASSERT_TRUE(m["codecs"].is_array());
  EXPECT_EQ(m["codecs"].size(), 3u);  // every candidate was measured and is reported
  for (const Json& c : m["codecs"]) {
    EXPECT_GT(c["compress_bytes_per_s"].get<double>(), 0) << c.dump();
    EXPECT_LT(c["stored_fraction"].get<double>(), 0.9) << c.dump();
  }
  EXPECT_GT(m["hash_bytes_per_s"].get<double>(), 0);
  // The manifest records the same choice.
  Json latest = Latest(repo, "v");
  EXPECT_EQ(latest["compression"], "off");
  EXPECT_EQ(latest["compression_auto"], true);
  EXPECT_EQ(latest["compression_measured"], m);
}

TEST_F(AutoCompressionTest, SlowDevicePicksTheStrongestCodecAndTheChainRestores) {
  for (bool encrypted : {false, true}) {
    SCOPED_TRACE(encrypted ? "encrypted" : "plain");
    std::string repo = NewRepo(encrypted ? "enc" : "plain", encrypted);
    std::string vol = dir_ / (encrypted ? "enc.img" : "plain.img");
    WriteCompressible(vol, (8 << 20) + 12345, 2);  // and a short last block
    Json full = Backup(repo, "v", vol, kSlowDevice);
    EXPECT_EQ(full["compression"], "zstd:3") << full.dump();
    EXPECT_EQ(full["compression_auto"], true);
    EXPECT_GT(full["blocks_compressed"].get<uint64_t>(), 0u);
    EXPECT_LT(full["bytes_written"].get<uint64_t>(), uint64_t{4} << 20) << full.dump();
    const std::string full_sha = Sha256File(vol);
    OverwriteRange(vol, 3 << 20, 1 << 20, 9);  // incompressible now
    Json incr = Backup(repo, "v", vol, kSlowDevice);
    EXPECT_EQ(incr["compression_auto"], true);
    EXPECT_EQ(Latest(repo, "v")["compression"], incr["compression"]);
    ExpectRestores(repo, "v", full["snapshot_id"], full_sha);
    ExpectRestoresAndVerifies(repo, "v", Sha256File(vol));
  }
}

TEST_F(AutoCompressionTest, DefaultIsAutoAndAVolumeInThePageCacheIsStoredRaw) {
  std::string repo = NewRepo("repo", false);
  std::string vol = dir_ / "vol.img";
  WriteCompressible(vol, 8 << 20, 4);
  Sh("cat " + ShellQuote(vol) + " > /dev/null");  // in the page cache
  Json b = Backup(repo, "v", vol, {});
  EXPECT_EQ(b["compression_auto"], true) << b.dump();
  EXPECT_EQ(b["compression"], "off");
  EXPECT_NE(b["compression_measured"]["device_read"].get<std::string>().find("page cache"),
            std::string::npos)
      << b.dump();
  // An explicit codec is no auto.
  Json z = Backup(repo, "w", vol, {}, {"--compression", "zstd:1"});
  EXPECT_EQ(z["compression"], "zstd:1");
  EXPECT_EQ(z["compression_auto"], false);
  EXPECT_FALSE(z.contains("compression_measured"));
  EXPECT_FALSE(Latest(repo, "w").contains("compression_auto"));
  EXPECT_EQ(Latest(repo, "w")["compression"], "zstd:1");
}

TEST_F(AutoCompressionTest, ZeroIncompressibleAndTinyVolumes) {
  std::string repo = NewRepo("repo", false);
  std::string zeros = dir_ / "zeros.img";
  WriteFile(zeros, "");
  Truncate(zeros, 16 << 20);  // sparse: all zero
  Json z = Backup(repo, "zeros", zeros, kSlowDevice);
  EXPECT_EQ(z["compression"], "off") << z.dump();
  EXPECT_NE(z["compression_measured"]["reason"].get<std::string>().find("all zero"),
            std::string::npos);

  std::string noise = dir_ / "noise.img";
  WritePatternFile(noise, 8 << 20, 7);
  Json n = Backup(repo, "noise", noise, kSlowDevice);
  EXPECT_EQ(n["compression"], "off") << n.dump();
  EXPECT_NE(n["compression_measured"]["reason"].get<std::string>().find("does not compress"),
            std::string::npos);
  ExpectRestores(repo, "noise", "latest", Sha256File(noise));

  // Smaller than the sample: two blocks, the second short.
  std::string small = dir_ / "small.img";
  WriteCompressible(small, 100000, 5);
  Json s = Backup(repo, "small", small, kSlowDevice);
  EXPECT_EQ(s["compression"], "zstd:3") << s.dump();
  EXPECT_EQ(s["compression_measured"]["sample_blocks"], 2u);
  ExpectRestores(repo, "small", "latest", Sha256File(small));

  std::string tiny = dir_ / "tiny.img";
  WriteCompressible(tiny, 10000, 6);
  Json t = Backup(repo, "tiny", tiny, kSlowDevice);
  EXPECT_EQ(t["compression"], "off") << t.dump();
  EXPECT_NE(t["compression_measured"]["reason"].get<std::string>().find("under 64 KiB"),
            std::string::npos);
  ExpectRestores(repo, "tiny", "latest", Sha256File(tiny));
}

// The sample claimed a 1 MB/s device; the volume is in the page cache, so the workers
// never wait for a read and compressing sets the pace: with 1 ms windows they step
// down during the backup. The snapshot then holds blocks of several codecs, and
// restores bit-exact.
TEST_F(AutoCompressionTest, WorkersHeldBackByCompressingStepDown) {
  std::string repo = NewRepo("repo", true);
  std::string vol = dir_ / "vol.img";
  WriteCompressible(vol, 96 << 20, 8);
  Sh("cat " + ShellQuote(vol) + " > /dev/null");
  Env env = {{"DP420_TEST_AUTO_DEVICE_BPS", "1e6"}, {"DP420_TEST_AUTO_WINDOW_MS", "1"}};
  Json b = Backup(repo, "v", vol, env, {"--threads", "1"});
  EXPECT_EQ(b["compression"], "zstd:3") << b.dump();
  const Json& m = b["compression_measured"];
  ASSERT_TRUE(m.contains("stepped_down_to")) << m.dump();
  const std::string to = m["stepped_down_to"];
  EXPECT_TRUE(to == "zstd:1" || to == "lz4" || to == "off") << to;
  EXPECT_EQ(Latest(repo, "v")["compression_measured"]["stepped_down_to"], to);
  ExpectRestoresAndVerifies(repo, "v", Sha256File(vol));
}

TEST_F(AutoCompressionTest, ABadCompressionOptionIsRefused) {
  std::string repo = NewRepo("repo", false);
  std::string vol = dir_ / "vol.img";
  WriteCompressible(vol, 1 << 20, 1);
  Result r = Cli({"backup", "--repo", repo, "--volume", "v", vol, "--compression", "automatic"});
  EXPECT_NE(r.exit_code, kExitOk) << r.Describe();
  EXPECT_NE(r.All().find("automatic"), std::string::npos) << r.Describe();
}

}  // namespace
}  // namespace dp420::e2e
