// engine/codec/codec.h, BlockDecompressor: whatever a record holds, it fills a buffer of
// exactly the block's raw length or returns kCorruption naming what was wrong, and
// never writes outside that buffer. The output buffers of the refusals sit between two
// inaccessible pages, so that a write past either end faults even when it comes from
// libzstd or liblz4 (which ASan does not instrument).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <lz4.h>
#include <zstd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/codec/codec.h"
#include "tests/codec/codec_test_util.h"

namespace dp420 {
namespace {

using testing::Content;
using testing::MakeBlock;

constexpr size_t kBlock = 64 * 1024;

std::vector<uint8_t> CompressOrDie(const CodecSpec& spec, const std::vector<uint8_t>& raw) {
  Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
  EXPECT_TRUE(compressor.ok());
  std::vector<uint8_t> out(MaxPayingBytes(raw.size()));
  Result<size_t> n = compressor->Compress(raw, out);
  EXPECT_TRUE(n.ok());
  EXPECT_NE(*n, kStoreRaw) << CodecName(spec);
  out.resize(*n);
  return out;
}

// An LZ4 block of `raw` without the slot rule's limit.
std::vector<uint8_t> Lz4Block(const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> out(LZ4_compressBound(static_cast<int>(raw.size())));
  const int n = LZ4_compress_default(reinterpret_cast<const char*>(raw.data()),
                                     reinterpret_cast<char*>(out.data()),
                                     static_cast<int>(raw.size()), static_cast<int>(out.size()));
  EXPECT_GT(n, 0);
  out.resize(static_cast<size_t>(n));
  return out;
}

// `bytes` (a multiple of 4096) of read-write memory between two PROT_NONE pages.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t bytes) : bytes_(bytes) {
    void* map = mmap(nullptr, bytes + 2 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) std::abort();
    base_ = static_cast<uint8_t*>(map);
    if (mprotect(base_ + kPage, bytes, PROT_READ | PROT_WRITE) != 0) std::abort();
  }
  ~GuardedBuffer() { munmap(base_, bytes_ + 2 * kPage); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  std::span<uint8_t> span() { return {base_ + kPage, bytes_}; }

 private:
  static constexpr size_t kPage = 4096;
  size_t bytes_;
  uint8_t* base_;
};

// Writes one byte at `at` with a SIGSEGV handler of its own that exits 42, so
// the fault is seen as that exit code (and no sanitizer reports it as a bug).
[[noreturn]] void TouchExpectingAFault(volatile uint8_t* at) {
  struct sigaction action {};
  action.sa_handler = [](int) { _exit(42); };
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, nullptr);
  sigaction(SIGBUS, &action, nullptr);
  *at = 1;
  _exit(0);
}

TEST(GuardedBufferTest, TheGuardPagesFault) {
  GuardedBuffer buffer(4096);
  buffer.span()[0] = 1;
  buffer.span()[4095] = 1;
  EXPECT_EXIT(TouchExpectingAFault(buffer.span().data() + 4096), ::testing::ExitedWithCode(42), "");
  EXPECT_EXIT(TouchExpectingAFault(buffer.span().data() - 1), ::testing::ExitedWithCode(42), "");
}

class DecompressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<BlockDecompressor> made = BlockDecompressor::Create();
    ASSERT_TRUE(made.ok());
    decompressor_ = std::make_unique<BlockDecompressor>(std::move(made).value());
  }

  // Decompresses into a fresh guarded buffer of exactly `raw_bytes`.
  Status Decompress(Codec codec, const std::vector<uint8_t>& stored, size_t raw_bytes = kBlock) {
    GuardedBuffer raw(raw_bytes);
    return decompressor_->Decompress(codec, stored, raw.span());
  }

  // Expects kCorruption whose message holds `words`.
  void ExpectCorruption(Codec codec, const std::vector<uint8_t>& stored, const std::string& words,
                        size_t raw_bytes = kBlock) {
    Status status = Decompress(codec, stored, raw_bytes);
    EXPECT_EQ(status.code(), Code::kCorruption) << status.ToString();
    EXPECT_NE(status.message().find(words), std::string::npos) << status.message();
  }

  std::unique_ptr<BlockDecompressor> decompressor_;
};

