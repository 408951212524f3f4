// Hex encoding of digests and hashes for logs and manifests.
#include "simd/simd.h"

namespace dp420::simd {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

// The value of one hex digit, or -1.
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string ToHex(const uint8_t* data, size_t len) {
  std::string hex(2 * len, '\0');
  for (size_t i = 0; i < len; ++i) {
    hex[2 * i] = kHexDigits[data[i] >> 4];
    hex[2 * i + 1] = kHexDigits[data[i] & 0xF];
  }
  return hex;
}

bool FromHex(const std::string& hex, uint8_t* out, size_t len) {
  if (hex.size() != 2 * len) return false;
  // Validate everything first so that `out` is untouched on error.
  for (char c : hex) {
    if (HexValue(c) < 0) return false;
  }
  for (size_t i = 0; i < len; ++i) {
    out[i] = static_cast<uint8_t>(HexValue(hex[2 * i]) << 4 | HexValue(hex[2 * i + 1]));
  }
  return true;
}

}  // namespace dp420::simd
