#include "engine/net/volumes.h"

#include <map>

#include "engine/core/manifest.h"
#include "engine/net/server.h"

namespace dp420::net {

namespace {

// Who owns a repository volume, from its manifests: the one client every
// valid manifest names, or "" when they disagree, name none, or there are
// only damaged ones.
struct Ownership {
  bool exists = false;
  std::string owner;
};

Result<Ownership> OwnerOf(const Repository& repo, const std::string& repo_volume) {
  std::vector<Manifest> manifests;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListManifests(repo_volume, &manifests, &damaged));
  for (const DamagedFile& d : damaged) {
    if (!IsDamage(d.status)) return d.status;  // unreadable now: it tells no owner
  }
  Ownership o;
  o.exists = !manifests.empty() || !damaged.empty();
  for (size_t i = 0; i < manifests.size(); ++i) {
    if (i == 0) o.owner = manifests[i].client;
    if (manifests[i].client != o.owner) return Ownership{true, ""};
  }
  return o;
}

// A namespaced name whose manifests all belong to the client it names.
bool IsNamespacedOf(const std::string& repo_volume, const std::string& owner,
                    std::string* client, std::string* volume) {
  return SplitNamespacedVolume(repo_volume, client, volume) && *client == owner;
}

Result<ResolvedVolume> ResolveIn(const Repository& repo, const std::string& client,
                                 const std::string& volume, const std::string& shown) {
  ResolvedVolume r;
  r.repo = NamespacedVolume(client, volume);
  r.shown = shown;
  r.owner = client;
  if (r.repo.empty()) {
    size_t room = 64 - std::min<size_t>(62, NamespacedVolume(client, "x").size() - 1);
    return Status::InvalidArgument("volume name '" + shown + "' is too long: client '" +
                                   client + "' may use volume names of at most " +
                                   std::to_string(room) + " characters");
  }
  DP420_ASSIGN_OR_RETURN(Ownership o, OwnerOf(repo, r.repo));
  r.exists = o.exists;
  if (o.exists && o.owner != client) {
    return Status::Make(Code::kPermission,
                        "volume '" + shown + "' cannot be used: repository volume '" + r.repo +
                            "' holds snapshots it cannot attribute to client '" + client +
                            "' (damaged, or written by another client before volumes were "
                            "namespaced); the server's operator must check it with "
                            "`dp420 verify`");
  }
  return r;
}

}  // namespace

std::string NamespacedVolume(const std::string& client, const std::string& volume) {
  if (!ValidVolumeName(client) || !ValidVolumeName(volume)) return "";
  std::string out;
  for (char c : client) out += c == '_' ? std::string("__") : std::string(1, c);
  out += "_.";
  out += volume;
  return ValidVolumeName(out) ? out : "";
}

bool SplitNamespacedVolume(const std::string& repo_volume, std::string* client,
                           std::string* volume) {
  std::string c;
  for (size_t i = 0; i < repo_volume.size(); ++i) {
    char ch = repo_volume[i];
    if (ch != '_') {
      c += ch;
      continue;
    }
    if (i + 1 >= repo_volume.size()) return false;
    if (repo_volume[i + 1] == '_') {
      c += '_';
      ++i;
      continue;
    }
    if (repo_volume[i + 1] != '.') return false;
    std::string v = repo_volume.substr(i + 2);
    if (!ValidVolumeName(c) || !ValidVolumeName(v)) return false;
    *client = c;
    *volume = v;
    return true;
  }
  return false;
}

bool ValidRequestVolumeName(const std::string& name) {
  size_t slash = name.find('/');
  if (slash == std::string::npos) return ValidVolumeName(name);
  return ValidVolumeName(name.substr(0, slash)) && ValidVolumeName(name.substr(slash + 1));
}

std::string QualifiedName(const std::string& repo_volume) {
  std::string client, volume;
  if (!SplitNamespacedVolume(repo_volume, &client, &volume)) return repo_volume;
  client += '/';
  client += volume;
  return client;
}

Result<ResolvedVolume> ResolveVolume(const Repository& repo, const SessionInfo& who,
                                     const std::string& requested, bool for_backup) {
  bool admin = who.role == "admin" && !for_backup;
  size_t slash = requested.find('/');
  if (slash != std::string::npos) {
    if (!ValidRequestVolumeName(requested) || !admin) {
      // As for any invalid name: an append client learns nothing of others.
      return Status::InvalidArgument("invalid volume name '" + requested + "'");
    }
    return ResolveIn(repo, requested.substr(0, slash), requested.substr(slash + 1), requested);
  }
  if (!ValidVolumeName(requested)) {
    return Status::InvalidArgument("invalid volume name '" + requested + "'");
  }
  std::string c, v;
  bool namespaced = SplitNamespacedVolume(requested, &c, &v);
  if (namespaced && (c == who.client || admin)) {
    // Its own volume by its repository name, as its manifests name it.
    return ResolveIn(repo, c, v, requested);
  }
  // The namespaced volume first, then a legacy volume of that plain name:
  // both are always looked at, so that the answer takes the same work
  // whether a foreign legacy volume exists or not.
  auto own = ResolveIn(repo, who.client, requested, requested);
  DP420_ASSIGN_OR_RETURN(Ownership legacy, OwnerOf(repo, requested));
  if (!own.ok() || own->exists) return own;
  if (legacy.exists && !namespaced && (admin || legacy.owner == who.client)) {
    ResolvedVolume r{requested, requested, legacy.owner, true};
    return r;
  }
  return own;
}

Status VisibleVolumes(const Repository& repo, const SessionInfo& who,
                      std::vector<VisibleVolume>* out) {
  std::vector<Manifest> all;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListManifests("", &all, &damaged));
  // A volume with damaged manifests, or manifests of several clients, is
  // nobody's (its owner cannot be established): shown to admins only.
  std::map<std::string, Ownership> owners;
  std::set<std::string> nobodys;
  for (const auto& d : damaged) {
    size_t first = d.path.find('/'), last = d.path.rfind('/');
    if (first < last) nobodys.insert(d.path.substr(first + 1, last - first - 1));
  }
  for (const auto& m : all) {
    auto [it, added] = owners.try_emplace(m.volume, Ownership{true, m.client});
    if (!added && it->second.owner != m.client) nobodys.insert(m.volume);
  }
  for (const auto& name : nobodys) owners[name] = Ownership{true, ""};
  bool admin = who.role == "admin";
  for (const auto& [name, o] : owners) {
    std::string client, volume;
    bool namespaced = SplitNamespacedVolume(name, &client, &volume);
    if (admin) {
      out->push_back({name, namespaced && client == o.owner ? QualifiedName(name) : name});
    } else if (IsNamespacedOf(name, who.client, &client, &volume) && o.owner == who.client) {
      out->push_back({name, volume});
    } else if (!namespaced && o.owner == who.client &&
               !owners.count(NamespacedVolume(who.client, name))) {
      out->push_back({name, name});  // legacy, its own
    }
  }
  return Status::Ok();
}

bool AnswersRequest(const std::string& stored, const std::string& requested,
                    const std::string& client) {
  if (stored == requested) return true;
  size_t slash = requested.find('/');
  if (slash == std::string::npos) return stored == NamespacedVolume(client, requested);
  return stored == NamespacedVolume(requested.substr(0, slash), requested.substr(slash + 1));
}

}  // namespace dp420::net
