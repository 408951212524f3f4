#include "engine/core/damage.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>

#include "engine/core/manifest.h"  // Json
#include "engine/core/repo.h"
#include "engine/core/snapshot.h"  // NowUnixNs, Rfc3339
#include "io/file.h"
#include "io/inject.h"

namespace dp420 {

namespace {

std::string DamagePath(const Repository& repo) { return repo.path() + "/damaged.json"; }

Json ToJson(const DamageRecord& d) {
  Json records = Json::array();
  for (uint64_t r : d.records) {
    records.push_back({{"pack", PackName(uint32_t(r >> 32))}, {"offset_4k", uint32_t(r)}});
  }
  return {{"format", "dp420-damaged"}, {"format_version", 1}, {"updated", Rfc3339(NowUnixNs())},
          {"records", records}};
}

bool ParsePack(const Json& v, uint32_t* id) {
  if (!v.is_string()) return false;
  std::string s = v.get<std::string>();
  if (s.size() != 8 || s.find_first_not_of("0123456789abcdef") != std::string::npos) return false;
  *id = uint32_t(std::stoul(s, nullptr, 16));
  return true;
}

}  // namespace

DamageRecord LoadDamage(const Repository& repo) {
  DamageRecord d;
  auto text = io::ReadFile(DamagePath(repo));
  if (!text.ok()) return d;
  Json j = Json::parse(text.value(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "dp420-damaged") return d;
  uint32_t id = 0;
  if (j.contains("records") && j["records"].is_array()) {
    for (const auto& r : j["records"]) {
      if (!r.is_object() || !r.contains("pack") || !ParsePack(r["pack"], &id) ||
          !r.contains("offset_4k") || !r["offset_4k"].is_number_unsigned() ||
          r["offset_4k"].get<uint64_t>() > UINT32_MAX) {
        continue;
      }
      d.records.insert(uint64_t{id} << 32 | r["offset_4k"].get<uint32_t>());
    }
  }
  return d;
}

Status SaveDamage(const Repository& repo, const DamageRecord& found, bool replace) {
  std::string lock_path = repo.path() + "/locks/damaged.lock";
  int fd = io::sys::Open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(lock_path, errno);
  io::File lock = io::File::Adopt(fd, lock_path, false);
  if (flock(fd, LOCK_EX) != 0) return PosixError("flock " + lock_path, errno);
  DamageRecord d = LoadDamage(repo);
  if (replace) d.records.clear();
  d.records.insert(found.records.begin(), found.records.end());
  if (d.empty()) {
    if (io::sys::Unlink(DamagePath(repo).c_str()) != 0 && errno != ENOENT) {
      return PosixError(DamagePath(repo), errno);
    }
    return Status::Ok();
  }
  return io::WriteFileAtomic(DamagePath(repo), ToJson(d).dump() + "\n");
}

}  // namespace dp420
