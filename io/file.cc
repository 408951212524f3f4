#include "io/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

#include "io/assert.h"
#include "io/inject.h"
#include "io/random.h"

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x2000U
#endif

namespace dp420::io {

namespace {

std::string AtOffset(const std::string& path, uint64_t offset) {
  return path + " at offset " + std::to_string(offset);
}

bool IsDirectCandidate(const struct stat& st) {
  return S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);
}

Status NotRegularOrBlock(const std::string& path) {
  return Status::InvalidArgument(path + " is not a regular file or block device");
}

// Fills size and alignment of a block device from its ioctls.
Status ProbeBlockDevice(int fd, const std::string& path, FileInfo* info) {
  uint64_t size_bytes = 0;
  if (ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
    return PosixError("ioctl(BLKGETSIZE64) " + path, errno);
  }
  int sector_bytes = 0;
  if (ioctl(fd, BLKSSZGET, &sector_bytes) != 0) {
    return PosixError("ioctl(BLKSSZGET) " + path, errno);
  }
  DP420_ASSERT(sector_bytes > 0);
  info->size_bytes = size_bytes;
  info->dio_mem_align = static_cast<uint32_t>(sector_bytes);
  info->dio_offset_align = static_cast<uint32_t>(sector_bytes);
  return Status::Ok();
}

// Switches an open descriptor to O_DIRECT when the probe reported an
// alignment. Returns whether it did; a refusal (EINVAL) means buffered.
bool TrySetDirect(int fd, const FileInfo& info) {
  if (info.dio_mem_align == 0 || info.dio_offset_align == 0) return false;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return false;
  return fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
}

// open(2), counted, retrying EINTR and EAGAIN.
int OpenRetry(const std::string& path, int flags, mode_t mode) {
  return sys::Open(path.c_str(), flags, mode);
}

// Errors a transfer retries: the I/O did not happen.
bool Transient(int err) { return err == EINTR || err == EAGAIN; }

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = sys::Write(fd, data.data() + done, data.size() - done);
    if (n < 0 && Transient(errno)) continue;
    if (n < 0) return PosixError("write " + path, errno);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Writes, syncs and closes `fd`; the descriptor is closed in every case.
Status WriteSyncClose(int fd, const std::string& data, const std::string& path) {
  Status status = WriteAll(fd, data, path);
  if (status.ok() && sys::Fsync(fd) != 0) status = PosixError("fsync " + path, errno);
  if (close(fd) != 0 && status.ok()) status = PosixError("close " + path, errno);
  return status;
}

Status SyncParent(const std::string& path);

// mkdir with mode 0700; an existing directory is success. A new directory is
// made durable at once: its parent is fsync'ed, or a power cut could take it,
// and everything later synced inside it, away.
Status MakeOneDir(const std::string& path) {
  if (sys::Mkdir(path.c_str(), 0700) == 0) return SyncParent(path);
  int err = errno;
  // EEXIST, but also EACCES or EROFS on an existing component: stat decides.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return PosixError("mkdir " + path, err);
  if (!S_ISDIR(st.st_mode)) return Status::Exists(path + " exists and is not a directory");
  return Status::Ok();
}

}  // namespace

File::~File() { Close(); }

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      direct_(other.direct_),
      path_(std::move(other.path_)),
      info_(other.info_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
    direct_ = other.direct_;
    path_ = std::move(other.path_);
    info_ = other.info_;
  }
  return *this;
}

Result<FileInfo> Probe(int fd, const std::string& path) {
  DP420_ASSERT(fd >= 0);
  struct statx stx = {};
  unsigned mask = STATX_TYPE | STATX_SIZE | STATX_DIOALIGN;
  if (statx(fd, "", AT_EMPTY_PATH, mask, &stx) != 0) return PosixError("statx " + path, errno);
  FileInfo info;
  info.is_regular = S_ISREG(stx.stx_mode);
  info.is_block_device = S_ISBLK(stx.stx_mode);
  if (info.is_block_device) {
    DP420_RETURN_IF_ERROR(ProbeBlockDevice(fd, path, &info));
    return info;
  }
  info.size_bytes = stx.stx_size;
  // No STATX_DIOALIGN in the reply (tmpfs, overlay, older kernels) means the
  // file system does not promise direct I/O: stay buffered.
  if (info.is_regular && (stx.stx_mask & STATX_DIOALIGN) != 0) {
    info.dio_mem_align = stx.stx_dio_mem_align;
    info.dio_offset_align = stx.stx_dio_offset_align;
  }
  return info;
}

