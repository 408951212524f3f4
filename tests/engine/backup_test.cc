// Backup and restore through the engine's C++ API on real files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "engine/core/backup.h"
#include "engine/core/damage.h"
#include "engine/core/restore.h"
#include "engine/core/table.h"
#include "engine/core/verify.h"
#include "io/file.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

class BackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_path_ = dir_.path() + "/repo";
    repo_ = testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    source_ = dir_.path() + "/source.img";
  }
  Result<BackupResult> Backup(uint32_t block_size = 0, unsigned threads = 2) {
    BackupOptions o;
    o.volume = "vol";
    o.source_path = source_;
    o.block_size = block_size;
    o.threads = threads;
    return RunBackup(*repo_, o);
  }
  std::vector<uint8_t> Restore(const std::string& snapshot) {
    RestoreOptions o;
    o.volume = "vol";
    o.snapshot = snapshot;
    o.target_path = dir_.path() + "/restored-" + snapshot;
    auto r = RunRestore(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return ReadAll(o.target_path);
  }
  TempDir dir_;
  std::string repo_path_, source_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(BackupTest, FullThenIncrementalRestoreBitExact) {
  auto v1 = MakeVolume(40 * 1024 * 1024 + 12345, 1);
  WriteAll(source_, v1);
  auto full = Backup();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  const Manifest& m1 = full->manifest;
  EXPECT_TRUE(m1.parent.empty());
  EXPECT_EQ(m1.volume_size, v1.size());
  EXPECT_EQ(m1.blocks_total, DivCeil(v1.size(), kDefaultBlockSize));
  EXPECT_EQ(m1.blocks_changed, m1.blocks_total - m1.blocks_zero);
  EXPECT_GT(m1.blocks_zero, 80u);

  auto v2 = v1;
  for (size_t off : {size_t{0}, size_t{5 << 20}, v2.size() - 10}) v2[off] ^= 0x5a;
  WriteAll(source_, v2);
  auto inc = Backup();
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  EXPECT_EQ(inc->manifest.parent, m1.snapshot_id);
  EXPECT_EQ(inc->manifest.parent_manifest_sha256, m1.seal);
  EXPECT_EQ(inc->manifest.sequence, 2u);
  EXPECT_EQ(inc->manifest.blocks_changed, 3u);
  EXPECT_EQ(inc->manifest.blocks_stored, 3u);
  // Metadata grows with the change: 3 blocks, a few 16 KiB pages.
  EXPECT_LT(inc->bytes_written, 3 * 65536 + 8 * 16384 + 3 * 4096 + 65536);

  EXPECT_EQ(Restore(m1.snapshot_id), v1);
  EXPECT_EQ(Restore(inc->manifest.snapshot_id), v2);
}

// The data packs of the parent are lost (deleted by hand, a disk error): the
// next backup stores those blocks again from the source instead of
// committing a snapshot that points at nothing, says how many it healed,
// and restores bit-exact; the one after heals nothing.
TEST_F(BackupTest, LostParentPacksAreHealedFromTheSource) {
  auto v1 = MakeVolume(12 * 1024 * 1024 + 999, 3);
  WriteAll(source_, v1);
  auto full = Backup();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  const Manifest& m1 = full->manifest;
  ASSERT_GT(m1.blocks_stored, 0u);
  EXPECT_EQ(full->blocks_healed, 0u);
  int lost = 0;
  for (uint32_t id : repo_->ListPackIds()) {
    if (id == m1.table_root.pack_id) continue;  // the table's own pack stays
    ASSERT_EQ(unlink(repo_->PackPath(id).c_str()), 0);
    ++lost;
  }
  ASSERT_GT(lost, 0);

  // Change one byte of a block that holds data (so no block turns from zero
  // to data): every block stored again is one healed.
  auto v2 = v1;
  size_t at = 7 << 20;
  while (v2[at] == 0) ++at;
  v2[at] ^= 0x33;
  WriteAll(source_, v2);
  auto healed = Backup();
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->manifest.parent, m1.snapshot_id);
  EXPECT_EQ(healed->blocks_healed, m1.blocks_stored);
  EXPECT_EQ(healed->manifest.blocks_stored, m1.blocks_stored);
  EXPECT_EQ(Restore(healed->manifest.snapshot_id), v2);

  auto next = Backup();
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(next->blocks_healed, 0u);
  EXPECT_EQ(next->manifest.blocks_stored, 0u);
  EXPECT_EQ(Restore(next->manifest.snapshot_id), v2);
}

