// Sealing of stored objects with AES-256-GCM (encryption at rest).
//
// Every object a repository stores is sealed on the client with an AEAD
// whose associated data binds it to the repository and to its identity (a
// record: its kind, lengths, codec and the SHA-256 of its raw bytes; a small
// file: its kind and name), so that a record or file from another repository,
// swapped for another, or presented as another kind or length fails to open.
//
// ## Pack records
//
// A record is bound to what it is, not to where it lies, so that records can
// be placed by whoever stores them (the server of a remote backup, which
// holds no key) and copied unchanged to other packs by prune. Its key is one
// of 65,535 record keys, chosen at random by the writer for each pack:
//
//   record_key = HKDF-SHA-256(IKM = object key (keys.h), salt = empty,
//                             info = "dp420 record key v1" (19 bytes) || repo_id (16 bytes)
//                                    || key_id (u16 LE))
//
// and its 96-bit GCM nonce is drawn for every record from OpenSSL's RAND_bytes
// (a DRBG seeded by the kernel) and stored in front of it:
//
//   sealed record = nonce (12 bytes) || ciphertext (as long as the plaintext) || tag (16 bytes)
//
// Nonces never repeat but by chance: for n records sealed under one record
// key the probability of any repeat is below n^2 / 2^97; the writers' random
// choice of key_id spreads a repository's records over 2^16 keys, so that
// even 2^36 records (4 PiB of 64 KiB blocks) leave it below 2^-33.
//
// The associated data of a record is 64 bytes:
//
//   offset  size  field
//   0       16    repo_id
//   16      1     object kind: 1 data block, 2 leaf table page, 3 inner table page, 4 manifest
//   17      1     codec of the sealed plaintext: 0 none, 1 zstd, 2 lz4
//   18      2     key_id (u16 LE)
//   20      4     raw length in bytes (u32 LE): the object's length once decoded
//   24      4     plaintext length in bytes (u32 LE): the bytes sealed
//   28      4     zero
//   32      32    the SHA-256 of the object's raw bytes (what its reference carries)
//
// A record opened for a reference that expects other content (another SHA-256,
// kind, length or codec), or from another repository, fails; one copied to
// another place opens as the same object, which is what the reference asks for.

