#include "tests/io/test_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <gtest/gtest.h>

namespace dp420::io::testing {

namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Runs a shell command; returns its stdout (trailing newline removed) and
// sets `*exit_code`.
std::string RunCommand(const std::string& command, int* exit_code) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *exit_code = -1;
    return output;
  }
  char chunk[256];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), pipe)) > 0) output.append(chunk, n);
  int status = pclose(pipe);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
  return output;
}

}  // namespace

TempDir::TempDir() {
  char name[] = "/var/tmp/dp420_io_test.XXXXXX";
  if (mkdtemp(name) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return;
  }
  path_ = name;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) ADD_FAILURE() << "removing " << path_ << ": " << ec.message();
}

std::string RandomBytes(size_t size_bytes, uint64_t seed) {
  std::string data(size_bytes, '\0');
  uint64_t state = seed;
  size_t i = 0;
  for (; i + 8 <= size_bytes; i += 8) {
    uint64_t word = SplitMix64(&state);
    std::memcpy(&data[i], &word, 8);
  }
  uint64_t word = SplitMix64(&state);
  std::memcpy(&data[i], &word, size_bytes - i);
  return data;
}

void WriteWholeFile(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ASSERT_GT(n, 0) << path << ": " << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
  ASSERT_EQ(close(fd), 0);
}

std::string PreadBytes(const std::string& path, uint64_t offset, size_t len) {
  std::string data(len, '\0');
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ADD_FAILURE() << path << ": " << std::strerror(errno);
    return std::string();
  }
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, &data[done], len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  data.resize(done);
  return data;
}

bool IsRoot() { return geteuid() == 0; }

LoopDevice::LoopDevice(const std::string& backing_file) {
  int exit_code = 0;
  std::string out = RunCommand("losetup -f --show '" + backing_file + "' 2>&1", &exit_code);
  if (exit_code != 0 || out.rfind("/dev/", 0) != 0) {
    error_ = "losetup -f --show failed (exit " + std::to_string(exit_code) + "): " + out;
    return;
  }
  device_ = out;
}

LoopDevice::~LoopDevice() {
  if (device_.empty()) return;
  int exit_code = 0;
  std::string out = RunCommand("losetup -d '" + device_ + "' 2>&1", &exit_code);
  if (exit_code != 0) ADD_FAILURE() << "losetup -d " << device_ << ": " << out;
}

}  // namespace dp420::io::testing
