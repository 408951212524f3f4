// Helpers of crypto_test: hex, a reference HKDF-SHA-256 written from RFC 5869
// over OpenSSL's HMAC (independent of the EVP_KDF the library uses), and a
// scratch folder.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dp420::crypto::testing {

using Bytes = std::vector<uint8_t>;

inline Bytes Unhex(const std::string& hex) {
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
  return out;
}

template <typename Container>
std::string Hex(const Container& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

inline Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

inline Bytes Str(const std::string& s) { return Bytes(s.begin(), s.end()); }

inline Bytes U32Le(uint32_t v) {
  return {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
}

inline Bytes HmacSha256(const Bytes& key, const Bytes& msg) {
  Bytes out(32);
  unsigned int len = 32;
  HMAC(EVP_sha256(), key.data(), int(key.size()), msg.data(), msg.size(), out.data(), &len);
  return out;
}

// RFC 5869, section 2, from its definition.
inline Bytes ReferenceHkdf(const Bytes& ikm, const Bytes& salt, const Bytes& info, size_t len) {
  const Bytes prk = HmacSha256(salt.empty() ? Bytes(32, 0) : salt, ikm);
  Bytes out, t;
  for (uint8_t i = 1; out.size() < len; ++i) {
    t = HmacSha256(prk, Concat({t, info, Bytes{i}}));
    out.insert(out.end(), t.begin(), t.end());
  }
  out.resize(len);
  return out;
}

// A folder under /var/tmp, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = "/var/tmp/dp420-crypto-test-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace dp420::crypto::testing
