// Manifests and other sealed JSON files (config, volume heads).
//
// A sealed file is two lines: a JSON document on one line, then
// "hmac-sha256 <hex>" where <hex> is the HMAC-SHA-256 of the first line's
// bytes (including its newline) under the repository's seal key, derived from
// keys/hash.key. Only a holder of the repository key can write a file that
// reads back: an edited, re-sealed or forged manifest is refused. A
// manifest's seal is also its identity in the snapshot hash chain (a child
// records its parent's seal as parent_manifest_sha256).
//
// Plain files ("sha256 <hex>", a bare SHA-256) are the version-1 repository
// seal, still read by `dp420 upgrade`, and the seal of files that live outside
// a repository (the server's clients file): they catch damage, not forgery.
//
// Thread safety: plain data and pure functions; a SealKey is immutable.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/format.h"
#include "engine/core/text.h"  // EscapeBytes: how source_path is written
#include "engine/crypto/keys.h"
#include "engine/crypto/secret.h"
#include "io/status.h"

namespace dp420 {

using Json = nlohmann::ordered_json;

// The key that seals a repository's JSON files: HMAC-SHA-256 under
// "dp420 seals v1" of keys/hash.key, so the repository keeps one secret.
// Cleansed on destruction.
//
// In an encrypted repository the seal key also carries the object key:
// what it seals is encrypted first (crypto::SealFile, the file kind taken
// from the document's "format"), and the sealed line is then
//   {"format":"dp420-sealed","kind":"manifest","data":"<base64 of salt || ciphertext || tag>"}
// under the same HMAC. Such a key opens only encrypted documents.
class SealKey {
 public:
  static constexpr size_t kBytes = 32;
  // Derives the seal key from the repository key's bytes.
  static SealKey Derive(const uint8_t* repo_key, size_t len);
  SealKey() = default;
  ~SealKey();
  SealKey(const SealKey& o) : key_(o.key_), cipher_(o.cipher_) {}
  SealKey& operator=(const SealKey& o) = default;
  // Hex HMAC-SHA-256 of `bytes` under this key.
  std::string Mac(const std::string& bytes) const;
  // Makes this key encrypt what it seals (an encrypted repository's).
  void SetCipher(const crypto::SecretKey& object_key, const crypto::RepoId& repo_id);
  bool encrypts() const { return cipher_ != nullptr; }

  struct Cipher {
    crypto::SecretKey object_key;
    crypto::RepoId repo_id{};
  };
  const Cipher* cipher() const { return cipher_.get(); }

 private:
  std::array<uint8_t, kBytes> key_{};
  std::shared_ptr<const Cipher> cipher_;
};

// Serializes `doc` as a file sealed under `key`; `seal_hex` (optional)
// receives the seal.
std::string SealJson(const Json& doc, const SealKey& key, std::string* seal_hex = nullptr);
// Parses a file sealed under `key`; kCorruption naming `what` when the seal
// or JSON is bad. With `key` null the seal is read but cannot be checked:
// only for a reader that holds no repository key and got the text from the
// repository's server over the authenticated channel (the agent).
Result<Json> UnsealJson(const std::string& text, const std::string& what, const SealKey* key,
                        std::string* seal_hex = nullptr);
// The plain seal ("sha256 <hex>"): repository format 1, and files outside a
// repository (the clients file).
std::string SealJsonPlain(const Json& doc, std::string* seal_hex = nullptr);
Result<Json> UnsealJsonPlain(const std::string& text, const std::string& what,
                             std::string* seal_hex = nullptr);

// An unsigned integer field of a file or message read from outside, as T:
// throws std::out_of_range (naming the bound) unless `v` is a JSON integer
// from 0 to T's maximum. nlohmann's get<T>() would convert a floating-point
// value (undefined behaviour when out of range), wrap a negative one and
// truncate one too large.
uint64_t JsonUnsigned(const Json& v, uint64_t max);
template <typename T>
T JsonUint(const Json& v) {
  return static_cast<T>(JsonUnsigned(v, std::numeric_limits<T>::max()));
}

Json ObjRefToJson(const ObjRef& ref);
Result<ObjRef> ObjRefFromJson(const Json& j);

// The manifest of one snapshot. Field meanings: docs/FORMAT.md.
struct Manifest {
  uint32_t format_version = kFormatVersion;
  std::string repo_id;             // hex
  std::string snapshot_id;         // 16 hex digits
  std::string volume;
  std::string parent;              // empty for a full backup
  std::string parent_manifest_sha256;  // hex seal of the parent's manifest
  uint64_t sequence = 0;           // 1, 2, ... per volume
  std::string created;             // UTC, RFC 3339 with microseconds
  uint64_t created_unix_ns = 0;
  uint32_t block_size = 0;
  uint64_t volume_size = 0;
  uint64_t blocks_total = 0;
  uint64_t blocks_changed = 0;     // differ from the parent (all non-zero for a full)
  uint64_t blocks_zero = 0;
  uint64_t blocks_stored = 0;      // written by this snapshot
  uint64_t bytes_written = 0;      // data + table pages written by this snapshot
  uint64_t bytes_read = 0;
  double seconds = 0;
  uint32_t table_levels = 1;
  ObjRef table_root{};
  std::string checksum_sha256;     // hex; see docs/FORMAT.md
  std::string source_path;         // absolute, EscapeBytes'd: any bytes as UTF-8
  std::string source_kind;         // "file" or "block-device"
  Json node_topology = Json::object();
  std::string tool_version;
  std::string client;              // the server client that owns the volume ("" local)
  // How the backup compressed changed blocks ("off", "lz4", "zstd:3"; "" when
  // not recorded: older writers, remote backups), whether `auto` chose it, and
  // what auto measured (auto_compression.h; empty unless auto).
  std::string compression;
  bool compression_auto = false;
  Json compression_measured = Json::object();

  // Derived when read:
  std::string seal;                // the seal of this manifest's JSON line (hex)
  std::string file_name;           // "SEQ-ID.manifest"
  // The parent in the snapshot hash chain: `parent` and its seal, or, when
  // the parent was forgotten, the nearest kept ancestor its link names
  // (links.h; "" when none is kept). Set when listed from a repository.
  std::string chain_parent;
  std::string chain_parent_seal;
  bool linked = false;             // chain_parent comes from a link
  bool is_protected = false;       // a protect marker keeps it from policies

  Json ToJson() const;
  static Result<Manifest> FromJson(const Json& j, const std::string& what);
  // A sealed manifest file's text: unsealed under `key` (see UnsealJson for a
  // null key), parsed, with seal and file_name set; kCorruption naming `what`
  // when anything is wrong.
  static Result<Manifest> Parse(const std::string& sealed, const std::string& what,
                                const SealKey* key);
  std::string FileName() const;    // "%010llu-<id>.manifest"
  uint32_t BlockLen(uint64_t block) const { return dp420::BlockLen(volume_size, block_size, block); }
};

// Splits a manifest file name "SEQUENCE-ID.manifest"; false when it is not
// one. What a damaged manifest is known by.
bool ParseManifestName(const std::string& name, uint64_t* sequence, std::string* id);

// True for names of 1..64 chars of [A-Za-z0-9._-] not starting with '.'.
bool ValidVolumeName(const std::string& name);

}  // namespace dp420
