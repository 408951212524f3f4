// Helpers for the io/ tests: a self-removing temporary directory under
// /var/tmp (a real disk file system, unlike /tmp on some hosts), seeded random
// file contents, and an RAII loop device.
//
// Thread safety: none needed; used from the test thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dp420::io::testing {

// A fresh directory /var/tmp/dp420_io_test.XXXXXX, removed with its contents
// by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// `size_bytes` of deterministic pseudo-random bytes (splitmix64 of `seed`).
std::string RandomBytes(size_t size_bytes, uint64_t seed);

// Creates or replaces `path` with `data` (plain POSIX, independent of io/).
void WriteWholeFile(const std::string& path, const std::string& data);

// pread of `len` bytes at `offset`; fewer at end of file.
std::string PreadBytes(const std::string& path, uint64_t offset, size_t len);

bool IsRoot();

// Attaches a file to a free loop device with `losetup -f --show` and always
// detaches it in the destructor. device() is empty when attaching failed;
// error() then says why.
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& backing_file);
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  const std::string& device() const { return device_; }
  const std::string& error() const { return error_; }

 private:
  std::string device_;
  std::string error_;
};

}  // namespace dp420::io::testing
