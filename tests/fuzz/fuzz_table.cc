// Block table pages (engine/core/table.h, table_check.h): a leaf page's
// entries judged as verify and restore judge them (EntryChecker), the volume
// checksum over them, and the tree's shape for the geometry the input names.
#include <cstring>
#include <vector>

#include "engine/core/table.h"
#include "engine/core/table_check.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dp420::fuzz::Input in(data, size);
  // A geometry as Manifest::FromJson accepts it: a power-of-two block size
  // from 4 KiB to 4 MiB and any volume size.
  dp420::Manifest m;
  m.block_size = 4096u << (in.U8() % 11);
  m.volume_size = in.U64();
  m.blocks_total = m.volume_size / m.block_size + (m.volume_size % m.block_size != 0);
  uint64_t page = in.U64() % (m.blocks_total / dp420::kPageEntries + 1);
  auto rest = in.Rest();
  std::vector<dp420::Entry> entries(std::min<size_t>(rest.size() / sizeof(dp420::Entry),
                                                     dp420::kPageEntries));
  if (!entries.empty()) std::memcpy(entries.data(), rest.data(), entries.size() * sizeof(dp420::Entry));

  dp420::TableShape shape = dp420::TableShape::For(m.blocks_total);
  FUZZ_CHECK(shape.levels >= 1);
  for (uint32_t level = 0; level < shape.levels; ++level) {
    uint64_t pages = shape.PagesAt(level);
    FUZZ_CHECK(pages >= 1);
    FUZZ_CHECK(dp420::PageEntryCount(shape, level, pages - 1) <= dp420::kPageEntries);
  }
  FUZZ_CHECK(shape.PagesAt(shape.levels - 1) == 1);
  uint32_t count = dp420::PageEntryCount(shape, 0, page);
  dp420::EntryChecker checker;
  dp420::VolumeChecksum sum;
  for (uint32_t i = 0; i < count && i < entries.size(); ++i) {
    uint64_t block = page * dp420::kPageEntries + i;
    std::string defect = checker.Defect(m, entries[i], block);
    if (defect.empty() && (entries[i].ref.flags & dp420::kObjZero)) {
      FUZZ_CHECK(entries[i].ref.pack_id == 0);
    }
  }
  sum.Add(entries.data(), static_cast<uint32_t>(entries.size()));
  std::string hex = sum.FinishHex();
  m.checksum_sha256 = hex;
  FUZZ_CHECK(dp420::ChecksumMatches(m, hex));
  return 0;
}
