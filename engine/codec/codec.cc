// Per-block compression with zstd and LZ4 (see codec.h).
#include "engine/codec/codec.h"

#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cstring>
#include <utility>

#include "io/assert.h"

namespace dp420 {
namespace {

constexpr std::string_view kCodecForms = "off, lz4, lz4:ACCEL (1-64), zstd or zstd:LEVEL (1-19)";

// Parses the decimal digits after "NAME:" in `text` into [min, max].
Result<int> ParseLevel(std::string_view text, std::string_view digits, std::string_view what,
                       int min, int max) {
  const std::string bounds = std::to_string(min) + "-" + std::to_string(max);
  if (digits.empty()) {
    return Status::InvalidArgument("compression '" + std::string(text) + "': the " +
                                   std::string(what) + " after ':' is missing (" + bounds + ")");
  }
  if (digits.find_first_not_of("0123456789") != std::string_view::npos) {
    return Status::InvalidArgument("compression '" + std::string(text) + "': " +
                                   std::string(what) + " '" + std::string(digits) +
                                   "' is not a decimal number (" + bounds + ")");
  }
  int value = 0;
  for (char c : digits) {
    value = value * 10 + (c - '0');
    if (value > max) break;  // out of range already; no overflow
  }
  if (value < min || value > max) {
    return Status::InvalidArgument("compression '" + std::string(text) + "': " +
                                   std::string(what) + " " + std::string(digits) +
                                   " is out of range (" + bounds + ")");
  }
  return value;
}

bool SpecInBounds(const CodecSpec& spec) {
  switch (spec.codec) {
    case Codec::kNone:
      return spec.level == 0;
    case Codec::kLz4:
      return spec.level >= kLz4MinAcceleration && spec.level <= kLz4MaxAcceleration;
    case Codec::kZstd:
      return spec.level >= kZstdMinLevel && spec.level <= kZstdMaxLevel;
  }
  return false;
}

}  // namespace

std::string CodecName(const CodecSpec& spec) {
  switch (spec.codec) {
    case Codec::kNone:
      return "off";
    case Codec::kLz4:
      return spec.level == kLz4DefaultAcceleration ? "lz4" : "lz4:" + std::to_string(spec.level);
    case Codec::kZstd:
      return "zstd:" + std::to_string(spec.level);
  }
  return "codec " + std::to_string(static_cast<int>(spec.codec));
}

namespace {

// ParseCodec, whose error for an unknown name lists `forms`.
Result<CodecSpec> ParseCodecOf(std::string_view text, std::string_view forms) {
  const size_t colon = text.find(':');
  const std::string_view name = text.substr(0, colon);
  const bool has_level = colon != std::string_view::npos;
  const std::string_view digits = has_level ? text.substr(colon + 1) : std::string_view();
  if (name == "off") {
    if (has_level) {
      return Status::InvalidArgument("compression '" + std::string(text) +
                                     "': off takes no level");
    }
    return CodecSpec{Codec::kNone, 0};
  }
  if (name == "lz4") {
    if (!has_level) return CodecSpec{Codec::kLz4, kLz4DefaultAcceleration};
    DP420_ASSIGN_OR_RETURN(int accel, ParseLevel(text, digits, "lz4 acceleration",
                                                 kLz4MinAcceleration, kLz4MaxAcceleration));
    return CodecSpec{Codec::kLz4, accel};
  }
  if (name == "zstd") {
    if (!has_level) return CodecSpec{Codec::kZstd, kZstdDefaultLevel};
    DP420_ASSIGN_OR_RETURN(int level, ParseLevel(text, digits, "zstd level", kZstdMinLevel,
                                                 kZstdMaxLevel));
    return CodecSpec{Codec::kZstd, level};
  }
  return Status::InvalidArgument("unknown compression '" + std::string(text) + "' (use " +
                                 std::string(forms) + ")");
}

}  // namespace

Result<CodecSpec> ParseCodec(std::string_view text) { return ParseCodecOf(text, kCodecForms); }

Result<CompressionOption> ParseCompressionOption(std::string_view text) {
  if (text == "auto") return CompressionOption{true, CodecSpec{}};
  DP420_ASSIGN_OR_RETURN(CodecSpec spec,
                         ParseCodecOf(text, "auto, " + std::string(kCodecForms)));
  return CompressionOption{false, spec};
}

// ---- BlockCompressor ----

struct BlockCompressor::Context {
  ZSTD_CCtx* zstd = nullptr;
  std::unique_ptr<uint64_t[]> lz4_state;  // LZ4_sizeofState() bytes, 8-byte aligned
  ~Context() { ZSTD_freeCCtx(zstd); }
};

BlockCompressor::BlockCompressor(const CodecSpec& spec, std::unique_ptr<Context> context)
    : spec_(spec), context_(std::move(context)) {}
BlockCompressor::~BlockCompressor() = default;
BlockCompressor::BlockCompressor(BlockCompressor&& other) noexcept = default;
BlockCompressor& BlockCompressor::operator=(BlockCompressor&& other) noexcept = default;

Result<BlockCompressor> BlockCompressor::Create(const CodecSpec& spec) {
  if (!SpecInBounds(spec)) {
    return Status::InvalidArgument("compression " + CodecName(spec) + " is out of bounds");
  }
  auto context = std::make_unique<Context>();
  if (spec.codec == Codec::kLz4) {
    const size_t words = (static_cast<size_t>(LZ4_sizeofState()) + 7) / 8;
    context->lz4_state.reset(new (std::nothrow) uint64_t[words]);
    if (context->lz4_state == nullptr) return Status::NoMemory("allocating LZ4's state");
  } else if (spec.codec == Codec::kZstd) {
    context->zstd = ZSTD_createCCtx();
    if (context->zstd == nullptr) return Status::NoMemory("allocating a zstd context");
    // One frame per block: its content size declared (the reader checks it), no
    // checksum (the block's hashes cover its raw bytes), no dictionary id.
    const std::pair<ZSTD_cParameter, int> params[] = {
        {ZSTD_c_compressionLevel, spec.level},
        {ZSTD_c_contentSizeFlag, 1},
        {ZSTD_c_checksumFlag, 0},
        {ZSTD_c_dictIDFlag, 0},
    };
    for (const auto& [param, value] : params) {
      const size_t rc = ZSTD_CCtx_setParameter(context->zstd, param, value);
      if (ZSTD_isError(rc)) {
        return Status::Internal(std::string("setting a zstd parameter: ") +
                                ZSTD_getErrorName(rc));
      }
    }
  }
  return BlockCompressor(spec, std::move(context));
}

Result<size_t> BlockCompressor::Compress(std::span<const uint8_t> raw, std::span<uint8_t> out) {
  DP420_ASSERT(!raw.empty() && raw.size() <= kCodecMaxBlockBytes);
  const size_t limit = MaxPayingBytes(raw.size());
  DP420_ASSERT(out.size() >= limit);
  if (spec_.codec == Codec::kNone || limit == 0) return kStoreRaw;
  if (spec_.codec == Codec::kLz4) {
    // LZ4 stops with 0 as soon as the output would pass `limit`.
    const int n = LZ4_compress_fast_extState(
        context_->lz4_state.get(), reinterpret_cast<const char*>(raw.data()),
        reinterpret_cast<char*>(out.data()), static_cast<int>(raw.size()),
        static_cast<int>(limit), spec_.level);
    return n > 0 ? static_cast<size_t>(n) : kStoreRaw;
  }
  // zstd reports dstSize_tooSmall when the frame does not fit in `limit`.
  const size_t n = ZSTD_compress2(context_->zstd, out.data(), limit, raw.data(), raw.size());
  if (!ZSTD_isError(n)) {
    DP420_ASSERT(CompressionPays(raw.size(), n));
    return n;
  }
  switch (ZSTD_getErrorCode(n)) {
    case ZSTD_error_dstSize_tooSmall:
      return kStoreRaw;
    case ZSTD_error_memory_allocation:
      return Status::NoMemory("zstd could not allocate its working memory");
    default:
      return Status::Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  }
}

// ---- BlockDecompressor ----

struct BlockDecompressor::Context {
  ZSTD_DCtx* zstd = nullptr;
  ~Context() { ZSTD_freeDCtx(zstd); }
};

namespace {

std::string Bytes(size_t n) { return std::to_string(n) + " bytes"; }

// One zstd frame declaring exactly raw.size() bytes, and nothing after it. Only
// the current frame format: libzstd also decodes pre-1.0 ("legacy") frames, with
// decoders of their own that allocate, and no writer of this format makes one.
Status DecompressZstd(ZSTD_DCtx* dctx, std::span<const uint8_t> stored,
                      std::span<uint8_t> raw) {
  uint32_t magic = 0;  // little-endian in the frame
  for (size_t i = 0; i < 4 && i < stored.size(); ++i) magic |= uint32_t{stored[i]} << (8 * i);
  if (stored.size() < 4 || magic != ZSTD_MAGICNUMBER) {
    return Status::Corruption("not a zstd frame (bad magic number)");
  }
  const unsigned long long declared = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    return Status::Corruption("not a zstd frame (bad magic number or a truncated or damaged "
                              "frame header)");
  }
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN) {
    return Status::Corruption("the zstd frame does not declare its content size");
  }
  if (declared != raw.size()) {
    return Status::Corruption("the zstd frame declares " + std::to_string(declared) +
                              " bytes of content, the block has " + Bytes(raw.size()));
  }
  const size_t frame = ZSTD_findFrameCompressedSize(stored.data(), stored.size());
  if (ZSTD_isError(frame)) {
    return Status::Corruption(std::string("truncated or damaged zstd frame (") +
                              ZSTD_getErrorName(frame) + ")");
  }
  if (frame != stored.size()) {
    return Status::Corruption(Bytes(stored.size() - frame) + " follow the zstd frame of " +
                              Bytes(frame));
  }
  // Single-shot decoding writes straight into `raw` (no window buffer) and fails
  // rather than write past raw.size().
  const size_t n = ZSTD_decompressDCtx(dctx, raw.data(), raw.size(), stored.data(),
                                       stored.size());
  if (ZSTD_isError(n)) {
    return Status::Corruption(std::string("the zstd frame does not decode: ") +
                              ZSTD_getErrorName(n));
  }
  if (n != raw.size()) {
    return Status::Corruption("the zstd frame decodes to " + Bytes(n) + ", the block has " +
                              Bytes(raw.size()));
  }
  return Status::Ok();
}

