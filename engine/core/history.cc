#include "engine/core/history.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>

#include "engine/core/snapshot.h"  // NowUnixNs, Rfc3339
#include "io/inject.h"
#include "io/file.h"

namespace dp420 {

namespace {

std::string HeadPath(const Repository& repo, const std::string& volume) {
  return repo.SnapshotsDir(volume) + "/HEAD";
}

std::string HeadRel(const std::string& volume) { return "snapshots/" + volume + "/HEAD"; }

std::string Describe(const VolumeHead& h) {
  if (h.snapshot_id.empty()) return "generation " + std::to_string(h.generation) + ", no snapshot";
  return "generation " + std::to_string(h.generation) + ", snapshot " + h.snapshot_id +
         " (sequence " + std::to_string(h.sequence) + ")";
}

Json HeadToJson(const Repository& repo, const std::string& volume, const VolumeHead& h) {
  Json j;
  j["format"] = "dp420-head";
  j["format_version"] = kFormatVersion;
  j["repo_id"] = repo.repo_id_hex();
  j["volume"] = volume;
  j["generation"] = h.generation;
  j["sequence"] = h.sequence;
  j["snapshot_id"] = h.snapshot_id.empty() ? Json(nullptr) : Json(h.snapshot_id);
  j["manifest_seal"] = h.seal.empty() ? Json(nullptr) : Json(h.seal);
  j["updated"] = Rfc3339(NowUnixNs());
  return j;
}

Result<VolumeHead> HeadFromJson(const std::string& repo_id_hex, const std::string& volume,
                                const Json& j, const std::string& what) {
  VolumeHead h;
  try {
    if (j.at("format").get<std::string>() != "dp420-head" ||
        j.at("repo_id").get<std::string>() != repo_id_hex ||
        j.at("volume").get<std::string>() != volume) {
      return Status::Corruption(what + ": not this volume's head");
    }
    h.generation = JsonUint<uint64_t>(j.at("generation"));
    h.sequence = JsonUint<uint64_t>(j.at("sequence"));
    if (!j.at("snapshot_id").is_null()) h.snapshot_id = j.at("snapshot_id").get<std::string>();
    if (!j.at("manifest_seal").is_null()) h.seal = j.at("manifest_seal").get<std::string>();
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": missing or malformed field (" + e.what() + ")");
  }
  if (h.generation == 0 || h.snapshot_id.empty() != h.seal.empty()) {
    return Status::Corruption(what + ": inconsistent fields");
  }
  return h;
}

// ---- Anchors: one line "generation sequence snapshot_id seal" per volume. ----

std::string StateDir() {
  if (const char* d = std::getenv("DP420_STATE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_STATE_HOME"); d && *d) return std::string(d) + "/dp420";
  if (const char* d = std::getenv("HOME"); d && *d) return std::string(d) + "/.local/state/dp420";
  return "";
}

std::string AnchorPath(const Repository& repo, const std::string& volume) {
  std::string dir = AnchorDir(repo);
  return dir.empty() ? "" : dir + "/" + volume;
}

Result<VolumeHead> ReadAnchor(const std::string& path) {
  auto text = io::ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) return VolumeHead{};
    return text.status();
  }
  return ParseAnchor(text.value(), path);
}

}  // namespace

Result<VolumeHead> ParseAnchor(const std::string& text, const std::string& path) {
  VolumeHead a;
  char id[32] = {}, seal[80] = {};
  unsigned long long gen = 0, seq = 0;
  // %llu saturates an overflowing number: the anchor then reads as ahead of
  // every head, and the volume is refused as rolled back (the safe side).
  // NOLINTNEXTLINE(cert-err34-c)
  int n = std::sscanf(text.c_str(), "%llu %llu %31s %79s", &gen, &seq, id, seal);
  if (n < 2) return Status::Corruption(path + ": not an anchor line");
  a.generation = gen;
  a.sequence = seq;
  if (n == 4 && std::string(id) != "-") {
    a.snapshot_id = id;
    a.seal = seal;
  }
  return a;
}

