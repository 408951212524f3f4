// engine/codec/auto.h: ChooseAutoCodec over tables of rates (a pure function: no
// timing here), and what CalibrateCodecs reports (its fields, never its speed).
#include "engine/codec/auto.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "tests/codec/codec_test_util.h"

namespace dp420 {
namespace {

constexpr double kMB = 1e6;
constexpr double kGB = 1e9;
constexpr CodecSpec kNone = {Codec::kNone, 0};
constexpr CodecSpec kLz4 = {Codec::kLz4, 1};
constexpr CodecSpec kZstd1 = {Codec::kZstd, 1};
constexpr CodecSpec kZstd3 = {Codec::kZstd, 3};

// Per-core rates of a machine like the one the benchmarks ran on: hashing at 3 GB/s,
// lz4 600 MB/s, zstd:1 400 MB/s, zstd:3 250 MB/s.
CodecRates TypicalRates() {
  return CodecRates{3 * kGB, {{kLz4, 600 * kMB}, {kZstd1, 400 * kMB}, {kZstd3, 250 * kMB}}};
}

TEST(PipelineTest, WorkersAddTheirTimesPerByte) {
  EXPECT_DOUBLE_EQ(PipelineBytesPerS(2 * kGB, 2 * kGB, 1), 1 * kGB);
  EXPECT_DOUBLE_EQ(PipelineBytesPerS(2 * kGB, 2 * kGB, 4), 4 * kGB);
  EXPECT_DOUBLE_EQ(PipelineBytesPerS(3 * kGB, 0, 2), 6 * kGB);  // no compression
  EXPECT_DOUBLE_EQ(PipelineBytesPerS(1 * kGB, 1 * kGB / 3, 1), 250 * kMB);
}

TEST(ChooseAutoCodecTest, StrongestCodecThatKeepsUpWithTheDevice) {
  // With 2 workers the typical rates reach: zstd:3 2/(1/3G + 1/250M) = 461.5 MB/s,
  // zstd:1 705.9 MB/s, lz4 1000 MB/s; the device needs 1.25 x its rate.
  struct Row {
    double device_bytes_per_s;
    unsigned threads;
    CodecSpec expected;
  };
  const Row rows[] = {
      {100 * kMB, 2, kZstd3},  {369 * kMB, 2, kZstd3},  // 461.25 <= 461.5
      {370 * kMB, 2, kZstd1},  {564 * kMB, 2, kZstd1},  // 705 <= 705.9
      {565 * kMB, 2, kLz4},    {799 * kMB, 2, kLz4},    // 998.75 <= 1000
      {801 * kMB, 2, kNone},   {4 * kGB, 2, kNone},
      {350 * kMB, 1, kLz4},    {200 * kMB, 1, kZstd1},  {1 * kGB, 4, kZstd1},
      {500 * kMB, 1, kNone},
      {1 * kGB, 8, kZstd3},    {4 * kGB, 32, kZstd3},   {4 * kGB, 16, kZstd1},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(ChooseAutoCodec(row.device_bytes_per_s, row.threads, TypicalRates()), row.expected)
        << row.device_bytes_per_s / kMB << " MB/s, " << row.threads << " threads";
  }
}

TEST(ChooseAutoCodecTest, TheMarginIsInclusiveAndExact) {
  // One worker hashing at 2 GB/s and compressing at 2 GB/s reaches 1 GB/s.
  const CodecRates rates{2 * kGB, {{kZstd1, 2 * kGB}}};
  const double threshold = 1 * kGB / kAutoMargin;
  EXPECT_EQ(ChooseAutoCodec(threshold * (1 - 1e-9), 1, rates), kZstd1);
  EXPECT_EQ(ChooseAutoCodec(threshold * (1 + 1e-9), 1, rates), kNone);
}

TEST(ChooseAutoCodecTest, NoneWhenHashingAloneDoesNotKeepUp) {
  // Workers hash at 1.5 GB/s together: a 2 GB/s device is CPU-bound already, and any
  // compression would slow the backup further, however fast.
  const CodecRates rates{750 * kMB, {{kLz4, 100 * kGB}, {kZstd1, 50 * kGB}}};
  EXPECT_EQ(ChooseAutoCodec(2 * kGB, 2, rates), kNone);
  EXPECT_EQ(ChooseAutoCodec(500 * kMB, 2, rates), kZstd1);
}

TEST(ChooseAutoCodecTest, OrderOfTheTableDoesNotMatter) {
  const CodecRates forward{4 * kGB, {{kLz4, 900 * kMB}, {kZstd1, 500 * kMB}, {kZstd3, 300 * kMB},
                                     {{Codec::kZstd, 9}, 40 * kMB}}};
  CodecRates backward = forward;
  std::reverse(backward.codecs.begin(), backward.codecs.end());
  for (double device : {10 * kMB, 100 * kMB, 300 * kMB, 600 * kMB, 2 * kGB}) {
    EXPECT_EQ(ChooseAutoCodec(device, 2, forward), ChooseAutoCodec(device, 2, backward)) << device;
  }
  EXPECT_EQ(ChooseAutoCodec(10 * kMB, 2, forward), (CodecSpec{Codec::kZstd, 9}));
}

TEST(ChooseAutoCodecTest, StrengthRanksLevelsAndAccelerations) {
  // Every codec keeps up: the strongest wins.
  CodecRates rates{100 * kGB, {{{Codec::kLz4, 8}, 100 * kGB}, {kLz4, 100 * kGB}}};
  EXPECT_EQ(ChooseAutoCodec(1 * kMB, 1, rates), kLz4);
  rates.codecs.push_back({{Codec::kZstd, 2}, 100 * kGB});
  rates.codecs.push_back({kZstd1, 100 * kGB});
  EXPECT_EQ(ChooseAutoCodec(1 * kMB, 1, rates), (CodecSpec{Codec::kZstd, 2}));
}

TEST(ChooseAutoCodecTest, UnmeasuredAndNoneEntriesAreNeverChosen) {
  const CodecRates rates{4 * kGB, {{kZstd3, 0}, {kNone, 100 * kGB}, {kLz4, 1 * kGB}}};
  EXPECT_EQ(ChooseAutoCodec(100 * kMB, 2, rates), kLz4);
  EXPECT_EQ(ChooseAutoCodec(100 * kMB, 2, CodecRates{4 * kGB, {}}), kNone);
}

// ---- CalibrateCodecs: what it reports, not how fast anything is ----

std::vector<uint8_t> Sample(testing::Content content, size_t blocks, size_t block_bytes) {
  std::vector<uint8_t> sample;
  for (size_t i = 0; i < blocks; ++i) {
    const std::vector<uint8_t> block = testing::MakeBlock(content, block_bytes, i + 1);
    sample.insert(sample.end(), block.begin(), block.end());
  }
  return sample;
}

TEST(CalibrateCodecsTest, ReportsEveryCandidateOnCompressibleData) {
  const std::vector<uint8_t> sample = Sample(testing::Content::kText, 8, 64 * 1024);
  Result<CodecRates> rates = CalibrateCodecs(sample, 64 * 1024, 3 * kGB);
  ASSERT_TRUE(rates.ok()) << rates.status().ToString();
  EXPECT_EQ(rates->hash_bytes_per_s, 3 * kGB);
  ASSERT_EQ(rates->codecs.size(), std::size(kAutoCandidates));
  for (size_t i = 0; i < rates->codecs.size(); ++i) {
    const CodecRate& rate = rates->codecs[i];
    EXPECT_EQ(rate.spec, kAutoCandidates[i]);
    EXPECT_GT(rate.compress_bytes_per_s, 0) << CodecName(rate.spec);
    EXPECT_GT(rate.decompress_bytes_per_s, 0) << CodecName(rate.spec);
    EXPECT_LT(rate.stored_fraction, 0.75) << CodecName(rate.spec);  // text: under half, in slots
    EXPECT_GT(rate.stored_fraction, 0) << CodecName(rate.spec);
  }
}

TEST(CalibrateCodecsTest, RandomDataSavesNothingAndDecompressesNothing) {
  // 3 blocks and a short last one; a zero budget still measures one block of each.
  const std::vector<uint8_t> sample = testing::RandomBytes(3 * 65536 + 5000, 3);
  CalibrationOptions options;
  options.budget = std::chrono::microseconds(0);
  Result<CodecRates> rates = CalibrateCodecs(sample, 64 * 1024, 1 * kGB, options);
  ASSERT_TRUE(rates.ok());
  ASSERT_EQ(rates->codecs.size(), 3u);
  for (const CodecRate& rate : rates->codecs) {
    EXPECT_GT(rate.compress_bytes_per_s, 0) << CodecName(rate.spec);
    EXPECT_EQ(rate.decompress_bytes_per_s, 0) << CodecName(rate.spec);
    EXPECT_EQ(rate.stored_fraction, 1.0) << CodecName(rate.spec);
  }
}

TEST(CalibrateCodecsTest, TakesTheCandidatesItIsGiven) {
  const std::vector<uint8_t> sample = Sample(testing::Content::kZeroButOneByte, 2, 16 * 1024);
  const CodecSpec candidates[] = {{Codec::kZstd, 9}, kNone};
  CalibrationOptions options;
  options.candidates = candidates;
  Result<CodecRates> rates = CalibrateCodecs(sample, 16 * 1024, 1 * kGB, options);
  ASSERT_TRUE(rates.ok());
  ASSERT_EQ(rates->codecs.size(), 2u);
  EXPECT_EQ(rates->codecs[0].spec, (CodecSpec{Codec::kZstd, 9}));
  EXPECT_DOUBLE_EQ(rates->codecs[0].stored_fraction, 0.25);  // 16 KiB -> one 4 KiB slot
  EXPECT_EQ(rates->codecs[1].spec, kNone);
  EXPECT_EQ(rates->codecs[1].stored_fraction, 1.0);
  // A bad candidate is the caller's error, reported.
  const CodecSpec bad[] = {{Codec::kZstd, 42}};
  options.candidates = bad;
  EXPECT_EQ(CalibrateCodecs(sample, 16 * 1024, 1 * kGB, options).status().code(),
            Code::kInvalidArgument);
}

// Block 5 of 8 pays, the rest are random: with time to spare, every block is measured
// once (7 blocks raw + one 4 KiB slot, over 8 blocks).
TEST(CalibrateCodecsTest, VisitsEveryBlockOnceWithTimeToSpare) {
  constexpr size_t kBlock = 64 * 1024;
  for (size_t blocks : {1u, 2u, 3u, 8u, 13u}) {
    std::vector<uint8_t> sample = testing::RandomBytes(blocks * kBlock, blocks);
    const size_t paying = blocks / 2;
    std::fill(sample.begin() + paying * kBlock, sample.begin() + (paying + 1) * kBlock, 0);
    CalibrationOptions options;
    options.budget = std::chrono::seconds(60);
    Result<CodecRates> rates = CalibrateCodecs(sample, kBlock, 1 * kGB, options);
    ASSERT_TRUE(rates.ok());
    for (const CodecRate& rate : rates->codecs) {
      EXPECT_DOUBLE_EQ(rate.stored_fraction, ((blocks - 1) * 16.0 + 1) / (blocks * 16.0))
          << CodecName(rate.spec) << ", " << blocks << " blocks";
    }
  }
}

TEST(CalibrationSampleOffsetsTest, OneBlockInEachPart) {
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  struct Case {
    uint64_t volume_bytes;
    size_t block_bytes;
    unsigned count;
    size_t expected;
  };
  const Case cases[] = {
      {4 * kGiB, 65536, 16, 16},       {kGiB + 1, 65536, 3, 3},  {12345678901, 1 << 20, 16, 16},
      {uint64_t{1} << 40, 4096, 64, 64}, {100 * 1024, 65536, 16, 2}, {4096, 65536, 16, 1},
      {0, 65536, 16, 0},               {5 * 65536, 65536, 5, 5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.volume_bytes) + " bytes, " + std::to_string(c.count) +
                 " parts");
    const std::vector<uint64_t> offsets =
        CalibrationSampleOffsets(c.volume_bytes, c.block_bytes, c.count);
    ASSERT_EQ(offsets.size(), c.expected);
    const uint64_t blocks = (c.volume_bytes + c.block_bytes - 1) / c.block_bytes;
    size_t part = 0;
    for (size_t i = 0; i < offsets.size(); ++i, ++part) {
      EXPECT_EQ(offsets[i] % c.block_bytes, 0u);
      // In its own part, when every part has a block.
      const uint64_t block = offsets[i] / c.block_bytes;
      if (blocks >= c.count) {
        EXPECT_GE(block, blocks * part / c.count);
        EXPECT_LT(block, blocks * (part + 1) / c.count);
      }
      EXPECT_LT(block, blocks);
      if (i > 0) {
        EXPECT_GT(offsets[i], offsets[i - 1]);
      }
    }
    // A pure function of its arguments.
    EXPECT_EQ(offsets, CalibrationSampleOffsets(c.volume_bytes, c.block_bytes, c.count));
  }
  // Not at round places: on 4 GiB in 16 parts, most samples are off the parts' starts.
  int at_start = 0;
  for (uint64_t offset : CalibrationSampleOffsets(4 * kGiB, 65536, 16)) {
    at_start += offset % (kGiB / 4) == 0;
  }
  EXPECT_LE(at_start, 1);
}

}  // namespace
}  // namespace dp420
