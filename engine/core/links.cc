#include "engine/core/links.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>

#include "engine/core/repo.h"
#include "engine/core/test_hooks.h"
#include "io/file.h"

namespace dp420 {

namespace {

std::string Stem(uint64_t sequence, const std::string& id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%010llu-", static_cast<unsigned long long>(sequence));
  return buf + id;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "SEQ-ID" + suffix -> sequence and id; false when the name is not one.
bool ParseStem(const std::string& name, const std::string& suffix, uint64_t* sequence,
               std::string* id) {
  if (name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  return ParseManifestName(name.substr(0, name.size() - suffix.size()) + ".manifest", sequence,
                           id);
}

Json LinkToJson(const Repository& repo, const ChainLink& l) {
  Json j;
  j["format"] = "dp420-link";
  j["format_version"] = kFormatVersion;
  j["repo_id"] = repo.repo_id_hex();
  j["volume"] = l.volume;
  j["snapshot_id"] = l.snapshot_id;
  j["sequence"] = l.sequence;
  j["parent"] = l.parent;
  j["parent_manifest_sha256"] = l.parent_seal;
  j["ancestor"] = l.ancestor.empty() ? Json(nullptr) : Json(l.ancestor);
  j["ancestor_sequence"] = l.ancestor_sequence;
  j["ancestor_seal"] = l.ancestor.empty() ? Json(nullptr) : Json(l.ancestor_seal);
  j["forgotten"] = l.forgotten;
  j["updated"] = l.updated;
  return j;
}

Status CheckLinkFields(const ChainLink& l, const std::string& what) {
  bool no_ancestor = l.ancestor.empty();
  if (l.parent.empty() || l.sequence < 2 || l.ancestor_sequence + 1 >= l.sequence ||
      no_ancestor != (l.ancestor_sequence == 0) || no_ancestor != l.ancestor_seal.empty() ||
      l.forgotten != l.sequence - l.ancestor_sequence - 1) {
    return Status::Corruption(what + ": inconsistent fields");
  }
  return Status::Ok();
}

// Reads the links of one volume folder; valid ones by snapshot id.
Status ReadLinks(const Repository& repo, const std::string& volume,
                 const std::vector<std::string>& names, std::vector<DamagedFile>* damaged,
                 std::map<std::string, ChainLink>* out) {
  for (const auto& name : names) {
    uint64_t sequence = 0;
    std::string id;
    if (!ParseStem(name, ".link", &sequence, &id)) continue;
    std::string rel = "snapshots/" + volume + "/" + name;
    auto text = io::ReadFile(repo.path() + "/" + rel);
    if (!text.ok() && text.status().code() == Code::kNotFound) continue;  // forgotten meanwhile
    Result<ChainLink> link = text.ok() ? ParseLink(repo, volume, text.value(), rel)
                                       : Result<ChainLink>(text.status().Prefix(rel));
    if (link.ok() && (link->sequence != sequence || link->snapshot_id != id)) {
      link = Status::Corruption(rel + ": file name does not match its content");
    }
    if (link.ok()) {
      (*out)[id] = std::move(link).value();
      continue;
    }
    if (!damaged) return link.status();
    damaged->push_back({rel, link.status()});
  }
  return Status::Ok();
}

// True when the damaged file's name says it is a manifest in a forgotten range.
bool DamagedCovered(const DamagedFile& d, const std::vector<const ChainLink*>& ranges) {
  uint64_t sequence = 0;
  std::string id;
  std::string name = d.path.substr(d.path.find_last_of('/') + 1);
  if (!ParseManifestName(name, &sequence, &id)) return false;
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const ChainLink* l) { return l->Covers(sequence); });
}

}  // namespace

std::string LinkFileName(uint64_t sequence, const std::string& id) {
  return Stem(sequence, id) + ".link";
}

std::string ProtectFileName(uint64_t sequence, const std::string& id) {
  return Stem(sequence, id) + ".protected";
}

std::string SealLink(const Repository& repo, const ChainLink& link) {
  return SealJson(LinkToJson(repo, link), repo.seal_key());
}

Result<ChainLink> ParseLink(const Repository& repo, const std::string& volume,
                            const std::string& text, const std::string& what) {
  DP420_ASSIGN_OR_RETURN(Json j, UnsealJson(text, what, &repo.seal_key()));
  ChainLink l;
  try {
    if (j.at("format").get<std::string>() != "dp420-link" ||
        j.at("repo_id").get<std::string>() != repo.repo_id_hex() ||
        j.at("volume").get<std::string>() != volume) {
      return Status::Corruption(what + ": not a link of this volume");
    }
    if (JsonUint<uint32_t>(j.at("format_version")) > kFormatVersion) {
      return Status::Version(what + ": format newer than this dp420 supports");
    }
    l.volume = volume;
    l.snapshot_id = j.at("snapshot_id").get<std::string>();
    l.sequence = JsonUint<uint64_t>(j.at("sequence"));
    l.parent = j.at("parent").get<std::string>();
    l.parent_seal = Lower(j.at("parent_manifest_sha256").get<std::string>());
    if (!j.at("ancestor").is_null()) {
      l.ancestor = j.at("ancestor").get<std::string>();
      l.ancestor_seal = Lower(j.at("ancestor_seal").get<std::string>());
    }
    l.ancestor_sequence = JsonUint<uint64_t>(j.at("ancestor_sequence"));
    l.forgotten = JsonUint<uint64_t>(j.at("forgotten"));
    l.updated = j.value("updated", "");
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": missing or malformed field (" + e.what() + ")");
  }
  DP420_RETURN_IF_ERROR(CheckLinkFields(l, what));
  return l;
}

