// Prune and stats on real repositories: unreferenced packs deleted, partly
// used packs repacked and read through their relocation files by restore,
// verify and the next backup, dry runs, hand-computed stats, relocation
// chains, damage that makes prune refuse, the locks (a reader makes prune's
// delete phase wait, a second prune is busy), and a backup that re-references
// a repacked pack's records while prune runs in another process.
#include "engine/core/prune.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "engine/core/backup.h"
#include "engine/core/damage.h"
#include "engine/core/forget.h"
#include "engine/core/history.h"
#include "engine/core/pack.h"
#include "engine/core/relocate.h"
#include "engine/core/restore.h"
#include "engine/core/table.h"
#include "engine/core/verify.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::Exists;
using testing::ReadAll;
using testing::WriteAll;

constexpr uint32_t kBlock = 64 * 1024;
constexpr uint32_t kBlocks = 64;  // one leaf page: the table is a single 4 KiB record

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = uint8_t(rng() | 1);  // never an all-zero block
  return v;
}

class PruneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/dp420-prune-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    setenv("DP420_STATE_DIR", (dir_ + "/state").c_str(), 1);
    ASSERT_TRUE(Repository::Init(dir_ + "/repo").ok());
    Reopen();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
    unsetenv("DP420_STATE_DIR");
  }
  void Reopen() {
    auto repo = Repository::Open(dir_ + "/repo");
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
  }
  std::string Source(const std::string& volume) { return dir_ + "/" + volume + ".img"; }

  // Writes `volume`'s source (fresh, or blocks `changed` rewritten) and backs it up.
  Manifest Backup(const std::string& volume, const std::vector<uint32_t>& changed = {},
                  uint32_t seed = 1) {
    std::vector<uint8_t> data = Exists(Source(volume)) ? ReadAll(Source(volume))
                                                       : RandomBytes(kBlocks * kBlock, seed);
    for (uint32_t b : changed) {
      auto fresh = RandomBytes(kBlock, seed * 1000 + b);
      std::copy(fresh.begin(), fresh.end(), data.begin() + size_t{b} * kBlock);
    }
    WriteAll(Source(volume), data);
    BackupOptions o;
    o.volume = volume;
    o.source_path = Source(volume);
    o.block_size = kBlock;
    o.threads = 1;
    auto r = RunBackup(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {};
    images_[r->manifest.snapshot_id] = data;
    return r->manifest;
  }

  // Restores every snapshot of `volume` and compares it with its source.
  void ExpectRestores(const std::string& volume) {
    std::vector<Manifest> list;
    ASSERT_TRUE(repo_->ListManifests(volume, &list, nullptr).ok());
    ASSERT_FALSE(list.empty());
    for (const Manifest& m : list) {
      RestoreOptions o;
      o.volume = volume;
      o.snapshot = m.snapshot_id;
      o.target_path = dir_ + "/out-" + m.snapshot_id + ".img";
      o.threads = 2;
      auto r = RunRestore(*repo_, o);
      ASSERT_TRUE(r.ok()) << m.snapshot_id << ": " << r.status().ToString();
      EXPECT_TRUE(ReadAll(o.target_path) == images_[m.snapshot_id]) << m.snapshot_id;
      std::filesystem::remove(o.target_path);
    }
  }

  VerifyReport Verify() {
    VerifyOptions o;
    o.read_data = true;
    auto r = RunVerify(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : VerifyReport{};
  }
  void ExpectClean() {
    VerifyReport r = Verify();
    for (const auto& p : r.problems) ADD_FAILURE() << p.object << ": " << p.message;
    EXPECT_EQ(r.unreferenced_packs, 0u);
  }

  PruneReport Prune(double max_unused = kDefaultMaxUnused, bool dry_run = false) {
    PruneOptions o;
    o.max_unused = max_unused;
    o.dry_run = dry_run;
    auto r = RunPrune(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : PruneReport{};
  }

  // Forgets a whole volume: its snapshots folder and this machine's anchor.
  void DropVolume(const std::string& volume) {
    std::filesystem::remove_all(repo_->SnapshotsDir(volume));
    std::filesystem::remove(AnchorDir(*repo_) + "/" + volume);
  }

  // Forgets the oldest snapshot of `volume` (engine/core/forget.h).
  void DropOldest(const std::string& volume) {
    std::vector<Manifest> list;
    ASSERT_TRUE(repo_->ListManifests(volume, &list, nullptr).ok());
    ASSERT_GE(list.size(), 2u);
    ForgetOptions o;
    o.volume = volume;
    o.snapshots = {list[0].snapshot_id};
    auto r = RunForget(*repo_, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  std::set<uint32_t> Packs() {
    auto ids = repo_->ListPackIds();
    return {ids.begin(), ids.end()};
  }

  // A volume whose oldest snapshot is forgotten: its data pack is half
  // used by the newer one (`packs_of_s1` its packs).
  void HalfUsedPack(std::set<uint32_t>* packs_of_s1) {
    Backup("a");
    *packs_of_s1 = Packs();
    std::vector<uint32_t> changed;
    for (uint32_t b = 0; b < kBlocks; b += 2) changed.push_back(b);
    Backup("a", changed, 2);
    DropOldest("a");
  }

  // The same, with the second half of the data pack live: 32 records back
  // to back.
  void SecondHalfLivePack(std::set<uint32_t>* packs_of_s1) {
    Backup("a");
    *packs_of_s1 = Packs();
    std::vector<uint32_t> changed;
    for (uint32_t b = 0; b < kBlocks / 2; ++b) changed.push_back(b);
    Backup("a", changed, 2);
    DropOldest("a");
  }

  std::string dir_;
  std::unique_ptr<Repository> repo_;
  std::map<std::string, std::vector<uint8_t>> images_;
};

TEST_F(PruneTest, DeletesUnreferencedPacks) {
  Backup("a");
  Backup("a", {1, 2, 3});
  std::set<uint32_t> kept = Packs();
  Backup("b", {}, 7);
  std::set<uint32_t> all = Packs();
  ASSERT_GT(all.size(), kept.size());
  DropVolume("b");
  PruneReport r = Prune();
  EXPECT_EQ(r.packs_deleted, all.size() - kept.size());
  EXPECT_EQ(r.packs_rewritten, 0u);
  EXPECT_GE(r.bytes_freed, uint64_t{kBlocks} * kBlock);
  EXPECT_EQ(Packs(), kept);
  ExpectRestores("a");
  ExpectClean();
  PruneReport again = Prune();
  EXPECT_EQ(again.packs_deleted, 0u);
  EXPECT_EQ(again.bytes_freed, 0u);
  EXPECT_EQ(Packs(), kept);
}

// A backup's journal names packs that are in progress. One that does not read
// (here a folder under a journal's name) makes prune refuse and delete nothing,
// rather than take its packs for garbage; one whose pack lines are whole keeps them.
TEST_F(PruneTest, AJournalThatDoesNotReadMakesPruneRefuse) {
  Backup("a");
  Backup("b", {}, 7);
  const std::set<uint32_t> all = Packs();
  DropVolume("b");
  std::filesystem::create_directories(dir_ + "/repo/tmp/c.journal");
  auto refused = RunPrune(*repo_, PruneOptions{});
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(Packs(), all);
  std::filesystem::remove(dir_ + "/repo/tmp/c.journal");
  // Every pack named by a journal (a torn last line names nothing) stays.
  std::string text = "snapshot 0123456789abcdef\n";
  for (uint32_t id : all) text += "pack " + PackName(id) + "\n";
  ASSERT_TRUE(io::WriteFileAtomic(dir_ + "/repo/tmp/c.journal", text + "pack 0000").ok());
  PruneReport kept = Prune();
  EXPECT_EQ(kept.packs_deleted, 0u);
  EXPECT_EQ(Packs(), all);
}

TEST_F(PruneTest, RepacksHalfUsedPackAndReadersFollowTheRelocation) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  PruneReport r = Prune();
  EXPECT_EQ(r.packs_rewritten, 1u);  // s1's data pack; its table pack is dead
  EXPECT_EQ(r.packs_deleted, 1u);
  EXPECT_EQ(r.records_copied, kBlocks / 2);
  EXPECT_EQ(r.relocations_written, 1u);
  EXPECT_GE(r.bytes_freed, uint64_t{kBlocks / 2} * kBlock);
  for (uint32_t id : s1_packs) EXPECT_FALSE(Exists(repo_->PackPath(id))) << PackName(id);
  auto moved = ListRelocations(*repo_);
  ASSERT_EQ(moved.size(), 1u);
  EXPECT_TRUE(s1_packs.count(moved[0]));
  ExpectRestores("a");
  ExpectClean();
  // The next backup takes the relocated records as unchanged, stores only
  // what changed, and restores.
  Manifest m3 = Backup("a", {5}, 3);
  std::vector<Manifest> list;
  ASSERT_TRUE(repo_->ListManifests("a", &list, nullptr).ok());
  ASSERT_EQ(list.back().snapshot_id, m3.snapshot_id);
  EXPECT_EQ(m3.blocks_stored, 1u);
  ExpectRestores("a");
  ExpectClean();
  // Nothing left to do; the relocation stays while snapshots reference it.
  PruneReport again = Prune();
  EXPECT_EQ(again.packs_deleted + again.packs_rewritten, 0u);
  EXPECT_EQ(ListRelocations(*repo_).size(), 1u);
  // Once no manifest references the old pack, its relocation file goes.
  DropVolume("a");
  PruneReport last = Prune();
  EXPECT_EQ(last.relocations_deleted, 1u);
  EXPECT_TRUE(ListRelocations(*repo_).empty());
  EXPECT_TRUE(Packs().empty());
}

// The newer snapshot keeps the second half of the oldest's data pack: 32
// records back to back, copied in one run that continues across new packs
// of five records each.
TEST_F(PruneTest, RepackRunContinuesAcrossNewPacks) {
  std::set<uint32_t> s1_packs;
  SecondHalfLivePack(&s1_packs);
  PruneOptions o;
  o.max_unused = 0.1;
  o.pack_bytes = sizeof(PackHeader) + 5 * uint64_t{kBlock};
  auto r = RunPrune(*repo_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->packs_rewritten, 1u);
  EXPECT_EQ(r->records_copied, kBlocks / 2);
  EXPECT_EQ(r->packs_created, (kBlocks / 2 + 4) / 5);
  for (uint32_t id : s1_packs) EXPECT_FALSE(Exists(repo_->PackPath(id))) << PackName(id);
  ExpectRestores("a");
  ExpectClean();
}

// A live record of the pack to repack fails its SHA-256 (checked a batch
// behind the copy, on a second thread): the pack is kept and named in a
// warning, nothing of it is relocated, and its snapshot still reads from it.
TEST_F(PruneTest, DamagedLiveRecordKeepsItsPackUnrepacked) {
  std::set<uint32_t> s1_packs;
  SecondHalfLivePack(&s1_packs);
  uint32_t victim = 0;
  uint64_t largest = 0;
  for (uint32_t id : s1_packs) {
    uint64_t size = std::filesystem::file_size(repo_->PackPath(id));
    if (size > largest) largest = size, victim = id;
  }
  auto reader = PackReader::Open(repo_->PackPath(victim), victim);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto index = reader->ReadIndex();
  ASSERT_TRUE(index.ok() && !index->empty());
  uint64_t damaged_at = index->back().offset_bytes();  // block 63: still live
  {
    auto bytes = ReadAll(repo_->PackPath(victim));
    bytes[damaged_at + 10] ^= 0x40;
    WriteAll(repo_->PackPath(victim), bytes);
  }
  auto r = RunPrune(*repo_, PruneOptions{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->packs_rewritten, 0u);
  EXPECT_EQ(r->relocations_written, 0u);
  EXPECT_TRUE(Exists(repo_->PackPath(victim)));
  ASSERT_EQ(r->warnings.size(), 1u);
  EXPECT_NE(r->warnings[0].find(PackName(victim)), std::string::npos) << r->warnings[0];
  EXPECT_NE(r->warnings[0].find("offset " + std::to_string(damaged_at) + " fails its stored digest"),
            std::string::npos)
      << r->warnings[0];
  EXPECT_TRUE(ListRelocations(*repo_).empty());
}

// More table packs than the open-file limit leaves room for: the mark keeps
// at most PackCache::kMaxOpen packs open, so prune completes (it used to fail
// with "Too many open files", reported as damage).
TEST_F(PruneTest, MarksMorePacksThanTheOpenFileLimitLeavesRoomFor) {
  constexpr uint32_t kSnapshots = PackCache::kMaxOpen + 24;
  for (uint32_t i = 0; i < kSnapshots; ++i) Backup("a", {i % kBlocks}, i + 2);
  size_t open_now = 0;
  for ([[maybe_unused]] const auto& fd : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++open_now;
  }
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = open_now + PackCache::kMaxOpen + 16;
  ASSERT_LT(low.rlim_cur, open_now + kSnapshots);  // one table pack per snapshot
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  auto r = RunPrune(*repo_, PruneOptions{});
  // Under a limit that leaves no room for even that many: an I/O error
  // naming the cause, not damage.
  low.rlim_cur = open_now + PackCache::kMaxOpen / 4;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  auto starved = RunPrune(*repo_, PruneOptions{});
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->snapshots, kSnapshots);
  EXPECT_EQ(r->packs_deleted, 0u);
  ASSERT_FALSE(starved.ok());
  EXPECT_EQ(starved.status().code(), Code::kIOError) << starved.status().ToString();
  EXPECT_NE(starved.status().message().find("Too many open files"), std::string::npos)
      << starved.status().ToString();
  ExpectClean();
}

// A write to the new pack that fails ends the repack: it is not taken for a
// victim that cannot be read (left alone while the repack goes on to the next
// victim, the failed write still pending). RLIMIT_FSIZE at the size of a pack
// header makes the first write of records fail (EFBIG) and nothing else: two
// victims, each a volume's half-used data pack.
TEST_F(PruneTest, WriteErrorInTheRepackEndsIt) {
  std::set<uint32_t> packs_of_s1;
  HalfUsedPack(&packs_of_s1);
  Backup("b", {}, 7);
  std::vector<uint32_t> changed;
  for (uint32_t b = 0; b < kBlocks; b += 2) changed.push_back(b);
  Backup("b", changed, 8);
  DropOldest("b");
  ASSERT_EQ(Prune(kDefaultMaxUnused, true).packs_rewritten, 2u);  // a dry run
  std::set<uint32_t> all = Packs();
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit low = old;
  low.rlim_cur = sizeof(PackHeader);
  struct sigaction ignore {}, saved {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &saved), 0);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &low), 0);
  auto r = RunPrune(*repo_, PruneOptions{});
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &saved, nullptr), 0);
  ASSERT_FALSE(r.ok()) << "warnings: " << (r.ok() && !r->warnings.empty() ? r->warnings[0] : "");
  EXPECT_EQ(r.status().code(), Code::kIOError) << r.status().ToString();
  EXPECT_NE(r.status().message().find("File too large"), std::string::npos)
      << r.status().ToString();
  for (uint32_t id : all) EXPECT_TRUE(Exists(repo_->PackPath(id))) << PackName(id);
  EXPECT_TRUE(ListRelocations(*repo_).empty());
  ExpectRestores("a");
  ExpectRestores("b");
  // The next prune takes the half-written pack away and repacks both.
  PruneReport again = Prune();
  EXPECT_EQ(again.packs_rewritten, 2u);
  EXPECT_TRUE(again.warnings.empty()) << again.warnings[0];
  ExpectRestores("a");
  ExpectRestores("b");
  ExpectClean();
}

