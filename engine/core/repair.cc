#include "engine/core/repair.h"

#include <stdio.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

#include "engine/core/history.h"
#include "engine/core/snapshot.h"  // NowUnixNs
#include "engine/core/verify.h"
#include "io/inject.h"
#include "io/file.h"

namespace dp420 {

namespace {

std::string Rel(const Manifest& m) { return "snapshots/" + m.volume + "/" + m.file_name; }

// True when `m`'s own table and data check out (its chain is not asked).
Result<bool> Supported(const Repository& repo, const RepairOptions& o, const Manifest& m) {
  VerifyOptions vo;
  vo.volume = m.volume;
  vo.snapshot = m.snapshot_id;
  vo.read_data = o.read_data;
  vo.check_history = false;
  vo.control = o.control;
  DP420_ASSIGN_OR_RETURN(VerifyReport r, RunVerify(repo, vo));
  return std::find(r.broken_snapshots.begin(), r.broken_snapshots.end(), m.snapshot_id) ==
         r.broken_snapshots.end();
}

// The newest intact snapshot whose data supports it, or null.
Result<const Manifest*> ChooseNewest(const Repository& repo, const RepairOptions& o,
                                     const VolumeHistory& h, RepairReport* report) {
  // Newest first; of two with one sequence (a fork), the head's first.
  std::vector<const Manifest*> order;
  for (const auto& m : h.manifests) order.push_back(&m);
  std::stable_sort(order.begin(), order.end(), [&](const Manifest* a, const Manifest* b) {
    if (a->sequence != b->sequence) return a->sequence > b->sequence;
    return a->snapshot_id == h.head.snapshot_id && b->snapshot_id != h.head.snapshot_id;
  });
  for (const Manifest* m : order) {
    DP420_ASSIGN_OR_RETURN(bool ok, Supported(repo, o, *m));
    if (ok) return m;
    report->quarantined.push_back(
        {Rel(*m), "its table or data does not check out (`dp420 verify` names what)"});
  }
  return nullptr;
}

// Every manifest that cannot stay: damaged, newer than `newest`, or a twin of
// one of its ancestors (a fork). Those already judged are in the report.
void CollectQuarantine(const VolumeHistory& h, const Manifest* newest, RepairReport* report) {
  std::set<std::string> listed;
  for (const auto& q : report->quarantined) listed.insert(q.file);
  for (const auto& d : h.damaged) {
    if (listed.insert(d.path).second) report->quarantined.push_back({d.path, d.status.message()});
  }
  std::map<uint64_t, std::string> chain;  // sequence -> id of newest's ancestors
  std::map<std::string, const Manifest*> by_id;
  for (const auto& m : h.manifests) by_id[m.snapshot_id] = &m;
  for (const Manifest* m = newest; m;) {
    chain[m->sequence] = m->snapshot_id;
    auto p = by_id.find(m->parent);
    m = p == by_id.end() ? nullptr : p->second;
  }
  for (const auto& m : h.manifests) {
    std::string why;
    if (newest && m.sequence > newest->sequence) {
      why = "newer than the newest snapshot its data supports";
    } else if (!newest) {
      why = "no snapshot of the volume is supported by its data";
    } else if (chain.count(m.sequence) && chain[m.sequence] != m.snapshot_id) {
      why = "a fork: snapshot " + chain[m.sequence] + " holds its sequence on the kept chain";
    }
    if (!why.empty() && listed.insert(Rel(m)).second) report->quarantined.push_back({Rel(m), why});
  }
}

Status MoveToQuarantine(const Repository& repo, RepairReport* report) {
  std::string stamp = Rfc3339(NowUnixNs());
  std::replace(stamp.begin(), stamp.end(), ':', '-');
  report->quarantine_dir = "quarantine/" + report->volume + "/" + stamp;
  std::string dir = repo.path() + "/" + report->quarantine_dir;
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  for (const auto& q : report->quarantined) {
    std::string from = repo.path() + "/" + q.file;
    std::string to = dir + "/" + q.file.substr(q.file.find_last_of('/') + 1);
    if (io::sys::Rename(from.c_str(), to.c_str()) != 0) {
      return PosixError("rename " + from + " -> " + to, errno);
    }
  }
  DP420_RETURN_IF_ERROR(io::SyncDir(dir));
  return io::SyncDir(repo.SnapshotsDir(report->volume));
}

}  // namespace

Result<RepairReport> RunRepair(const Repository& repo, const RepairOptions& o) {
  if (!ValidVolumeName(o.volume)) {
    return Status::InvalidArgument("invalid volume name '" + o.volume + "'");
  }
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo.LockVolume(o.volume));
  DP420_ASSIGN_OR_RETURN(VolumeHistory h, LoadHistory(repo, o.volume));
  if (h.manifests.empty() && h.damaged.empty() && !h.head_present && h.anchor.generation == 0) {
    return Status::NotFound("volume '" + o.volume + "' has no snapshots in " + repo.path());
  }
  RepairReport report;
  report.volume = o.volume;
  report.dry_run = o.dry_run;
  report.problems = h.problems;
  DP420_ASSIGN_OR_RETURN(const Manifest* newest, ChooseNewest(repo, o, h, &report));
  CollectQuarantine(h, newest, &report);
  if (newest) {
    report.newest_id = newest->snapshot_id;
    report.newest_sequence = newest->sequence;
  }
  bool head_right = h.head_present && h.head.snapshot_id == report.newest_id &&
                    (!newest || h.head.seal == newest->seal);
  report.head_rewritten = !head_right || !h.problems.empty();
  if (o.dry_run || (report.quarantined.empty() && !report.head_rewritten)) return report;
  if (!report.quarantined.empty()) DP420_RETURN_IF_ERROR(MoveToQuarantine(repo, &report));
  if (report.head_rewritten) DP420_RETURN_IF_ERROR(AdvanceHead(repo, o.volume, newest));
  return report;
}

}  // namespace dp420
