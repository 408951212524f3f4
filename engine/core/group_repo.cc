#include "engine/core/group_repo.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>

#include "engine/core/history.h"
#include "engine/core/links.h"
#include "engine/core/snapshot.h"
#include "engine/core/test_hooks.h"
#include "io/assert.h"
#include "io/file.h"
#include "io/inject.h"

namespace dp420 {

namespace {

constexpr char kGroupFormat[] = "dp420-group";
constexpr char kEpochFormat[] = "dp420-group-epoch";
constexpr size_t kEpochDigits = 20;
constexpr char kGroupSuffix[] = ".group";
constexpr char kManifestSuffix[] = ".manifest";

// ---- names ----

std::string EpochName(uint64_t epoch) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020llu", static_cast<unsigned long long>(epoch));
  return buf;
}

bool AllDigits(const std::string& s, size_t from, size_t len) {
  if (from + len > s.size()) return false;
  for (size_t i = from; i < from + len; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

bool LowerHex(const std::string& s, size_t from, size_t len) {
  if (from + len > s.size()) return false;
  for (size_t i = from; i < from + len; ++i) {
    const char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "EPOCH" of 20 digits (a staging folder), or "EPOCH.open": its epoch.
bool ParseEpochPrefix(const std::string& name, const std::string& suffix, uint64_t* epoch) {
  if (name.size() != kEpochDigits + suffix.size() || !AllDigits(name, 0, kEpochDigits) ||
      name.compare(kEpochDigits, suffix.size(), suffix) != 0) {
    return false;
  }
  // 20 digits can be past 2^64: such a name is no epoch (from_chars, not stoull,
  // which would throw).
  auto [end, ec] = std::from_chars(name.data(), name.data() + kEpochDigits, *epoch);
  return ec == std::errc() && end == name.data() + kEpochDigits && *epoch != 0;
}

// "EPOCH-ID.group": its epoch and group snapshot id.
bool ParseGroupFileName(const std::string& name, uint64_t* epoch, std::string* id) {
  const std::string suffix = kGroupSuffix;
  if (name.size() != kEpochDigits + 1 + 16 + suffix.size() || name[kEpochDigits] != '-' ||
      !LowerHex(name, kEpochDigits + 1, 16) || !EndsWith(name, suffix) ||
      !ParseEpochPrefix(name.substr(0, kEpochDigits), "", epoch)) {
    return false;
  }
  *id = name.substr(kEpochDigits + 1, 16);
  return true;
}

std::string GroupsDir(const Repository& repo) { return repo.path() + "/groups"; }
std::string GroupDir(const Repository& repo, const std::string& group) {
  return GroupsDir(repo) + "/" + group;
}
std::string OpenPath(const Repository& repo, const std::string& group, uint64_t epoch) {
  return GroupDir(repo, group) + "/" + EpochName(epoch) + ".open";
}
std::string StagingDir(const Repository& repo, const std::string& group, uint64_t epoch) {
  return GroupDir(repo, group) + "/" + EpochName(epoch);
}
// Relative to the repository: what messages and verify name.
std::string StagedRel(const std::string& group, uint64_t epoch, const std::string& volume) {
  return "groups/" + group + "/" + EpochName(epoch) + "/" + volume + kManifestSuffix;
}
std::string What(const std::string& group, uint64_t epoch) {
  return "epoch " + std::to_string(epoch) + " of group '" + group + "'";
}

// ---- files ----

// Names in `dir`, sorted; empty when it does not exist, an error when it
// does not read (io::ListDir cannot tell the two apart).
Result<std::vector<std::string>> ReadNames(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return std::vector<std::string>();
    return PosixError("list " + dir, errno);
  }
  std::vector<std::string> names;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

Result<bool> PathExists(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  return PosixError("stat " + path, errno);
}

Status UnlinkIfThere(const std::string& path) {
  if (io::sys::Unlink(path.c_str()) != 0 && errno != ENOENT) return PosixError(path, errno);
  return Status::Ok();
}

// Writes `text` to `tmp`, fsyncs it and renames it to `final_path`, with
// the crash points `before` and `after` around the rename; then fsyncs the
// folder of `final_path` (`dir`), once more when that fails.
Status WriteRenamed(const std::string& tmp, const std::string& final_path, const std::string& dir,
                    const std::string& text, const char* before, const char* after) {
  io::TempFileGuard guard(tmp);
  {
    DP420_ASSIGN_OR_RETURN(io::File f,
                           io::File::OpenWrite(tmp, O_CREAT | O_TRUNC | O_WRONLY, false));
    DP420_RETURN_IF_ERROR(f.WriteAt(0, text.data(), text.size()));
    DP420_RETURN_IF_ERROR(f.Sync());
  }
  CrashPoint(before);
  if (io::sys::Rename(tmp.c_str(), final_path.c_str()) != 0) {
    return PosixError("rename " + tmp + " -> " + final_path, errno);
  }
  guard.Keep();
  CrashPoint(after);
  Status synced = io::SyncDir(dir);
  if (!synced.ok()) synced = io::SyncDir(dir);
  return synced;
}

// groups/.lock, exclusively, waiting for its holder. Its holders never wait
// for anything else (no volume lock is taken under it), so waiting is safe.
Result<VolumeLock> LockGroups(const Repository& repo) {
  DP420_RETURN_IF_ERROR(io::MakeDirs(GroupsDir(repo)));
  const std::string path = GroupsDir(repo) + "/.lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  VolumeLock lock(fd);
  while (flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return PosixError("lock " + path, errno);
  }
  return lock;
}

// ---- the epoch counter ----

// The newest epoch issued (0: none yet). A damaged groups/.epoch is
// kCorruption; a missing one while group folders exist too (epochs were
// issued: counting again from 1 would issue one of them twice).
Result<uint64_t> ReadNewestEpoch(const Repository& repo) {
  const std::string what = "groups/.epoch";
  auto text = io::ReadFile(repo.path() + "/" + what);
  if (!text.ok()) {
    if (text.status().code() != Code::kNotFound) return text.status();
    DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(GroupsDir(repo)));
    for (const std::string& name : names) {
      if (!ValidGroupName(name)) continue;
      return Status::Corruption(what + " is missing, yet groups/" + name + " holds epochs: the "
                                "newest epoch issued is unknown, and none is issued twice");
    }
    return uint64_t{0};
  }
  DP420_ASSIGN_OR_RETURN(Json j, UnsealJson(text.value(), what, &repo.seal_key()));
  try {
    if (j.at("format").get<std::string>() != kEpochFormat) {
      return Status::Corruption(what + ": not an epoch file");
    }
    if (JsonUint<uint32_t>(j.at("format_version")) > kFormatVersion) {
      return Status::Version(what + ": a format version newer than this dp420 supports");
    }
    if (j.at("repo_id").get<std::string>() != repo.repo_id_hex()) {
      return Status::Corruption(what + ": belongs to another repository");
    }
    const uint64_t epoch = JsonUint<uint64_t>(j.at("epoch"));
    if (epoch == 0) return Status::Corruption(what + ": epoch 0");
    return epoch;
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": missing or malformed field (" + e.what() + ")");
  }
}

Status WriteNewestEpoch(const Repository& repo, uint64_t epoch) {
  Json j;
  j["format"] = kEpochFormat;
  j["format_version"] = kFormatVersion;
  j["repo_id"] = repo.repo_id_hex();
  j["epoch"] = epoch;
  j["updated"] = Rfc3339(NowUnixNs());
  return io::WriteFileAtomic(GroupsDir(repo) + "/.epoch", SealJson(j, repo.seal_key()));
}

// ---- group manifests and staged manifests ----

// The file name of the group manifest of (group, epoch), if there is one.
Result<std::optional<std::string>> FindGroupFile(const Repository& repo, const std::string& group,
                                                 uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(GroupDir(repo, group)));
  for (const std::string& name : names) {
    uint64_t e = 0;
    std::string id;
    if (ParseGroupFileName(name, &e, &id) && e == epoch) return std::optional<std::string>(name);
  }
  return std::optional<std::string>();
}

// groups/GROUP/NAME read and checked: seal, repository, group, file name.
Result<GroupManifest> ReadGroupFile(const Repository& repo, const std::string& group,
                                    const std::string& name) {
  const std::string rel = "groups/" + group + "/" + name;
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(repo.path() + "/" + rel));
  DP420_ASSIGN_OR_RETURN(GroupManifest gm, GroupManifest::Parse(text, rel, &repo.seal_key()));
  if (gm.repo_id != repo.repo_id_hex()) {
    return Status::Corruption(rel + ": belongs to another repository");
  }
  if (gm.group != group || gm.file_name != name) {
    return Status::Corruption(rel + ": file name does not match its content");
  }
  return gm;
}

Result<std::optional<GroupManifest>> ReadGroupManifest(const Repository& repo,
                                                       const std::string& group, uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(std::optional<std::string> name, FindGroupFile(repo, group, epoch));
  if (!name) return std::optional<GroupManifest>();
  DP420_ASSIGN_OR_RETURN(GroupManifest gm, ReadGroupFile(repo, group, *name));
  if (gm.epoch != epoch) {
    return Status::Corruption(*name + ": file name does not match its content");
  }
  return std::optional<GroupManifest>(std::move(gm));
}

const GroupMemberRecord* FindMember(const GroupManifest& gm, const std::string& volume) {
  for (const GroupMemberRecord& r : gm.members) {
    if (r.volume == volume) return &r;
  }
  return nullptr;
}

// `volume`'s staged manifest, checked (seal, repository, volume); kNotFound
// when there is none.
Result<Manifest> ReadStaged(const Repository& repo, const std::string& group, uint64_t epoch,
                            const std::string& volume) {
  const std::string rel = StagedRel(group, epoch, volume);
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(repo.path() + "/" + rel));
  DP420_ASSIGN_OR_RETURN(Manifest m, Manifest::Parse(text, rel, &repo.seal_key()));
  if (m.repo_id != repo.repo_id_hex()) {
    return Status::Corruption(rel + ": belongs to another repository");
  }
  if (m.volume != volume) {
    return Status::Corruption(rel + ": a manifest of volume '" + m.volume + "', not of '" +
                              volume + "'");
  }
  return m;
}