// Bit rot in a record that prune moved: verify finds it at its new place and
// records it as the block tables name it (before relocation), so the next
// backup, which compares table references, stores exactly that block again.
TEST_F(PruneTest, DamageInARepackedRecordIsHealedByTheNextBackup) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  ASSERT_EQ(Prune().packs_rewritten, 1u);
  std::vector<Manifest> list;
  ASSERT_TRUE(repo_->ListManifests("a", &list, nullptr).ok());
  ASSERT_EQ(list.size(), 1u);
  TableReader table(*repo_, list[0]);
  uint32_t count = 0;
  auto leaf = table.Leaf(0, &count);
  ASSERT_TRUE(leaf.ok());
  ObjRef in_table = leaf.value()[1].ref;  // an odd block: unchanged since s1, so moved
  ASSERT_TRUE(s1_packs.count(in_table.pack_id));
  ObjRef now = in_table;
  Relocator relocator(*repo_);
  ASSERT_TRUE(relocator.Resolve(&now).ok());
  ASSERT_NE(now.pack_id, in_table.pack_id);
  {
    std::fstream f(repo_->PackPath(now.pack_id), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(now.offset_4k) * 4096 + 5);
    f.put(0x33);
  }
  ASSERT_FALSE(Verify().problems.empty());
  DamageRecord damage = LoadDamage(*repo_);
  EXPECT_TRUE(damage.Holds(in_table));
  EXPECT_FALSE(damage.Holds(now));
  BackupOptions o;
  o.volume = "a";
  o.source_path = Source("a");
  o.block_size = kBlock;
  auto healed = RunBackup(*repo_, o);
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->blocks_healed, 1u);
  EXPECT_EQ(healed->manifest.blocks_stored, 1u);
  images_[healed->manifest.snapshot_id] = ReadAll(Source("a"));
  VerifyOptions vo;
  vo.volume = "a";
  vo.snapshot = healed->manifest.snapshot_id;
  vo.read_data = true;
  auto clean = RunVerify(*repo_, vo);
  ASSERT_TRUE(clean.ok());
  EXPECT_TRUE(clean->problems.empty());
}