Status ApplyLinks(const Repository& repo, const std::string& volume,
                  std::vector<Manifest>* manifests, std::vector<DamagedFile>* damaged,
                  LinkScan* scan) {
  std::vector<std::string> names = io::ListDir(repo.SnapshotsDir(volume));
  std::map<std::string, ChainLink> links;
  PausePoint("links-listed");
  DP420_RETURN_IF_ERROR(ReadLinks(repo, volume, names, damaged, &links));
  std::vector<const ChainLink*> ranges;
  ranges.reserve(links.size());
  for (const auto& [id, link] : links) ranges.push_back(&link);
  auto covered = [&](uint64_t s) {
    return std::any_of(ranges.begin(), ranges.end(), [&](const ChainLink* l) { return l->Covers(s); });
  };
  std::vector<Manifest> kept;
  for (auto& m : *manifests) {
    if (covered(m.sequence)) {
      if (scan) scan->leftovers.push_back("snapshots/" + volume + "/" + m.file_name);
      continue;
    }
    kept.push_back(std::move(m));
  }
  manifests->swap(kept);
  if (damaged) {
    auto first_covered = std::stable_partition(
        damaged->begin(), damaged->end(),
        [&](const DamagedFile& d) { return !DamagedCovered(d, ranges); });
    for (auto it = first_covered; it != damaged->end(); ++it) {
      if (scan) scan->leftovers.push_back(it->path);
    }
    damaged->erase(first_covered, damaged->end());
  }
  std::map<std::string, Manifest*> by_id;
  for (auto& m : *manifests) by_id[m.snapshot_id] = &m;
  for (const auto& [id, link] : links) {
    auto it = by_id.find(id);
    std::string rel = "snapshots/" + volume + "/" + LinkFileName(link.sequence, id);
    if (it == by_id.end()) {
      // Its snapshot was forgotten after it (or is gone): nothing to link.
      if (scan) scan->leftovers.push_back(rel);
      continue;
    }
    Manifest& m = *it->second;
    if (m.parent != link.parent || Lower(m.parent_manifest_sha256) != link.parent_seal) {
      Status bad = Status::Corruption(rel + ": does not belong to snapshot " + id +
                                      " (its parent differs)");
      if (!damaged) return bad;
      damaged->push_back({rel, bad});
      continue;
    }
    m.chain_parent = link.ancestor;
    m.chain_parent_seal = link.ancestor_seal;
    m.linked = true;
    if (scan) scan->links.push_back(link);
  }
  for (auto& m : *manifests) {
    if (std::binary_search(names.begin(), names.end(), ProtectFileName(m.sequence, m.snapshot_id))) {
      m.is_protected = true;
    }
  }
  for (const auto& name : names) {
    uint64_t sequence = 0;
    std::string id;
    if (scan && ParseStem(name, ".protected", &sequence, &id) && covered(sequence)) {
      scan->leftovers.push_back("snapshots/" + volume + "/" + name);
    }
  }
  return Status::Ok();
}

}  // namespace dp420
