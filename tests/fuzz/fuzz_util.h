// Helpers shared by the libFuzzer targets (scripts/fuzz.sh).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <span>
#include <string>

namespace dp420::fuzz {

// A property every input must keep; a violation is a crash libFuzzer reports
// and keeps.
#define FUZZ_CHECK(cond)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

// Takes fields off the front of the input; past its end, zeros.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{U8()} << (8 * i);
    return v;
  }
  uint64_t U64() { return uint64_t{U32()} | (uint64_t{U32()} << 32); }
  std::span<const uint8_t> Rest() const { return {data_ + pos_, size_ - pos_}; }
  std::string RestString() const {
    return std::string(reinterpret_cast<const char*>(data_ + pos_), size_ - pos_);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// An in-memory file with a path (/proc/self/fd/N), for parsers that open files.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("dp420-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  void Set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size)) {
      std::perror("memfd write");
      std::abort();
    }
  }
  int fd() const { return fd_; }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

// A fresh directory under $TMPDIR (or /tmp), for targets that need one.
inline std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dp420-fuzz-XXXXXX";
  if (!mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    std::abort();
  }
  return tmpl;
}

// Writes `data` to `path` (no fsync: fuzzing wants speed, not durability).
inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "writing %s failed\n", path.c_str());
    std::abort();
  }
}

// The key of the repository the seed corpora were made from
// (tests/fuzz/data/hash.key, 192 bytes), so that seeds pass their seals.
inline std::string CorpusRepoKey() {
  std::ifstream in(DP420_FUZZ_DATA_DIR "/hash.key", std::ios::binary);
  std::string key((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (key.size() != 192) {
    std::fprintf(stderr, "%s: missing or not 192 bytes\n", DP420_FUZZ_DATA_DIR "/hash.key");
    std::abort();
  }
  return key;
}

}  // namespace dp420::fuzz