Result<VolumeHead> ParseHead(const std::string& text, const std::string& repo_id_hex,
                             const std::string& volume, const std::string& what,
                             const SealKey* key) {
  DP420_ASSIGN_OR_RETURN(Json j, UnsealJson(text, what, key));
  return HeadFromJson(repo_id_hex, volume, j, what);
}

namespace {

// Raises the anchor at `path` to `head` unless it is already as high; the
// read-compare-write runs under a lock so racing processes never lower it.
Status RaiseAnchor(const std::string& path, const VolumeHead& head) {
  std::string dir = path.substr(0, path.find_last_of('/'));
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  std::string lock_path = dir + "/.lock";
  int fd = io::sys::Open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(lock_path, errno);
  io::File lock = io::File::Adopt(fd, lock_path, false);
  if (flock(fd, LOCK_EX) != 0) return PosixError("flock " + lock_path, errno);
  DP420_ASSIGN_OR_RETURN(VolumeHead now, ReadAnchor(path));
  if (now.generation >= head.generation) return Status::Ok();
  std::string line = std::to_string(head.generation) + " " + std::to_string(head.sequence) +
                     " " + (head.snapshot_id.empty() ? "- -" : head.snapshot_id + " " + head.seal) +
                     "\n";
  return io::WriteFileAtomic(path, line);
}

// ---- The chain from the head to the tip. ----

// The manifest a damaged file's name says it holds ("SEQ-ID.manifest").
bool DamagedHolds(const DamagedFile& d, const std::string& id) {
  return d.path.find("-" + id + ".manifest") != std::string::npos;
}

// Where the walk to the tip starts: the head's snapshot (or "before the first
// snapshot"); false with a problem when that cannot be trusted.
bool FindStart(VolumeHistory& h, const Manifest** start) {
  *start = nullptr;
  if (!h.head_present) {
    // A first backup that died between its manifest and its head leaves one
    // parentless snapshot and no head; anything more means the head is gone.
    bool lone_first = h.manifests.size() == 1 && h.damaged.empty() &&
                      h.manifests[0].sequence == 1 && h.manifests[0].parent.empty();
    if (h.manifests.empty() && h.damaged.empty()) return true;
    if (lone_first) return true;
    h.problems.push_back(HeadRel(h.volume) + " is missing (deleted?): the newest snapshot "
                         "cannot be told; `dp420 repair` rebuilds it");
    return false;
  }
  if (h.head.snapshot_id.empty()) return true;
  for (const auto& m : h.manifests) {
    if (m.snapshot_id != h.head.snapshot_id) continue;
    if (m.seal != h.head.seal || m.sequence != h.head.sequence) {
      h.problems.push_back("the newest snapshot " + m.snapshot_id + " is not the one the head "
                           "recorded (replaced)");
      return false;
    }
    *start = &m;
    return true;
  }
  for (const auto& d : h.damaged) {
    if (DamagedHolds(d, h.head.snapshot_id)) {
      h.problems.push_back("the newest snapshot " + h.head.snapshot_id + " is damaged (" +
                           d.status.message() + "); older snapshots can be restored by id, "
                           "`dp420 repair` rolls the volume back to the newest intact one");
      return false;
    }
  }
  h.problems.push_back("the newest snapshot " + h.head.snapshot_id + " (sequence " +
                       std::to_string(h.head.sequence) + ") that the head records is missing: "
                       "deleted, or the volume was rolled back");
  return false;
}

// Follows children from `start` (the parentless snapshot when null); a child
// names its parent by id and seal (or its link names its nearest kept
// ancestor, when the parent was forgotten).
const Manifest* WalkToTip(VolumeHistory& h, const Manifest* start) {
  std::multimap<std::string, const Manifest*> children;  // parent id ("" = none)
  for (const auto& m : h.manifests) children.emplace(m.chain_parent, &m);
  const Manifest* cur = start;
  for (;;) {
    const Manifest* next = nullptr;
    auto [first, last] = children.equal_range(cur ? cur->snapshot_id : "");
    for (auto it = first; it != last; ++it) {
      const Manifest& m = *it->second;
      bool child = cur ? m.chain_parent_seal == cur->seal : m.sequence > h.head.sequence;
      if (!child) continue;
      if (next) {
        h.problems.push_back("fork: snapshots " + next->snapshot_id + " and " + m.snapshot_id +
                             " both follow " + (cur ? cur->snapshot_id : "the head"));
        return nullptr;
      }
      next = &m;
    }
    if (!next) return cur;
    cur = next;
  }
}

// Two snapshots with one sequence or one parent: the volume's history forked.
void FindForks(VolumeHistory& h) {
  std::map<uint64_t, const Manifest*> by_sequence;
  std::map<std::string, const Manifest*> by_parent;
  for (const auto& m : h.manifests) {
    auto [s, fresh_s] = by_sequence.emplace(m.sequence, &m);
    if (!fresh_s) {
      h.problems.push_back("fork: snapshots " + s->second->snapshot_id + " and " +
                           m.snapshot_id + " share sequence " + std::to_string(m.sequence));
    }
    if (m.chain_parent.empty()) continue;
    auto [p, fresh_p] = by_parent.emplace(m.chain_parent, &m);
    if (!fresh_p) {
      h.problems.push_back("fork: snapshots " + p->second->snapshot_id + " and " +
                           m.snapshot_id + " share parent " + m.chain_parent);
    }
  }
}

// `anchor`: this machine's anchor, read before the head (nullopt: none can
// be read or compared with).
void CheckAnchor(const Repository& repo, VolumeHistory& h,
                 const std::optional<VolumeHead>& anchor) {
  std::string path = AnchorPath(repo, h.volume);
  if (path.empty() || !anchor) return;  // no state folder: nothing to compare with
  h.anchor = *anchor;
  const VolumeHead& a = h.anchor;
  bool older = a.generation > h.head.generation;
  bool replaced = a.generation == h.head.generation && a.generation != 0 &&
                  (a.snapshot_id != h.head.snapshot_id || a.seal != h.head.seal);
  if (older || replaced) {
    h.problems.push_back(
        std::string(older ? "rolled back" : "replaced") + ": this machine has seen " +
        Describe(a) + " of volume '" + h.volume + "', the repository's head is at " +
        Describe(h.head) + ". If the repository was restored from an older copy on purpose, "
        "remove " + path);
    return;
  }
  if (h.head_present && h.head.generation > a.generation && h.problems.empty()) {
    (void)RaiseAnchor(path, h.head);  // best effort, as in AdvanceHead
  }
}

}  // namespace

