#include "engine/core/upgrade.h"

#include <algorithm>
#include <map>
#include <vector>

#include "engine/core/history.h"
#include "engine/core/repo.h"
#include "io/file.h"

namespace dp420 {

namespace {

struct OldManifest {
  Manifest m;
  std::string old_seal;  // the seal it had (plain, or keyed after an interrupted upgrade)
  std::string rel;
};

std::vector<std::string> ManifestNames(const std::string& dir) {
  std::vector<std::string> names;
  uint64_t sequence = 0;
  std::string id;
  for (const auto& name : io::ListDir(dir)) {
    if (ParseManifestName(name, &sequence, &id)) names.push_back(name);
  }
  return names;
}

// Reads one manifest under its plain seal, or its keyed one when an earlier,
// interrupted upgrade already re-sealed it.
Result<OldManifest> ReadOld(const Repository& repo, const std::string& volume,
                            const std::string& name) {
  OldManifest o;
  o.rel = "snapshots/" + volume + "/" + name;
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(repo.path() + "/" + o.rel));
  auto plain = UnsealJsonPlain(text, o.rel, &o.old_seal);
  Result<Json> doc = plain.ok() ? std::move(plain)
                                : UnsealJson(text, o.rel, &repo.seal_key(), &o.old_seal);
  if (!doc.ok()) return doc.status().Prefix("cannot upgrade");
  DP420_ASSIGN_OR_RETURN(o.m, Manifest::FromJson(doc.value(), o.rel));
  if (o.m.FileName() != name || o.m.volume != volume || o.m.repo_id != repo.repo_id_hex()) {
    return Status::Corruption(o.rel + ": file name, volume or repository does not match");
  }
  return o;
}

// Re-seals one volume's manifests in sequence order, each child pointing at
// its parent's new seal; returns the newest.
Result<Manifest> UpgradeVolume(const Repository& repo, const std::string& volume,
                               uint64_t* resealed) {
  std::vector<OldManifest> list;
  for (const auto& name : ManifestNames(repo.SnapshotsDir(volume))) {
    DP420_ASSIGN_OR_RETURN(OldManifest o, ReadOld(repo, volume, name));
    list.push_back(std::move(o));
  }
  std::sort(list.begin(), list.end(),
            [](const OldManifest& a, const OldManifest& b) { return a.m.sequence < b.m.sequence; });
  std::map<std::string, std::pair<std::string, std::string>> seals;  // id -> (old, new)
  for (size_t i = 0; i < list.size(); ++i) {
    Manifest& m = list[i].m;
    if (i > 0 && list[i - 1].m.sequence == m.sequence) {
      return Status::Corruption("volume '" + volume + "' forked: " + list[i - 1].rel + " and " +
                                list[i].rel + " share a sequence; not upgraded");
    }
    if (!m.parent.empty()) {
      auto p = seals.find(m.parent);
      bool linked = p != seals.end() && (m.parent_manifest_sha256 == p->second.first ||
                                         m.parent_manifest_sha256 == p->second.second);
      if (!linked) {
        return Status::Corruption(list[i].rel + ": its parent " + m.parent +
                                  " is missing or does not match; not upgraded");
      }
      m.parent_manifest_sha256 = p->second.second;
    }
    m.format_version = kFormatVersion;
    std::string text = SealJson(m.ToJson(), repo.seal_key(), &m.seal);
    DP420_RETURN_IF_ERROR(io::WriteFileAtomic(repo.path() + "/" + list[i].rel, text));
    seals[m.snapshot_id] = {list[i].old_seal, m.seal};
    ++*resealed;
  }
  if (list.empty()) return Status::NotFound("volume '" + volume + "' has no snapshots");
  return list.back().m;
}

// The config at format 3 (not encrypted: an existing repository keeps its
// key file), sealed with the repository key; a format-1 config is read
// under its plain seal.
Status RewriteConfig(const Repository& repo, bool plain_seal) {
  std::string path = repo.path() + "/config";
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  DP420_ASSIGN_OR_RETURN(Json config, plain_seal ? UnsealJsonPlain(text, path)
                                                 : UnsealJson(text, path, &repo.seal_key()));
  config["format_version"] = kRepoFormatVersion;
  config["encryption"] = "none";
  return io::WriteFileAtomic(path, SealJson(config, repo.seal_key()));
}

// Format 1 to 2: every manifest re-sealed with the repository key, and the
// volumes' heads written.
Status UpgradeFromFormat1(Repository& repo, UpgradeReport* r) {
  const std::string& path = repo.path();
  // Anchors exist only for volumes seen at format 2 or later: each must
  // already be upgraded (an interrupted run), or the config was put back.
  for (const auto& volume : AnchoredVolumes(repo)) {
    if (!ReadHead(repo, volume).ok()) {
      return Status::Corruption(path + ": this machine has seen volume '" + volume +
                                "' of this repository at format " +
                                std::to_string(kFormatVersion) + " (" + AnchorDir(repo) +
                                "), yet the config says format " +
                                std::to_string(r->from_version) + ": downgraded; refusing");
    }
  }
  std::vector<VolumeLock> locks;
  for (const auto& volume : repo.ListVolumes()) {
    DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockVolume(volume));
    locks.push_back(std::move(lock));
  }
  for (const auto& volume : repo.ListVolumes()) {
    // A head is written once a volume is fully re-sealed: an interrupted
    // upgrade left it done. Anything plain-sealed there now is refused by
    // every reader as a forgery.
    if (ReadHead(repo, volume).ok()) continue;
    auto newest = UpgradeVolume(repo, volume, &r->manifests_resealed);
    if (!newest.ok() && newest.status().code() == Code::kNotFound) continue;
    if (!newest.ok()) return newest.status();
    DP420_RETURN_IF_ERROR(AdvanceHead(repo, volume, &newest.value()));
    ++r->volumes;
  }
  return Status::Ok();
}

}  // namespace

Result<UpgradeReport> UpgradeRepository(const std::string& path) {
  UpgradeReport r;
  // Only format 3 is encrypted: nothing to do (and no key to ask for).
  if (auto encrypted = Repository::IsEncrypted(path); encrypted.ok() && *encrypted) {
    r.from_version = r.to_version = kRepoFormatVersion;
    return r;
  }
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<Repository> repo, Repository::OpenForUpgrade(path));
  r.from_version = repo->format_version();
  r.to_version = kRepoFormatVersion;
  if (r.from_version == kRepoFormatVersion) return r;
  if (r.from_version < 2) DP420_RETURN_IF_ERROR(UpgradeFromFormat1(*repo, &r));
  // Format 2 to 3 changes only the config: packs of version 1 stay as they
  // are and are read as before; new packs are of version 2.
  DP420_RETURN_IF_ERROR(RewriteConfig(*repo, r.from_version < 2));
  return r;
}

}  // namespace dp420
