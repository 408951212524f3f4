// Restore's read planning (windows read in pack order, reads run through
// stale records when asked to, displaced blocks copied home, lone records read
// ahead), its checked writes, and RestoreTarget, through the engine's C++ API
// on real files.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "engine/core/backup.h"
#include "engine/core/restore.h"
#include "engine/core/table.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::Exists;
using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

// Random bytes without a single zero block.
std::vector<uint8_t> DenseVolume(size_t bytes, uint32_t seed) {
  std::vector<uint8_t> v(bytes);
  std::mt19937_64 rng(seed);
  for (auto& byte : v) byte = static_cast<uint8_t>(rng() | 1);
  return v;
}

class RestoreWindowTest : public ::testing::Test {
 protected:
  void SetUp() override { UseRepo("repo"); }
  void UseRepo(const std::string& name) {
    repo_path_ = dir_.path() + "/" + name;
    repo_ = testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    source_ = dir_.path() + "/source.img";
  }
  // Writes `v` as the source and backs it up; the new snapshot's id.
  std::string Backup(const std::vector<uint8_t>& v, uint32_t block_size, unsigned threads) {
    WriteAll(source_, v);
    BackupOptions o;
    o.volume = "vol";
    o.source_path = source_;
    o.block_size = block_size;
    o.threads = threads;
    auto r = RunBackup(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->manifest.snapshot_id : "";
  }
  Result<RestoreResult> Restore(const std::string& id, unsigned threads,
                                uint64_t read_through = kReadThrough) {
    RestoreOptions o;
    o.volume = "vol";
    o.snapshot = id;
    o.target_path = Target(id);
    o.threads = threads;
    o.read_through_bytes = read_through;
    return RunRestore(*repo_, o);
  }
  // What the tests of the read-through machinery run with (the default is 0).
  static constexpr uint64_t kReadThrough = 128 << 10;
  std::string Target(const std::string& id) const { return dir_.path() + "/restored-" + id; }
  // Gives `count` distinct blocks, none adjacent to another, none of them the
  // first or last and none all zero, fresh random non-zero bytes. Returns
  // their indices.
  static std::set<size_t> ChangeBlocks(std::vector<uint8_t>* v, uint32_t bs, size_t count,
                                       uint32_t seed) {
    std::mt19937_64 rng(seed);
    size_t blocks = (v->size() + bs - 1) / bs;
    std::set<size_t> changed;
    while (changed.size() < count) {
      size_t b = 1 + rng() % (blocks - 2);
      if (changed.count(b) || changed.count(b - 1) || changed.count(b + 1)) continue;
      auto begin = v->begin() + b * bs, end = v->begin() + std::min(v->size(), (b + 1) * bs);
      if (std::all_of(begin, end, [](uint8_t x) { return x == 0; })) continue;
      changed.insert(b);
      for (size_t i = b * bs; i < std::min(v->size(), (b + 1) * bs); ++i) {
        (*v)[i] = static_cast<uint8_t>(rng() | 1);
      }
    }
    return changed;
  }
  // Where snapshot `id` keeps block `block`.
  ObjRef RefOf(const std::string& id, uint64_t block) {
    auto m = repo_->FindSnapshot("vol", id);
    EXPECT_TRUE(m.ok());
    TableReader table(*repo_, *m);
    uint32_t count = 0;
    auto entries = table.Leaf(block / kPageEntries, &count);
    EXPECT_TRUE(entries.ok());
    return entries.value()[block % kPageEntries].ref;
  }
  // Restoring `id` fails its SHA-256 check (on block `block`, unless
  // UINT64_MAX) and leaves nothing behind.
  void ExpectDamaged(const std::string& id, uint64_t block = UINT64_MAX) {
    auto r = Restore(id, 1);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kCorruption);
    EXPECT_NE(r.status().message().find("fails its SHA-256"), std::string::npos)
        << r.status().message();
    if (block != UINT64_MAX) {
      EXPECT_NE(r.status().message().find("block " + std::to_string(block) + " "),
                std::string::npos)
          << r.status().message();
    }
    EXPECT_FALSE(Exists(Target(id)));
    EXPECT_FALSE(Exists(Target(id) + ".dp420-partial"));
  }
  void Scribble(const ObjRef& ref) {
    int fd = open(repo_->PackPath(ref.pack_id).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    uint8_t junk[512];
    std::memset(junk, 0xa5, sizeof(junk));
    ASSERT_EQ(pwrite(fd, junk, sizeof(junk), off_t(ref.offset_bytes() + 1000)), 512);
    close(fd);
  }
  TempDir dir_;
  std::string repo_path_, source_;
  std::unique_ptr<Repository> repo_;
};

// Every snapshot of a chain of scattered changes restores bit-exact, for
// block sizes, thread counts (packs written and read in other stripes) and a
// short last block.
TEST_F(RestoreWindowTest, ChainRestoresBitExact) {
  struct Case {
    uint32_t block_size;
    unsigned backup_threads, restore_threads;
  };
  for (Case c : {Case{65536, 1, 1}, Case{65536, 2, 2}, Case{65536, 2, 3}, Case{4096, 3, 2}}) {
    SCOPED_TRACE(std::to_string(c.block_size) + " " + std::to_string(c.backup_threads) + "/" +
                 std::to_string(c.restore_threads));
    UseRepo("repo-" + std::to_string(c.block_size) + "-" + std::to_string(c.restore_threads));
    auto v = MakeVolume(24 * 1024 * 1024 + 4097, c.block_size + c.backup_threads);
    std::vector<std::pair<std::string, std::vector<uint8_t>>> snapshots;
    for (uint32_t i = 0; i < 5; ++i) {
      if (i > 0) {
        ChangeBlocks(&v, c.block_size, 40, i);
        // A stored block turns zero and a zero block turns stored.
        std::fill(v.begin() + 3 * 65536, v.begin() + 4 * 65536, uint8_t{0});
        std::fill(v.begin() + 7 * 65536, v.begin() + 7 * 65536 + 100, uint8_t(i));
      }
      snapshots.emplace_back(Backup(v, c.block_size, c.backup_threads), v);
    }
    for (uint64_t read_through : {uint64_t{0}, kReadThrough}) {
      for (const auto& [id, want] : snapshots) {
        auto r = Restore(id, c.restore_threads, read_through);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        EXPECT_EQ(ReadAll(Target(id)), want) << id << " read_through " << read_through;
        ASSERT_EQ(unlink(Target(id).c_str()), 0);
      }
    }
  }
}

// A block a later snapshot replaced leaves its old record between two records
// the later snapshot still uses. Restore reads through it: each changed block
// costs one more read (its own), not three (splitting the run around it).
TEST_F(RestoreWindowTest, StaleRecordsAreReadThrough) {
  const uint32_t bs = 65536;
  auto v1 = MakeVolume(32 << 20, 11);
  std::string first = Backup(v1, bs, 1);
  auto v2 = v1;
  auto changed = ChangeBlocks(&v2, bs, 24, 5);
  std::string second = Backup(v2, bs, 1);

  auto r1 = Restore(first, 1);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto r2 = Restore(second, 1);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(ReadAll(Target(first)), v1);
  EXPECT_EQ(ReadAll(Target(second)), v2);
  // One pack written in volume order, zero blocks not stored: each 4 MiB
  // window is one read, across its zero blocks.
  EXPECT_LE(r1->pack_reads, (32u << 20) / (4u << 20));
  EXPECT_LE(r2->pack_reads, r1->pack_reads + changed.size());

  // By default a read never runs through: each changed block splits its
  // window's run of the first pack in two, and is read on its own (records
  // of neighbouring windows may still share a read).
  ASSERT_EQ(unlink(Target(second).c_str()), 0);
  auto exact = Restore(second, 1, 0);
  ASSERT_TRUE(exact.ok()) << exact.status().ToString();
  EXPECT_EQ(ReadAll(Target(second)), v2);
  EXPECT_GE(exact->pack_reads, r1->pack_reads + changed.size() * 3 / 2);
}

// The stale bytes a read runs through never reach the target: damage the old
// record of a replaced block; the snapshot that replaced it still restores,
// the one that uses it fails its SHA-256 and leaves nothing behind.
TEST_F(RestoreWindowTest, StaleBytesAreNeverWritten) {
  const uint32_t bs = 65536;
  auto v1 = MakeVolume(16 << 20, 12);
  std::string first = Backup(v1, bs, 1);
  auto v2 = v1;
  auto changed = ChangeBlocks(&v2, bs, 8, 6);
  std::string second = Backup(v2, bs, 1);
  for (size_t b : changed) {
    if (RefOf(first, b).stored()) Scribble(RefOf(first, b));
  }

  auto r2 = Restore(second, 1);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(ReadAll(Target(second)), v2);
  ExpectDamaged(first);
}

// A displaced block (read into spare room, then copied home) is checked like
// any other: damage the new record of a changed block.
TEST_F(RestoreWindowTest, DisplacedBlockIsChecked) {
  const uint32_t bs = 65536;
  auto v1 = MakeVolume(16 << 20, 13);
  std::string first = Backup(v1, bs, 1);
  auto v2 = v1;
  auto changed = ChangeBlocks(&v2, bs, 8, 7);
  std::string second = Backup(v2, bs, 1);
  size_t victim = *std::next(changed.begin(), 3);
  Scribble(RefOf(second, victim));

  ExpectDamaged(second, victim);
  auto r1 = Restore(first, 1);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_EQ(ReadAll(Target(first)), v1);
}

// One block changed per window: each change is a lone record of its window,
// and the changes lie next to each other in the later snapshot's pack. They
// are read ahead a line (several windows' worth) at a time, and checked.
TEST_F(RestoreWindowTest, LoneRecordsAreReadAhead) {
  const uint32_t bs = 65536;
  const size_t window = 4 << 20;
  auto v1 = DenseVolume(64 << 20, 15);
  std::string first = Backup(v1, bs, 1);
  auto v2 = v1;
  std::vector<size_t> changed;
  for (size_t off = 3 * bs; off < v2.size(); off += window) {
    changed.push_back(off / bs);
    for (size_t i = off; i < off + bs; ++i) v2[i] ^= 0x5a;
  }
  std::string second = Backup(v2, bs, 1);

  auto r1 = Restore(first, 1);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto r2 = Restore(second, 1);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_EQ(ReadAll(Target(second)), v2);
  EXPECT_LE(r2->pack_reads, r1->pack_reads + changed.size() / 4);
  ASSERT_EQ(unlink(Target(second).c_str()), 0);

  // A damaged record taken from a line fails its SHA-256 like any other.
  size_t victim = changed[changed.size() / 2];
  Scribble(RefOf(second, victim));
  ExpectDamaged(second, victim);
}

// Every other block of a window replaced: more displaced blocks than spare
// room. Reads fall back to not running through, and stay correct.
TEST_F(RestoreWindowTest, DenseChangesOutgrowSpareRoom) {
  const uint32_t bs = 65536;
  auto v1 = DenseVolume(12 << 20, 14);
  std::string first = Backup(v1, bs, 1);
  auto v2 = v1;
  for (size_t b = 1; b < v2.size() / bs; b += 2) {
    for (size_t i = b * bs; i < (b + 1) * bs; ++i) v2[i] ^= 0x3c;
  }
  std::string second = Backup(v2, bs, 1);
  for (unsigned threads : {1u, 2u}) {
    auto r = Restore(second, threads);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(ReadAll(Target(second)), v2);
    ASSERT_EQ(unlink(Target(second).c_str()), 0);
  }
}

// ---- RestoreTarget ---------------------------------------------------------

std::vector<std::string> Names(const std::string& dir) { return io::ListDir(dir); }

TEST(RestoreTargetTest, FileGetsTargetsNameOnlyOnCommit) {
  TempDir dir;
  std::string path = dir.path() + "/out.img";
  auto t = RestoreTarget::Open(path, 3 * 65536 + 5, false);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  RestoreTarget& target = **t;
  EXPECT_FALSE(target.block_device());
  EXPECT_EQ(target.path(), path);
  EXPECT_FALSE(Exists(path));
  // Ext4 has O_TMPFILE: nothing at all has a name before the commit.
  EXPECT_TRUE(target.unnamed());
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{});
  struct stat st;
  ASSERT_EQ(fstat(target.buffered_fd(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_size), 3 * 65536 + 5u);
  EXPECT_GE(target.align(), 1u);
  EXPECT_EQ(target.align() & (target.align() - 1), 0u);
  EXPECT_GE(target.direct_fd(), 0);
  EXPECT_GE(target.buffered_fd(), 0);
  ASSERT_EQ(pwrite(target.buffered_fd(), "dp420", 5, 65536), 5);
  EXPECT_TRUE(target.ZeroRange(0, 65536).ok());  // a fresh file: nothing to do
  ASSERT_TRUE(target.Commit().ok());
  t->reset();
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{"out.img"});
  auto bytes = ReadAll(path);
  ASSERT_EQ(bytes.size(), 3 * 65536 + 5u);
  EXPECT_EQ(std::string(bytes.begin() + 65536, bytes.begin() + 65541), "dp420");
  EXPECT_EQ(bytes[0], 0);
}

