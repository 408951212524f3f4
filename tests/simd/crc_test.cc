// Crc32c: the ISA-L convention it wraps, the standard CRC-32C check values,
// chaining, and every variant against the scalar oracle over every length
// 0..4096 and alignment 0..63.
//
// ISA-L's crc32_iscsi(buf, len, init) returns the raw reflected register: no
// initial or final inversion. So for "123456789":
//   crc32_iscsi(.., 0)          == 0x58E3FA20  (not a standard value)
//   crc32_iscsi(.., 0xFFFFFFFF) == 0x1CF96D7C  == ~0xE3069283
// The engine uses the standard CRC-32C (init 0xFFFFFFFF, xorout 0xFFFFFFFF,
// check value 0xE3069283), which Crc32c(0, ...) returns.
#include <isa-l.h>

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

constexpr char kCheckInput[] = "123456789";
const uint8_t* CheckBytes() { return reinterpret_cast<const uint8_t*>(kCheckInput); }

TEST(IsalCrcConvention, RawRegisterWithoutInversion) {
  uint8_t input[9];
  std::memcpy(input, kCheckInput, 9);
  EXPECT_EQ(crc32_iscsi(input, 9, 0), 0x58E3FA20u);
  EXPECT_EQ(crc32_iscsi(input, 9, 0xFFFFFFFFu), 0x1CF96D7Cu);
  EXPECT_EQ(~crc32_iscsi(input, 9, 0xFFFFFFFFu), 0xE3069283u);
  EXPECT_EQ(crc32_iscsi_base(input, 9, 0), 0x58E3FA20u);
  EXPECT_EQ(crc32_iscsi_base(input, 9, 0xFFFFFFFFu), 0x1CF96D7Cu);
}

class CrcTest : public testing::LevelTest {};

TEST_P(CrcTest, StandardCheckValue) { EXPECT_EQ(Crc32c(0, CheckBytes(), 9), 0xE3069283u); }

TEST_P(CrcTest, EmptyInputReturnsSeed) {
  EXPECT_EQ(Crc32c(0, nullptr, 0), 0u);
  EXPECT_EQ(Crc32c(0xDEADBEEFu, nullptr, 0), 0xDEADBEEFu);
}

// RFC 3720 appendix B.4 (the RFC prints the CRC bytes little-endian).
TEST_P(CrcTest, Rfc3720Vectors) {
  uint8_t buf[32];
  std::memset(buf, 0, sizeof(buf));
  EXPECT_EQ(Crc32c(0, buf, 32), 0x8A9136AAu);
  std::memset(buf, 0xFF, sizeof(buf));
  EXPECT_EQ(Crc32c(0, buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Crc32c(0, buf, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(Crc32c(0, buf, 32), 0x113FDB5Cu);
}

TEST_P(CrcTest, ChainsAcrossSplits) {
  std::vector<uint8_t> data(70000);
  testing::FillRandom(data.data(), data.size(), 21);
  const uint32_t whole = Crc32c(0, data.data(), data.size());
  for (size_t split : {0, 1, 3, 8, 63, 64, 65, 255, 4096, 65536, 69999, 70000}) {
    const uint32_t head = Crc32c(0, data.data(), split);
    EXPECT_EQ(Crc32c(head, data.data() + split, data.size() - split), whole) << split;
  }
  EXPECT_EQ(Crc32c(Crc32c(0, CheckBytes(), 4), CheckBytes() + 4, 5), 0xE3069283u);
}

INSTANTIATE_TEST_SUITE_P(Levels, CrcTest, ::testing::ValuesIn(testing::kAllLevels),
                         testing::LevelParamName);

class CrcVariantTest : public testing::LevelTest {};

TEST_P(CrcVariantTest, EveryLengthAndAlignmentMatchesScalar) {
  AlignedBuffer buf(kSweepMaxLen + kSweepAlignments);
  testing::FillRandom(buf.data(), kSweepMaxLen + kSweepAlignments, 22);
  for (size_t align = 0; align < kSweepAlignments; ++align) {
    const uint8_t* data = buf.data() + align;
    const uint32_t seed = static_cast<uint32_t>(align * 0x9E3779B9u);
    // The oracle for every prefix in one pass: scalar CRC of len + 1 bytes is
    // the scalar CRC of the next byte chained onto that of len bytes.
    uint32_t want = seed;
    for (size_t len = 0; len <= kSweepMaxLen; ++len) {
      ASSERT_EQ(Crc32c(seed, data, len), want) << "align " << align << " len " << len;
      if (len % 512 == 0) {
        ASSERT_EQ(internal::Crc32cScalar(seed, data, len), want) << len;
      }
      if (len < kSweepMaxLen) want = internal::Crc32cScalar(want, data + len, 1);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, CrcVariantTest, ::testing::ValuesIn(testing::kVectorLevels),
                         testing::LevelParamName);

}  // namespace
}  // namespace dp420::simd
