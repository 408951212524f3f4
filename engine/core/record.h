// Records as a format-3 repository stores them: each object (a data block or
// a table page) is encoded before it goes into a pack —
//
//   1. compressed with the backup's codec when that saves at least one 4 KiB
//      slot (engine/codec/codec.h; flag kObjZstd or kObjLz4), else kept raw;
//   2. in an encrypted repository, sealed with AES-256-GCM under a record key
//      (engine/crypto/aead.h; flag kObjAesGcm, ObjRef::key_id): a random
//      nonce in front, the tag behind, the associated data binding the
//      repository, the kind, the codec, both lengths and the raw SHA-256.
//
// and decoded in the reverse order when it is read. The reference (ObjRef)
// keeps the SHA-256 of the raw bytes, which the volume checksum is made of;
// stored_len is the encoded length. A record that is neither compressed nor
// sealed is its raw bytes (every record of format 2 and of a format-2 pack).
//
// A reference decodes only as what it claims: a sealed record opens only
// for the kind, codec, lengths and SHA-256 its reference carries (whatever
// pack or offset it was copied to); an unsealed one is checked against the
// SHA-256 after decompressing.
//
// Thread safety: a RecordCodec belongs to one thread (it owns a cipher and
// compression contexts); create one per worker.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "engine/codec/codec.h"
#include "engine/core/format.h"
#include "engine/crypto/aead.h"
#include "engine/crypto/keys.h"
#include "io/status.h"

namespace dp420 {

// Bytes an encoded record of `raw_len` bytes takes at most.
inline uint32_t MaxEncodedBytes(uint32_t raw_len) {
  return raw_len + static_cast<uint32_t>(crypto::kRecordOverheadBytes);
}

// Whether `ref`'s stored length fits an object of `raw_len` bytes: exactly
// raw_len for a raw record, 1 to MaxEncodedBytes(raw_len) for an encoded one.
// Every reader checks it before it reads, so a hostile reference can neither
// make it read more than the object's encoding takes nor decode into the
// wrong length.
inline bool StoredLengthFits(const ObjRef& ref, uint32_t raw_len) {
  return (ref.flags & kObjEncodingFlags)
             ? ref.stored_len > 0 && ref.stored_len <= MaxEncodedBytes(raw_len)
             : ref.stored_len == raw_len;
}

// What kind of object `ref` locates (from its flags).
crypto::ObjectKind KindOf(const ObjRef& ref);

// A record sealed under one record key before the writer draws another.
inline constexpr uint64_t kRecordsPerKeyId = uint64_t{1} << 16;

class RecordCodec {
 public:
  // `object_key` null: the repository is not encrypted. `compression`:
  // Codec::kNone stores every record uncompressed.
  static Result<std::unique_ptr<RecordCodec>> Create(const crypto::SecretKey* object_key,
                                                     const crypto::RepoId& repo_id,
                                                     const CodecSpec& compression);
  ~RecordCodec();
  RecordCodec(const RecordCodec&) = delete;
  RecordCodec& operator=(const RecordCodec&) = delete;

  bool sealed() const { return sealer_ != nullptr; }
  const CodecSpec& compression() const { return compression_; }
  // True when Encode may transform a record (else the stored bytes are the raw ones).
  bool transforms() const { return sealer_ || compression_.codec != Codec::kNone; }

  // Encodes `raw` (ref->sha256 already holds its SHA-256; the kind comes from
  // ref->flags) into `out` (at least MaxEncodedBytes(raw.size()) bytes) and
  // sets ref->stored_len, the encoding flags and ref->key_id. Returns the
  // stored bytes: `out`, or `raw` itself when nothing was to be done.
  Result<const uint8_t*> Encode(std::span<const uint8_t> raw, ObjRef* ref, uint8_t* out);

  // Decodes the ref.stored_len bytes `stored` of `ref` into `raw` (the
  // object's raw length). kCorruption saying what is wrong (the caller names
  // the record: Status::Prefix, only on failure) when the record does not
  // open, decompress or hash to the reference; `raw` is then not to be used.
  // `stored` may be raw.data() only for a raw record.
  Status Decode(const ObjRef& ref, const uint8_t* stored, std::span<uint8_t> raw);

  // Records sealed and compressed by Encode so far.
  uint64_t records_sealed() const { return sealed_count_; }
  uint64_t records_compressed() const { return compressed_count_; }
  // Wall nanoseconds Encode spent compressing so far (what `--compression auto`
  // weighs when it decides whether to step down to a faster codec).
  uint64_t compress_ns() const { return compress_ns_; }

  // Compresses the records encoded from now on with `compression` (a writer's
  // codec may change between records: each record's flags name its own).
  // Errors: those of BlockCompressor::Create. A format-2 repository's codec
  // must stay at kNone (Repository::NewRecordCodec): its readers know no flags.
  Status SetCompression(const CodecSpec& compression);

 private:
  RecordCodec() = default;
  Status NextKeyId();

  CodecSpec compression_;
  std::unique_ptr<BlockCompressor> compressor_;
  std::unique_ptr<BlockDecompressor> decompressor_;
  std::unique_ptr<crypto::RecordSealer> sealer_;
  std::unique_ptr<uint8_t[]> scratch_;  // decompression input of a sealed record
  size_t scratch_bytes_ = 0;
  uint16_t key_id_ = 0;
  uint64_t under_key_ = 0;  // records sealed under key_id_
  uint64_t sealed_count_ = 0;
  uint64_t compressed_count_ = 0;
  uint64_t compress_ns_ = 0;
};

}  // namespace dp420
