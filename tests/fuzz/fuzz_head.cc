// Volume heads (snapshots/VOLUME/HEAD) and this machine's anchors: ParseHead
// and ParseAnchor (engine/core/history.h).
#include "engine/core/history.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const dp420::SealKey& Key() {
  static const dp420::SealKey key = [] {
    std::string bytes = dp420::fuzz::CorpusRepoKey();
    return dp420::SealKey::Derive(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }();
  return key;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  // The head's own repo_id and volume, so that its other fields are reached.
  std::string repo_id = "00000000000000000000000000000000", volume = "v";
  if (auto j = dp420::UnsealJson(text, "HEAD", nullptr); j.ok() && j->is_object()) {
    if (j->contains("repo_id") && (*j)["repo_id"].is_string()) repo_id = (*j)["repo_id"];
    if (j->contains("volume") && (*j)["volume"].is_string()) volume = (*j)["volume"];
  }
  auto head = dp420::ParseHead(text, repo_id, volume, "HEAD", nullptr);
  auto sealed = dp420::ParseHead(text, repo_id, volume, "HEAD", &Key());
  if (sealed.ok()) FUZZ_CHECK(head.ok());
  if (head.ok()) {
    FUZZ_CHECK(head->generation != 0);
    FUZZ_CHECK(head->snapshot_id.empty() == head->seal.empty());
  }
  auto anchor = dp420::ParseAnchor(text, "anchor");
  if (anchor.ok()) FUZZ_CHECK(anchor->snapshot_id.size() < 32 && anchor->seal.size() < 80);
  return 0;
}
