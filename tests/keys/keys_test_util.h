// Helpers of the key-slot tests: a scratch folder, a repository folder as
// the repository code lays it out (config, keys/, locks/; made here so that
// the tests need nothing but the key store), files with given modes, and a
// snapshot of a folder's files to compare before and after.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>

#include "engine/core/keystore.h"
#include "tests/crypto/crypto_test_util.h"
#include "simd/simd.h"

namespace dp420::keystest {

// A folder under /var/tmp, removed with everything in it.
using ScratchDir = crypto::testing::ScratchDir;

// Cheap scrypt parameters (1 MiB), so that the tests run fast.
inline constexpr crypto::ScryptParams kFast{1024, 8, 1};

inline void WriteText(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline crypto::RepoId RandomRepoId() {
  crypto::RepoId id;
  auto master = crypto::MasterKey::Generate();  // any random bytes will do
  std::copy_n(master->bytes().begin(), id.size(), id.begin());
  return id;
}

// A repository folder at `path` with a config naming `repo_id` (no slots yet).
inline void MakeRepoDir(const std::string& path, const crypto::RepoId& repo_id) {
  std::filesystem::create_directories(path + "/keys");
  std::filesystem::create_directories(path + "/locks");
  WriteText(path + "/config",
            "{\"format\":\"dp420-repository\",\"format_version\":3,\"repo_id\":\"" +
                simd::ToHex(repo_id.data(), repo_id.size()) + "\"}\n{\"seal\":\"x\"}\n");
}

// Every file under `dir` with its content.
inline std::map<std::string, std::string> Files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().string()] = ReadText(e.path().string());
  }
  return out;
}

// A repository folder (MakeRepoDir) with a random id, and a fresh master key.
class RepoWithMasterKey : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_ = dir_.path() + "/repo";
    repo_id_ = RandomRepoId();
    MakeRepoDir(repo_, repo_id_);
    auto m = crypto::MasterKey::Generate();
    ASSERT_TRUE(m.ok());
    master_.emplace(std::move(m).value());
  }

  ScratchDir dir_;
  std::string repo_;
  crypto::RepoId repo_id_{};
  std::optional<crypto::MasterKey> master_;
};

}  // namespace dp420::keystest