// Hand-made zstd frames. Frame header descriptor: bits 7-6 the content size field's
// size (0: none unless single-segment, 2: 4 bytes, 3: 8 bytes), bit 5 single segment
// (no window descriptor). Block header: 3 bytes little-endian, bit 0 last block, bits
// 1-2 type (1 = RLE: one byte repeated Block_Size times), bits 3-23 Block_Size.
void AppendLe(std::vector<uint8_t>* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<uint8_t>(value >> (8 * i)));
}
std::vector<uint8_t> ZstdHeader(uint8_t descriptor) {
  std::vector<uint8_t> frame;
  AppendLe(&frame, ZSTD_MAGICNUMBER, 4);
  frame.push_back(descriptor);
  return frame;
}
void AppendRleBlock(std::vector<uint8_t>* frame, uint32_t size, bool last, uint8_t byte) {
  AppendLe(frame, (uint64_t{size} << 3) | (1u << 1) | (last ? 1u : 0u), 3);
  frame->push_back(byte);
}

TEST_F(DecompressTest, HandMadeRleFrameDecodes) {
  // The hand-made frames below are well formed: this one decodes.
  std::vector<uint8_t> frame = ZstdHeader(0xA0);  // 4-byte content size, single segment
  AppendLe(&frame, kBlock, 4);
  AppendRleBlock(&frame, kBlock, true, 0x42);
  std::vector<uint8_t> raw(kBlock);
  ASSERT_TRUE(decompressor_->Decompress(Codec::kZstd, frame, raw).ok());
  EXPECT_EQ(raw, std::vector<uint8_t>(kBlock, 0x42));
}

TEST_F(DecompressTest, ZstdFrameClaimingAHugeContentSizeIsRefused) {
  std::vector<uint8_t> frame = ZstdHeader(0xE0);  // 8-byte content size, single segment
  AppendLe(&frame, uint64_t{1} << 40, 8);
  for (int i = 0; i < 8; ++i) AppendRleBlock(&frame, 128 * 1024, i == 7, 0);
  ExpectCorruption(Codec::kZstd, frame, "declares 1099511627776 bytes of content, the block "
                                        "has 65536 bytes");
}

TEST_F(DecompressTest, ZstdFrameExpandingPastItsDeclaredSizeIsRefused) {
  // Declares the block's 64 KiB, then holds 2 x 64 KiB: decoding must stop at the buffer.
  std::vector<uint8_t> frame = ZstdHeader(0xA0);
  AppendLe(&frame, kBlock, 4);
  AppendRleBlock(&frame, kBlock, false, 1);
  AppendRleBlock(&frame, kBlock, true, 2);
  ExpectCorruption(Codec::kZstd, frame, "the zstd frame does not decode");
  // One RLE block larger than the frame's window (its 64 KiB content size).
  frame = ZstdHeader(0xA0);
  AppendLe(&frame, kBlock, 4);
  AppendRleBlock(&frame, 128 * 1024, true, 3);
  ExpectCorruption(Codec::kZstd, frame, "the zstd frame does not decode");
}

// A frame of zstd's pre-1.0 format v0.7 (magic 0xFD2FB527), which libzstd still
// decodes through its legacy decoders (and their own allocations): no writer of
// this format makes one, so it is refused before it reaches them. Header
// descriptor 0xA0: single segment, 4-byte content size; block header: 3 bytes
// big-endian, bits 23-22 the type (2 = RLE), bits 18-0 the size; 0xC00000 ends
// the frame.
TEST_F(DecompressTest, LegacyZstdFrameIsRefused) {
  std::vector<uint8_t> frame;
  AppendLe(&frame, 0xFD2FB527, 4);
  frame.push_back(0xA0);
  AppendLe(&frame, kBlock, 4);
  const uint32_t rle = (2u << 22) | kBlock;  // the block header, big-endian
  for (int shift : {16, 8, 0}) frame.push_back(static_cast<uint8_t>(rle >> shift));
  frame.push_back(0x42);
  for (uint8_t b : {0xC0, 0x00, 0x00}) frame.push_back(b);
  ExpectCorruption(Codec::kZstd, frame, "not a zstd frame");
}

