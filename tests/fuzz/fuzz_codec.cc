// Block codecs (engine/codec/codec.h). Input: byte 0 picks the codec (bits 0-1: zstd,
// LZ4, none) and a compression level (bits 2-7); bytes 1-3 the block's raw length
// (little-endian, 0 and anything above 4 MiB clamped into 1 .. 4 MiB); the rest is a
// stored record. Properties: decompressing the record into a buffer of exactly the raw
// length, between two inaccessible pages (libzstd and liblz4 are not instrumented),
// either succeeds or is kCorruption; and the rest, compressed as a block of its own,
// decompresses to itself whenever it pays under the slot rule.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/codec/codec.h"
#include "tests/fuzz/fuzz_util.h"

namespace dp420 {
namespace {

constexpr size_t kPage = 4096;

// A buffer of `bytes` ending at an inaccessible page and starting right after one.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t bytes)
      : bytes_(bytes), span_bytes_((bytes + kPage - 1) / kPage * kPage) {
    void* map = mmap(nullptr, span_bytes_ + 2 * kPage, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    FUZZ_CHECK(map != MAP_FAILED);
    base_ = static_cast<uint8_t*>(map);
    FUZZ_CHECK(mprotect(base_ + kPage, span_bytes_, PROT_READ | PROT_WRITE) == 0);
  }
  ~GuardedBuffer() { munmap(base_, span_bytes_ + 2 * kPage); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  // Ends where the guard page starts (an odd length leaves room before, not after).
  std::span<uint8_t> span() { return {base_ + kPage + span_bytes_ - bytes_, bytes_}; }

 private:
  size_t bytes_;
  size_t span_bytes_;
  uint8_t* base_;
};

CodecSpec SpecOf(uint8_t selector) {
  const int level = selector >> 2;  // 0 .. 63
  switch (selector & 3) {
    case 0: return {Codec::kZstd, kZstdMinLevel + level % 9};  // up to 9: fuzzing speed
    case 1: return {Codec::kLz4, kLz4MinAcceleration + level};
    default: return {Codec::kNone, 0};
  }
}

void CheckRoundTrip(const CodecSpec& spec, std::span<const uint8_t> raw) {
  if (raw.empty() || raw.size() > kCodecMaxBlockBytes) return;
  Result<BlockCompressor> compressor = BlockCompressor::Create(spec);
  FUZZ_CHECK(compressor.ok());
  std::vector<uint8_t> stored(MaxPayingBytes(raw.size()));
  Result<size_t> n = compressor->Compress(raw, stored);
  FUZZ_CHECK(n.ok());
  if (*n == kStoreRaw) return;
  FUZZ_CHECK(CompressionPays(raw.size(), *n));
  Result<BlockDecompressor> decompressor = BlockDecompressor::Create();
  FUZZ_CHECK(decompressor.ok());
  GuardedBuffer back(raw.size());
  FUZZ_CHECK(decompressor->Decompress(spec.codec, {stored.data(), *n}, back.span()).ok());
  FUZZ_CHECK(std::memcmp(back.span().data(), raw.data(), raw.size()) == 0);
}

}  // namespace
}  // namespace dp420

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dp420;
  if (size < 4) return 0;
  const CodecSpec spec = SpecOf(data[0]);
  size_t raw_bytes = data[1] | (size_t{data[2]} << 8) | (size_t{data[3]} << 16);
  raw_bytes = std::clamp<size_t>(raw_bytes, 1, kCodecMaxBlockBytes);
  const std::span<const uint8_t> record(data + 4, size - 4);
  static BlockDecompressor decompressor = std::move(BlockDecompressor::Create()).value();
  GuardedBuffer raw(raw_bytes);
  const Status status = decompressor.Decompress(spec.codec, record, raw.span());
  FUZZ_CHECK(status.ok() || status.code() == Code::kCorruption);
  CheckRoundTrip(spec, record);
  return 0;
}