Result<File> File::OpenRead(const std::string& path, bool want_direct) {
  // stat first so that a FIFO or device is rejected before open() can block.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return PosixError("stat " + path, errno);
  if (!IsDirectCandidate(st)) return NotRegularOrBlock(path);
  int fd = OpenRetry(path, O_RDONLY | O_CLOEXEC | O_NOCTTY, 0);
  if (fd < 0) return PosixError("open " + path, errno);
  File file;
  file.fd_ = fd;
  file.path_ = path;
  DP420_RETURN_IF_ERROR(file.Refresh());
  // The path may have been replaced between stat() and open().
  if (!file.info_.is_regular && !file.info_.is_block_device) return NotRegularOrBlock(path);
  if (want_direct) file.direct_ = TrySetDirect(fd, file.info_);
  return file;
}

Result<File> File::OpenWrite(const std::string& path, int flags, bool want_direct) {
  if ((flags & O_ACCMODE) == O_RDONLY) flags |= O_WRONLY;
  // O_DIRECT is set after open() with fcntl: an open(O_CREAT|O_DIRECT) that the
  // file system refuses would already have created the file, and a retry with
  // O_EXCL would then fail with EEXIST.
  int fd = OpenRetry(path, (flags & ~O_DIRECT) | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) return PosixError("open " + path, errno);
  File file;
  file.fd_ = fd;
  file.path_ = path;
  DP420_RETURN_IF_ERROR(file.Refresh());
  if (!file.info_.is_regular && !file.info_.is_block_device) return NotRegularOrBlock(path);
  if (want_direct) file.direct_ = TrySetDirect(fd, file.info_);
  return file;
}

File File::Adopt(int fd, std::string path, bool direct) {
  DP420_ASSERT(fd >= 0);
  File file;
  file.fd_ = fd;
  file.direct_ = direct;
  file.path_ = std::move(path);
  // Best effort: info() stays zero for descriptors statx cannot describe.
  Result<FileInfo> info = Probe(fd, file.path_);
  if (info.ok()) file.info_ = info.value();
  return file;
}

Status File::Refresh() {
  DP420_ASSERT(fd_ >= 0);
  DP420_ASSIGN_OR_RETURN(info_, Probe(fd_, path_));
  return Status::Ok();
}

