// Client authentication for the repository server: per-client 32-byte keys,
// HMAC-SHA-256 proofs in both directions over the handshake's transcript
// (docs/PROTOCOL.md), and the clients file the server reads them from.
//
// The clients file is a sealed JSON file (engine/core/manifest.h), mode 0600,
// owned by the server's user:
//   {"format":"dp420-clients","format_version":2,
//    "server_identity":"<64 hex: the server's Ed25519 seed>",
//    "clients":[{"name":"db1","key":"<64 hex>","role":"append",
//                "max_bytes":N, ...optional limits (ClientLimits)}, ...]}
// role "append" may back up, list, restore and verify its own volumes;
// "admin" may also delete (prune) — so a compromised backup client cannot
// erase its history. A key file holds the key as 64 hex digits and the
// server's pinned identity: a second line "server-id <64 hex>".
//
// Thread safety: pure functions; ClientRegistry is a value.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/net/channel.h"
#include "io/status.h"

namespace dp420::net {

inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;

// Per-client limits (docs/FORMAT.md, "The clients file"). Absent: the
// server's default (ServerOptions::client_defaults); 0: no limit.
struct ClientLimits {
  std::optional<uint64_t> max_volumes;        // volumes it may own
  std::optional<uint64_t> max_bytes;          // bytes its snapshots may have written (quota)
  std::optional<uint64_t> max_backups;        // backups at once, running or awaiting resume
  std::optional<uint64_t> max_waiting;        // backups awaiting their agent's resume
  std::optional<uint64_t> max_stripe_memory;  // bytes of receive buffers its stripes may pin
  std::optional<uint64_t> max_sessions;       // authenticated connections at once (stripes too)
  // Each limit: this one when set, else `defaults`' (0: none).
  ClientLimits Over(const ClientLimits& defaults) const;
  // The value of a limit as a bound: UINT64_MAX for 0 or absent.
  static uint64_t Bound(const std::optional<uint64_t>& v);
};

// A registered client. The key lives in a SecretKey (engine/crypto/secret.h): on a page
// excluded from core dumps and cleansed when this or any copy goes away.
struct ClientKey {
  std::string name;
  SecretKey key;  // kKeyBytes
  std::string role = "append";  // "append" or "admin"
  ClientLimits limits;
};

// SHA-256 of a client's key, hex: identifies the key without holding it.
std::string KeyDigest(const ClientKey& k);

// The lock every writer of a clients file holds from reading it to renaming
// the new one in place: an exclusive flock on "PATH.lock" (created 0600).
class ClientsFileLock {
 public:
  static Result<ClientsFileLock> Acquire(const std::string& clients_path);
  ClientsFileLock(ClientsFileLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ClientsFileLock& operator=(ClientsFileLock&&) = delete;
  ~ClientsFileLock();

 private:
  explicit ClientsFileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Which side proves: the client answers the server's challenge with
// kClientProof; the server then proves it holds the same key with kServerProof.
enum class ProofSide { kClient, kServer };

// HMAC-SHA-256(key, "dp420-auth-v2" || side || transcript_hash), where the
// transcript hash covers both ephemeral keys, the client's name and the
// server's identity (conn.cc).
void ComputeProof(const uint8_t key[kKeyBytes], ProofSide side,
                  const uint8_t transcript_hash[32], uint8_t out[kProofBytes]);
// Constant-time comparison of two proofs.
bool ProofsEqual(const uint8_t a[kProofBytes], const uint8_t b[kProofBytes]);
// Fills `out` from the kernel's CSPRNG.
Status RandomNonce(uint8_t* out, size_t len);

// Client names follow volume names: 1-64 of [A-Za-z0-9._-], not starting with '.'.
bool ValidClientName(const std::string& name);

// Refuses (kPermission, naming the fix) a file of `kind` ("clients file",
// "retention file") that another user could have written: not owned by this
// process's user, or writable by group or others.
Status CheckPolicyFileSafe(const std::string& kind, const std::string& path,
                           const struct stat& st);

class ClientRegistry {
 public:
  // Loads `path` (absolute). kNotFound when absent; kCorruption with the
  // reason for a damaged or malformed file; kInvalidArgument for a relative
  // path; kPermission (naming the file, its mode and owner, and the fix)
  // unless it is owned by this process's user and not writable by group or
  // others.
  static Result<ClientRegistry> Load(const std::string& path);
  // The checks of Load on a clients file's text, read from `path`.
  static Result<ClientRegistry> Parse(const std::string& text, const std::string& path);
  // Writes atomically, mode 0600: a new temp file of a random name in the
  // same directory (O_EXCL|O_NOFOLLOW), fsynced, renamed over `path`, and
  // the directory fsynced. The caller holds ClientsFileLock.
  Status Save(const std::string& path) const;
  // Sets `name`'s limits (kNotFound when it is not registered).
  Status SetLimits(const std::string& name, const ClientLimits& limits);

  const ClientKey* Find(const std::string& name) const;
  // The server's identity; null for a file written before identities.
  const ServerIdentity* identity() const { return identity_.get(); }
  // Creates the identity when there is none (the caller saves the file).
  Status EnsureIdentity();
  // Replaces the identity with a fresh one: every key file must then be
  // given the new server-id.
  Status RotateIdentity();
  // Adds `name` with a fresh random key (kExists when present).
  Result<ClientKey> Add(const std::string& name, const std::string& role);
  Status Remove(const std::string& name);
  const std::vector<ClientKey>& clients() const { return clients_; }

 private:
  std::vector<ClientKey> clients_;
  std::shared_ptr<const ServerIdentity> identity_;
};

// Key files, mode 0600: the key as 64 hex digits, then "server-id " and the
// server's fingerprint (64 hex digits). WriteKeyFile refuses to overwrite.
// ReadKeyFile refuses a file readable by group or others, and one without a
// server-id (kInvalidArgument saying how to add it).
Status WriteKeyFile(const std::string& path, const uint8_t key[kKeyBytes],
                    const std::string& server_id_hex);
Status ReadKeyFile(const std::string& path, uint8_t key[kKeyBytes],
                   uint8_t server_id[kFingerprintBytes]);

}  // namespace dp420::net
