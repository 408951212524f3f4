// Dedup across the volumes of a repository, end to end through the CLI: a
// volume cloned from another one's template and changed by 1 % adds at most
// 5 % of its size (encrypted or not, compressed or not) and both restore
// bit-exact; a record shared by two volumes outlives the snapshots of the
// volume that stored it through forget and prune; a damaged, edited, forged,
// truncated or deleted dedup index (REPO/index/dedup.idx) never yields a
// wrong snapshot, at most a lost dedup; backups of two clones running at once
// both hold; records of a killed backup, of a pack a journal names, or that
// verify found damaged are never shared.

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 64 * kMiB;
constexpr uint64_t kHeaderBytes = 4096;  // the index's header (docs/FORMAT.md "Dedup index")
constexpr size_t kSlotBytes = 64;

// Bytes of every regular file of the repository (what it costs on disk,
// holes counted).
uint64_t RepoBytes(const std::string& repo) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(repo)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

std::string IndexPath(const std::string& repo) { return repo + "/index/dedup.idx"; }

// Byte offsets of the index's slots in use (pack id, at slot offset 16, not 0).
std::vector<size_t> UsedSlots(const std::string& index) {
  std::vector<size_t> out;
  std::string bytes = ReadFile(index);
  for (size_t at = kHeaderBytes; at + kSlotBytes <= bytes.size(); at += kSlotBytes) {
    uint32_t pack = 0;
    std::memcpy(&pack, bytes.data() + at + 16, 4);
    if (pack != 0) out.push_back(at);
  }
  return out;
}

class DedupTest : public testing::Test {
 protected:
  // A repository, encrypted with a key file when `encrypted`.
  void Init(bool encrypted) {
    encrypted_ = encrypted;
    Result r = encrypted ? Cli({"init", repo_, "--encryption", "aes-256-gcm", "--repo-key-file",
                                key_})
                         : Cli({"init", repo_, "--encryption", "none"});
    if (r.exit_code != kExitOk) Fail(r.Describe());
  }
  std::vector<std::string> KeyArgs() const {
    return encrypted_ ? std::vector<std::string>{"--repo-key-file", key_}
                      : std::vector<std::string>{};
  }
  Result Run(std::vector<std::string> args) const {
    for (const std::string& a : KeyArgs()) args.push_back(a);
    return Cli(args);
  }
  Json BackupOf(const std::string& volume, const std::string& source,
                std::vector<std::string> extra = {}) {
    for (const std::string& a : KeyArgs()) extra.push_back(a);
    return Backup(repo_, volume, source, extra);
  }
  // `name`: 64 MiB of random bytes, or of base64 text (compressible) when `text`.
  std::string Template(const std::string& name, bool text = false) {
    std::string path = dir_ / name;
    if (text) {
      // 48 MiB of random bytes are kVolumeBytes (64 MiB) of base64 (no pipe cut short).
      std::string script = "head -c 50331648 /dev/urandom | base64 -w 0 > ";
      script += ShellQuote(path);
      Result r = Sh(script);
      if (r.exit_code != 0) Fail(r.Describe());
    } else {
      WritePatternFile(path, kVolumeBytes, 420);
    }
    return path;
  }
  // A copy of `from` with 1 % of its bytes rewritten (ten ranges across it,
  // not block-aligned).
  std::string Clone(const std::string& from, const std::string& name, uint64_t seed) {
    std::string path = dir_ / name;
    std::filesystem::copy_file(from, path);
    const uint64_t changed = kVolumeBytes / 100, ranges = 10;
    for (uint64_t i = 0; i < ranges; ++i) {
      OverwriteRange(path, i * (kVolumeBytes / ranges) + 12345, changed / ranges, seed * 100 + i);
    }
    return path;
  }
  void ExpectRestores(const std::string& volume, const std::string& snapshot,
                      const std::string& source) {
    std::string target = dir_ / ("restored-" + std::to_string(restores_++));
    Result r = Run({"restore", "--repo", repo_, "--volume", volume, "--snapshot", snapshot, target});
    ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
    EXPECT_EQ(Sha256File(target), Sha256File(source)) << volume << " " << snapshot;
    std::filesystem::remove(target);
  }
  void ExpectVerifies() {
    Result r = Run({"verify", "--repo", repo_, "--read-data"});
    EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
  }
  // Template backed up as "a", a clone backed up as `volume`: its JSON.
  Json CloneBackup(const std::string& tmpl, const std::string& volume, uint64_t seed,
                   std::vector<std::string> extra = {}) {
    std::string clone = Clone(tmpl, volume + ".img", seed);
    Json j = BackupOf(volume, clone, extra);
    ExpectRestores(volume, j["snapshot_id"], clone);
    return j;
  }

