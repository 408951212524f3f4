#include "engine/net/client.h"

#include <poll.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "engine/core/format.h"
#include "engine/core/table_check.h"
#include "engine/core/test_hooks.h"
#include "engine/net/id_cache.h"
#include "engine/net/payloads.h"
#include "engine/net/volumes.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420::net {

namespace {

using Clock = std::chrono::steady_clock;

constexpr unsigned kClockSamples = 5;
constexpr Millis kPollSlice{100};          // cancellation is seen within this
constexpr unsigned kRestoreBuffers = 8;    // RESTORE_DATA frames being written at once
constexpr size_t kDataOffset = 4096;       // block bytes start 4 KiB aligned in a buffer
constexpr size_t kDataPrefix = 12;         // u64 first_block, u32 nblocks
constexpr size_t kStringMax = kMaxPayloadBytes;

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", std::chrono::duration<double>(d).count());
  return buf;
}

// Cancellation and progress of one call: the operation's own, else the
// RemoteOptions' ones.
struct CallControl {
  const JobControl& op;
  const JobControl& remote;
  bool Canceled() const { return op.Canceled() || remote.Canceled(); }
  void Progress(const char* phase, uint64_t done, uint64_t total) const {
    const ProgressFn& fn = op.progress ? op.progress : remote.progress;
    if (fn) fn({phase, done, total});
  }
};

// Reads one answer on the control connection. Every wait is bounded: poll
// slices check cancellation; `loss` of silence ends the call with kNetwork.
class Reader {
 public:
  Reader(Conn& conn, const RemoteOptions& o, const CallControl& control, const char* what)
      : conn_(conn), o_(o), control_(control), what_(what) {}

  // The next header that is not a PING (answered) or a PONG (skipped).
  Result<FrameHeader> NextHeader() {
    for (;;) {
      DP420_RETURN_IF_ERROR(WaitReadable());
      DP420_ASSIGN_OR_RETURN(FrameHeader h, conn_.RecvHeader(o_.LossTimeout()));
      last_heard_ = Clock::now();
      auto type = static_cast<FrameType>(h.type);
      if (type != FrameType::kPing && type != FrameType::kPong) return h;
      DP420_ASSIGN_OR_RETURN(Frame f, ReadPayload(h));
      if (type == FrameType::kPing) DP420_RETURN_IF_ERROR(AnswerPing(conn_, f, o_.LossTimeout()));
    }
  }
  Result<Frame> ReadPayload(const FrameHeader& h) {
    auto f = conn_.RecvPayload(h, o_.LossTimeout());
    if (f.ok()) last_heard_ = Clock::now();
    return f;
  }
  Result<Frame> Next() {
    DP420_ASSIGN_OR_RETURN(FrameHeader h, NextHeader());
    return ReadPayload(h);
  }
  std::string server() const { return "server " + conn_.peer(); }

 private:
  Status WaitReadable() {
    for (;;) {
      if (control_.Canceled()) return Status::Canceled(std::string(what_) + " canceled");
      // Data already waiting counts even after a long local pause (a slow
      // target disk): silence is judged only when nothing is there.
      auto left = std::chrono::ceil<Millis>(o_.LossTimeout() - (Clock::now() - last_heard_));
      left = std::clamp(left, Millis(0), kPollSlice);
      pollfd p{conn_.fd(), POLLIN, 0};
      int r = poll(&p, 1, int(left.count()));
      if (r > 0) return Status::Ok();
      if (r < 0 && errno != EINTR) return PosixError("poll " + conn_.peer(), errno);
      auto silent = Clock::now() - last_heard_;
      if (silent >= o_.LossTimeout()) {
        return Status::Network("server " + conn_.peer() + " lost: nothing received for " +
                               Seconds(silent) + " during " + what_ + " (heartbeat every " +
                               Seconds(o_.heartbeat_interval) + ")");
      }
    }
  }

  Conn& conn_;
  const RemoteOptions& o_;
  const CallControl& control_;
  const char* what_;
  Clock::time_point last_heard_ = Clock::now();
};

