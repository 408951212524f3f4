// Shared helpers for engine tests: a temporary directory, deterministic
// volume images, file checks and a fresh repository.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "engine/core/history.h"
#include "engine/core/repo.h"
#include "io/file.h"

namespace dp420::testing {

// A fresh directory under /var/tmp, removed with its contents at the end.
class TempDir {
 public:
  // Under `base`: /var/tmp (a disk) unless a test asks for memory (MemoryTempBase()).
  explicit TempDir(const std::string& base = "/var/tmp") {
    std::string tmpl = base + "/dp420-engine-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp in " << base << ": " << std::strerror(errno);
      return;
    }
    path_ = tmpl;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    if (ec) ADD_FAILURE() << "removing " << path_ << ": " << ec.message();
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// /dev/shm (tmpfs) when it is a writable directory, else /var/tmp: for tests about
// which bytes a repository holds, not about what survives a crash, where every fsync
// to a disk only costs time.
inline std::string MemoryTempBase() {
  return access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/var/tmp";
}

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), {});
}

inline void WriteAll(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

// Random bytes with zero runs: every 7th 64 KiB stretch is zero.
inline std::vector<uint8_t> MakeVolume(size_t bytes, uint32_t seed) {
  std::vector<uint8_t> v(bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t x = rng();
    for (size_t j = 0; j < 8 && i + j < bytes; ++j) v[i + j] = uint8_t(x >> (8 * j));
  }
  for (size_t off = 0; off < bytes; off += 7 * 65536) {
    for (size_t i = off; i < off + 65536 && i < bytes; ++i) v[i] = 0;
  }
  return v;
}

inline bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

inline uint64_t FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Creates a repository at `path` and opens it; null after a test failure.
inline std::unique_ptr<Repository> NewRepository(const std::string& path) {
  Status init = Repository::Init(path);
  if (!init.ok()) {
    ADD_FAILURE() << "init " << path << ": " << init.ToString();
    return nullptr;
  }
  auto repo = Repository::Open(path);
  if (!repo.ok()) {
    ADD_FAILURE() << "open " << path << ": " << repo.status().ToString();
    return nullptr;
  }
  return std::move(repo).value();
}

// Rewrites `volume`'s manifests as only a holder of the repository key can:
// `edit` changes each one's JSON (its sequence index, 0 first), the chain of
// seals is rebuilt and the head moved to the newest. What a trusted writer
// with a bug, or an attacker who stole keys/hash.key, could do.
inline void RewriteManifests(const std::string& repo_path, const std::string& volume,
                             const std::function<void(Json&, size_t)>& edit) {
  auto repo = Repository::Open(repo_path);
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  std::vector<Manifest> list;
  ASSERT_TRUE((*repo)->ListManifests(volume, &list, nullptr).ok());
  std::string dir = (*repo)->SnapshotsDir(volume);
  std::string parent_seal;
  for (size_t i = 0; i < list.size(); ++i) {
    Json j = list[i].ToJson();
    if (i > 0) j["parent_manifest_sha256"] = parent_seal;
    edit(j, i);
    std::string text = SealJson(j, (*repo)->seal_key(), &parent_seal);
    ASSERT_TRUE(io::WriteFileAtomic(dir + "/" + list[i].file_name, text).ok());
  }
  if (list.empty()) return;
  auto text = io::ReadFile(dir + "/" + list.back().file_name);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  auto newest = Manifest::Parse(text.value(), "newest", &(*repo)->seal_key());
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  ASSERT_TRUE(AdvanceHead(**repo, volume, &newest.value()).ok());
}

}  // namespace dp420::testing
