// Checks of a snapshot's block table against its manifest, shared by verify
// and by restore (local and remote), so that a restore accepts exactly what
// verify accepts: each leaf entry's shape for its block (zero blocks carry the
// SHA-256 of their length of zeros, stored blocks their exact length), and
// checksum_sha256 recomputed from the blocks' digests (docs/FORMAT.md, "The
// volume checksum"). The manifest's own geometry (volume_size, block_size,
// blocks_total, table levels) is checked when it is parsed (Manifest::FromJson).
//
// Thread safety: one thread per object; the free functions are pure.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "engine/core/format.h"
#include "engine/core/manifest.h"
#include "simd/simd.h"

namespace dp420 {

// Judges leaf entries; caches the digest of a zero block per length.
class EntryChecker {
 public:
  // SHA-256 of `len` zero bytes: the digest a zero block of that length holds.
  const uint8_t* ZeroDigest(uint32_t len);
  // What is wrong with the leaf entry `e` of `block` in the snapshot of `m`,
  // as "entry of block N ...", or "" when it is good.
  std::string Defect(const Manifest& m, const Entry& e, uint64_t block);

 private:
  std::map<uint32_t, std::array<uint8_t, simd::kSha256Bytes>> zero_digests_;
};

// checksum_sha256 recomputed from the blocks' SHA-256s, fed in block order.
class VolumeChecksum {
 public:
  // The next `count` blocks' entries (a leaf page).
  void Add(const Entry* entries, uint32_t count);
  // The next block's raw 32-byte digest.
  void AddDigest(const uint8_t* digest) { sha_.Update(digest, simd::kSha256Bytes); }
  // Lower-case hex of the result; call once, after the last block.
  std::string FinishHex();

 private:
  simd::Sha256Stream sha_;
};

// Whether `hex` (lower case) is the manifest's checksum_sha256.
bool ChecksumMatches(const Manifest& m, const std::string& hex);

}  // namespace dp420
