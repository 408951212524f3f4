// Two different blocks with the same keyed XXH3-128 under a secret one knows:
// the attack an agent could mount on the unchanged-block decision of any
// volume whose secret it holds (docs/SECURITY.md "Block ids").
//
// XXH3's long-input loop adds, per stripe s and lane i, the lane's data to
// acc[i ^ 1] and lo32(d ^ k) * hi32(d ^ k) to acc[i], with k the secret's u64
// at 8 * (s + i). Where lo32(d) == lo32(k) the product is 0 whatever hi32(d)
// holds, so moving a delta from hi32 of lane 0 in stripe 0 to hi32 of lane 0
// in stripe 1 (both in the first 1 KiB, before any scramble) leaves every
// accumulator, and so the hash, unchanged.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "simd/simd.h"

namespace dp420::testing {

inline void PutU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }  // little-endian host
inline uint64_t GetU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Fills `a` and `b` (each `len` bytes, len > 240) so that they differ but
// BlockHasher(secret).Hash(a) == BlockHasher(secret).Hash(b).
inline void BuildCollision(std::span<const uint8_t, simd::kHashSecretBytes> secret, size_t len,
                           uint64_t seed, std::vector<uint8_t>* a, std::vector<uint8_t>* b) {
  a->assign(len, 0);
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 0; i + 8 <= len; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    PutU64(a->data() + i, x);
  }
  const uint64_t k0 = GetU64(secret.data());      // stripe 0, lane 0
  const uint64_t k1 = GetU64(secret.data() + 8);  // stripe 1, lane 0
  const uint64_t h0 = 0x11111111, h1 = 0x22222222, delta = 0x01020304;
  PutU64(a->data() + 0, (h0 << 32) | (k0 & 0xffffffffULL));
  PutU64(a->data() + 64, (h1 << 32) | (k1 & 0xffffffffULL));
  *b = *a;
  PutU64(b->data() + 0, ((h0 + delta) << 32) | (k0 & 0xffffffffULL));
  PutU64(b->data() + 64, ((h1 - delta) << 32) | (k1 & 0xffffffffULL));
}

}  // namespace dp420::testing