Status DecompressLz4(std::span<const uint8_t> stored, std::span<uint8_t> raw) {
  // LZ4_decompress_safe never writes past its capacity and fails on any block that
  // would (or that reads past its input).
  const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(stored.data()),
                                    reinterpret_cast<char*>(raw.data()),
                                    static_cast<int>(stored.size()), static_cast<int>(raw.size()));
  if (n < 0) {
    return Status::Corruption("the LZ4 block does not decode (damaged, truncated, or it "
                              "decodes past the block's " + Bytes(raw.size()) + ")");
  }
  if (static_cast<size_t>(n) != raw.size()) {
    return Status::Corruption("the LZ4 block decodes to " + Bytes(static_cast<size_t>(n)) +
                              ", the block has " + Bytes(raw.size()));
  }
  return Status::Ok();
}

}  // namespace

BlockDecompressor::BlockDecompressor(std::unique_ptr<Context> context)
    : context_(std::move(context)) {}
BlockDecompressor::~BlockDecompressor() = default;
BlockDecompressor::BlockDecompressor(BlockDecompressor&& other) noexcept = default;
BlockDecompressor& BlockDecompressor::operator=(BlockDecompressor&& other) noexcept = default;

Result<BlockDecompressor> BlockDecompressor::Create() {
  auto context = std::make_unique<Context>();
  context->zstd = ZSTD_createDCtx();
  if (context->zstd == nullptr) return Status::NoMemory("allocating a zstd context");
  return BlockDecompressor(std::move(context));
}

