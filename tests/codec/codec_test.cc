// engine/codec/codec.h: the --compression parser, round trips of every codec at every
// block size, the 4 KiB slot rule, and a decompressor that refuses whatever is not a
// record of exactly the block's raw length.
#include "engine/codec/codec.h"

#include <gtest/gtest.h>
#include <lz4.h>
#include <zstd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/codec/codec_test_util.h"

namespace dp420 {
namespace {

using testing::Content;
using testing::ContentName;
using testing::MakeBlock;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

// ---- ParseCodec, ParseCompressionOption, CodecName ----

TEST(ParseCodecTest, ReadsEveryForm) {
  const std::pair<const char*, CodecSpec> cases[] = {
      {"off", {Codec::kNone, 0}},     {"lz4", {Codec::kLz4, 1}},
      {"lz4:1", {Codec::kLz4, 1}},    {"lz4:8", {Codec::kLz4, 8}},
      {"lz4:64", {Codec::kLz4, 64}},  {"zstd", {Codec::kZstd, 3}},
      {"zstd:1", {Codec::kZstd, 1}},  {"zstd:19", {Codec::kZstd, 19}},
      {"zstd:07", {Codec::kZstd, 7}},
  };
  for (const auto& [text, spec] : cases) {
    Result<CodecSpec> parsed = ParseCodec(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, spec) << text;
  }
}

TEST(ParseCodecTest, RefusesWithTheReason) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "unknown compression '' (use off, lz4"},
      {"gzip", "unknown compression 'gzip'"},
      {"ZSTD", "unknown compression 'ZSTD'"},
      {"auto", "unknown compression 'auto'"},
      {" zstd", "unknown compression ' zstd'"},
      {"zstd:0", "compression 'zstd:0': zstd level 0 is out of range (1-19)"},
      {"zstd:20", "zstd level 20 is out of range (1-19)"},
      {"zstd:99999999999999999999", "is out of range (1-19)"},
      {"zstd:", "compression 'zstd:': the zstd level after ':' is missing (1-19)"},
      {"zstd:-1", "zstd level '-1' is not a decimal number (1-19)"},
      {"zstd:+3", "zstd level '+3' is not a decimal number"},
      {"zstd: 3", "zstd level ' 3' is not a decimal number"},
      {"zstd:3x", "zstd level '3x' is not a decimal number"},
      {"zstd:99x", "zstd level '99x' is not a decimal number"},
      {"zstd:3:4", "zstd level '3:4' is not a decimal number"},
      {"lz4:0", "compression 'lz4:0': lz4 acceleration 0 is out of range (1-64)"},
      {"lz4:65", "lz4 acceleration 65 is out of range (1-64)"},
      {"off:1", "compression 'off:1': off takes no level"},
      {"off:", "off takes no level"},
  };
  for (const auto& [text, message] : cases) {
    Result<CodecSpec> parsed = ParseCodec(text);
    ASSERT_FALSE(parsed.ok()) << "'" << text << "' was accepted";
    EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument) << text;
    EXPECT_NE(parsed.status().message().find(message), std::string::npos)
        << "'" << text << "': " << parsed.status().message();
  }
}

TEST(ParseCodecTest, CodecNameReadsBack) {
  std::vector<CodecSpec> specs = {{Codec::kNone, 0}};
  for (int a = kLz4MinAcceleration; a <= kLz4MaxAcceleration; ++a) {
    specs.push_back({Codec::kLz4, a});
  }
  for (int l = kZstdMinLevel; l <= kZstdMaxLevel; ++l) specs.push_back({Codec::kZstd, l});
  for (const CodecSpec& spec : specs) {
    Result<CodecSpec> parsed = ParseCodec(CodecName(spec));
    ASSERT_TRUE(parsed.ok()) << CodecName(spec);
    EXPECT_EQ(*parsed, spec) << CodecName(spec);
  }
  EXPECT_EQ(CodecName({Codec::kLz4, 1}), "lz4");
  EXPECT_EQ(CodecName({Codec::kZstd, 3}), "zstd:3");
  EXPECT_EQ(CodecName({Codec::kNone, 0}), "off");
}

TEST(ParseCodecTest, CompressionOptionAddsAuto) {
  Result<CompressionOption> automatic = ParseCompressionOption("auto");
  ASSERT_TRUE(automatic.ok());
  EXPECT_TRUE(automatic->automatic);
  Result<CompressionOption> zstd = ParseCompressionOption("zstd:5");
  ASSERT_TRUE(zstd.ok());
  EXPECT_FALSE(zstd->automatic);
  EXPECT_EQ(zstd->spec, (CodecSpec{Codec::kZstd, 5}));
  Result<CompressionOption> off = ParseCompressionOption("off");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->spec.codec, Codec::kNone);
  Result<CompressionOption> bad = ParseCompressionOption("Auto");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown compression 'Auto' (use auto, off, lz4"),
            std::string::npos) << bad.status().message();
  Result<CompressionOption> level = ParseCompressionOption("zstd:22");
  ASSERT_FALSE(level.ok());
  EXPECT_NE(level.status().message().find("zstd level 22 is out of range"), std::string::npos);
}