TEST(RestoreTargetTest, NotCommittedLeavesNothingAndKeepsOthersFiles) {
  TempDir dir;
  std::string path = dir.path() + "/out.img";
  // Files of the user's that look like partial files but are not dp420's.
  const std::vector<uint8_t> mine(100, 1);
  WriteAll(path + ".dp420-partial", mine);
  WriteAll(path + ".dp420-partial.0123456789abcdef", mine);
  {
    auto t = RestoreTarget::Open(path, 1 << 20, false);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
  }
  EXPECT_FALSE(Exists(path));
  EXPECT_EQ(Names(dir.path()), (std::vector<std::string>{"out.img.dp420-partial",
                                                         "out.img.dp420-partial.0123456789abcdef"}));
  EXPECT_EQ(ReadAll(path + ".dp420-partial"), mine);
  EXPECT_EQ(ReadAll(path + ".dp420-partial.0123456789abcdef"), mine);
}

TEST(RestoreTargetTest, SizeMustBeTheVolumesAtCommit) {
  TempDir dir;
  std::string path = dir.path() + "/out.img";
  auto t = RestoreTarget::Open(path, 65536, false);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(ftruncate((*t)->buffered_fd(), 65536 + 4096), 0);
  Status s = (*t)->Commit();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("volume_size"), std::string::npos) << s.ToString();
  t->reset();
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{});
}

