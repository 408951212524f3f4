// The dedup index's table (engine/core/dedup.h) on its own: tags and MACs are
// HMAC-SHA-256 as docs/FORMAT.md says (checked against OpenSSL); a table
// grown several times past its first size still finds every slot whose pack
// exists and drops those whose pack is gone; a slot whose MAC does not hold
// for the SHA-256 asked about is never returned.
#include "engine/core/dedup.h"
#include "engine/core/relocate.h"

#include <fcntl.h>

#include <cstring>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

std::vector<uint8_t> Sha(uint32_t i) {
  std::vector<uint8_t> sha(32);
  simd::Sha256(reinterpret_cast<const uint8_t*>(&i), sizeof(i), sha.data());
  return sha;
}

ObjRef Location(uint32_t pack, uint32_t i) {
  ObjRef r{};
  r.pack_id = pack;
  r.offset_4k = 1 + i * 16;
  r.stored_len = 65536;
  return r;
}

class DedupIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("DP420_STATE_DIR", (dir_.path() + "/state").c_str(), 1);
    repo_ = testing::NewRepository(dir_.path() + "/repo");
    ASSERT_NE(repo_, nullptr);
    // As a backup's start does: no index yet, so an empty one is built.
    ASSERT_TRUE(DedupIndex::Open(*repo_).ok());
  }
  // An empty file packs/ID.pack: enough for the table to keep the pack's slots.
  void FakePack(uint32_t id) {
    testing::WriteAll(repo_->PackPath(id), std::vector<uint8_t>{});
  }
  // Adds slots for blocks [first, first + count) in `pack`, as a backup does.
  void Add(uint32_t first, uint32_t count, uint32_t pack) {
    DedupKey key(*repo_);
    std::vector<uint8_t> bytes;
    for (uint32_t i = first; i < first + count; ++i) {
      uint8_t digest[16] = {uint8_t(i), uint8_t(i >> 8), uint8_t(i >> 16)};
      DedupSlot s = key.MakeSlot(Sha(i).data(), Location(pack, i), digest);
      const auto* p = reinterpret_cast<const uint8_t*>(&s);
      bytes.insert(bytes.end(), p, p + sizeof(s));
    }
    std::string path = dir_.path() + "/slots";
    testing::WriteAll(path, bytes);
    Status s = AddToDedupIndex(*repo_, path);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  testing::TempDir dir_;
  std::unique_ptr<Repository> repo_;
};

TEST_F(DedupIndexTest, TagAndMacAreHmacSha256UnderTheIndexKey) {
  uint8_t key[32];
  repo_->DedupIndexKey(key);
  std::vector<uint8_t> sha = Sha(7);
  std::vector<uint8_t> msg = {'t', 'a', 'g', 0};
  msg.insert(msg.end(), sha.begin(), sha.end());
  uint8_t want[32];
  unsigned n = 0;
  ASSERT_NE(HMAC(EVP_sha256(), key, 32, msg.data(), msg.size(), want, &n), nullptr);
  DedupKey k(*repo_);
  uint8_t tag[16];
  k.Tag(sha.data(), tag);
  EXPECT_EQ(std::memcmp(tag, want, 16), 0);

  uint8_t digest[16] = {1, 2, 3};
  DedupSlot s = k.MakeSlot(sha.data(), Location(9, 3), digest);
  std::vector<uint8_t> mac_msg = {'m', 'a', 'c', 0};
  mac_msg.insert(mac_msg.end(), sha.begin(), sha.end());
  const auto* p = reinterpret_cast<const uint8_t*>(&s);
  mac_msg.insert(mac_msg.end(), p + 16, p + 48);
  ASSERT_NE(HMAC(EVP_sha256(), key, 32, mac_msg.data(), mac_msg.size(), want, &n), nullptr);
  EXPECT_EQ(std::memcmp(s.mac, want, 16), 0);
}

TEST_F(DedupIndexTest, GrownTableFindsEverySlotOfAPackThatExists) {
  FakePack(0x11111111);
  // 55,000 slots: past 3/4 of 255 buckets of 64 three times, so the table doubles
  // three times, the last after the missing pack's slots were added.
  Add(0, 20000, 0x11111111);
  Add(20000, 5000, 0x22222222);  // a pack that is not there (deleted by prune)
  Add(25000, 30000, 0x11111111);
  auto index = DedupIndex::Open(*repo_);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  uint32_t found_gone = 0;
  for (uint32_t i = 0; i < 55000; ++i) {
    uint8_t tag[16];
    auto s = (*index)->Find(Sha(i).data(), tag);
    bool gone = i >= 20000 && i < 25000;
    if (gone) {
      found_gone += s ? 1 : 0;
      continue;
    }
    ASSERT_TRUE(s.has_value()) << i;
    EXPECT_EQ(s->pack_id, 0x11111111u);
    EXPECT_EQ(s->offset_4k, Location(0, i).offset_4k);
    EXPECT_EQ(s->digest[0], uint8_t(i));
  }
  // The doubling after they were added kept only slots of packs present.
  EXPECT_EQ(found_gone, 0u);
  uint8_t tag[16], want[16];
  EXPECT_FALSE((*index)->Find(Sha(55001).data(), tag).has_value());
  DedupKey(*repo_).Tag(Sha(55001).data(), want);
  EXPECT_EQ(std::memcmp(tag, want, 16), 0) << "a miss gives the tag too";
  struct stat st;
  ASSERT_EQ(stat(DedupIndexPath(*repo_).c_str(), &st), 0);
  EXPECT_GT(uint64_t(st.st_size), (kDedupMinBuckets * 8 + 1) * kDedupBucketBytes);
}

