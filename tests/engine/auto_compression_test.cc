// `--compression auto` during a backup: the ladder a backup steps down, the window
// rule of each worker (busy 95 % of its busy and read-wait time, compressing 5 % of
// its busy time: step down; else not), and one step for two workers that saw the
// same window.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <thread>

#include "engine/core/auto_compression.h"

namespace dp420 {
namespace {

constexpr uint64_t kMs = 1000000;

std::vector<CodecSpec> FullLadder() {
  return {{Codec::kZstd, 3}, {Codec::kZstd, 1}, {Codec::kLz4, 1}, {}};
}

class AutoWatchTest : public testing::Test {
 protected:
  void SetUp() override { setenv("DP420_TEST_AUTO_WINDOW_MS", "2", 1); }
  void TearDown() override { unsetenv("DP420_TEST_AUTO_WINDOW_MS"); }
  static void PassWindow() { std::this_thread::sleep_for(std::chrono::milliseconds(5)); }
};

TEST_F(AutoWatchTest, ASaturatedCompressingWorkerStepsDownOneRungPerWindow) {
  AutoLadder ladder(FullLadder());
  AutoWatch watch(&ladder);
  uint64_t busy = 0, waited = 0, compress = 0;
  EXPECT_EQ(watch.Check(busy, waited, compress), 0u);  // the first window starts
  for (size_t rung = 1; rung <= 3; ++rung) {
    PassWindow();
    // Busy 99 % of the time it worked or waited for reads, half of it compressing.
    busy += 99 * kMs;
    waited += 1 * kMs;
    compress += 50 * kMs;
    EXPECT_EQ(watch.Check(busy, waited, compress), rung);
  }
  EXPECT_EQ(ladder.spec(3), CodecSpec{});
  PassWindow();
  busy += 100 * kMs;
  compress += 50 * kMs;
  EXPECT_EQ(watch.Check(busy, waited, compress), 3u);  // off is the last rung
}

TEST_F(AutoWatchTest, AWorkerThatWaitsForReadsOrHardlyCompressesKeepsItsCodec) {
  AutoLadder ladder(FullLadder());
  AutoWatch watch(&ladder);
  uint64_t busy = 0, waited = 0, compress = 0;
  watch.Check(busy, waited, compress);
  PassWindow();
  // Compressing all the time it works, but waiting for reads a tenth of the time:
  // the device is the slower.
  busy += 90 * kMs;
  waited += 10 * kMs;
  compress += 90 * kMs;
  EXPECT_EQ(watch.Check(busy, waited, compress), 0u);
  PassWindow();
  // Never waiting for reads, but compressing under 5 % of its busy time: hashing
  // sets the pace, and a faster codec would not help.
  busy += 100 * kMs;
  compress += 4 * kMs;
  EXPECT_EQ(watch.Check(busy, waited, compress), 0u);
  PassWindow();
  // Idle (waiting for its writes or the committer, which count as neither).
  EXPECT_EQ(watch.Check(busy, waited, compress), 0u);
  // Within a window nothing is decided, however busy.
  EXPECT_EQ(watch.Check(busy + 1000 * kMs, waited, compress + 1000 * kMs), 0u);
}

TEST_F(AutoWatchTest, TwoWorkersThatSawTheSameWindowStepOnce) {
  AutoLadder ladder(FullLadder());
  AutoWatch a(&ladder);
  AutoWatch b(&ladder);
  a.Check(0, 0, 0);
  b.Check(0, 0, 0);
  PassWindow();
  EXPECT_EQ(a.Check(100 * kMs, 0, 50 * kMs), 1u);
  // b measured rung 0 too: it follows a's step, and starts a new window on rung 1.
  EXPECT_EQ(b.Check(100 * kMs, 0, 50 * kMs), 1u);
  EXPECT_EQ(ladder.rung(), 1u);
  PassWindow();
  EXPECT_EQ(b.Check(200 * kMs, 0, 100 * kMs), 2u);
}

}  // namespace
}  // namespace dp420