TEST_F(PruneTest, MaxUnusedThresholdLeavesPackAlone) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  PruneReport r = Prune(0.6);  // 50 % unused is below 60 %
  EXPECT_EQ(r.packs_rewritten, 0u);
  EXPECT_EQ(r.packs_deleted, 1u);
  EXPECT_GE(r.bytes_unused, uint64_t{kBlocks / 2} * kBlock);
  EXPECT_TRUE(ListRelocations(*repo_).empty());
  ExpectRestores("a");
}

std::map<std::string, uint64_t> Tree(const std::string& root) {
  std::map<std::string, uint64_t> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    files[e.path().string()] = e.is_regular_file() ? e.file_size() : 0;
  }
  return files;
}

TEST_F(PruneTest, DryRunChangesNothing) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  Backup("b", {}, 9);
  DropVolume("b");
  auto before = Tree(dir_ + "/repo");
  PruneReport dry = Prune(kDefaultMaxUnused, true);
  EXPECT_TRUE(dry.dry_run);
  EXPECT_EQ(dry.packs_rewritten, 1u);
  EXPECT_GE(dry.packs_deleted, 2u);
  auto after = Tree(dir_ + "/repo");
  after.erase(dir_ + "/repo/locks/.prune.lock");
  after.erase(dir_ + "/repo/locks/.repository.lock");
  before.erase(dir_ + "/repo/locks/.repository.lock");
  EXPECT_EQ(before, after);
  PruneReport real = Prune();
  EXPECT_EQ(real.packs_deleted, dry.packs_deleted);
  EXPECT_EQ(real.packs_rewritten, dry.packs_rewritten);
  // The estimate of the copy is close: one pack header and trailer slot apart.
  EXPECT_NEAR(double(real.bytes_freed), double(dry.bytes_freed), 3 * 4096.0);
}

