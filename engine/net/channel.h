// The secure channel of the dp420 protocol (docs/PROTOCOL.md, "Channel"):
// the server's long-term identity (Ed25519), the ephemeral key exchange
// (X25519), the session keys derived from it and the client's key, and the
// sealing of every frame after the handshake with AES-256-GCM.
//
// A sealed frame keeps its 32-byte header in the clear, as the AEAD's
// associated data, and carries ciphertext + a 16-byte tag as its payload.
// The nonce is the direction and a per-direction frame counter, so a frame
// that is dropped, replayed, reordered or moved to another connection fails
// its tag, and so does every frame after it.
//
// Thread safety: ServerIdentity is immutable after construction; a
// FrameCipher belongs to one sender or one receiver at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "engine/crypto/secret.h"
#include "engine/net/frame.h"
#include "io/status.h"

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace dp420::net {

inline constexpr size_t kTagBytes = 16;            // AES-GCM tag after a sealed payload
inline constexpr size_t kEphemeralBytes = 32;      // X25519 public key
inline constexpr size_t kIdentityBytes = 32;       // Ed25519 public key
inline constexpr size_t kSignatureBytes = 64;      // Ed25519 signature
inline constexpr size_t kFingerprintBytes = 32;    // SHA-256 of the identity public key
inline constexpr size_t kSessionKeyBytes = 32;     // AES-256
// The largest plaintext a sealed frame carries.
inline constexpr uint32_t kMaxPlainBytes = kMaxPayloadBytes - kTagBytes;

// Which way a frame travels; part of every nonce, so the two directions
// never share one.
enum class ChannelDir : uint32_t { kAgentToServer = 1, kServerToAgent = 2 };

// The secrets of the channel live where every secret of dp420 does
// (engine/crypto/secret.h).
using crypto::Cleanse;
using crypto::ExcludeFromCoreDumps;
using crypto::SecretKey;

// The server's long-term signing key. Its fingerprint (SHA-256 of the public
// key, 64 hex digits) is written into each client's key file by client-add,
// and the agent refuses a server that cannot sign with the pinned key.
class ServerIdentity {
 public:
  // A fresh random identity.
  static Result<ServerIdentity> Generate();
  // From the 32-byte private seed stored in the clients file.
  static Result<ServerIdentity> FromSeed(const uint8_t seed[32]);

  const SecretKey& seed() const { return seed_; }
  const uint8_t* public_key() const { return public_; }
  std::string FingerprintHex() const;
  // Ed25519 signature of `msg`.
  Status Sign(std::span<const uint8_t> msg, uint8_t sig[kSignatureBytes]) const;

 private:
  SecretKey seed_;
  uint8_t public_[kIdentityBytes] = {};
};

// SHA-256 of an identity public key.
void IdentityFingerprint(const uint8_t public_key[kIdentityBytes],
                         uint8_t out[kFingerprintBytes]);
// True when `sig` is `public_key`'s Ed25519 signature of `msg`.
bool VerifySignature(const uint8_t public_key[kIdentityBytes], std::span<const uint8_t> msg,
                     const uint8_t sig[kSignatureBytes]);

// One side's ephemeral X25519 key pair, used for one handshake.
class Ephemeral {
 public:
  static Result<Ephemeral> Generate();
  const uint8_t* public_key() const { return public_; }
  // The shared secret with the peer's public key (kPermission for a
  // low-order or otherwise unusable peer key).
  Status Agree(const uint8_t peer[kEphemeralBytes], SecretKey* shared) const;

 private:
  SecretKey private_;
  uint8_t public_[kEphemeralBytes] = {};
};

// The keys of one connection, one per direction:
//   prk = HMAC-SHA-256(transcript_hash, shared || client_key)
//   key_dir = HMAC-SHA-256(prk, "dp420-v2 agent->server" or "... server->agent" || 0x01)
// (HKDF-SHA-256 with one output block.) Both the ephemeral secret and the
// client's key are needed, so neither a recorded session with a stolen
// client key later (forward secrecy) nor an on-path relay without it can
// derive them.
struct SessionKeys {
  SecretKey agent_to_server;
  SecretKey server_to_agent;
};
void DeriveSessionKeys(const SecretKey& shared, const uint8_t client_key[32],
                       const uint8_t transcript_hash[32], SessionKeys* out);

// AES-256-GCM for one direction of one connection. A frame is sealed or
// opened in pieces: Begin (the header is the associated data, the nonce the
// direction and the frame counter), Update over the payload in order, then
// Seal (writes the tag) or Open (checks it). The counter advances at Begin,
// so frames must be sealed in the order they go on the wire.
class FrameCipher {
 public:
  FrameCipher(const SecretKey& key, ChannelDir dir, bool encrypt);
  ~FrameCipher();
  FrameCipher(const FrameCipher&) = delete;
  FrameCipher& operator=(const FrameCipher&) = delete;

  void Begin(const FrameHeader& header);
  // Encrypts (sender) or decrypts (receiver) `len` bytes from `in` to `out`
  // (they may be the same).
  void Update(const uint8_t* in, uint8_t* out, size_t len);
  void Seal(uint8_t tag[kTagBytes]);
  // False when the tag does not match: the frame was forged or altered, and
  // the plaintext Update produced must not be used.
  [[nodiscard]] bool Open(const uint8_t tag[kTagBytes]);
  uint64_t frames() const { return counter_; }

 private:
  EVP_CIPHER_CTX* ctx_ = nullptr;
  ChannelDir dir_;
  bool encrypt_;
  bool open_ = false;  // between Begin and Seal/Open
  uint64_t counter_ = 0;
};

}  // namespace dp420::net
