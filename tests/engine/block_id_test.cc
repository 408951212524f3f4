// Block ids are keyed per volume: the secret an agent is given for its volume
// lets it build XXH3 collisions for that volume only, never for another
// volume or under the repository's key.
#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "engine/core/backup.h"
#include "engine/core/restore.h"
#include "io/file.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/xxh3_collision.h"

namespace dp420 {
namespace {

using Secret = std::array<uint8_t, simd::kHashSecretBytes>;
using testing::BuildCollision;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

constexpr uint32_t kBlock = 65536;

class BlockIdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = testing::NewRepository(dir_.path() + "/repo");
    ASSERT_NE(repo_, nullptr);
  }
  Secret VolumeSecret(const std::string& volume) const {
    Secret s;
    repo_->VolumeSecret(volume, s.data());
    return s;
  }
  Secret RepositoryKey() const {
    auto key = io::ReadFile(dir_.path() + "/repo/keys/hash.key");
    EXPECT_TRUE(key.ok());
    Secret s{};
    if (key.ok() && key->size() == s.size()) std::memcpy(s.data(), key->data(), s.size());
    return s;
  }
  static simd::Hash128 Id(const Secret& s, const std::vector<uint8_t>& block) {
    return simd::BlockHasher(s).Hash(block.data(), block.size());
  }
  Result<BackupResult> Backup(const std::string& volume, const std::string& source) {
    BackupOptions o;
    o.volume = volume;
    o.source_path = source;
    o.block_size = kBlock;
    o.threads = 2;
    return RunBackup(*repo_, o);
  }
  TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(BlockIdTest, VolumeSecretsDifferFromEachOtherAndFromTheRepositoryKey) {
  Secret a = VolumeSecret("alice-db"), b = VolumeSecret("bob-db"), key = RepositoryKey();
  EXPECT_NE(a, b);
  EXPECT_NE(a, key);
  EXPECT_NE(b, key);
  EXPECT_EQ(a, VolumeSecret("alice-db")) << "derivation must be deterministic";
  // Another repository (another hash key) derives other secrets for the same name.
  auto other = testing::NewRepository(dir_.path() + "/other");
  ASSERT_NE(other, nullptr);
  Secret elsewhere;
  other->VolumeSecret("alice-db", elsewhere.data());
  EXPECT_NE(a, elsewhere);
}

// The attack works where the secret is known (so this test would catch a
// weaker construction), and nowhere else: the unchanged decision rests on a
// volume's secret staying with its agent and the server (docs/SECURITY.md),
// which is why it is never handed to anyone else.
TEST_F(BlockIdTest, CollisionBuiltWithOneVolumesSecretHoldsOnlyThere) {
  Secret bob = VolumeSecret("bob-db");
  std::vector<uint8_t> x, y;
  BuildCollision(bob, kBlock, 7, &x, &y);
  ASSERT_NE(x, y);
  EXPECT_EQ(Id(bob, x), Id(bob, y)) << "the collision construction itself is broken";
  EXPECT_NE(Id(VolumeSecret("alice-db"), x), Id(VolumeSecret("alice-db"), y));
  EXPECT_NE(Id(RepositoryKey(), x), Id(RepositoryKey(), y));
}

// End to end on a real backup: a block of alice's volume is replaced by its
// collision twin built with bob's secret. The incremental must see the change
// and the restore must give the new bytes.
TEST_F(BlockIdTest, ForgedTwinFromAnotherVolumeIsSeenAsChanged) {
  std::vector<uint8_t> x, y;
  BuildCollision(VolumeSecret("bob-db"), kBlock, 11, &x, &y);
  std::vector<uint8_t> volume = testing::MakeVolume(8 * kBlock, 3);
  std::memcpy(volume.data() + 2 * kBlock, x.data(), kBlock);
  std::string source = dir_.path() + "/alice.img";
  WriteAll(source, volume);
  auto full = Backup("alice-db", source);
  ASSERT_TRUE(full.ok()) << full.status().ToString();

  std::memcpy(volume.data() + 2 * kBlock, y.data(), kBlock);
  WriteAll(source, volume);
  auto inc = Backup("alice-db", source);
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  EXPECT_EQ(inc->manifest.blocks_changed, 1u);
  EXPECT_EQ(inc->manifest.blocks_stored, 1u);

  RestoreOptions o;
  o.volume = "alice-db";
  o.snapshot = inc->manifest.snapshot_id;
  o.target_path = dir_.path() + "/restored.img";
  auto restored = RunRestore(*repo_, o);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(ReadAll(o.target_path), volume);
}

}  // namespace
}  // namespace dp420
