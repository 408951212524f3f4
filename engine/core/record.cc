#include "engine/core/record.h"

#include <chrono>
#include <cstring>
#include <string>

#include "io/assert.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

// The codec byte of a record's associated data (aead.h): 0 none, 1 zstd, 2 lz4.
uint8_t AadCodec(uint16_t flags) {
  if (flags & kObjZstd) return 1;
  if (flags & kObjLz4) return 2;
  return 0;
}

Codec CodecOf(uint16_t flags) {
  if (flags & kObjZstd) return Codec::kZstd;
  if (flags & kObjLz4) return Codec::kLz4;
  return Codec::kNone;
}

uint16_t CodecFlag(Codec codec) {
  switch (codec) {
    case Codec::kZstd:
      return kObjZstd;
    case Codec::kLz4:
      return kObjLz4;
    case Codec::kNone:
      break;
  }
  return 0;
}

crypto::RecordId IdOf(const ObjRef& ref, uint32_t raw_len, uint32_t plain_len) {
  crypto::RecordId id;
  id.key_id = ref.key_id;
  id.kind = KindOf(ref);
  id.codec = AadCodec(ref.flags);
  id.raw_len = raw_len;
  id.plain_len_bytes = plain_len;
  std::memcpy(id.sha256.data(), ref.sha256, 32);
  return id;
}

Status CheckSha256(const ObjRef& ref, std::span<const uint8_t> raw) {
  uint8_t digest[32];
  simd::Sha256(raw.data(), raw.size(), digest);
  if (std::memcmp(digest, ref.sha256, 32) != 0) return Status::Corruption("fails its SHA-256");
  return Status::Ok();
}

}  // namespace

crypto::ObjectKind KindOf(const ObjRef& ref) {
  if (ref.flags & kObjTableLeaf) return crypto::ObjectKind::kLeafPage;
  if (ref.flags & kObjTableInner) return crypto::ObjectKind::kInnerPage;
  return crypto::ObjectKind::kDataBlock;
}

Result<std::unique_ptr<RecordCodec>> RecordCodec::Create(const crypto::SecretKey* object_key,
                                                         const crypto::RepoId& repo_id,
                                                         const CodecSpec& compression) {
  std::unique_ptr<RecordCodec> codec(new RecordCodec());
  DP420_RETURN_IF_ERROR(codec->SetCompression(compression));
  DP420_ASSIGN_OR_RETURN(BlockDecompressor d, BlockDecompressor::Create());
  codec->decompressor_ = std::make_unique<BlockDecompressor>(std::move(d));
  if (object_key) {
    codec->sealer_ = std::make_unique<crypto::RecordSealer>(*object_key, repo_id);
    DP420_RETURN_IF_ERROR(codec->NextKeyId());
  }
  return codec;
}

RecordCodec::~RecordCodec() = default;

Status RecordCodec::SetCompression(const CodecSpec& compression) {
  std::unique_ptr<BlockCompressor> compressor;
  if (compression.codec != Codec::kNone) {
    DP420_ASSIGN_OR_RETURN(BlockCompressor c, BlockCompressor::Create(compression));
    compressor = std::make_unique<BlockCompressor>(std::move(c));
  }
  compressor_ = std::move(compressor);
  compression_ = compression;
  return Status::Ok();
}

Status RecordCodec::NextKeyId() {
  DP420_ASSIGN_OR_RETURN(key_id_, crypto::RandomKeyId());
  under_key_ = 0;
  return Status::Ok();
}