TEST(BlockCompressorTest, CreateRefusesOutOfBoundsSpecs) {
  for (const CodecSpec& spec : {CodecSpec{Codec::kZstd, 0}, CodecSpec{Codec::kZstd, 20},
                                CodecSpec{Codec::kLz4, 0}, CodecSpec{Codec::kLz4, 65},
                                CodecSpec{Codec::kNone, 1}}) {
    Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
    ASSERT_FALSE(compressor.ok()) << CodecName(spec);
    EXPECT_EQ(compressor.status().code(), Code::kInvalidArgument);
  }
}

// ---- The slot rule ----

TEST(SlotRuleTest, PaysOnlyWhenASlotIsSaved) {
  struct Case {
    size_t raw, compressed;
    bool pays;
  };
  const Case cases[] = {
      {4096, 1, false},         {4096, 4095, false},      {4095, 1, false},
      {4097, 4096, true},       {4097, 4097, false},      {5000, 4096, true},
      {5000, 4097, false},      {8192, 1, true},          {8192, 4096, true},
      {8192, 4097, false},      {65536, 61440, true},     {65536, 61441, false},
      {65535, 61440, true},     {65535, 61441, false},    {4 * kMiB, 4 * kMiB - 4096, true},
      {4 * kMiB, 4 * kMiB - 4095, false},                 {65536, 0, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(CompressionPays(c.raw, c.compressed), c.pays) << c.raw << " -> " << c.compressed;
  }
  EXPECT_EQ(MaxPayingBytes(4096), 0u);
  EXPECT_EQ(MaxPayingBytes(100), 0u);
  EXPECT_EQ(MaxPayingBytes(4097), 4096u);
  EXPECT_EQ(MaxPayingBytes(65536), 61440u);
  EXPECT_EQ(SlotRoundUp(0), 0u);
  EXPECT_EQ(SlotRoundUp(1), 4096u);
  EXPECT_EQ(SlotRoundUp(8192), 8192u);
  EXPECT_EQ(SlotRoundUp(8193), 12288u);
  static_assert(kSlotBytes == kRecordAlign);
}

// What the codec makes of `raw` with room to spare (no slot rule): the reference.
size_t UnboundedCompressedBytes(const CodecSpec& spec, const std::vector<uint8_t>& raw) {
  if (spec.codec == Codec::kZstd) {
    std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
    const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), spec.level);
    EXPECT_FALSE(ZSTD_isError(n));
    return n;
  }
  std::vector<char> out(LZ4_compressBound(static_cast<int>(raw.size())));
  const int n = LZ4_compress_fast(reinterpret_cast<const char*>(raw.data()), out.data(),
                                  static_cast<int>(raw.size()), static_cast<int>(out.size()),
                                  spec.level);
  EXPECT_GT(n, 0);
  return static_cast<size_t>(n);
}

// 64 KiB blocks of `random_bytes` random bytes then zeros compress to about
// random_bytes: sweeping it across 61,440 puts blocks on both sides of the rule.
TEST(SlotRuleTest, CompressorStoresCompressedExactlyWhenItPays) {
  constexpr size_t kBlock = 64 * kKiB;
  for (const CodecSpec& spec : {CodecSpec{Codec::kLz4, 1}, CodecSpec{Codec::kZstd, 1},
                                CodecSpec{Codec::kZstd, 3}}) {
    Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
    ASSERT_TRUE(compressor.ok());
    int paid = 0, raw = 0;
    for (size_t random_bytes = 59 * kKiB; random_bytes <= 63 * kKiB; random_bytes += 64) {
      std::vector<uint8_t> block(kBlock, 0);
      const std::vector<uint8_t> noise = testing::RandomBytes(random_bytes, random_bytes);
      std::memcpy(block.data(), noise.data(), noise.size());
      std::vector<uint8_t> out(MaxPayingBytes(kBlock));
      Result<size_t> n = compressor->Compress(block, out);
      ASSERT_TRUE(n.ok());
      const size_t reference = UnboundedCompressedBytes(spec, block);
      if (reference <= MaxPayingBytes(kBlock)) {
        ++paid;
        EXPECT_EQ(*n, reference) << CodecName(spec) << " " << random_bytes;
      } else {
        ++raw;
        EXPECT_EQ(*n, kStoreRaw) << CodecName(spec) << " " << random_bytes << " -> " << reference;
      }
    }
    // Both sides of the boundary were met.
    EXPECT_GT(paid, 0) << CodecName(spec);
    EXPECT_GT(raw, 0) << CodecName(spec);
  }
}

// ---- Round trips ----

std::vector<CodecSpec> RoundTripSpecs(size_t block_bytes) {
  std::vector<CodecSpec> specs = {{Codec::kNone, 0}, {Codec::kLz4, 1},  {Codec::kLz4, 8},
                                  {Codec::kLz4, 64}, {Codec::kZstd, 1}, {Codec::kZstd, 3},
                                  {Codec::kZstd, 9}};
  // Level 19 compresses at a few MB/s: up to 256 KiB blocks.
  if (block_bytes <= 256 * kKiB) specs.push_back({Codec::kZstd, 19});
  return specs;
}

