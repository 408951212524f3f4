// Verify: a clean repository has no problems; damage to a data record, a
// pack, or a manifest is found, reported once, with the snapshots it breaks.
#include "engine/core/verify.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/core/table.h"
#include "io/file.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

constexpr uint32_t kBlock = 64 * 1024;
constexpr uint64_t kVolumeBytes = 20ull << 20;
constexpr uint64_t kTailBytes = 5000;  // a short last block

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dp420-verify-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(Repository::Init(dir_ + "/repo").ok());
    auto repo = Repository::Open(dir_ + "/repo");
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
    source_ = dir_ + "/source.img";
    WriteSource();
    Backup();
    MutateBlocks({3, 4, 5, 100, 301}, /*zero=*/false);
    MutateBlocks({60}, /*zero=*/true);
    Backup();
    MutateBlocks({4, 200, 319}, /*zero=*/false);
    Backup();
    ASSERT_TRUE(repo_->ListManifests("vm1", &manifests_, nullptr).ok());
    ASSERT_EQ(manifests_.size(), 3u);
  }

  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Random data with two zero regions and a short last block.
  void WriteSource() {
    std::vector<uint8_t> data(kVolumeBytes + kTailBytes);
    for (auto& b : data) b = static_cast<uint8_t>(rng_());
    std::memset(data.data() + 50 * uint64_t{kBlock}, 0, 30 * uint64_t{kBlock});
    std::memset(data.data() + 200 * uint64_t{kBlock} + 100, 0, 20 * uint64_t{kBlock});
    WriteAt(source_, 0, data.data(), data.size());
  }

  void MutateBlocks(const std::vector<uint64_t>& blocks, bool zero) {
    std::vector<uint8_t> data(kBlock);
    for (uint64_t block : blocks) {
      for (auto& b : data) b = zero ? 0 : static_cast<uint8_t>(rng_());
      WriteAt(source_, block * kBlock, data.data(), 4096 * 3);
    }
  }

  static void WriteAt(const std::string& path, uint64_t offset, const void* data, size_t len) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, data, len, off_t(offset)), ssize_t(len));
    close(fd);
  }

  void Backup() {
    BackupOptions o;
    o.volume = "vm1";
    o.source_path = source_;
    o.block_size = kBlock;
    o.threads = 2;
    auto r = RunBackup(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  VerifyReport Verify(bool read_data, const std::string& snapshot = "") {
    VerifyOptions o;
    o.read_data = read_data;
    if (!snapshot.empty()) {
      o.volume = "vm1";
      o.snapshot = snapshot;
    }
    auto r = RunVerify(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : VerifyReport{};
  }

  std::string ManifestPath(int i) const { return dir_ + "/repo/" + ManifestObject(i); }
  std::string ManifestObject(int i) const { return "snapshots/vm1/" + manifests_[i].file_name; }
  std::string Id(int i) const { return manifests_[i].snapshot_id; }

  // A data record (not a table page) of some pack, found through the packs'
  // trailer indexes; prefers one referenced by the first snapshot.
  ObjRef FindDataRecord() {
    ObjRef found{};
    for (const auto& e : std::filesystem::directory_iterator(dir_ + "/repo/packs")) {
      std::string name = e.path().filename().string();
      uint32_t id = static_cast<uint32_t>(std::stoul(name.substr(0, 8), nullptr, 16));
      auto pack = PackReader::Open(e.path().string(), id);
      EXPECT_TRUE(pack.ok());
      auto index = pack->ReadIndex();
      EXPECT_TRUE(index.ok());
      for (const ObjRef& ref : index.value()) {
        if (ref.flags & (kObjTableLeaf | kObjTableInner)) continue;
        if (Referencing(ref).count(Id(0))) return ref;
        found = ref;
      }
    }
    return found;
  }

  // Ids of the snapshots whose tables reference the record `ref`.
  std::set<std::string> Referencing(const ObjRef& ref) const {
    std::set<std::string> ids;
    for (const Manifest& m : manifests_) {
      TableReader reader(*repo_, m);
      for (uint64_t p = 0; p < reader.shape().PagesAt(0); ++p) {
        uint32_t count = 0;
        auto leaf = reader.Leaf(p, &count);
        EXPECT_TRUE(leaf.ok());
        for (uint32_t i = 0; i < count; ++i) {
          const ObjRef& r = leaf.value()[i].ref;
          if (r.pack_id == ref.pack_id && r.offset_4k == ref.offset_4k) ids.insert(m.snapshot_id);
        }
      }
    }
    return ids;
  }

  static void FlipByte(const std::string& path, uint64_t offset) {
    int fd = open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t b = 0;
    ASSERT_EQ(pread(fd, &b, 1, off_t(offset)), 1);
    b ^= 0x40;
    ASSERT_EQ(pwrite(fd, &b, 1, off_t(offset)), 1);
    close(fd);
  }

  std::string dir_;
  std::string source_;
  std::unique_ptr<Repository> repo_;
  std::vector<Manifest> manifests_;
  std::mt19937_64 rng_{420};
};

std::string Describe(const VerifyReport& r) {
  std::string out;
  for (const auto& p : r.problems) {
    out += p.object + ": " + p.message + " [";
    for (const auto& s : p.snapshots) out += s + " ";
    out += "]\n";
  }
  return out;
}

TEST_F(VerifyTest, CleanRepositoryHasNoProblems) {
  VerifyReport r = Verify(false);
  EXPECT_TRUE(r.problems.empty()) << Describe(r);
  EXPECT_TRUE(r.broken_snapshots.empty());
  EXPECT_EQ(r.snapshots_checked, 3u);
  EXPECT_GT(r.pages_checked, 3u);
  EXPECT_GT(r.packs_checked, 0u);
  EXPECT_EQ(r.blocks_checked, 0u);
  EXPECT_EQ(r.unreferenced_packs, 0u);
}

TEST_F(VerifyTest, CleanRepositoryReadDataReportsProgress) {
  VerifyOptions o;
  o.read_data = true;
  std::vector<Progress> seen;
  o.control.progress = [&](const Progress& p) { seen.push_back(p); };
  auto r = RunVerify(*repo_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->problems.empty()) << Describe(r.value());
  // 321 blocks, 50 of them zero in the first snapshot, plus the changed ones.
  EXPECT_GT(r->blocks_checked, 260u);
  EXPECT_GE(r->bytes_read, r->blocks_checked * 4096);
  ASSERT_FALSE(seen.empty());
  EXPECT_STREQ(seen.back().phase, "verify");
  EXPECT_EQ(seen.back().bytes_done, r->bytes_read);
  EXPECT_EQ(seen.back().bytes_total, r->bytes_read);
}

TEST_F(VerifyTest, FlippedDataByteIsFoundOnlyWithReadData) {
  ObjRef ref = FindDataRecord();
  ASSERT_NE(ref.pack_id, 0u);
  std::set<std::string> expected = Referencing(ref);
  ASSERT_FALSE(expected.empty());
  FlipByte(repo_->PackPath(ref.pack_id), ref.offset_bytes() + 100);

  VerifyReport quick = Verify(false);
  EXPECT_TRUE(quick.problems.empty()) << Describe(quick);

  VerifyReport r = Verify(true);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  const VerifyProblem& p = r.problems[0];
  EXPECT_EQ(p.object, "packs/" + PackName(ref.pack_id) + ".pack");
  EXPECT_NE(p.message.find("offset " + std::to_string(ref.offset_bytes())), std::string::npos)
      << p.message;
  EXPECT_EQ(std::set<std::string>(p.snapshots.begin(), p.snapshots.end()), expected);
  EXPECT_EQ(std::set<std::string>(r.broken_snapshots.begin(), r.broken_snapshots.end()), expected);
  EXPECT_TRUE(std::is_sorted(r.broken_snapshots.begin(), r.broken_snapshots.end()));
}

TEST_F(VerifyTest, FlippedRecordOfChangedBlockBreaksOnlyItsSnapshot) {
  // Block 3 changed in the second snapshot: its first version belongs to the
  // first snapshot alone.
  TableReader reader(*repo_, manifests_[0]);
  uint32_t count = 0;
  auto leaf = reader.Leaf(0, &count);
  ASSERT_TRUE(leaf.ok());
  ObjRef ref = leaf.value()[3].ref;
  ASSERT_TRUE(ref.stored());
  ASSERT_EQ(Referencing(ref), std::set<std::string>{Id(0)});
  FlipByte(repo_->PackPath(ref.pack_id), ref.offset_bytes() + ref.stored_len - 1);
  VerifyReport r = Verify(true);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].snapshots, std::vector<std::string>{Id(0)});
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(0)});
}

