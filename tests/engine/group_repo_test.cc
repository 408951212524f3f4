// Consistency groups in the repository (engine/core/group_repo.h): epochs,
// staged members, the group commit, publishing, the roll-forward after a
// crash, and what verify and prune make of them. Real files and real
// backups; crashes are real SIGKILLs of a forked child at the crash points.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/forget.h"
#include "engine/core/group_repo.h"
#include "engine/core/history.h"
#include "engine/core/prune.h"
#include "engine/core/restore.h"
#include "engine/core/snapshot.h"
#include "engine/core/test_hooks.h"
#include "engine/core/verify.h"
#include "io/file.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::Exists;
using testing::MakeVolume;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

constexpr char kGroup[] = "db";

GroupMemberRecord Record(const std::string& volume, const std::string& seal) {
  GroupMemberRecord r;
  r.member = "node-" + volume + ":" + volume;
  r.volume = volume;
  r.manifest_seal = seal;
  r.skew_ns = 1000;
  r.skew_error_ns = 200;
  return r;
}

class GroupRepoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("DP420_STATE_DIR", (dir_.path() + "/state").c_str(), 1);
    repo_path_ = dir_.path() + "/repo";
    repo_ = testing::NewRepository(repo_path_);
    ASSERT_NE(repo_, nullptr);
    Write("a", 3 * 1024 * 1024 + 4321, 1);
    Write("b", 2 * 1024 * 1024, 2);
  }
  void TearDown() override { unsetenv("DP420_STATE_DIR"); }

  // Replaces the repository with an encrypted one (a passphrase slot).
  void UseEncryptedRepository() {
    const std::string passphrase = dir_.path() + "/passphrase";
    WriteAll(passphrase, {'g', 'r', 'o', 'u', 'p', 's', '\n'});
    InitOptions init;
    init.encrypted = true;
    init.key_source.passphrase_file = passphrase;
    repo_path_ = dir_.path() + "/encrypted";
    ASSERT_TRUE(Repository::Init(repo_path_, init).ok());
    auto repo = Repository::Open(repo_path_, init.key_source);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
  }

  std::string Source(const std::string& volume) const {
    return dir_.path() + "/" + volume + ".img";
  }
  void Write(const std::string& volume, size_t bytes, uint32_t seed) {
    images_[volume] = MakeVolume(bytes, seed);
    WriteAll(Source(volume), images_[volume]);
  }
  BackupOptions Options(const std::string& volume) const {
    BackupOptions o;
    o.volume = volume;
    o.source_path = Source(volume);
    o.threads = 2;
    o.tool_version = "test";
    o.node_topology = Json{{"node_id", "node-" + volume},
                           {"members", Json::array({Json{{"node_id", "node-" + volume},
                                                         {"volume", volume}}})}};
    return o;
  }
  StagedBackup Stage(const std::string& volume, uint64_t epoch, const std::string& group = kGroup) {
    auto s = StageBackup(*repo_, Options(volume), group, epoch);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : StagedBackup();
  }
  uint64_t Begin(const std::string& group = kGroup) {
    auto e = BeginGroupEpoch(*repo_, group);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? *e : 0;
  }
  Manifest Backup(const std::string& volume) {
    auto r = RunBackup(*repo_, Options(volume));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->manifest : Manifest();
  }
  std::vector<Manifest> Listed(const std::string& volume) const {
    std::vector<Manifest> list;
    Status s = repo_->ListManifests(volume, &list, nullptr);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return list;
  }
  std::vector<uint8_t> Restore(const std::string& volume, const std::string& id) {
    RestoreOptions o;
    o.volume = volume;
    o.snapshot = id;
    o.target_path = dir_.path() + "/restored-" + volume + "-" + std::to_string(restores_++);
    auto r = RunRestore(*repo_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return ReadAll(o.target_path);
  }
  std::set<uint32_t> Packs() const {
    auto ids = repo_->ListPackIds();
    return {ids.begin(), ids.end()};
  }
  std::vector<VerifyProblem> Verify() {
    auto r = RunVerify(*repo_, VerifyOptions{});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->problems : std::vector<VerifyProblem>{{"verify", "did not run", {}}};
  }
  void ExpectClean() {
    for (const VerifyProblem& p : Verify()) ADD_FAILURE() << p.object << ": " << p.message;
  }
  std::vector<GroupManifest> Groups() const {
    std::vector<GroupManifest> list;
    Status s = ListGroupManifests(*repo_, "", &list);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return list;
  }
  std::string GroupDir() const { return repo_path_ + "/groups/" + kGroup; }
  std::string EpochName(uint64_t epoch) const {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%020llu", static_cast<unsigned long long>(epoch));
    return buf;
  }
  std::string StagedPath(uint64_t epoch, const std::string& volume) const {
    return GroupDir() + "/" + EpochName(epoch) + "/" + volume + ".manifest";
  }
  GroupEpochState State(uint64_t epoch) const {
    auto s = GroupEpochStateOf(*repo_, kGroup, epoch);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? *s : GroupEpochState::kAborted;
  }
  // Stages "a" and "b" under a new epoch and commits them; not published.
  uint64_t StageAndCommit(StagedBackup* a, StagedBackup* b) {
    const uint64_t epoch = Begin();
    *a = Stage("a", epoch);
    *b = Stage("b", epoch);
    auto gm = CommitGroup(*repo_, kGroup, epoch,
                          {Record("a", a->result.manifest.seal),
                           Record("b", b->result.manifest.seal)}, "test");
    EXPECT_TRUE(gm.ok()) << gm.status().ToString();
    return epoch;
  }

  TempDir dir_;
  std::string repo_path_;
  std::unique_ptr<Repository> repo_;
  std::map<std::string, std::vector<uint8_t>> images_;
  int restores_ = 0;
};

