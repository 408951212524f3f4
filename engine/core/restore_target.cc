#include "engine/core/restore_target.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/core/test_hooks.h"
#include "io/inject.h"
#include "io/random.h"

namespace dp420 {

namespace {

// Random hex digits of a named partial file.
constexpr size_t kPartialRandomBytes = 8;
// Attempts at a fresh random name before giving up (each collision is 2^-64).
constexpr int kNameAttempts = 8;

std::string KindOf(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a special file";
}

void SplitPath(const std::string& path, std::string* dir, std::string* name) {
  size_t slash = path.rfind('/');
  *dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  *name = slash == std::string::npos ? path : path.substr(slash + 1);
}

Result<std::string> RandomPartialName(const std::string& name) {
  uint8_t raw[kPartialRandomBytes];
  DP420_RETURN_IF_ERROR(io::FillRandom(raw, sizeof(raw)));
  char hex[2 * kPartialRandomBytes + 1];
  for (size_t i = 0; i < sizeof(raw); ++i) std::snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  return name + kPartialInfix + hex;
}

// Whether `entry` is `name` + kPartialInfix + 16 lower-case hex digits.
bool IsPartialName(const std::string& entry, const std::string& name) {
  std::string prefix = name + kPartialInfix;
  if (entry.size() != prefix.size() + 2 * kPartialRandomBytes) return false;
  if (entry.compare(0, prefix.size(), prefix) != 0) return false;
  return entry.find_first_not_of("0123456789abcdef", prefix.size()) == std::string::npos;
}

// Marks the open file as the partial file `name`. Best effort: on a file
// system without user xattrs the mark is missing, and a stale copy left by a
// killed process can then not be proven dp420's and is never removed.
void MarkPartial(int fd, const std::string& name) {
  (void)fsetxattr(fd, kPartialXattr, name.data(), name.size(), 0);
}

bool HasPartialMark(int fd, const std::string& name) {
  std::vector<char> value(name.size() + 1);
  ssize_t n = fgetxattr(fd, kPartialXattr, value.data(), value.size());
  return n == static_cast<ssize_t>(name.size()) && std::equal(name.begin(), name.end(), value.data());
}

// Opens a block device for writing without following a link or blocking on
// a FIFO swapped in since lstat, and checks it is still the device `st`.
Result<io::File> OpenDevice(const std::string& path, const struct stat& st, bool direct) {
  DP420_ASSIGN_OR_RETURN(io::File f,
                         io::File::OpenWrite(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK, direct));
  struct stat now;
  if (fstat(f.fd(), &now) != 0) return PosixError("stat " + path, errno);
  if (!S_ISBLK(now.st_mode) || now.st_rdev != st.st_rdev) {
    return Status::InvalidArgument(path + " changed while it was being opened; not written");
  }
  // io_uring would answer EAGAIN for a non-blocking descriptor.
  int flags = fcntl(f.fd(), F_GETFL);
  if (flags < 0 || fcntl(f.fd(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return PosixError("fcntl " + path, errno);
  }
  return f;
}

}  // namespace

Result<std::unique_ptr<RestoreTarget>> RestoreTarget::Open(const std::string& path,
                                                           uint64_t volume_size, bool force) {
  std::unique_ptr<RestoreTarget> t(new RestoreTarget());
  t->path_ = path;
  t->resolved_ = path;
  t->volume_size_ = volume_size;
  struct stat st;
  bool exists = false;
  DP420_RETURN_IF_ERROR(t->Classify(force, &st, &exists));
  if (exists && S_ISBLK(st.st_mode)) {
    DP420_RETURN_IF_ERROR(t->OpenBlockDevice(st));
  } else {
    DP420_RETURN_IF_ERROR(t->OpenFile(exists ? &st : nullptr));
  }
  t->align_ = t->direct_.direct()
                  ? std::max<uint32_t>(t->direct_.info().dio_offset_align, 512)
                  : 1;
  return t;
}

// "TARGET", or "TARGET (a symbolic link to X)" once resolved.
std::string RestoreTarget::Shown() const {
  return resolved_ == path_ ? path_ : path_ + " (a symbolic link to " + resolved_ + ")";
}

// Applies the target rules to what is at path_ (resolving a symbolic link
// with `force`); fills *st when something is there.
Status RestoreTarget::Classify(bool force, struct stat* st, bool* exists) {
  *exists = lstat(path_.c_str(), st) == 0;
  if (!*exists) {
    if (errno == ENOENT) return Status::Ok();
    return PosixError("stat " + path_, errno);
  }
  if (S_ISLNK(st->st_mode)) {
    char* real = realpath(path_.c_str(), nullptr);
    if (real == nullptr) {
      return Status::InvalidArgument(path_ + " is a symbolic link that does not resolve (" +
                                     std::strerror(errno) + "); restore does not replace it");
    }
    resolved_ = real;
    free(real);
    if (!force) {
      return Status::Exists(path_ + " is a symbolic link to " + resolved_ +
                            ": restore would write through it; pass --force to restore to " +
                            resolved_ + " (the link is kept)");
    }
    if (lstat(resolved_.c_str(), st) != 0) return PosixError("stat " + resolved_, errno);
  }
  const std::string shown = Shown();
  if (S_ISBLK(st->st_mode) || (S_ISREG(st->st_mode) && st->st_size > 0)) {
    if (force) return Status::Ok();
    return Status::Exists(shown + (S_ISBLK(st->st_mode) ? " is a block device" : " is not empty") +
                          ": restore would overwrite it; pass --force");
  }
  if (S_ISREG(st->st_mode)) return Status::Ok();
  return Status::InvalidArgument(shown + " is " + KindOf(st->st_mode) +
                                 ": restore writes only to a regular file or a block device, "
                                 "and left it untouched");
}

Status RestoreTarget::OpenBlockDevice(const struct stat& st) {
  block_device_ = true;
  DP420_ASSIGN_OR_RETURN(direct_, OpenDevice(resolved_, st, true));
  DP420_ASSIGN_OR_RETURN(buffered_, OpenDevice(resolved_, st, false));
  if (direct_.info().size_bytes < volume_size_) {
    return Status::InvalidArgument(Shown() + " holds " +
                                   std::to_string(direct_.info().size_bytes) +
                                   " bytes; the snapshot needs " + std::to_string(volume_size_));
  }
  return Status::Ok();
}

// Opens the directory, clears stale partial files of earlier runs, and
// creates the file to write: unnamed when the file system allows.
Status RestoreTarget::OpenFile(const struct stat* existing) {
  std::string dir;
  SplitPath(resolved_, &dir, &name_);
  if (existing) {
    existed_ = true;
    existing_dev_ = existing->st_dev;
    existing_ino_ = existing->st_ino;
  }
  dir_fd_ = io::sys::Open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) return PosixError("open directory " + dir + " of " + Shown(), errno);
  RemoveStalePartials();
  int fd = -1;
  if (!NoTmpfileForTest()) {
    fd = io::sys::OpenAt(dir_fd_, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
      return PosixError("create a file in " + dir + " for " + Shown(), errno);
    }
  }
  unnamed_ = fd >= 0;
  if (!unnamed_) DP420_RETURN_IF_ERROR(CreatePartial(&fd));
  buffered_ = io::File::Adopt(fd, resolved_, false);
  // Held until the descriptor closes: a concurrent restore of the same file
  // sees this one alive and leaves its partial file alone.
  (void)flock(fd, LOCK_EX | LOCK_NB);
  // A second descriptor of the same file for O_DIRECT writes.
  auto direct = io::File::OpenWrite("/proc/self/fd/" + std::to_string(fd), O_WRONLY, true);
  if (direct.ok()) {
    direct_ = std::move(direct).value();
  } else {
    direct_ = io::File::Adopt(dup(fd), resolved_, false);  // no /proc: buffered writes only
  }
  if (direct_.fd() < 0) return PosixError("dup " + resolved_, errno);
  return buffered_.Truncate(volume_size_);
}

// Creates TARGET.dp420-partial.<random> with O_EXCL and marks it as ours.
Status RestoreTarget::CreatePartial(int* fd) {
  for (int i = 0; i < kNameAttempts; ++i) {
    DP420_ASSIGN_OR_RETURN(std::string name, RandomPartialName(name_));
    *fd = io::sys::OpenAt(dir_fd_, name.c_str(),
                 O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (*fd < 0 && errno == EEXIST) continue;
    if (*fd < 0) return PosixError("create " + name + " for " + Shown(), errno);
    partial_name_ = name;  // ours: the destructor removes it
    MarkPartial(*fd, name);
    return Status::Ok();
  }
  return Status::Exists("no free partial file name next to " + Shown());
}

RestoreTarget::~RestoreTarget() {
  if (dir_fd_ < 0) return;
  if (!partial_name_.empty()) io::sys::UnlinkAt(dir_fd_, partial_name_.c_str(), 0);
  close(dir_fd_);
}

Status RestoreTarget::ZeroRange(uint64_t offset, uint64_t len) {
  if (!block_device_) return Status::Ok();  // a fresh sparse file is already zero
  if (io::sys::Fallocate(buffered_.fd(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) {
    return Status::Ok();
  }
  std::vector<uint8_t> zeros(std::min<uint64_t>(len, 1 << 20), 0);
  for (uint64_t done = 0; done < len;) {
    uint64_t n = std::min<uint64_t>(zeros.size(), len - done);
    DP420_RETURN_IF_ERROR(buffered_.WriteAt(offset + done, zeros.data(), n));
    done += n;
  }
  return Status::Ok();
}

Status RestoreTarget::Commit() {
  DP420_RETURN_IF_ERROR(buffered_.Sync());
  if (block_device_) return Status::Ok();
  struct stat st;
  if (fstat(buffered_.fd(), &st) != 0) return PosixError("stat " + Shown(), errno);
  if (static_cast<uint64_t>(st.st_size) != volume_size_) {
    return Status::Internal("the restored file holds " + std::to_string(st.st_size) +
                            " bytes, not the snapshot's volume_size " +
                            std::to_string(volume_size_) + "; " + Shown() + " left as it was");
  }
  DP420_RETURN_IF_ERROR(CheckTargetUnchanged());
  if (unnamed_ && !existed_) {
    // linkat never replaces: a file that appeared at TARGET meanwhile stays.
    DP420_RETURN_IF_ERROR(LinkPartial());
  } else {
    if (unnamed_) DP420_RETURN_IF_ERROR(LinkPartial());
    CrashPoint("restore-before-rename");
    unsigned flags = existed_ ? 0 : RENAME_NOREPLACE;
    int rc = io::sys::RenameAt2(dir_fd_, partial_name_.c_str(), dir_fd_, name_.c_str(), flags);
    if (rc != 0 && errno == EINVAL && flags != 0) {
      rc = io::sys::RenameAt2(dir_fd_, partial_name_.c_str(), dir_fd_, name_.c_str(), 0);
    }
    if (rc != 0) return PosixError("rename " + partial_name_ + " to " + Shown(), errno);
    partial_name_.clear();  // TARGET's now: never deleted
  }
  (void)fremovexattr(buffered_.fd(), kPartialXattr);
  if (io::sys::Fsync(dir_fd_) != 0) return PosixError("fsync the directory of " + Shown(), errno);
  return Status::Ok();
}

// Gives the unnamed file a name: TARGET when nothing was there, else a
// marked partial name (renamed over TARGET next).
Status RestoreTarget::LinkPartial() {
  const std::string proc = "/proc/self/fd/" + std::to_string(buffered_.fd());
  for (int i = 0; i < kNameAttempts; ++i) {
    std::string name = name_;
    if (existed_) {
      DP420_ASSIGN_OR_RETURN(name, RandomPartialName(name_));
      MarkPartial(buffered_.fd(), name);
    }
    int rc = io::sys::LinkAt(AT_FDCWD, proc.c_str(), dir_fd_, name.c_str(), AT_SYMLINK_FOLLOW);
    if (rc != 0 && errno == ENOENT) {  // no /proc: needs CAP_DAC_READ_SEARCH
      rc = io::sys::LinkAt(buffered_.fd(), "", dir_fd_, name.c_str(), AT_EMPTY_PATH);
    }
    if (rc == 0) {
      if (existed_) partial_name_ = name;
      return Status::Ok();
    }
    if (errno == EEXIST && existed_) continue;
    if (errno == EEXIST) {
      return Status::Exists(Shown() + " appeared during the restore; it was left as it is");
    }
    return PosixError("link the restored file as " + name + " next to " + Shown(), errno);
  }
  return Status::Exists("no free partial file name next to " + Shown());
}

// TARGET must still be what Open() found: missing, or the same regular file.
Status RestoreTarget::CheckTargetUnchanged() const {
  struct stat st;
  bool exists = fstatat(dir_fd_, name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!exists && errno != ENOENT) return PosixError("stat " + Shown(), errno);
  if (!existed_ && exists) {
    return Status::Exists(Shown() + " appeared during the restore; it was left as it is");
  }
  if (existed_ && (!exists || !S_ISREG(st.st_mode) || st.st_dev != existing_dev_ ||
                   st.st_ino != existing_ino_)) {
    return Status::Exists(Shown() + " was replaced or removed during the restore; not written");
  }
  return Status::Ok();
}

// Removes the partial files earlier restores of this file left when they
// were killed, and only those that prove to be theirs.
void RestoreTarget::RemoveStalePartials() const {
  int fd = dup(dir_fd_);
  if (fd < 0) return;
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    close(fd);
    return;
  }
  std::vector<std::string> candidates;
  while (dirent* e = readdir(dir)) {
    if (IsPartialName(e->d_name, name_)) candidates.emplace_back(e->d_name);
  }
  closedir(dir);
  for (const std::string& name : candidates) RemoveIfStale(name);
}

void RestoreTarget::RemoveIfStale(const std::string& name) const {
  int fd = io::sys::OpenAt(dir_fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return;
  struct stat st;
  struct stat now;
  bool ours = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
              st.st_nlink == 1 && HasPartialMark(fd, name) &&
              flock(fd, LOCK_EX | LOCK_NB) == 0 &&  // no live restore holds it
              fstatat(dir_fd_, name.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 &&
              now.st_dev == st.st_dev && now.st_ino == st.st_ino;
  if (ours) io::sys::UnlinkAt(dir_fd_, name.c_str(), 0);
  close(fd);
}

}  // namespace dp420