// A pack prune repacked has no file but a relocation file, which a lookup follows:
// a doubling of the table keeps its slots, and drops those of a pack that is gone.
TEST_F(DedupIndexTest, GrowingKeepsTheSlotsOfARepackedPack) {
  FakePack(0x11111111);
  Relocation moved;
  moved.pack_id = 0x33333333;
  moved.entries.push_back({Location(0, 0).offset_4k, 0x11111111, 1});
  ASSERT_TRUE(WriteRelocation(*repo_, moved).ok());
  Add(0, 100, 0x33333333);     // repacked: a relocation file, no pack file
  Add(100, 100, 0x22222222);   // gone: neither
  Add(1000, 20000, 0x11111111);  // past 3/4 of 255 buckets: the table doubles
  auto index = DedupIndex::Open(*repo_);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  uint8_t tag[16];
  for (uint32_t i = 0; i < 100; ++i) {
    EXPECT_TRUE((*index)->Find(Sha(i).data(), tag).has_value()) << i;
    EXPECT_FALSE((*index)->Find(Sha(100 + i).data(), tag).has_value()) << 100 + i;
  }
}

// Slots whose probe runs past the last bucket go on at the first ones, as a lookup
// reads them: 8 buckets' worth of slots all homed at the last bucket (a probe is 8
// buckets long) fill it and the first seven, and none is lost.
TEST_F(DedupIndexTest, ProbesThatRunPastTheLastBucketWrapToTheFirst) {
  std::vector<uint8_t> bytes;
  const uint32_t n = kDedupProbe * kDedupSlotsPerBucket;
  for (uint32_t i = 0; i < n; ++i) {
    DedupSlot slot{};
    const uint64_t home = (kDedupMinBuckets - 1) + uint64_t{i} * kDedupMinBuckets;
    std::memcpy(slot.tag, &home, 8);  // every tag's home: the last bucket
    std::memcpy(slot.tag + 8, &i, 4);
    slot.pack_id = 0x11111111;
    slot.offset_4k = i + 1;
    const auto* p = reinterpret_cast<const uint8_t*>(&slot);
    bytes.insert(bytes.end(), p, p + sizeof(slot));
  }
  testing::WriteAll(dir_.path() + "/slots", bytes);
  ASSERT_TRUE(AddToDedupIndex(*repo_, dir_.path() + "/slots").ok());
  std::vector<uint8_t> file = testing::ReadAll(DedupIndexPath(*repo_));
  ASSERT_EQ(file.size(), sizeof(DedupHeader) + kDedupMinBuckets * kDedupBucketBytes);
  auto used_in = [&](uint64_t bucket) {
    uint32_t used = 0;
    for (uint32_t k = 0; k < kDedupSlotsPerBucket; ++k) {
      DedupSlot slot;
      std::memcpy(&slot, &file[sizeof(DedupHeader) + bucket * kDedupBucketBytes + k * 64], 64);
      used += slot.pack_id != 0;
    }
    return used;
  };
  EXPECT_EQ(used_in(kDedupMinBuckets - 1), kDedupSlotsPerBucket);
  for (uint64_t b = 0; b < kDedupProbe - 1; ++b) EXPECT_EQ(used_in(b), kDedupSlotsPerBucket) << b;
  EXPECT_EQ(used_in(kDedupProbe - 1), 0u);
}

TEST_F(DedupIndexTest, SlotWhoseMacFailsIsNotReturned) {
  FakePack(0x11111111);
  Add(0, 100, 0x11111111);
  // Every slot's offset changed in the file: tags still match, MACs fail.
  std::vector<uint8_t> bytes = testing::ReadAll(DedupIndexPath(*repo_));
  for (size_t at = sizeof(DedupHeader); at + 64 <= bytes.size(); at += 64) {
    uint32_t pack;
    std::memcpy(&pack, &bytes[at + 16], 4);
    if (pack) bytes[at + 20] ^= 0x40;
  }
  testing::WriteAll(DedupIndexPath(*repo_), bytes);
  auto index = DedupIndex::Open(*repo_);
  ASSERT_TRUE(index.ok());
  uint8_t tag[16];
  for (uint32_t i = 0; i < 100; ++i) {
    EXPECT_FALSE((*index)->Find(Sha(i).data(), tag).has_value()) << i;
  }
}

}  // namespace
}  // namespace dp420
