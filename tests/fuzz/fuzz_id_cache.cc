// The agent's block id cache (VOLUME.ids) and its .seen anchor
// (engine/net/id_cache.h): CacheValid, ReadCacheRecords, GetCacheRecord,
// CheckCommitted over a cache whose header and records are the input, and
// CheckNotRolledBack over the input as a .seen file.
#include <cstring>
#include <vector>

#include "engine/net/id_cache.h"
#include "simd/simd.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The manifest the cache's header describes, so a well-formed header is valid.
dp420::Manifest ManifestOf(const dp420::net::CacheHeader& h) {
  dp420::Manifest m;
  m.block_size = h.block_size;
  m.blocks_total = h.blocks;
  m.volume_size = h.blocks * uint64_t{h.block_size};
  m.seal = dp420::simd::ToHex(h.seal, 32);
  m.snapshot_id = "0123456789abcdef";
  m.volume = "v";
  return m;
}

void CheckCache(const uint8_t* data, size_t size) {
  static dp420::fuzz::MemFile file;
  file.Set(data, size);
  dp420::net::CacheHeader h{};
  std::memcpy(&h, data, std::min(size, sizeof(h)));
  dp420::Manifest m = ManifestOf(h);
  if (!dp420::net::CacheValid(file.fd(), m)) return;
  FUZZ_CHECK(size == dp420::net::kCacheHeader + m.blocks_total * dp420::net::kCacheRecord);
  std::vector<uint8_t> raw(256 * dp420::net::kCacheRecord);
  for (uint64_t first = 0; first < m.blocks_total; first += 256) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(256, m.blocks_total - first));
    FUZZ_CHECK(dp420::net::ReadCacheRecords(file.fd(), first, n, raw.data()).ok());
    for (uint32_t i = 0; i < n; ++i) {
      dp420::Entry e = dp420::net::GetCacheRecord(raw.data() + i * dp420::net::kCacheRecord);
      uint8_t back[dp420::net::kCacheRecord];
      dp420::net::PutCacheRecord(e, back);
      const uint8_t* rec = raw.data() + i * dp420::net::kCacheRecord;
      // A block the server lost reads with its id inverted (never unchanged).
      if (rec[48] == dp420::net::kCacheLost) {
        for (int b = 0; b < 16; ++b) back[b] = static_cast<uint8_t>(~back[b]);
      }
      FUZZ_CHECK(std::memcmp(back, rec, 48) == 0);
    }
  }
  // A manifest's geometry is checked when it is parsed (Manifest::FromJson).
  if (m.block_size < 4096 || m.block_size > (4u << 20) || (m.block_size & (m.block_size - 1))) {
    return;
  }
  dp420::net::SentSnapshot sent;
  sent.volume = m.volume;
  sent.snapshot_id = m.snapshot_id;
  sent.block_size = m.block_size;
  sent.volume_size = m.volume_size;
  sent.blocks = m.blocks_total;
  (void)dp420::net::CheckCommitted(m, sent, file.fd(), -1, 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckCache(data, size);
  static const std::string dir = dp420::fuzz::MakeTempDir();
  std::string seen = dir + "/v.seen";
  dp420::fuzz::WriteFile(seen, std::string(reinterpret_cast<const char*>(data), size));
  dp420::Manifest newest;
  newest.sequence = 3;
  newest.snapshot_id = "0123456789abcdef";
  (void)dp420::net::CheckNotRolledBack(seen, &newest);
  (void)dp420::net::CheckNotRolledBack(seen, nullptr);
  return 0;
}
