// `dp420 forget`, `protect` and `unprotect` through the real binary: what
// they print (human and --json), their exit codes, and SIGKILL at every I/O
// of a forget (io/inject.h): after each, verify --read-data is clean, the
// volume lists either every snapshot or exactly the kept ones (the link is
// the commit point), each listed snapshot restores bit-exact, and the next
// forget completes and leaves nothing behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr int kSnapshots = 5;
constexpr uint64_t kVolumeBytes = 512 * 1024;

class ForgetCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = dir_ / "base";
    fs::create_directories(base_);
    ASSERT_EQ(In(base_, {"init", base_ + "/repo", "--encryption", "none"}).exit_code, kExitOk);
    std::string source = base_ + "/source.img";
    WritePatternFile(source, kVolumeBytes, 11);
    for (int i = 0; i < kSnapshots; ++i) {
      OverwriteRange(source, uint64_t(i) * 65536, 4096, 100 + i);
      Result r = In(base_, {"backup", "--repo", base_ + "/repo", "--volume", "v", source, "-q"});
      ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
      std::string id = r.out.substr(0, r.out.find('\n'));
      ids_.push_back(id);
      sums_[id] = Sha256File(source);
    }
  }

  // The CLI with this tree's anchor state.
  Result In(const std::string& root, std::vector<std::string> args, Env extra = {}) {
    extra.push_back({"DP420_STATE_DIR", root + "/state"});
    return Cli(args, extra);
  }

  std::vector<std::string> Listed(const std::string& root) {
    Result r = In(root, {"snapshots", "--repo", root + "/repo", "--json"});
    EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
    std::vector<std::string> ids;
    for (const auto& s : Json::parse(r.out)) ids.push_back(s["snapshot_id"].get<std::string>());
    return ids;
  }

  // Verify --read-data clean and (with `restore`) every listed snapshot
  // bit-exact; "" when so.
  std::string Check(const std::string& root, bool restore = true) {
    Result v = In(root, {"verify", "--repo", root + "/repo", "--read-data"});
    if (v.exit_code != kExitOk) return "verify: " + v.Describe();
    if (!restore) return "";
    for (const auto& id : Listed(root)) {
      std::string target = root + "/restored-" + id;
      Result r = In(root, {"restore", "--repo", root + "/repo", "--volume", "v", "--snapshot", id,
                           target, "-q"});
      if (r.exit_code != kExitOk) return "restore " + id + ": " + r.Describe();
      if (Sha256File(target) != sums_[id]) return "restore " + id + ": different bytes";
      fs::remove(target);
    }
    return "";
  }

  TempDir dir_;
  std::string base_;
  std::vector<std::string> ids_;  // oldest first
  std::map<std::string, std::string> sums_;
};

