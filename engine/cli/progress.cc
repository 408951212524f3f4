#include "engine/cli/progress.h"

#include <cstdio>

namespace dp420cli {

const char* HumanBytes(uint64_t bytes, char* buf, int len) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  if (u == 0) {
    std::snprintf(buf, len, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, len, "%.1f %s", v, units[u]);
  }
  return buf;
}

void ProgressBar::Update(const char* phase, uint64_t done, uint64_t total) {
  if (!enabled_) return;
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? double(done) / secs : 0;
  double frac = total ? double(done) / double(total) : 1.0;
  if (frac > 1) frac = 1;
  int width = 24;
  int filled = int(frac * width);
  char bar[32];
  for (int i = 0; i < width; ++i) bar[i] = i < filled ? '#' : '.';
  bar[width] = '\0';
  char d[32], t[32], r[32];
  long eta = rate > 0 ? long(double(total - (done < total ? done : total)) / rate) : -1;
  char eta_buf[32] = "--:--";
  if (eta >= 0) std::snprintf(eta_buf, sizeof(eta_buf), "%ld:%02ld", eta / 60, eta % 60);
  std::fprintf(stderr, "\r%-8s [%s] %5.1f%%  %s / %s  %s/s  ETA %s   ", phase, bar, frac * 100,
               HumanBytes(done, d, sizeof(d)), HumanBytes(total, t, sizeof(t)),
               HumanBytes(uint64_t(rate), r, sizeof(r)), eta_buf);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r%100s\r", "");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace dp420cli
