#include "engine/core/relocate.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "engine/core/repo.h"
#include "io/file.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

constexpr size_t kHeaderBytes = 24;  // magic, version, pack id, count, reserved

void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }

uint32_t GetU32(const std::string& s, size_t at) {
  uint32_t v;
  std::memcpy(&v, s.data() + at, 4);
  return v;
}

}  // namespace

const RelocationEntry* Relocation::Find(uint32_t old_offset_4k) const {
  auto it = std::lower_bound(
      entries.begin(), entries.end(), old_offset_4k,
      [](const RelocationEntry& e, uint32_t off) { return e.old_offset_4k < off; });
  if (it == entries.end() || it->old_offset_4k != old_offset_4k) return nullptr;
  return &*it;
}

std::string RelocationName(uint32_t pack_id) { return "relocated/" + PackName(pack_id); }

std::string RelocationPath(const Repository& repo, uint32_t pack_id) {
  return repo.path() + "/" + RelocationName(pack_id);
}

std::string EncodeRelocation(const Relocation& r) {
  std::string out(kRelocationMagic, 8);
  PutU32(&out, kRelocationVersion);
  PutU32(&out, r.pack_id);
  PutU32(&out, static_cast<uint32_t>(r.entries.size()));
  PutU32(&out, 0);
  for (const RelocationEntry& e : r.entries) {
    PutU32(&out, e.old_offset_4k);
    PutU32(&out, e.new_pack_id);
    PutU32(&out, e.new_offset_4k);
  }
  PutU32(&out, simd::Crc32c(0, reinterpret_cast<const uint8_t*>(out.data()), out.size()));
  return out;
}

Result<Relocation> DecodeRelocation(const std::string& bytes, uint32_t expected_pack,
                                    const std::string& what) {
  if (bytes.size() < kHeaderBytes + 4 || std::memcmp(bytes.data(), kRelocationMagic, 8) != 0) {
    return Status::Corruption(what + ": not a relocation file (bad magic or truncated)");
  }
  size_t body = bytes.size() - 4;
  if (simd::Crc32c(0, reinterpret_cast<const uint8_t*>(bytes.data()), body) !=
      GetU32(bytes, body)) {
    return Status::Corruption(what + ": relocation file fails its CRC-32C");
  }
  if (GetU32(bytes, 8) > kRelocationVersion) {
    return Status::Version(what + ": relocation format version " +
                           std::to_string(GetU32(bytes, 8)) + " is newer than this dp420");
  }
  uint32_t count = GetU32(bytes, 16);
  if (GetU32(bytes, 12) != expected_pack || body != kHeaderBytes + uint64_t{count} * 12) {
    return Status::Corruption(what + ": relocation file names another pack or has a bad size");
  }
  Relocation r;
  r.pack_id = expected_pack;
  r.entries.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    size_t at = kHeaderBytes + size_t{i} * 12;
    r.entries[i] = {GetU32(bytes, at), GetU32(bytes, at + 4), GetU32(bytes, at + 8)};
    if (r.entries[i].new_pack_id == 0 ||
        (i > 0 && r.entries[i].old_offset_4k <= r.entries[i - 1].old_offset_4k)) {
      return Status::Corruption(what + ": relocation entries are not sorted or name no pack");
    }
  }
  return r;
}

Result<Relocation> ReadRelocation(const Repository& repo, uint32_t pack_id) {
  auto bytes = io::ReadFile(RelocationPath(repo, pack_id));
  if (!bytes.ok()) return bytes.status().Prefix(RelocationName(pack_id));
  return DecodeRelocation(bytes.value(), pack_id, RelocationName(pack_id));
}

Status WriteRelocation(const Repository& repo, const Relocation& r) {
  DP420_RETURN_IF_ERROR(io::MakeDirs(repo.path() + "/relocated"));
  return io::WriteFileAtomic(RelocationPath(repo, r.pack_id), EncodeRelocation(r));
}

std::vector<uint32_t> ListRelocations(const Repository& repo) {
  std::vector<uint32_t> ids;
  for (const std::string& name : io::ListDir(repo.path() + "/relocated")) {
    if (name.size() != 8 || name.find_first_not_of("0123456789abcdef") != std::string::npos) {
      continue;
    }
    ids.push_back(static_cast<uint32_t>(std::stoul(name, nullptr, 16)));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<uint32_t> ListReadablePackIds(const Repository& repo) {
  std::vector<uint32_t> packs = repo.ListPackIds();
  std::vector<uint32_t> moved = ListRelocations(repo);
  std::vector<uint32_t> out;
  std::set_union(packs.begin(), packs.end(), moved.begin(), moved.end(), std::back_inserter(out));
  return out;
}

bool Relocator::PackExists(uint32_t pack_id) {
  auto [it, added] = exists_.try_emplace(pack_id, false);
  if (added) it->second = access(repo_.PackPath(pack_id).c_str(), F_OK) == 0;
  return it->second;
}

Result<const Relocation*> Relocator::Load(uint32_t pack_id) {
  auto it = files_.find(pack_id);
  if (it != files_.end()) return static_cast<const Relocation*>(it->second.get());
  auto r = ReadRelocation(repo_, pack_id);
  if (!r.ok() && r.status().code() != Code::kNotFound) return r.status();
  std::unique_ptr<Relocation> owned;
  if (r.ok()) owned = std::make_unique<Relocation>(std::move(r).value());
  const Relocation* raw = owned.get();
  files_.emplace(pack_id, std::move(owned));
  return raw;
}

Status Relocator::Resolve(ObjRef* ref) {
  if (!ref->stored()) return Status::Ok();
  for (int depth = 0; depth <= kMaxRelocationDepth; ++depth) {
    if (!prefer_ && PackExists(ref->pack_id)) return Status::Ok();
    DP420_ASSIGN_OR_RETURN(const Relocation* r, Load(ref->pack_id));
    if (r) used_.insert(ref->pack_id);
    const RelocationEntry* e = r ? r->Find(ref->offset_4k) : nullptr;
    if (!e) {
      if (!r || PackExists(ref->pack_id)) return Status::Ok();  // missing: the caller reports
      return Status::Corruption(RelocationName(ref->pack_id) + " has no entry for offset " +
                                std::to_string(ref->offset_bytes()) + " of pack " +
                                PackName(ref->pack_id) + ", whose file is gone");
    }
    ref->pack_id = e->new_pack_id;
    ref->offset_4k = e->new_offset_4k;
  }
  return Status::Corruption("relocation chain longer than " +
                            std::to_string(kMaxRelocationDepth) + " hops (a cycle?) at pack " +
                            PackName(ref->pack_id));
}

}  // namespace dp420
