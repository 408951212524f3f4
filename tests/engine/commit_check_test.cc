// The agent's end-to-end check of a committed snapshot (engine/net/id_cache.h):
// real snapshots made by the engine, their block records written as the agent
// writes its cache, and committed manifests that differ from what was read.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "engine/core/backup.h"
#include "engine/core/table.h"
#include "engine/net/id_cache.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using dp420::testing::MakeVolume;
using dp420::testing::TempDir;
using dp420::testing::WriteAll;

constexpr uint32_t kBlock = 65536;
constexpr uint64_t kBlocks = 600;  // three leaf pages

class CommitCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = dp420::testing::NewRepository(dir_.path() + "/repo");
    ASSERT_NE(repo_, nullptr);
    source_ = dir_.path() + "/vol.img";
    volume_ = MakeVolume(kBlocks * kBlock - 1000, 5);  // a short last block
    WriteAll(source_, volume_);
  }
  ~CommitCheckTest() override {
    for (int fd : fds_) close(fd);
  }

  Manifest Backup() {
    BackupOptions o;
    o.volume = "vol";
    o.source_path = source_;
    o.block_size = kBlock;
    o.threads = 2;
    auto r = RunBackup(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->manifest : Manifest{};
  }

  // The cache the agent would hold after making `m`: every block's record.
  int CacheOf(const Manifest& m) {
    std::string path = dir_.path() + "/" + m.snapshot_id + ".ids";
    int fd = open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    fds_.push_back(fd);
    CacheHeader h = MakeCacheHeader(m);
    EXPECT_EQ(pwrite(fd, &h, sizeof(h), 0), static_cast<ssize_t>(sizeof(h)));
    TableReader table(*repo_, m);
    for (uint64_t p = 0; p * kPageEntries < m.blocks_total; ++p) {
      uint32_t n = 0;
      auto entries = table.Leaf(p, &n);
      EXPECT_TRUE(entries.ok()) << entries.status().ToString();
      if (!entries.ok()) break;
      std::vector<uint8_t> raw(n * kCacheRecord);
      for (uint32_t i = 0; i < n; ++i) PutCacheRecord((*entries)[i], &raw[i * kCacheRecord]);
      off_t at = static_cast<off_t>(kCacheHeader + p * kPageEntries * kCacheRecord);
      EXPECT_EQ(pwrite(fd, raw.data(), raw.size(), at), static_cast<ssize_t>(raw.size()));
    }
    EXPECT_TRUE(CacheValid(fd, m));
    return fd;
  }

  static SentSnapshot Sent(const Manifest& m) {
    return SentSnapshot{m.client, m.volume, m.snapshot_id, m.parent, m.block_size,
                        m.volume_size, m.blocks_total};
  }

  TempDir dir_;
  std::unique_ptr<Repository> repo_;
  std::string source_;
  std::vector<uint8_t> volume_;
  std::vector<int> fds_;
};

void ExpectRefusedNaming(const Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find(field), std::string::npos) << s.ToString();
}

TEST_F(CommitCheckTest, HonestFullAndIncrementalPass) {
  Manifest full = Backup();
  int full_cache = CacheOf(full);
  EXPECT_TRUE(CheckCommitted(full, Sent(full), full_cache, -1, 0).ok());

  std::memset(volume_.data() + 3 * kBlock, 0x5a, 2 * kBlock);   // two blocks change
  std::memset(volume_.data() + 300 * kBlock, 0, kBlock);        // one becomes zero
  WriteAll(source_, volume_);
  Manifest inc = Backup();
  ASSERT_EQ(inc.parent, full.snapshot_id);
  Status s = CheckCommitted(inc, Sent(inc), CacheOf(inc), full_cache, full.blocks_total);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(CommitCheckTest, ServerThatCommitsOtherDigestsIsCaught) {
  Manifest full = Backup();
  int cache = CacheOf(full);
  // The agent read block 42 with another digest than the committed table holds.
  uint8_t raw[kCacheRecord];
  ASSERT_TRUE(ReadCacheRecords(cache, 42, 1, raw).ok());
  raw[16] ^= 1;
  ASSERT_EQ(pwrite(cache, raw, sizeof(raw), kCacheHeader + 42 * kCacheRecord),
            static_cast<ssize_t>(sizeof(raw)));
  ExpectRefusedNaming(CheckCommitted(full, Sent(full), cache, -1, 0), "checksum_sha256");
}

TEST_F(CommitCheckTest, ServerThatMisreportsTheSnapshotIsCaught) {
  Manifest full = Backup();
  int cache = CacheOf(full);
  struct Case {
    const char* field;
    void (*edit)(Manifest&, SentSnapshot&);
  };
  const Case cases[] = {
      {"client", [](Manifest& m, SentSnapshot&) { m.client = "mallory"; }},
      {"volume", [](Manifest& m, SentSnapshot&) { m.volume = "other"; }},
      {"volume", [](Manifest& m, SentSnapshot& s) {
         s.client = "db1";
         m.client = "db1";
         m.volume = "db2_.vol";  // another client's namespace
       }},
      {"snapshot_id", [](Manifest& m, SentSnapshot&) { m.snapshot_id = "0123456789abcdef"; }},
      {"parent", [](Manifest& m, SentSnapshot&) { m.parent = "0123456789abcdef"; }},
      {"volume_size", [](Manifest& m, SentSnapshot&) { m.volume_size += 4096; }},
      {"block_size", [](Manifest& m, SentSnapshot&) { m.block_size = 4096; }},
      {"blocks_changed", [](Manifest& m, SentSnapshot&) { --m.blocks_changed; }},
      {"blocks_zero", [](Manifest& m, SentSnapshot&) { ++m.blocks_zero; }},
      {"blocks_stored", [](Manifest& m, SentSnapshot&) { --m.blocks_stored; }},
      {"checksum_sha256", [](Manifest& m, SentSnapshot&) { m.checksum_sha256[5] ^= 1; }},
  };
  for (const Case& c : cases) {
    Manifest m = full;
    SentSnapshot sent = Sent(full);
    c.edit(m, sent);
    ExpectRefusedNaming(CheckCommitted(m, sent, cache, -1, 0), c.field);
  }
}

}  // namespace
}  // namespace dp420::net