  TempDir dir_;
  std::string repo_ = dir_ / "repo";
  std::string key_ = dir_ / "repo.key";
  bool encrypted_ = false;
  int restores_ = 0;
};

struct CloneCase {
  bool encrypted;
  bool text;
  const char* compression;
};

class DedupCloneTest : public DedupTest, public testing::WithParamInterface<CloneCase> {};

// The measure: the clone changed by 1 % adds at most 5 % of its size.
TEST_P(DedupCloneTest, CloneChangedByOnePercentAddsAtMostFivePercent) {
  const CloneCase& c = GetParam();
  Init(c.encrypted);
  std::string tmpl = Template("template.img", c.text);
  Json a = BackupOf("a", tmpl, {"--compression", c.compression});
  EXPECT_EQ(a["blocks_deduplicated"], 0u);
  // base64 text compresses (a 64 KiB block saves several 4 KiB slots): the
  // records shared below are compressed ones.
  if (c.text) {
    EXPECT_GT(a["blocks_compressed"].get<uint64_t>(), 1000u) << a.dump();
  }
  const uint64_t before = RepoBytes(repo_);
  Json b = CloneBackup(tmpl, "b", 1, {"--compression", c.compression});
  const uint64_t growth = RepoBytes(repo_) - before;
  EXPECT_LE(growth, kVolumeBytes / 20) << "grew by " << growth << " bytes";
  // 1 % changed in ten unaligned ranges of 67,108 bytes: each touches at most
  // 3 blocks, so at most 30 of the 1,024 blocks differ.
  EXPECT_GE(b["blocks_deduplicated"].get<uint64_t>(), 1024u - 30u) << b.dump();
  EXPECT_EQ(b["blocks_stored"].get<uint64_t>() + b["blocks_deduplicated"].get<uint64_t>(),
            b["blocks_changed"].get<uint64_t>());
  ExpectRestores("a", a["snapshot_id"], tmpl);
  ExpectVerifies();
  // Without the index the clone costs its whole size: the yardstick.
  const uint64_t mid = RepoBytes(repo_);
  Json c2 = CloneBackup(tmpl, "c", 2, {"--compression", c.compression, "--no-dedup"});
  EXPECT_EQ(c2["blocks_deduplicated"], 0u);
  EXPECT_GT(RepoBytes(repo_) - mid, kVolumeBytes / (c.text ? 2 : 1) * 9 / 10);
}

INSTANTIATE_TEST_SUITE_P(Repositories, DedupCloneTest,
                         testing::Values(CloneCase{false, false, "off"},
                                         CloneCase{true, false, "off"},
                                         CloneCase{false, true, "zstd"},
                                         CloneCase{true, true, "zstd:1"}),
                         [](const testing::TestParamInfo<CloneCase>& info) {
                           return std::string(info.param.encrypted ? "Encrypted" : "Plain") +
                                  (info.param.text ? "Compressed" : "Raw");
                         });

// A record "a" stored and "b" shares stays while "b" references it: "a"'s
// snapshot of the template is forgotten (its newest holds other bytes) and
// pruned down to no unused byte; "b" restores bit-exact, verify --read-data
// is clean, and a third clone backed up afterwards restores too.
TEST_F(DedupTest, SharedRecordOutlivesTheSnapshotThatStoredIt) {
  Init(true);
  std::string tmpl = Template("template.img");
  Json a1 = BackupOf("a", tmpl);
  Json b = CloneBackup(tmpl, "b", 1);
  std::string other = dir_ / "other.img";
  WritePatternFile(other, kVolumeBytes, 77);
  BackupOf("a", other);
  Result forget =
      Run({"forget", "--repo", repo_, "--volume", "a", "--snapshot", a1["snapshot_id"]});
  ASSERT_EQ(forget.exit_code, kExitOk) << forget.Describe();
  Result prune = Run({"prune", "--repo", repo_, "--max-unused", "0", "--json"});
  ASSERT_EQ(prune.exit_code, kExitOk) << prune.Describe();
  Json p = ParseJson(prune);
  // The template's records "b" does not share (its 1 %) went; the rest stayed.
  EXPECT_GT(p["bytes_freed"].get<uint64_t>(), 0u) << p.dump();
  EXPECT_LT(p["bytes_freed"].get<uint64_t>(), kVolumeBytes / 10) << p.dump();
  ExpectRestores("b", b["snapshot_id"], dir_ / "b.img");
  ExpectVerifies();
  // The template's records were repacked (their packs had dead records):
  // the index's slots name the old packs, whose relocation files lead to
  // the copies, which the third clone references.
  Json c = CloneBackup(tmpl, "c", 3);
  EXPECT_GE(c["blocks_deduplicated"].get<uint64_t>(), 1024u - 60u) << c.dump();
  ExpectVerifies();
}