TEST_F(GroupRepoTest, EpochsIncreaseAcrossGroupsAndSurviveReopen) {
  EXPECT_EQ(Begin("db"), 1u);
  EXPECT_EQ(Begin("web"), 2u);
  EXPECT_EQ(Begin("db"), 3u);
  EXPECT_EQ(State(1), GroupEpochState::kOpen);
  EXPECT_EQ(State(2), GroupEpochState::kAborted);  // web's epoch, never begun in db
  EXPECT_TRUE(Exists(GroupDir() + "/00000000000000000003.open"));
  repo_.reset();
  auto reopened = Repository::Open(repo_path_);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  repo_ = std::move(reopened).value();
  EXPECT_EQ(Begin("web"), 4u);
  EXPECT_EQ(BeginGroupEpoch(*repo_, ".hidden").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BeginGroupEpoch(*repo_, "a/b").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(Begin("db"), 5u);
}

TEST_F(GroupRepoTest, DamagedOrMissingEpochFileIsRefusedNotRestarted) {
  ASSERT_EQ(Begin(), 1u);
  ASSERT_EQ(Begin(), 2u);
  const std::string path = repo_path_ + "/groups/.epoch";
  auto text = io::ReadFile(path);
  ASSERT_TRUE(text.ok());
  std::string edited = *text;
  edited[edited.find("\"epoch\":2") + 8] = '1';  // resealed by no one: the seal breaks
  ASSERT_TRUE(io::WriteFileAtomic(path, edited).ok());
  auto next = BeginGroupEpoch(*repo_, kGroup);
  EXPECT_EQ(next.status().code(), Code::kCorruption);
  EXPECT_NE(next.status().message().find("groups/.epoch"), std::string::npos);
  auto commit = CommitGroup(*repo_, kGroup, 2, {Record("a", std::string(64, '0'))}, "test");
  EXPECT_EQ(commit.status().code(), Code::kCorruption);
  // Missing, while groups/db holds epochs: refused as well.
  ASSERT_EQ(unlink(path.c_str()), 0);
  EXPECT_EQ(BeginGroupEpoch(*repo_, "other").status().code(), Code::kCorruption);
  ASSERT_TRUE(io::WriteFileAtomic(path, *text).ok());
  EXPECT_EQ(Begin(), 3u);
}

TEST_F(GroupRepoTest, StagedMembersAreInvisibleUntilCommittedAndPublishedAndRestoreBitExact) {
  const uint64_t epoch = Begin();
  StagedBackup a = Stage("a", epoch);
  StagedBackup b = Stage("b", epoch);
  ASSERT_TRUE(a.builder && b.builder);
  EXPECT_TRUE(Listed("a").empty());
  EXPECT_TRUE(Listed("b").empty());
  auto seal_a = StagedSeal(*repo_, kGroup, epoch, "a");
  ASSERT_TRUE(seal_a.ok() && seal_a->has_value());
  EXPECT_EQ(**seal_a, a.result.manifest.seal);
  // The staged file is the manifest's sealed text, as it will be published.
  auto staged_text = io::ReadFile(StagedPath(epoch, "a"));
  ASSERT_TRUE(staged_text.ok());
  EXPECT_EQ(*staged_text, SealJson(a.result.manifest.ToJson(), repo_->seal_key()));
  EXPECT_EQ(a.builder->Publish().code(), Code::kBusy);  // not committed yet

  auto gm = CommitGroup(*repo_, kGroup, epoch,
                        {Record("b", b.result.manifest.seal), Record("a", a.result.manifest.seal)},
                        "test-tool");
  ASSERT_TRUE(gm.ok()) << gm.status().ToString();
  EXPECT_EQ(State(epoch), GroupEpochState::kCommitted);
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch) + ".open"));
  ASSERT_EQ(gm->members.size(), 2u);
  EXPECT_EQ(gm->members[0].volume, "a");  // sorted by member
  EXPECT_EQ(gm->members[0].snapshot_id, a.result.manifest.snapshot_id);
  EXPECT_EQ(gm->members[1].sequence, 1u);
  EXPECT_EQ(gm->node_topology["members"].size(), 2u);
  EXPECT_EQ(gm->node_topology["members"][1]["volume"], "b");
  EXPECT_TRUE(Listed("a").empty());  // committed, not yet published

  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  EXPECT_TRUE(a.builder->Publish().ok());  // idempotent
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch)));  // staging folder gone
  a = StagedBackup();
  b = StagedBackup();
  ASSERT_EQ(Listed("a").size(), 1u);
  ASSERT_EQ(Listed("b").size(), 1u);
  EXPECT_EQ(Listed("a")[0].seal, gm->members[0].manifest_seal);
  auto head = ReadHead(*repo_, "a");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->snapshot_id, gm->members[0].snapshot_id);
  EXPECT_FALSE(Exists(repo_path_ + "/tmp/a.journal"));
  std::vector<GroupManifest> groups = Groups();
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].seal, gm->seal);
  EXPECT_EQ(groups[0].file_name, gm->file_name);
  EXPECT_EQ(groups[0].members[1].skew_ns, 1000);
  EXPECT_EQ(Restore("a", gm->members[0].snapshot_id), images_["a"]);
  EXPECT_EQ(Restore("b", gm->members[1].snapshot_id), images_["b"]);
  ExpectClean();

  // The next group builds on the published members.
  images_["a"][12345] ^= 0x5a;
  WriteAll(Source("a"), images_["a"]);
  const uint64_t second = Begin();
  StagedBackup a2 = Stage("a", second);
  StagedBackup b2 = Stage("b", second);
  EXPECT_EQ(a2.result.manifest.parent, gm->members[0].snapshot_id);
  EXPECT_EQ(a2.result.manifest.sequence, 2u);
  EXPECT_EQ(a2.result.manifest.blocks_stored, 1u);
  ASSERT_TRUE(CommitGroup(*repo_, kGroup, second,
                          {Record("a", a2.result.manifest.seal),
                           Record("b", b2.result.manifest.seal)}, "test").ok());
  ASSERT_TRUE(a2.builder->Publish().ok());
  ASSERT_TRUE(b2.builder->Publish().ok());
  EXPECT_EQ(Restore("a", "latest"), images_["a"]);
  EXPECT_EQ(Groups().size(), 2u);
  ExpectClean();
}