std::string AnchorDir(const Repository& repo) {
  std::string state = StateDir();
  return state.empty() ? "" : state + "/repos/" + repo.repo_id_hex();
}

std::vector<std::string> AnchoredVolumes(const Repository& repo) {
  std::vector<std::string> out;
  std::string dir = AnchorDir(repo);
  if (dir.empty()) return out;
  for (const auto& name : io::ListDir(dir)) {
    if (ValidVolumeName(name)) out.push_back(name);
  }
  return out;
}

Result<VolumeHead> ReadHead(const Repository& repo, const std::string& volume) {
  std::string rel = HeadRel(volume);
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(HeadPath(repo, volume)));
  return ParseHead(text, repo.repo_id_hex(), volume, rel, &repo.seal_key());
}

Result<const Manifest*> VolumeHistory::Newest(const std::string& where) const {
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
    return Status::Corruption("volume '" + volume + "': " + all);
  }
  if (!tip) return Status::NotFound("volume '" + volume + "' has no snapshots in " + where);
  return tip;
}

Result<const Manifest*> VolumeHistory::Find(const std::string& id) const {
  if (id.size() < 4) return Status::InvalidArgument("snapshot id '" + id + "' is too short");
  // A damaged manifest only matters when it is the one asked for: the
  // volume's other snapshots stay usable.
  for (const auto& d : damaged) {
    uint64_t sequence = 0;
    std::string damaged_id;
    if (!ParseManifestName(d.path.substr(d.path.find_last_of('/') + 1), &sequence, &damaged_id)) {
      continue;
    }
    if (damaged_id.compare(0, id.size(), id) == 0) return Status::Corruption(d.status.message());
  }
  const Manifest* found = nullptr;
  for (const auto& m : manifests) {
    if (m.snapshot_id.compare(0, id.size(), id) != 0) continue;
    if (found) return Status::InvalidArgument("snapshot id prefix '" + id + "' is ambiguous");
    found = &m;
  }
  if (!found) return Status::NotFound("snapshot '" + id + "' of volume '" + volume + "' not found");
  return found;
}