Status File::ReadAt(uint64_t offset, void* buf, size_t len) const {
  DP420_ASSERT(fd_ >= 0);
  auto* dst = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = sys::Pread(fd_, dst + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && Transient(errno)) continue;
    if (n < 0) return PosixError("read " + AtOffset(path_, offset + done), errno);
    if (n == 0) {
      return Status::Corruption(path_ + ": unexpected end of file at offset " +
                                std::to_string(offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::WriteAt(uint64_t offset, const void* buf, size_t len) const {
  DP420_ASSERT(fd_ >= 0);
  const auto* src = static_cast<const uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = sys::Pwrite(fd_, src + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && Transient(errno)) continue;
    if (n < 0) return PosixError("write " + AtOffset(path_, offset + done), errno);
    // pwrite returns 0 only for len 0; guard against looping forever anyway.
    if (n == 0) return PosixError("write " + AtOffset(path_, offset + done), EIO);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::Sync() const {
  DP420_ASSERT(fd_ >= 0);
  if (sys::Fdatasync(fd_) != 0) return PosixError("fdatasync " + path_, errno);
  return Status::Ok();
}

Status File::Truncate(uint64_t size) const {
  DP420_ASSERT(fd_ >= 0);
  if (sys::Ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    return PosixError("truncate " + path_ + " to " + std::to_string(size), errno);
  }
  return Status::Ok();
}

void File::Close() {
  // close() is not retried on EINTR: Linux releases the descriptor anyway.
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  direct_ = false;
}

TempFileGuard::~TempFileGuard() {
  if (!path_.empty()) sys::Unlink(path_.c_str());
}

namespace {

// Removes PATH.tmp.<16 hex digits> files: WriteFileAtomic temp files of a
// writer of `path` that died before renaming or removing its own.
void RemoveStaleTemps(const std::string& path) {
  std::string dir = DirName(path);
  std::string prefix = path.substr(path.rfind('/') == std::string::npos ? 0
                                                                          : path.rfind('/') + 1) +
                       ".tmp.";
  for (const auto& name : ListDir(dir)) {
    if (name.size() != prefix.size() + 16 || name.compare(0, prefix.size(), prefix) != 0 ||
        name.find_first_not_of("0123456789abcdef", prefix.size()) != std::string::npos) {
      continue;
    }
    struct stat st;
    std::string stale = dir + "/" + name;
    if (lstat(stale.c_str(), &st) == 0 && S_ISREG(st.st_mode)) sys::Unlink(stale.c_str());
  }
}

}  // namespace

std::string SysBlockPath(dev_t rdev, const std::string& leaf) {
  return "/sys/dev/block/" + std::to_string(major(rdev)) + ":" + std::to_string(minor(rdev)) +
         "/" + leaf;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

Status WriteFileAtomic(const std::string& path, const std::string& data) {
  RemoveStaleTemps(path);
  uint8_t raw[8];
  DP420_RETURN_IF_ERROR(FillRandom(raw, sizeof(raw)));
  char suffix[2 * sizeof(raw) + 1];
  for (size_t i = 0; i < sizeof(raw); ++i) std::snprintf(suffix + 2 * i, 3, "%02x", raw[i]);
  std::string tmp = path + ".tmp." + suffix;
  int fd = OpenRetry(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) return PosixError("open " + tmp, errno);
  Status status = WriteSyncClose(fd, data, tmp);
  if (status.ok() && sys::Rename(tmp.c_str(), path.c_str()) != 0) {
    status = PosixError("rename " + tmp + " to " + path, errno);
  }
  if (!status.ok()) {
    sys::Unlink(tmp.c_str());
    return status;
  }
  return SyncDir(DirName(path));
}

Result<std::string> ReadFile(const std::string& path,
                             const std::function<Status(const struct stat&)>& check) {
  int fd = OpenRetry(path, O_RDONLY | O_CLOEXEC | O_NOCTTY, 0);
  if (fd < 0) return PosixError("open " + path, errno);
  File file = File::Adopt(fd, path, false);  // closes fd on every return
  struct stat st;
  if (fstat(fd, &st) != 0) return PosixError("stat " + path, errno);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
  if (check) DP420_RETURN_IF_ERROR(check(st));
  std::string data;
  data.reserve(static_cast<size_t>(st.st_size));
  char chunk[64 * 1024];
  for (;;) {
    ssize_t n = sys::Read(fd, chunk, sizeof(chunk));
    if (n < 0 && Transient(errno)) continue;
    if (n < 0) return PosixError("read " + path, errno);
    if (n == 0) break;
    data.append(chunk, static_cast<size_t>(n));
  }
  return data;
}

Status SyncDir(const std::string& dir) {
  int fd = OpenRetry(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return PosixError("open directory " + dir, errno);
  Status status;
  if (sys::Fsync(fd) != 0) status = PosixError("fsync directory " + dir, errno);
  close(fd);
  return status;
}

namespace {

Status SyncParent(const std::string& path) {
  std::string parent = DirName(path);
  return SyncDir(parent).Prefix("making directory " + path + " durable");
}

}  // namespace

Status MakeDirs(const std::string& dir) {
  if (dir.empty()) return Status::InvalidArgument("MakeDirs: empty path");
  // Create each prefix ending before a '/', then `dir` itself.
  for (size_t slash = dir.find('/', 1); slash != std::string::npos;
       slash = dir.find('/', slash + 1)) {
    if (dir[slash - 1] == '/') continue;  // "a//b"
    DP420_RETURN_IF_ERROR(MakeOneDir(dir.substr(0, slash)));
  }
  return MakeOneDir(dir);
}

}  // namespace dp420::io

namespace dp420::io {

namespace {
// cachestat(2): not in this distribution's headers yet.
constexpr long kSysCachestat = 451;
struct CachestatRange {
  uint64_t off;
  uint64_t len;
};
struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};
}  // namespace

double CachedFraction(int fd, uint64_t size_bytes) {
  if (size_bytes == 0) return 1.0;
  CachestatRange range{0, size_bytes};
  Cachestat cs{};
  if (syscall(kSysCachestat, fd, &range, &cs, 0) != 0) return -1.0;
  uint64_t pages = (size_bytes + 4095) / 4096;
  double fraction = double(cs.nr_cache) / double(pages);
  return fraction > 1.0 ? 1.0 : fraction;
}

}  // namespace dp420::io
