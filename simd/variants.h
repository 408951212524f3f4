// Internal to simd/: the per-ISA variants of each kernel and the dispatch
// table that selects them. Not installed; only simd/*.cc, tests/simd and
// bench/ include it.
//
// Each variant lives in its own file, compiled with only the ISA flags it
// needs (simd/CMakeLists.txt). That is why this header includes nothing but
// <cstddef>/<cstdint>: a file built with -mavx2 must not instantiate inline
// C++ library code, or the linker may keep its AVX2 copy for every caller.
//
// Thread safety: every variant is a pure function of its arguments.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dp420::simd::internal {

// XXH128_hash_t without the xxHash header.
struct HashPair {
  uint64_t lo;
  uint64_t hi;
};

// XXH3_128bits_withSecret(data, len, secret, secret_len); secret_len >= 136.
using HashFn = HashPair (*)(const uint8_t* data, size_t len, const uint8_t* secret,
                            size_t secret_len);
using IsZeroFn = bool (*)(const uint8_t* data, size_t len);
// Standard (RFC 3720) CRC-32C, chained through `seed` (see simd.h Crc32c).
using Crc32cFn = uint32_t (*)(uint32_t seed, const uint8_t* data, size_t len);

// hash_scalar.cc: XXH3 inlined with XXH_VECTOR=XXH_SCALAR. The oracle.
HashPair HashScalar(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len);
// hash.cc: libxxhash's exported XXH3_128bits_withSecret (baseline x86-64
// build, so its SSE2 path).
HashPair HashSse2(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len);
// hash_avx2.cc: XXH3 inlined with XXH_VECTOR=XXH_AVX2, built with -mavx2.
HashPair HashAvx2(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len);
// hash.cc: libxxhash's XXH3_128bits_withSecret_dispatch (its own CPUID; picks
// AVX-512 on CPUs that have it, which is the only place we call it).
HashPair HashAvx512(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len);

// zero.cc: a portable word loop. The oracle.
bool IsZeroScalar(const uint8_t* data, size_t len);
// zero.cc: ISA-L isal_zero_detect.
bool IsZeroIsal(const uint8_t* data, size_t len);

// crc.cc: ISA-L crc32_iscsi_base (table driven). The oracle.
uint32_t Crc32cScalar(uint32_t seed, const uint8_t* data, size_t len);
// crc.cc: ISA-L crc32_iscsi (multibinary).
uint32_t Crc32cIsal(uint32_t seed, const uint8_t* data, size_t len);

// One row of the dispatch table.
struct Kernels {
  HashFn hash;
  IsZeroFn is_zero;
  Crc32cFn crc32c;
};

// The row for ActiveLevel(). dispatch.cc.
const Kernels& ActiveKernels();

}  // namespace dp420::simd::internal
