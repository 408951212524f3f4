// A one-line progress bar for long operations (bytes, percent, rate, ETA),
// drawn on stderr only when stdout and stderr are terminals.
//
// Thread safety: called from the thread running the operation only.
#pragma once

#include <chrono>
#include <cstdint>

namespace dp420cli {

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void Update(const char* phase, uint64_t done, uint64_t total);
  // Clears the line, if one was drawn.
  void Finish();

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// "1.5 GiB", "512 KiB", "12 B".
const char* HumanBytes(uint64_t bytes, char* buf, int len);

}  // namespace dp420cli
