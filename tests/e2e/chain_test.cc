// A chain of snapshots of a changing ext4 volume, and volumes that grow and shrink.

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr int kChainSnapshots = 6;

// What the source was when a snapshot was taken.
struct Taken {
  std::string id;
  std::string sha256;
  std::string checksum;  // scripts/volume-checksum.py on the source
  uint64_t size = 0;
};

void ExpectBackupFields(const Json& j) {
  for (const auto& field : BackupJsonFields()) {
    EXPECT_TRUE(j.contains(field)) << "backup --json lacks \"" << field << "\": " << j.dump();
  }
}

void ExpectManifestFields(const Json& m) {
  for (const auto& field : ManifestJsonFields()) {
    EXPECT_TRUE(m.contains(field))
        << "snapshots --json entry lacks \"" << field << "\": " << m.dump();
  }
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// The numbers every backup must get right, whatever changed.
void ExpectConsistentBackup(const Json& j, uint64_t source_size) {
  ExpectBackupFields(j);
  uint64_t block_size = j.at("block_size").get<uint64_t>();
  ASSERT_GT(block_size, 0u);
  EXPECT_EQ(j.at("volume_size").get<uint64_t>(), source_size);
  EXPECT_EQ(j.at("bytes_read").get<uint64_t>(), source_size) << "a backup reads every byte";
  EXPECT_EQ(j.at("blocks_total").get<uint64_t>(), CeilDiv(source_size, block_size));
  EXPECT_LE(j.at("blocks_changed").get<uint64_t>(), j.at("blocks_total").get<uint64_t>());
  EXPECT_LE(j.at("blocks_zero").get<uint64_t>(), j.at("blocks_total").get<uint64_t>());
  EXPECT_GE(j.at("seconds").get<double>(), 0.0);
  EXPECT_TRUE(IsSha256Hex(j.at("checksum_sha256").get<std::string>())) << j.dump();
}

// Restores `t` into a fresh file and checks it byte for byte.
void ExpectRestoresExactly(const std::string& repo, const std::string& volume, const Taken& t,
                           const std::string& target) {
  Result r = Restore(repo, volume, t.id, target);
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(FileSize(target), t.size) << "snapshot " << t.id;
  EXPECT_EQ(Sha256File(target), t.sha256) << "snapshot " << t.id << " restored differently";
}

TEST(ChainTest, SnapshotsOfChangingExt4VolumeRestoreBitExact) {
  TempDir dir;
  Ext4Volume vol = MakeExt4Volume(dir, "vol", 192, 96, 16);
  std::string repo = InitRepo(dir);
  std::vector<Taken> taken;
  for (int i = 0; i < kChainSnapshots; ++i) {
    SCOPED_TRACE("backup " + std::to_string(i));
    if (i > 0) {
      std::string how = MutateExt4Volume(vol, dir, 100 + i, 1.0);
      if (i == 1) {
        std::cout << "[ info ] volume changed through " << how << std::endl;
        testing::Test::RecordProperty("mutation", how);
      }
    }
    Json j = Backup(repo, "chain", vol.image);
    uint64_t size = FileSize(vol.image);
    ASSERT_NO_FATAL_FAILURE(ExpectConsistentBackup(j, size));
    uint64_t block_size = j.at("block_size").get<uint64_t>();
    Taken t{j.at("snapshot_id").get<std::string>(), Sha256File(vol.image),
            VolumeChecksum(vol.image, block_size), size};
    EXPECT_EQ(j.at("checksum_sha256").get<std::string>(), t.checksum)
        << "checksum_sha256 differs from scripts/volume-checksum.py";
    if (i == 0) {
      EXPECT_TRUE(j.at("parent").is_null()) << j.dump();
      EXPECT_GT(j.at("blocks_zero").get<uint64_t>(), 0u) << "the image has unused space";
      EXPECT_GT(j.at("bytes_written").get<uint64_t>(), 0u);
    } else {
      EXPECT_EQ(j.at("parent"), taken.back().id) << j.dump();
      uint64_t changed = j.at("blocks_changed").get<uint64_t>();
      uint64_t total = j.at("blocks_total").get<uint64_t>();
      std::cout << "[ info ] incremental " << i << ": " << changed << " of " << total
                << " blocks changed" << std::endl;
      EXPECT_GT(changed, 0u) << "files changed but no block did";
      EXPECT_LE(changed * 100, total * 25)
          << "an incremental of a ~1 % change rewrote " << changed << " of " << total << " blocks";
    }
    taken.push_back(t);
  }

  Json manifests = Snapshots(repo, "chain");
  ASSERT_EQ(manifests.size(), taken.size()) << manifests.dump();
  std::sort(manifests.begin(), manifests.end(), [](const Json& a, const Json& b) {
    return a.at("sequence").get<int64_t>() < b.at("sequence").get<int64_t>();
  });
  int64_t last_sequence = -1;
  for (size_t i = 0; i < manifests.size(); ++i) {
    const Json& m = manifests[i];
    ExpectManifestFields(m);
    EXPECT_EQ(m.at("snapshot_id"), taken[i].id) << "sequence follows the order of backups";
    EXPECT_EQ(m.at("volume"), "chain");
    EXPECT_EQ(m.at("checksum_sha256"), taken[i].checksum);
    EXPECT_EQ(m.at("volume_size").get<uint64_t>(), taken[i].size);
    if (i == 0) {
      EXPECT_TRUE(m.at("parent").is_null());
    } else {
      EXPECT_EQ(m.at("parent"), taken[i - 1].id);
    }
    int64_t sequence = m.at("sequence").get<int64_t>();
    EXPECT_GT(sequence, last_sequence) << "sequence must grow";
    last_sequence = sequence;
    EXPECT_FALSE(FindManifest(repo, "chain", taken[i].id).empty())
        << "no snapshots/chain/*-" << taken[i].id << ".manifest";
  }

  for (size_t i = 0; i < taken.size(); ++i) {
    SCOPED_TRACE("restore of snapshot " + std::to_string(i) + " " + taken[i].id);
    std::string target = dir / ("restored-" + std::to_string(i) + ".img");
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresExactly(repo, "chain", taken[i], target));
    Result fsck = RunCommand({"e2fsck", "-fn", target});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.Describe();
    if (i == 0) {
      EXPECT_LT(AllocatedBytes(target), FileSize(target)) << "a file target is written sparse";
    }
    std::filesystem::remove(target);
  }

  std::string latest = dir / "latest.img";
  Result r = Restore(repo, "chain", "latest", latest);
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(Sha256File(latest), taken.back().sha256);
  // Reads run through stale records when asked to: the same bytes come back.
  std::filesystem::remove(latest);
  Result through = Cli({"restore", "--repo", repo, "--volume", "chain", "--read-through",
                        "1048576", "-q", latest});
  DP420_ASSERT_EXIT(through, kExitOk);
  EXPECT_EQ(Sha256File(latest), taken.back().sha256);

  Result verify = Cli({"verify", "--repo", repo, "--read-data"});
  DP420_EXPECT_EXIT(verify, kExitOk);
}

