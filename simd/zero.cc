// IsZero and its variants: a portable loop (the oracle) and ISA-L's
// multibinary isal_zero_detect.
#include <isa-l.h>

#include <cstring>

#include "simd/check.h"
#include "simd/simd.h"
#include "simd/variants.h"

namespace dp420::simd {
namespace internal {

bool IsZeroScalar(const uint8_t* data, size_t len) {
  // OR 64-byte runs of words together and stop at the first nonzero run:
  // data blocks usually differ from zero in their first bytes.
  constexpr size_t kRunBytes = 64;
  size_t i = 0;
  while (len - i >= kRunBytes) {
    uint64_t acc = 0;
    for (size_t w = 0; w < kRunBytes; w += sizeof(uint64_t)) {
      uint64_t word;
      std::memcpy(&word, data + i + w, sizeof(word));
      acc |= word;
    }
    if (acc != 0) return false;
    i += kRunBytes;
  }
  uint8_t tail = 0;
  for (; i < len; ++i) tail |= data[i];
  return tail == 0;
}

bool IsZeroIsal(const uint8_t* data, size_t len) {
  if (len == 0) return true;
  // ISA-L takes a non-const pointer but only reads; 0 means all zero.
  return isal_zero_detect(const_cast<uint8_t*>(data), len) == 0;
}

}  // namespace internal

bool IsZero(const uint8_t* data, size_t len) {
  DP420_SIMD_CHECK(data != nullptr || len == 0);
  return internal::ActiveKernels().is_zero(data, len);
}

}  // namespace dp420::simd