// In an encrypted repository the group manifest and the epoch file are
// encrypted (kind "group") and read back; the members restore.
TEST_F(GroupRepoTest, AnEncryptedRepositoryEncryptsGroupFiles) {
  UseEncryptedRepository();
  StagedBackup a, b;
  const uint64_t epoch = StageAndCommit(&a, &b);
  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  a = StagedBackup();
  b = StagedBackup();
  const std::vector<GroupManifest> groups = Groups();
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].epoch, epoch);
  for (const std::string& file : {GroupDir() + "/" + groups[0].file_name,
                                  repo_path_ + "/groups/.epoch"}) {
    auto text = io::ReadFile(file);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(text->rfind("{\"format\":\"dp420-sealed\",\"kind\":\"group\"", 0), 0u) << *text;
    EXPECT_EQ(text->find("\"epoch\""), std::string::npos);  // no field in the clear
  }
  EXPECT_EQ(Begin(), epoch + 1);
  EXPECT_EQ(Restore("a", "latest"), images_["a"]);
  EXPECT_EQ(Restore("b", "latest"), images_["b"]);
  ExpectClean();
}

TEST_F(GroupRepoTest, RefusedCommitsPublishNothing) {
  const std::set<uint32_t> before = Packs();
  const uint64_t old_epoch = Begin();
  StagedBackup a = Stage("a", old_epoch);
  StagedBackup b = Stage("b", old_epoch);
  const std::string sa = a.result.manifest.seal, sb = b.result.manifest.seal;
  auto expect_nothing = [&](uint64_t epoch) {
    EXPECT_NE(State(epoch), GroupEpochState::kCommitted);
    EXPECT_TRUE(Groups().empty());
    EXPECT_TRUE(Listed("a").empty());
    EXPECT_TRUE(Listed("b").empty());
  };
  // A wrong seal, a member that staged nothing, no member.
  auto wrong = CommitGroup(*repo_, kGroup, old_epoch,
                           {Record("a", sa), Record("b", std::string(64, 'e'))}, "test");
  EXPECT_EQ(wrong.status().code(), Code::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("staged seal " + sb), std::string::npos)
      << wrong.status().message();
  auto nothing = CommitGroup(*repo_, kGroup, old_epoch,
                             {Record("a", sa), Record("b", sb), Record("c", sb)}, "test");
  EXPECT_EQ(nothing.status().code(), Code::kInvalidArgument);
  EXPECT_NE(nothing.status().message().find("staged nothing"), std::string::npos);
  EXPECT_EQ(CommitGroup(*repo_, kGroup, old_epoch, {}, "test").status().code(),
            Code::kInvalidArgument);
  expect_nothing(old_epoch);
  // An older epoch, once a newer one was begun (of another group too).
  const uint64_t newer = Begin("other");
  auto fenced = CommitGroup(*repo_, kGroup, old_epoch, {Record("a", sa), Record("b", sb)}, "t");
  EXPECT_EQ(fenced.status().code(), Code::kBusy);
  EXPECT_NE(fenced.status().message().find("fenced"), std::string::npos);
  // Nor is anything staged under it any more.
  Write("c", 1 << 20, 3);
  auto c = StageBackup(*repo_, Options("c"), kGroup, old_epoch);
  EXPECT_EQ(c.status().code(), Code::kBusy);
  EXPECT_NE(c.status().message().find("fenced"), std::string::npos) << c.status().ToString();
  expect_nothing(old_epoch);
  EXPECT_TRUE(Listed("c").empty());
  // An aborted epoch.
  ASSERT_TRUE(AbortGroupEpoch(*repo_, "other", newer).ok());
  const uint64_t aborted = Begin();
  StagedBackup a2;
  {
    a = StagedBackup();  // rolled back: its epoch was fenced
    b = StagedBackup();
    a2 = Stage("a", aborted);
  }
  ASSERT_TRUE(AbortGroupEpoch(*repo_, kGroup, aborted).ok());
  auto late = CommitGroup(*repo_, kGroup, aborted, {Record("a", a2.result.manifest.seal)}, "t");
  EXPECT_EQ(late.status().code(), Code::kBusy);
  EXPECT_NE(late.status().message().find("not open"), std::string::npos);
  EXPECT_EQ(a2.builder->Publish().code(), Code::kInvalidArgument);
  expect_nothing(aborted);
  a2 = StagedBackup();
  EXPECT_EQ(Packs(), before);
  ExpectClean();
}

