#include "engine/core/verify.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "engine/core/damage.h"
#include "engine/core/format.h"
#include "engine/core/group_repo.h"
#include "engine/core/history.h"
#include "engine/core/pack.h"
#include "engine/core/table.h"
#include "engine/core/table_check.h"
#include "io/inject.h"
#include "io/assert.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kNone = SIZE_MAX;
constexpr auto kProgressInterval = std::chrono::milliseconds(200);

uint64_t RecordKey(uint32_t pack_id, uint32_t offset_4k) {
  return uint64_t{pack_id} << 32 | offset_4k;
}

std::string PackObject(uint32_t pack_id) { return "packs/" + PackName(pack_id) + ".pack"; }

std::string ManifestObject(const Manifest& m) {
  return "snapshots/" + m.volume + "/" + m.file_name;
}

// `message` without a leading "<prefix>: ": statuses name their file, and a
// problem names its object separately.
std::string StripPrefix(const std::string& message, const std::string& prefix) {
  std::string p = prefix + ": ";
  return message.compare(0, p.size(), p) == 0 ? message.substr(p.size()) : message;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "0000000003-<id>.manifest" -> 3 and <id>. False for any other form.
// "snapshots/VOL/NAME" -> VOL and NAME.
void SplitManifestPath(const std::string& rel, std::string* volume, std::string* name) {
  size_t first = rel.find('/');
  size_t last = rel.rfind('/');
  *volume = first < last ? rel.substr(first + 1, last - first - 1) : "";
  *name = rel.substr(last == std::string::npos ? 0 : last + 1);
}

// Reads record `ref` of `pack` into `buf` (stored_len bytes) and checks its
// SHA-256. Returns "" when good, else what is wrong with it.
// Reads a record and the zero padding after it up to the next 4 KiB (`buf`
// holds PaddedLen(stored_len) bytes); "" when both check out, else what is
// wrong. Padding is checked too: a flipped byte anywhere in a pack is found.
size_t PaddedLen(uint32_t stored_len) {
  return (size_t{stored_len} + kRecordAlign - 1) / kRecordAlign * kRecordAlign;
}

// Reads the record `ref` (padding included) into `buf` and checks it: a raw
// record against its SHA-256, an encoded one (record.h) by decoding it into
// `raw` (raw_len bytes). "" when good, else what is wrong.
std::string ReadChecked(const PackReader& pack, const ObjRef& ref, uint32_t raw_len,
                        uint8_t* buf, RecordCodec& codec, uint8_t* raw) {
  // A raw record is its object's bytes: any other length is damage (and more
  // than raw_len bytes would not fit `raw`).
  if (!StoredLengthFits(ref, raw_len)) {
    return "has stored_len " + std::to_string(ref.stored_len) + ", which its object's " +
           std::to_string(raw_len) + " bytes cannot take";
  }
  uint64_t offset = ref.offset_bytes();
  const size_t padded = PaddedLen(ref.stored_len);
  if (offset + padded > pack.size_bytes()) return "runs past the end (truncated)";
  size_t done = 0;
  while (done < padded) {
    ssize_t n = io::sys::Pread(pack.fd(), buf + done, padded - done, off_t(offset + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return std::string("cannot be read (") + std::strerror(errno) + ")";
    }
    if (n == 0) return "runs past the end (truncated)";
    done += size_t(n);
  }
  if (!std::all_of(buf + ref.stored_len, buf + padded, [](uint8_t b) { return b == 0; })) {
    return "has non-zero bytes in its padding";
  }
  if (ref.flags & kObjEncodingFlags) {
    Status s = codec.Decode(ref, buf, {raw, raw_len});
    return s.ok() ? "" : "does not decode: " + s.message();
  }
  uint8_t digest[simd::kSha256Bytes];
  simd::Sha256(buf, ref.stored_len, digest);
  if (std::memcmp(digest, ref.sha256, sizeof(digest)) != 0) return "fails its SHA-256";
  if (raw && raw != buf) std::memcpy(raw, buf, ref.stored_len);
  return "";
}

// Problems grouped by (object, message), each with the snapshots it breaks.
class Problems {
 public:
  // The index of the problem (object, message); added on first use.
  size_t Add(const std::string& object, const std::string& message) {
    auto [it, added] = index_.try_emplace({object, message}, list_.size());
    if (added) {
      list_.push_back({object, message, {}});
      snapshots_.emplace_back();
    }
    return it->second;
  }
  void Break(size_t problem, const std::string& snapshot) {
    DP420_ASSERT(problem < snapshots_.size());
    snapshots_[problem].insert(snapshot);
  }
  void Finish(VerifyReport* report) {
    std::set<std::string> broken;
    for (size_t i = 0; i < list_.size(); ++i) {
      list_[i].snapshots.assign(snapshots_[i].begin(), snapshots_[i].end());
      broken.insert(snapshots_[i].begin(), snapshots_[i].end());
    }
    report->problems = std::move(list_);
    report->broken_snapshots.assign(broken.begin(), broken.end());
  }

 private:
  std::map<std::pair<std::string, std::string>, size_t> index_;
  std::vector<VerifyProblem> list_;
  std::vector<std::set<std::string>> snapshots_;  // std::set: sorted and unique
};

// A data record referenced by at least one selected snapshot.
struct Record {
  uint32_t offset_4k = 0;
  uint32_t stored_len = 0;
  uint32_t raw_len = 0;
  uint16_t flags = 0;
  uint16_t key_id = 0;
  uint8_t sha256[32] = {};
  uint64_t offset_bytes() const { return uint64_t{offset_4k} * kRecordAlign; }
  // Every field: one record read as two different things (another length,
  // codec or key) is checked as each of them, not as whichever sorts first.
  auto Key() const { return std::tie(offset_4k, stored_len, raw_len, flags, key_id); }
  bool operator<(const Record& o) const {
    if (Key() != o.Key()) return Key() < o.Key();
    return std::memcmp(sha256, o.sha256, 32) < 0;
  }
  bool operator==(const Record& o) const {
    return Key() == o.Key() && std::memcmp(sha256, o.sha256, 32) == 0;
  }
};

// Called for each leaf page reached: its entries, its index, where it is
// stored, and whether this verify run meets the page for the first time.
using LeafFn = std::function<void(const Entry* entries, uint32_t count, uint64_t page,
                                  const ObjRef& page_ref, bool first)>;

// State of one walk over a snapshot's table.
struct Walk {
  const Manifest& manifest;
  TableShape shape;
  std::vector<std::vector<Entry>> pages;  // one buffer per level
  bool complete = true;                   // every page read and checked
  LeafFn on_leaf;
  Walk(const Manifest& m, LeafFn fn)
      : manifest(m), shape(TableShape::For(m.blocks_total)), on_leaf(std::move(fn)) {
    pages.resize(shape.levels);
  }
};

class Verifier {
 public:
  Verifier(const Repository& repo, const VerifyOptions& options)
      : repo_(repo), options_(options), relocator_(repo) {}
  Result<VerifyReport> Run();

 private:
  struct PackState {
    std::unique_ptr<PackReader> reader;  // null when the pack could not be opened
    size_t problem = kNone;              // why it could not
  };
  struct PageState {
    bool visited = false;    // met by the table pass
    size_t problem = kNone;  // the page is bad
  };
  using Children = std::multimap<std::string, std::string>;  // parent id -> child ids

  Status Select();
  Result<std::string> ResolveAmongFiles() const;
  bool InScope(const std::string& id) const { return scope_id_.empty() || id == scope_id_; }

  void CheckHistories();
  void CheckChains();
  void CheckVolumeChain(const std::vector<const Manifest*>& valid,
                        const std::vector<const DamagedFile*>& damaged);
  void CheckLink(const Manifest& m, const std::unordered_map<std::string, const Manifest*>& by_id,
                 const std::unordered_map<std::string, size_t>& damaged_ids,
                 const Children& children);
  void BreakTree(size_t problem, const std::string& root, const Children& children);
  static std::vector<std::string> Tree(const std::string& root, const Children& children);

  const PackState& OpenPack(uint32_t pack_id);
  Status CheckTables();
  Status CheckTable(const Manifest& m);
  Status WalkPage(Walk& w, uint32_t level, uint64_t index, const ObjRef& ref);
  bool LoadPage(Walk& w, uint32_t level, const ObjRef& ref, uint32_t count, bool* first);
  size_t CheckPage(uint32_t level, const ObjRef& ref, uint32_t count, std::vector<Entry>* page);
  void CheckEntries(const Manifest& m, const Entry* e, uint32_t count, uint64_t page,
                    const ObjRef& page_ref);
  void Collect(const Manifest& m, const Entry* e, uint32_t count, uint64_t page,
               const std::string& snapshot_id);
  bool Resolve(ObjRef* ref, const std::string& snapshot_id);
  void CheckRelocations();

  Status CheckPacks();
  Status CheckPack(uint32_t pack_id, const std::vector<Record>& records);
  void CheckBounds(uint32_t pack_id, const PackReader& pack, const std::vector<Record>& records,
                   std::vector<const Record*>* in_file);
  void CheckIndex(uint32_t pack_id, uint32_t version, std::vector<ObjRef> index,
                  const std::vector<const Record*>& records);
  Status ReadRecords(uint32_t pack_id, const PackReader& pack,
                     const std::vector<const Record*>& records);
  void Tick(bool force);

  Status MapBadRecords();
  void CountUnreferenced();
  void RecordDamage(bool whole);

  const Repository& repo_;
  const VerifyOptions& options_;
  VerifyReport report_;
  Problems problems_;
  std::vector<Manifest> manifests_;  // every valid manifest listed
  std::vector<DamagedFile> damaged_;
  std::vector<const Manifest*> selected_;
  std::map<std::string, VolumeHistory> histories_;  // by volume
  std::string scope_id_;  // the one selected snapshot, or empty for all
  std::map<uint32_t, PackState> packs_;
  std::unordered_map<uint64_t, PageState> pages_;  // by RecordKey
  std::set<uint32_t> page_packs_;                  // packs holding table pages
  std::map<uint32_t, std::vector<Record>> records_;
  std::unordered_map<uint64_t, size_t> bad_records_;       // RecordKey -> problem
  std::unordered_map<uint32_t, size_t> bad_packs_;         // unreadable data pack -> problem
  DamageRecord bad_refs_;  // the table references of the bad records (MapBadRecords)
  EntryChecker entries_;  // shared with restore: one verdict on entries
  Relocator relocator_;   // references to repacked packs, to where they are now
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> raw_;            // a decoded record
  std::unique_ptr<RecordCodec> codec_;  // decodes encoded records
  uint64_t bytes_total_ = 0;
  Clock::time_point last_tick_;
};

Result<VerifyReport> Verifier::Run() {
  DP420_ASSIGN_OR_RETURN(codec_, repo_.NewRecordCodec());
  DP420_RETURN_IF_ERROR(Select());
  report_.snapshots_checked = selected_.size();
  if (options_.check_history) {
    CheckHistories();
    CheckChains();
  }
  DP420_RETURN_IF_ERROR(CheckTables());
  DP420_RETURN_IF_ERROR(CheckPacks());
  DP420_RETURN_IF_ERROR(MapBadRecords());
  bool whole = options_.volume.empty() && options_.snapshot.empty();
  if (whole) {
    CheckRelocations();
    CountUnreferenced();
  }
  RecordDamage(whole);
  problems_.Finish(&report_);
  return std::move(report_);
}

// ---- Selection ---------------------------------------------------------------

Status Verifier::Select() {
  const std::string& volume = options_.volume;
  if (!volume.empty() && !ValidVolumeName(volume)) {
    return Status::InvalidArgument("invalid volume name '" + volume + "'");
  }
  if (!options_.snapshot.empty() && volume.empty()) {
    return Status::InvalidArgument("snapshot '" + options_.snapshot + "' needs its volume");
  }
  DP420_RETURN_IF_ERROR(repo_.ListManifests(volume, &manifests_, &damaged_));
  std::set<std::string> volumes = {volume};
  if (volume.empty()) {
    volumes.clear();
    for (const auto& v : repo_.ListVolumes()) volumes.insert(v);
    for (const auto& v : AnchoredVolumes(repo_)) volumes.insert(v);
  }
  for (const auto& v : volumes) {
    DP420_ASSIGN_OR_RETURN(histories_[v], LoadHistory(repo_, v));
  }
  if (!volume.empty() && manifests_.empty() && damaged_.empty() &&
      histories_[volume].problems.empty()) {
    return Status::NotFound("volume '" + volume + "' has no snapshots in " + repo_.path());
  }
  if (options_.snapshot.empty()) {
    for (const auto& m : manifests_) selected_.push_back(&m);
    return Status::Ok();
  }
  DP420_ASSIGN_OR_RETURN(scope_id_, ResolveAmongFiles());
  const std::string& id = scope_id_;
  for (const auto& m : manifests_) {
    if (m.snapshot_id == id) selected_.push_back(&m);
  }
  return Status::Ok();
}

// Resolves options_.snapshot as Repository::FindSnapshot does, over valid and
// damaged manifest files alike (a damaged one is known by its file name), and
// "latest" as the volume's head names it even when that file is damaged or
// missing, so its problem is reported.
Result<std::string> Verifier::ResolveAmongFiles() const {
  const VolumeHistory& h = histories_.at(options_.volume);
  if (options_.snapshot == "latest" && h.tip) return h.tip->snapshot_id;
  if (options_.snapshot == "latest" && !h.head.snapshot_id.empty()) return h.head.snapshot_id;
  std::set<std::pair<uint64_t, std::string>> files;  // (sequence, id); a fork holds two
  for (const auto& m : manifests_) files.emplace(m.sequence, m.snapshot_id);
  for (const auto& d : damaged_) {
    std::string volume, name, id;
    uint64_t sequence = 0;
    SplitManifestPath(d.path, &volume, &name);
    if (ParseManifestName(name, &sequence, &id)) files.emplace(sequence, id);
  }
  const std::string& want = options_.snapshot;
  if (want == "latest" && !files.empty()) return files.rbegin()->second;
  if (want.size() < 4) return Status::InvalidArgument("snapshot id '" + want + "' is too short");
  std::string found;
  for (const auto& [sequence, id] : files) {
    if (id.compare(0, want.size(), want) != 0 || id == found) continue;
    if (!found.empty()) {
      return Status::InvalidArgument("snapshot id prefix '" + want + "' is ambiguous");
    }
    found = id;
  }
  if (found.empty()) {
    return Status::NotFound("snapshot '" + want + "' of volume '" + options_.volume +
                            "' not found");
  }
  return found;
}

// ---- Volume histories ---------------------------------------------------------

// Rollbacks, forks and missing or damaged heads (history.h): each a problem
// of the volume's head, breaking the snapshot the head names.
void Verifier::CheckHistories() {
  for (const auto& [volume, h] : histories_) {
    for (const auto& message : h.problems) {
      size_t problem = problems_.Add("snapshots/" + volume + "/HEAD", message);
      if (!h.head.snapshot_id.empty() && InScope(h.head.snapshot_id)) {
        problems_.Break(problem, h.head.snapshot_id);
      }
    }
  }
}

// ---- Snapshot hash chain -----------------------------------------------------

void Verifier::CheckChains() {
  std::map<std::string, std::vector<const Manifest*>> valid;
  std::map<std::string, std::vector<const DamagedFile*>> damaged;
  for (const auto& m : manifests_) valid[m.volume].push_back(&m);
  for (const auto& d : damaged_) {
    std::string volume, name;
    SplitManifestPath(d.path, &volume, &name);
    damaged[volume].push_back(&d);
    valid[volume];  // make sure the volume is visited
  }
  for (const auto& [volume, list] : valid) CheckVolumeChain(list, damaged[volume]);
}

void Verifier::CheckVolumeChain(const std::vector<const Manifest*>& valid,
                                const std::vector<const DamagedFile*>& damaged) {
  std::unordered_map<std::string, const Manifest*> by_id;
  std::unordered_map<std::string, size_t> damaged_ids;  // id -> problem
  Children children;
  for (const Manifest* m : valid) {
    by_id[m->snapshot_id] = m;
    if (!m->chain_parent.empty()) children.emplace(m->chain_parent, m->snapshot_id);
  }
  for (const DamagedFile* d : damaged) {
    size_t problem = problems_.Add(d->path, StripPrefix(d->status.message(), d->path));
    std::string volume, name, id;
    uint64_t sequence = 0;
    SplitManifestPath(d->path, &volume, &name);
    if (!ParseManifestName(name, &sequence, &id)) continue;
    damaged_ids[id] = problem;
    BreakTree(problem, id, children);
  }
  for (const Manifest* m : valid) CheckLink(*m, by_id, damaged_ids, children);
}

// Checks that `m` names an existing parent whose seal and sequence fit; if
// not, `m` and every snapshot descending from it are broken.
void Verifier::CheckLink(const Manifest& m,
                         const std::unordered_map<std::string, const Manifest*>& by_id,
                         const std::unordered_map<std::string, size_t>& damaged_ids,
                         const Children& children) {
  if (m.chain_parent.empty()) return;
  std::string message;
  const char* whose = m.linked ? "kept ancestor " : "parent ";
  auto parent = by_id.find(m.chain_parent);
  if (parent == by_id.end()) {
    if (damaged_ids.count(m.chain_parent)) return;  // broken by the damaged parent's problem
    message = whose + m.chain_parent + " is missing (manifest deleted?)";
  } else if (parent->second->seal != Lower(m.chain_parent_seal)) {
    message = m.linked ? "kept ancestor's seal does not match the one its link records (edited?)"
                       : "parent manifest's seal does not match parent_manifest_sha256 (edited?)";
  } else if (parent->second->sequence >= m.sequence) {
    message = "sequence " + std::to_string(m.sequence) + " does not follow its parent's (" +
              std::to_string(parent->second->sequence) + ")";
  } else {
    return;
  }
  std::vector<std::string> tree = Tree(m.snapshot_id, children);
  if (!scope_id_.empty() && std::find(tree.begin(), tree.end(), scope_id_) == tree.end()) {
    return;  // does not concern the one snapshot being verified
  }
  size_t problem = problems_.Add(ManifestObject(m), message);
  for (const auto& id : tree) {
    if (InScope(id)) problems_.Break(problem, id);
  }
}

void Verifier::BreakTree(size_t problem, const std::string& root, const Children& children) {
  for (const auto& id : Tree(root, children)) {
    if (InScope(id)) problems_.Break(problem, id);
  }
}

// `root` and every snapshot descending from it.
std::vector<std::string> Verifier::Tree(const std::string& root, const Children& children) {
  std::vector<std::string> out{root};
  std::unordered_set<std::string> seen{root};
  for (size_t i = 0; i < out.size(); ++i) {
    auto [begin, end] = children.equal_range(out[i]);
    for (auto it = begin; it != end; ++it) {
      if (seen.insert(it->second).second) out.push_back(it->second);
    }
  }
  return out;
}

// ---- Tables ------------------------------------------------------------------

const Verifier::PackState& Verifier::OpenPack(uint32_t pack_id) {
  auto [it, added] = packs_.try_emplace(pack_id);
  PackState& state = it->second;
  if (!added) return state;
  std::string path = repo_.PackPath(pack_id);
  auto reader = PackReader::Open(path, pack_id);
  if (reader.ok()) {
    state.reader = std::make_unique<PackReader>(std::move(reader).value());
    posix_fadvise(state.reader->fd(), 0, 0, POSIX_FADV_SEQUENTIAL);
  } else if (reader.status().code() == Code::kNotFound) {
    state.problem = problems_.Add(PackObject(pack_id), "the pack file is missing");
  } else {
    state.problem =
        problems_.Add(PackObject(pack_id), StripPrefix(reader.status().message(), path));
  }
  return state;
}

Status Verifier::CheckTables() {
  for (const Manifest* m : selected_) DP420_RETURN_IF_ERROR(CheckTable(*m));
  return Status::Ok();
}

// Walks the whole table of `m`: every page against its SHA-256, every leaf
// entry's shape, and checksum_sha256 against the blocks' digests. Collects
// the data records the table references.
Status Verifier::CheckTable(const Manifest& m) {
  VolumeChecksum volume_sha;  // the same computation restore checks
  Walk w(m, [&](const Entry* e, uint32_t count, uint64_t page, const ObjRef& ref, bool first) {
    volume_sha.Add(e, count);
    CheckEntries(m, e, count, page, ref);
    if (first) Collect(m, e, count, page, m.snapshot_id);
  });
  DP420_RETURN_IF_ERROR(WalkPage(w, w.shape.levels - 1, 0, m.table_root));
  if (!w.complete) return Status::Ok();  // broken by a page; no checksum to compare
  std::string hex = volume_sha.FinishHex();
  if (!ChecksumMatches(m, hex)) {
    size_t problem =
        problems_.Add(ManifestObject(m),
                      "checksum_sha256 does not match its block table (which gives " + hex + ")");
    problems_.Break(problem, m.snapshot_id);
  }
  return Status::Ok();
}

Status Verifier::WalkPage(Walk& w, uint32_t level, uint64_t index, const ObjRef& ref) {
  if (options_.control.Canceled()) return Status::Canceled("verify canceled");
  uint32_t count = PageEntryCount(w.shape, level, index);
  bool first = false;
  if (!LoadPage(w, level, ref, count, &first)) {
    w.complete = false;
    return Status::Ok();
  }
  const std::vector<Entry>& page = w.pages[level];
  if (level == 0) {
    w.on_leaf(page.data(), count, index, ref, first);
    return Status::Ok();
  }
  // Children use the buffers of lower levels, so `page` stays intact.
  for (uint32_t i = 0; i < count; ++i) {
    DP420_RETURN_IF_ERROR(WalkPage(w, level - 1, index * kPageEntries + i, page[i].ref));
  }
  return Status::Ok();
}

// Reads page `ref` into w.pages[level] and checks it. False (and the walk's
// snapshot broken) when the page is bad; each page is judged once.
bool Verifier::LoadPage(Walk& w, uint32_t level, const ObjRef& ref, uint32_t count, bool* first) {
  std::vector<Entry>* page = &w.pages[level];
  // Room for the page's padding too, which ReadChecked reads and checks.
  page->resize(PaddedLen(count * uint32_t{sizeof(Entry)}) / sizeof(Entry));
  const std::string& id = w.manifest.snapshot_id;
  if (count == 0 || ref.pack_id == 0) {
    // Only the single empty page of an empty volume is not stored.
    uint8_t none = 0;
    uint8_t empty[simd::kSha256Bytes];
    simd::Sha256(&none, 0, empty);
    if (count == 0 && ref.pack_id == 0 && std::memcmp(empty, ref.sha256, 32) == 0) return true;
    problems_.Break(problems_.Add(ManifestObject(w.manifest),
                                  "table page at level " + std::to_string(level) +
                                      " has an invalid reference (no pack or no entries)"),
                    id);
    return false;
  }
  PageState& state = pages_[RecordKey(ref.pack_id, ref.offset_4k)];
  *first = !state.visited;
  if (state.problem == kNone) {
    if (!state.visited) ++report_.pages_checked;
    state.problem = CheckPage(level, ref, count, page);
  }
  state.visited = true;
  if (state.problem == kNone) return true;
  problems_.Break(state.problem, id);
  return false;
}

// Reads and checks one stored page; kNone when good, else the problem.
size_t Verifier::CheckPage(uint32_t level, const ObjRef& page_ref, uint32_t count,
                           std::vector<Entry>* page) {
  ObjRef ref = page_ref;
  if (Status s = relocator_.Resolve(&ref); !s.ok()) {
    return problems_.Add(RelocationName(ref.pack_id), s.message());
  }
  page_packs_.insert(ref.pack_id);
  std::string at = "table page at offset " + std::to_string(ref.offset_bytes()) + " ";
  uint16_t kind = level == 0 ? kObjTableLeaf : kObjTableInner;
  const uint32_t raw_len = count * uint32_t{sizeof(Entry)};
  const bool encoded = ref.flags & kObjEncodingFlags;
  if (!StoredLengthFits(ref, raw_len) || !(ref.flags & kind)) {
    return problems_.Add(PackObject(ref.pack_id), at + "has the wrong size or kind");
  }
  const PackState& pack = OpenPack(ref.pack_id);
  if (!pack.reader) return pack.problem;
  auto* bytes = reinterpret_cast<uint8_t*>(page->data());
  if (encoded && buf_.size() < PaddedLen(ref.stored_len)) buf_.resize(PaddedLen(ref.stored_len));
  std::string what = ReadChecked(*pack.reader, ref, raw_len, encoded ? buf_.data() : bytes,
                                 *codec_, bytes);
  if (!what.empty()) return problems_.Add(PackObject(ref.pack_id), at + what);
  return kNone;
}

// Checks the leaf entries of page `page`; reports the first bad one.
void Verifier::CheckEntries(const Manifest& m, const Entry* e, uint32_t count, uint64_t page,
                            const ObjRef& page_ref) {
  std::string first;
  uint32_t bad = 0;
  for (uint32_t i = 0; i < count; ++i) {
    std::string defect = entries_.Defect(m, e[i], page * kPageEntries + i);
    if (defect.empty()) continue;
    if (bad++ == 0) first = defect;
  }
  if (bad == 0) return;
  std::string message =
      "table page at offset " + std::to_string(page_ref.offset_bytes()) + ": " + first;
  if (bad > 1) message += " (and " + std::to_string(bad - 1) + " more entries)";
  problems_.Break(problems_.Add(PackObject(page_ref.pack_id), message), m.snapshot_id);
}

// Resolves a data reference through relocations (false, the problem
// reported, when a relocation file fails it).
bool Verifier::Resolve(ObjRef* ref, const std::string& snapshot_id) {
  uint32_t referenced = ref->pack_id;
  Status s = relocator_.Resolve(ref);
  if (s.ok()) return true;
  problems_.Break(problems_.Add(RelocationName(referenced), s.message()), snapshot_id);
  return false;
}

void Verifier::Collect(const Manifest& m, const Entry* e, uint32_t count, uint64_t page,
                       const std::string& snapshot_id) {
  std::vector<Record>* list = nullptr;  // neighbouring blocks mostly share a pack
  uint32_t list_pack = 0;
  for (uint32_t i = 0; i < count; ++i) {
    ObjRef ref = e[i].ref;
    if (!ref.stored() || (ref.flags & kObjZero)) continue;
    if (!Resolve(&ref, snapshot_id)) continue;
    if (!list || list_pack != ref.pack_id) {
      list = &records_[ref.pack_id];
      list_pack = ref.pack_id;
    }
    Record r;
    r.offset_4k = ref.offset_4k;
    r.stored_len = ref.stored_len;
    r.raw_len = m.BlockLen(page * kPageEntries + i);
    r.flags = ref.flags;
    r.key_id = ref.key_id;
    std::memcpy(r.sha256, ref.sha256, 32);
    list->push_back(r);
  }
}

// ---- Packs and data records --------------------------------------------------

Status Verifier::CheckPacks() {
  std::set<uint32_t> ids = page_packs_;
  for (auto& [pack_id, records] : records_) {
    // A leaf page is collected once, but different pages share records.
    std::sort(records.begin(), records.end());
    records.erase(std::unique(records.begin(), records.end()), records.end());
    for (const Record& r : records) bytes_total_ += r.stored_len;
    ids.insert(pack_id);
  }
  if (options_.read_data) Tick(true);
  static const std::vector<Record> kNoRecords;
  for (uint32_t pack_id : ids) {
    if (options_.control.Canceled()) return Status::Canceled("verify canceled");
    auto it = records_.find(pack_id);
    DP420_RETURN_IF_ERROR(CheckPack(pack_id, it == records_.end() ? kNoRecords : it->second));
    ++report_.packs_checked;
  }
  if (options_.read_data) Tick(true);
  return Status::Ok();
}

// Checks a pack's header, trailer and the `records` snapshots reference in it.
Status Verifier::CheckPack(uint32_t pack_id, const std::vector<Record>& records) {
  const PackState& state = OpenPack(pack_id);
  if (!state.reader) {
    if (!records.empty()) bad_packs_[pack_id] = state.problem;
    return Status::Ok();
  }
  const PackReader& pack = *state.reader;
  auto index = pack.ReadIndex();
  if (!index.ok()) {
    // The records may still be intact: go on reading them directly.
    problems_.Add(PackObject(pack_id), StripPrefix(index.status().message(), pack.path()));
  }
  std::vector<const Record*> in_file;
  CheckBounds(pack_id, pack, records, &in_file);
  if (options_.read_data) return ReadRecords(pack_id, pack, in_file);
  if (index.ok()) CheckIndex(pack_id, pack.version(), std::move(index).value(), in_file);
  return Status::Ok();
}

// Reports the records that run past the end of the pack as one problem and
// returns the others in `in_file`.
void Verifier::CheckBounds(uint32_t pack_id, const PackReader& pack,
                           const std::vector<Record>& records,
                           std::vector<const Record*>* in_file) {
  std::vector<const Record*> past;
  for (const Record& r : records) {
    if (r.offset_bytes() + r.stored_len > pack.size_bytes()) {
      past.push_back(&r);
    } else {
      in_file->push_back(&r);
    }
  }
  if (past.empty()) return;
  std::string first = std::to_string(past.front()->offset_bytes());
  std::string message = past.size() == 1
                            ? "record at offset " + first + " runs past the end (truncated)"
                            : std::to_string(past.size()) + " records from offset " + first +
                                  " on run past the end (truncated)";
  size_t problem = problems_.Add(PackObject(pack_id), message);
  for (const Record* r : past) bad_records_[RecordKey(pack_id, r->offset_4k)] = problem;
}

// Without reading data: every record must be in the pack's trailer index,
// with the same length and SHA-256.
void Verifier::CheckIndex(uint32_t pack_id, uint32_t version, std::vector<ObjRef> index,
                          const std::vector<const Record*>& records) {
  auto by_offset = [](const ObjRef& a, const ObjRef& b) { return a.offset_4k < b.offset_4k; };
  std::sort(index.begin(), index.end(), by_offset);
  for (const Record* r : records) {
    ObjRef probe{};
    probe.offset_4k = r->offset_4k;
    auto it = std::lower_bound(index.begin(), index.end(), probe, by_offset);
    std::string at = "record at offset " + std::to_string(r->offset_bytes());
    std::string message;
    if (it == index.end() || it->offset_4k != r->offset_4k) {
      message = at + " is not in the pack's index";
    } else if (it->stored_len != r->stored_len ||
               (version == kPackVersionRaw ? std::memcmp(it->sha256, r->sha256, 32) != 0
                                           : it->flags != r->flags || it->key_id != r->key_id)) {
      message = at + " does not match the pack's index";
    } else {
      continue;
    }
    bad_records_[RecordKey(pack_id, r->offset_4k)] = problems_.Add(PackObject(pack_id), message);
  }
}

// Reads every record (in offset order) and checks its SHA-256.
Status Verifier::ReadRecords(uint32_t pack_id, const PackReader& pack,
                             const std::vector<const Record*>& records) {
  for (const Record* r : records) {
    if (options_.control.Canceled()) return Status::Canceled("verify canceled");
    if (buf_.size() < PaddedLen(r->stored_len)) buf_.resize(PaddedLen(r->stored_len));
    ObjRef ref{};
    std::memcpy(ref.sha256, r->sha256, 32);
    ref.pack_id = pack_id;
    ref.offset_4k = r->offset_4k;
    ref.stored_len = r->stored_len;
    ref.flags = r->flags;
    ref.key_id = r->key_id;
    if (raw_.size() < r->raw_len) raw_.resize(r->raw_len);
    std::string what = ReadChecked(pack, ref, r->raw_len, buf_.data(), *codec_, raw_.data());
    ++report_.blocks_checked;
    report_.bytes_read += r->stored_len;
    Tick(false);
    if (what.empty()) continue;
    std::string message = "record at offset " + std::to_string(r->offset_bytes()) + " " + what;
    bad_records_[RecordKey(pack_id, r->offset_4k)] = problems_.Add(PackObject(pack_id), message);
  }
  return Status::Ok();
}

void Verifier::Tick(bool force) {
  const ProgressFn& progress = options_.control.progress;
  if (!progress) return;
  auto now = Clock::now();
  if (!force && now - last_tick_ < kProgressInterval) return;
  last_tick_ = now;
  progress({"verify", report_.bytes_read, bytes_total_});
}

// Second pass, only when records are bad: finds the snapshots referencing
// them (pass one kept one entry per unique record, not who references it).
Status Verifier::MapBadRecords() {
  if (bad_records_.empty() && bad_packs_.empty()) return Status::Ok();
  for (const Manifest* m : selected_) {
    std::set<size_t> hit;
    Walk w(*m, [&](const Entry* e, uint32_t count, uint64_t, const ObjRef&, bool) {
      for (uint32_t i = 0; i < count; ++i) {
        ObjRef ref = e[i].ref;
        if (!ref.stored() || (ref.flags & kObjZero)) continue;
        if (!Resolve(&ref, m->snapshot_id)) continue;
        auto p = bad_packs_.find(ref.pack_id);
        auto r = bad_records_.find(RecordKey(ref.pack_id, ref.offset_4k));
        if (p != bad_packs_.end()) hit.insert(p->second);
        if (r != bad_records_.end()) hit.insert(r->second);
        // Kept in the table's terms (before relocation): what a backup compares.
        if (p != bad_packs_.end() || r != bad_records_.end()) {
          bad_refs_.records.insert(DamageRecord::Key(e[i].ref));
        }
      }
    });
    DP420_RETURN_IF_ERROR(WalkPage(w, w.shape.levels - 1, 0, m->table_root));
    for (size_t problem : hit) problems_.Break(problem, m->snapshot_id);
  }
  return Status::Ok();
}

// Keeps what was found for the next backups (damage.h): they store those
// blocks again. Best effort: a repository this process cannot write (a
// read-only copy) is still verified.
void Verifier::RecordDamage(bool whole) {
  bool replace = whole && options_.read_data;
  if (bad_refs_.empty() && !replace) return;
  (void)SaveDamage(repo_, bad_refs_, replace);
}

// Every relocation file must read back (a damaged one is reported even when
// no snapshot needs it: prune refuses to run until it is dealt with).
void Verifier::CheckRelocations() {
  for (uint32_t pack_id : ListRelocations(repo_)) {
    auto r = ReadRelocation(repo_, pack_id);
    if (!r.ok()) problems_.Add(RelocationName(pack_id), r.status().message());
  }
}

// Packs no valid manifest references (left by interrupted backups). Only
// meaningful when every snapshot of every volume was walked.
void Verifier::CountUnreferenced() {
  for (uint32_t pack_id : repo_.ListPackIds()) {
    if (!page_packs_.count(pack_id) && !records_.count(pack_id)) ++report_.unreferenced_packs;
  }
}

}  // namespace

Result<VerifyReport> RunVerify(const Repository& repo, const VerifyOptions& options) {
  // Shared: prune deletes no pack or relocation file while verify runs.
  DP420_ASSIGN_OR_RETURN(VolumeLock repo_lock, repo.LockRepository(false));
  Verifier verifier(repo, options);
  DP420_ASSIGN_OR_RETURN(VerifyReport report, verifier.Run());
  // The whole repository: its consistency groups too.
  if (options.volume.empty() && options.snapshot.empty()) {
    DP420_RETURN_IF_ERROR(VerifyGroups(repo, &report));
  }
  return report;
}

}  // namespace dp420