// The volumes with a manifest staged under (group, epoch).
Result<std::vector<std::string>> StagedVolumes(const Repository& repo, const std::string& group,
                                               uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> names,
                         ReadNames(StagingDir(repo, group, epoch)));
  std::vector<std::string> volumes;
  for (const std::string& name : names) {
    if (!EndsWith(name, kManifestSuffix)) continue;
    std::string volume = name.substr(0, name.size() - std::strlen(kManifestSuffix));
    if (ValidVolumeName(volume)) volumes.push_back(std::move(volume));
  }
  return volumes;
}

// Removes the staging folder of (group, epoch) with what it holds.
Status RemoveStaging(const Repository& repo, const std::string& group, uint64_t epoch) {
  const std::string dir = StagingDir(repo, group, epoch);
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(dir));
  DP420_ASSIGN_OR_RETURN(bool there, PathExists(dir));
  if (!there) return Status::Ok();
  for (const std::string& name : names) DP420_RETURN_IF_ERROR(UnlinkIfThere(dir + "/" + name));
  if (io::sys::Rmdir(dir.c_str()) != 0 && errno != ENOENT) return PosixError(dir, errno);
  return io::SyncDir(GroupDir(repo, group));
}

// Under groups/.lock: ends an epoch that is not committed. EPOCH.open goes
// first (from then on nothing is staged or committed under it), then what
// was staged.
Status AbortLocked(const Repository& repo, const std::string& group, uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(std::optional<std::string> committed, FindGroupFile(repo, group, epoch));
  if (committed) return Status::Ok();
  DP420_ASSIGN_OR_RETURN(bool open, PathExists(OpenPath(repo, group, epoch)));
  if (open) {
    DP420_RETURN_IF_ERROR(UnlinkIfThere(OpenPath(repo, group, epoch)));
    DP420_RETURN_IF_ERROR(io::SyncDir(GroupDir(repo, group)));
  }
  return RemoveStaging(repo, group, epoch);
}