TEST_F(GroupRepoTest, AbortDropsStagedManifestsAndTheBuildersThenDropThePacks) {
  const std::set<uint32_t> before = Packs();
  const uint64_t epoch = Begin();
  StagedBackup a = Stage("a", epoch);
  StagedBackup b = Stage("b", epoch);
  const std::set<uint32_t> staged = Packs();
  ASSERT_GT(staged.size(), before.size() + 1);
  ASSERT_TRUE(Exists(StagedPath(epoch, "a")));
  // Every staged pack is still journalled: prune leaves it alone.
  auto journalled = JournalledPackIds(*repo_);
  ASSERT_TRUE(journalled.ok());
  std::set<uint32_t> j(journalled->begin(), journalled->end());
  for (uint32_t id : staged) {
    if (!before.count(id)) {
      EXPECT_TRUE(j.count(id)) << PackName(id);
    }
  }
  ASSERT_TRUE(AbortGroupEpoch(*repo_, kGroup, epoch).ok());
  EXPECT_EQ(State(epoch), GroupEpochState::kAborted);
  EXPECT_FALSE(Exists(StagedPath(epoch, "a")));
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch)));
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch) + ".open"));
  auto seal = StagedSeal(*repo_, kGroup, epoch, "b");
  ASSERT_TRUE(seal.ok());
  EXPECT_FALSE(seal->has_value());
  EXPECT_EQ(Packs(), staged);  // the builders hold them until they are dropped
  ASSERT_TRUE(AbortGroupEpoch(*repo_, kGroup, epoch).ok());  // again: nothing to do
  a = StagedBackup();
  b = StagedBackup();
  EXPECT_EQ(Packs(), before);
  EXPECT_FALSE(Exists(repo_path_ + "/tmp/a.journal"));
  EXPECT_TRUE(Listed("a").empty());
  ExpectClean();
}

