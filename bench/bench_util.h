// Helpers shared by the benchmark suites.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dp420::bench {

// Pseudo-random bytes (xorshift64*), cheap enough to fill GiB-sized arenas at
// start-up. `*state` (non-zero) carries the generator between calls; a tail
// shorter than 8 bytes is left as it was.
inline void FillPseudoRandom(uint64_t* state, uint8_t* data, size_t len) {
  uint64_t x = *state;
  for (size_t i = 0; i + 8 <= len; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    const uint64_t word = x * 0x2545F4914F6CDD1DULL;
    std::memcpy(data + i, &word, sizeof(word));
  }
  *state = x;
}

}  // namespace dp420::bench