// ## Small files (manifests, heads, config payloads)
//
// A small file is sealed as one object under a key of its own:
//
//   file_key = HKDF-SHA-256(IKM = object key, salt = empty,
//                           info = "dp420 file key v1" (17 bytes) || file kind (1 byte)
//                                  || repo_id (16 bytes) || file salt (32 bytes))
//
// with a fresh random 32-byte file salt for every write and the nonce 0 (12
// zero bytes: the key is never used twice). The associated data is
//
//   repo_id (16 bytes) || file kind (1 byte) || identity length (u32 LE) || identity
//
// where the identity is the caller's name for what the file is (e.g. the
// volume, sequence and snapshot id of a manifest), so that a file copied
// over another's name fails to open. The sealed file is
//
//   file salt (32 bytes) || ciphertext || tag (16 bytes).
//
// Any mismatch — wrong key, another repository, position, kind, length,
// SHA-256 or identity, a flipped bit anywhere — opens as kCorruption
// ("authentication failed"), and no unauthenticated plaintext is returned
// (the output is zeroed).
//
// Thread safety: the functions are safe from any thread; a RecordSealer
// belongs to one thread at a time (it owns an OpenSSL cipher context).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "engine/crypto/keys.h"
#include "engine/crypto/secret.h"
#include "io/status.h"

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace dp420::crypto {

inline constexpr size_t kAesKeyBytes = 32;
inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;
inline constexpr size_t kFileSaltBytes = 32;
inline constexpr size_t kSha256Bytes = 32;
inline constexpr size_t kRecordAadBytes = 64;
// What sealing adds to a small file: its salt and the tag.
inline constexpr size_t kFileOverheadBytes = kFileSaltBytes + kGcmTagBytes;
// The largest record sealed: a pack is closed past 1 GiB.
inline constexpr uint32_t kMaxRecordPlainBytes = uint32_t{1} << 30;
// The largest small file sealed or opened (a manifest is a few KiB).
inline constexpr size_t kMaxFilePlainBytes = size_t{64} << 20;

inline constexpr char kFileKeyLabel[] = "dp420 file key v1";

using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// What a pack record holds; part of its associated data.
enum class ObjectKind : uint8_t {
  kDataBlock = 1,
  kLeafPage = 2,
  kInnerPage = 3,
  kManifest = 4,
};
// "data block", "leaf table page", "inner table page", "manifest".
const char* ObjectKindName(ObjectKind kind);

// What a small file is; part of its key and associated data.
enum class FileKind : uint8_t {
  kConfig = 1,
  kManifest = 2,
  kHead = 3,
  kLink = 4,
  kGroup = 5,  // a consistency group's manifest and the epoch counter
};
// "config", "manifest", "head", "link", "group".
const char* FileKindName(FileKind kind);

// ---- AES-256-GCM, one shot ----

// Encrypts `plain` into `out` (same length; may be the same buffer) and
// writes the tag. kInternal only when OpenSSL fails.
Status AesGcmSeal(std::span<const uint8_t, kAesKeyBytes> key,
                  std::span<const uint8_t, kGcmNonceBytes> nonce, std::span<const uint8_t> aad,
                  std::span<const uint8_t> plain, std::span<uint8_t> out,
                  std::span<uint8_t, kGcmTagBytes> tag);
// Decrypts `cipher` into `out` (same length; may be the same buffer) and
// checks the tag: false (and `out` zeroed) when it does not match.
[[nodiscard]] bool AesGcmOpen(std::span<const uint8_t, kAesKeyBytes> key,
                              std::span<const uint8_t, kGcmNonceBytes> nonce,
                              std::span<const uint8_t> aad, std::span<const uint8_t> cipher,
                              std::span<uint8_t> out, std::span<const uint8_t, kGcmTagBytes> tag);

// ---- Pack records ----

inline constexpr char kRecordKeyLabel[] = "dp420 record key v1";
// What sealing adds to a record: the nonce in front, the tag behind.
inline constexpr size_t kRecordOverheadBytes = kGcmNonceBytes + kGcmTagBytes;

// The record key `key_id` (1 to 65535).
Status DeriveRecordKey(const SecretKey& object_key, const RepoId& repo_id, uint16_t key_id,
                       SecretKey* out);

// A random key id from 1 to 65535 (a writer draws one for each pack).
Result<uint16_t> RandomKeyId();

// What a record is: everything its tag binds besides the repository.
struct RecordId {
  uint16_t key_id = 0;  // 1 .. 65535
  ObjectKind kind = ObjectKind::kDataBlock;
  uint8_t codec = 0;             // 0 none, 1 zstd, 2 lz4: how the sealed bytes decode
  uint32_t raw_len = 0;          // the object's bytes once decoded
  uint32_t plain_len_bytes = 0;  // the bytes sealed (stored length - kRecordOverheadBytes)
  Sha256Digest sha256{};         // of the object's raw bytes
};

// The 64 bytes of a record's associated data (the table above).
void RecordAad(const RepoId& repo_id, const RecordId& id,
               std::span<uint8_t, kRecordAadBytes> out);

// Seals and opens the records of one repository. It owns one cipher context
// and caches the last few record keys it used, so that sealing a pack's
// records one after another, or reading records of a handful of packs in
// turn, derives each key once and allocates nothing.
class RecordSealer {
 public:
  RecordSealer(const SecretKey& object_key, const RepoId& repo_id);
  ~RecordSealer();
  RecordSealer(const RecordSealer&) = delete;
  RecordSealer& operator=(const RecordSealer&) = delete;

  // Seals `plain` (id.plain_len_bytes long) into `out` (plain.size() +
  // kRecordOverheadBytes: nonce, ciphertext, tag) with a fresh random nonce.
  // `out` may lie kGcmNonceBytes before `plain` (in place), else apart from it.
  Status SealRecord(const RecordId& id, std::span<const uint8_t> plain, std::span<uint8_t> out);

  // Opens `sealed` (as stored) into `plain` (id.plain_len_bytes long; may start
  // kGcmNonceBytes after `sealed`, else apart from it). kCorruption when
  // `sealed` is not id.plain_len_bytes + kRecordOverheadBytes long or its tag
  // does not match; `plain` is then zeroed.
  Status OpenRecord(const RecordId& id, std::span<const uint8_t> sealed, std::span<uint8_t> plain);

  // Record keys derived so far (a measure of the cache's use).
  uint64_t keys_derived() const { return derived_; }

 private:
  static constexpr size_t kCachedKeys = 16;
  struct CachedKey {
    bool valid = false;
    uint16_t key_id = 0;
    uint64_t last_use = 0;
    SecretKey key;
  };
  // Makes record key `key_id` the context's key (from the cache, or derived).
  Status SelectKey(uint16_t key_id);
  // The entry a new key goes into: a free one, else the least recently used.
  size_t Victim() const;

  EVP_CIPHER_CTX* ctx_ = nullptr;
  SecretKey object_key_;
  RepoId repo_id_;
  std::array<CachedKey, kCachedKeys> cache_;
  size_t current_ = kCachedKeys;  // the cache entry whose key the context holds
  uint64_t uses_ = 0;
  uint64_t derived_ = 0;
};

// ---- Small files ----

// Seals `plain` (at most kMaxFilePlainBytes) as a file of `kind` named by
// `identity`: salt || ciphertext || tag (kFileOverheadBytes more).
Result<std::string> SealFile(const SecretKey& object_key, const RepoId& repo_id, FileKind kind,
                             std::string_view identity, std::string_view plain);
// Opens a file sealed by SealFile with the same repository, kind and
// identity: kCorruption naming the kind and identity when it is too short
// or too long, or its tag does not match.
Result<std::string> OpenFile(const SecretKey& object_key, const RepoId& repo_id, FileKind kind,
                             std::string_view identity, std::string_view sealed);

}  // namespace dp420::crypto
