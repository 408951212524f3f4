// The scalar XXH3-128 variant: xxHash compiled from its header with no SIMD,
// the oracle the other hash variants are tested against.
//
// XXH_INLINE_ALL makes every xxHash function `static` and renames it with an
// XXH_INLINE_ prefix, so nothing here clashes with libxxhash's exported
// symbols; this file exports only HashScalar. Thread safety: pure function.
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_SCALAR
#include <xxhash.h>

#include "simd/variants.h"

namespace dp420::simd::internal {

HashPair HashScalar(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len) {
  const XXH128_hash_t h = XXH3_128bits_withSecret(data, len, secret, secret_len);
  return HashPair{h.low64, h.high64};
}

}  // namespace dp420::simd::internal