TEST_F(GroupRepoTest, ABuilderDroppedAfterTheCommitPublishesInsteadOfRollingBack) {
  StagedBackup a, b;
  const uint64_t epoch = StageAndCommit(&a, &b);
  const std::string id_a = a.result.manifest.snapshot_id;
  a = StagedBackup();  // no Publish: the group is committed, so it is published
  ASSERT_TRUE(b.builder->Publish().ok());
  b = StagedBackup();
  ASSERT_EQ(Listed("a").size(), 1u);
  EXPECT_EQ(Listed("a")[0].snapshot_id, id_a);
  EXPECT_EQ(Restore("a", id_a), images_["a"]);
  EXPECT_EQ(State(epoch), GroupEpochState::kCommitted);
  ExpectClean();
}

TEST_F(GroupRepoTest, AbortOfACommittedEpochChangesNothing) {
  StagedBackup a, b;
  const uint64_t epoch = StageAndCommit(&a, &b);
  ASSERT_TRUE(AbortGroupEpoch(*repo_, kGroup, epoch).ok());
  EXPECT_EQ(State(epoch), GroupEpochState::kCommitted);
  EXPECT_TRUE(Exists(StagedPath(epoch, "a")));
  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  EXPECT_EQ(Listed("b").size(), 1u);
}

// ---- crashes ----

// In a forked child: stages "a" and "b" under `epoch`, commits and publishes
// them, dying at `point`. Exit codes other than death name the step that failed.
[[noreturn]] void CommitInChild(const std::string& repo_path, uint64_t epoch,
                                const BackupOptions& oa, const BackupOptions& ob,
                                const char* point) {
  auto repo = Repository::Open(repo_path);
  if (!repo.ok()) _exit(2);
  auto a = StageBackup(**repo, oa, kGroup, epoch);
  if (!a.ok()) _exit(3);
  auto b = StageBackup(**repo, ob, kGroup, epoch);
  if (!b.ok()) _exit(4);
  SetCrashPointForTest(point);
  auto gm = CommitGroup(
      **repo, kGroup, epoch,
      {Record("a", a->result.manifest.seal), Record("b", b->result.manifest.seal)}, "test");
  if (!gm.ok()) _exit(5);
  if (!a->builder->Publish().ok()) _exit(6);
  if (!b->builder->Publish().ok()) _exit(7);
  _exit(0);
}

struct CrashCase {
  const char* point;
  bool committed;  // the group manifest was renamed before the crash
  size_t visible_a, visible_b;  // members published at the crash
};
void PrintTo(const CrashCase& c, std::ostream* os) { *os << c.point; }

class GroupCrashTest : public GroupRepoTest,
                       public ::testing::WithParamInterface<std::tuple<CrashCase, bool>> {
 protected:
  // Runs the child to its death; returns the epoch.
  uint64_t Crash(const CrashCase& c) {
    const uint64_t epoch = Begin();
    pid_t pid = fork();
    EXPECT_GE(pid, 0);
    if (pid == 0) CommitInChild(repo_path_, epoch, Options("a"), Options("b"), c.point);
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child did not die at " << c.point << ": status " << status;
    return epoch;
  }
};

