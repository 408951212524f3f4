// Retention: which snapshots of one volume a keep policy keeps, and why.
//
// The rules are those operators know from restic's `forget`: every rule
// walks the snapshots from the newest and keeps the newest snapshot of each
// of its periods, up to its count; the union of what the rules keep is
// kept. Periods are calendar periods in the local time zone (TZ), so a day
// is a calendar day across a daylight-saving change and a week is an ISO
// 8601 week (Monday to Sunday, the week-numbering year at year ends):
//   last N      the N newest snapshots
//   hourly N    the newest of each of the last N hours that have one
//   daily N     ... of each of the last N calendar days that have one
//   weekly N    ... of each of the last N ISO weeks
//   monthly N   ... of each of the last N calendar months
//   yearly N    ... of each of the last N calendar years
//   within D    every snapshot taken within D before the newest one, D in
//               calendar units counted back from the newest snapshot's
//               local time (a month back from 31 March is 3 March, as
//               mktime normalizes 31 February)
// A count of -1 means no limit. A protected snapshot is always kept.
// Snapshots with the same time are ordered by id, so the result never
// depends on the order they were listed in.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/status.h"

namespace dp420 {

// A span of calendar time: "1y6m", "7d", "36h", "2w".
struct RetentionSpan {
  int years = 0;
  int months = 0;
  int days = 0;
  int hours = 0;
  bool Empty() const { return years == 0 && months == 0 && days == 0 && hours == 0; }
  std::string ToString() const;
};

struct RetentionPolicy {
  int last = 0;
  int hourly = 0;
  int daily = 0;
  int weekly = 0;
  int monthly = 0;
  int yearly = 0;
  RetentionSpan within;
  // No rule given: a policy that would forget every snapshot.
  bool Empty() const;
  // kInvalidArgument naming the rule when a count is below -1.
  Status Validate() const;
};

struct RetentionCandidate {
  std::string snapshot_id;
  int64_t time_unix_ns = 0;  // the snapshot's creation time
  bool is_protected = false;
};

struct RetentionDecision {
  std::string snapshot_id;
  int64_t time_unix_ns = 0;
  bool keep = false;
  // Why it is kept: "protected", "last", "hourly", "daily", "weekly",
  // "monthly", "yearly", "within"; empty when it is forgotten.
  std::vector<std::string> reasons;
};

// The decision for every candidate, newest first.
std::vector<RetentionDecision> ApplyRetention(const RetentionPolicy& policy,
                                              std::vector<RetentionCandidate> snapshots);

// A span as restic writes it: one or more NUMBER UNIT pairs, units y
// (years), m (months), w (weeks, 7 days), d (days), h (hours), e.g. "7d",
// "1y6m", "36h". kInvalidArgument naming the text and what is wrong.
Result<RetentionSpan> ParseRetentionSpan(const std::string& text);

}  // namespace dp420
