#include "engine/crypto/secret.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <new>

namespace dp420::crypto {

namespace {

size_t PageBytes() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return bytes;
}

}  // namespace

void Cleanse(void* data, size_t len) { OPENSSL_cleanse(data, len); }

void ExcludeFromCoreDumps(const void* data, size_t len) {
  if (len == 0) return;
  uintptr_t page = PageBytes();
  uintptr_t start = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + len + page - 1) & ~(page - 1);
  (void)madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTDUMP);
}

namespace internal {

uint8_t* AllocSecretPage() {
  void* p = std::aligned_alloc(PageBytes(), PageBytes());
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, PageBytes());
  ExcludeFromCoreDumps(p, PageBytes());
  return static_cast<uint8_t*>(p);
}

void FreeSecretPage(uint8_t* page, size_t len) {
  if (page == nullptr) return;
  Cleanse(page, len);
  std::free(page);
}

}  // namespace internal

}  // namespace dp420::crypto