// Under groups/.lock, after every member of a committed epoch is published:
// EPOCH.open (a crash may have left it) and the staging folder go.
Status EndCommitted(const Repository& repo, const std::string& group, uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_RETURN_IF_ERROR(UnlinkIfThere(OpenPath(repo, group, epoch)));
  DP420_RETURN_IF_ERROR(RemoveStaging(repo, group, epoch));
  return io::SyncDir(GroupDir(repo, group));
}

}  // namespace

bool ValidGroupName(const std::string& name) { return ValidVolumeName(name); }

// ---- GroupManifest ----

std::string GroupManifest::FileName() const {
  return EpochName(epoch) + "-" + group_snapshot_id + kGroupSuffix;
}

Json GroupManifest::ToJson() const {
  Json records = Json::array();
  for (const GroupMemberRecord& r : members) {
    records.push_back(Json{{"member", r.member},
                           {"volume", r.volume},
                           {"snapshot_id", r.snapshot_id},
                           {"sequence", r.sequence},
                           {"manifest_seal", r.manifest_seal},
                           {"skew_ns", r.skew_ns},
                           {"skew_error_ns", r.skew_error_ns}});
  }
  Json j;
  j["format"] = kGroupFormat;
  j["format_version"] = format_version;
  j["repo_id"] = repo_id;
  j["group"] = group;
  j["group_snapshot_id"] = group_snapshot_id;
  j["epoch"] = epoch;
  j["created"] = created;
  j["created_unix_ns"] = created_unix_ns;
  j["members"] = std::move(records);
  j["node_topology"] = node_topology;
  j["tool_version"] = tool_version;
  return j;
}

namespace {

int64_t JsonInt64(const Json& v) {
  if (!v.is_number_integer()) throw std::out_of_range("not an integer: " + v.dump().substr(0, 64));
  return v.get<int64_t>();
}

Result<GroupMemberRecord> MemberFromJson(const Json& j, const std::string& what) {
  GroupMemberRecord r;
  r.member = j.at("member").get<std::string>();
  r.volume = j.at("volume").get<std::string>();
  r.snapshot_id = j.at("snapshot_id").get<std::string>();
  r.sequence = JsonUint<uint64_t>(j.at("sequence"));
  r.manifest_seal = j.at("manifest_seal").get<std::string>();
  r.skew_ns = JsonInt64(j.at("skew_ns"));
  r.skew_error_ns = JsonInt64(j.at("skew_error_ns"));
  if (r.member.empty() || !ValidVolumeName(r.volume) || r.snapshot_id.size() != 16 ||
      !LowerHex(r.snapshot_id, 0, 16) || r.manifest_seal.size() != 64 ||
      !LowerHex(r.manifest_seal, 0, 64) || r.sequence == 0) {
    return Status::Corruption(what + ": malformed member '" + r.member + "'");
  }
  return r;
}

}  // namespace

Result<GroupManifest> GroupManifest::FromJson(const Json& j, const std::string& what) {
  GroupManifest gm;
  try {
    if (j.at("format").get<std::string>() != kGroupFormat) {
      return Status::Corruption(what + ": not a dp420 group manifest");
    }
    gm.format_version = JsonUint<uint32_t>(j.at("format_version"));
    if (gm.format_version > kFormatVersion) {
      return Status::Version(what + ": group manifest format version " +
                             std::to_string(gm.format_version) +
                             " is newer than this dp420 supports (" +
                             std::to_string(kFormatVersion) + ")");
    }
    gm.repo_id = j.at("repo_id").get<std::string>();
    gm.group = j.at("group").get<std::string>();
    gm.group_snapshot_id = j.at("group_snapshot_id").get<std::string>();
    gm.epoch = JsonUint<uint64_t>(j.at("epoch"));
    gm.created = j.at("created").get<std::string>();
    gm.created_unix_ns = JsonUint<uint64_t>(j.at("created_unix_ns"));
    for (const Json& m : j.at("members")) {
      DP420_ASSIGN_OR_RETURN(GroupMemberRecord r, MemberFromJson(m, what));
      gm.members.push_back(std::move(r));
    }
    gm.node_topology = j.at("node_topology");
    gm.tool_version = j.value("tool_version", "");
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": missing or malformed field (" + e.what() + ")");
  }
  const bool sorted = std::is_sorted(
      gm.members.begin(), gm.members.end(),
      [](const GroupMemberRecord& a, const GroupMemberRecord& b) { return a.member < b.member; });
  if (!ValidGroupName(gm.group) || gm.group_snapshot_id.size() != 16 ||
      !LowerHex(gm.group_snapshot_id, 0, 16) || gm.epoch == 0 || gm.members.empty() || !sorted ||
      !gm.node_topology.is_object()) {
    return Status::Corruption(what + ": malformed group manifest");
  }
  return gm;
}

Result<GroupManifest> GroupManifest::Parse(const std::string& sealed, const std::string& what,
                                           const SealKey* key) {
  std::string seal;
  DP420_ASSIGN_OR_RETURN(Json j, UnsealJson(sealed, what, key, &seal));
  DP420_ASSIGN_OR_RETURN(GroupManifest gm, FromJson(j, what));
  gm.seal = std::move(seal);
  gm.file_name = gm.FileName();
  return gm;
}

// ---- epochs ----