TEST_F(PruneTest, StatsMatchHandComputedValues) {
  constexpr uint32_t kChanged = 10;
  Manifest s1 = Backup("a");
  std::vector<uint32_t> changed;
  for (uint32_t b = 0; b < kChanged; ++b) changed.push_back(b * 3);
  Manifest s2 = Backup("a", changed, 2);
  StatsOptions o;
  auto r = ComputeStats(*repo_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const uint64_t page = 4096;  // a table of 64 entries: one leaf page of 4 KiB
  ASSERT_EQ(r->snapshots.size(), 2u);
  for (const SnapshotSpace& s : r->snapshots) {
    EXPECT_EQ(s.bytes_referenced, uint64_t{kBlocks} * kBlock + page) << s.snapshot_id;
    EXPECT_EQ(s.bytes_unique, uint64_t{kChanged} * kBlock + page) << s.snapshot_id;
    EXPECT_EQ(s.bytes_shared, uint64_t{kBlocks - kChanged} * kBlock) << s.snapshot_id;
  }
  EXPECT_EQ(r->snapshots[0].snapshot_id, s1.snapshot_id);
  EXPECT_EQ(r->snapshots[1].snapshot_id, s2.snapshot_id);
  EXPECT_EQ(r->bytes_referenced, uint64_t{kBlocks + kChanged} * kBlock + 2 * page);
  uint64_t pack_bytes = 0;
  for (uint32_t id : Packs()) pack_bytes += testing::FileSize(repo_->PackPath(id));
  EXPECT_EQ(r->packs, Packs().size());
  EXPECT_EQ(r->pack_bytes, pack_bytes);
  EXPECT_EQ(r->bytes_reclaimable, pack_bytes - r->bytes_referenced);
  o.volume = "other";
  auto none = ComputeStats(*repo_, o);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->snapshots.empty());
}