TEST_F(DecompressTest, ZstdFrameWithoutContentSizeIsRefused) {
  std::vector<uint8_t> frame = ZstdHeader(0x00);  // no content size, window descriptor
  frame.push_back(0x58);                          // window 2^(10 + 11) = 2 MiB
  for (int i = 0; i < 16; ++i) AppendRleBlock(&frame, 128 * 1024, i == 15, 0);
  ExpectCorruption(Codec::kZstd, frame, "does not declare its content size");
}

TEST_F(DecompressTest, FrameForAnotherLengthIsRefused) {
  const std::vector<uint8_t> longer = MakeBlock(Content::kText, 2 * kBlock);
  const std::vector<uint8_t> shorter = MakeBlock(Content::kText, kBlock / 2);
  ExpectCorruption(Codec::kZstd, CompressOrDie({Codec::kZstd, 3}, longer),
                   "declares 131072 bytes of content, the block has 65536 bytes");
  ExpectCorruption(Codec::kZstd, CompressOrDie({Codec::kZstd, 3}, shorter),
                   "declares 32768 bytes of content, the block has 65536 bytes");
  ExpectCorruption(Codec::kLz4, CompressOrDie({Codec::kLz4, 1}, longer),
                   "does not decode (damaged, truncated, or it decodes past the block's 65536");
  ExpectCorruption(Codec::kLz4, CompressOrDie({Codec::kLz4, 1}, shorter),
                   "the LZ4 block decodes to 32768 bytes, the block has 65536 bytes");
}

TEST_F(DecompressTest, Lz4BlockExpandingPastTheBlockIsRefused) {
  // 1 MiB of zeros as LZ4 (about 4 KiB) for a 64 KiB block.
  ExpectCorruption(Codec::kLz4, Lz4Block(std::vector<uint8_t>(1 << 20, 0)),
                   "decodes past the block's 65536 bytes");
  // Hand-made: one literal, then a match of offset 1 whose length runs to ~1 MiB.
  std::vector<uint8_t> bomb = {0x1F, 'a', 0x01, 0x00};
  bomb.insert(bomb.end(), 4096, 0xFF);
  bomb.push_back(0x00);
  bomb.push_back(0x50);  // last sequence: 5 literals
  bomb.insert(bomb.end(), 5, 'z');
  ExpectCorruption(Codec::kLz4, bomb, "the LZ4 block does not decode");
}

TEST_F(DecompressTest, TruncatedRecordsAreRefused) {
  const std::vector<uint8_t> raw = MakeBlock(Content::kText, kBlock);
  for (const CodecSpec& spec : {CodecSpec{Codec::kZstd, 1}, CodecSpec{Codec::kZstd, 19},
                                CodecSpec{Codec::kLz4, 1}}) {
    const std::vector<uint8_t> whole = CompressOrDie(spec, raw);
    std::vector<uint8_t> back(kBlock);
    ASSERT_TRUE(decompressor_->Decompress(spec.codec, whole, back).ok());
    ASSERT_EQ(back, raw);
    for (size_t len = 0; len < whole.size(); len += (len < 64 ? 1 : 7)) {
      const std::vector<uint8_t> cut(whole.begin(), whole.begin() + static_cast<long>(len));
      Status status = Decompress(spec.codec, cut);
      EXPECT_EQ(status.code(), Code::kCorruption)
          << CodecName(spec) << " cut to " << len << " of " << whole.size() << " bytes";
    }
  }
  ExpectCorruption(Codec::kZstd, {}, "an empty compressed record");
}

TEST_F(DecompressTest, BytesAfterTheZstdFrameAreRefused) {
  const std::vector<uint8_t> raw = MakeBlock(Content::kText, kBlock);
  std::vector<uint8_t> frame = CompressOrDie({Codec::kZstd, 3}, raw);
  const size_t frame_bytes = frame.size();
  frame.push_back(0);
  ExpectCorruption(Codec::kZstd, frame,
                   "1 bytes follow the zstd frame of " + std::to_string(frame_bytes) + " bytes");
  // Two whole frames: the second is not part of the block.
  std::vector<uint8_t> two = CompressOrDie({Codec::kZstd, 3}, raw);
  const std::vector<uint8_t> empty_frame = {0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00};
  two.insert(two.end(), empty_frame.begin(), empty_frame.end());
  ExpectCorruption(Codec::kZstd, two, "9 bytes follow the zstd frame");
}

