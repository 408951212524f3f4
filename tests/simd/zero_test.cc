// IsZero: every level over every length 0..4096 and alignment 0..63, a single
// nonzero byte at each position, and no reads outside [data, data + len).
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd/simd.h"
#include "simd/variants.h"
#include "tests/simd/test_util.h"

namespace dp420::simd {
namespace {

using testing::AlignedBuffer;
using testing::kSweepAlignments;
using testing::kSweepMaxLen;

constexpr size_t kBufBytes = kSweepMaxLen + kSweepAlignments + 64;

class ZeroTest : public testing::LevelTest {};

TEST_P(ZeroTest, EmptyIsZero) {
  EXPECT_TRUE(IsZero(nullptr, 0));
  const uint8_t one = 1;
  EXPECT_TRUE(IsZero(&one, 0));
}

// A zero window inside 0xFF guard bytes: true, whatever its length and
// alignment; then a nonzero first or last byte: false.
TEST_P(ZeroTest, EveryLengthAndAlignment) {
  AlignedBuffer buf(kBufBytes);
  for (size_t align = 0; align < kSweepAlignments; ++align) {
    std::memset(buf.data(), 0xFF, kBufBytes);
    uint8_t* data = buf.data() + align;
    std::memset(data, 0, kSweepMaxLen);
    for (size_t len = 0; len <= kSweepMaxLen; ++len) {
      // The byte after the window is a guard; the window's bytes are zero.
      data[len] = 0xFF;
      ASSERT_TRUE(IsZero(data, len)) << "align " << align << " len " << len;
      if (len > 0) {
        data[len - 1] = 0x80;
        ASSERT_FALSE(IsZero(data, len)) << "last byte, align " << align << " len " << len;
        data[len - 1] = 0;
        data[0] = 0x01;
        ASSERT_FALSE(IsZero(data, len)) << "first byte, align " << align << " len " << len;
        data[0] = 0;
      }
      data[len] = 0;
    }
  }
}

TEST_P(ZeroTest, SingleNonzeroByteAtEachPosition) {
  AlignedBuffer buf(kBufBytes);
  std::memset(buf.data(), 0, kBufBytes);
  for (size_t align = 0; align < kSweepAlignments; ++align) {
    uint8_t* data = buf.data() + align;
    for (size_t pos = 0; pos < kSweepMaxLen; ++pos) {
      // Walk the set bit too, so no lane or bit position is missed.
      data[pos] = static_cast<uint8_t>(1u << (pos % 8));
      ASSERT_FALSE(IsZero(data, kSweepMaxLen)) << "align " << align << " pos " << pos;
      data[pos] = 0;
    }
    ASSERT_TRUE(IsZero(data, kSweepMaxLen));
  }
}

TEST_P(ZeroTest, LargeBlocks) {
  std::vector<uint8_t> block(4 << 20, 0);
  EXPECT_TRUE(IsZero(block.data(), block.size()));
  block.back() = 1;
  EXPECT_FALSE(IsZero(block.data(), block.size()));
}

TEST_P(ZeroTest, MatchesScalarOnSparseRandomData) {
  std::vector<uint8_t> data(kSweepMaxLen);
  std::mt19937_64 rng(11);
  for (int round = 0; round < 2000; ++round) {
    std::memset(data.data(), 0, data.size());
    if (rng() % 2 == 0) data[rng() % data.size()] = static_cast<uint8_t>(rng() | 1);
    const size_t offset = rng() % 64;
    const size_t len = rng() % (data.size() - offset + 1);
    ASSERT_EQ(IsZero(data.data() + offset, len), internal::IsZeroScalar(data.data() + offset, len));
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, ZeroTest, ::testing::ValuesIn(testing::kAllLevels),
                         testing::LevelParamName);

}  // namespace
}  // namespace dp420::simd