// A kDone payload: one JSON string.
Result<Json> DoneJson(const Frame& f, const std::string& server) {
  std::string text;
  Status s = ParseText(f.payload, kStringMax, "DONE", &text);
  if (!s.ok()) return Malformed(f, server, s);
  try {
    return Json::parse(text);
  } catch (const std::exception& e) {
    return Status::Network(server + " sent a DONE frame that is not JSON (" + e.what() + ")");
  }
}

// A kSnapshot frame's sealed manifest text, checked and parsed.
Result<Manifest> ParseManifest(const Frame& f, const std::string& server,
                               const std::string& repo_id) {
  std::string text;
  Status s = ParseText(f.payload, kStringMax, "SNAPSHOT", &text);
  if (!s.ok()) return Malformed(f, server, s);
  const std::string what = "manifest from " + server;
  DP420_ASSIGN_OR_RETURN(Manifest m, Manifest::Parse(text, what, nullptr));
  if (!repo_id.empty() && m.repo_id != repo_id) {
    return Status::Corruption(what + ": snapshot " + m.snapshot_id +
                              " belongs to another repository (" + m.repo_id + ")");
  }
  return m;
}

// Connects to `address` and authenticates within options.connect_timeout.
Result<std::unique_ptr<Conn>> DialOne(const RemoteOptions& o, const std::string& address,
                                      const uint8_t key[kKeyBytes],
                                      const uint8_t server_id[kFingerprintBytes],
                                      uint8_t repo_id[16]) {
  auto deadline = Clock::now() + o.connect_timeout;
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, Conn::Connect(address, o.connect_timeout));
  auto left = std::max(std::chrono::ceil<Millis>(deadline - Clock::now()), Millis(1));
  DP420_RETURN_IF_ERROR(ClientHandshake(*conn, o.client, key, server_id, left, nullptr, repo_id));
  return conn;
}

}  // namespace