Status BlockDecompressor::Decompress(Codec codec, std::span<const uint8_t> stored,
                                     std::span<uint8_t> raw) {
  DP420_ASSERT(!raw.empty() && raw.size() <= kCodecMaxBlockBytes);
  if (codec == Codec::kNone) {
    if (stored.size() != raw.size()) {
      return Status::Corruption("an uncompressed record of " + Bytes(stored.size()) +
                                " for a block of " + Bytes(raw.size()));
    }
    std::memcpy(raw.data(), stored.data(), raw.size());
    return Status::Ok();
  }
  if (stored.empty()) return Status::Corruption("an empty compressed record");
  if (!CompressionPays(raw.size(), stored.size())) {
    return Status::Corruption("a compressed record of " + Bytes(stored.size()) +
                              " does not save a 4 KiB slot of its " + Bytes(raw.size()) +
                              " block (at most " + Bytes(MaxPayingBytes(raw.size())) + ")");
  }
  switch (codec) {
    case Codec::kZstd:
      return DecompressZstd(context_->zstd, stored, raw);
    case Codec::kLz4:
      return DecompressLz4(stored, raw);
    case Codec::kNone:
      break;
  }
  return Status::Corruption("unknown codec " + std::to_string(static_cast<int>(codec)));
}

}  // namespace dp420