Result<uint64_t> BeginGroupEpoch(const Repository& repo, const std::string& group) {
  if (!ValidGroupName(group)) {
    return Status::InvalidArgument("invalid group name '" + group +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -, not starting "
                                   "with .)");
  }
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_ASSIGN_OR_RETURN(uint64_t newest, ReadNewestEpoch(repo));
  DP420_ASSERT(newest < UINT64_MAX);
  const uint64_t epoch = newest + 1;
  // Durable before anything names it: a crash after this issued the epoch,
  // which then counts as aborted (never opened).
  DP420_RETURN_IF_ERROR(WriteNewestEpoch(repo, epoch));
  DP420_RETURN_IF_ERROR(io::MakeDirs(GroupDir(repo, group)));
  const std::string open_path = OpenPath(repo, group, epoch);
  int fd = io::sys::Open(open_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(open_path, errno);
  close(fd);
  DP420_RETURN_IF_ERROR(io::SyncDir(GroupDir(repo, group)));
  return epoch;
}

Result<GroupEpochState> GroupEpochStateOf(const Repository& repo, const std::string& group,
                                          uint64_t epoch) {
  if (!ValidGroupName(group)) return Status::InvalidArgument("invalid group name '" + group + "'");
  // Without the lock, in this order: a commit creates the group manifest
  // before it removes EPOCH.open, so EPOCH.open missing now and no group
  // manifest after means it was not committed now either.
  DP420_ASSIGN_OR_RETURN(bool open, PathExists(OpenPath(repo, group, epoch)));
  DP420_ASSIGN_OR_RETURN(std::optional<std::string> committed, FindGroupFile(repo, group, epoch));
  if (committed) return GroupEpochState::kCommitted;
  return open ? GroupEpochState::kOpen : GroupEpochState::kAborted;
}

Result<std::optional<std::string>> StagedSeal(const Repository& repo, const std::string& group,
                                              uint64_t epoch, const std::string& volume) {
  if (!ValidGroupName(group) || !ValidVolumeName(volume)) {
    return Status::InvalidArgument("invalid group '" + group + "' or volume '" + volume + "'");
  }
  auto staged = ReadStaged(repo, group, epoch, volume);
  if (staged.ok()) return std::optional<std::string>(staged->seal);
  if (staged.status().code() == Code::kNotFound) return std::optional<std::string>();
  return staged.status();
}

Status AbortGroupEpoch(const Repository& repo, const std::string& group, uint64_t epoch) {
  if (!ValidGroupName(group)) return Status::InvalidArgument("invalid group name '" + group + "'");
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  return AbortLocked(repo, group, epoch);
}

// ---- the commit ----

namespace {

// Under groups/.lock: `epoch` is the newest issued, open, not committed.
Status CheckCommittable(const Repository& repo, const std::string& group, uint64_t epoch) {
  DP420_ASSIGN_OR_RETURN(uint64_t newest, ReadNewestEpoch(repo));
  if (epoch < newest) {
    return Status::Busy(What(group, epoch) + " is not the newest (" + std::to_string(newest) +
                        "): fenced");
  }
  if (epoch > newest) {
    return Status::Busy(What(group, epoch) + " was never begun (the newest is " +
                        std::to_string(newest) + ")");
  }
  DP420_ASSIGN_OR_RETURN(std::optional<std::string> committed, FindGroupFile(repo, group, epoch));
  if (committed) {
    return Status::Busy(What(group, epoch) + " is not open: committed already (groups/" + group +
                        "/" + *committed + ")");
  }
  DP420_ASSIGN_OR_RETURN(bool open, PathExists(OpenPath(repo, group, epoch)));
  if (!open) return Status::Busy(What(group, epoch) + " is not open: aborted");
  return Status::Ok();
}

// Under groups/.lock: every member's staged manifest is there, of its
// volume and this repository, with the seal named. Fills each record's
// snapshot id and sequence, and the topology.
Status CheckMembers(const Repository& repo, const std::string& group, uint64_t epoch,
                    std::vector<GroupMemberRecord>* members, Json* topology) {
  std::sort(members->begin(), members->end(),
            [](const GroupMemberRecord& a, const GroupMemberRecord& b) {
              return a.member < b.member;
            });
  std::set<std::string> volumes;
  Json all = Json::array();
  for (size_t i = 0; i < members->size(); ++i) {
    GroupMemberRecord& r = (*members)[i];
    if (r.member.empty() || (i > 0 && (*members)[i - 1].member == r.member)) {
      return Status::InvalidArgument("member names must be given, each once ('" + r.member + "')");
    }
    if (!ValidVolumeName(r.volume) || !volumes.insert(r.volume).second) {
      return Status::InvalidArgument("member " + r.member + ": volume '" + r.volume +
                                     "' is invalid or another member's too");
    }
    auto staged = ReadStaged(repo, group, epoch, r.volume);
    if (!staged.ok() && staged.status().code() == Code::kNotFound) {
      return Status::InvalidArgument("member " + r.member + " staged nothing");
    }
    DP420_RETURN_IF_ERROR(staged.status());
    if (staged->seal != r.manifest_seal) {
      return Status::InvalidArgument("member " + r.member + " staged seal " + staged->seal +
                                     ", not " + r.manifest_seal);
    }
    r.snapshot_id = staged->snapshot_id;
    r.sequence = staged->sequence;
    const Json& nt = staged->node_topology;
    if (nt.is_object() && nt.contains("members") && nt["members"].is_array()) {
      for (const Json& m : nt["members"]) all.push_back(m);
    }
  }
  *topology = Json{{"members", std::move(all)}};
  return Status::Ok();
}

// The group manifest's write: the atomic step of the commit.
Status WriteGroupManifest(const Repository& repo, GroupManifest* gm) {
  gm->group_snapshot_id = NewSnapshotId();
  gm->file_name = gm->FileName();
  const std::string text = SealJson(gm->ToJson(), repo.seal_key(), &gm->seal);
  const std::string dir = GroupDir(repo, gm->group);
  const std::string final_path = dir + "/" + gm->file_name;
  Status written = WriteRenamed(final_path + ".tmp", final_path, dir, text,
                                "group-before-rename", "group-after-rename");
  if (!written.ok() && io::ReadFile(final_path).ok()) {
    return written.Prefix(What(gm->group, gm->epoch) + " was committed (" + gm->file_name +
                          ") but its folder could not be made durable");
  }
  return written;
}

}  // namespace

Result<GroupManifest> CommitGroup(const Repository& repo, const std::string& group,
                                  uint64_t epoch, std::vector<GroupMemberRecord> members,
                                  const std::string& tool_version) {
  if (!ValidGroupName(group)) return Status::InvalidArgument("invalid group name '" + group + "'");
  if (members.empty()) return Status::InvalidArgument("a group commit needs a member");
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_RETURN_IF_ERROR(CheckCommittable(repo, group, epoch));
  GroupManifest gm;
  DP420_RETURN_IF_ERROR(CheckMembers(repo, group, epoch, &members, &gm.node_topology));
  gm.repo_id = repo.repo_id_hex();
  gm.group = group;
  gm.epoch = epoch;
  gm.created_unix_ns = NowUnixNs();
  gm.created = Rfc3339(gm.created_unix_ns);
  gm.members = std::move(members);
  gm.tool_version = tool_version;
  DP420_RETURN_IF_ERROR(WriteGroupManifest(repo, &gm));
  // Committed. The epoch ends: nothing is staged under it any more.
  Status ended = UnlinkIfThere(OpenPath(repo, group, epoch));
  if (ended.ok()) ended = io::SyncDir(GroupDir(repo, group));
  if (!ended.ok()) return ended.Prefix(What(group, epoch) + " was committed, but");
  return gm;
}

// ---- the member's side ----

Status StageManifest(const Repository& repo, const std::string& group, uint64_t epoch,
                     const std::string& volume, const std::string& snapshot_id,
                     const std::string& sealed_text) {
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_ASSIGN_OR_RETURN(bool open, PathExists(OpenPath(repo, group, epoch)));
  if (!open) {
    return Status::Busy(What(group, epoch) + " is not open (committed, aborted or never "
                        "begun): snapshot " + snapshot_id + " of volume '" + volume +
                        "' is not staged");
  }
  // Only the newest epoch can commit: staging under an older one is refused
  // as its commit would be.
  DP420_ASSIGN_OR_RETURN(uint64_t newest, ReadNewestEpoch(repo));
  if (epoch != newest) {
    return Status::Busy(What(group, epoch) + " is not the newest (" + std::to_string(newest) +
                        "): fenced; snapshot " + snapshot_id + " is not staged");
  }
  const std::string dir = StagingDir(repo, group, epoch);
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  return WriteRenamed(repo.path() + "/tmp/" + snapshot_id + ".manifest.tmp",
                      dir + "/" + volume + kManifestSuffix, dir, sealed_text,
                      "group-stage-before-rename", "group-stage-after-rename");
}

Result<bool> GroupCommittedWith(const Repository& repo, const std::string& group, uint64_t epoch,
                                const GroupMemberRecord& member) {
  DP420_ASSIGN_OR_RETURN(std::optional<GroupManifest> gm, ReadGroupManifest(repo, group, epoch));
  if (!gm) return false;
  const GroupMemberRecord* r = FindMember(*gm, member.volume);
  return r != nullptr && r->manifest_seal == member.manifest_seal &&
         r->snapshot_id == member.snapshot_id;
}

Status UnstageManifest(const Repository& repo, const std::string& group, uint64_t epoch,
                       const GroupMemberRecord& member, bool* committed) {
  *committed = false;
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_ASSIGN_OR_RETURN(*committed, GroupCommittedWith(repo, group, epoch, member));
  if (*committed) return Status::Ok();
  auto staged = ReadStaged(repo, group, epoch, member.volume);
  if (!staged.ok() && staged.status().code() != Code::kNotFound && !IsDamage(staged.status())) {
    return staged.status();
  }
  // Another snapshot's (or a damaged file) is not this member's to remove;
  // a commit refuses it anyway (its seal is not the one named).
  if (!staged.ok() || staged->snapshot_id != member.snapshot_id) return Status::Ok();
  DP420_RETURN_IF_ERROR(UnlinkIfThere(repo.path() + "/" + StagedRel(group, epoch, member.volume)));
  return io::SyncDir(StagingDir(repo, group, epoch));
}

namespace {

// `member`'s published manifest, checked against the record.
Result<Manifest> ReadPublished(const Repository& repo, const GroupMemberRecord& member) {
  Manifest probe;
  probe.sequence = member.sequence;
  probe.snapshot_id = member.snapshot_id;
  const std::string rel = "snapshots/" + member.volume + "/" + probe.FileName();
  auto text = io::ReadFile(repo.path() + "/" + rel);
  if (!text.ok() && text.status().code() == Code::kNotFound) {
    return Status::NotFound("snapshot " + member.snapshot_id + " of volume '" + member.volume +
                            "' is neither staged nor published (" + rel + ")");
  }
  DP420_RETURN_IF_ERROR(text.status());
  DP420_ASSIGN_OR_RETURN(Manifest m, Manifest::Parse(text.value(), rel, &repo.seal_key()));
  if (m.seal != member.manifest_seal || m.volume != member.volume) {
    return Status::Corruption(rel + ": not the manifest the group recorded (seal " + m.seal +
                              ", recorded " + member.manifest_seal + ")");
  }
  return m;
}

// Advances the volume's head to `m` unless it names `m` (or a newer one) already.
Status AdvanceHeadTo(const Repository& repo, const Manifest& m) {
  auto head = ReadHead(repo, m.volume);
  if (head.ok() && head->sequence >= m.sequence) return Status::Ok();
  return AdvanceHead(repo, m.volume, &m);
}

}  // namespace

Result<Manifest> PublishStaged(const Repository& repo, const std::string& group, uint64_t epoch,
                               const GroupMemberRecord& member) {
  auto staged = ReadStaged(repo, group, epoch, member.volume);
  if (!staged.ok() && staged.status().code() == Code::kNotFound) {
    // Published before (a second call, a crash after the rename).
    DP420_ASSIGN_OR_RETURN(Manifest m, ReadPublished(repo, member));
    DP420_RETURN_IF_ERROR(AdvanceHeadTo(repo, m));
    return m;
  }
  DP420_RETURN_IF_ERROR(staged.status());
  const Manifest& m = staged.value();
  if (m.seal != member.manifest_seal || m.snapshot_id != member.snapshot_id) {
    return Status::Corruption(StagedRel(group, epoch, member.volume) + ": seal " + m.seal +
                              " is not the one the group recorded (" + member.manifest_seal +
                              "): not published");
  }
  const std::string dir = repo.SnapshotsDir(m.volume);
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
  const std::string from = repo.path() + "/" + StagedRel(group, epoch, m.volume);
  const std::string to = dir + "/" + m.file_name;
  CrashPoint("group-before-publish");
  if (io::sys::Rename(from.c_str(), to.c_str()) != 0) {
    return PosixError("rename " + from + " -> " + to, errno);
  }
  CrashPoint("group-after-publish");
  Status synced = io::SyncDir(dir);
  if (!synced.ok()) synced = io::SyncDir(dir);
  DP420_RETURN_IF_ERROR(synced.Prefix("snapshot " + m.snapshot_id + " was published but its "
                                      "folder could not be made durable"));
  // Only tidiness rests on this one: a staged name that comes back is
  // published again, to the same name with the same bytes.
  (void)io::SyncDir(StagingDir(repo, group, epoch));
  DP420_RETURN_IF_ERROR(AdvanceHeadTo(repo, m).Prefix(
      "snapshot " + m.snapshot_id + " was published but the volume's head could not be advanced"));
  return m;
}

void RemoveStagingIfEmpty(const Repository& repo, const std::string& group, uint64_t epoch) {
  if (io::sys::Rmdir(StagingDir(repo, group, epoch).c_str()) == 0) {
    (void)io::SyncDir(GroupDir(repo, group));
  }
}

// ---- the roll-forward ----

namespace {

void Log(std::vector<std::string>* log, std::string line) {
  if (log) log->push_back(std::move(line));
}

// The journal of `volume` (tmp/VOL.journal), "" when there is none.
Result<std::string> JournalText(const Repository& repo, const std::string& volume) {
  auto text = io::ReadFile(repo.path() + "/tmp/" + volume + ".journal");
  if (!text.ok() && text.status().code() == Code::kNotFound) return std::string();
  return text;
}

// Removes `volume`'s journal when it is the one of `snapshot_id` (published
// now: its packs are referenced).
Status RemoveJournalOf(const Repository& repo, const std::string& volume,
                       const std::string& snapshot_id) {
  DP420_ASSIGN_OR_RETURN(std::string text, JournalText(repo, volume));
  if (text.rfind("snapshot " + snapshot_id + "\n", 0) != 0) return Status::Ok();
  DP420_RETURN_IF_ERROR(UnlinkIfThere(repo.path() + "/tmp/" + volume + ".journal"));
  return io::SyncDir(repo.path() + "/tmp");
}

// One volume of a committed epoch, under its lock (unless the caller holds
// it): a member is published and its journal removed; a manifest staged by
// a volume that is no member is removed (that volume's next writer rolls
// its packs back).
Status PublishOne(const Repository& repo, const GroupManifest& gm, const std::string& volume,
                  const std::string& held_volume, std::chrono::milliseconds lock_wait,
                  std::vector<std::string>* log) {
  VolumeLock lock;
  if (volume != held_volume) {
    DP420_ASSIGN_OR_RETURN(lock, repo.LockVolume(volume, lock_wait));
  }
  const GroupMemberRecord* r = FindMember(gm, volume);
  if (r == nullptr) {
    DP420_RETURN_IF_ERROR(
        UnlinkIfThere(repo.path() + "/" + StagedRel(gm.group, gm.epoch, volume)));
    Log(log, "removed the manifest volume '" + volume + "' staged under " +
                 What(gm.group, gm.epoch) + ", which committed without it");
    return Status::Ok();
  }
  DP420_ASSIGN_OR_RETURN(Manifest m, PublishStaged(repo, gm.group, gm.epoch, *r));
  DP420_RETURN_IF_ERROR(RemoveJournalOf(repo, volume, m.snapshot_id));
  RemoveStagingIfEmpty(repo, gm.group, gm.epoch);
  Log(log, "published snapshot " + m.snapshot_id + " of volume '" + volume + "' (" +
               What(gm.group, gm.epoch) + ")");
  return Status::Ok();
}

// Whether a member of a committed epoch is not done: staged still, or its
// journal not removed yet (a crash after the rename).
Result<bool> Unfinished(const Repository& repo, const GroupManifest& gm,
                        const GroupMemberRecord& r) {
  DP420_ASSIGN_OR_RETURN(bool staged,
                         PathExists(repo.path() + "/" + StagedRel(gm.group, gm.epoch, r.volume)));
  if (staged) return true;
  DP420_ASSIGN_OR_RETURN(std::string journal, JournalText(repo, r.volume));
  return journal.rfind("snapshot " + r.snapshot_id + "\n", 0) == 0;
}

// Publishes every member of a committed epoch not published yet, removes
// what non-members staged, then ends the epoch's staging. `held_volume`: the
// volume whose lock the caller holds ("" none).
Status RollForwardEpoch(const Repository& repo, const std::string& group, uint64_t epoch,
                        const std::string& held_volume, std::chrono::milliseconds lock_wait,
                        std::vector<std::string>* log) {
  DP420_ASSIGN_OR_RETURN(std::optional<GroupManifest> gm, ReadGroupManifest(repo, group, epoch));
  if (!gm) return Status::Internal(What(group, epoch) + " is not committed");
  std::set<std::string> volumes;
  for (const GroupMemberRecord& r : gm->members) {
    DP420_ASSIGN_OR_RETURN(bool unfinished, Unfinished(repo, *gm, r));
    if (unfinished) volumes.insert(r.volume);
  }
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> staged, StagedVolumes(repo, group, epoch));
  volumes.insert(staged.begin(), staged.end());
  Status first;
  for (const std::string& volume : volumes) {
    Status s = PublishOne(repo, *gm, volume, held_volume, lock_wait, log);
    if (s.ok()) continue;
    Log(log, "volume '" + volume + "' of " + What(group, epoch) + ": " + s.ToString());
    if (first.ok()) first = s;
  }
  DP420_RETURN_IF_ERROR(first);
  return EndCommitted(repo, group, epoch);
}

}  // namespace

