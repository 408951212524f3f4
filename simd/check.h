// DP420_SIMD_CHECK: an always-on assertion for simd/ (a leaf: it may not use
// io/assert.h). A failure is a bug or an allocation failure inside OpenSSL:
// it prints the condition and aborts. Thread safety: stateless.
#pragma once

#include <cstdio>
#include <cstdlib>

#define DP420_SIMD_CHECK(cond)                                                              \
  do {                                                                                      \
    if (__builtin_expect(!(cond), 0)) {                                                     \
      std::fprintf(stderr, "dp420: check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)