// Copies every record of pack `from` into a new pack and writes
// relocated/`from`; the old pack is deleted. Returns the new pack's id.
uint32_t MovePack(const Repository& repo, uint32_t from) {
  auto reader = PackReader::Open(repo.PackPath(from), from);
  EXPECT_TRUE(reader.ok());
  auto index = reader->ReadIndex();
  EXPECT_TRUE(index.ok());
  auto writer = PackWriter::Create(repo.PacksDir(), repo.repo_id(), false,
                                   [](uint32_t) { return Status::Ok(); });
  EXPECT_TRUE(writer.ok());
  Relocation rel;
  rel.pack_id = from;
  std::vector<uint8_t> buf;
  for (const ObjRef& ref : index.value()) {
    buf.resize(RoundUp(ref.stored_len, 4096));
    EXPECT_TRUE(reader->ReadStored(ref, buf.data()).ok());
    EXPECT_TRUE(reader->CheckRecord(ref, buf.data()).ok());
    ObjRef moved = ref;
    EXPECT_TRUE(writer->WriteRecord(buf.data(), ref.stored_len, &moved).ok());
    rel.entries.push_back({ref.offset_4k, moved.pack_id, moved.offset_4k});
  }
  std::sort(rel.entries.begin(), rel.entries.end(),
            [](auto& a, auto& b) { return a.old_offset_4k < b.old_offset_4k; });
  EXPECT_TRUE(writer->Finish().ok());
  EXPECT_TRUE(WriteRelocation(repo, rel).ok());
  EXPECT_EQ(unlink(repo.PackPath(from).c_str()), 0);
  return writer->pack_id();
}