// A volume that grows, shrinks (to sizes that are not a multiple of any block size)
// and empties between backups.
TEST(VolumeSizeTest, GrowingAndShrinkingVolumeRestoresBitExact) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "volume.raw";
  const uint64_t kMiB = 1 << 20;
  WritePatternFile(source, 48 * kMiB, 1, 4);
  std::vector<Taken> taken;
  auto take = [&](const std::string& what) {
    SCOPED_TRACE(what);
    Json j = Backup(repo, "sizes", source);
    uint64_t size = FileSize(source);
    ExpectConsistentBackup(j, size);
    Taken t{j.at("snapshot_id").get<std::string>(), Sha256File(source),
            VolumeChecksum(source, j.at("block_size").get<uint64_t>()), size};
    EXPECT_EQ(j.at("checksum_sha256").get<std::string>(), t.checksum);
    taken.push_back(t);
  };
  take("48 MiB");
  // Grow: keep the old bytes, append a tail whose size is no multiple of 512.
  {
    std::string tail = dir / "tail.raw";
    WritePatternFile(tail, 32 * kMiB + 12345, 2, 3);
    ASSERT_EQ(Sh("cat " + ShellQuote(tail) + " >> " + ShellQuote(source)).exit_code, 0);
  }
  OverwriteRange(source, 5 * kMiB + 100, 70000, 3);
  take("grown to 80 MiB + 12345");
  Truncate(source, 24 * kMiB + 4097);
  OverwriteRange(source, 24 * kMiB, 4097, 4);
  take("shrunk to 24 MiB + 4097");
  Truncate(source, 24 * kMiB + 4097 + 3 * kMiB);  // grows by a run of zeros
  take("grown by 3 MiB of zeros");

  for (size_t i = 0; i < taken.size(); ++i) {
    SCOPED_TRACE("restore " + std::to_string(i));
    std::string target = dir / "restored-";  // built stepwise: GCC 12 -Wrestrict false alarm
    target += std::to_string(i);
    ExpectRestoresExactly(repo, "sizes", taken[i], target);
  }
  Result verify = Cli({"verify", "--repo", repo, "--read-data"});
  DP420_EXPECT_EXIT(verify, kExitOk);
}

TEST(VolumeSizeTest, EmptyVolumeBacksUpAndRestores) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "empty.raw";
  WriteFile(source, "");
  Json j = Backup(repo, "empty", source);
  EXPECT_EQ(j.at("volume_size").get<uint64_t>(), 0u);
  EXPECT_EQ(j.at("blocks_total").get<uint64_t>(), 0u);
  // SHA-256 of the empty string, as docs and scripts/volume-checksum.py define it.
  EXPECT_EQ(j.at("checksum_sha256"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string target = dir / "restored.raw";
  Result r = Restore(repo, "empty", j.at("snapshot_id").get<std::string>(), target);
  DP420_ASSERT_EXIT(r, kExitOk);
  EXPECT_EQ(FileSize(target), 0u);
}

TEST(VolumeSizeTest, DifferentBlockSizeOnExistingChainIsRefused) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string source = dir / "volume.raw";
  WritePatternFile(source, 8 << 20, 5, 2);
  Json first = Backup(repo, "bs", source, {"--block-size", "65536"});
  EXPECT_EQ(first.at("block_size").get<uint64_t>(), 65536u);
  std::vector<std::string> before = SnapshotIds(repo);

  Result r = Cli({"backup", "--repo", repo, "--volume", "bs", "--block-size", "131072", source});
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_LT(r.exit_code, 128) << "no crash: " << r.Describe();
  const std::string text = r.All();
  EXPECT_TRUE(ContainsIgnoringCase(text, "block size") ||
              ContainsIgnoringCase(text, "block-size") ||
              ContainsIgnoringCase(text, "block_size") || ContainsIgnoringCase(text, "blocksize"))
      << "the message should say the block size differs:\n"
      << r.Describe();
  EXPECT_EQ(SnapshotIds(repo), before);

  // Without --block-size the chain's own is used.
  OverwriteRange(source, 1 << 20, 1000, 6);
  Json next = Backup(repo, "bs", source);
  EXPECT_EQ(next.at("block_size").get<uint64_t>(), 65536u);
  EXPECT_EQ(next.at("parent"), first.at("snapshot_id"));
}

}  // namespace
}  // namespace dp420::e2e
