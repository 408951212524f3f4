#include "engine/net/channel.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstring>

#include "io/assert.h"
#include "io/random.h"
#include "simd/simd.h"

namespace dp420::net {

namespace {

// An EVP_PKEY that frees itself.
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Status CryptoError(const char* what) {
  return Status::Internal(std::string("OpenSSL failed: ") + what);
}

void Hmac(const uint8_t* key, size_t key_len, const uint8_t* msg, size_t msg_len,
          uint8_t out[32]) {
  unsigned int out_len = 32;
  uint8_t* r = HMAC(EVP_sha256(), key, static_cast<int>(key_len), msg, msg_len, out, &out_len);
  DP420_ASSERT(r != nullptr);
  DP420_ASSERT(out_len == 32);
}

}  // namespace

// ---- ServerIdentity ----

Result<ServerIdentity> ServerIdentity::Generate() {
  uint8_t seed[32];
  DP420_RETURN_IF_ERROR(io::FillRandom(seed, sizeof(seed)));
  auto id = FromSeed(seed);
  Cleanse(seed, sizeof(seed));
  return id;
}

Result<ServerIdentity> ServerIdentity::FromSeed(const uint8_t seed[32]) {
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed, 32));
  if (!key) return CryptoError("Ed25519 key from seed");
  ServerIdentity id;
  std::memcpy(id.seed_.data(), seed, 32);
  size_t len = kIdentityBytes;
  if (EVP_PKEY_get_raw_public_key(key.get(), id.public_, &len) != 1 || len != kIdentityBytes) {
    return CryptoError("Ed25519 public key");
  }
  return id;
}

std::string ServerIdentity::FingerprintHex() const {
  uint8_t fp[kFingerprintBytes];
  IdentityFingerprint(public_, fp);
  return simd::ToHex(fp, sizeof(fp));
}

Status ServerIdentity::Sign(std::span<const uint8_t> msg, uint8_t sig[kSignatureBytes]) const {
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed_.data(), 32));
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  size_t len = kSignatureBytes;
  bool ok = key && md && EVP_DigestSignInit(md, nullptr, nullptr, nullptr, key.get()) == 1 &&
            EVP_DigestSign(md, sig, &len, msg.data(), msg.size()) == 1 && len == kSignatureBytes;
  EVP_MD_CTX_free(md);
  return ok ? Status::Ok() : CryptoError("Ed25519 signature");
}

void IdentityFingerprint(const uint8_t public_key[kIdentityBytes],
                         uint8_t out[kFingerprintBytes]) {
  simd::Sha256(public_key, kIdentityBytes, out);
}

bool VerifySignature(const uint8_t public_key[kIdentityBytes], std::span<const uint8_t> msg,
                     const uint8_t sig[kSignatureBytes]) {
  Pkey key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, public_key, kIdentityBytes));
  if (!key) return false;
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md && EVP_DigestVerifyInit(md, nullptr, nullptr, nullptr, key.get()) == 1 &&
            EVP_DigestVerify(md, sig, kSignatureBytes, msg.data(), msg.size()) == 1;
  EVP_MD_CTX_free(md);
  return ok;
}

// ---- Ephemeral ----

Result<Ephemeral> Ephemeral::Generate() {
  Ephemeral e;
  DP420_RETURN_IF_ERROR(io::FillRandom(e.private_.data(), 32));
  Pkey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, e.private_.data(), 32));
  size_t len = kEphemeralBytes;
  if (!key || EVP_PKEY_get_raw_public_key(key.get(), e.public_, &len) != 1 ||
      len != kEphemeralBytes) {
    return CryptoError("X25519 key");
  }
  return e;
}

Status Ephemeral::Agree(const uint8_t peer[kEphemeralBytes], SecretKey* shared) const {
  Pkey mine(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_.data(), 32));
  Pkey theirs(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer, kEphemeralBytes));
  if (!mine || !theirs) return CryptoError("X25519 keys");
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(mine.get(), nullptr);
  size_t len = 32;
  // OpenSSL refuses an all-zero result (a low-order peer key).
  bool ok = ctx && EVP_PKEY_derive_init(ctx) == 1 &&
            EVP_PKEY_derive_set_peer(ctx, theirs.get()) == 1 &&
            EVP_PKEY_derive(ctx, shared->data(), &len) == 1 && len == 32;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return Status::Make(Code::kPermission, "the peer's key exchange value is unusable");
  return Status::Ok();
}

