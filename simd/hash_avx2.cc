// The AVX2 XXH3-128 variant: xxHash compiled from its header with its AVX2
// accumulate/scramble loops. simd/CMakeLists.txt builds only this file with
// -mavx2; dispatch.cc calls it only when CPUID reports AVX2.
//
// XXH_INLINE_ALL makes every xxHash function `static` and renames it with an
// XXH_INLINE_ prefix: no clash with libxxhash. Include nothing that defines
// inline C++ functions here (see simd/variants.h). Thread safety: pure function.
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "simd/variants.h"

#ifndef __AVX2__
#error "hash_avx2.cc must be compiled with -mavx2"
#endif

namespace dp420::simd::internal {

HashPair HashAvx2(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len) {
  const XXH128_hash_t h = XXH3_128bits_withSecret(data, len, secret, secret_len);
  return HashPair{h.low64, h.high64};
}

}  // namespace dp420::simd::internal