// Whether `content` must pay at this size with this codec: nothing of 4 KiB or less,
// nothing random; the rest from 64 KiB up, and zstd's text and zero blocks from 4 KiB
// up (LZ4 does not halve 8 KiB of text, which an 8 KiB block needs to save a slot);
// machine code but with LZ4's faster accelerations (lz4:64 hardly compresses it).
bool MustPay(Content content, size_t block_bytes, const CodecSpec& spec) {
  if (spec.codec == Codec::kNone || block_bytes <= 4 * kKiB) return false;
  switch (content) {
    case Content::kRandom: return false;
    case Content::kZeroButOneByte: return true;
    case Content::kText: return spec.codec == Codec::kZstd || block_bytes >= 64 * kKiB;
    case Content::kReal:
      return block_bytes >= 64 * kKiB && (spec.codec == Codec::kZstd || spec.level == 1);
  }
  return false;
}

void RoundTrip(Content content, size_t block_bytes, BlockDecompressor& decompressor) {
  const std::vector<uint8_t> raw = MakeBlock(content, block_bytes, block_bytes);
  std::vector<uint8_t> out(MaxPayingBytes(block_bytes));
  std::vector<uint8_t> back(block_bytes);
  for (const CodecSpec& spec : RoundTripSpecs(block_bytes)) {
    SCOPED_TRACE(CodecName(spec) + " " + ContentName(content) + " " +
                 std::to_string(block_bytes));
    Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
    ASSERT_TRUE(compressor.ok());
    Result<size_t> n = compressor->Compress(raw, out);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    if (content == Content::kRandom || spec.codec == Codec::kNone || block_bytes <= 4 * kKiB) {
      EXPECT_EQ(*n, kStoreRaw);
    }
    if (MustPay(content, block_bytes, spec)) {
      EXPECT_NE(*n, kStoreRaw);
    }
    if (*n == kStoreRaw) continue;
    EXPECT_TRUE(CompressionPays(block_bytes, *n));
    std::fill(back.begin(), back.end(), 0xEE);
    Status status = decompressor.Decompress(spec.codec, {out.data(), *n}, back);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_TRUE(back == raw);
  }
}

TEST(RoundTripTest, EveryCodecEveryBlockSizeEveryContent) {
  Result<BlockDecompressor> decompressor = BlockDecompressor::Create();
  ASSERT_TRUE(decompressor.ok());
  const size_t sizes[] = {4 * kKiB,  8 * kKiB,   16 * kKiB,  32 * kKiB, 64 * kKiB,
                          128 * kKiB, 256 * kKiB, 1 * kMiB,   4 * kMiB,
                          // Last blocks of volumes that are no multiple of the block size.
                          1,         4097,       5000,       65535};
  for (Content content : {Content::kRandom, Content::kZeroButOneByte, Content::kText,
                          Content::kReal}) {
    for (size_t size : sizes) RoundTrip(content, size, *decompressor);
  }
}

// One compressor and one decompressor, many blocks of changing content and size: the
// reused contexts carry nothing from one block to the next.
TEST(RoundTripTest, ContextsAreReusedAcrossBlocks) {
  Result<BlockDecompressor> decompressor = BlockDecompressor::Create();
  ASSERT_TRUE(decompressor.ok());
  for (const CodecSpec& spec : {CodecSpec{Codec::kLz4, 1}, CodecSpec{Codec::kZstd, 3}}) {
    Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
    ASSERT_TRUE(compressor.ok());
    int paid = 0;
    for (uint64_t i = 0; i < 64; ++i) {
      const size_t size = (i % 3 == 0) ? 64 * kKiB : (i % 3 == 1) ? 16 * kKiB : 1 * kMiB;
      const Content content = static_cast<Content>(i % 4);
      const std::vector<uint8_t> raw = MakeBlock(content, size, i + 1);
      std::vector<uint8_t> out(MaxPayingBytes(size));
      Result<size_t> n = compressor->Compress(raw, out);
      ASSERT_TRUE(n.ok());
      if (*n == kStoreRaw) continue;
      ++paid;
      std::vector<uint8_t> back(size);
      ASSERT_TRUE(decompressor->Decompress(spec.codec, {out.data(), *n}, back).ok());
      EXPECT_TRUE(back == raw) << CodecName(spec) << " block " << i;
    }
    EXPECT_GE(paid, 40) << CodecName(spec);
  }
}

// Moving a compressor keeps its context usable.
TEST(RoundTripTest, MovedCompressorStillWorks) {
  Result<BlockCompressor> made = BlockCompressor::Create({Codec::kZstd, 1});
  ASSERT_TRUE(made.ok());
  BlockCompressor compressor = std::move(made).value();
  BlockCompressor moved = std::move(compressor);
  const std::vector<uint8_t> raw = MakeBlock(Content::kText, 64 * kKiB);
  std::vector<uint8_t> out(MaxPayingBytes(raw.size()));
  Result<size_t> n = moved.Compress(raw, out);
  ASSERT_TRUE(n.ok());
  EXPECT_NE(*n, kStoreRaw);
}

}  // namespace
}  // namespace dp420