Status RecoverMemberJournal(const Repository& repo, const std::string& volume,
                            const std::string& group, uint64_t epoch,
                            const std::string& snapshot_id, bool* rolled_forward) {
  *rolled_forward = false;
  if (!ValidGroupName(group)) return Status::Corruption("journal of volume '" + volume +
                                                        "': invalid group '" + group + "'");
  std::optional<GroupMemberRecord> member;
  {
    DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
    DP420_ASSIGN_OR_RETURN(std::optional<GroupManifest> gm, ReadGroupManifest(repo, group, epoch));
    const GroupMemberRecord* r = gm ? FindMember(*gm, volume) : nullptr;
    if (r != nullptr && r->snapshot_id == snapshot_id) member = *r;
    // Its stager is dead (the caller holds the volume lock): an open epoch
    // cannot commit whole any more.
    if (!gm) DP420_RETURN_IF_ERROR(AbortLocked(repo, group, epoch));
    if (!member) {
      auto staged = ReadStaged(repo, group, epoch, volume);
      if (staged.ok() && staged->snapshot_id == snapshot_id) {
        DP420_RETURN_IF_ERROR(UnlinkIfThere(repo.path() + "/" + StagedRel(group, epoch, volume)));
      }
      return Status::Ok();
    }
  }
  DP420_RETURN_IF_ERROR(PublishStaged(repo, group, epoch, *member).status());
  *rolled_forward = true;
  // The other members too, as far as their locks come: the group whole.
  (void)RollForwardEpoch(repo, group, epoch, volume, kBriefLockWait, nullptr);
  return Status::Ok();
}

