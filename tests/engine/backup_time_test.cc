// engine/core/snapshot.h: the time a user gives a backup (`dp420 backup --time`),
// parsed as RFC 3339 and checked against the volume's chain.
#include <gtest/gtest.h>

#include <string>

#include "engine/core/manifest.h"
#include "engine/core/snapshot.h"

namespace dp420 {
namespace {

constexpr uint64_t kSecond = 1000000000ull;
constexpr uint64_t kDec1At3 = 1796094000ull * kSecond;  // 2026-12-01T03:00:00Z

uint64_t Parsed(const std::string& text) {
  auto t = ParseRfc3339(text);
  EXPECT_TRUE(t.ok()) << text << ": " << t.status().ToString();
  return t.ok() ? *t : 0;
}

TEST(BackupTimeTest, ParsesUtcOffsetsFractionsAndASpace) {
  EXPECT_EQ(Parsed("2026-12-01T03:00:00Z"), kDec1At3);
  EXPECT_EQ(Parsed("2026-12-01t03:00:00z"), kDec1At3);
  EXPECT_EQ(Parsed("2026-12-01 03:00:00Z"), kDec1At3);
  EXPECT_EQ(Parsed("2026-12-01T04:30:00+01:30"), kDec1At3);
  EXPECT_EQ(Parsed("2026-11-30T22:00:00-05:00"), kDec1At3);
  EXPECT_EQ(Parsed("2026-12-01T03:00:00.25Z"), kDec1At3 + kSecond / 4);
  EXPECT_EQ(Parsed("2026-12-01T03:00:00.123456789123Z"), kDec1At3 + 123456789);
  EXPECT_EQ(Parsed("2024-02-29T12:00:00Z"), 1709208000ull * kSecond);
  EXPECT_EQ(Parsed("1970-01-01T00:00:00Z"), 0u);
  // What Rfc3339 writes reads back to the same time, to the microsecond it keeps.
  EXPECT_EQ(Parsed(Rfc3339(kDec1At3 + 123456000)), kDec1At3 + 123456000);
}

TEST(BackupTimeTest, RefusesWhatIsNotATimeNamingTheText) {
  for (const char* text :
       {"", "yesterday", "2026-12-01", "2026-12-01T03:00Z", "2026-12-01T03:00:00",
        "2026-12-01T03:00:00+0100", "2026-12-01T03:00:00+01", "2026-12-01T03:00:00.Z",
        "2026-12-01T03:00:00Z ", " 2026-12-01T03:00:00Z", "2026-12-01X03:00:00Z",
        "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-12-00T00:00:00Z",
        "2026-12-01T24:00:00Z", "2026-12-01T23:60:00Z", "2026-12-01T23:59:60Z",
        "2026-12-01T03:00:00+24:00", "2026-12-01T03:00:00+01:60", "1969-12-31T23:59:59Z",
        "1970-01-01T00:30:00+01:00", "+2026-12-01T03:00:00Z", "２０２６-12-01T03:00:00Z"}) {
    auto t = ParseRfc3339(text);
    ASSERT_FALSE(t.ok()) << "'" << text << "' was read as " << *t;
    EXPECT_EQ(t.status().code(), Code::kInvalidArgument) << text;
    EXPECT_NE(t.status().message().find(std::string("'") + text + "'"), std::string::npos)
        << t.status().message();
  }
}

TEST(BackupTimeTest, ChainTakesNoTimeInTheFutureOrBeforeItsNewest) {
  Manifest parent;
  parent.snapshot_id = "0123456789abcdef";
  parent.created_unix_ns = kDec1At3;
  parent.created = Rfc3339(kDec1At3);
  EXPECT_TRUE(CheckBackupTime(kDec1At3, &parent).ok()) << "the parent's own time";
  EXPECT_TRUE(CheckBackupTime(kDec1At3 + 1, &parent).ok());
  EXPECT_TRUE(CheckBackupTime(1, nullptr).ok()) << "a first snapshot may be of any past time";

  Status before = CheckBackupTime(kDec1At3 - 1, &parent);
  EXPECT_EQ(before.code(), Code::kInvalidArgument);
  EXPECT_NE(before.message().find(parent.snapshot_id), std::string::npos) << before.message();
  EXPECT_NE(before.message().find("before"), std::string::npos) << before.message();

  Status future = CheckBackupTime(NowUnixNs() + 3600 * kSecond, nullptr);
  EXPECT_EQ(future.code(), Code::kInvalidArgument);
  EXPECT_NE(future.message().find("future"), std::string::npos) << future.message();
}

}  // namespace
}  // namespace dp420