TEST_P(GroupCrashTest, RecoveryPublishesTheWholeGroupOrNothingOfIt) {
  const auto& [c, by_journal] = GetParam();
  const std::set<uint32_t> before = Packs();
  const uint64_t epoch = Crash(c);
  // As the crash left it: torn or not, never more than the commit allowed.
  EXPECT_EQ(Listed("a").size(), c.visible_a);
  EXPECT_EQ(Listed("b").size(), c.visible_b);
  EXPECT_EQ(State(epoch), c.committed ? GroupEpochState::kCommitted : GroupEpochState::kOpen);
  ASSERT_GT(Packs().size(), before.size());
  if (by_journal) {
    // The next ordinary backup of one member.
    images_["a"][777] ^= 1;
    WriteAll(Source("a"), images_["a"]);
    Manifest next = Backup("a");
    EXPECT_EQ(next.sequence, c.committed ? 2u : 1u);
  } else {
    std::vector<std::string> log;
    Status s = RecoverGroups(*repo_, true, std::chrono::seconds(5), &log);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_FALSE(log.empty());
    EXPECT_FALSE(Exists(repo_path_ + "/tmp/a.journal"));
    EXPECT_FALSE(Exists(repo_path_ + "/tmp/b.journal"));
  }
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch)));
  EXPECT_FALSE(Exists(GroupDir() + "/" + EpochName(epoch) + ".open"));
  const size_t group_a = Listed("a").size() - (by_journal ? 1 : 0);
  EXPECT_EQ(Listed("b").size(), c.committed ? 1u : 0u);
  EXPECT_EQ(group_a, c.committed ? 1u : 0u);
  EXPECT_EQ(Groups().size(), c.committed ? 1u : 0u);
  if (c.committed) {
    EXPECT_EQ(Restore("b", "latest"), images_["b"]);
    EXPECT_EQ(Listed("a")[0].seal, Groups()[0].members[0].manifest_seal);
  } else if (!by_journal) {
    EXPECT_EQ(Packs(), before);  // the staged packs rolled back with the epoch
  }
  if (by_journal) {
    EXPECT_EQ(Restore("a", "latest"), images_["a"]);
  }
  ExpectClean();
  // And the next group goes through.
  StagedBackup a, b;
  StageAndCommit(&a, &b);
  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  a = StagedBackup();
  b = StagedBackup();
  EXPECT_EQ(Restore("b", "latest"), images_["b"]);
  ExpectClean();
}

INSTANTIATE_TEST_SUITE_P(
    Points, GroupCrashTest,
    ::testing::Combine(::testing::Values(CrashCase{"group-before-rename", false, 0, 0},
                                         CrashCase{"group-after-rename", true, 0, 0},
                                         CrashCase{"group-before-publish", true, 0, 0},
                                         CrashCase{"group-after-publish", true, 1, 0}),
                       ::testing::Bool()),
    [](const auto& info) {
      std::string name = std::get<0>(info.param).point;
      for (char& ch : name) {
        if (ch == '-') ch = '_';
      }
      return name + (std::get<1>(info.param) ? "_next_backup" : "_recover_groups");
    });

TEST_F(GroupRepoTest, RecoverGroupsLeavesAnOpenEpochUnlessAskedToAbortIt) {
  const uint64_t epoch = Begin();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Stages "a" and dies with the epoch open.
    auto repo = Repository::Open(repo_path_);
    if (!repo.ok()) _exit(2);
    auto a = StageBackup(**repo, Options("a"), kGroup, epoch);
    if (!a.ok()) _exit(3);
    SetCrashPointForTest("group-before-rename");
    (void)CommitGroup(**repo, kGroup, epoch, {Record("a", a->result.manifest.seal)}, "t");
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  ASSERT_TRUE(RecoverGroups(*repo_, false, std::chrono::seconds(1)).ok());
  EXPECT_EQ(State(epoch), GroupEpochState::kOpen);
  EXPECT_TRUE(Exists(StagedPath(epoch, "a")));
  ASSERT_TRUE(RecoverGroups(*repo_, true, std::chrono::seconds(1)).ok());
  EXPECT_EQ(State(epoch), GroupEpochState::kAborted);
  EXPECT_FALSE(Exists(StagedPath(epoch, "a")));
  EXPECT_FALSE(Exists(repo_path_ + "/tmp/a.journal"));
  EXPECT_TRUE(repo_->ListPackIds().empty());
}