// The index is a cache: every way of breaking it ends in a backup that
// restores bit-exact and verifies clean. A wholly unreadable index is
// rebuilt from the snapshots (dedup goes on); slots whose bytes were changed
// without the repository's key fail their MAC and are not used.
TEST_F(DedupTest, DamagedOrForgedIndexNeverYieldsAWrongSnapshot) {
  Init(true);
  std::string tmpl = Template("template.img");
  BackupOf("a", tmpl);
  const std::string index = IndexPath(repo_);
  ASSERT_TRUE(Exists(index));
  const std::string pristine = ReadFile(index);
  ASSERT_GE(UsedSlots(index).size(), 1024u);
  struct Damage {
    const char* name;
    bool rebuilt;  // the damage makes the whole file unreadable: rebuilt, dedup goes on
    std::function<void()> apply;
  };
  std::vector<Damage> damages = {
      {"deleted", true, [&] { std::filesystem::remove(index); }},
      {"truncated", true, [&] { Truncate(index, FileSize(index) / 2); }},
      {"header flipped", true, [&] { FlipBit(index, 40, 3); }},
      {"zeroed", true, [&] { WriteFile(index, std::string(pristine.size(), '\0')); }},
      {"locations rotated between slots", false,
       [&] {
         // A forger without the key gives each slot its neighbour's location
         // (and digest): every hash now names another block's record.
         std::string bytes = pristine;
         std::vector<size_t> used = UsedSlots(index);
         for (size_t i = 0; i < used.size(); ++i) {
           const size_t from = used[(i + 1) % used.size()];
           bytes.replace(used[i] + 16, 32, pristine, from + 16, 32);
         }
         WriteFile(index, bytes);
       }},
      {"every slot flipped", false,
       [&] {
         std::string bytes = pristine;
         for (size_t at : UsedSlots(index)) bytes[at + 20] ^= 1;  // offset_4k
         WriteFile(index, bytes);
       }},
  };
  int n = 0;
  for (const Damage& d : damages) {
    WriteFile(index, pristine);
    d.apply();
    std::string volume = "v";
    volume += std::to_string(n);
    Json j = CloneBackup(tmpl, volume, 10 + n);
    EXPECT_EQ(j["warnings"], Json::array()) << d.name << ": a readable index, rebuilt or not";
    if (d.rebuilt) {
      EXPECT_GE(j["blocks_deduplicated"].get<uint64_t>(), 1024u - 30u) << d.name << ": " << j.dump();
    } else {
      EXPECT_EQ(j["blocks_deduplicated"].get<uint64_t>(), 0u) << d.name << ": " << j.dump();
    }
    ++n;
  }
  ExpectVerifies();
}

// An index that cannot be opened at all (here a folder stands in its place):
// the backup goes on without dedup, commits a whole snapshot, and says why it
// shared nothing, on stderr and in --json, also with --quiet.
TEST_F(DedupTest, AnIndexThatCannotBeOpenedIsAWarningNotAFailure) {
  Init(false);
  std::string tmpl = Template("template.img");
  BackupOf("a", tmpl);
  const std::string index = IndexPath(repo_);
  std::filesystem::remove(index);
  std::filesystem::create_directory(index);
  Json j = CloneBackup(tmpl, "b", 1);
  EXPECT_EQ(j["blocks_deduplicated"].get<uint64_t>(), 0u) << j.dump();
  ASSERT_EQ(j["warnings"].size(), 1u) << j.dump();
  const std::string warning = j["warnings"][0].get<std::string>();
  EXPECT_NE(warning.find("deduplication off"), std::string::npos) << warning;
  EXPECT_NE(warning.find("dedup.idx"), std::string::npos) << "names the index: " << warning;
  Result quiet = Run({"backup", "--repo", repo_, "--volume", "c", "--quiet", tmpl});
  ASSERT_EQ(quiet.exit_code, kExitOk) << quiet.Describe();
  EXPECT_NE(quiet.err.find("warning: deduplication off"), std::string::npos) << quiet.Describe();
  std::string id = quiet.out.substr(0, quiet.out.find('\n'));
  ExpectRestores("c", id, tmpl);
  ExpectVerifies();
}