namespace {

// Epochs of `group` with something in progress: EPOCH.open, or a staging folder.
Result<std::set<uint64_t>> EpochsInProgress(const Repository& repo, const std::string& group) {
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(GroupDir(repo, group)));
  std::set<uint64_t> epochs;
  for (const std::string& name : names) {
    uint64_t epoch = 0;
    if (ParseEpochPrefix(name, ".open", &epoch) || ParseEpochPrefix(name, "", &epoch)) {
      epochs.insert(epoch);
    }
  }
  return epochs;
}

// Group manifest temp files a commit that died left.
Status RemoveGroupTemps(const Repository& repo, const std::string& group) {
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockGroups(repo));
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(GroupDir(repo, group)));
  for (const std::string& name : names) {
    if (EndsWith(name, ".group.tmp")) {
      DP420_RETURN_IF_ERROR(UnlinkIfThere(GroupDir(repo, group) + "/" + name));
    }
  }
  return Status::Ok();
}

// An epoch not committed: aborted (when open, only with `abort_open`), then
// the journals of the volumes that staged under it recovered (rolled back).
Status AbortAndRollBack(const Repository& repo, const std::string& group, uint64_t epoch,
                        bool was_open, std::chrono::milliseconds lock_wait,
                        std::vector<std::string>* log) {
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> volumes, StagedVolumes(repo, group, epoch));
  DP420_RETURN_IF_ERROR(AbortGroupEpoch(repo, group, epoch));
  Log(log, (was_open ? "aborted " : "removed what was left of aborted ") + What(group, epoch));
  Status first;
  for (const std::string& volume : volumes) {
    auto lock = repo.LockVolume(volume, lock_wait);
    Status s = lock.ok() ? BackupJournal::Recover(repo, volume) : lock.status();
    if (s.ok()) continue;
    Log(log, "volume '" + volume + "' of " + What(group, epoch) + ": " + s.ToString());
    if (first.ok()) first = s;
  }
  return first;
}

