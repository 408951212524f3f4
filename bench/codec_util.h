// Helpers shared by bench_codec and codec_scan: the codecs measured (dp420's LZ4 and
// zstd, and ISA-L's igzip as a reference that dp420 does not offer), behind one
// interface that applies the 4 KiB slot rule (engine/codec/codec.h) to all of them,
// and the real-data sample read from a file-system image.
//
// Thread safety: a BenchCodec is used by one thread.
#pragma once

#include <fcntl.h>
#include <isa-l/igzip_lib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/codec/auto.h"
#include "engine/codec/codec.h"
#include "simd/simd.h"

namespace dp420::bench {

// The image the real-data measurements read unless DP420_BENCH_IMAGE names another:
// 4 GiB of ext4 holding real files (perf/ makes it).
inline constexpr char kDefaultImage[] = "/var/tmp/dp420-perf/volume-4G/base.img";

inline std::string BenchImagePath() {
  const char* env = std::getenv("DP420_BENCH_IMAGE");
  return env != nullptr && env[0] != '\0' ? env : kDefaultImage;
}

// One codec under measurement. Compress returns the compressed length when the block
// pays under the slot rule, else kStoreRaw; Decompress fills `raw` exactly or fails.
class BenchCodec {
 public:
  virtual ~BenchCodec() = default;
  virtual const std::string& name() const = 0;
  virtual size_t Compress(std::span<const uint8_t> raw, std::span<uint8_t> out) = 0;
  virtual bool Decompress(std::span<const uint8_t> stored, std::span<uint8_t> raw) = 0;
};

class Dp420Codec final : public BenchCodec {
 public:
  explicit Dp420Codec(const CodecSpec& spec)
      : name_(CodecName(spec)),
        compressor_(std::move(BlockCompressor::Create(spec)).value()),
        decompressor_(std::move(BlockDecompressor::Create()).value()) {}
  const std::string& name() const override { return name_; }
  size_t Compress(std::span<const uint8_t> raw, std::span<uint8_t> out) override {
    Result<size_t> n = compressor_.Compress(raw, out);
    if (!n.ok()) {
      std::fprintf(stderr, "%s: %s\n", name_.c_str(), n.status().ToString().c_str());
      std::abort();
    }
    return *n;
  }
  bool Decompress(std::span<const uint8_t> stored, std::span<uint8_t> raw) override {
    return decompressor_.Decompress(compressor_.spec().codec, stored, raw).ok();
  }

 private:
  std::string name_;
  BlockCompressor compressor_;
  BlockDecompressor decompressor_;
};

// ISA-L igzip, raw deflate (no gzip header), stateless, at level 1 (its level 0 has
// no level buffer and compresses far less).
class IgzipCodec final : public BenchCodec {
 public:
  IgzipCodec() : level_buf_(ISAL_DEF_LVL1_DEFAULT) {}
  const std::string& name() const override { return name_; }
  size_t Compress(std::span<const uint8_t> raw, std::span<uint8_t> out) override {
    const size_t limit = MaxPayingBytes(raw.size());
    if (limit == 0) return kStoreRaw;
    isal_zstream stream;
    isal_deflate_stateless_init(&stream);
    stream.level = 1;
    stream.level_buf = level_buf_.data();
    stream.level_buf_size = static_cast<uint32_t>(level_buf_.size());
    stream.next_in = const_cast<uint8_t*>(raw.data());
    stream.avail_in = static_cast<uint32_t>(raw.size());
    stream.next_out = out.data();
    stream.avail_out = static_cast<uint32_t>(limit);
    stream.end_of_stream = 1;
    const int rc = isal_deflate_stateless(&stream);
    return rc == COMP_OK ? stream.total_out : kStoreRaw;  // STATELESS_OVERFLOW: no pay
  }
  bool Decompress(std::span<const uint8_t> stored, std::span<uint8_t> raw) override {
    isal_inflate_init(&inflate_);
    inflate_.next_in = const_cast<uint8_t*>(stored.data());
    inflate_.avail_in = static_cast<uint32_t>(stored.size());
    inflate_.next_out = raw.data();
    inflate_.avail_out = static_cast<uint32_t>(raw.size());
    return isal_inflate_stateless(&inflate_) == ISAL_DECOMP_OK && inflate_.total_out == raw.size();
  }

 private:
  std::string name_ = "igzip:1";
  std::vector<uint8_t> level_buf_;
  inflate_state inflate_;
};

// The candidates of --compression auto (kAutoCandidates, in that order: lz4, zstd:1,
// zstd:3), then igzip:1.
inline std::vector<std::unique_ptr<BenchCodec>> MakeBenchCodecs(bool with_igzip) {
  std::vector<std::unique_ptr<BenchCodec>> codecs;
  for (const CodecSpec& spec : kAutoCandidates) {
    codecs.push_back(std::make_unique<Dp420Codec>(spec));
  }
  if (with_igzip) codecs.push_back(std::make_unique<IgzipCodec>());
  return codecs;
}

// Up to `want_bytes` of non-zero blocks of `block_bytes` read from `regions` places
// spread evenly over the file at `path` (from each place, forward, until its share is
// read or the next place is reached). Returns an empty vector, with the reason in
// `*why`, when the file cannot be read or holds too little.
inline std::vector<uint8_t> ReadNonZeroBlocks(const std::string& path, size_t block_bytes,
                                              size_t want_bytes, int regions, std::string* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *why = path + ": cannot open it";
    return {};
  }
  const off_t file_bytes = ::lseek(fd, 0, SEEK_END);
  std::vector<uint8_t> out;
  out.reserve(want_bytes);
  const size_t share = want_bytes / static_cast<size_t>(regions);
  std::vector<uint8_t> block(block_bytes);
  for (int r = 0; r < regions; ++r) {
    const off_t start = file_bytes / regions * r / static_cast<off_t>(block_bytes) *
                        static_cast<off_t>(block_bytes);
    const off_t end = file_bytes / regions * (r + 1);
    size_t taken = 0;
    for (off_t at = start; at + static_cast<off_t>(block_bytes) <= end && taken < share;
         at += static_cast<off_t>(block_bytes)) {
      if (::pread(fd, block.data(), block_bytes, at) != static_cast<ssize_t>(block_bytes)) break;
      if (simd::IsZero(block.data(), block_bytes)) continue;
      out.insert(out.end(), block.begin(), block.end());
      taken += block_bytes;
    }
  }
  ::close(fd);
  if (out.size() < want_bytes / 4) {
    *why = path + ": only " + std::to_string(out.size()) + " bytes of non-zero blocks";
    return {};
  }
  return out;
}

}  // namespace dp420::bench
