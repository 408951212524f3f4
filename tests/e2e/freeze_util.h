// Whether a mounted file system is frozen, and a guard that thaws it whatever a
// failed test left: for the tests of fsfreeze (pit_test.cc, group_real_test.cc).
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <string>

namespace dp420::e2e {

// Whether the file system mounted at `dir` is frozen: FIFREEZE says EBUSY when it is
// (and when it was not, freezes it, so it is thawed again at once).
inline bool Frozen(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool frozen = false;
  if (ioctl(fd, FIFREEZE, 0) == 0) {
    ioctl(fd, FITHAW, 0);
  } else {
    frozen = errno == EBUSY;
  }
  close(fd);
  return frozen;
}

// Thaws `dir` at the end of its scope, whatever a failed test left.
struct ThawGuard {
  std::string dir;
  ~ThawGuard() {
    if (dir.empty()) return;
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      ioctl(fd, FITHAW, 0);
      close(fd);
    }
  }
};

}  // namespace dp420::e2e