std::vector<std::string> SplitAddresses(const std::string& addresses) {
  std::vector<std::string> out;
  for (size_t at = 0;;) {
    size_t comma = addresses.find(',', at);
    out.push_back(addresses.substr(at, comma == std::string::npos ? comma : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

namespace {

// The paths to the server in turn, starting with the one that worked last
// (`*preferred`, updated): a path that fails gives way to the next, for a
// new connection as for a reconnect in the middle of a backup. Only a
// network failure moves on (a refused key does not get better elsewhere).
Result<std::unique_ptr<Conn>> Dial(const RemoteOptions& o, std::atomic<size_t>* preferred,
                                   const uint8_t key[kKeyBytes],
                                   const uint8_t server_id[kFingerprintBytes],
                                   uint8_t repo_id[16]) {
  const std::vector<std::string> paths = SplitAddresses(o.address);
  const size_t first = preferred->load() % paths.size();
  Status last;
  for (size_t k = 0; k < paths.size(); ++k) {
    const size_t i = (first + k) % paths.size();
    auto conn = DialOne(o, paths[i], key, server_id, repo_id);
    if (conn.ok()) {
      preferred->store(i);
      return conn;
    }
    last = conn.status();
    if (last.code() != Code::kNetwork) break;
  }
  return last;
}

}  // namespace

std::string DefaultCacheDir() {
  if (const char* dir = getenv("DP420_CACHE_DIR"); dir && *dir) return dir;
  if (geteuid() == 0) return "/var/cache/dp420";
  if (const char* xdg = getenv("XDG_CACHE_HOME"); xdg && *xdg == '/') {
    return std::string(xdg) + "/dp420";
  }
  if (const char* home = getenv("HOME"); home && *home) return std::string(home) + "/.cache/dp420";
  passwd pw;
  passwd* found = nullptr;
  char buf[4096];
  if (getpwuid_r(geteuid(), &pw, buf, sizeof(buf), &found) == 0 && found && found->pw_dir) {
    return std::string(found->pw_dir) + "/.cache/dp420";
  }
  return "/tmp/dp420-cache-" + std::to_string(geteuid());
}

Result<std::unique_ptr<RemoteRepository>> RemoteRepository::Connect(const RemoteOptions& options) {
  if (options.address.empty()) return Status::InvalidArgument("no server address given");
  for (const std::string& a : SplitAddresses(options.address)) {
    if (a.empty()) return Status::InvalidArgument("an empty address in '" + options.address + "'");
  }
  DP420_RETURN_IF_ERROR(CheckRange("heartbeat_interval", options.heartbeat_interval.count(),
                                   kMinHeartbeatMs, kMaxHeartbeatMs, "ms"));
  DP420_RETURN_IF_ERROR(CheckRange("heartbeat_misses", options.heartbeat_misses, 1, 100));
  // 0 ms: any measured offset refuses a backup (the tests' strictest setting).
  DP420_RETURN_IF_ERROR(CheckRange("max_clock_skew", options.max_clock_skew.count(), 0,
                                   kMaxClockSkewMs, "ms"));
  DP420_RETURN_IF_ERROR(CheckRange("retry_for", options.retry_for.count(), 0, kMaxRetryMs, "ms"));
  std::unique_ptr<RemoteRepository> r(new RemoteRepository());
  r->options_ = options;
  DP420_RETURN_IF_ERROR(ReadKeyFile(options.key_file, r->key_, r->server_id_));
  uint8_t id[16];
  DP420_ASSIGN_OR_RETURN(r->control_, Dial(options, &r->path_, r->key_, r->server_id_, id));
  r->repo_id_ = simd::ToHex(id, sizeof(id));
  DP420_ASSIGN_OR_RETURN(r->clock_,
                         MeasureClockOffset(*r->control_, kClockSamples, options.LossTimeout()));
  return r;
}

RemoteRepository::~RemoteRepository() = default;

Result<std::unique_ptr<Conn>> RemoteRepository::OpenConnection() const {
  uint8_t id[16];
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<Conn> conn, Dial(options_, &path_, key_, server_id_, id));
  if (!repo_id_.empty() && simd::ToHex(id, sizeof(id)) != repo_id_) {
    return Status::Network("server " + options_.address + " now serves repository " +
                           simd::ToHex(id, sizeof(id)) + ", not " + repo_id_);
  }
  return conn;
}

Status RemoteRepository::ReconnectControl() {
  control_.reset();
  auto start = Clock::now();
  unsigned attempts = 0;
  Status last;
  for (;;) {
    ++attempts;
    auto conn = OpenConnection();
    if (conn.ok()) {
      auto clock = MeasureClockOffset(*conn.value(), kClockSamples, options_.LossTimeout());
      if (clock.ok()) {
        clock_ = clock.value();
        control_ = std::move(conn).value();
        return Status::Ok();
      }
      last = clock.status();
    } else {
      last = conn.status();
    }
    // A refused key or another protocol version does not get better by retrying.
    if (last.code() != Code::kNetwork) return last;
    auto elapsed = Clock::now() - start;
    if (elapsed >= options_.retry_for) break;
    if (!PauseBeforeReconnect(attempts - 1, start + options_.retry_for,
                              [&] { return options_.control.Canceled(); })) {
      return Status::Canceled("reconnect canceled");
    }
  }
  return Status::Network("cannot reconnect to " + options_.address + ": " +
                         std::to_string(attempts) + " attempts in " +
                         Seconds(Clock::now() - start) + " failed; last error: " + last.message());
}

Status RemoteRepository::EnsureControl() {
  if (control_ && !control_->broken()) {
    // Between calls the server sends nothing; something to read means it
    // closed the connection (it drops agents silent past its loss timeout).
    pollfd p{control_->fd(), POLLIN, 0};
    if (poll(&p, 1, 0) == 0) return Status::Ok();
  }
  return ReconnectControl();
}

Status RemoteRepository::ListManifests(const std::string& volume, std::vector<Manifest>* out,
                                       std::vector<DamagedFile>* damaged) {
  if (!volume.empty() && !ValidRequestVolumeName(volume)) {
    return Status::InvalidArgument("invalid volume name '" + volume + "'");
  }
  DP420_RETURN_IF_ERROR(EnsureControl());
  JobControl none;
  CallControl control{options_.control, none};
  Reader reader(*control_, options_, control, "list");
  auto run = [&]() -> Status {
    PayloadWriter w;
    w.String(volume);
    DP420_RETURN_IF_ERROR(
        control_->Send(FrameType::kList, NextRequestId(), w.bytes(), options_.LossTimeout()));
    for (;;) {
      DP420_ASSIGN_OR_RETURN(Frame f, reader.Next());
      if (f.type() == FrameType::kSnapshot) {
        DP420_ASSIGN_OR_RETURN(Manifest m, ParseManifest(f, reader.server(), repo_id_));
        if (!volume.empty() && !AnswersRequest(m.volume, volume, options_.client)) {
          return Status::Network(reader.server() + " listed a manifest of volume '" + m.volume +
                                 "' for volume '" + volume + "'");
        }
        out->push_back(std::move(m));
        continue;
      }
      DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kDone, reader.server()));
      DP420_ASSIGN_OR_RETURN(Json done, DoneJson(f, reader.server()));
      try {
        for (const auto& d : done.at("damaged")) {
          DamagedFile file{d.at("path").get<std::string>(),
                           Status::Corruption(d.at("error").get<std::string>())};
          if (!damaged) return file.status.Prefix(reader.server());
          damaged->push_back(std::move(file));
        }
      } catch (const std::exception& e) {
        return Status::Network(reader.server() + " sent a malformed list summary (" + e.what() +
                               ")");
      }
      return Status::Ok();
    }
  };
  Status s = run();
  // A failed call leaves the answer half read (or the server closed after its
  // ERROR): the next call starts on a fresh connection.
  if (!s.ok()) control_.reset();
  return s;
}

namespace {

Status ParseProblemFrame(const Frame& f, const std::string& server, VerifyProblem* p) {
  Status s = ParseProblem(f.payload, p);
  if (!s.ok()) return Malformed(f, server, s);
  return Status::Ok();
}

Status ParseReport(const Json& j, const std::string& server, VerifyReport* r) {
  try {
    r->snapshots_checked = JsonUint<uint64_t>(j.at("snapshots_checked"));
    r->packs_checked = JsonUint<uint64_t>(j.at("packs_checked"));
    r->pages_checked = JsonUint<uint64_t>(j.at("pages_checked"));
    r->blocks_checked = JsonUint<uint64_t>(j.at("blocks_checked"));
    r->bytes_read = JsonUint<uint64_t>(j.at("bytes_read"));
    r->unreferenced_packs = JsonUint<uint64_t>(j.at("unreferenced_packs"));
    r->broken_snapshots = j.at("broken_snapshots").get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    return Status::Network(server + " sent a malformed verify report (" + e.what() + ")");
  }
  return Status::Ok();
}

}  // namespace

Result<VerifyReport> RemoteRepository::Verify(const VerifyOptions& options) {
  if (!options.volume.empty() && !ValidRequestVolumeName(options.volume)) {
    return Status::InvalidArgument("invalid volume name '" + options.volume + "'");
  }
  DP420_RETURN_IF_ERROR(EnsureControl());
  CallControl control{options.control, options_.control};
  Reader reader(*control_, options_, control, "verify");
  VerifyReport report;
  auto run = [&]() -> Status {
    PayloadWriter w;
    w.String(options.volume);
    w.String(options.snapshot);
    w.U8(options.read_data ? 1 : 0);
    DP420_RETURN_IF_ERROR(
        control_->Send(FrameType::kVerify, NextRequestId(), w.bytes(), options_.LossTimeout()));
    for (;;) {
      DP420_ASSIGN_OR_RETURN(Frame f, reader.Next());
      if (f.type() == FrameType::kProblem) {
        VerifyProblem p;
        DP420_RETURN_IF_ERROR(ParseProblemFrame(f, reader.server(), &p));
        report.problems.push_back(std::move(p));
        continue;
      }
      DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kDone, reader.server()));
      DP420_ASSIGN_OR_RETURN(Json done, DoneJson(f, reader.server()));
      return ParseReport(done, reader.server(), &report);
    }
  };
  Status s = run();
  if (s.ok() && options.check_history) s = CheckAnchors(options, &report);
  if (!s.ok()) {
    control_.reset();
    return s;
  }
  return report;
}

