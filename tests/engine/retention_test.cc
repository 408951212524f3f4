// Retention policy tables: every rule, the union of rules, protected
// snapshots, ties, ISO weeks across a year end, calendar days across both
// daylight-saving changes, and --keep-within counted in calendar units.
#include "engine/core/retention.h"

#include <gtest/gtest.h>
#include <time.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace dp420 {
namespace {

constexpr int64_t kNs = 1'000'000'000;

// Runs each test in a known time zone and puts TZ back afterwards.
class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* tz = std::getenv("TZ")) saved_tz_ = tz, had_tz_ = true;
    UseZone("UTC");
  }
  void TearDown() override {
    if (had_tz_) setenv("TZ", saved_tz_.c_str(), 1); else unsetenv("TZ");
    tzset();
  }
  static void UseZone(const char* zone) {
    setenv("TZ", zone, 1);
    tzset();
  }
  // "2026-03-29 01:30" in UTC, as Unix ns.
  static int64_t Utc(const char* text) {
    struct tm t {};
    EXPECT_NE(strptime(text, "%Y-%m-%d %H:%M", &t), nullptr) << text;
    return int64_t{timegm(&t)} * kNs;
  }
  // Ids s0, s1, ... in the order given.
  static std::vector<RetentionCandidate> Snaps(const std::vector<const char*>& utc_times) {
    std::vector<RetentionCandidate> out;
    for (size_t i = 0; i < utc_times.size(); ++i) {
      RetentionCandidate c;
      c.snapshot_id = "s";
      c.snapshot_id += std::to_string(i);
      c.time_unix_ns = Utc(utc_times[i]);
      out.push_back(std::move(c));
    }
    return out;
  }
  // id -> reasons joined with '+', "" when forgotten.
  static std::map<std::string, std::string> Kept(const RetentionPolicy& p,
                                                 std::vector<RetentionCandidate> snaps) {
    std::map<std::string, std::string> out;
    for (const RetentionDecision& d : ApplyRetention(p, std::move(snaps))) {
      std::string reasons;
      for (const auto& r : d.reasons) {
        if (!reasons.empty()) reasons += '+';
        reasons += r;
      }
      EXPECT_EQ(d.keep, !reasons.empty()) << d.snapshot_id;
      out[d.snapshot_id] = reasons;
    }
    return out;
  }
  std::string saved_tz_;
  bool had_tz_ = false;
};

TEST_F(RetentionTest, NoRuleIsEmptyAndCountsBelowMinusOneAreRefused) {
  EXPECT_TRUE(RetentionPolicy{}.Empty());
  EXPECT_FALSE(RetentionPolicy{.last = 1}.Empty());
  EXPECT_FALSE(RetentionPolicy{.within = {.hours = 1}}.Empty());
  EXPECT_TRUE(RetentionPolicy{.daily = -1}.Validate().ok());
  Status bad = RetentionPolicy{.weekly = -2}.Validate();
  EXPECT_EQ(bad.code(), Code::kInvalidArgument);
  EXPECT_NE(bad.message().find("keep-weekly"), std::string::npos) << bad.message();
  // An empty policy keeps nothing but what is protected.
  auto snaps = Snaps({"2026-01-01 00:00", "2026-01-02 00:00"});
  snaps[0].is_protected = true;
  auto kept = Kept(RetentionPolicy{}, snaps);
  EXPECT_EQ(kept["s0"], "protected");
  EXPECT_EQ(kept["s1"], "");
}

TEST_F(RetentionTest, LastKeepsTheNewestNWhateverTheListOrder) {
  auto snaps = Snaps({"2026-01-03 00:00", "2026-01-01 00:00", "2026-01-05 00:00",
                      "2026-01-02 00:00", "2026-01-04 00:00"});
  auto kept = Kept(RetentionPolicy{.last = 3}, snaps);
  EXPECT_EQ(kept, (std::map<std::string, std::string>{
                      {"s0", "last"}, {"s1", ""}, {"s2", "last"}, {"s3", ""}, {"s4", "last"}}));
  auto decisions = ApplyRetention(RetentionPolicy{.last = 3}, snaps);
  ASSERT_EQ(decisions.size(), 5u);
  EXPECT_EQ(decisions.front().snapshot_id, "s2") << "newest first";
  EXPECT_EQ(decisions.back().snapshot_id, "s1");
}