// A record damaged in place (bit rot): verify --read-data finds it and
// records it (damaged.json); the next backup stores that block again from the
// source instead of calling it unchanged, and the new snapshot restores
// bit-exact although the old record is still damaged.
TEST_F(BackupTest, DamagedRecordFoundByVerifyIsHealedByTheNextBackup) {
  auto v1 = MakeVolume(2 * 1024 * 1024, 5);
  WriteAll(source_, v1);
  auto full = Backup();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  // Flip a byte of the record of block 3 (a data block: MakeVolume zeroes
  // every 7th).
  TableReader table(*repo_, full->manifest);
  uint32_t count = 0;
  auto leaf = table.Leaf(0, &count);
  ASSERT_TRUE(leaf.ok());
  const ObjRef ref = leaf.value()[3].ref;
  ASSERT_TRUE(ref.stored());
  {
    std::fstream f(repo_->PackPath(ref.pack_id), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(ref.offset_4k) * 4096 + 17);
    char c = 0x5a;
    f.write(&c, 1);
  }
  // Without verify's record the backup cannot know: it calls the block unchanged.
  EXPECT_TRUE(LoadDamage(*repo_).empty());
  VerifyOptions vo;
  vo.read_data = true;
  auto report = RunVerify(*repo_, vo);
  ASSERT_TRUE(report.ok());
  ASSERT_FALSE(report->problems.empty());
  DamageRecord damage = LoadDamage(*repo_);
  EXPECT_TRUE(damage.Holds(ref));
  EXPECT_EQ(damage.records.size(), 1u);

  auto healed = Backup();
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->blocks_healed, 1u);
  EXPECT_EQ(healed->manifest.blocks_stored, 1u);
  EXPECT_EQ(Restore(healed->manifest.snapshot_id), v1);
  VerifyOptions newest;
  newest.volume = "vol";
  newest.snapshot = healed->manifest.snapshot_id;
  newest.read_data = true;
  auto clean = RunVerify(*repo_, newest);
  ASSERT_TRUE(clean.ok());
  EXPECT_TRUE(clean->problems.empty()) << clean->problems[0].message;
  // The old snapshot stays broken, and says so; the next backup heals nothing more.
  auto again = Backup();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->blocks_healed, 0u);
}

// damaged.json is not sealed: whoever can write the repository's files can
// edit it. Garbage is ignored, an invented reference matches nothing, and a
// genuine one listed by hand only makes the backup store that block again:
// an edit never makes a backup skip a block or commit wrong data.
TEST_F(BackupTest, HandEditedDamageFileCanOnlyMakeABackupStoreMore) {
  auto v = MakeVolume(1024 * 1024, 9);
  WriteAll(source_, v);
  auto full = Backup();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  TableReader table(*repo_, full->manifest);
  uint32_t count = 0;
  auto leaf = table.Leaf(0, &count);
  ASSERT_TRUE(leaf.ok());
  const ObjRef ref = leaf.value()[2].ref;
  ASSERT_TRUE(ref.stored());
  const std::string path = repo_->path() + "/damaged.json";
  char genuine[160];
  std::snprintf(genuine, sizeof(genuine),
                R"({"format":"dp420-damaged","records":[{"pack":"%s","offset_4k":%u}]})",
                PackName(ref.pack_id).c_str(), ref.offset_4k);
  struct Case {
    std::string text;
    uint64_t healed;
  } cases[] = {
      {"{not json", 0},
      {R"({"format":"dp420-damaged","records":[{"pack":"ffffffff","offset_4k":1},7,"x"]})", 0},
      {genuine, 1},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(io::WriteFileAtomic(path, c.text).ok());
    auto r = Backup();
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status().ToString();
    EXPECT_EQ(r->blocks_healed, c.healed) << c.text;
    EXPECT_EQ(r->manifest.blocks_stored, c.healed) << c.text;
    EXPECT_EQ(Restore(r->manifest.snapshot_id), v) << c.text;
  }
}

TEST_F(BackupTest, ChecksumIsSha256OfBlockDigests) {
  auto v = MakeVolume(3 * 65536 + 100, 7);
  WriteAll(source_, v);
  auto r = Backup();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  simd::Sha256Stream outer;
  for (size_t off = 0; off < v.size(); off += 65536) {
    uint8_t d[32];
    simd::Sha256(v.data() + off, std::min<size_t>(65536, v.size() - off), d);
    outer.Update(d, 32);
  }
  uint8_t want[32];
  outer.Final(want);
  EXPECT_EQ(r->manifest.checksum_sha256, simd::ToHex(want, 32));
}

TEST_F(BackupTest, GrowShrinkAndEmptyVolumes) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{70000}, size_t{20 << 20}, size_t{300000},
                      size_t{64 << 20}}) {
    auto v = MakeVolume(size, uint32_t(size));
    WriteAll(source_, v);
    auto r = Backup(0, 3);
    ASSERT_TRUE(r.ok()) << size << ": " << r.status().ToString();
    EXPECT_EQ(Restore(r->manifest.snapshot_id), v) << size;
  }
}

TEST_F(BackupTest, BlockSizeChangeRefused) {
  WriteAll(source_, MakeVolume(1 << 20, 3));
  ASSERT_TRUE(Backup(16384).ok());
  auto again = Backup(0);  // inherits 16 KiB
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->manifest.block_size, 16384u);
  auto bad = Backup(65536);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("block size"), std::string::npos);
}

TEST_F(BackupTest, ManySmallBlocksMultiLevelTable) {
  // 4 KiB blocks over 300 MiB sparse → 76800 blocks: a 3-level tree.
  std::string path = source_;
  {
    auto v = MakeVolume(1 << 20, 9);
    WriteAll(path, v);
    ASSERT_EQ(truncate(path.c_str(), 300l << 20), 0);
  }
  auto r = Backup(4096);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->manifest.table_levels, 3u);
  // Sparse: identical all-zero leaf pages are stored once.
  EXPECT_LT(r->table_pages_written, 20u);
  auto restored = Restore("latest");
  EXPECT_EQ(restored, ReadAll(path));
}

TEST_F(BackupTest, MissingSourceIsNotFound) {
  source_ = dir_.path() + "/nope.img";
  auto r = Backup();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("nope.img"), std::string::npos);
  std::vector<Manifest> list;
  ASSERT_TRUE(repo_->ListManifests("vol", &list, nullptr).ok());
  EXPECT_TRUE(list.empty());
}

}  // namespace
}  // namespace dp420