TEST_F(PruneTest, ChainOfRelocationsIsFollowed) {
  Backup("a");
  Backup("a", {7, 8}, 2);
  std::set<uint32_t> packs = Packs();
  std::vector<uint32_t> chain_ends;
  for (uint32_t id : packs) chain_ends.push_back(MovePack(*repo_, MovePack(*repo_, id)));
  EXPECT_EQ(ListRelocations(*repo_).size(), 2 * packs.size());
  ExpectRestores("a");
  ExpectClean();
  // Prune keeps every file of the chains (all in use) and deletes nothing.
  PruneReport r = Prune();
  EXPECT_EQ(r.packs_deleted + r.packs_rewritten, 0u);
  EXPECT_EQ(ListRelocations(*repo_).size(), 2 * packs.size());
  ExpectRestores("a");
  // A cycle is refused, not followed forever.
  Relocation a{0x11111111, {{1, 0x22222222, 1}}}, b{0x22222222, {{1, 0x11111111, 1}}};
  ASSERT_TRUE(WriteRelocation(*repo_, a).ok());
  ASSERT_TRUE(WriteRelocation(*repo_, b).ok());
  Relocator relocator(*repo_);
  ObjRef ref{};
  ref.pack_id = 0x11111111;
  ref.offset_4k = 1;
  Status s = relocator.Resolve(&ref);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("chain"), std::string::npos) << s.message();
}