TEST_F(RetentionTest, DailyKeepsTheNewestOfEachDayUpToItsCount) {
  auto snaps = Snaps({"2026-05-01 08:00", "2026-05-01 20:00", "2026-05-02 09:00",
                      "2026-05-04 23:59", "2026-05-04 00:00", "2026-05-05 12:00"});
  auto kept = Kept(RetentionPolicy{.daily = 3}, snaps);
  // Days with a snapshot, newest first: 05-05, 05-04, 05-02 (05-03 has none).
  EXPECT_EQ(kept["s5"], "daily");
  EXPECT_EQ(kept["s3"], "daily");
  EXPECT_EQ(kept["s4"], "") << "an older one of a day already kept";
  EXPECT_EQ(kept["s2"], "daily");
  EXPECT_EQ(kept["s1"], "") << "the count is spent";
  EXPECT_EQ(kept["s0"], "");
  auto all = Kept(RetentionPolicy{.daily = -1}, snaps);
  EXPECT_EQ(all["s1"], "daily") << "-1: every day";
  EXPECT_EQ(all["s0"], "");
}

TEST_F(RetentionTest, RulesUniteAndNameEveryReason) {
  auto snaps = Snaps({"2025-12-31 10:00", "2026-01-15 10:00", "2026-02-10 10:00",
                      "2026-02-11 10:00", "2026-02-11 11:00"});
  RetentionPolicy p{.last = 1, .hourly = 2, .daily = 2, .monthly = 2, .yearly = 2};
  auto kept = Kept(p, snaps);
  EXPECT_EQ(kept["s4"], "last+hourly+daily+monthly+yearly");
  EXPECT_EQ(kept["s3"], "hourly");
  EXPECT_EQ(kept["s2"], "daily");
  EXPECT_EQ(kept["s1"], "monthly");
  EXPECT_EQ(kept["s0"], "yearly");
}

TEST_F(RetentionTest, WeeksAreIsoWeeksAcrossTheYearEnd) {
  // 2026-12-28 is a Monday; 2026-12-28 .. 2027-01-03 is ISO week 2026-W53.
  auto snaps = Snaps({"2026-12-27 12:00", "2026-12-28 12:00", "2027-01-01 12:00",
                      "2027-01-04 12:00"});
  auto kept = Kept(RetentionPolicy{.weekly = 3}, snaps);
  EXPECT_EQ(kept["s3"], "weekly");  // 2027-W01
  EXPECT_EQ(kept["s2"], "weekly");  // 2026-W53, its newest
  EXPECT_EQ(kept["s1"], "");        // 2026-W53 again
  EXPECT_EQ(kept["s0"], "weekly");  // 2026-W52 (a Sunday)
  // Years, though, are calendar years.
  auto yearly = Kept(RetentionPolicy{.yearly = 5}, snaps);
  EXPECT_EQ(yearly["s3"], "yearly");
  EXPECT_EQ(yearly["s2"], "");
  EXPECT_EQ(yearly["s1"], "yearly");
}

