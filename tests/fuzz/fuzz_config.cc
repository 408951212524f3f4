// The repository config (REPO/config): Repository::Open and OpenForUpgrade
// on a repository whose config is the input (keys/hash.key is the corpus
// repository's, so seeds open).
#include <sys/stat.h>

#include "engine/core/repo.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& RepoDir() {
  static const std::string dir = [] {
    std::string d = dp420::fuzz::MakeTempDir();
    FUZZ_CHECK(mkdir((d + "/keys").c_str(), 0700) == 0);
    dp420::fuzz::WriteFile(d + "/keys/hash.key", dp420::fuzz::CorpusRepoKey());
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = RepoDir();
  std::string text(reinterpret_cast<const char*>(data), size);
  dp420::fuzz::WriteFile(dir + "/config", text);
  auto repo = dp420::Repository::Open(dir);
  auto legacy = dp420::Repository::OpenForUpgrade(dir);
  if (repo.ok()) {
    FUZZ_CHECK(legacy.ok());
    FUZZ_CHECK((*repo)->repo_id_hex().size() == 32);
  }
  return 0;
}