TEST_F(DecompressTest, RandomBytesAreRefused) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 500; ++i) {
    const size_t len = 1 + rng() % MaxPayingBytes(kBlock);
    std::vector<uint8_t> junk = testing::RandomBytes(len, rng());
    EXPECT_EQ(Decompress(Codec::kLz4, junk).code(), Code::kCorruption) << "lz4 " << i;
    EXPECT_EQ(Decompress(Codec::kZstd, junk).code(), Code::kCorruption) << "zstd " << i;
    // Past the magic number: random frame headers and blocks.
    if (junk.size() >= 4) {
      const uint32_t magic = ZSTD_MAGICNUMBER;
      std::memcpy(junk.data(), &magic, 4);
      EXPECT_EQ(Decompress(Codec::kZstd, junk).code(), Code::kCorruption) << "zstd+magic " << i;
    }
  }
}

TEST_F(DecompressTest, ARecordOfTheOtherCodecIsRefused) {
  const std::vector<uint8_t> raw = MakeBlock(Content::kText, kBlock);
  ExpectCorruption(Codec::kZstd, CompressOrDie({Codec::kLz4, 1}, raw), "not a zstd frame");
  EXPECT_EQ(Decompress(Codec::kLz4, CompressOrDie({Codec::kZstd, 3}, raw)).code(),
            Code::kCorruption);
}

TEST_F(DecompressTest, ARecordThatDoesNotPayIsRefused) {
  // A writer stores such a block raw; a compressed record this long is damage.
  ExpectCorruption(Codec::kZstd, std::vector<uint8_t>(MaxPayingBytes(kBlock) + 1, 0),
                   "a compressed record of 61441 bytes does not save a 4 KiB slot of its "
                   "65536 bytes block (at most 61440 bytes)");
  ExpectCorruption(Codec::kLz4, std::vector<uint8_t>(kBlock, 0), "does not save a 4 KiB slot");
  // No compressed record of a 4 KiB block pays.
  const std::vector<uint8_t> small = {0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00};
  ExpectCorruption(Codec::kZstd, small, "does not save a 4 KiB slot", 4096);
}

TEST_F(DecompressTest, UncompressedRecordsAreCopiedAtTheirExactLength) {
  const std::vector<uint8_t> raw = MakeBlock(Content::kRandom, kBlock);
  std::vector<uint8_t> back(kBlock);
  ASSERT_TRUE(decompressor_->Decompress(Codec::kNone, raw, back).ok());
  EXPECT_EQ(back, raw);
  ExpectCorruption(Codec::kNone, std::vector<uint8_t>(kBlock - 1),
                   "an uncompressed record of 65535 bytes for a block of 65536 bytes");
  ExpectCorruption(Codec::kNone, std::vector<uint8_t>(kBlock + 1), "65537 bytes");
}

TEST_F(DecompressTest, UnknownCodecIsRefused) {
  ExpectCorruption(static_cast<Codec>(7), {1, 2, 3}, "unknown codec 7");
}

// Flipped bytes in valid records: each decodes to the block's exact length or is
// refused as corruption (the block's hashes, checked by the reader, catch the former).
TEST_F(DecompressTest, DamagedRecordsNeverEscapeTheirBuffer) {
  std::mt19937_64 rng(11);
  for (const CodecSpec& spec : {CodecSpec{Codec::kZstd, 1}, CodecSpec{Codec::kZstd, 9},
                                CodecSpec{Codec::kLz4, 1}}) {
    for (Content content : {Content::kText, Content::kReal, Content::kZeroButOneByte}) {
      const std::vector<uint8_t> whole = CompressOrDie(spec, MakeBlock(content, kBlock));
      int refused = 0;
      for (int i = 0; i < 400; ++i) {
        std::vector<uint8_t> damaged = whole;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) damaged[rng() % damaged.size()] ^= 1 + rng() % 255;
        const Status status = Decompress(spec.codec, damaged);
        ASSERT_TRUE(status.ok() || status.code() == Code::kCorruption) << status.ToString();
        refused += !status.ok();
      }
      EXPECT_GT(refused, 0) << CodecName(spec) << " " << testing::ContentName(content);
    }
  }
}

}  // namespace
}  // namespace dp420
