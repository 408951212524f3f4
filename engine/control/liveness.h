// Liveness of one connection: when the next heartbeat is due and when the
// peer counts as lost. One rule for every place that keeps a connection
// alive (the agent's control loop, the server's long requests and its wait
// for a backup's last pages), on the monotonic clock of an injectable Clock.
//
//   - a beat is due once `beat_ns` passed since the last one sent, give or
//     take up to `jitter_percent` (drawn anew after each beat: peers started
//     together drift apart instead of beating in step);
//   - the peer is lost once nothing was heard from it for `loss_ns`.
//
// Thread safety: none; one per connection, used by the thread that owns it.
#pragma once

#include <cstdint>

#include "engine/control/clock.h"

namespace dp420::control {

class Liveness {
 public:
  Liveness(const Clock& clock, int64_t beat_ns, int64_t loss_ns, unsigned jitter_percent = 0,
           uint64_t jitter_seed = 0);

  // Anything arrived from the peer.
  void Heard();
  // A beat (or anything that counts as one) went out.
  void Sent();
  // Both, now: a new connection.
  void Restart();

  bool BeatDue() const;
  bool Lost() const;
  int64_t SilentNs() const;  // since the peer was last heard
  int64_t loss_ns() const { return loss_ns_; }

 private:
  void DrawNextBeat();

  const Clock& clock_;
  int64_t beat_ns_, loss_ns_;
  unsigned jitter_percent_;
  uint64_t jitter_state_;
  int64_t last_heard_ = 0, last_sent_ = 0, next_beat_ns_ = 0;
};

}  // namespace dp420::control
