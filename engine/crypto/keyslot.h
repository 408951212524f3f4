// Key slots: the repository's master key wrapped under a passphrase or a key
// file, so that one master key can be opened by any of several secrets and a
// secret can be changed without re-encrypting the repository.
//
// A slot holds the master key encrypted under a key-encryption key (KEK):
//
//   passphrase slot: KEK = scrypt(passphrase, salt = 32 random bytes, N, r, p), 32 bytes
//                    (RFC 7914, OpenSSL's EVP_PBE_scrypt); salt, N, r and p are stored
//   key-file slot:   KEK = the 32 bytes of a key file (random, mode 0600)
//
//   wrapped key || tag = AES-256-GCM(KEK, nonce = 12 random bytes, master key,
//                        AAD = repo_id (16 bytes) || slot_id (u32 LE) || kind (1 byte))
//
// with kind 1 for a passphrase slot, 2 for a key-file slot: a slot copied into
// another repository, renumbered or relabelled fails to open. The scrypt
// parameters and salt need no tag of their own: changing them changes the KEK.
//
// A passphrase or key file that does not open the slot is Code::kBadKey
// (the CLI's exit code 11). A slot whose text is damaged is kCorruption
// naming the field; parameters that would make a client spend more than
// kMaxScryptMemoryBytes or kMaxScryptWork (a hostile or damaged slot) are
// refused as damage before anything is allocated.
//
// Default scrypt parameters: N = 2^17, r = 8, p = 1, i.e. 128 MiB and 0.47-0.52 s
// of CPU per unlock measured on an AMD EPYC (Zen 3) core under KVM with OpenSSL
// 3.0 (dp420_bench_crypto, UnwrapPassphrase/default); N = 2^16 took 0.25 s,
// below the 0.3 s aimed at, and 2^18 took 1.0 s and 256 MiB. Costly for a
// guesser (each guess needs the 128 MiB), bearable for an unlock.
//
// Secrets (passphrases, KEKs, the master key) are cleansed after use and
// never appear in a Status message.
//
// The JSON of a slot (one object; every field required, no other allowed):
//
//   {"format":"dp420-key-slot","format_version":1,"slot_id":1,"kind":"passphrase",
//    "repo_id":"<32 hex>","kdf":"scrypt","scrypt_n":131072,"scrypt_r":8,"scrypt_p":1,
//    "kdf_salt":"<64 hex>","cipher":"aes-256-gcm","nonce":"<24 hex>",
//    "wrapped_key":"<64 hex>","tag":"<32 hex>"}
//
// A key-file slot has "kind":"key-file","kdf":"none" and no scrypt_* or
// kdf_salt fields. Hex digits are lower case.
//
// Thread safety: values and pure functions, safe from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "engine/crypto/aead.h"
#include "engine/crypto/keys.h"
#include "engine/crypto/secret.h"
#include "io/status.h"

namespace dp420::crypto {

inline constexpr size_t kKdfSaltBytes = 32;
inline constexpr size_t kKeyFileBytes = 32;
inline constexpr uint32_t kKeySlotFormatVersion = 1;
// A slot's JSON is a few hundred bytes; more is refused before it is parsed.
inline constexpr size_t kMaxKeySlotJsonBytes = 4096;

struct ScryptParams {
  uint64_t n = 0;  // CPU/memory cost, a power of two >= 2
  uint32_t r = 0;  // block size
  uint32_t p = 0;  // parallelism
};
inline constexpr ScryptParams kDefaultScrypt{uint64_t{1} << 17, 8, 1};

// Bounds on parameters, checked for every slot read and written.
inline constexpr uint64_t kMaxScryptN = uint64_t{1} << 22;
inline constexpr uint32_t kMaxScryptR = 32;
inline constexpr uint32_t kMaxScryptP = 16;
inline constexpr uint64_t kMaxScryptMemoryBytes = uint64_t{1} << 30;  // 128 * r * N
inline constexpr uint64_t kMaxScryptWork = uint64_t{1} << 25;         // N * r * p: 32x default

// The memory scrypt needs for its table: 128 * r * N bytes.
uint64_t ScryptMemoryBytes(const ScryptParams& params);
// kInvalidArgument naming the bound `params` exceed (N not a power of two
// from 2 to kMaxScryptN, r or p out of range, memory or work too large).
Status CheckScryptParams(const ScryptParams& params);
// scrypt of `passphrase` and `salt` into `out` (1 to 1024 bytes), after
// CheckScryptParams.
Status Scrypt(std::string_view passphrase, std::span<const uint8_t> salt,
              const ScryptParams& params, std::span<uint8_t> out);

enum class SlotKind : uint8_t { kPassphrase = 1, kKeyFile = 2 };
// "passphrase", "key-file".
const char* SlotKindName(SlotKind kind);

// One key slot (no secret: the master key only wrapped).
struct KeySlot {
  uint32_t slot_id = 0;
  SlotKind kind = SlotKind::kPassphrase;
  RepoId repo_id{};
  ScryptParams scrypt{};                           // passphrase slots
  std::array<uint8_t, kKdfSaltBytes> kdf_salt{};   // passphrase slots
  std::array<uint8_t, kGcmNonceBytes> nonce{};
  std::array<uint8_t, kMasterKeyBytes> wrapped_key{};
  std::array<uint8_t, kGcmTagBytes> tag{};
};

// Wraps `master` under `passphrase` (not empty) with a fresh salt and nonce.
Result<KeySlot> WrapWithPassphrase(const MasterKey& master, const RepoId& repo_id,
                                   uint32_t slot_id, std::string_view passphrase,
                                   const ScryptParams& params = kDefaultScrypt);
// Wraps `master` under the 32 bytes of a key file.
Result<KeySlot> WrapWithKeyFile(const MasterKey& master, const RepoId& repo_id,
                                uint32_t slot_id, const SecretKey& file_key);

// The master key of a passphrase slot: kBadKey when `passphrase` does not
// open it; kCorruption when the slot belongs to another repository or its
// parameters are out of bounds; kInvalidArgument for a key-file slot.
Result<MasterKey> UnwrapWithPassphrase(const KeySlot& slot, const RepoId& repo_id,
                                       std::string_view passphrase);
// The master key of a key-file slot: as UnwrapWithPassphrase.
Result<MasterKey> UnwrapWithKeyFile(const KeySlot& slot, const RepoId& repo_id,
                                    const SecretKey& file_key);

// The slot as one line of JSON (the header above), without a newline.
std::string KeySlotToJson(const KeySlot& slot);
// Parses a slot strictly: kCorruption naming the field that is missing,
// unknown, given twice, of the wrong type, length or range (or for a NUL byte
// anywhere in `text`); kVersion for a newer
// format_version. Refuses text longer than kMaxKeySlotJsonBytes unparsed.
Result<KeySlot> KeySlotFromJson(std::string_view text);

// Creates a key file at `path` (which must not exist): 32 random bytes, mode
// 0600, synced with its folder; `key` receives them.
Status CreateKeyFile(const std::string& path, SecretKey* key);
// Reads a key file into `key`: kPermission when others may read or write it
// (as for the clients' key files), kBadKey when it is not 32 bytes long.
Status LoadKeyFile(const std::string& path, SecretKey* key);

}  // namespace dp420::crypto
