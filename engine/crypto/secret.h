// Secrets in memory: the one home of dp420's key material while it is held.
//
// Cleanse overwrites bytes so that the compiler cannot drop the write;
// ExcludeFromCoreDumps keeps pages out of core dumps; SecretBytes<N> is an
// N-byte secret on a page of its own, excluded from core dumps and cleansed
// when it goes away (SecretKey: 32 bytes, an AES-256 or HMAC key).
//
// Thread safety: the functions are safe from any thread; a SecretBytes is a
// value, read from many threads or written by one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>

namespace dp420::crypto {

// Overwrites `len` bytes so the compiler cannot drop it (OPENSSL_cleanse).
void Cleanse(void* data, size_t len);
// Excludes [data, data+len) from core dumps (MADV_DONTDUMP on the pages it
// covers; best effort: a failure is ignored).
void ExcludeFromCoreDumps(const void* data, size_t len);

namespace internal {
// A zeroed page of its own, excluded from core dumps (throws std::bad_alloc
// when none can be had, as operator new does).
uint8_t* AllocSecretPage();
// Cleanses the first `len` bytes of a page from AllocSecretPage and frees it.
void FreeSecretPage(uint8_t* page, size_t len);
}  // namespace internal

// An N-byte secret (N at most 4096, the smallest page) that is cleansed when
// it goes away and never dumped. Copies are deep (a page each).
template <size_t N>
class SecretBytes {
  static_assert(N > 0 && N <= 4096, "a secret lives on one page");

 public:
  SecretBytes() : bytes_(internal::AllocSecretPage()) {}
  ~SecretBytes() = default;
  SecretBytes(const SecretBytes& o) : SecretBytes() { std::memcpy(data(), o.data(), N); }
  SecretBytes& operator=(const SecretBytes& o) {
    if (this != &o) std::memcpy(data(), o.data(), N);
    return *this;
  }
  uint8_t* data() { return bytes_.get(); }
  const uint8_t* data() const { return bytes_.get(); }
  static constexpr size_t size() { return N; }
  std::span<const uint8_t, N> span() const { return std::span<const uint8_t, N>(data(), N); }
  std::span<uint8_t, N> span() { return std::span<uint8_t, N>(data(), N); }

 private:
  // A page of its own: MADV_DONTDUMP works on whole pages.
  struct PageFree {
    void operator()(uint8_t* p) const { internal::FreeSecretPage(p, N); }
  };
  std::unique_ptr<uint8_t, PageFree> bytes_;
};

// A 32-byte key (AES-256, HMAC-SHA-256, HKDF output).
using SecretKey = SecretBytes<32>;

}  // namespace dp420::crypto
