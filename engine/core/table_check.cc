#include "engine/core/table_check.h"

#include "engine/core/record.h"

#include <cctype>
#include <cstring>
#include <vector>

namespace dp420 {

const uint8_t* EntryChecker::ZeroDigest(uint32_t len) {
  auto [it, added] = zero_digests_.try_emplace(len);
  if (added) {
    std::vector<uint8_t> zeros(len, 0);
    simd::Sha256(zeros.data(), len, it->second.data());
  }
  return it->second.data();
}

std::string EntryChecker::Defect(const Manifest& m, const Entry& e, uint64_t block) {
  uint32_t len = m.BlockLen(block);
  const ObjRef& ref = e.ref;
  std::string what;  // stays empty (no allocation) for a good entry
  if (ref.flags & kObjZero) {
    if (ref.pack_id != 0) {
      what = "is a zero block but names a pack";
    } else if (std::memcmp(ref.sha256, ZeroDigest(len), simd::kSha256Bytes) != 0) {
      what = "is a zero block with a wrong SHA-256";
    }
  } else if (ref.pack_id == 0) {
    what = "names no pack and is not a zero block";
  } else if (ref.flags & (kObjTableLeaf | kObjTableInner)) {
    what = "points to a table page";
  } else if (!StoredLengthFits(ref, len)) {
    what = "has stored_len " + std::to_string(ref.stored_len) + ", which a " +
           std::to_string(len) + "-byte block cannot take";
  }
  if (what.empty()) return what;
  return "entry of block " + std::to_string(block) + " " + what;
}

void VolumeChecksum::Add(const Entry* entries, uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) AddDigest(entries[i].ref.sha256);
}

std::string VolumeChecksum::FinishHex() {
  uint8_t digest[simd::kSha256Bytes];
  sha_.Final(digest);
  return simd::ToHex(digest, sizeof(digest));
}

bool ChecksumMatches(const Manifest& m, const std::string& hex) {
  if (m.checksum_sha256.size() != hex.size()) return false;
  for (size_t i = 0; i < hex.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(m.checksum_sha256[i])) != hex[i]) return false;
  }
  return true;
}

}  // namespace dp420