// A committed epoch whose members a crash left unpublished: prune keeps
// their packs and what they reference (here blocks deduplicated against a
// volume dropped since), so that the roll-forward publishes snapshots that
// restore.
TEST_F(GroupRepoTest, PruneKeepsWhatStagedMembersNeedAndLeavesGroupsAlone) {
  std::filesystem::copy_file(Source("a"), Source("x"));
  images_["x"] = images_["a"];
  Manifest x = Backup("x");
  ASSERT_GT(x.blocks_stored, 0u);
  const uint64_t epoch = Begin();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) CommitInChild(repo_path_, epoch, Options("a"), Options("b"), "group-after-rename");
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  ASSERT_EQ(State(epoch), GroupEpochState::kCommitted);
  // The staged "a" stored no block: it references those of "x".
  auto staged = io::ReadFile(StagedPath(epoch, "a"));
  ASSERT_TRUE(staged.ok());
  auto staged_a = Manifest::Parse(*staged, "staged", &repo_->seal_key());
  ASSERT_TRUE(staged_a.ok());
  ASSERT_GT(staged_a->blocks_changed, 0u);
  ASSERT_EQ(staged_a->blocks_stored, 0u);
  // "x" goes: its data packs are referenced by the staged "a" alone (its
  // table pack by no one).
  std::filesystem::remove_all(repo_->SnapshotsDir("x"));
  std::filesystem::remove(AnchorDir(*repo_) + "/x");
  auto pruned = RunPrune(*repo_, PruneOptions{});
  ASSERT_TRUE(pruned.ok()) << pruned.status().ToString();
  EXPECT_EQ(pruned->packs_deleted, 1u);
  EXPECT_FALSE(Exists(repo_->PackPath(x.table_root.pack_id)));
  EXPECT_TRUE(Exists(repo_path_ + "/groups/.epoch"));
  EXPECT_TRUE(Exists(StagedPath(epoch, "a")));
  ASSERT_TRUE(RecoverGroups(*repo_, true, std::chrono::seconds(5)).ok());
  EXPECT_EQ(Restore("a", "latest"), images_["a"]);
  EXPECT_EQ(Restore("b", "latest"), images_["b"]);
  ExpectClean();
}

// ---- someone editing the repository ----

TEST_F(GroupRepoTest, AStagedManifestSwappedForAnotherVolumesIsRefusedByTheCommit) {
  const uint64_t epoch = Begin();
  StagedBackup a = Stage("a", epoch);
  StagedBackup b = Stage("b", epoch);
  std::filesystem::copy_file(StagedPath(epoch, "b"), StagedPath(epoch, "a"),
                             std::filesystem::copy_options::overwrite_existing);
  for (const std::string& seal : {a.result.manifest.seal, b.result.manifest.seal}) {
    auto gm = CommitGroup(*repo_, kGroup, epoch, {Record("a", seal),
                                                  Record("b", b.result.manifest.seal)}, "t");
    EXPECT_FALSE(gm.ok());
    EXPECT_NE(gm.status().message().find("a.manifest"), std::string::npos)
        << gm.status().message();
  }
  EXPECT_EQ(State(epoch), GroupEpochState::kOpen);
  EXPECT_TRUE(Groups().empty());
  EXPECT_TRUE(Listed("a").empty());
  EXPECT_TRUE(Listed("b").empty());
}

