// Manifests and sealed JSON files: Manifest::Parse, UnsealJson, and the plain
// seal (SealJsonPlain/UnsealJsonPlain). What parses must write back and parse
// again to the same document.
#include "engine/core/manifest.h"
#include "tests/fuzz/fuzz_util.h"

namespace dp420 {
namespace {

const SealKey& Key() {
  static const SealKey key = [] {
    std::string bytes = fuzz::CorpusRepoKey();
    return SealKey::Derive(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }();
  return key;
}

void CheckManifest(const std::string& text) {
  // Without a key the seal is read, not checked: the whole parser is reached.
  auto m = Manifest::Parse(text, "manifest", nullptr);
  (void)Manifest::Parse(text, "manifest", &Key());
  if (!m.ok()) return;
  // A manifest that parses writes back, sealed, to one that parses the same.
  std::string seal;
  std::string again = SealJson(m->ToJson(), Key(), &seal);
  auto back = Manifest::Parse(again, "manifest", &Key());
  FUZZ_CHECK(back.ok());
  FUZZ_CHECK(back->seal == seal);
  FUZZ_CHECK(back->ToJson() == m->ToJson());
  FUZZ_CHECK(back->FileName() == m->FileName());
}

void CheckPlain(const std::string& text) {
  std::string seal;
  auto doc = UnsealJsonPlain(text, "file", &seal);
  (void)UnsealJson(text, "file", &Key());
  if (!doc.ok()) return;
  std::string seal2;
  std::string again = SealJsonPlain(doc.value(), &seal2);
  auto back = UnsealJsonPlain(again, "file");
  FUZZ_CHECK(back.ok());
  FUZZ_CHECK(back.value() == doc.value());
}

}  // namespace
}  // namespace dp420

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  dp420::CheckManifest(text);
  dp420::CheckPlain(text);
  uint64_t seq = 0;
  std::string id;
  (void)dp420::ParseManifestName(text, &seq, &id);
  (void)dp420::ValidVolumeName(text);
  return 0;
}