TEST_F(VerifyTest, DamagedTablePageIsFound) {
  const ObjRef& root = manifests_[2].table_root;
  FlipByte(repo_->PackPath(root.pack_id), root.offset_bytes() + 7);
  VerifyReport r = Verify(false);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].object, "packs/" + PackName(root.pack_id) + ".pack");
  EXPECT_NE(
      r.problems[0].message.find("table page at offset " + std::to_string(root.offset_bytes())),
      std::string::npos)
      << r.problems[0].message;
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(2)});
}

TEST_F(VerifyTest, SelectedSnapshotListsOnlyItself) {
  ObjRef ref = FindDataRecord();
  ASSERT_TRUE(Referencing(ref).count(Id(0)));
  FlipByte(repo_->PackPath(ref.pack_id), ref.offset_bytes());
  VerifyReport r = Verify(true, Id(0).substr(0, 6));
  EXPECT_EQ(r.snapshots_checked, 1u);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(0)});
}

TEST_F(VerifyTest, TruncatedPackIsFound) {
  ObjRef ref = FindDataRecord();
  std::string path = repo_->PackPath(ref.pack_id);
  uint64_t size = std::filesystem::file_size(path);
  ASSERT_EQ(truncate(path.c_str(), off_t(size / 2)), 0);
  for (bool read_data : {false, true}) {
    VerifyReport r = Verify(read_data);
    bool footer = false, past_end = false;
    for (const auto& p : r.problems) {
      EXPECT_EQ(p.object, "packs/" + PackName(ref.pack_id) + ".pack") << Describe(r);
      if (p.message.find("past the end") != std::string::npos) {
        past_end = true;
        EXPECT_FALSE(p.snapshots.empty());
      } else {
        footer = true;
      }
    }
    EXPECT_TRUE(footer) << Describe(r);
    EXPECT_TRUE(past_end) << Describe(r);
    EXPECT_FALSE(r.broken_snapshots.empty());
  }
}

