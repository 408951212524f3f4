// Loop devices as the backup source and as the restore target.

#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

TEST(BlockDeviceTest, LoopDeviceSourceRestoresBitExactOntoLoopDevice) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << "needs loop devices: " << why;
  TempDir dir;
  Ext4Volume vol = MakeExt4Volume(dir, "vol", 128, 64, 8);
  // The target starts full of noise: a restore must also write the source's zero blocks.
  std::string target_file = dir / "target.img";
  WritePatternFile(target_file, FileSize(vol.image), 77);

  auto source = LoopDevice::Attach(vol.image, &why);
  ASSERT_TRUE(source) << why;
  auto target = LoopDevice::Attach(target_file, &why);
  ASSERT_TRUE(target) << why;
  std::string repo = InitRepo(dir);

  Json full = Backup(repo, "dev", source->device());
  EXPECT_EQ(full.at("volume_size").get<uint64_t>(), FileSize(source->device()));
  std::string full_sha = Sha256File(source->device());
  EXPECT_EQ(full.at("checksum_sha256"),
            VolumeChecksum(source->device(), full.at("block_size").get<uint64_t>()));

  // Change the file system through the source device itself.
  {
    auto mount = Mount::Create(source->device(), dir / "mnt", "ext4", "", &why);
    ASSERT_TRUE(mount) << why;
    Result r = RunCommand({"python3", SourceDir() + "/scripts/e2e-volume.py", "mutate",
                           mount->target(), "--seed", "11", "--percent", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    ASSERT_TRUE(mount->Unmount(&why)) << why;
  }
  Json incremental = Backup(repo, "dev", source->device());
  EXPECT_EQ(incremental.at("parent"), full.at("snapshot_id"));
  EXPECT_LT(incremental.at("blocks_changed").get<uint64_t>(),
            incremental.at("blocks_total").get<uint64_t>() / 4);
  std::string incremental_sha = Sha256File(source->device());
  ASSERT_NE(full_sha, incremental_sha);

  for (const auto& [snapshot, sha] :
       {std::pair{full.at("snapshot_id").get<std::string>(), full_sha},
        std::pair{incremental.at("snapshot_id").get<std::string>(), incremental_sha}}) {
    SCOPED_TRACE("restore of " + snapshot + " onto " + target->device());
    Result r = Restore(repo, "dev", snapshot, target->device(), /*force=*/true);
    DP420_ASSERT_EXIT(r, kExitOk);
    EXPECT_EQ(Sha256File(target->device()), sha);
  }
  Result fsck = RunCommand({"e2fsck", "-fn", target->device()});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.Describe();
}

TEST(BlockDeviceTest, RestoreOntoSmallerDeviceFails) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << "needs loop devices: " << why;
  TempDir dir;
  std::string source = dir / "volume.raw";
  WritePatternFile(source, 16 << 20, 3, 5);
  std::string small_file = dir / "small.img";
  WritePatternFile(small_file, 8 << 20, 4);
  std::string small_sha = Sha256File(small_file);
  auto small = LoopDevice::Attach(small_file, &why);
  ASSERT_TRUE(small) << why;
  std::string repo = InitRepo(dir);
  Json j = Backup(repo, "v", source);
  Result r = Restore(repo, "v", j.at("snapshot_id").get<std::string>(), small->device(), true);
  EXPECT_NE(r.exit_code, 0) << "a 16 MiB volume does not fit an 8 MiB device:\n" << r.Describe();
  EXPECT_LT(r.exit_code, 128) << r.Describe();
  EXPECT_EQ(Sha256File(small->device()), small_sha) << "the size is known before any write";
}

// A block device needs --force, also through a symbolic link (as /dev/VG/LV
// and /dev/disk/by-id/* are): refused without it with the device untouched;
// with it the device is written and the link stays a link.
TEST(BlockDeviceTest, DeviceAndLinkToDeviceNeedForce) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << "needs loop devices: " << why;
  TempDir dir;
  std::string source = dir / "volume.raw";
  WritePatternFile(source, 8 << 20, 21, 4);
  std::string target_file = dir / "target.img";
  WritePatternFile(target_file, 8 << 20, 22);
  std::string target_sha = Sha256File(target_file);
  auto target = LoopDevice::Attach(target_file, &why);
  ASSERT_TRUE(target) << why;
  std::string link = dir / "disk-by-name";
  std::filesystem::create_symlink(target->device(), link);
  std::string repo = InitRepo(dir);
  std::string id = Backup(repo, "v", source).at("snapshot_id").get<std::string>();

  for (const std::string& path : {target->device(), link}) {
    SCOPED_TRACE(path);
    Result r = Restore(repo, "v", id, path, /*force=*/false);
    DP420_EXPECT_EXIT(r, kExitRefused);
    EXPECT_NE(r.err.find(path), std::string::npos) << r.Describe();
    EXPECT_EQ(Sha256File(target->device()), target_sha);
  }
  Result forced = Restore(repo, "v", id, link, /*force=*/true);
  DP420_ASSERT_EXIT(forced, kExitOk);
  EXPECT_EQ(Sha256File(target->device()), Sha256File(source));
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(std::filesystem::read_symlink(link).string(), target->device());
}

}  // namespace
}  // namespace dp420::e2e
