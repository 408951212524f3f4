// Random bytes from the kernel's CSPRNG (getrandom(2)), for keys, nonces and
// identifiers.
//
// Thread safety: safe from any thread.
#pragma once

#include <cstddef>

#include "io/status.h"

namespace dp420::io {

// Fills `len` bytes at `out`; retries EINTR and short returns.
Status FillRandom(void* out, size_t len);

}  // namespace dp420::io
