// Random corruption trials over every kind of repository file: each trial
// copies a pristine repository (three snapshots of one volume, one of
// another), damages it one way — a flipped byte, a cut, a deleted file, two
// files swapped, a manifest or head forged without the key, a folder rolled
// back, a fork sealed with a stolen key — and requires that the damage is
// detected (the repository does not open, or `verify --read-data` reports a
// problem) and that no restore ever writes wrong bytes (each snapshot
// restores exactly or fails). DP420_CORRUPTION_TRIALS sets the number of
// trials (default 200; the long mode runs 5,000), DP420_CORRUPTION_SEED the
// seed (default: random, printed).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/history.h"
#include "engine/core/restore.h"
#include "engine/core/verify.h"
#include "io/file.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

namespace fs = std::filesystem;
using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

std::string Sha(const std::vector<uint8_t>& bytes) {
  uint8_t d[32];
  simd::Sha256(bytes.data(), bytes.size(), d);
  return simd::ToHex(d, 32);
}

std::string ReadText(const std::string& path) {
  auto t = io::ReadFile(path);
  return t.ok() ? t.value() : "";
}

void WriteText(const std::string& path, const std::string& text) {
  ASSERT_TRUE(io::WriteFileAtomic(path, text).ok()) << path;
}

class CorruptionTrials : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("DP420_STATE_DIR", (dir_.path() + "/state").c_str(), 1);
    pristine_ = dir_.path() + "/pristine";
    repo_ = testing::NewRepository(pristine_);
    ASSERT_NE(repo_, nullptr);
    std::string source = dir_.path() + "/source.img";
    // 40 blocks of 64 KiB with a zero run and a short tail, changed between snapshots.
    std::vector<uint8_t> data = MakeVolume((40 << 16) + 5000, 1);
    std::fill(data.begin() + (10 << 16), data.begin() + (14 << 16), 0);
    for (int i = 0; i < 3; ++i) {
      if (i > 0) {
        for (size_t b : {3u, 17u, 30u}) data[(b << 16) + 100 * i] ^= 0x5a;
      }
      WriteAll(source, data);
      ASSERT_NO_FATAL_FAILURE(Backup("vm1", source, &data));
      if (i == 1) fs::copy(pristine_ + "/snapshots/vm1", dir_.path() + "/vm1-at-2",
                           fs::copy_options::recursive);
    }
    std::vector<uint8_t> other = MakeVolume(7 << 16, 9);
    WriteAll(source, other);
    ASSERT_NO_FATAL_FAILURE(Backup("db", source, &other));
    for (const auto& e : fs::recursive_directory_iterator(pristine_)) {
      std::string rel = fs::relative(e.path(), pristine_).string();
      // index/dedup.idx is a cache nothing trusts (engine/core/dedup.h): its
      // damage is not a repository's damage, and DedupTest.DamagedOrForgedIndex*
      // shows that no damage to it yields a wrong snapshot.
      if (e.is_regular_file() && rel.rfind("locks/", 0) != 0 && rel.rfind("index/", 0) != 0) {
        files_.push_back(rel);
      }
    }
  }

  void Backup(const std::string& volume, const std::string& source,
              const std::vector<uint8_t>* data) {
    BackupOptions o;
    o.volume = volume;
    o.source_path = source;
    o.block_size = 65536;
    o.threads = 2;
    auto r = RunBackup(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    expected_[r->manifest.snapshot_id] = {volume, Sha(*data)};
  }

  // Files of a kind: "manifest", "HEAD", "pack", "config", "key".
  std::vector<std::string> Of(const std::string& kind) const {
    std::vector<std::string> out;
    for (const auto& f : files_) {
      bool m = kind == "manifest" ? f.size() > 9 && f.compare(f.size() - 9, 9, ".manifest") == 0
               : kind == "HEAD"   ? fs::path(f).filename() == "HEAD"
               : kind == "pack"   ? f.rfind("packs/", 0) == 0
               : kind == "config" ? f == "config"
                                  : f == "keys/hash.key";
      if (m) out.push_back(f);
    }
    return out;
  }

  // Damages `repo` one way; returns what it did.
  std::string Damage(const std::string& repo, std::mt19937_64& rng) {
    auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
    const std::string file = pick(files_);
    const std::string path = repo + "/" + file;
    switch (rng() % 8) {
      case 0:
      case 1: {  // flip one byte anywhere, padding included
        std::vector<uint8_t> b = ReadAll(path);
        size_t at = rng() % b.size();
        b[at] ^= uint8_t(1 + rng() % 255);
        WriteAll(path, b);
        return "flip " + file + " @" + std::to_string(at);
      }
      case 2: {
        uint64_t size = fs::file_size(path);
        uint64_t to = rng() % size;
        fs::resize_file(path, to);
        return "truncate " + file + " to " + std::to_string(to);
      }
      case 3:
        fs::remove(path);
        return "delete " + file;
      case 4: {  // swap two files of one kind
        std::vector<std::string> kin = Of(file.rfind("packs/", 0) == 0 ? "pack" : "manifest");
        std::string other = pick(kin);
        if (other == file || kin.size() < 2) other = kin[(std::find(kin.begin(), kin.end(), other) -
                                                          kin.begin() + 1) % kin.size()];
        std::vector<uint8_t> x = ReadAll(repo + "/" + other), y = ReadAll(path);
        if (x == y) return Damage(repo, rng);
        WriteAll(repo + "/" + other, y);
        WriteAll(path, x);
        return "swap " + file + " <-> " + other;
      }
      case 5: {  // edit a sealed file, seal it with a bare SHA-256 (no key)
        std::vector<std::string> sealed = Of("manifest");
        for (const auto& h : Of("HEAD")) sealed.push_back(h);
        sealed.push_back("config");
        std::string f = pick(sealed);
        std::string text = ReadText(repo + "/" + f);
        Json j = Json::parse(text.substr(0, text.find('\n')));
        j["forged"] = true;
        WriteText(repo + "/" + f, SealJsonPlain(j));
        return "forge " + f;
      }
      case 6:  // the volume's folder put back as it was after its 2nd snapshot
        fs::remove_all(repo + "/snapshots/vm1");
        fs::copy(dir_.path() + "/vm1-at-2", repo + "/snapshots/vm1", fs::copy_options::recursive);
        return "roll back snapshots/vm1";
      default: {  // a second newest snapshot, sealed with the stolen key
        auto r = Repository::Open(repo);
        if (!r.ok()) return Damage(repo, rng);
        std::vector<Manifest> list;
        EXPECT_TRUE((*r)->ListManifests("vm1", &list, nullptr).ok());
        Json j = list.back().ToJson();
        j["snapshot_id"] = "feedfacefeed0000";
        std::string name = list.back().file_name.substr(0, 11) + "feedfacefeed0000.manifest";
        WriteText((*r)->SnapshotsDir("vm1") + "/" + name, SealJson(j, (*r)->seal_key()));
        return "fork vm1";
      }
    }
  }

  // True when the damage is seen: the repository does not open, or verify
  // --read-data fails or reports a problem. Restores never write wrong bytes.
  bool Detected(const std::string& repo, const std::string& what) {
    auto r = Repository::Open(repo);
    if (!r.ok()) return true;
    VerifyOptions vo;
    vo.read_data = true;
    auto report = RunVerify(**r, vo);
    bool seen = !report.ok() || !report->problems.empty();
    for (const auto& [id, want] : expected_) {
      RestoreOptions ro;
      ro.volume = want.first;
      ro.snapshot = id;
      ro.target_path = dir_.path() + "/restored.img";
      fs::remove(ro.target_path);
      auto restored = RunRestore(**r, ro);
      if (restored.ok()) {
        EXPECT_EQ(Sha(ReadAll(ro.target_path)), want.second)
            << what << ": snapshot " << id << " restored wrong bytes";
      }
    }
    return seen;
  }

  TempDir dir_{testing::MemoryTempBase()};  // detection, not durability: no fsync to wait for
  std::string pristine_;
  std::unique_ptr<Repository> repo_;
  std::vector<std::string> files_;                                       // relative paths
  std::map<std::string, std::pair<std::string, std::string>> expected_;  // id -> volume, sha
};

TEST_F(CorruptionTrials, EveryDamageIsDetectedAndNoRestoreWritesWrongBytes) {
  const char* env_trials = std::getenv("DP420_CORRUPTION_TRIALS");
  const char* env_seed = std::getenv("DP420_CORRUPTION_SEED");
  int trials = env_trials ? std::atoi(env_trials) : 200;
  uint64_t seed = env_seed ? std::strtoull(env_seed, nullptr, 10) : std::random_device{}();
  std::printf("corruption trials: %d, DP420_CORRUPTION_SEED=%llu\n", trials,
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  repo_.reset();
  std::string trial = dir_.path() + "/trial";
  for (int i = 0; i < trials; ++i) {
    fs::remove_all(trial);
    fs::copy(pristine_, trial, fs::copy_options::recursive);
    std::string what = Damage(trial, rng);
    SCOPED_TRACE("trial " + std::to_string(i) + ": " + what);
    EXPECT_TRUE(Detected(trial, what)) << what << " was not detected (seed " << seed << ")";
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace dp420