Status RecoverEpoch(const Repository& repo, const std::string& group, uint64_t epoch,
                    bool abort_open, std::chrono::milliseconds lock_wait,
                    std::vector<std::string>* log) {
  DP420_ASSIGN_OR_RETURN(GroupEpochState state, GroupEpochStateOf(repo, group, epoch));
  if (state == GroupEpochState::kCommitted) {
    return RollForwardEpoch(repo, group, epoch, "", lock_wait, log);
  }
  if (state == GroupEpochState::kOpen && !abort_open) return Status::Ok();
  return AbortAndRollBack(repo, group, epoch, state == GroupEpochState::kOpen, lock_wait, log);
}

}  // namespace

Status RecoverGroups(const Repository& repo, bool abort_open, std::chrono::milliseconds lock_wait,
                     std::vector<std::string>* log) {
  DP420_ASSIGN_OR_RETURN(std::vector<std::string> groups, ReadNames(GroupsDir(repo)));
  Status first;
  auto keep = [&](const Status& s) {
    if (first.ok()) first = s;
  };
  for (const std::string& group : groups) {
    if (!ValidGroupName(group)) continue;
    auto epochs = EpochsInProgress(repo, group);
    if (!epochs.ok()) keep(epochs.status());
    for (uint64_t epoch : epochs.ok() ? *epochs : std::set<uint64_t>()) {
      Status s = RecoverEpoch(repo, group, epoch, abort_open, lock_wait, log);
      if (!s.ok()) keep(s.Prefix(What(group, epoch)));
    }
    Status temps = RemoveGroupTemps(repo, group);
    if (!temps.ok()) keep(temps);
  }
  return first;
}

