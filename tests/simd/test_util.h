// Helpers shared by the simd/ tests: a fixture that forces a dispatch level
// (and skips levels this CPU lacks), aligned buffers and seeded random bytes.
// Thread safety: none needed; gtest runs tests on one thread.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "simd/simd.h"

namespace dp420::simd::testing {

inline constexpr Level kAllLevels[] = {Level::kScalar, Level::kSse2, Level::kAvx2, Level::kAvx512};
// The levels that run a variant other than the scalar oracle.
inline constexpr Level kVectorLevels[] = {Level::kSse2, Level::kAvx2, Level::kAvx512};

inline std::string LevelParamName(const ::testing::TestParamInfo<Level>& info) {
  return LevelName(info.param);
}

// Runs each test with the kernels forced to GetParam(); skips the test when
// the CPU does not reach that level, and restores the level afterwards.
class LevelTest : public ::testing::TestWithParam<Level> {
 protected:
  void SetUp() override {
    if (GetParam() > DetectedLevel()) {
      GTEST_SKIP() << "CPU lacks " << LevelName(GetParam()) << " (detected "
                   << LevelName(DetectedLevel()) << ")";
    }
    previous_ = ForceLevel(GetParam());
    ASSERT_EQ(ActiveLevel(), GetParam());
  }
  void TearDown() override { ForceLevel(previous_); }

 private:
  Level previous_ = ActiveLevel();
};

// `size` bytes starting on a 64-byte boundary, so tests control alignment.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) : storage_(new uint8_t[size + 64]()) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.get());
    data_ = storage_.get() + ((64 - base % 64) % 64);
  }
  uint8_t* data() { return data_; }

 private:
  std::unique_ptr<uint8_t[]> storage_;
  uint8_t* data_;
};

inline void FillRandom(uint8_t* data, size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < len; ++i) data[i] = static_cast<uint8_t>(rng() >> 56);
}

inline std::array<uint8_t, kHashSecretBytes> RandomSecret(uint64_t seed) {
  std::array<uint8_t, kHashSecretBytes> secret;
  FillRandom(secret.data(), secret.size(), seed);
  return secret;
}

// The maximum length and alignment the exhaustive variant tests sweep.
inline constexpr size_t kSweepMaxLen = 4096;
inline constexpr size_t kSweepAlignments = 64;

}  // namespace dp420::simd::testing
