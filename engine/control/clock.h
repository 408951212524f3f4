// Time as the control plane sees it: a monotonic clock for every timeout and
// deadline, and a wall clock only for what is reported (a snapshot's time, a
// peer's clock skew). Correctness never depends on the wall clock.
//
// Injectable: the control plane's state machines (engine/control/group.h)
// take a Clock, so that a deterministic simulation runs every node on the
// simulator's time, with its own offset and skew.
//
// Thread safety: SystemClock() is safe from any thread.
#pragma once

#include <cstdint>

namespace dp420::control {

class Clock {
 public:
  virtual ~Clock() = default;
  // CLOCK_MONOTONIC (or a simulated one): never goes back, no meaning across nodes.
  virtual int64_t MonotonicNs() const = 0;
  // CLOCK_REALTIME (or a simulated one): nanoseconds since the Unix epoch.
  virtual int64_t WallNs() const = 0;
};

// The machine's clocks.
const Clock& SystemClock();

}  // namespace dp420::control