TEST_F(RetentionTest, DaysAreLocalCalendarDaysAcrossDaylightSavingChanges) {
  UseZone("Europe/Berlin");
  // Spring: 2026-03-29 02:00 CET becomes 03:00 CEST. 22:30 UTC on the 28th is
  // 23:30 local on the 28th; 22:30 UTC on the 29th is 00:30 local on the 30th.
  auto spring = Snaps({"2026-03-28 22:30", "2026-03-28 23:30", "2026-03-29 21:59",
                       "2026-03-29 22:30"});
  auto kept = Kept(RetentionPolicy{.daily = 10}, spring);
  EXPECT_EQ(kept["s0"], "daily");  // 03-28 23:30 local
  EXPECT_EQ(kept["s1"], "");       // 03-29 00:30 local, older than s2
  EXPECT_EQ(kept["s2"], "daily");  // 03-29 23:59 local (CEST)
  EXPECT_EQ(kept["s3"], "daily");  // 03-30 00:30 local
  // Autumn: 2026-10-25 03:00 CEST becomes 02:00 CET; 02:30 happens twice
  // (00:30 and 01:30 UTC). One calendar day, one local hour.
  auto autumn = Snaps({"2026-10-25 00:30", "2026-10-25 01:30", "2026-10-25 22:59",
                       "2026-10-25 23:00"});
  auto days = Kept(RetentionPolicy{.daily = 10}, autumn);
  EXPECT_EQ(days["s3"], "daily");  // 10-26 00:00 local
  EXPECT_EQ(days["s2"], "daily");  // 10-25 23:59 local
  EXPECT_EQ(days["s1"], "");
  EXPECT_EQ(days["s0"], "");
  auto hours = Kept(RetentionPolicy{.hourly = 10}, autumn);
  EXPECT_EQ(hours["s1"], "hourly");  // the second 02:30
  EXPECT_EQ(hours["s0"], "") << "the first 02:30 falls in the same local hour";
}

TEST_F(RetentionTest, WithinCountsCalendarUnitsBackFromTheNewest) {
  auto snaps = Snaps({"2026-03-02 23:59", "2026-03-03 00:00", "2026-03-31 00:00"});
  // A month back from 31 March is "31 February", i.e. 3 March.
  auto kept = Kept(RetentionPolicy{.within = {.months = 1}}, snaps);
  EXPECT_EQ(kept["s2"], "within");
  EXPECT_EQ(kept["s1"], "within");
  EXPECT_EQ(kept["s0"], "");
  auto hours = Kept(RetentionPolicy{.within = {.hours = 12}},
                    Snaps({"2026-01-01 11:59", "2026-01-01 12:00", "2026-01-02 00:00"}));
  EXPECT_EQ(hours["s0"], "");
  EXPECT_EQ(hours["s1"], "within");
}

TEST_F(RetentionTest, ProtectedIsAlwaysKeptAndTiesAreOrderedById) {
  auto snaps = Snaps({"2026-06-01 00:00", "2026-06-02 00:00", "2026-06-02 00:00"});
  snaps[0].is_protected = true;
  auto kept = Kept(RetentionPolicy{.daily = 1}, snaps);
  EXPECT_EQ(kept["s0"], "protected");
  // s1 and s2 share a time: the larger id counts as the newer, in any order.
  EXPECT_EQ(kept["s2"], "daily");
  EXPECT_EQ(kept["s1"], "");
  std::swap(snaps[1], snaps[2]);
  auto again = Kept(RetentionPolicy{.daily = 1}, snaps);
  EXPECT_EQ(again, kept);
}

TEST_F(RetentionTest, SpansParseAndBadOnesAreNamed) {
  auto span = ParseRetentionSpan("1y6m2w3d36h");
  ASSERT_TRUE(span.ok()) << span.status().ToString();
  EXPECT_EQ(span->years, 1);
  EXPECT_EQ(span->months, 6);
  EXPECT_EQ(span->days, 17);
  EXPECT_EQ(span->hours, 36);
  EXPECT_EQ(span->ToString(), "1y6m17d36h");
  for (const char* bad : {"", "7", "d", "7x", "-1d", "1.5d", "99999999d"}) {
    auto r = ParseRetentionSpan(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    std::string quoted = "'";
    quoted += bad;
    quoted += "'";
    EXPECT_NE(r.status().message().find(quoted), std::string::npos)
        << r.status().message();
  }
}

}  // namespace
}  // namespace dp420