Result<const uint8_t*> RecordCodec::Encode(std::span<const uint8_t> raw, ObjRef* ref,
                                           uint8_t* out) {
  DP420_ASSERT(!raw.empty() && raw.size() <= kCodecMaxBlockBytes);
  ref->flags = static_cast<uint16_t>(ref->flags & ~kObjEncodingFlags);
  ref->key_id = 0;
  const size_t prefix = sealer_ ? crypto::kGcmNonceBytes : 0;
  std::span<const uint8_t> body = raw;
  if (compressor_) {
    const size_t room = MaxPayingBytes(raw.size());
    const auto start = std::chrono::steady_clock::now();
    Result<size_t> compressed = compressor_->Compress(raw, {out + prefix, room});
    compress_ns_ += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              std::chrono::steady_clock::now() - start)
                                              .count());
    DP420_ASSIGN_OR_RETURN(size_t n, std::move(compressed));
    if (n != kStoreRaw) {
      body = {out + prefix, n};
      ref->flags = static_cast<uint16_t>(ref->flags | CodecFlag(compressor_->spec().codec));
      ++compressed_count_;
    }
  }
  if (!sealer_) {
    ref->stored_len = static_cast<uint32_t>(body.size());
    return body.data();
  }
  if (under_key_ >= kRecordsPerKeyId) DP420_RETURN_IF_ERROR(NextKeyId());
  ++under_key_;
  ref->flags = static_cast<uint16_t>(ref->flags | kObjAesGcm);
  ref->key_id = key_id_;
  const uint32_t plain_len = static_cast<uint32_t>(body.size());
  const crypto::RecordId id = IdOf(*ref, static_cast<uint32_t>(raw.size()), plain_len);
  DP420_RETURN_IF_ERROR(sealer_->SealRecord(id, body, {out, plain_len + crypto::kRecordOverheadBytes}));
  ref->stored_len = plain_len + static_cast<uint32_t>(crypto::kRecordOverheadBytes);
  ++sealed_count_;
  return out;
}

Status RecordCodec::Decode(const ObjRef& ref, const uint8_t* stored, std::span<uint8_t> raw) {
  const Codec codec = CodecOf(ref.flags);
  if ((ref.flags & kObjZstd) && (ref.flags & kObjLz4)) {
    return Status::Corruption("flags name two codecs");
  }
  if (!StoredLengthFits(ref, static_cast<uint32_t>(raw.size()))) {
    return Status::Corruption("stored length " + std::to_string(ref.stored_len) +
                              " does not fit the object's " + std::to_string(raw.size()) +
                              " bytes");
  }
  const bool sealed = ref.flags & kObjAesGcm;
  if (sealed != (sealer_ != nullptr)) {
    return Status::Corruption(sealed ? "a sealed record in a repository that is not encrypted"
                                     : "an unsealed record in an encrypted repository");
  }
  if (!sealed) {
    if (codec == Codec::kNone) {
      if (stored != raw.data()) std::memcpy(raw.data(), stored, raw.size());
      return CheckSha256(ref, raw);
    }
    DP420_RETURN_IF_ERROR(decompressor_->Decompress(codec, {stored, ref.stored_len}, raw));
    return CheckSha256(ref, raw);
  }
  if (ref.stored_len < crypto::kRecordOverheadBytes) {
    return Status::Corruption("stored length " + std::to_string(ref.stored_len) +
                              " is shorter than a sealed record's nonce and tag");
  }
  const uint32_t plain_len = ref.stored_len - static_cast<uint32_t>(crypto::kRecordOverheadBytes);
  const crypto::RecordId id = IdOf(ref, static_cast<uint32_t>(raw.size()), plain_len);
  std::span<const uint8_t> sealed_bytes{stored, ref.stored_len};
  if (codec == Codec::kNone) {
    if (plain_len != raw.size()) return Status::Corruption("wrong length");
    return sealer_->OpenRecord(id, sealed_bytes, raw);
  }
  if (scratch_bytes_ < plain_len) {
    scratch_.reset(new uint8_t[plain_len]);
    scratch_bytes_ = plain_len;
  }
  std::span<uint8_t> plain{scratch_.get(), plain_len};
  DP420_RETURN_IF_ERROR(sealer_->OpenRecord(id, sealed_bytes, plain));
  return decompressor_->Decompress(codec, plain, raw);
}

}  // namespace dp420