TEST(RestoreTargetTest, FileAppearingMeanwhileIsNotReplaced) {
  TempDir dir;
  std::string path = dir.path() + "/out.img";
  auto t = RestoreTarget::Open(path, 4096, false);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  WriteAll(path, std::vector<uint8_t>(7, 7));
  Status s = (*t)->Commit();
  EXPECT_EQ(s.code(), Code::kExists) << s.ToString();
  t->reset();
  EXPECT_EQ(ReadAll(path), std::vector<uint8_t>(7, 7));
}

TEST(RestoreTargetTest, RefusesDirectoryAndNonEmptyFileWithoutForce) {
  TempDir dir;
  auto d = RestoreTarget::Open(dir.path(), 4096, true);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), Code::kInvalidArgument);
  EXPECT_NE(d.status().message().find("is a directory"), std::string::npos);

  std::string path = dir.path() + "/old.img";
  WriteAll(path, std::vector<uint8_t>(10, 7));
  auto refused = RestoreTarget::Open(path, 4096, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kExists);
  EXPECT_NE(refused.status().message().find("is not empty"), std::string::npos);

  // With force the old file stays until Commit, and stays if never committed.
  {
    auto t = RestoreTarget::Open(path, 4096, true);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(ReadAll(path).size(), 10u);
  }
  EXPECT_EQ(ReadAll(path), std::vector<uint8_t>(10, 7));
  auto t = RestoreTarget::Open(path, 4096, true);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Commit().ok());
  EXPECT_EQ(ReadAll(path), std::vector<uint8_t>(4096, 0));
}

}  // namespace
}  // namespace dp420
