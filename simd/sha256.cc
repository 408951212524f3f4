// SHA-256 through OpenSSL 3's EVP interface (SHA-NI when the CPU has it).
#include <openssl/evp.h>

#include "simd/check.h"
#include "simd/simd.h"

namespace dp420::simd {
namespace {

// Fetched once: EVP_sha256() would look the provider up again on every Init.
const EVP_MD* Sha256Md() {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  DP420_SIMD_CHECK(md != nullptr);
  return md;
}

EVP_MD_CTX* Ctx(void* ctx) { return static_cast<EVP_MD_CTX*>(ctx); }

}  // namespace

Sha256Stream::Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
  DP420_SIMD_CHECK(ctx_ != nullptr);
  Reset();
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(Ctx(ctx_)); }

void Sha256Stream::Reset() {
  DP420_SIMD_CHECK(EVP_DigestInit_ex2(Ctx(ctx_), Sha256Md(), nullptr) == 1);
}

void Sha256Stream::Update(const uint8_t* data, size_t len) {
  DP420_SIMD_CHECK(data != nullptr || len == 0);
  if (len == 0) return;
  DP420_SIMD_CHECK(EVP_DigestUpdate(Ctx(ctx_), data, len) == 1);
}

void Sha256Stream::Final(uint8_t out[kSha256Bytes]) {
  unsigned int written = 0;
  DP420_SIMD_CHECK(EVP_DigestFinal_ex(Ctx(ctx_), out, &written) == 1);
  DP420_SIMD_CHECK(written == kSha256Bytes);
}

void Sha256(const uint8_t* data, size_t len, uint8_t out[kSha256Bytes]) {
  // One EVP context per thread, reused: no allocation per call.
  thread_local Sha256Stream stream;
  stream.Reset();
  stream.Update(data, len);
  stream.Final(out);
}

}  // namespace dp420::simd
