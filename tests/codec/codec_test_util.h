// Deterministic block contents for the codec tests: random, all-zero-but-one-byte,
// text (log lines) and real bytes (this test binary's own machine code).
#pragma once

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace dp420::testing {

enum class Content { kRandom, kZeroButOneByte, kText, kReal };

inline const char* ContentName(Content content) {
  switch (content) {
    case Content::kRandom: return "random";
    case Content::kZeroButOneByte: return "zero-but-one-byte";
    case Content::kText: return "text";
    case Content::kReal: return "real";
  }
  return "?";
}

inline std::vector<uint8_t> RandomBytes(size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(len);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// Log lines with varying numbers, as a service writes them.
inline std::vector<uint8_t> TextBytes(size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  static const char* const kServices[] = {"nginx", "postgres", "sshd", "kernel", "cron"};
  static const char* const kWords[] = {"GET", "POST", "request", "completed", "connection",
                                       "from", "user", "session", "opened", "checkpoint"};
  std::string text;
  while (text.size() < len) {
    char line[200];
    std::snprintf(line, sizeof(line),
                  "2024-05-%02u T%02u:%02u:%02u host-%u %s[%u]: %s %s id=%llu status=%u\n",
                  unsigned(rng() % 28 + 1), unsigned(rng() % 24), unsigned(rng() % 60),
                  unsigned(rng() % 60), unsigned(rng() % 8), kServices[rng() % 5],
                  unsigned(rng() % 30000), kWords[rng() % 10], kWords[rng() % 10],
                  static_cast<unsigned long long>(rng() % 1000000), unsigned(rng() % 600));
    text += line;
  }
  return std::vector<uint8_t>(text.begin(), text.begin() + static_cast<long>(len));
}

// This test binary's bytes (code, tables, strings), repeated when it is shorter.
inline std::vector<uint8_t> RealBytes(size_t len, size_t offset) {
  static const std::vector<uint8_t> exe = [] {
    std::vector<uint8_t> bytes;
    if (FILE* f = std::fopen("/proc/self/exe", "rb")) {
      uint8_t buf[1 << 16];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
      std::fclose(f);
    }
    return bytes;
  }();
  std::vector<uint8_t> out(len);
  if (exe.empty()) return TextBytes(len, offset);
  for (size_t i = 0; i < len; ++i) out[i] = exe[(offset + i) % exe.size()];
  return out;
}

inline std::vector<uint8_t> MakeBlock(Content content, size_t len, uint64_t seed = 1) {
  switch (content) {
    case Content::kRandom:
      return RandomBytes(len, seed);
    case Content::kZeroButOneByte: {
      std::vector<uint8_t> out(len, 0);
      out[(seed * 7919) % len] = 0x5a;
      return out;
    }
    case Content::kText:
      return TextBytes(len, seed);
    case Content::kReal:
      return RealBytes(len, seed * 4096);
  }
  return {};
}

}  // namespace dp420::testing
