// DP420_ASSERT stays on in release builds; DP420_DASSERT is debug-only.
// A failed assertion is a bug in dp420: it prints the condition and aborts.
#pragma once

#include <cstdio>
#include <cstdlib>

#define DP420_ASSERT(cond)                                                       \
  do {                                                                           \
    if (__builtin_expect(!(cond), 0)) {                                          \
      std::fprintf(stderr, "dp420: assertion failed: %s (%s:%d)\n", #cond,       \
                   __FILE__, __LINE__);                                          \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

#ifdef NDEBUG
#define DP420_DASSERT(cond) \
  do {                      \
  } while (0)
#else
#define DP420_DASSERT(cond) DP420_ASSERT(cond)
#endif
