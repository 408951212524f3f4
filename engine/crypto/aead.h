// Sealing of stored objects with AES-256-GCM (encryption at rest).
//
// Every object a repository stores is sealed on the client with an AEAD
// whose associated data binds it to the repository and to its identity and
// position, so that a record moved to another offset, pack or repository,
// swapped with another, or presented as another kind or length fails to open.
//
// ## Pack records
//
// Each pack gets a random 32-byte salt when it is created, stored in its
// header. Its key is
//
//   pack_key = HKDF-SHA-256(IKM = object key (keys.h), salt = empty,
//                           info = "dp420 pack key v1" (17 bytes) || repo_id (16 bytes)
//                                  || pack_id (u32 LE) || pack salt (32 bytes))
//
// and the 96-bit GCM nonce of a record is its offset in the pack in 4 KiB
// units (offset_4k), as 12 bytes: offset_4k as u32 little-endian, then 8 zero
// bytes. A pack is written once, append-only, by one writer, so no two records
// of a pack share an offset and no nonce repeats under a pack key; a pack
// written again (a rewrite, or a pack id reused after a crash) draws a new
// salt and so has a new key. A pack holds at most 2^18 records (1 GiB of
// 4 KiB units), far below GCM's limits for one key.
//
// The associated data of a record is 64 bytes:
//
//   offset  size  field
//   0       16    repo_id
//   16      4     pack_id (u32 LE)
//   20      4     offset_4k (u32 LE)
//   24      1     object kind: 1 data block, 2 leaf table page, 3 inner table page, 4 manifest
//   25      3     zero
//   28      4     plaintext length in bytes (u32 LE): the bytes sealed
//   32      32    the SHA-256 the object's reference carries (ObjRef::sha256: of the
//                 object's raw bytes)
//
// A sealed record is ciphertext (as long as the plaintext) || 16-byte tag.
//
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
inline constexpr size_t kPackSaltBytes = 32;
inline constexpr size_t kFileSaltBytes = 32;
inline constexpr size_t kSha256Bytes = 32;
inline constexpr size_t kRecordAadBytes = 64;
// What sealing adds to a small file: its salt and the tag.
inline constexpr size_t kFileOverheadBytes = kFileSaltBytes + kGcmTagBytes;
// The largest record: a pack is closed past 1 GiB.
inline constexpr uint32_t kMaxRecordPlainBytes = uint32_t{1} << 30;
// The largest small file sealed or opened (a manifest is a few KiB).
inline constexpr size_t kMaxFilePlainBytes = size_t{64} << 20;

inline constexpr char kPackKeyLabel[] = "dp420 pack key v1";
inline constexpr char kFileKeyLabel[] = "dp420 file key v1";

using PackSalt = std::array<uint8_t, kPackSaltBytes>;
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
};
// "config", "manifest", "head", "link".
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

// The key of pack `pack_id` with `salt` (the header above).
Status DerivePackKey(const SecretKey& object_key, const RepoId& repo_id, uint32_t pack_id,
                     const PackSalt& salt, SecretKey* out);

// Where a record lives and what it is: everything its tag binds besides the
// repository.
struct RecordId {
  uint32_t pack_id = 0;
  PackSalt pack_salt{};
  uint32_t offset_4k = 0;
  ObjectKind kind = ObjectKind::kDataBlock;
  uint32_t plain_len_bytes = 0;  // the plaintext sealed (stored length - kGcmTagBytes)
  Sha256Digest sha256{};         // the reference's SHA-256 of the object's raw bytes
};

// The 64 bytes of a record's associated data (the table above).
void RecordAad(const RepoId& repo_id, const RecordId& id,
               std::span<uint8_t, kRecordAadBytes> out);
// The 12-byte nonce of the record at `offset_4k`.
void RecordNonce(uint32_t offset_4k, std::span<uint8_t, kGcmNonceBytes> out);

// Seals and opens the records of one repository. It owns one cipher context
// and caches the keys of the last few packs it used, so that sealing a pack's
// records one after another, or reading records of a handful of packs in
// turn, derives each pack key once and allocates nothing.
class RecordSealer {
 public:
  RecordSealer(const SecretKey& object_key, const RepoId& repo_id);
  ~RecordSealer();
  RecordSealer(const RecordSealer&) = delete;
  RecordSealer& operator=(const RecordSealer&) = delete;

  // Seals `plain` (id.plain_len_bytes long) into `out` (plain.size() +
  // kGcmTagBytes: ciphertext, then the tag). `out` may start where `plain`
  // does (in place), not elsewhere inside it.
  Status SealRecord(const RecordId& id, std::span<const uint8_t> plain, std::span<uint8_t> out);
  // Opens `sealed` (as read from the pack) into `plain` (id.plain_len_bytes
  // long; may start where `sealed` does). kCorruption naming the record when
  // `sealed` is not id.plain_len_bytes + kGcmTagBytes long or its tag does
  // not match; `plain` is then zeroed.
  Status OpenRecord(const RecordId& id, std::span<const uint8_t> sealed, std::span<uint8_t> plain);

  // Pack keys derived so far (a measure of the cache's use).
  uint64_t pack_keys_derived() const { return derived_; }

 private:
  static constexpr size_t kCachedPacks = 8;
  struct CachedPack {
    bool valid = false;
    uint32_t pack_id = 0;
    PackSalt salt{};
    uint64_t last_use = 0;
    SecretKey key;
  };
  // Makes the pack of `id` the context's key (from the cache, or derived).
  Status SelectPack(const RecordId& id);
  // The entry a new pack key goes into: a free one, else the least recently used.
  size_t Victim() const;

  EVP_CIPHER_CTX* ctx_ = nullptr;
  SecretKey object_key_;
  RepoId repo_id_;
  std::array<CachedPack, kCachedPacks> cache_;
  size_t current_ = kCachedPacks;  // the cache entry whose key the context holds
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
