// Files and block devices: open, probe size and O_DIRECT alignment, durable
// writes of small metadata files. Knows nothing of backups.
//
// Thread safety: File is a move-only owner of one descriptor; not shared.
#pragma once

#include <cstdint>
#include <sys/stat.h>

#include <functional>
#include <string>
#include <vector>
#include <utility>

#include "io/status.h"

namespace dp420::io {

struct FileInfo {
  uint64_t size_bytes = 0;        // st_size, or BLKGETSIZE64 for a block device
  bool is_block_device = false;
  bool is_regular = false;
  // O_DIRECT alignment from statx(STATX_DIOALIGN), or BLKSSZGET for block
  // devices. 0 when the file system reports none (e.g. tmpfs): not direct.
  uint32_t dio_mem_align = 0;
  uint32_t dio_offset_align = 0;
};

class File {
 public:
  File() = default;
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Opens `path` for reading. With `want_direct`, uses O_DIRECT when the file
  // reports DIO alignment and the open succeeds; otherwise buffered. Errors
  // name the path (kNotFound, kPermission, kIOError); a directory or other
  // non-regular, non-block file is kInvalidArgument.
  static Result<File> OpenRead(const std::string& path, bool want_direct);
  // Opens for writing with `flags` (O_CREAT, O_EXCL, O_TRUNC ... as needed;
  // O_WRONLY/O_RDWR added by caller), mode 0600 when created. With
  // `want_direct`, tries O_DIRECT and falls back to buffered when refused.
  static Result<File> OpenWrite(const std::string& path, int flags, bool want_direct);
  // Adopts an existing descriptor (closed by the destructor).
  static File Adopt(int fd, std::string path, bool direct);

  int fd() const { return fd_; }
  bool direct() const { return direct_; }
  const std::string& path() const { return path_; }
  const FileInfo& info() const { return info_; }
  // Re-reads size and alignment.
  Status Refresh();

  // Plain pread/pwrite loops that retry EINTR and short transfers. A read
  // past EOF returns kCorruption naming the path and offset. For metadata.
  Status ReadAt(uint64_t offset, void* buf, size_t len) const;
  Status WriteAt(uint64_t offset, const void* buf, size_t len) const;
  Status Sync() const;       // fdatasync
  Status Truncate(uint64_t size) const;
  void Close();

 private:
  int fd_ = -1;
  bool direct_ = false;
  std::string path_;
  FileInfo info_;
};

// Probes an open descriptor (statx with STATX_DIOALIGN; BLKGETSIZE64 and
// BLKSSZGET for block devices).
Result<FileInfo> Probe(int fd, const std::string& path);

// Fraction of the first `size_bytes` of `fd` resident in the page cache, from
// cachestat(2) (Linux 6.5+); a negative value when the kernel cannot tell.
// Reading a file that is mostly cached through O_DIRECT would go to the device
// instead: callers use this to pick buffered reads for warm input.
double CachedFraction(int fd, uint64_t size_bytes);

// Writes `data` to `path` atomically and durably: a temp file in the same
// directory with a random name (PATH.tmp.<16 hex digits>), created with
// O_EXCL|O_NOFOLLOW (nothing planted there can redirect the write), write,
// fsync, rename over `path`, fsync the directory. Mode 0600. The temp file
// is removed on every failure; temp files of `path` that an earlier writer
// left when it died are removed first, so callers must serialize the
// writers of one path (a lock; every caller does).
Status WriteFileAtomic(const std::string& path, const std::string& data);

// Unlinks a temporary file at the end of its scope unless Keep() was called
// (after it was renamed into place): no return path can leave it behind.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard();
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void Keep() { path_.clear(); }

 private:
  std::string path_;
};
// Reads a whole (small) file. `check`, when given, sees the opened file's
// stat before anything is read (the checked file is the one read) and may
// refuse it.
Result<std::string> ReadFile(const std::string& path,
                             const std::function<Status(const struct stat&)>& check = nullptr);
// The sysfs file `leaf` of block device `rdev`: /sys/dev/block/MAJ:MIN/LEAF.
std::string SysBlockPath(dev_t rdev, const std::string& leaf);
// Names in `dir` (without "." and ".."), sorted; empty when it cannot be read.
std::vector<std::string> ListDir(const std::string& dir);
// fsync of a directory.
Status SyncDir(const std::string& dir);
// mkdir -p with mode 0700 for each created component; the parent of each
// created directory is fsync'ed, so that the new directory survives a power cut.
Status MakeDirs(const std::string& dir);

}  // namespace dp420::io