Result<Json> RemoteRepository::Admin(const std::string& op, const Json& args,
                                     const JobControl& job) {
  std::string text = args.dump();
  if (text.size() > kAdminArgsMax) {
    return Status::InvalidArgument(op + ": the request is larger than " +
                                   std::to_string(kAdminArgsMax) + " bytes");
  }
  DP420_RETURN_IF_ERROR(EnsureControl());
  CallControl control{job, options_.control};
  Reader reader(*control_, options_, control, op.c_str());
  auto run = [&]() -> Result<Json> {
    PayloadWriter w;
    w.String(op);
    w.String(text);
    DP420_RETURN_IF_ERROR(
        control_->Send(FrameType::kAdmin, NextRequestId(), w.bytes(), options_.LossTimeout()));
    DP420_ASSIGN_OR_RETURN(Frame f, reader.Next());
    DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kDone, reader.server()));
    return DoneJson(f, reader.server());
  };
  Result<Json> r = run();
  if (!r.ok()) control_.reset();
  return r;
}

Status RemoteRepository::CheckAnchors(const VerifyOptions& options, VerifyReport* report) {
  const std::string dir = options_.cache_dir.empty() ? DefaultCacheDir() : options_.cache_dir;
  std::vector<std::string> volumes;
  if (!options.volume.empty()) {
    volumes.push_back(options.volume);
  } else {
    constexpr std::string_view kSuffix = ".seen";
    for (const std::string& name : io::ListDir(dir + "/" + repo_id_)) {
      if (name.size() > kSuffix.size() && name.ends_with(kSuffix)) {
        volumes.push_back(name.substr(0, name.size() - kSuffix.size()));
      }
    }
  }
  for (const std::string& volume : volumes) {
    const std::string seen = SeenPath(IdCachePath(dir, repo_id_, volume));
    if (access(seen.c_str(), F_OK) != 0) continue;
    std::vector<Manifest> manifests;
    std::vector<DamagedFile> damaged;
    Status listed = ListManifests(volume, &manifests, &damaged);
    if (!listed.ok() && listed.code() != Code::kNotFound) return listed;
    const Manifest* newest = nullptr;
    for (const Manifest& m : manifests) {
      if (!newest || m.sequence > newest->sequence) newest = &m;
    }
    Status anchored = CheckNotRolledBack(seen, newest);
    if (!anchored.ok()) report->problems.push_back({seen, anchored.message(), {}});
  }
  return Status::Ok();
}

