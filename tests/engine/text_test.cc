// engine/core/text.h: UTF-8 validation, the reversible path escape, the JSON
// nesting bound and field checks.
#include "engine/core/text.h"

#include <gtest/gtest.h>

#include <string>

namespace dp420 {
namespace {

TEST(TextTest, ValidUtf8FollowsRfc3629) {
  EXPECT_TRUE(ValidUtf8(""));
  EXPECT_TRUE(ValidUtf8("/dev/sda"));
  EXPECT_TRUE(ValidUtf8("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(ValidUtf8("\xff\xfe"));
  EXPECT_FALSE(ValidUtf8("\xc3"));                  // truncated
  EXPECT_FALSE(ValidUtf8("\xc0\xaf"));              // overlong '/'
  EXPECT_FALSE(ValidUtf8("\xe0\x80\xaf"));          // overlong
  EXPECT_FALSE(ValidUtf8("\xed\xa0\x80"));          // a surrogate
  EXPECT_FALSE(ValidUtf8("\xf4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(ValidUtf8("a\x80"));                 // a lone continuation byte
}

TEST(TextTest, EscapeBytesIsReversibleAndValidUtf8) {
  EXPECT_EQ(EscapeBytes("/data/vol.img"), "/data/vol.img");
  EXPECT_EQ(EscapeBytes("/d/\xc3\xa9"), "/d/\xc3\xa9");
  EXPECT_EQ(EscapeBytes("/d/\xff\xfe"), "/d/\\xff\\xfe");
  EXPECT_EQ(EscapeBytes("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeBytes("\xc3"), "\\xc3");
  std::string all;
  for (int b = 1; b < 256; ++b) all += char(b);
  all += "\\x41\xe2\x82";
  for (const std::string& raw : {all, std::string("\\\\xff"), std::string("\xed\xa0\x80")}) {
    std::string escaped = EscapeBytes(raw);
    EXPECT_TRUE(ValidUtf8(escaped));
    std::string back;
    ASSERT_TRUE(UnescapeBytes(escaped, &back));
    EXPECT_EQ(back, raw);
  }
  std::string out;
  EXPECT_FALSE(UnescapeBytes("a\\", &out));
  EXPECT_FALSE(UnescapeBytes("a\\x4", &out));
  EXPECT_FALSE(UnescapeBytes("a\\xg0", &out));
  EXPECT_FALSE(UnescapeBytes("a\\n", &out));
}

TEST(TextTest, JsonNestingDepthSkipsStrings) {
  EXPECT_EQ(JsonNestingDepth("1"), 0u);
  EXPECT_EQ(JsonNestingDepth("{}"), 1u);
  EXPECT_EQ(JsonNestingDepth("{\"a\":[1,{\"b\":[]}],\"c\":{}}"), 4u);
  EXPECT_EQ(JsonNestingDepth("{\"a\":\"[[[[\\\"{{{\"}"), 1u);
  EXPECT_EQ(JsonNestingDepth(std::string(1000, '[')), 1000u);
}

TEST(TextTest, CheckTextFieldNamesTheFieldOnly) {
  EXPECT_TRUE(CheckTextField("f", "ok", 2).ok());
  Status size = CheckTextField("tool_version", "abc", 2);
  EXPECT_EQ(size.code(), Code::kInvalidArgument);
  EXPECT_EQ(size.message(), "tool_version is 3 bytes (at most 2)");
  Status utf8 = CheckTextField("source_path", "/\xff", 100);
  EXPECT_EQ(utf8.code(), Code::kInvalidArgument);
  EXPECT_EQ(utf8.message(), "source_path is not valid UTF-8");
}

}  // namespace
}  // namespace dp420
