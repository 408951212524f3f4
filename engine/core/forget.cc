#include "engine/core/forget.h"

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

#include "engine/core/history.h"
#include "engine/core/links.h"
#include "engine/core/snapshot.h"  // NowUnixNs, Rfc3339
#include "io/file.h"
#include "io/inject.h"

namespace dp420 {

namespace {

// The history forget may change: trusted, readable whole, one unbroken chain.
Status CheckForgettable(const VolumeHistory& h) {
  DP420_RETURN_IF_ERROR(h.Newest("the repository").status());
  if (!h.damaged.empty()) {
    std::string files;
    for (const auto& d : h.damaged) files += (files.empty() ? "" : ", ") + d.path;
    return Status::Corruption("volume '" + h.volume + "' has damaged files (" + files +
                              "): forget changes only a history it can read whole; "
                              "`dp420 repair --volume " + h.volume + "` moves them aside");
  }
  const Manifest* prev = nullptr;
  for (const auto& m : h.manifests) {
    bool linked = prev ? m.chain_parent == prev->snapshot_id && m.chain_parent_seal == prev->seal
                       : m.chain_parent.empty();
    if (!linked) {
      return Status::Corruption(
          "volume '" + h.volume + "': the chain is broken at snapshot " + m.snapshot_id +
          " (its parent " + (m.chain_parent.empty() ? "none" : m.chain_parent) +
          " is not the snapshot before it): run `dp420 verify`; forget links only a whole chain");
    }
    prev = &m;
  }
  return Status::Ok();
}

ForgetItem ItemOf(const Manifest& m) {
  ForgetItem it;
  it.volume = m.volume;
  it.snapshot_id = m.snapshot_id;
  it.sequence = m.sequence;
  it.created_unix_ns = m.created_unix_ns;
  it.created = m.created;
  it.is_protected = m.is_protected;
  return it;
}

// Items for `h`'s snapshots, newest first, by the policy.
std::vector<ForgetItem> DecideByPolicy(const VolumeHistory& h, const RetentionPolicy& policy) {
  std::vector<RetentionCandidate> candidates;
  std::map<std::string, const Manifest*> by_id;
  for (const auto& m : h.manifests) {
    candidates.push_back({m.snapshot_id, static_cast<int64_t>(m.created_unix_ns), m.is_protected});
    by_id[m.snapshot_id] = &m;
  }
  std::vector<ForgetItem> items;
  for (const auto& d : ApplyRetention(policy, std::move(candidates))) {
    ForgetItem it = ItemOf(*by_id[d.snapshot_id]);
    it.keep = d.keep;
    it.reasons = d.reasons;
    if (h.tip && d.snapshot_id == h.tip->snapshot_id && !it.keep) {
      it.keep = true;  // the next backup builds on it
      it.reasons.emplace_back("newest");
    }
    items.push_back(std::move(it));
  }
  return items;
}

// Items for `h`'s snapshots, newest first: the named ones go.
Result<std::vector<ForgetItem>> DecideByName(const VolumeHistory& h,
                                             const std::vector<std::string>& ids) {
  std::set<std::string> named;
  for (const auto& id : ids) {
    DP420_ASSIGN_OR_RETURN(const Manifest* m, h.Find(id));
    if (m == h.tip) {
      return Status::Exists("snapshot " + m->snapshot_id + " is the newest of volume '" +
                            h.volume + "': the next backup builds on it, so it is kept "
                            "(forget it once a newer snapshot exists)");
    }
    if (m->is_protected) {
      return Status::Exists("snapshot " + m->snapshot_id + " of volume '" + h.volume +
                            "' is protected: `dp420 unprotect` it first");
    }
    named.insert(m->snapshot_id);
  }
  std::vector<ForgetItem> items;
  for (auto it = h.manifests.rbegin(); it != h.manifests.rend(); ++it) {
    ForgetItem item = ItemOf(*it);
    item.keep = named.count(it->snapshot_id) == 0;
    if (item.keep) item.reasons.emplace_back("not named");
    items.push_back(std::move(item));
  }
  return items;
}

std::string SnapshotFile(const Repository& repo, const std::string& volume,
                         const std::string& name) {
  return repo.SnapshotsDir(volume) + "/" + name;
}

// Writes a link for every kept snapshot whose parent goes: the commit point.
Result<uint64_t> WriteLinks(const Repository& repo, const VolumeHistory& h,
                            const std::set<std::string>& gone) {
  uint64_t written = 0;
  const Manifest* last_kept = nullptr;
  bool gap = false;
  for (const auto& m : h.manifests) {  // by sequence
    if (gone.count(m.snapshot_id)) {
      gap = true;
      continue;
    }
    if (gap) {
      ChainLink l;
      l.volume = h.volume;
      l.snapshot_id = m.snapshot_id;
      l.sequence = m.sequence;
      l.parent = m.parent;
      l.parent_seal = m.parent_manifest_sha256;
      if (last_kept) {
        l.ancestor = last_kept->snapshot_id;
        l.ancestor_sequence = last_kept->sequence;
        l.ancestor_seal = last_kept->seal;
      }
      l.forgotten = m.sequence - l.ancestor_sequence - 1;
      l.updated = Rfc3339(NowUnixNs());
      DP420_RETURN_IF_ERROR(io::WriteFileAtomic(
          SnapshotFile(repo, h.volume, LinkFileName(m.sequence, m.snapshot_id)),
          SealLink(repo, l)));
      ++written;
    }
    last_kept = &m;
    gap = false;
  }
  return written;
}

Status RemoveFile(const std::string& path) {
  if (io::sys::Unlink(path.c_str()) != 0 && errno != ENOENT) return PosixError(path, errno);
  return Status::Ok();
}

// The links of `volume`, and the files a killed forget left (after links
// are written: the manifests of the snapshots they forget).
Status ScanLeftovers(const Repository& repo, const std::string& volume, LinkScan* scan) {
  std::vector<Manifest> raw;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(repo.ListVolumeManifests(volume, &raw, &damaged));
  return ApplyLinks(repo, volume, &raw, &damaged, scan);
}

// Deletes the files the volume's links now cover: the manifests (and links)
// of the snapshots this forget removed and what a killed forget left. The
// number of the latter.
Result<uint64_t> DeleteCovered(const Repository& repo, const std::string& volume,
                               const LinkScan& scan, const std::set<std::string>& gone) {
  uint64_t earlier = 0;
  for (const auto& rel : scan.leftovers) {
    DP420_RETURN_IF_ERROR(RemoveFile(repo.path() + "/" + rel));
    std::string name = rel.substr(rel.find_last_of('/') + 1);  // SEQ-ID.kind
    size_t dash = name.find('-'), dot = name.find('.');
    bool ours = dash != std::string::npos && dot != std::string::npos && dot > dash &&
                gone.count(name.substr(dash + 1, dot - dash - 1));
    earlier += ours ? 0 : 1;
  }
  DP420_RETURN_IF_ERROR(io::SyncDir(repo.SnapshotsDir(volume)));
  return earlier;
}

Status ForgetVolume(const Repository& repo, const std::string& volume, const ForgetOptions& o,
                    ForgetReport* report) {
  VolumeLock lock;
  if (!o.dry_run) {
    DP420_ASSIGN_OR_RETURN(lock, repo.LockVolume(volume, o.lock_wait, o.control.cancel));
  }
  DP420_ASSIGN_OR_RETURN(VolumeHistory h, LoadHistory(repo, volume));
  if (h.manifests.empty() && h.damaged.empty() && h.problems.empty()) return Status::Ok();
  DP420_RETURN_IF_ERROR(CheckForgettable(h));
  std::vector<ForgetItem> items;
  if (o.snapshots.empty()) {
    items = DecideByPolicy(h, o.policy);
  } else {
    DP420_ASSIGN_OR_RETURN(items, DecideByName(h, o.snapshots));
  }
  std::set<std::string> gone;
  for (const auto& it : items) {
    if (!it.keep) gone.insert(it.snapshot_id);
  }
  if (!o.dry_run) {
    uint64_t links = 0;
    if (!gone.empty()) {
      DP420_ASSIGN_OR_RETURN(links, WriteLinks(repo, h, gone));
    }
    // The head moves before anything is deleted, so a snapshots/ folder put
    // back from before this forget reads as rolled back; a killed forget's
    // leftovers (removed also when nothing goes now) move it again.
    LinkScan scan;
    DP420_RETURN_IF_ERROR(ScanLeftovers(repo, volume, &scan));
    if (!gone.empty() || !scan.leftovers.empty()) {
      DP420_RETURN_IF_ERROR(AdvanceHead(repo, volume, h.tip));
    }
    DP420_ASSIGN_OR_RETURN(uint64_t leftovers, DeleteCovered(repo, volume, scan, gone));
    report->links_written += links;
    report->leftovers_removed += leftovers;
  }
  report->forgotten += gone.size();
  report->kept += items.size() - gone.size();
  for (auto& it : items) report->items.push_back(std::move(it));
  return Status::Ok();
}

}  // namespace

Status ValidateForget(const ForgetOptions& o) {
  if (o.snapshots.empty()) {
    DP420_RETURN_IF_ERROR(o.policy.Validate());
    if (o.policy.Empty()) {
      return Status::InvalidArgument(
          "no keep rule given: forget refuses to forget every snapshot (give --keep-last, "
          "--keep-daily, ... or name snapshots with --snapshot)");
    }
  } else if (o.volume.empty()) {
    return Status::InvalidArgument("--snapshot needs --volume: snapshot ids are per volume");
  }
  return Status::Ok();
}

Result<ForgetReport> RunForget(const Repository& repo, const ForgetOptions& o) {
  DP420_RETURN_IF_ERROR(ValidateForget(o));
  if (!o.volume.empty() && !ValidVolumeName(o.volume)) {
    return Status::InvalidArgument("invalid volume name '" + o.volume + "'");
  }
  ForgetReport report;
  report.dry_run = o.dry_run;
  std::vector<std::string> volumes =
      o.volume.empty() ? repo.ListVolumes() : std::vector<std::string>{o.volume};
  for (const auto& volume : volumes) {
    if (o.control.Canceled()) return Status::Canceled("forget canceled");
    Status s = ForgetVolume(repo, volume, o, &report);
    if (!s.ok()) {
      // A volume named alone fails the call; across volumes, the others go on.
      if (!o.volume.empty()) return s;
      report.errors.push_back({volume, s});
    }
  }
  return report;
}

Json ForgetRequestToJson(const ForgetOptions& o) {
  const RetentionPolicy& p = o.policy;
  return {{"volume", o.volume},
          {"policy", {{"last", p.last}, {"hourly", p.hourly}, {"daily", p.daily},
                      {"weekly", p.weekly}, {"monthly", p.monthly}, {"yearly", p.yearly},
                      {"within", p.within.Empty() ? "" : p.within.ToString()}}},
          {"snapshots", o.snapshots},
          {"dry_run", o.dry_run}};
}

Result<ForgetOptions> ForgetRequestFromJson(const Json& j) {
  ForgetOptions o;
  try {
    o.volume = j.at("volume").get<std::string>();
    const Json& p = j.at("policy");
    int* rules[] = {&o.policy.last, &o.policy.hourly, &o.policy.daily,
                    &o.policy.weekly, &o.policy.monthly, &o.policy.yearly};
    const char* names[] = {"last", "hourly", "daily", "weekly", "monthly", "yearly"};
    for (size_t i = 0; i < 6; ++i) {
      const Json& v = p.at(names[i]);
      if (!v.is_number_integer() || v.get<int64_t>() < -1 || v.get<int64_t>() > (1 << 30)) {
        return Status::InvalidArgument(std::string("keep rule ") + names[i] + " out of range");
      }
      *rules[i] = v.get<int>();
    }
    std::string within = p.at("within").get<std::string>();
    if (!within.empty()) {
      DP420_ASSIGN_OR_RETURN(o.policy.within, ParseRetentionSpan(within));
    }
    const Json& ids = j.at("snapshots");
    if (!ids.is_array() || ids.size() > 4096) {
      return Status::InvalidArgument("snapshots: at most 4096 ids");
    }
    for (const auto& id : ids) o.snapshots.push_back(id.get<std::string>());
    o.dry_run = j.at("dry_run").get<bool>();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("forget request: ") + e.what());
  }
  return o;
}