TEST_F(ForgetCliTest, PrintsEveryDecisionAndExitsByWhatHappened) {
  std::string repo = base_ + "/repo";
  Result dry = In(base_, {"forget", "--repo", repo, "--keep-last", "2", "--dry-run"});
  ASSERT_EQ(dry.exit_code, kExitOk) << dry.Describe();
  EXPECT_NE(dry.out.find("would forget " + ids_[0]), std::string::npos) << dry.out;
  EXPECT_NE(dry.out.find("keep         " + ids_[4]), std::string::npos) << dry.out;
  EXPECT_EQ(Listed(base_).size(), size_t(kSnapshots));

  Result protect = In(base_, {"protect", "--repo", repo, "--volume", "v", "--snapshot",
                              ids_[1].substr(0, 6), "--json"});
  ASSERT_EQ(protect.exit_code, kExitOk) << protect.Describe();
  EXPECT_EQ(Json::parse(protect.out)["snapshot_id"], ids_[1]);

  Result json = In(base_, {"forget", "--repo", repo, "--keep-last", "2", "--json"});
  ASSERT_EQ(json.exit_code, kExitOk) << json.Describe();
  Json j = Json::parse(json.out);
  EXPECT_EQ(j["forgotten"], 2);
  EXPECT_EQ(j["kept"], 3);
  EXPECT_EQ(j["dry_run"], false);
  ASSERT_EQ(j["snapshots"].size(), size_t(kSnapshots));
  std::map<std::string, Json> by_id;
  for (const auto& s : j["snapshots"]) by_id[s["snapshot_id"]] = s;
  EXPECT_EQ(by_id[ids_[1]]["reasons"], Json::array({"protected"}));
  EXPECT_EQ(by_id[ids_[1]]["protected"], true);
  EXPECT_EQ(by_id[ids_[4]]["reasons"], Json::array({"last"}));
  EXPECT_EQ(by_id[ids_[0]]["keep"], false);
  EXPECT_EQ(Listed(base_), (std::vector<std::string>{ids_[1], ids_[3], ids_[4]}));
  EXPECT_EQ(Check(base_), "");

  // Exit codes: no rule (usage), the newest or a protected one (refused),
  // an unknown id (not found), --snapshot without --volume (usage).
  EXPECT_EQ(In(base_, {"forget", "--repo", repo}).exit_code, kExitUsage);
  EXPECT_EQ(In(base_, {"forget", "--repo", repo, "--volume", "v", "--snapshot", ids_[4]}).exit_code,
            kExitRefused);
  Result refused = In(base_, {"forget", "--repo", repo, "--volume", "v", "--snapshot", ids_[1],
                              "--json"});
  EXPECT_EQ(refused.exit_code, kExitRefused);
  EXPECT_NE(Json::parse(refused.out)["error"]["message"].get<std::string>().find("protected"),
            std::string::npos) << refused.out;
  EXPECT_EQ(In(base_, {"forget", "--repo", repo, "--volume", "v", "--snapshot", "ffffffffffffffff"})
                .exit_code,
            kExitNotFound);
  EXPECT_EQ(In(base_, {"forget", "--repo", repo, "--snapshot", ids_[3]}).exit_code, kExitUsage);
  EXPECT_EQ(In(base_, {"forget", "--repo", repo, "--keep-within", "3 days"}).exit_code, kExitUsage);
  ASSERT_EQ(In(base_, {"unprotect", "--repo", repo, "--volume", "v", "--snapshot", ids_[1]})
                .exit_code,
            kExitOk);
  Result named = In(base_, {"forget", "--repo", repo, "--volume", "v", "--snapshot", ids_[1]});
  EXPECT_EQ(named.exit_code, kExitOk) << named.Describe();
  EXPECT_EQ(Listed(base_), (std::vector<std::string>{ids_[3], ids_[4]}));
  EXPECT_EQ(Check(base_), "");
}

