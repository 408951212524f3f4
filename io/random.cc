#include "io/random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>

namespace dp420::io {

Status FillRandom(void* out, size_t len) {
  auto* bytes = static_cast<uint8_t*>(out);
  size_t done = 0;
  while (done < len) {
    ssize_t n = getrandom(bytes + done, len - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("getrandom", errno);
    }
    done += size_t(n);
  }
  return Status::Ok();
}

}  // namespace dp420::io