TEST_F(PruneTest, DamagedRelocationFileIsReportedAndStopsPrune) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  Prune();
  auto moved = ListRelocations(*repo_);
  ASSERT_EQ(moved.size(), 1u);
  std::string path = RelocationPath(*repo_, moved[0]);
  std::vector<uint8_t> raw = ReadAll(path);
  std::string bytes(raw.begin(), raw.end());
  bytes[30] ^= 0x40;
  ASSERT_TRUE(io::WriteFileAtomic(path, bytes).ok());
  VerifyReport v = Verify();
  bool named = false;
  for (const auto& p : v.problems) named |= p.object == RelocationName(moved[0]);
  EXPECT_TRUE(named);
  EXPECT_FALSE(v.broken_snapshots.empty());
  std::set<uint32_t> packs = Packs();
  auto r = RunPrune(*repo_, PruneOptions{});
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find(RelocationName(moved[0])), std::string::npos);
  EXPECT_EQ(Packs(), packs);
}

TEST_F(PruneTest, DamagedManifestMakesPruneRefuse) {
  Backup("a");
  Backup("b", {}, 5);
  DropVolume("b");
  std::vector<Manifest> list;
  ASSERT_TRUE(repo_->ListManifests("a", &list, nullptr).ok());
  std::string path = repo_->SnapshotsDir("a") + "/" + list[0].file_name;
  auto text = io::ReadFile(path);
  ASSERT_TRUE(text.ok());
  std::string edited = text.value();
  edited[20] ^= 0x01;
  ASSERT_TRUE(io::WriteFileAtomic(path, edited).ok());
  std::set<uint32_t> packs = Packs();
  auto r = RunPrune(*repo_, PruneOptions{});
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find(list[0].file_name), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("dp420 repair"), std::string::npos);
  EXPECT_EQ(Packs(), packs);
}

