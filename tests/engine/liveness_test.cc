// Liveness (engine/control/liveness.h) on a clock the test moves: heartbeats
// due on time with their jitter, loss after the silence allowed, and a
// restart that starts both anew. Milliseconds, not the minutes a real
// connection's timeouts would take.
#include "engine/control/liveness.h"

#include <gtest/gtest.h>

#include <set>

namespace dp420::control {
namespace {

constexpr int64_t kMs = 1'000'000;

class ManualClock final : public Clock {
 public:
  int64_t MonotonicNs() const override { return now; }
  int64_t WallNs() const override { return now; }
  int64_t now = 1'000 * kMs;
};

TEST(LivenessTest, BeatIsDueAfterTheIntervalAndLossAfterTheSilence) {
  ManualClock clock;
  Liveness l(clock, 5000 * kMs, 15000 * kMs);
  EXPECT_FALSE(l.BeatDue());
  clock.now += 4999 * kMs;
  EXPECT_FALSE(l.BeatDue());
  clock.now += 1 * kMs;
  EXPECT_TRUE(l.BeatDue());
  l.Sent();
  EXPECT_FALSE(l.BeatDue());
  // Sending is not hearing: the peer is lost 15 s after it was last heard.
  clock.now += 10000 * kMs;
  EXPECT_FALSE(l.Lost());
  clock.now += 1 * kMs;
  EXPECT_TRUE(l.Lost());
  EXPECT_EQ(l.SilentNs(), 15001 * kMs);
  l.Heard();
  EXPECT_FALSE(l.Lost());
  clock.now += 20000 * kMs;
  l.Restart();
  EXPECT_FALSE(l.Lost());
  EXPECT_FALSE(l.BeatDue());
}

TEST(LivenessTest, JitterSpreadsBeatsWithinItsBound) {
  ManualClock clock;
  Liveness l(clock, 1000 * kMs, 10000 * kMs, 10, 42);
  std::set<int64_t> gaps;
  for (int i = 0; i < 200; ++i) {
    l.Sent();
    int64_t waited = 0;
    while (!l.BeatDue()) {
      clock.now += kMs;
      waited += kMs;
    }
    EXPECT_GE(waited, 900 * kMs);
    EXPECT_LE(waited, 1100 * kMs);
    gaps.insert(waited);
  }
  EXPECT_GT(gaps.size(), 10u) << "the beats do not spread";
  // Two peers with other seeds do not beat in step.
  Liveness a(clock, 1000 * kMs, 10000 * kMs, 10, 1), b(clock, 1000 * kMs, 10000 * kMs, 10, 2);
  int apart = 0;
  for (int i = 0; i < 50; ++i) {
    clock.now += 1000 * kMs;
    apart += a.BeatDue() != b.BeatDue();
    if (a.BeatDue()) a.Sent();
    if (b.BeatDue()) b.Sent();
  }
  EXPECT_GT(apart, 0);
}

}  // namespace
}  // namespace dp420::control
