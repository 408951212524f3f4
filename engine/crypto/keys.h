// The repository's master key and the subkeys derived from it.
//
// The master key is 32 random bytes, made once when a repository is created
// and kept only wrapped in key slots (keyslot.h). Nothing is keyed with it
// directly: every key in use is derived with HKDF-SHA-256 (RFC 5869; OpenSSL's
// EVP_KDF "HKDF", extract and expand), with an empty salt (HashLen zero
// bytes) and an info string that starts with a label naming its use:
//
//   object key      = HKDF(IKM = master key, info = "dp420 object key v1" || repo_id), 32 bytes
//                     seals stored objects: every pack record's key and every
//                     small file's key are derived from it (aead.h)
//   seal key        = HKDF(IKM = master key, info = "dp420 seal key v1" || repo_id), 32 bytes
//                     the HMAC-SHA-256 key of sealed JSON files
//   block-id secret = HKDF(IKM = master key, info = "dp420 block id secret v1" || repo_id),
//                     192 bytes: the secret of the keyed XXH3-128 block ids
//                     (simd::kHashSecretBytes)
//
// repo_id is the repository's 16-byte id. The labels of every derivation of
// dp420 (these and aead.h's "dp420 record key v1", "dp420 file key v1") differ
// in their seventh byte, so no derivation's info is another's.
//
// Thread safety: values and pure functions, safe from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/crypto/secret.h"
#include "io/status.h"

namespace dp420::crypto {

inline constexpr size_t kRepoIdBytes = 16;
inline constexpr size_t kMasterKeyBytes = 32;
inline constexpr size_t kBlockIdSecretBytes = 192;  // simd::kHashSecretBytes

using RepoId = std::array<uint8_t, kRepoIdBytes>;
using BlockIdSecret = SecretBytes<kBlockIdSecretBytes>;

inline constexpr char kObjectKeyLabel[] = "dp420 object key v1";
inline constexpr char kSealKeyLabel[] = "dp420 seal key v1";
inline constexpr char kBlockIdSecretLabel[] = "dp420 block id secret v1";

// HKDF-SHA-256 of `ikm` with `salt` (empty: HashLen zero bytes) and `info`
// into `out` (1 to 8160 bytes). kInternal only when OpenSSL fails.
Status Hkdf(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
            std::span<const uint8_t> info, std::span<uint8_t> out);

// HKDF-SHA-256 with an empty salt and info = label || context.
Status DeriveKey(std::span<const uint8_t> ikm, const char* label,
                 std::span<const uint8_t> context, std::span<uint8_t> out);

// The 32 random bytes every key of a repository comes from.
class MasterKey {
 public:
  // A fresh key from the kernel's CSPRNG.
  static Result<MasterKey> Generate();
  // From bytes unwrapped from a key slot.
  static MasterKey FromBytes(std::span<const uint8_t, kMasterKeyBytes> bytes);

  std::span<const uint8_t, kMasterKeyBytes> bytes() const { return key_.span(); }

 private:
  MasterKey() = default;
  SecretKey key_;
};

// The subkeys a repository's client uses.
struct RepositoryKeys {
  SecretKey object_key;
  SecretKey seal_key;
  BlockIdSecret block_id_secret;
};

// Derives every subkey of `master` for repository `repo_id` into `out`.
Status DeriveRepositoryKeys(const MasterKey& master, const RepoId& repo_id,
                            RepositoryKeys* out);

}  // namespace dp420::crypto
