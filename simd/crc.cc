// Crc32c and its variants, both from ISA-L: crc32_iscsi_base (table driven,
// the oracle) and the multibinary crc32_iscsi.
//
// Convention. ISA-L's crc32_iscsi(buf, len, init) runs the reflected
// Castagnoli register from `init` and returns it as is: no initial or final
// inversion. crc32_iscsi("123456789", 0xFFFFFFFF) == 0x1CF96D7C and with init 0
// it is 0x58E3FA20. The standard CRC-32C (init and xorout 0xFFFFFFFF) is the
// complement of the first, 0xE3069283. We return ~crc32_iscsi(buf, len, ~seed):
// seed 0 starts a standard CRC, and passing a previous result as `seed`
// continues it, because ~~register == register.
#include <isa-l.h>

#include <algorithm>
#include <climits>

#include "simd/check.h"
#include "simd/simd.h"
#include "simd/variants.h"

namespace dp420::simd {
namespace internal {
namespace {

using IsalCrc = unsigned int (*)(unsigned char* buffer, int len, unsigned int init);

// ISA-L's length is an int: feed longer spans in 1 GiB pieces.
constexpr size_t kMaxPieceBytes = size_t{1} << 30;
static_assert(kMaxPieceBytes <= INT_MAX);

uint32_t StandardCrc(IsalCrc crc, uint32_t seed, const uint8_t* data, size_t len) {
  uint32_t reg = ~seed;
  while (len > 0) {
    const size_t piece = std::min(len, kMaxPieceBytes);
    // ISA-L takes a non-const pointer but only reads.
    reg = crc(const_cast<uint8_t*>(data), static_cast<int>(piece), reg);
    data += piece;
    len -= piece;
  }
  return ~reg;
}

}  // namespace

uint32_t Crc32cScalar(uint32_t seed, const uint8_t* data, size_t len) {
  return StandardCrc(crc32_iscsi_base, seed, data, len);
}

uint32_t Crc32cIsal(uint32_t seed, const uint8_t* data, size_t len) {
  return StandardCrc(crc32_iscsi, seed, data, len);
}

}  // namespace internal

uint32_t Crc32c(uint32_t seed, const uint8_t* data, size_t len) {
  DP420_SIMD_CHECK(data != nullptr || len == 0);
  return internal::ActiveKernels().crc32c(seed, data, len);
}

}  // namespace dp420::simd