// `backup --time`: each snapshot carries the time it was given; --keep-daily keeps the
// newest of each day; a time the chain cannot take (before the newest, in the future,
// not a time, a remote repository) is refused with exit 2, nothing committed.
TEST_F(ForgetCliTest, BackupTimeDatesSnapshotsAndKeepDailyKeepsTheNewestOfEachDay) {
  std::string repo = base_ + "/repo";
  std::string source = base_ + "/w.img";
  WritePatternFile(source, 128 * 1024, 5);
  struct Night {
    const char* given;
    const char* created;  // as `snapshots --json` shows it
  };
  const std::vector<Night> nights = {
      {"2026-11-01T01:00:00Z", "2026-11-01T01:00:00.000000Z"},
      {"2026-11-01T23:30:00+01:00", "2026-11-01T22:30:00.000000Z"},  // the same UTC day
      {"2026-11-02T01:00:00Z", "2026-11-02T01:00:00.000000Z"},
      {"2026-11-03 01:00:00.5Z", "2026-11-03T01:00:00.500000Z"}};
  std::vector<std::string> ids;
  for (size_t i = 0; i < nights.size(); ++i) {
    OverwriteRange(source, i * 4096, 4096, 50 + i);
    Result r = In(base_, {"backup", "--repo", repo, "--volume", "w", source, "--time",
                          nights[i].given, "--json"});
    ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
    ids.push_back(Json::parse(r.out)["snapshot_id"].get<std::string>());
  }
  Result listed = In(base_, {"snapshots", "--repo", repo, "--volume", "w", "--json"});
  ASSERT_EQ(listed.exit_code, kExitOk) << listed.Describe();
  std::map<std::string, std::string> created;
  for (const auto& s : Json::parse(listed.out)) created[s["snapshot_id"]] = s["created"];
  for (size_t i = 0; i < nights.size(); ++i) EXPECT_EQ(created[ids[i]], nights[i].created);

  auto refused = [&](const std::vector<std::string>& extra, const std::string& named) {
    std::vector<std::string> args = {"backup", "--volume", "w", source, "--time"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = In(base_, args);
    EXPECT_EQ(r.exit_code, kExitUsage) << r.Describe();
    EXPECT_NE(r.err.find(named), std::string::npos) << r.Describe();
  };
  refused({"2026-11-02T12:00:00Z", "--repo", repo}, "before");
  refused({"2999-01-01T00:00:00Z", "--repo", repo}, "future");
  refused({"yesterday", "--repo", repo}, "'yesterday'");
  refused({"2026-11-31T00:00:00Z", "--repo", repo}, "'2026-11-31T00:00:00Z'");
  refused({"2026-11-04T00:00:00Z", "--remote", "127.0.0.1:9", "--client", "c", "--key-file",
           base_ + "/no-such-key"},
          "local repository only");
  Result after = In(base_, {"snapshots", "--repo", repo, "--volume", "w", "--json"});
  EXPECT_EQ(Json::parse(after.out).size(), nights.size()) << "nothing committed";

  // Days are calendar days of the local time zone: UTC here, as the times above.
  Result kept = In(base_, {"forget", "--repo", repo, "--volume", "w", "--keep-daily", "2",
                           "--json"},
                   {{"TZ", "UTC"}});
  ASSERT_EQ(kept.exit_code, kExitOk) << kept.Describe();
  Json forgot = Json::parse(kept.out);
  std::map<std::string, Json> by_id;
  for (const auto& s : forgot["snapshots"]) by_id[s["snapshot_id"]] = s;
  EXPECT_EQ(by_id[ids[3]]["reasons"], Json::array({"daily"}));
  EXPECT_EQ(by_id[ids[2]]["reasons"], Json::array({"daily"}));
  EXPECT_EQ(by_id[ids[1]]["keep"], false) << "the newest of 1 November, but only 2 days kept";
  EXPECT_EQ(by_id[ids[0]]["keep"], false);
  Result left = In(base_, {"snapshots", "--repo", repo, "--volume", "w", "--json"});
  std::vector<std::string> left_ids;
  for (const auto& s : Json::parse(left.out)) left_ids.push_back(s["snapshot_id"]);
  EXPECT_EQ(left_ids, (std::vector<std::string>{ids[2], ids[3]}));
  EXPECT_EQ(In(base_, {"verify", "--repo", repo, "--read-data"}).exit_code, kExitOk);
}

TEST_F(ForgetCliTest, KillAtEveryIoOfAForgetLeavesAHistoryThatVerifies) {
  const std::vector<std::string> forget{"forget", "--keep-last", "2", "-q"};
  auto args_for = [&](const std::string& root) {
    std::vector<std::string> a = forget;
    a.insert(a.begin() + 1, {"--repo", root + "/repo"});
    return a;
  };
  std::string counted = dir_ / "counted";
  fs::copy(base_, counted, fs::copy_options::recursive);
  Result clean = In(counted, args_for(counted), {{"DP420_IO_COUNT_FILE", counted + ".count"}});
  ASSERT_EQ(clean.exit_code, kExitOk) << clean.Describe();
  uint64_t count = std::stoull(ReadFile(counted + ".count"));
  ASSERT_GT(count, 5u);
  const std::vector<std::string> all = ids_;
  const std::vector<std::string> kept{ids_[3], ids_[4]};
  for (uint64_t n = 1; n <= count; ++n) {
    SCOPED_TRACE("DP420_CRASH_AT_IO=" + std::to_string(n));
    std::string root = dir_ / ("trial-" + std::to_string(n));
    fs::copy(base_, root, fs::copy_options::recursive);
    Result killed = In(root, args_for(root), {{"DP420_CRASH_AT_IO", std::to_string(n)}});
    EXPECT_EQ(killed.term_signal, SIGKILL) << killed.Describe();
    std::vector<std::string> listed = Listed(root);
    EXPECT_TRUE(listed == all || listed == kept) << "listed " << listed.size();
    EXPECT_EQ(Check(root, false), "");
    Result again = In(root, args_for(root));
    EXPECT_EQ(again.exit_code, kExitOk) << again.Describe();
    EXPECT_EQ(Listed(root), kept);
    for (const auto& name : fs::directory_iterator(root + "/repo/snapshots/v")) {
      std::string file = name.path().filename().string();
      bool expected = file == "HEAD" || file.find(ids_[3]) != std::string::npos ||
                      file.find(ids_[4]) != std::string::npos;
      EXPECT_TRUE(expected) << "left behind: " << file;
    }
    EXPECT_EQ(Check(root), "");
    fs::remove_all(root);
  }
}

}  // namespace
}  // namespace dp420::e2e
