// `--compression auto` during a backup: the ladder a backup steps down, the window
// rule of each worker (busy 90 % of the window's wall time and compressing 5 % of
// its busy time: step down; else not), and one step for two workers that saw the
// same window. Time is given to the watch, not slept.
#include <gtest/gtest.h>

#include <chrono>

#include "engine/core/auto_compression.h"

namespace dp420 {
namespace {

constexpr uint64_t kMs = 1000000;

std::vector<CodecSpec> FullLadder() {
  return {{Codec::kZstd, 3}, {Codec::kZstd, 1}, {Codec::kLz4, 1}, {}};
}

// A worker's clock and counters, advanced window by window.
struct Worker {
  explicit Worker(AutoLadder* ladder) : watch(ladder), now(AutoWatch::Clock::now()) {}
  size_t Start() { return watch.Check(now, busy, compress); }
  // One whole window passes: busy for `busy_share` of it, compressing for
  // `compress_share` of that.
  size_t Window(double busy_share, double compress_share) {
    const auto w = watch.window();
    now += w;
    const auto b = static_cast<uint64_t>(busy_share * static_cast<double>(w.count()));
    busy += b;
    compress += static_cast<uint64_t>(compress_share * static_cast<double>(b));
    return watch.Check(now, busy, compress);
  }
  AutoWatch watch;
  AutoWatch::Clock::time_point now;
  uint64_t busy = 0, compress = 0;
};

TEST(AutoWatchTest, ASaturatedCompressingWorkerStepsDownOneRungPerWindow) {
  AutoLadder ladder(FullLadder());
  Worker w(&ladder);
  EXPECT_EQ(w.Start(), 0u);  // the first window starts
  for (size_t rung = 1; rung <= 3; ++rung) EXPECT_EQ(w.Window(0.99, 0.5), rung);
  EXPECT_EQ(ladder.spec(3), CodecSpec{});
  EXPECT_EQ(w.Window(1.0, 0.5), 3u);  // off is the last rung
}

TEST(AutoWatchTest, AWorkerThatWaitsOrHardlyCompressesKeepsItsCodec) {
  AutoLadder ladder(FullLadder());
  Worker w(&ladder);
  w.Start();
  // Compressing all the time it works, but busy 10 % of the window: it waits for
  // something else (reads, or writes to a slow repository), which a weaker codec
  // would not make faster.
  EXPECT_EQ(w.Window(0.1, 1.0), 0u);
  EXPECT_EQ(w.Window(0.85, 1.0), 0u);
  // Always busy, but compressing under 5 % of it: hashing sets the pace.
  EXPECT_EQ(w.Window(1.0, 0.04), 0u);
  // Idle.
  EXPECT_EQ(w.Window(0.0, 0.0), 0u);
  // Within a window nothing is decided, however busy.
  w.busy += 1000 * kMs;
  w.compress += 1000 * kMs;
  EXPECT_EQ(w.watch.Check(w.now + w.watch.window() / 2, w.busy, w.compress), 0u);
}

TEST(AutoWatchTest, TwoWorkersThatSawTheSameWindowStepOnce) {
  AutoLadder ladder(FullLadder());
  Worker a(&ladder), b(&ladder);
  a.Start();
  b.Start();
  EXPECT_EQ(a.Window(1.0, 0.5), 1u);
  // b measured rung 0 too: it follows a's step, and starts a new window on rung 1.
  EXPECT_EQ(b.Window(1.0, 0.5), 1u);
  EXPECT_EQ(ladder.rung(), 1u);
  EXPECT_EQ(b.Window(1.0, 0.5), 2u);
}

}  // namespace
}  // namespace dp420
