// Hash128 storage form, BlockHasher, and the two hash variants that call
// libxxhash itself (its baseline build and its AVX-512 dispatcher).
#include <algorithm>

// Keep the plain and the _dispatch names apart: by default xxh_x86dispatch.h
// #defines XXH3_128bits_withSecret to the dispatcher.
#define XXH_DISPATCH_DISABLE_REPLACE
#include <openssl/crypto.h>
#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include "simd/check.h"
#include "simd/simd.h"
#include "simd/variants.h"

namespace dp420::simd {
namespace {

void StoreBigEndian64(uint64_t v, uint8_t out[8]) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

uint64_t LoadBigEndian64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | in[i];
  return v;
}

}  // namespace

// XXH128_canonicalFromHash: high64 big-endian, then low64 big-endian.
void Hash128::ToBytes(uint8_t out[16]) const {
  StoreBigEndian64(hi, out);
  StoreBigEndian64(lo, out + 8);
}

Hash128 Hash128::FromBytes(const uint8_t in[16]) {
  return Hash128{.lo = LoadBigEndian64(in + 8), .hi = LoadBigEndian64(in)};
}

BlockHasher::BlockHasher(std::span<const uint8_t, kHashSecretBytes> secret) {
  static_assert(kHashSecretBytes >= XXH3_SECRET_SIZE_MIN);
  std::copy(secret.begin(), secret.end(), secret_);
}

BlockHasher::~BlockHasher() { OPENSSL_cleanse(secret_, sizeof(secret_)); }

Hash128 BlockHasher::Hash(const uint8_t* data, size_t len) const {
  DP420_SIMD_CHECK(data != nullptr || len == 0);
  const internal::HashPair h = internal::ActiveKernels().hash(data, len, secret_, kHashSecretBytes);
  return Hash128{.lo = h.lo, .hi = h.hi};
}

namespace internal {

HashPair HashSse2(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len) {
  const XXH128_hash_t h = XXH3_128bits_withSecret(data, len, secret, secret_len);
  return HashPair{h.low64, h.high64};
}

HashPair HashAvx512(const uint8_t* data, size_t len, const uint8_t* secret, size_t secret_len) {
  const XXH128_hash_t h = XXH3_128bits_withSecret_dispatch(data, len, secret, secret_len);
  return HashPair{h.low64, h.high64};
}

}  // namespace internal
}  // namespace dp420::simd