namespace {

// The agent side of RESTORE: checks each page's stored blocks against their
// SHA-256 and writes them with io_uring, zeroes the zero runs, and commits
// the target only when the volume checksum matches the manifest.
class RemoteRestore {
 public:
  RemoteRestore(Conn& conn, const RemoteOptions& ro, const RestoreOptions& o,
                const std::string& repo_id)
      : conn_(conn), ro_(ro), o_(o), repo_id_(repo_id), control_{o.control, ro.control},
        reader_(conn, ro, control_, "restore") {}
  Result<RestoreResult> Run(uint64_t request_id);

 private:
  struct WriteOp {
    io::IoOp op;
    unsigned buffer = 0;
  };

  Status Setup();
  Status OnPage(const Frame& f);
  Status OnData(const FrameHeader& h);
  Status CheckZeroDigests(uint64_t first, uint32_t count);
  Status CheckRun(uint64_t first, uint32_t n, const uint8_t* data, uint64_t bytes);
  Status Write(unsigned buffer, uint8_t* data, uint64_t offset, uint64_t len);
  Status WaitWrites(unsigned count);
  Status Finish(const Frame& done);
  uint64_t PageEnd() const { return page_first_ + page_count_; }
  void SkipZeros() {
    while (expect_ < PageEnd() && !kinds_[expect_ - page_first_]) ++expect_;
  }
  Status Protocol(const std::string& what) const {
    return Status::Network(reader_.server() + " " + what + " (restore of snapshot " +
                           m_.snapshot_id + ")");
  }

  Conn& conn_;
  const RemoteOptions& ro_;
  const RestoreOptions& o_;
  const std::string& repo_id_;
  CallControl control_;
  Reader reader_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_progress_{};

  Manifest m_;
  std::unique_ptr<RestoreTarget> target_;
  // The ops and buffers outlive the ring, whose destructor waits for the
  // ops still in flight.
  std::vector<WriteOp> ops_;
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::vector<io::IoOp*> done_;
  VolumeChecksum volume_sha_;  // as verify and a local restore compute it
  EntryChecker entries_;

