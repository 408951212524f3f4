#include "engine/core/retention.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdio>
#include <cstdlib>

namespace dp420 {
namespace {

constexpr int64_t kNsPerSecond = 1'000'000'000;

struct LocalTime {
  struct tm tm {};
  explicit LocalTime(int64_t unix_ns) {
    time_t t = static_cast<time_t>(unix_ns / kNsPerSecond - (unix_ns % kNsPerSecond < 0 ? 1 : 0));
    localtime_r(&t, &tm);
  }
};

// The period a snapshot falls in, per rule: equal keys, one period.
using PeriodKey = int64_t (*)(const struct tm&);

int64_t HourKey(const struct tm& t) {
  return ((int64_t{t.tm_year} * 400 + t.tm_yday) * 24 + t.tm_hour);
}
int64_t DayKey(const struct tm& t) { return int64_t{t.tm_year} * 400 + t.tm_yday; }
int64_t WeekKey(const struct tm& t) {
  // ISO 8601: the week-numbering year (%G) and week (%V).
  // At most 13 characters: the year's digits (perhaps after a sign), then two.
  char buf[16] = {};
  strftime(buf, sizeof(buf), "%G%V", &t);
  return std::atoll(buf);  // NOLINT(cert-err34-c): the digits of strftime above
}
int64_t MonthKey(const struct tm& t) { return int64_t{t.tm_year} * 12 + t.tm_mon; }
int64_t YearKey(const struct tm& t) { return t.tm_year; }

struct Rule {
  const char* name;
  int count;
  PeriodKey key;  // null: every snapshot is its own period ("last")
  int64_t last_key = INT64_MIN;
};

// The newest snapshot's local time minus `span`, in Unix ns.
int64_t CutoffNs(int64_t newest_ns, const RetentionSpan& span) {
  struct tm t = LocalTime(newest_ns).tm;
  t.tm_year -= span.years;
  t.tm_mon -= span.months;
  t.tm_mday -= span.days;
  t.tm_hour -= span.hours;
  t.tm_isdst = -1;
  time_t back = mktime(&t);
  int64_t sub_second = newest_ns % kNsPerSecond;
  if (sub_second < 0) sub_second += kNsPerSecond;
  return int64_t{back} * kNsPerSecond + sub_second;
}

}  // namespace

std::string RetentionSpan::ToString() const {
  std::string out;
  auto add = [&](int n, const char* unit) {
    if (n) out += std::to_string(n) + unit;
  };
  add(years, "y");
  add(months, "m");
  add(days, "d");
  add(hours, "h");
  return out.empty() ? "0h" : out;
}

bool RetentionPolicy::Empty() const {
  return last == 0 && hourly == 0 && daily == 0 && weekly == 0 && monthly == 0 &&
         yearly == 0 && within.Empty();
}

Status RetentionPolicy::Validate() const {
  const std::array<std::pair<const char*, int>, 6> counts{{{"keep-last", last},
                                                           {"keep-hourly", hourly},
                                                           {"keep-daily", daily},
                                                           {"keep-weekly", weekly},
                                                           {"keep-monthly", monthly},
                                                           {"keep-yearly", yearly}}};
  for (const auto& [name, n] : counts) {
    if (n < -1) {
      return Status::InvalidArgument(std::string("--") + name + " " + std::to_string(n) +
                                     ": a count is 0 or more, or -1 for no limit");
    }
  }
  if (within.years < 0 || within.months < 0 || within.days < 0 || within.hours < 0) {
    return Status::InvalidArgument("--keep-within: a span is not negative");
  }
  return Status::Ok();
}

std::vector<RetentionDecision> ApplyRetention(const RetentionPolicy& policy,
                                              std::vector<RetentionCandidate> snapshots) {
  std::sort(snapshots.begin(), snapshots.end(), [](const auto& a, const auto& b) {
    if (a.time_unix_ns != b.time_unix_ns) return a.time_unix_ns > b.time_unix_ns;
    return a.snapshot_id > b.snapshot_id;
  });
  std::array<Rule, 6> rules{{{"last", policy.last, nullptr},
                             {"hourly", policy.hourly, HourKey},
                             {"daily", policy.daily, DayKey},
                             {"weekly", policy.weekly, WeekKey},
                             {"monthly", policy.monthly, MonthKey},
                             {"yearly", policy.yearly, YearKey}}};
  const bool within = !policy.within.Empty() && !snapshots.empty();
  const int64_t cutoff = within ? CutoffNs(snapshots.front().time_unix_ns, policy.within) : 0;
  std::vector<RetentionDecision> out;
  out.reserve(snapshots.size());
  for (const RetentionCandidate& s : snapshots) {
    RetentionDecision d{s.snapshot_id, s.time_unix_ns, false, {}};
    if (s.is_protected) d.reasons.emplace_back("protected");
    const struct tm local = LocalTime(s.time_unix_ns).tm;
    for (Rule& r : rules) {
      if (r.count == 0) continue;
      int64_t key = r.key ? r.key(local) : int64_t(out.size());  // "last": one each
      if (key == r.last_key) continue;
      r.last_key = key;
      if (r.count > 0) --r.count;
      d.reasons.emplace_back(r.name);
    }
    if (within && s.time_unix_ns >= cutoff) d.reasons.emplace_back("within");
    d.keep = !d.reasons.empty();
    out.push_back(std::move(d));
  }
  return out;
}

Result<RetentionSpan> ParseRetentionSpan(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("span '" + text + "': " + why +
                                   " (e.g. 7d, 36h, 2w, 1y6m; units y m w d h)");
  };
  if (text.empty()) return bad("empty");
  RetentionSpan span;
  size_t i = 0;
  while (i < text.size()) {
    size_t digits = i;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
    if (digits == i) return bad("expected a number at '" + text.substr(i) + "'");
    if (digits - i > 6) return bad("number too large");
    int n = std::stoi(text.substr(i, digits - i));
    if (digits == text.size()) return bad("the number " + std::to_string(n) + " has no unit");
    switch (text[digits]) {
      case 'y': span.years += n; break;
      case 'm': span.months += n; break;
      case 'w': span.days += 7 * n; break;
      case 'd': span.days += n; break;
      case 'h': span.hours += n; break;
      default: return bad("unknown unit '" + text.substr(digits, 1) + "'");
    }
    i = digits + 1;
  }
  return span;
}

}  // namespace dp420
