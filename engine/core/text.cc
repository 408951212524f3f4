#include "engine/core/text.h"

#include <algorithm>
#include <cstdint>

namespace dp420 {

namespace {

// The length of the well-formed UTF-8 sequence at s[i], or 0 when the bytes
// there are not one (RFC 3629, table 3-7 of the Unicode standard).
size_t SequenceLength(std::string_view s, size_t i) {
  auto at = [&](size_t k) -> int { return i + k < s.size() ? uint8_t(s[i + k]) : -1; };
  auto cont = [&](size_t k, int lo = 0x80, int hi = 0xbf) {
    int c = at(k);
    return c >= lo && c <= hi;
  };
  int c = at(0);
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c == 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  if (c == 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;  // no surrogates
  if (c >= 0xe1 && c <= 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool ValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n = SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string EscapeBytes(std::string_view raw) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size();) {
    size_t n = SequenceLength(raw, i);
    if (raw[i] == '\\') {
      out += "\\\\";
      ++i;
    } else if (n == 0) {
      uint8_t b = uint8_t(raw[i]);
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 15];
      ++i;
    } else {
      out.append(raw.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool UnescapeBytes(std::string_view escaped, std::string* raw) {
  std::string out;
  out.reserve(escaped.size());
  for (size_t i = 0; i < escaped.size(); ++i) {
    if (escaped[i] != '\\') {
      out += escaped[i];
      continue;
    }
    if (i + 1 < escaped.size() && escaped[i + 1] == '\\') {
      out += '\\';
      i += 1;
      continue;
    }
    if (i + 3 >= escaped.size() || escaped[i + 1] != 'x') return false;
    int hi = HexValue(escaped[i + 2]);
    int lo = HexValue(escaped[i + 3]);
    if (hi < 0 || lo < 0) return false;
    out += char(hi << 4 | lo);
    i += 3;
  }
  *raw = std::move(out);
  return true;
}

size_t JsonNestingDepth(std::string_view json) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

Status CheckTextField(std::string_view field, std::string_view value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return Status::InvalidArgument(std::string(field) + " is " + std::to_string(value.size()) +
                                   " bytes (at most " + std::to_string(max_bytes) + ")");
  }
  if (!ValidUtf8(value)) return Status::InvalidArgument(std::string(field) + " is not valid UTF-8");
  return Status::Ok();
}

}  // namespace dp420