Json ForgetReportToJson(const ForgetReport& r,
                        const std::function<std::string(const std::string&)>& show) {
  Json items = Json::array();
  for (const auto& it : r.items) {
    items.push_back({{"volume", show(it.volume)}, {"snapshot_id", it.snapshot_id},
                     {"sequence", it.sequence}, {"created_unix_ns", it.created_unix_ns},
                     {"created", it.created}, {"keep", it.keep},
                     {"protected", it.is_protected}, {"reasons", it.reasons}});
  }
  Json errors = Json::array();
  for (const auto& e : r.errors) {
    errors.push_back({{"volume", show(e.volume)}, {"code", static_cast<int>(e.status.code())},
                      {"message", e.status.message()}});
  }
  return {{"forgotten", r.forgotten}, {"kept", r.kept}, {"links_written", r.links_written},
          {"leftovers_removed", r.leftovers_removed}, {"dry_run", r.dry_run},
          {"items", items}, {"errors", errors}};
}

Result<ForgetReport> ForgetReportFromJson(const Json& j) {
  ForgetReport r;
  try {
    r.forgotten = JsonUint<uint64_t>(j.at("forgotten"));
    r.kept = JsonUint<uint64_t>(j.at("kept"));
    r.links_written = JsonUint<uint64_t>(j.at("links_written"));
    r.leftovers_removed = JsonUint<uint64_t>(j.at("leftovers_removed"));
    r.dry_run = j.at("dry_run").get<bool>();
    for (const auto& it : j.at("items")) {
      ForgetItem item;
      item.volume = it.at("volume").get<std::string>();
      item.snapshot_id = it.at("snapshot_id").get<std::string>();
      item.sequence = JsonUint<uint64_t>(it.at("sequence"));
      item.created_unix_ns = JsonUint<uint64_t>(it.at("created_unix_ns"));
      item.created = it.at("created").get<std::string>();
      item.keep = it.at("keep").get<bool>();
      item.is_protected = it.at("protected").get<bool>();
      item.reasons = it.at("reasons").get<std::vector<std::string>>();
      r.items.push_back(std::move(item));
    }
    for (const auto& e : j.at("errors")) {
      int code = e.at("code").get<int>();
      if (code <= 0 || code > static_cast<int>(kLastCode)) code = int(Code::kInternal);
      r.errors.push_back({e.at("volume").get<std::string>(),
                          Status::Make(static_cast<Code>(code), e.at("message").get<std::string>())});
    }
  } catch (const std::exception& e) {
    return Status::Network(std::string("the server's forget report is malformed: ") + e.what());
  }
  return r;
}

Result<std::string> SetProtected(const Repository& repo, const std::string& volume,
                                 const std::string& id, bool protect,
                                 std::chrono::milliseconds lock_wait) {
  if (!ValidVolumeName(volume)) return Status::InvalidArgument("invalid volume name '" + volume + "'");
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockVolume(volume, lock_wait));
  DP420_ASSIGN_OR_RETURN(VolumeHistory h, LoadHistory(repo, volume));
  DP420_ASSIGN_OR_RETURN(const Manifest* m, h.Find(id));
  std::string path = SnapshotFile(repo, volume, ProtectFileName(m->sequence, m->snapshot_id));
  if (protect) {
    Json j = {{"format", "dp420-protected"}, {"volume", volume},
              {"snapshot_id", m->snapshot_id}, {"protected", Rfc3339(NowUnixNs())}};
    DP420_RETURN_IF_ERROR(io::WriteFileAtomic(path, j.dump() + "\n"));
  } else {
    DP420_RETURN_IF_ERROR(RemoveFile(path));
    DP420_RETURN_IF_ERROR(io::SyncDir(repo.SnapshotsDir(volume)));
  }
  return m->snapshot_id;
}

}  // namespace dp420
