#include "engine/control/liveness.h"

namespace dp420::control {

Liveness::Liveness(const Clock& clock, int64_t beat_ns, int64_t loss_ns, unsigned jitter_percent,
                   uint64_t jitter_seed)
    : clock_(clock),
      beat_ns_(beat_ns),
      loss_ns_(loss_ns),
      jitter_percent_(jitter_percent > 50 ? 50 : jitter_percent),
      jitter_state_(jitter_seed) {
  Restart();
}

void Liveness::Heard() { last_heard_ = clock_.MonotonicNs(); }

void Liveness::Sent() {
  last_sent_ = clock_.MonotonicNs();
  DrawNextBeat();
}

void Liveness::Restart() {
  last_heard_ = clock_.MonotonicNs();
  Sent();
}

bool Liveness::BeatDue() const { return clock_.MonotonicNs() - last_sent_ >= next_beat_ns_; }

bool Liveness::Lost() const { return SilentNs() > loss_ns_; }

int64_t Liveness::SilentNs() const { return clock_.MonotonicNs() - last_heard_; }

// beat_ns ± jitter_percent, from a SplitMix64 stream.
void Liveness::DrawNextBeat() {
  next_beat_ns_ = beat_ns_;
  if (jitter_percent_ == 0) return;
  uint64_t z = (jitter_state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const int64_t span = 2 * int64_t(jitter_percent_) + 1;  // -p .. +p percent
  const int64_t percent = 100 - int64_t(jitter_percent_) + int64_t(z % uint64_t(span));
  next_beat_ns_ = beat_ns_ / 100 * percent;
}

}  // namespace dp420::control