Result<VolumeHistory> LoadHistory(const Repository& repo, const std::string& volume) {
  VolumeHistory h;
  h.volume = volume;
  // Read in the order writers publish backwards: a commit renames its
  // manifest, then writes the head, then raises the anchor. Anchor first,
  // head next, manifests last, so a commit running meanwhile shows up as a
  // newer snapshot found by descent, never as a head naming a manifest that
  // was not listed or an anchor ahead of the head.
  std::optional<VolumeHead> anchor;
  if (std::string path = AnchorPath(repo, volume); !path.empty()) {
    auto read = ReadAnchor(path);
    if (read.ok()) anchor = read.value();
    // An anchor that does not read now is an error, not an anchor to forget.
    if (!read.ok() && !IsDamage(read.status())) return read.status();
  }
  auto head = ReadHead(repo, volume);
  if (!head.ok() && head.status().code() != Code::kNotFound && !IsDamage(head.status())) {
    return head.status();
  }
  DP420_RETURN_IF_ERROR(repo.ListManifests(volume, &h.manifests, &h.damaged));
  // A manifest or link that does not read now (EIO ...) leaves the history
  // unknown: the operation ends with that I/O error, and nothing is concluded.
  for (const auto& d : h.damaged) {
    if (!IsDamage(d.status)) return d.status;
  }
  if (head.ok()) {
    h.head = head.value();
    h.head_present = true;
  } else if (head.status().code() != Code::kNotFound) {
    h.problems.push_back(head.status().message() + "; `dp420 repair` rebuilds it");
  }
  const Manifest* start = nullptr;
  if (h.problems.empty() && FindStart(h, &start)) h.tip = WalkToTip(h, start);
  FindForks(h);
  if (h.tip) {
    for (const auto& m : h.manifests) {
      if (m.sequence > h.tip->sequence) {
        h.problems.push_back("snapshot " + m.snapshot_id + " (sequence " +
                             std::to_string(m.sequence) + ") is newer than the newest snapshot " +
                             h.tip->snapshot_id + " but does not descend from it (fork)");
      }
    }
  }
  CheckAnchor(repo, h, anchor);
  if (!h.problems.empty()) h.tip = nullptr;
  return h;
}

Result<std::optional<Manifest>> ParentOfNextBackup(const Repository& repo,
                                                   const std::string& volume) {
  DP420_ASSIGN_OR_RETURN(VolumeHistory h, LoadHistory(repo, volume));
  auto newest = h.Newest(repo.path());
  if (newest.ok()) return std::optional<Manifest>(*newest.value());
  if (newest.status().code() == Code::kNotFound) return std::optional<Manifest>();
  return Status::Make(newest.status().code(),
                      newest.status().message() + " — run `dp420 verify` and `dp420 repair` "
                      "before backing up this volume again");
}

Status AdvanceHead(const Repository& repo, const std::string& volume, const Manifest* newest) {
  VolumeHead next;
  auto now = ReadHead(repo, volume);
  if (now.ok()) next.generation = now->generation;
  std::string anchor_path = AnchorPath(repo, volume);
  if (!anchor_path.empty()) {
    auto anchor = ReadAnchor(anchor_path);
    if (anchor.ok()) next.generation = std::max(next.generation, anchor->generation);
  }
  next.generation += 1;
  if (newest) {
    next.sequence = newest->sequence;
    next.snapshot_id = newest->snapshot_id;
    next.seal = newest->seal;
  }
  std::string text = SealJson(HeadToJson(repo, volume, next), repo.seal_key());
  DP420_RETURN_IF_ERROR(io::WriteFileAtomic(HeadPath(repo, volume), text));
  if (!anchor_path.empty()) (void)RaiseAnchor(anchor_path, next);  // best effort
  return Status::Ok();
}

}  // namespace dp420