TEST_F(VerifyTest, MissingPackBreaksItsSnapshots) {
  ObjRef ref = FindDataRecord();
  std::set<std::string> expected = Referencing(ref);
  ASSERT_EQ(unlink(repo_->PackPath(ref.pack_id).c_str()), 0);
  VerifyReport r = Verify(false);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_NE(r.problems[0].message.find("missing"), std::string::npos);
  for (const auto& id : expected) {
    EXPECT_TRUE(std::count(r.broken_snapshots.begin(), r.broken_snapshots.end(), id)) << id;
  }
}

TEST_F(VerifyTest, DeletedMiddleManifestBreaksItsChild) {
  ASSERT_EQ(unlink(ManifestPath(1).c_str()), 0);
  VerifyReport r = Verify(false);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].object, ManifestObject(2));
  EXPECT_NE(r.problems[0].message.find("parent " + Id(1) + " is missing"), std::string::npos);
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(2)});
  EXPECT_EQ(r.snapshots_checked, 2u);
}

TEST_F(VerifyTest, EditedManifestIsDamagedAndBreaksDescendants) {
  std::string path = ManifestPath(1);
  auto text = io::ReadFile(path);
  ASSERT_TRUE(text.ok());
  size_t at = text->find("\"created\":\"") + 12;
  FlipByte(path, at);
  VerifyReport r = Verify(false);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].object, ManifestObject(1));
  std::vector<std::string> expected{Id(1), Id(2)};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(r.broken_snapshots, expected);
  EXPECT_EQ(r.problems[0].snapshots, expected);
  EXPECT_EQ(r.snapshots_checked, 2u);
}

TEST_F(VerifyTest, SelectedDamagedManifestIsReported) {
  FlipByte(ManifestPath(1), 20);
  VerifyReport r = Verify(false, Id(1));
  EXPECT_EQ(r.snapshots_checked, 0u);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].object, ManifestObject(1));
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(1)});
  // The first snapshot is intact, though its volume holds a damaged manifest.
  VerifyReport first = Verify(true, Id(0));
  EXPECT_EQ(first.snapshots_checked, 1u);
  EXPECT_TRUE(first.broken_snapshots.empty()) << Describe(first);
}

TEST_F(VerifyTest, ChecksumMismatchIsFound) {
  // Re-seal the newest manifest with a wrong checksum_sha256: only the
  // recomputation from the table can tell.
  dp420::testing::RewriteManifests(dir_ + "/repo", "vm1", [](Json& j, size_t i) {
    if (i == 2) j["checksum_sha256"] = std::string(64, '0');
  });
  VerifyReport r = Verify(false);
  ASSERT_EQ(r.problems.size(), 1u) << Describe(r);
  EXPECT_EQ(r.problems[0].object, ManifestObject(2));
  EXPECT_NE(r.problems[0].message.find("checksum_sha256"), std::string::npos);
  EXPECT_EQ(r.broken_snapshots, std::vector<std::string>{Id(2)});
}

TEST_F(VerifyTest, StrayPackIsCountedNotReported) {
  auto writer = PackWriter::Create(repo_->PacksDir(), repo_->repo_id(), false,
                                   [](uint32_t) { return Status::Ok(); });
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Finish().ok());
  VerifyReport r = Verify(false);
  EXPECT_TRUE(r.problems.empty()) << Describe(r);
  EXPECT_EQ(r.unreferenced_packs, 1u);
}

TEST_F(VerifyTest, UnknownSnapshotIsAnError) {
  VerifyOptions o;
  o.volume = "vm1";
  o.snapshot = "ffffffff";
  auto r = RunVerify(*repo_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

TEST_F(VerifyTest, CancelStopsVerify) {
  std::atomic<bool> cancel{true};
  VerifyOptions o;
  o.read_data = true;
  o.control.cancel = &cancel;
  auto r = RunVerify(*repo_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCanceled);
}

}  // namespace
}  // namespace dp420
