// Packs: PackReader::Open (header), ReadIndex (footer, trailer index and its
// padding), ReadStored and CheckRecord (each indexed record against its trailer
// digest: SHA-256 in a pack of version 1, XXH3-128 of the stored bytes in 2).
#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/core/pack.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static dp420::fuzz::MemFile file;
  file.Set(data, size);
  // The id the header names, so that a well-formed header is accepted.
  uint32_t id = 0;
  if (size >= 16) std::memcpy(&id, data + 12, 4);
  auto pack = dp420::PackReader::Open(file.path(), id);
  if (!pack.ok()) return 0;
  auto index = pack->ReadIndex();
  if (!index.ok()) return 0;
  // Records as a reader takes them from the index: bounded as blocks and pages are.
  std::vector<uint8_t> buf;
  size_t n = std::min<size_t>(index->size(), 64);
  for (size_t i = 0; i < n; ++i) {
    const dp420::ObjRef& ref = (*index)[i];
    if (ref.stored_len > (4u << 20)) continue;  // the largest block (job.h)
    buf.resize(ref.stored_len + dp420::kRecordAlign);
    dp420::Status s = pack->ReadStored(ref, buf.data());
    if (s.ok()) {
      FUZZ_CHECK(ref.offset_bytes() + ref.stored_len <= size);
      (void)pack->CheckRecord(ref, buf.data());
    }
  }
  return 0;
}