// Two clones of one template backed up at once: both commit, both restore
// bit-exact, verify --read-data is clean, and the index holds slots from both.
TEST_F(DedupTest, ConcurrentBackupsOfTwoClones) {
  Init(false);
  std::string tmpl = Template("template.img");
  BackupOf("a", tmpl);
  std::string b = Clone(tmpl, "b.img", 1), c = Clone(tmpl, "c.img", 2);
  auto run = [&](const std::string& volume, const std::string& source) {
    return Process::Start({CliPath(), "backup", "--repo", repo_, "--volume", volume, "--json",
                           source});
  };
  auto pb = run("b", b);
  auto pc = run("c", c);
  Result rb = pb->Wait(), rc = pc->Wait();
  ASSERT_EQ(rb.exit_code, kExitOk) << rb.Describe();
  ASSERT_EQ(rc.exit_code, kExitOk) << rc.Describe();
  Json jb = ParseJson(rb), jc = ParseJson(rc);
  EXPECT_GE(jb["blocks_deduplicated"].get<uint64_t>(), 1024u - 30u);
  EXPECT_GE(jc["blocks_deduplicated"].get<uint64_t>(), 1024u - 30u);
  ExpectRestores("b", jb["snapshot_id"], b);
  ExpectRestores("c", jc["snapshot_id"], c);
  ExpectVerifies();
  // A third clone finds the blocks both stored (their 1 %) as well.
  std::string d = dir_ / "d.img";
  std::filesystem::copy_file(b, d);
  Json jd = BackupOf("d", d);
  EXPECT_EQ(jd["blocks_stored"].get<uint64_t>(), 0u) << jd.dump();
  ExpectRestores("d", jd["snapshot_id"], d);
  std::string e = dir_ / "e.img";
  std::filesystem::copy_file(c, e);
  Json je = BackupOf("e", e);
  EXPECT_EQ(je["blocks_stored"].get<uint64_t>(), 0u) << je.dump();
  ExpectRestores("e", je["snapshot_id"], e);
}

// Only records that are committed, and not known damaged, are ever shared:
//  - a backup killed half-way offers nothing (its records are rolled back);
//  - a committed pack that a journal names (a planted tmp/*.journal, as a backup
//    in progress would) is not used until no journal names it;
//  - a record verify found damaged is stored anew by the next clone, which then
//    restores bit-exact and verifies clean, while the template reports its damage.
TEST_F(DedupTest, OnlyCommittedUndamagedRecordsAreShared) {
  Init(false);
  std::string tmpl = Template("template.img");
  Result killed = Cli({"backup", "--repo", repo_, "--volume", "a", tmpl},
                      {{"DP420_TEST_CRASH", "after-data:500"}});
  ASSERT_EQ(killed.term_signal, SIGKILL) << killed.Describe();
  auto packs = [&] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(repo_ + "/packs")) {
      names.insert(e.path());
    }
    return names;
  };
  Json b = CloneBackup(tmpl, "b", 1);
  EXPECT_EQ(b["blocks_deduplicated"], 0u) << b.dump();

  std::string journal;
  for (const auto& e : std::filesystem::directory_iterator(repo_ + "/packs")) {
    journal += "pack " + e.path().stem().string() + "\n";
  }
  WriteFile(repo_ + "/tmp/zz.journal", "snapshot 0123456789abcdef\n" + journal);
  const std::set<std::string> before_c = packs();
  Json c = CloneBackup(tmpl, "c", 2, {"--threads", "1"});  // one data pack, in volume order
  EXPECT_EQ(c["blocks_deduplicated"], 0u) << c.dump();
  std::filesystem::remove(repo_ + "/tmp/zz.journal");
  Json d = CloneBackup(tmpl, "d", 3);
  EXPECT_GE(d["blocks_deduplicated"].get<uint64_t>(), 1024u - 30u) << d.dump();

  // Block 5 of "c" (its sixth raw 64 KiB record, from 4 KiB on in its data pack, the
  // largest it made; no clone changes it), which the index now names (the newest
  // slot of a block wins) and "d" shares, damaged and found.
  std::string largest;
  for (const std::string& p : packs()) {
    if (before_c.count(p)) continue;
    if (largest.empty() || FileSize(p) > FileSize(largest)) largest = p;
  }
  FlipBit(largest, 4096 + 5 * 65536 + 100, 2);
  Result found = Run({"verify", "--repo", repo_, "--read-data"});
  ASSERT_EQ(found.exit_code, kExitDamage) << found.Describe();
  Json e = CloneBackup(tmpl, "e", 4);  // restores bit-exact: nothing damaged is referenced
  EXPECT_LT(e["blocks_deduplicated"].get<uint64_t>(), 1024u) << e.dump();
  Result clean = Run({"verify", "--repo", repo_, "--read-data", "--volume", "e"});
  EXPECT_EQ(clean.exit_code, kExitOk) << clean.Describe();
}

}  // namespace
}  // namespace dp420::e2e