// ---- reading ----

Status ListGroupManifests(const Repository& repo, const std::string& group,
                          std::vector<GroupManifest>* out, std::vector<DamagedFile>* damaged) {
  if (!group.empty() && !ValidGroupName(group)) {
    return Status::InvalidArgument("invalid group name '" + group + "'");
  }
  std::vector<std::string> groups = {group};
  if (group.empty()) {
    DP420_ASSIGN_OR_RETURN(groups, ReadNames(GroupsDir(repo)));
  }
  const size_t first = out->size();
  for (const std::string& g : groups) {
    if (!ValidGroupName(g)) continue;
    DP420_ASSIGN_OR_RETURN(std::vector<std::string> names, ReadNames(GroupDir(repo, g)));
    for (const std::string& name : names) {
      if (!EndsWith(name, kGroupSuffix)) continue;
      const std::string rel = "groups/" + g + "/" + name;
      uint64_t epoch = 0;
      std::string id;
      Result<GroupManifest> gm =
          ParseGroupFileName(name, &epoch, &id)
              ? ReadGroupFile(repo, g, name)
              : Result<GroupManifest>(Status::Corruption(rel + ": not a group manifest's name"));
      if (gm.ok()) {
        out->push_back(std::move(gm).value());
        continue;
      }
      if (gm.status().code() == Code::kNotFound) continue;  // removed since the listing
      if (!damaged) return gm.status();
      damaged->push_back({rel, gm.status()});
    }
  }
  std::sort(out->begin() + static_cast<std::ptrdiff_t>(first), out->end(),
            [](const GroupManifest& a, const GroupManifest& b) {
              return std::tie(a.epoch, a.group) < std::tie(b.epoch, b.group);
            });
  return Status::Ok();
}

void ListStagedManifests(const Repository& repo, std::vector<Manifest>* out) {
  for (const std::string& group : io::ListDir(GroupsDir(repo))) {
    if (!ValidGroupName(group)) continue;
    for (const std::string& name : io::ListDir(GroupDir(repo, group))) {
      uint64_t epoch = 0;
      if (!ParseEpochPrefix(name, "", &epoch)) continue;
      auto volumes = StagedVolumes(repo, group, epoch);
      for (const std::string& volume : volumes.ok() ? *volumes : std::vector<std::string>()) {
        auto m = ReadStaged(repo, group, epoch, volume);
        if (m.ok()) out->push_back(std::move(m).value());
      }
    }
  }
}

// ---- verify ----

namespace {

// Whether a link of the member's volume covers its sequence (forget).
bool Forgotten(const Repository& repo, const GroupMemberRecord& r) {
  for (const std::string& name : io::ListDir(repo.SnapshotsDir(r.volume))) {
    if (!EndsWith(name, ".link")) continue;
    const std::string rel = "snapshots/" + r.volume + "/" + name;
    auto text = io::ReadFile(repo.path() + "/" + rel);
    if (!text.ok()) continue;
    auto link = ParseLink(repo, r.volume, text.value(), rel);
    if (link.ok() && link->Covers(r.sequence)) return true;
  }
  return false;
}

// What is wrong with member `r` of `gm` ("" nothing).
std::string CheckMember(const Repository& repo, const GroupManifest& gm,
                        const GroupMemberRecord& r) {
  Manifest probe;
  probe.sequence = r.sequence;
  probe.snapshot_id = r.snapshot_id;
  const std::string rel = "snapshots/" + r.volume + "/" + probe.FileName();
  const std::string who = "member " + r.member + ": ";
  auto text = io::ReadFile(repo.path() + "/" + rel);
  if (!text.ok() && text.status().code() == Code::kNotFound) {
    // Committed, not published yet: the roll-forward publishes it.
    auto staged = ReadStaged(repo, gm.group, gm.epoch, r.volume);
    if (staged.ok() && staged->seal == r.manifest_seal) return "";
    if (Forgotten(repo, r)) return "";
    return who + "snapshot " + r.snapshot_id + " of volume '" + r.volume + "' (" + rel +
           ") is missing, and was not forgotten";
  }
  if (!text.ok()) return who + text.status().message();
  auto m = Manifest::Parse(text.value(), rel, &repo.seal_key());
  if (!m.ok()) return who + m.status().message();
  if (m->seal != r.manifest_seal || m->snapshot_id != r.snapshot_id) {
    return who + rel + " has seal " + m->seal + ", the group recorded " + r.manifest_seal +
           " (the member's manifest was replaced)";
  }
  return "";
}

std::string StripPrefix(const std::string& message, const std::string& prefix) {
  const std::string p = prefix + ": ";
  return message.compare(0, p.size(), p) == 0 ? message.substr(p.size()) : message;
}

}  // namespace

Status VerifyGroups(const Repository& repo, VerifyReport* report) {
  std::vector<GroupManifest> list;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(ListGroupManifests(repo, "", &list, &damaged));
  for (const DamagedFile& d : damaged) {
    report->problems.push_back({d.path, StripPrefix(d.status.message(), d.path), {}});
  }
  for (const GroupManifest& gm : list) {
    for (const GroupMemberRecord& r : gm.members) {
      std::string why = CheckMember(repo, gm, r);
      if (why.empty()) continue;
      report->problems.push_back({"groups/" + gm.group + "/" + gm.file_name, why, {}});
    }
  }
  return Status::Ok();
}

std::string StagedManifestPath(const Repository& repo, const std::string& group, uint64_t epoch,
                               const std::string& volume) {
  return repo.path() + "/" + StagedRel(group, epoch, volume);
}

}  // namespace dp420