TEST_F(PruneTest, ReaderMakesDeletePhaseWaitAndSecondPruneIsBusy) {
  Backup("a");
  Backup("b", {}, 5);
  DropVolume("b");
  std::set<uint32_t> before = Packs();
  std::optional<VolumeLock> reader;
  {
    auto lock = repo_->LockRepository(false);  // as a running restore holds it
    ASSERT_TRUE(lock.ok());
    reader = std::move(lock).value();
  }
  std::atomic<bool> waiting{false};
  Result<PruneReport> result = Status::Internal("not run");
  std::thread pruner([&] {
    PruneOptions o;
    o.notice = [&](const std::string&) { waiting = true; };
    result = RunPrune(*repo_, o);
  });
  for (int i = 0; i < 500 && !waiting; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(waiting.load());
  EXPECT_EQ(Packs(), before);  // nothing deleted while the reader runs
  auto second = RunPrune(*repo_, PruneOptions{});
  EXPECT_EQ(second.status().code(), Code::kBusy);
  reader.reset();
  pruner.join();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GE(result->packs_deleted, 1u);
  EXPECT_LT(Packs().size(), before.size());
  ExpectRestores("a");
}

// What Proxmox Backup Server's garbage collection once got wrong: a chunk
// unreferenced at mark time, referenced again by a backup before the sweep.
// Here the backup re-references the records of a pack prune repacks, in
// this process, while prune runs in a child process and holds between its
// repack and its delete phase.
TEST_F(PruneTest, ChunkReReferencedDuringGcIsNotDeleted) {
  std::set<uint32_t> s1_packs;
  HalfUsedPack(&s1_packs);
  Backup("b", {}, 11);
  DropVolume("b");
  int ready[2], go[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto repo = Repository::Open(dir_ + "/repo");
    if (!repo.ok()) _exit(2);
    PruneOptions o;
    o.before_delete = [&] {
      char c = 'r';
      (void)!write(ready[1], &c, 1);
      (void)!read(go[0], &c, 1);
    };
    auto r = RunPrune(**repo, o);
    _exit(r.ok() && r->packs_rewritten == 1 ? 0 : 1);
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  // Marked, repacked, not deleted yet: a backup reusing all but one block
  // of its parent, which references the pack being repacked.
  ASSERT_FALSE(ListRelocations(*repo_).empty());
  Manifest m = Backup("a", {9}, 4);
  EXPECT_EQ(m.blocks_stored, 1u);
  ASSERT_EQ(write(go[1], &c, 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  for (uint32_t id : s1_packs) EXPECT_FALSE(Exists(repo_->PackPath(id)));
  ExpectRestores("a");
  ExpectClean();
  PruneReport again = Prune();
  EXPECT_EQ(again.packs_deleted + again.packs_rewritten, 0u);
  ExpectRestores("a");
  ExpectClean();
}

}  // namespace
}  // namespace dp420

namespace dp420 {
namespace {

// Dedup across volumes (engine/core/dedup.h) and prune: a record two volumes
// share is kept while any snapshot of either references it.
TEST_F(PruneTest, RecordSharedByAnotherVolumeOutlivesTheVolumeThatStoredIt) {
  Manifest a = Backup("a");
  // "b" holds the same bytes as "a": every block is referenced, none stored.
  std::filesystem::copy_file(Source("a"), Source("b"));
  Manifest b = Backup("b");
  EXPECT_EQ(b.blocks_stored, 0u);
  DropVolume("a");
  images_.erase(a.snapshot_id);
  PruneReport r = Prune(0);
  EXPECT_EQ(r.packs_deleted, 1u);  // only "a"'s table pack: "b" uses all of its data
  EXPECT_EQ(r.packs_rewritten, 0u);
  ExpectRestores("b");
  ExpectClean();
}

// The race the delete phase closes: "a" is dropped before prune marks, so
// the mark finds "a"'s data packs dead; then, before the delete phase, a
// backup of "b" with the same bytes finds them through the dedup index (the
// packs are still there) and commits. The delete phase sees that snapshot
// and keeps the packs it references; "b" restores and verifies.
TEST_F(PruneTest, DedupHitBetweenMarkAndDeleteKeepsThePack) {
  Backup("a");
  std::set<uint32_t> a_packs = Packs();
  DropVolume("a");
  std::filesystem::copy_file(Source("a"), Source("b"));
  PruneOptions o;
  o.max_unused = 0;
  std::optional<Manifest> b;
  o.before_delete = [&] { b = Backup("b"); };
  auto r = RunPrune(*repo_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->blocks_stored, 0u);  // every block found in "a"'s packs
  EXPECT_FALSE(r->warnings.empty());
  size_t kept = 0;
  for (uint32_t id : a_packs) kept += Exists(repo_->PackPath(id)) ? 1 : 0;
  EXPECT_GE(kept, 1u);  // the data pack; "a"'s table pack may go
  ExpectRestores("b");
  ExpectClean();
  // Nothing more to do: what "b" references stays, the rest went.
  PruneReport again = Prune(0);
  EXPECT_EQ(again.packs_rewritten, 0u);
  ExpectRestores("b");
  ExpectClean();
}

}  // namespace
}  // namespace dp420