// ---- Session keys ----

void DeriveSessionKeys(const SecretKey& shared, const uint8_t client_key[32],
                       const uint8_t transcript_hash[32], SessionKeys* out) {
  uint8_t ikm[64];
  std::memcpy(ikm, shared.data(), 32);
  std::memcpy(ikm + 32, client_key, 32);
  SecretKey prk;
  Hmac(transcript_hash, 32, ikm, sizeof(ikm), prk.data());
  Cleanse(ikm, sizeof(ikm));
  static const char kA2S[] = "dp420-v2 agent->server\x01";
  static const char kS2A[] = "dp420-v2 server->agent\x01";
  Hmac(prk.data(), 32, reinterpret_cast<const uint8_t*>(kA2S), sizeof(kA2S) - 1,
       out->agent_to_server.data());
  Hmac(prk.data(), 32, reinterpret_cast<const uint8_t*>(kS2A), sizeof(kS2A) - 1,
       out->server_to_agent.data());
}

// ---- FrameCipher ----

FrameCipher::FrameCipher(const SecretKey& key, ChannelDir dir, bool encrypt)
    : dir_(dir), encrypt_(encrypt) {
  ctx_ = EVP_CIPHER_CTX_new();
  DP420_ASSERT(ctx_ != nullptr);
  int ok = encrypt ? EVP_EncryptInit_ex(ctx_, EVP_aes_256_gcm(), nullptr, key.data(), nullptr)
                   : EVP_DecryptInit_ex(ctx_, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
  DP420_ASSERT(ok == 1);
}

FrameCipher::~FrameCipher() { EVP_CIPHER_CTX_free(ctx_); }

void FrameCipher::Begin(const FrameHeader& header) {
  DP420_ASSERT(!open_);
  uint8_t iv[12];
  uint32_t dir = static_cast<uint32_t>(dir_);
  std::memcpy(iv, &dir, 4);
  std::memcpy(iv + 4, &counter_, 8);
  ++counter_;
  DP420_ASSERT(counter_ != 0);  // 2^64 frames: never reached
  int ok = encrypt_ ? EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv)
                    : EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv);
  DP420_ASSERT(ok == 1);
  int len = 0;
  ok = encrypt_ ? EVP_EncryptUpdate(ctx_, nullptr, &len,
                                    reinterpret_cast<const uint8_t*>(&header), sizeof(header))
                : EVP_DecryptUpdate(ctx_, nullptr, &len,
                                    reinterpret_cast<const uint8_t*>(&header), sizeof(header));
  DP420_ASSERT(ok == 1);
  open_ = true;
}

void FrameCipher::Update(const uint8_t* in, uint8_t* out, size_t len) {
  DP420_ASSERT(open_);
  while (len > 0) {
    int piece = static_cast<int>(std::min<size_t>(len, 1u << 30));
    int done = 0;
    int ok = encrypt_ ? EVP_EncryptUpdate(ctx_, out, &done, in, piece)
                      : EVP_DecryptUpdate(ctx_, out, &done, in, piece);
    DP420_ASSERT(ok == 1);
    DP420_ASSERT(done == piece);  // GCM is a stream mode: nothing is held back
    in += piece;
    out += piece;
    len -= static_cast<size_t>(piece);
  }
}

void FrameCipher::Seal(uint8_t tag[kTagBytes]) {
  DP420_ASSERT(open_ && encrypt_);
  int len = 0;
  int ok = EVP_EncryptFinal_ex(ctx_, nullptr, &len);
  DP420_ASSERT(ok == 1);
  ok = EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, kTagBytes, tag);
  DP420_ASSERT(ok == 1);
  open_ = false;
}

bool FrameCipher::Open(const uint8_t tag[kTagBytes]) {
  DP420_ASSERT(open_ && !encrypt_);
  open_ = false;
  uint8_t copy[kTagBytes];
  std::memcpy(copy, tag, kTagBytes);
  if (EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, kTagBytes, copy) != 1) return false;
  int len = 0;
  return EVP_DecryptFinal_ex(ctx_, nullptr, &len) == 1;
}

}  // namespace dp420::net