TEST_F(GroupRepoTest, VerifyFindsADamagedGroupManifestAndAReplacedOrMissingMember) {
  StagedBackup a, b;
  const uint64_t epoch = StageAndCommit(&a, &b);
  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  a = StagedBackup();
  b = StagedBackup();
  ExpectClean();
  const GroupManifest gm = Groups().at(0);
  const std::string object = "groups/" + std::string(kGroup) + "/" + gm.file_name;
  EXPECT_EQ(gm.file_name.substr(0, 21), EpochName(epoch) + "-");

  // A member manifest swapped for another snapshot's of the same volume.
  Manifest later = Backup("a");
  const std::string dir = repo_->SnapshotsDir("a");
  const std::string member_file = dir + "/" + Listed("a")[0].file_name;
  const std::string saved = dir_.path() + "/saved";
  std::filesystem::copy_file(member_file, saved);
  std::filesystem::copy_file(dir + "/" + later.file_name, member_file,
                             std::filesystem::copy_options::overwrite_existing);
  std::vector<VerifyProblem> problems = Verify();
  bool found = false;
  for (const VerifyProblem& p : problems) {
    if (p.object == object && p.message.find("member node-a:a") != std::string::npos &&
        p.message.find("replaced") != std::string::npos) {
      found = true;
    }
  }
  EXPECT_TRUE(found);
  std::filesystem::rename(saved, member_file);
  ExpectClean();

  // A member's manifest missing (not forgotten).
  const std::string b_file = repo_->SnapshotsDir("b") + "/" + Listed("b")[0].file_name;
  std::filesystem::rename(b_file, saved);
  VerifyReport report;
  ASSERT_TRUE(VerifyGroups(*repo_, &report).ok());
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_EQ(report.problems[0].object, object);
  EXPECT_NE(report.problems[0].message.find("missing"), std::string::npos);
  std::filesystem::rename(saved, b_file);

  // The group manifest with a flipped byte.
  const std::string group_file = repo_path_ + "/" + object;
  auto text = io::ReadFile(group_file);
  ASSERT_TRUE(text.ok());
  std::string edited = *text;
  edited[edited.find("\"epoch\"") + 3] ^= 0x01;
  ASSERT_TRUE(io::WriteFileAtomic(group_file, edited).ok());
  problems = Verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].object, object);
  EXPECT_NE(problems[0].message.find("seal mismatch"), std::string::npos) << problems[0].message;
  std::vector<GroupManifest> list;
  Status listed = ListGroupManifests(*repo_, "", &list);
  EXPECT_EQ(listed.code(), Code::kCorruption);
  EXPECT_NE(listed.message().find(object), std::string::npos);
  ASSERT_TRUE(io::WriteFileAtomic(group_file, *text).ok());
  // Renamed to another epoch: the name does not match the content.
  const std::string renamed = GroupDir() + "/" + EpochName(epoch + 7) + gm.file_name.substr(20);
  std::filesystem::rename(group_file, renamed);
  problems = Verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].message.find("does not match"), std::string::npos);
  std::filesystem::rename(renamed, group_file);
  ExpectClean();
}

TEST_F(GroupRepoTest, AForgottenMemberIsNoProblem) {
  StagedBackup a, b;
  StageAndCommit(&a, &b);
  ASSERT_TRUE(a.builder->Publish().ok());
  ASSERT_TRUE(b.builder->Publish().ok());
  a = StagedBackup();
  b = StagedBackup();
  const std::string member = Listed("a")[0].snapshot_id;
  Backup("a");
  Backup("a");
  ForgetOptions o;
  o.volume = "a";
  o.snapshots = {member};
  auto forgot = RunForget(*repo_, o);
  ASSERT_TRUE(forgot.ok()) << forgot.status().ToString();
  ASSERT_EQ(forgot->forgotten, 1u);
  ExpectClean();
}

TEST(JournalGroupMarkTest, TheMarkIsReadAndNamesNoPack) {
  const std::string t = "snapshot 0123456789abcdef\npack 0000000a\npack 0000000b\n"
                        "group db 00000000000000000042\n";
  std::string group;
  uint64_t epoch = 0;
  ASSERT_TRUE(JournalGroupMark(t, &group, &epoch));
  EXPECT_EQ(group, "db");
  EXPECT_EQ(epoch, 42u);
  EXPECT_EQ(JournalPackIds(t), (std::vector<uint32_t>{0xa, 0xb}));
  EXPECT_FALSE(JournalGroupMark(t.substr(0, t.size() - 1), &group, &epoch));  // torn
  EXPECT_FALSE(JournalGroupMark("snapshot 0123456789abcdef\npack 0000000a\n", &group, &epoch));
  EXPECT_FALSE(JournalGroupMark("snapshot x\ngroup .db 00000000000000000001\n", &group, &epoch));
  EXPECT_FALSE(JournalGroupMark("snapshot x\ngroup db 0\n", &group, &epoch));
}

}  // namespace
}  // namespace dp420
