#include "engine/control/clock.h"

#include <time.h>

namespace dp420::control {
namespace {

int64_t Now(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

class MachineClock final : public Clock {
 public:
  int64_t MonotonicNs() const override { return Now(CLOCK_MONOTONIC); }
  int64_t WallNs() const override { return Now(CLOCK_REALTIME); }
};

}  // namespace

const Clock& SystemClock() {
  static const MachineClock clock;
  return clock;
}

}  // namespace dp420::control
