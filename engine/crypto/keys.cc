#include "engine/crypto/keys.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "io/assert.h"
#include "io/random.h"

namespace dp420::crypto {

namespace {

// The HKDF implementation, fetched once: a fetch looks the algorithm up in
// the providers under a lock, which would cost more than the derivation.
// EVP_KDF objects may be shared by threads; only contexts may not.
EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}

// The longest info of a derivation: a label and its context (a pack's info
// is 17 + 16 + 4 + 32 bytes). OpenSSL 3.0 caps HKDF's info at 1024 bytes.
constexpr size_t kMaxInfoBytes = 256;

}  // namespace

Status Hkdf(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
            std::span<const uint8_t> info, std::span<uint8_t> out) {
  DP420_ASSERT(!out.empty() && out.size() <= 255 * 32);
  DP420_ASSERT(info.size() <= 1024);
  EVP_KDF* kdf = HkdfAlgorithm();
  if (kdf == nullptr) return Status::Internal("OpenSSL failed: HKDF is not available");
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  if (ctx == nullptr) return Status::Internal("OpenSSL failed: HKDF context");
  char digest[] = "SHA256";
  // OpenSSL takes non-const pointers for parameters it only reads.
  auto* ikm_p = const_cast<uint8_t*>(ikm.data());
  auto* salt_p = const_cast<uint8_t*>(salt.data());
  auto* info_p = const_cast<uint8_t*>(info.data());
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikm_p, ikm.size());
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt_p, salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info_p, info.size());
  }
  params[n] = OSSL_PARAM_construct_end();
  int ok = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);  // cleanses its copy of the key
  if (ok != 1) return Status::Internal("OpenSSL failed: HKDF-SHA-256");
  return Status::Ok();
}

Status DeriveKey(std::span<const uint8_t> ikm, const char* label,
                 std::span<const uint8_t> context, std::span<uint8_t> out) {
  const size_t label_len = std::strlen(label);
  DP420_ASSERT(label_len + context.size() <= kMaxInfoBytes);
  uint8_t info[kMaxInfoBytes];
  std::copy_n(label, label_len, info);  // bytes of the info, not a C string
  if (!context.empty()) std::memcpy(info + label_len, context.data(), context.size());
  // The info may hold a salt; not secret, but nothing of a derivation lingers.
  Status s = Hkdf(ikm, {}, std::span<const uint8_t>(info, label_len + context.size()), out);
  Cleanse(info, sizeof(info));
  return s;
}

Result<MasterKey> MasterKey::Generate() {
  MasterKey key;
  DP420_RETURN_IF_ERROR(io::FillRandom(key.key_.data(), key.key_.size()));
  return key;
}

MasterKey MasterKey::FromBytes(std::span<const uint8_t, kMasterKeyBytes> bytes) {
  MasterKey key;
  std::memcpy(key.key_.data(), bytes.data(), kMasterKeyBytes);
  return key;
}

Status DeriveRepositoryKeys(const MasterKey& master, const RepoId& repo_id,
                            RepositoryKeys* out) {
  DP420_RETURN_IF_ERROR(DeriveKey(master.bytes(), kObjectKeyLabel, repo_id,
                                  out->object_key.span()));
  DP420_RETURN_IF_ERROR(DeriveKey(master.bytes(), kSealKeyLabel, repo_id, out->seal_key.span()));
  return DeriveKey(master.bytes(), kBlockIdSecretLabel, repo_id, out->block_id_secret.span());
}

}  // namespace dp420::crypto