  uint64_t pages_ = 0;
  uint64_t next_page_ = 0;
  uint64_t page_first_ = 0;  // first block of the current page
  uint32_t page_count_ = 0;
  uint64_t expect_ = 0;      // the next stored block whose data is due
  uint8_t kinds_[kPageEntries] = {};
  uint8_t digests_[kPageEntries][32] = {};

  uint64_t bytes_done_ = 0;
  uint64_t bytes_written_ = 0;
  uint64_t blocks_restored_ = 0;
  uint64_t blocks_zero_ = 0;
};

Status RemoteRestore::Setup() {
  pages_ = DivCeil(m_.blocks_total, kPageEntries);
  DP420_ASSIGN_OR_RETURN(target_, RestoreTarget::Open(o_.target_path, m_.volume_size, o_.force));
  size_t bytes = RoundUp(kDataOffset + kMaxPayloadBytes, kRecordAlign);
  DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = kRestoreBuffers * 2}));
  DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(bytes, kRestoreBuffers));
  (void)pool_.Register(*ring_);  // unregistered writes work too (RLIMIT_MEMLOCK)
  ops_.resize(kRestoreBuffers);
  return Status::Ok();
}

Result<RestoreResult> RemoteRestore::Run(uint64_t request_id) {
  PayloadWriter w;
  w.String(o_.volume);
  w.String(o_.snapshot);
  DP420_RETURN_IF_ERROR(conn_.Send(FrameType::kRestore, request_id, w.bytes(), ro_.LossTimeout()));
  DP420_ASSIGN_OR_RETURN(Frame first, reader_.Next());
  DP420_RETURN_IF_ERROR(ExpectFrame(first, FrameType::kSnapshot, reader_.server()));
  DP420_ASSIGN_OR_RETURN(m_, ParseManifest(first, reader_.server(), repo_id_));
  bool latest = o_.snapshot.empty() || o_.snapshot == "latest";
  if (!AnswersRequest(m_.volume, o_.volume, ro_.client) ||
      (!latest && m_.snapshot_id.compare(0, o_.snapshot.size(), o_.snapshot) != 0)) {
    return Protocol("sent snapshot " + m_.snapshot_id + " of volume '" + m_.volume +
                    "' for snapshot '" + o_.snapshot + "' of volume '" + o_.volume + "'");
  }
  if (latest) {
    // The newest this host committed to the volume: a server that now calls
    // an older snapshot "latest" went back (id_cache.h).
    std::string dir = ro_.cache_dir.empty() ? DefaultCacheDir() : ro_.cache_dir;
    DP420_RETURN_IF_ERROR(
        CheckNotRolledBack(SeenPath(IdCachePath(dir, repo_id_, o_.volume)), &m_));
  }
  DP420_RETURN_IF_ERROR(Setup());
  control_.Progress("restore", 0, m_.volume_size);
  for (;;) {
    DP420_ASSIGN_OR_RETURN(FrameHeader h, reader_.NextHeader());
    if (static_cast<FrameType>(h.type) == FrameType::kRestoreData) {
      DP420_RETURN_IF_ERROR(OnData(h));
      continue;
    }
    DP420_ASSIGN_OR_RETURN(Frame f, reader_.ReadPayload(h));
    if (f.type() == FrameType::kRestorePage) {
      DP420_RETURN_IF_ERROR(OnPage(f));
    } else if (f.type() == FrameType::kDone) {
      DP420_RETURN_IF_ERROR(Finish(f));
      break;
    } else {
      return ExpectFrame(f, FrameType::kRestorePage, reader_.server());  // an error
    }
  }
  RestoreResult r;
  r.manifest = m_;
  r.bytes_written = bytes_written_;
  r.blocks_restored = blocks_restored_;
  r.blocks_zero = blocks_zero_;
  r.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  control_.Progress("restore", m_.volume_size, m_.volume_size);
  return r;
}

