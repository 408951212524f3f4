// Per-block compression: the codecs a block may be stored with (LZ4, zstd), the
// `--compression auto|off|lz4[:ACCEL]|zstd[:LEVEL]` option, and the compressor and
// decompressor of one block.
//
// Each block is compressed on its own: no dictionary and no state carried from one
// block to the next, so any block decompresses alone and in any order (restore
// decompresses in parallel). A zstd block is one standard zstd frame that declares
// its content size (`zstd -d` reads it); an LZ4 block is one raw LZ4 block (no
// frame), whose raw length the reader knows from the volume's block size.
//
// The 4 KiB slot rule. Every pack record starts on a 4 KiB boundary (kRecordAlign),
// so a record of n bytes occupies SlotRoundUp(n) bytes of its pack. A block of
// `raw` bytes is stored compressed only when that saves at least one slot:
//
//     CompressionPays(raw, compressed)  <=>  SlotRoundUp(compressed) < SlotRoundUp(raw)
//                                       <=>  compressed <= SlotRoundUp(raw) - 4096
//
// Otherwise it is stored raw: a 4 KiB block never pays, a 64 KiB block pays when it
// compresses to 61,440 bytes or less, a 5,000-byte last block when it compresses to
// 4,096 bytes or less. The decompressor refuses a compressed record that breaks this
// rule (no writer of this format makes one).
//
// Thread safety: CodecSpec and the free functions are values and pure functions. A
// BlockCompressor or a BlockDecompressor is used by one thread at a time: one of each
// per worker thread (each owns its library context, reused from block to block).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "engine/core/format.h"
#include "io/status.h"

namespace dp420 {

enum class Codec : uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };

// zstd levels (1 fastest .. 19 strongest; zstd's negative and 20+ "ultra" levels are
// not offered) and LZ4 accelerations (1 = LZ4's default, strongest; larger is faster
// and compresses less).
inline constexpr int kZstdMinLevel = 1;
inline constexpr int kZstdMaxLevel = 19;
inline constexpr int kZstdDefaultLevel = 3;
inline constexpr int kLz4MinAcceleration = 1;
inline constexpr int kLz4MaxAcceleration = 64;
inline constexpr int kLz4DefaultAcceleration = 1;

// The largest block a codec handles: the format's largest block size.
inline constexpr size_t kCodecMaxBlockBytes = size_t{4} << 20;

// A codec and its level: zstd's level, LZ4's acceleration, 0 for kNone.
struct CodecSpec {
  Codec codec = Codec::kNone;
  int level = 0;
  bool operator==(const CodecSpec&) const = default;
};

// "off", "lz4" (acceleration 1), "lz4:8", "zstd:3": what ParseCodec reads back.
std::string CodecName(const CodecSpec& spec);

// Parses "off", "lz4", "lz4:ACCEL" (1-64), "zstd" (level 3) or "zstd:LEVEL" (1-19).
// Strict: lower case, no spaces, no sign, decimal digits only, nothing after the
// number. Errors (kInvalidArgument) name the text and what was wrong with it.
Result<CodecSpec> ParseCodec(std::string_view text);

// The --compression option: "auto" (ChooseAutoCodec picks, engine/codec/auto.h) or a
// codec ParseCodec reads.
struct CompressionOption {
  bool automatic = false;
  CodecSpec spec;  // kNone when automatic
  bool operator==(const CompressionOption&) const = default;
};
Result<CompressionOption> ParseCompressionOption(std::string_view text);

// The slot rule (see the top of this file).
inline constexpr size_t kSlotBytes = kRecordAlign;
constexpr size_t SlotRoundUp(size_t bytes) {
  return (bytes + kSlotBytes - 1) / kSlotBytes * kSlotBytes;
}
constexpr bool CompressionPays(size_t raw_bytes, size_t compressed_bytes) {
  return compressed_bytes > 0 && SlotRoundUp(compressed_bytes) < SlotRoundUp(raw_bytes);
}
// The largest compressed length that pays for a block of `raw_bytes`; 0 when none
// does (raw_bytes <= 4096). A compressor's output buffer holds at least this.
constexpr size_t MaxPayingBytes(size_t raw_bytes) {
  return raw_bytes <= kSlotBytes ? 0 : SlotRoundUp(raw_bytes) - kSlotBytes;
}

// Returned by BlockCompressor::Compress when the block is to be stored raw.
inline constexpr size_t kStoreRaw = 0;

// Compresses blocks with one codec and level. Owns its library context (a
// ZSTD_CCtx, or LZ4's state), made once: zstd sizes its working memory on the first
// block and reuses it for every later block of that size or smaller; LZ4's is fixed.
class BlockCompressor {
 public:
  // Errors: kNoMemory when the context cannot be allocated; kInvalidArgument when
  // `spec` is out of ParseCodec's bounds.
  static Result<BlockCompressor> Create(const CodecSpec& spec);
  ~BlockCompressor();
  BlockCompressor(BlockCompressor&& other) noexcept;
  BlockCompressor& operator=(BlockCompressor&& other) noexcept;
  BlockCompressor(const BlockCompressor&) = delete;
  BlockCompressor& operator=(const BlockCompressor&) = delete;

  const CodecSpec& spec() const { return spec_; }

  // Compresses `raw` (1 byte to kCodecMaxBlockBytes) into `out`, which must hold at
  // least MaxPayingBytes(raw.size()) bytes. Returns the compressed length when the
  // block pays under the slot rule, else kStoreRaw: the block did not compress into
  // MaxPayingBytes(raw.size()) bytes, or is 4 KiB or less (not even tried), or the
  // codec is kNone. Errors: kNoMemory when zstd cannot grow its working memory (the
  // first block, or a larger one); kInternal for any other library failure.
  Result<size_t> Compress(std::span<const uint8_t> raw, std::span<uint8_t> out);

 private:
  struct Context;
  BlockCompressor(const CodecSpec& spec, std::unique_ptr<Context> context);
  CodecSpec spec_;
  std::unique_ptr<Context> context_;
};

// Decompresses blocks of any codec. Owns a ZSTD_DCtx, made once (LZ4 needs none).
class BlockDecompressor {
 public:
  // Errors: kNoMemory when the zstd context cannot be allocated.
  static Result<BlockDecompressor> Create();
  ~BlockDecompressor();
  BlockDecompressor(BlockDecompressor&& other) noexcept;
  BlockDecompressor& operator=(BlockDecompressor&& other) noexcept;
  BlockDecompressor(const BlockDecompressor&) = delete;
  BlockDecompressor& operator=(const BlockDecompressor&) = delete;

  // Decompresses the record `stored` (written with `codec`) into `raw`, whose size is
  // the block's raw length (1 byte to kCodecMaxBlockBytes), and fills it exactly.
  // Never writes outside `raw` and allocates nothing, whatever `stored` holds. kNone
  // copies a record of exactly raw.size() bytes. kCorruption, naming what was wrong,
  // when the record: does not pay under the slot rule (too long for a compressed
  // record of this block), is empty, is not a zstd frame, declares no content size or
  // one other than raw.size(), is truncated, has bytes after its frame, fails to
  // decode (garbage, or output that would run past raw.size()), or decodes to fewer
  // than raw.size() bytes.
  Status Decompress(Codec codec, std::span<const uint8_t> stored, std::span<uint8_t> raw);

 private:
  struct Context;
  explicit BlockDecompressor(std::unique_ptr<Context> context);
  std::unique_ptr<Context> context_;
};

}  // namespace dp420
