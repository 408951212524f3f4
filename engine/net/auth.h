// Client authentication for the repository server: per-client 32-byte keys,
// an HMAC-SHA-256 challenge-response in both directions (docs/PROTOCOL.md),
// and the clients file the server reads them from.
//
// The clients file is a sealed JSON file (engine/core/manifest.h), mode 0600:
//   {"format":"dp420-clients","format_version":1,
//    "clients":[{"name":"db1","key":"<64 hex>","role":"append"}, ...]}
// role "append" may back up, list, restore and verify its own volumes;
// "admin" may also delete (prune) — so a compromised backup client cannot
// erase its history. A key file holds one line: the key as 64 hex digits.
//
// Thread safety: pure functions; ClientRegistry is a value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/status.h"

namespace dp420::net {

inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;

struct ClientKey {
  std::string name;
  uint8_t key[kKeyBytes] = {};
  std::string role = "append";  // "append" or "admin"
};

// Which side proves: the client answers the server's challenge with
// kClientProof; the server then proves it holds the same key with kServerProof.
enum class ProofSide { kClient, kServer };

// HMAC-SHA-256(key, "dp420-auth-v1" || side || u32 len(name) || name ||
// client_nonce || server_nonce).
void ComputeProof(const uint8_t key[kKeyBytes], ProofSide side, const std::string& client_name,
                  const uint8_t client_nonce[kNonceBytes],
                  const uint8_t server_nonce[kNonceBytes], uint8_t out[kProofBytes]);
// Constant-time comparison of two proofs.
bool ProofsEqual(const uint8_t a[kProofBytes], const uint8_t b[kProofBytes]);
// Fills `out` from the kernel's CSPRNG.
Status RandomNonce(uint8_t* out, size_t len);

// Client names follow volume names: 1-64 of [A-Za-z0-9._-], not starting with '.'.
bool ValidClientName(const std::string& name);

class ClientRegistry {
 public:
  // Loads `path` (absolute). kNotFound when absent; kCorruption with the
  // reason for a damaged or malformed file; kInvalidArgument for a relative path.
  static Result<ClientRegistry> Load(const std::string& path);
  // Writes atomically (0600).
  Status Save(const std::string& path) const;

  const ClientKey* Find(const std::string& name) const;
  // Adds `name` with a fresh random key (kExists when present).
  Result<ClientKey> Add(const std::string& name, const std::string& role);
  Status Remove(const std::string& name);
  const std::vector<ClientKey>& clients() const { return clients_; }

 private:
  std::vector<ClientKey> clients_;
};

// Key files: one line of 64 hex digits, mode 0600. WriteKeyFile refuses to
// overwrite. ReadKeyFile refuses a file readable by group or others.
Status WriteKeyFile(const std::string& path, const uint8_t key[kKeyBytes]);
Status ReadKeyFile(const std::string& path, uint8_t key[kKeyBytes]);

}  // namespace dp420::net
