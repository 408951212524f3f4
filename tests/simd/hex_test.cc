// ToHex / FromHex round trips and every rejection path.
#include <cstring>
#include <string>

#include "simd/simd.h"
#include "tests/simd/test_util.h"

namespace dp420::simd {
namespace {

TEST(HexTest, EncodesLowerCase) {
  const uint8_t bytes[] = {0x00, 0x01, 0xAB, 0xCD, 0xEF, 0xFF};
  EXPECT_EQ(ToHex(bytes, sizeof(bytes)), "0001abcdefff");
  EXPECT_EQ(ToHex(nullptr, 0), "");
}

TEST(HexTest, DecodesEitherCase) {
  uint8_t out[3] = {};
  ASSERT_TRUE(FromHex("0aFf7B", out, 3));
  EXPECT_EQ(out[0], 0x0A);
  EXPECT_EQ(out[1], 0xFF);
  EXPECT_EQ(out[2], 0x7B);
  EXPECT_TRUE(FromHex("", out, 0));
}

TEST(HexTest, RoundTripsEveryByte) {
  uint8_t bytes[256];
  for (int i = 0; i < 256; ++i) bytes[i] = static_cast<uint8_t>(i);
  uint8_t back[256] = {};
  ASSERT_TRUE(FromHex(ToHex(bytes, 256), back, 256));
  EXPECT_EQ(0, std::memcmp(bytes, back, 256));
}

TEST(HexTest, RejectsBadInputAndLeavesOutputUntouched) {
  uint8_t out[2] = {0x11, 0x22};
  EXPECT_FALSE(FromHex("abc", out, 2));     // odd length
  EXPECT_FALSE(FromHex("abcdef", out, 2));  // too long
  EXPECT_FALSE(FromHex("ab", out, 2));      // too short
  EXPECT_FALSE(FromHex("abcg", out, 2));    // bad digit last
  EXPECT_FALSE(FromHex(" bcd", out, 2));    // bad digit first
  EXPECT_FALSE(FromHex(std::string("ab\0d", 4), out, 2));
  EXPECT_EQ(out[0], 0x11);
  EXPECT_EQ(out[1], 0x22);
}

}  // namespace
}  // namespace dp420::simd