Status RemoteRestore::OnPage(const Frame& f) {
  if (expect_ < PageEnd()) return Protocol("skipped the data of block " + std::to_string(expect_));
  auto msg = std::make_unique<PageMsg>();
  ParsePage(f.payload, 32, "RESTORE_PAGE", msg.get());
  uint64_t page = msg->page;
  uint32_t count = msg->count;
  if (!msg->head_ok || page != next_page_ || page >= pages_) {
    return Protocol("sent page " + std::to_string(page) + " where page " +
                    std::to_string(next_page_) + " was due");
  }
  uint64_t want = std::min<uint64_t>(kPageEntries, m_.blocks_total - page * kPageEntries);
  if (count != want) return Protocol("sent a page " + std::to_string(page) + " of wrong size");
  for (uint32_t i = 0; i < msg->entries; ++i) {
    kinds_[i] = msg->kind[i];
    std::memcpy(digests_[i], msg->bytes[i].data(), 32);
    if (kinds_[i] > 1) return Protocol("sent an unknown block kind");
  }
  if (!msg->finish.ok()) return Malformed(f, reader_.server(), msg->finish);
  DP420_RETURN_IF_ERROR(CheckZeroDigests(page * kPageEntries, count));
  page_first_ = page * kPageEntries;
  page_count_ = count;
  ++next_page_;
  // The volume checksum commits to every block's digest, zero blocks included.
  for (uint32_t i = 0; i < count; ++i) volume_sha_.AddDigest(digests_[i]);
  for (uint32_t i = 0; i < count;) {
    if (kinds_[i]) {
      ++i;
      continue;
    }
    uint32_t end = i;
    uint64_t len = 0;
    while (end < count && !kinds_[end]) len += m_.BlockLen(page_first_ + end++);
    DP420_RETURN_IF_ERROR(target_->ZeroRange((page_first_ + i) * m_.block_size, len));
    blocks_zero_ += end - i;
    bytes_done_ += len;
    i = end;
  }
  expect_ = page_first_;
  SkipZeros();
  auto now = Clock::now();
  if (now - last_progress_ >= Millis(100)) {
    last_progress_ = now;
    control_.Progress("restore", bytes_done_, m_.volume_size);
  }
  return Status::Ok();
}

// A zero block's digest must be that of its length of zeros, as verify
// requires of its table entry (table_check.h): otherwise the manifest and the
// table disagree on the block's size, and the checksum could not tell.
Status RemoteRestore::CheckZeroDigests(uint64_t first, uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) {
    if (kinds_[i]) continue;
    const uint8_t* want = entries_.ZeroDigest(m_.BlockLen(first + i));
    if (std::memcmp(digests_[i], want, 32) != 0) {
      return Status::Corruption("snapshot " + m_.snapshot_id + " from " + reader_.server() +
                                " is damaged: entry of block " + std::to_string(first + i) +
                                " is a zero block with a wrong SHA-256");
    }
  }
  return Status::Ok();
}

Status RemoteRestore::CheckRun(uint64_t first, uint32_t n, const uint8_t* data, uint64_t bytes) {
  if (n == 0 || first != expect_ || first + n > PageEnd()) {
    return Protocol("sent blocks " + std::to_string(first) + "+" + std::to_string(n) +
                    " where block " + std::to_string(expect_) + " was due");
  }
  uint64_t want = 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (!kinds_[first + i - page_first_]) return Protocol("sent data for a zero block");
    want += m_.BlockLen(first + i);
  }
  if (want != bytes) return Protocol("sent a RESTORE_DATA frame of the wrong length");
  uint64_t off = 0;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t block = first + i;
    uint32_t len = m_.BlockLen(block);
    uint8_t digest[32];
    simd::Sha256(data + off, len, digest);
    if (std::memcmp(digest, digests_[block - page_first_], 32) != 0) {
      return Status::Corruption("block " + std::to_string(block) + " of snapshot " +
                                m_.snapshot_id + " from " + reader_.server() +
                                " fails its SHA-256");
    }
    off += len;
  }
  return Status::Ok();
}

Status RemoteRestore::OnData(const FrameHeader& h) {
  if (Conn::PlainLen(h) < kDataPrefix) return Protocol("sent a short RESTORE_DATA frame");
  std::optional<unsigned> buffer = pool_.Acquire();
  while (!buffer) {
    DP420_RETURN_IF_ERROR(WaitWrites(1));
    buffer = pool_.Acquire();
  }
  uint8_t* data = pool_.data(*buffer) + kDataOffset;
  uint8_t* payload = data - kDataPrefix;
  // The frame's tag lands after its blocks: the buffer has room for it.
  Status s = conn_.RecvExact(payload, h.payload_len, ro_.LossTimeout());
  if (s.ok()) s = conn_.OpenInPlace(h, payload);
  uint64_t first = 0;
  uint32_t n = 0;
  std::memcpy(&first, payload, 8);
  std::memcpy(&n, payload + 8, 4);
  uint64_t bytes = Conn::PlainLen(h) - kDataPrefix;
  if (s.ok()) s = CheckRun(first, n, data, bytes);
  if (!s.ok()) {
    pool_.Release(*buffer);
    return s;
  }
  expect_ = first + n;
  SkipZeros();
  blocks_restored_ += n;
  bytes_done_ += bytes;
  return Write(*buffer, data, first * m_.block_size, bytes);
}

Status RemoteRestore::Write(unsigned buffer, uint8_t* data, uint64_t offset, uint64_t len) {
  uint32_t align = std::max<uint32_t>(target_->align(), 1);
  bool direct = offset % align == 0 && len % align == 0 &&
                reinterpret_cast<uintptr_t>(data) % align == 0;
  WriteOp& w = ops_[buffer];
  w = WriteOp{};
  w.buffer = buffer;
  w.op.kind = io::IoOp::kWrite;
  w.op.fd = direct ? target_->direct_fd() : target_->buffered_fd();
  w.op.buf = data;
  w.op.buf_index = pool_.registered() ? int(buffer) : -1;
  w.op.len = uint32_t(len);
  w.op.offset = offset;
  w.op.owner = &w;
  ring_->Queue(&w.op);
  return ring_->Submit();
}

Status RemoteRestore::WaitWrites(unsigned count) {
  Status first;
  while (count > 0 && ring_->in_flight() > 0) {
    done_.clear();
    DP420_RETURN_IF_ERROR(ring_->Wait(1, &done_));
    for (io::IoOp* op : done_) {
      auto* w = static_cast<WriteOp*>(op->owner);
      if (op->result != 0 && first.ok()) first = io::IoOpStatus(*op, o_.target_path);
      if (op->result == 0) {
        bytes_written_ += op->len;
        CrashPoint("restore-writing");
      }
      pool_.Release(w->buffer);
      if (count > 0) --count;
    }
  }
  return first;
}

Status RemoteRestore::Finish(const Frame& done) {
  DP420_RETURN_IF_ERROR(DoneJson(done, reader_.server()).status());
  if (next_page_ != pages_ || expect_ < PageEnd()) {
    return Protocol("ended the restore after " + std::to_string(next_page_) + " of " +
                    std::to_string(pages_) + " pages");
  }
  DP420_RETURN_IF_ERROR(WaitWrites(ring_->in_flight()));
  if (!ChecksumMatches(m_, volume_sha_.FinishHex())) {
    return Status::Corruption("snapshot " + m_.snapshot_id + " from " + reader_.server() +
                              ": the block digests do not match the manifest's checksum_sha256");
  }
  if (control_.Canceled()) return Status::Canceled("restore canceled");
  return target_->Commit();
}

}  // namespace

Result<RestoreResult> RemoteRepository::Restore(const RestoreOptions& options) {
  if (!ValidRequestVolumeName(options.volume)) {
    return Status::InvalidArgument("invalid volume name '" + options.volume + "'");
  }
  if (options.target_path.empty() || options.target_path[0] != '/') {
    return Status::InvalidArgument("restore target '" + options.target_path +
                                   "' must be an absolute path");
  }
  if (options.read_through_bytes > 0) {
    return Status::InvalidArgument(
        "read_through applies to a local repository; the server reads the packs of a "
        "remote one");
  }
  DP420_RETURN_IF_ERROR(EnsureControl());
  Result<RestoreResult> result = Status::Internal("restore did not run");
  {
    RemoteRestore restore(*control_, options_, options, repo_id_);
    result = restore.Run(NextRequestId());
  }
  if (!result.ok()) control_.reset();
  return result;
}

}  // namespace dp420::net
