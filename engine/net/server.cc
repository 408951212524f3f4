#include "engine/net/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>

#include "engine/core/group_repo.h"
#include "engine/core/table.h"
#include "engine/core/text.h"
#include "engine/core/verify.h"
#include "engine/net/payloads.h"
#include "engine/net/request.h"
#include "engine/net/retention_schedule.h"
#include "engine/net/admin.h"
#include "engine/net/group_serve.h"
#include "engine/net/store.h"
#include "engine/net/volumes.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"

namespace dp420::net {

std::string Dump(const nlohmann::ordered_json& j) {
  // Peer-supplied strings may hold invalid UTF-8: replaced, never thrown.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

// Keeps the connection alive while `done` is false: PINGs after a silent
// heartbeat interval, PONGs (and PINGs) from the agent read and answered.
// kNetwork when the agent stays silent for the loss timeout or breaks the
// protocol.
Status KeepAliveUntil(Request& rq, const std::atomic<bool>& done) {
  const ServerOptions& o = rq.ctx.options;
  rq.liveness.Heard();
  // Wake often enough to PING on time, and to see the worker finish.
  int slice_ms = int(std::clamp<int64_t>(o.heartbeat_interval.count() / 2, 1, 50));
  while (!done.load()) {
    pollfd p{rq.conn.fd(), POLLIN, 0};
    int r = poll(&p, 1, slice_ms);
    if (r < 0 && errno != EINTR) return PosixError("poll " + rq.conn.peer(), errno);
    if (r > 0) {
      DP420_ASSIGN_OR_RETURN(Frame f, rq.conn.Recv(o.LossTimeout()));
      rq.liveness.Heard();
      if (f.type() == FrameType::kPing) {
        DP420_RETURN_IF_ERROR(AnswerPing(rq.conn, f, o.LossTimeout()));
      } else if (f.type() != FrameType::kPong) {
        return Status::Network("agent sent " + FrameTypeName(f.header.type) +
                               " while its request was running");
      }
    }
    if (rq.liveness.Lost()) {
      return Status::Network("agent " + rq.conn.peer() + " stopped answering heartbeats");
    }
    DP420_RETURN_IF_ERROR(rq.Tick());
  }
  return Status::Ok();
}

namespace {

using Clock = std::chrono::steady_clock;
using OJson = nlohmann::ordered_json;

constexpr Millis kAcceptPoll{100};         // how often the accept loop checks *stop
constexpr Millis kErrorSendTimeout{1000};  // best effort: ERROR before closing
constexpr uint64_t kListenId = 0;          // epoll key of the listening socket
constexpr size_t kEpollBatch = 64;         // events per wait, accepts per turn
constexpr Millis kRevocationPoll{100};     // how often the clients file is checked for changes

std::string UtcNowMillis() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[48];
  size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03ldZ", ts.tv_nsec / 1000000);
  return buf;
}

// A text-log value: bare when it is one simple token, else JSON-quoted.
std::string TextValue(const OJson& v) {
  if (!v.is_string()) return Dump(v);
  const std::string& s = v.get_ref<const std::string&>();
  bool bare = !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return c > 0x20 && c < 0x7f && c != '"' && c != '=' && c != '\\';
  });
  return bare ? s : Dump(v);
}

std::string PeerName(const sockaddr_storage& addr) {
  char host[NI_MAXHOST];
  char port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), sizeof(addr), host, sizeof(host),
                  port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown-peer";
  }
  std::string name;
  bool v6 = addr.ss_family == AF_INET6;
  name.append(v6 ? "[" : "").append(host).append(v6 ? "]:" : ":").append(port);
  return name;
}

std::string JoinComma(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

Status Malformed(const std::string& what, const Status& s) {
  return Status::Network("malformed " + what + " request: " + s.message());
}

// ---- LIST ----

Status HandleList(Request& rq) {
  std::string volume;
  if (Status s = ParseList(rq.frame.payload, &volume); !s.ok()) return Malformed("LIST", s);
  DP420_RETURN_IF_ERROR(CheckTextField("volume", volume, kRequestStringMax));
  const Repository& repo = rq.ctx.repo;
  std::vector<VisibleVolume> volumes;
  if (volume.empty()) {
    DP420_RETURN_IF_ERROR(VisibleVolumes(repo, rq.who, &volumes));
  } else {
    DP420_ASSIGN_OR_RETURN(ResolvedVolume v, ResolveVolume(repo, rq.who, volume));
    volumes.push_back({v.repo, v.shown});
  }
  std::vector<DamagedFile> damaged;
  for (const auto& vol : volumes) {
    std::vector<Manifest> manifests;
    DP420_RETURN_IF_ERROR(repo.ListManifests(vol.repo, &manifests, &damaged));
    for (const auto& m : manifests) {
      std::string rel = "snapshots/" + m.volume + "/" + m.file_name;
      auto text = io::ReadFile(repo.path() + "/" + rel);
      if (!text.ok()) {
        damaged.push_back({rel, text.status()});
        continue;
      }
      PayloadWriter w;
      w.String(text.value());
      if (w.bytes().size() > kMaxPayloadBytes) {
        damaged.push_back({rel, Status::Corruption(rel + " is too large to send")});
        continue;
      }
      DP420_RETURN_IF_ERROR(rq.Send(FrameType::kSnapshot, w));
    }
  }
  OJson list = OJson::array();
  for (const auto& d : damaged) list.push_back({{"path", d.path}, {"error", d.status.message()}});
  return rq.Done({{"damaged", list}});
}

// ---- VERIFY ----

void Merge(VerifyReport& total, VerifyReport&& r) {
  total.snapshots_checked += r.snapshots_checked;
  total.packs_checked += r.packs_checked;
  total.pages_checked += r.pages_checked;
  total.blocks_checked += r.blocks_checked;
  total.bytes_read += r.bytes_read;
  total.unreferenced_packs += r.unreferenced_packs;
  for (auto& p : r.problems) total.problems.push_back(std::move(p));
  total.broken_snapshots.insert(total.broken_snapshots.end(), r.broken_snapshots.begin(),
                                r.broken_snapshots.end());
  std::sort(total.broken_snapshots.begin(), total.broken_snapshots.end());
  total.broken_snapshots.erase(
      std::unique(total.broken_snapshots.begin(), total.broken_snapshots.end()),
      total.broken_snapshots.end());
}

OJson ReportJson(const VerifyReport& r) {
  return {{"snapshots_checked", r.snapshots_checked}, {"packs_checked", r.packs_checked},
          {"pages_checked", r.pages_checked},         {"blocks_checked", r.blocks_checked},
          {"bytes_read", r.bytes_read},               {"unreferenced_packs", r.unreferenced_packs},
          {"broken_snapshots", r.broken_snapshots}};
}

Status HandleVerify(Request& rq) {
  VerifyRequestMsg req;
  if (Status s = ParseVerifyRequest(rq.frame.payload, &req); !s.ok()) return Malformed("VERIFY", s);
  const std::string& volume = req.volume;
  const std::string& snapshot = req.snapshot;

  DP420_RETURN_IF_ERROR(CheckTextField("volume", volume, kRequestStringMax));
  DP420_RETURN_IF_ERROR(CheckTextField("snapshot", snapshot, kRequestStringMax));
  const Repository& repo = rq.ctx.repo;
  if (!snapshot.empty() && volume.empty()) {
    return Status::InvalidArgument("snapshot '" + snapshot + "' needs its volume");
  }
  std::vector<std::string> volumes{""};  // an admin's "": the whole repository
  if (!volume.empty()) {
    DP420_ASSIGN_OR_RETURN(ResolvedVolume v, ResolveVolume(repo, rq.who, volume));
    if (!v.exists) return Status::NotFound("volume '" + v.shown + "' has no snapshots");
    volumes = {v.repo};
  } else if (rq.who.role != "admin") {
    // An append client verifies its own volumes only: it never learns of
    // other clients' objects, and unreferenced packs are not counted.
    std::vector<VisibleVolume> visible;
    DP420_RETURN_IF_ERROR(VisibleVolumes(repo, rq.who, &visible));
    volumes.clear();
    for (const auto& v : visible) volumes.push_back(v.repo);
  }
  std::atomic<bool> cancel{false};
  Status result;
  VerifyReport total;
  Status s = RunKeptAlive(rq, cancel, [&] {
    for (const auto& vol : volumes) {
      VerifyOptions o;
      o.volume = vol;
      o.snapshot = snapshot;
      o.read_data = req.read_data;
      o.control.cancel = &cancel;
      auto one = RunGuarded("verify", [&] { return RunVerify(repo, o); });
      if (!one.ok()) {
        result = one.status();
        break;
      }
      Merge(total, std::move(one).value());
    }
  });
  DP420_RETURN_IF_ERROR(s);
  DP420_RETURN_IF_ERROR(result);
  for (const auto& p : total.problems) {
    PayloadWriter w;
    w.String(p.object);
    w.String(p.message.substr(0, 4096));
    w.String(JoinComma(p.snapshots));
    DP420_RETURN_IF_ERROR(rq.Send(FrameType::kProblem, w));
  }
  return rq.Done(ReportJson(total));
}

// ---- RESTORE ----

struct RestoreStream {
  Request& rq;
  const Manifest& m;
  PackCache packs;
  io::BufferPool buffer;     // one buffer: payload prefix, then block data 4 KiB aligned
  uint32_t run_max = 0;      // blocks per RESTORE_DATA frame
  static constexpr size_t kDataOffset = 4096;
  static constexpr size_t kPrefixBytes = 12;  // u64 first_block, u32 nblocks

  Status Setup() {
    run_max = uint32_t((kMaxPlainBytes - kPrefixBytes) / m.block_size);
    DP420_ASSERT(run_max >= 1);
    // Room for the frame's tag after the blocks: sealed in place, no copy.
    size_t bytes =
        RoundUp(kDataOffset + uint64_t(run_max) * m.block_size + kTagBytes, kRecordAlign);
    DP420_ASSIGN_OR_RETURN(buffer, io::BufferPool::Create(bytes, 1));
    return Status::Ok();
  }

  Status SendPage(uint64_t page, const Entry* entries, uint32_t count) {
    PayloadWriter w;
    w.U64(page);
    w.U32(count);
    for (uint32_t i = 0; i < count; ++i) {
      w.U8(entries[i].ref.stored() ? 1 : 0);
      w.Bytes({entries[i].ref.sha256, 32});
    }
    return rq.Send(FrameType::kRestorePage, w);
  }

  // Reads blocks [first, first+n) (all stored) into the buffer and sends them.
  Status SendRun(uint64_t first, const Entry* entries, uint32_t n) {
    uint8_t* base = buffer.data(0);
    uint8_t* data = base + kDataOffset;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; ++i) {
      const ObjRef& ref = entries[i].ref;
      uint64_t block = first + i;
      uint32_t len = m.BlockLen(block);
      if (ref.flags & (kObjTableLeaf | kObjTableInner)) {
        return Status::Corruption("snapshot " + m.snapshot_id + ": block " +
                                  std::to_string(block) + " has a table entry of the wrong kind");
      }
      Status s = packs.ReadObject(ref, {data + bytes, len});
      if (!s.ok()) {
        return Status::Corruption("snapshot " + m.snapshot_id + " is damaged: block " +
                                  std::to_string(block) + ": " + s.message());
      }
      bytes += len;
      DP420_RETURN_IF_ERROR(rq.Tick());
    }
    uint8_t* prefix = data - kPrefixBytes;
    std::memcpy(prefix, &first, 8);
    std::memcpy(prefix + 8, &n, 4);
    rq.liveness.Sent();
    size_t capacity = buffer.buffer_bytes() - (kDataOffset - kPrefixBytes);
    return rq.conn.SendInPlace(FrameType::kRestoreData, rq.id(), prefix, kPrefixBytes + bytes,
                               capacity, rq.timeout());
  }

  Status SendLeaf(uint64_t page, const Entry* entries, uint32_t count) {
    DP420_RETURN_IF_ERROR(SendPage(page, entries, count));
    uint64_t first_block = page * kPageEntries;
    uint32_t i = 0;
    while (i < count) {
      if (!entries[i].ref.stored()) {
        ++i;
        continue;
      }
      uint32_t end = i;
      while (end < count && end - i < run_max && entries[end].ref.stored()) ++end;
      DP420_RETURN_IF_ERROR(SendRun(first_block + i, entries + i, end - i));
      i = end;
    }
    return Status::Ok();
  }
};

Status HandleRestore(Request& rq) {
  std::string volume, snapshot;
  if (Status s = ParseRestoreRequest(rq.frame.payload, &volume, &snapshot); !s.ok()) {
    return Malformed("RESTORE", s);
  }
  DP420_RETURN_IF_ERROR(CheckTextField("volume", volume, kRequestStringMax));
  DP420_RETURN_IF_ERROR(CheckTextField("snapshot", snapshot, kRequestStringMax));
  if (volume.empty()) return Status::InvalidArgument("restore needs a volume");
  const Repository& repo = rq.ctx.repo;
  DP420_ASSIGN_OR_RETURN(ResolvedVolume v, ResolveVolume(repo, rq.who, volume));
  if (!v.exists) return Status::NotFound("volume '" + v.shown + "' has no snapshots");
  DP420_ASSIGN_OR_RETURN(Manifest m, repo.FindSnapshot(v.repo, snapshot.empty() ? "latest" : snapshot));
  std::string rel = "snapshots/" + m.volume + "/" + m.file_name;
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(repo.path() + "/" + rel));
  PayloadWriter w;
  w.String(text);
  DP420_RETURN_IF_ERROR(rq.Send(FrameType::kSnapshot, w));

  // Shared: prune deletes no pack or relocation file while this restore runs.
  DP420_ASSIGN_OR_RETURN(VolumeLock repo_lock, repo.LockRepository(false));
  RestoreStream stream{rq, m, PackCache(repo)};
  DP420_RETURN_IF_ERROR(stream.Setup());
  TableReader table(repo, m);
  uint64_t pages = DivCeil(m.blocks_total, kPageEntries);
  for (uint64_t p = 0; p < pages; ++p) {
    uint32_t count = 0;
    auto entries = table.Leaf(p, &count);
    if (!entries.ok()) {
      return Status::Corruption("snapshot " + m.snapshot_id + " is damaged: " +
                                entries.status().message());
    }
    DP420_RETURN_IF_ERROR(stream.SendLeaf(p, entries.value(), count));
  }
  return rq.Done(OJson::object());
}

// ---- Before authentication ----

// Warnings of the pre-authentication path, at most one line per event and
// second: a flood must not flood the log. The lines held back are counted in
// the next line's "suppressed".
class WarnLimiter {
 public:
  explicit WarnLimiter(Logger& log) : log_(log) {}
  void Warn(const char* event, OJson fields) {
    Entry& e = entries_[event];
    auto now = Clock::now();
    if (e.logged && now - e.last < std::chrono::seconds(1)) {
      ++e.suppressed;
      return;
    }
    if (e.suppressed > 0) fields["suppressed"] = e.suppressed;
    log_.Warn(event, fields);
    e = Entry{true, now, 0};
  }

 private:
  struct Entry {
    bool logged = false;
    Clock::time_point last{};
    uint64_t suppressed = 0;
  };
  Logger& log_;
  std::map<std::string, Entry> entries_;
};

// The IP address of a peer: the key of the per-source limit.
std::string SourceOf(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "unknown";
  if (addr.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr, host,
              sizeof(host));
  } else if (addr.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr, host,
              sizeof(host));
  }
  return host;
}

// One unauthenticated connection: its socket and handshake state, a few KiB.
struct Pending {
  uint64_t id = 0;  // epoll's key for it (0 is the listening socket)
  std::string source;
  Clock::time_point deadline;
  std::shared_ptr<const ClientRegistry> clients;  // as of the accept
  std::unique_ptr<Conn> conn;
  std::unique_ptr<ServerHandshakeSteps> steps;
};

// ---- The server ----

struct Session {
  uint64_t id = 0;
  std::unique_ptr<Conn> conn;
  std::thread thread;
  std::atomic<bool> busy{false};
  std::atomic<bool> finished{false};
  std::string client;  // set before the thread starts (sessions_mu_)
  // Who authenticated (guarded by Server::sessions_mu_); empty client before.
  SessionInfo who;
  std::atomic<bool> revoked{false};
};

class Server {
 public:
  explicit Server(const ServerOptions& o) : o_(o), log_(o.json_log) {}
  Status Run();

 private:
  Status LoadClients();
  std::shared_ptr<const ClientRegistry> Clients();
  Status Listen();
  Status AcceptLoop();
  int WaitMillis() const;
  void AcceptReady();
  void Admit(int fd, const sockaddr_storage& addr);
  void PendingReady(uint64_t id);
  void ExpirePending();
  std::unique_ptr<Conn> TakePending(std::list<Pending>::iterator it);
  void ClosePending(std::list<Pending>::iterator it);
  void Promote(std::list<Pending>::iterator it);
  void StartSession(std::unique_ptr<Conn> conn, const ClientKey& key);
  Status SessionRoom(const ClientKey& key);
  void Serve(Session& s, const SessionInfo& who);
  void RequestLoop(ServerContext& ctx, Session& s, const SessionInfo& who);
  void Fail(Session& s, const SessionInfo& who, const char* op, const Status& status,
            bool threw = false);
  void SessionFailed(Session& s, const char* reason);
  void Reap(bool all);
  void Drain();
  bool Authenticated(Session& s, const SessionInfo& who);
  void WatchClients();
  void RunRetention();
  void Revoke(const ClientRegistry& clients);
  bool Stopping() const { return o_.stop && o_.stop->load(); }
  Status RecoverGroupsAtStart();

  const ServerOptions& o_;
  Logger log_;
  WarnLimiter warn_{log_};  // the accept loop's
  std::unique_ptr<Repository> repo_;
  BackupRegistry backups_;
  std::unique_ptr<GroupService> groups_;
  std::atomic<bool> stopping_{false};
  std::unique_ptr<ServerContext> ctx_;
  int listen_fd_ = -1;
  uint64_t next_session_ = 1;

  // The accept loop's alone.
  int epoll_fd_ = -1;
  uint64_t next_pending_ = 1;
  std::list<Pending> pending_;  // in accept order, so in deadline order
  std::unordered_map<uint64_t, std::list<Pending>::iterator> pending_by_id_;
  std::unordered_map<std::string, size_t> pending_per_source_;

  std::mutex clients_mu_;
  std::shared_ptr<const ClientRegistry> clients_;
  struct stat clients_stat_ {};
  bool reload_failed_ = false;  // the file as of failed_stat_ did not load
  struct stat failed_stat_ {};

  std::mutex sessions_mu_;
  std::list<std::unique_ptr<Session>> sessions_;
  std::thread watcher_;  // WatchClients
  std::thread retention_;  // RunRetention
  std::unique_ptr<RetentionSchedule> schedule_;
};

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

Status Server::LoadClients() {
  struct stat st {};
  if (stat(o_.clients_file.c_str(), &st) != 0) return PosixError(o_.clients_file, errno);
  DP420_ASSIGN_OR_RETURN(ClientRegistry reg, ClientRegistry::Load(o_.clients_file));
  std::shared_ptr<const ClientRegistry> previous;
  {
    std::lock_guard lock(clients_mu_);
    previous = clients_;
  }
  if (reg.identity() == nullptr) {
    if (previous) {
      return Status::Corruption(o_.clients_file + " lost the server's identity (kept the "
                                "previous clients)");
    }
    // A clients file from before server identities: this server gets one now
    // (read again under the writers' lock, so that no change is lost).
    DP420_ASSIGN_OR_RETURN(ClientsFileLock locked, ClientsFileLock::Acquire(o_.clients_file));
    DP420_ASSIGN_OR_RETURN(reg, ClientRegistry::Load(o_.clients_file));
    DP420_RETURN_IF_ERROR(reg.EnsureIdentity());
    DP420_RETURN_IF_ERROR(reg.Save(o_.clients_file));
    if (stat(o_.clients_file.c_str(), &st) != 0) return PosixError(o_.clients_file, errno);
  } else if (previous && std::memcmp(reg.identity()->public_key(),
                                     previous->identity()->public_key(), kIdentityBytes) != 0) {
    return Status::Corruption(o_.clients_file + " changed the server's identity while it "
                              "runs (kept the previous clients; restart to change it)");
  }
  std::lock_guard lock(clients_mu_);
  clients_ = std::make_shared<const ClientRegistry>(std::move(reg));
  clients_stat_ = st;
  return Status::Ok();
}

// The clients file as of now: reloaded when it changed, so client-add and
// client-remove take effect without a restart. A damaged file keeps the
// previous registry (logged).
std::shared_ptr<const ClientRegistry> Server::Clients() {
  struct stat st {};
  bool changed = stat(o_.clients_file.c_str(), &st) != 0;
  if (changed) st = {};  // missing: compared as all zeros
  {
    std::lock_guard lock(clients_mu_);
    if (!changed) changed = !SameFile(st, clients_stat_);
    if (!changed) return clients_;
    // A file that failed to load is tried again only once it changes again.
    if (reload_failed_ && SameFile(st, failed_stat_)) return clients_;
  }
  Status s = LoadClients();
  std::lock_guard lock(clients_mu_);
  reload_failed_ = !s.ok();
  if (!s.ok()) {
    failed_stat_ = st;
    log_.Warn("clients_reload_failed", {{"error", s.ToString()}});
  }
  return clients_;
}

Status Server::Listen() {
  std::string host, port;
  DP420_RETURN_IF_ERROR(ParseHostPort(o_.listen, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* list = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) return Status::InvalidArgument("cannot resolve " + o_.listen + ": " + gai_strerror(rc));
  Status error = Status::IOError("cannot listen on " + o_.listen + ": no address");
  for (addrinfo* ai = list; ai && listen_fd_ < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = PosixError("cannot listen on " + o_.listen, errno);
      continue;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      error = PosixError("cannot listen on " + o_.listen, errno);
      close(fd);
      continue;
    }
    listen_fd_ = fd;
  }
  freeaddrinfo(list);
  if (listen_fd_ < 0) return error;
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  uint16_t bound = 0;
  if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    bound = addr.ss_family == AF_INET6
                ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }
  log_.Info("listening", {{"address", o_.listen}, {"port", bound}, {"repo", repo_->path()},
                         {"server_id", Clients()->identity()->FingerprintHex()}});
  if (o_.on_listening) o_.on_listening(bound);
  return Status::Ok();
}

// One thread runs accept and every handshake: epoll over the listening
// socket and the unauthenticated connections, waking at least every
// kAcceptPoll to see *stop and the deadlines.
Status Server::AcceptLoop() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return PosixError("epoll_create1", errno);
  int flags = fcntl(listen_fd_, F_GETFL);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  Status status;
  if (flags < 0 || fcntl(listen_fd_, F_SETFL, flags | O_NONBLOCK) != 0 ||
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) {
    status = PosixError("cannot watch the listening socket", errno);
  }
  epoll_event events[kEpollBatch];
  while (status.ok() && !Stopping()) {
    int n = epoll_wait(epoll_fd_, events, kEpollBatch, WaitMillis());
    if (n < 0 && errno != EINTR) {
      status = PosixError("epoll_wait", errno);
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kListenId) {
        AcceptReady();
      } else {
        PendingReady(events[i].data.u64);
      }
    }
    ExpirePending();
    Reap(false);
  }
  while (!pending_.empty()) ClosePending(pending_.begin());
  close(epoll_fd_);
  epoll_fd_ = -1;
  close(listen_fd_);
  listen_fd_ = -1;
  return status;
}

// Until the first pending deadline, at most kAcceptPoll.
int Server::WaitMillis() const {
  Millis wait = kAcceptPoll;
  if (!pending_.empty()) {
    auto left = std::chrono::ceil<Millis>(pending_.front().deadline - Clock::now());
    wait = std::clamp(left, Millis(0), kAcceptPoll);
  }
  return int(wait.count());
}

// Accepts what is queued, a batch per turn so handshakes keep moving.
void Server::AcceptReady() {
  for (size_t i = 0; i < kEpollBatch; ++i) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      Admit(fd, addr);
      continue;
    }
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return;
    if (err == EINTR || err == ECONNABORTED) continue;
    warn_.Warn("accept_failed", {{"error", std::strerror(err)}});
    // Out of descriptors or memory: the queue stays readable, so pause
    // instead of spinning on it.
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      std::this_thread::sleep_for(kAcceptPoll);
    }
    return;
  }
}

// A new unauthenticated connection. Over a limit, the oldest one of its
// source (else the oldest of all) is closed to make room: refusing the new
// one instead would let idle sockets keep every agent out.
void Server::Admit(int fd, const sockaddr_storage& addr) {
  std::string source = SourceOf(addr);
  std::string peer = PeerName(addr);
  if (pending_per_source_[source] >= o_.max_pending_per_source) {
    auto oldest = std::find_if(pending_.begin(), pending_.end(),
                               [&](const Pending& p) { return p.source == source; });
    DP420_ASSERT(oldest != pending_.end());
    warn_.Warn("preauth_limit", {{"peer", oldest->conn->peer()}, {"limit", "per_source"},
                                 {"max", o_.max_pending_per_source}});
    ClosePending(oldest);
  } else if (pending_.size() >= o_.max_pending) {
    warn_.Warn("preauth_limit", {{"peer", pending_.front().conn->peer()}, {"limit", "pending"},
                                 {"max", o_.max_pending}});
    ClosePending(pending_.begin());
  }
  Pending& p = pending_.emplace_back();
  auto it = std::prev(pending_.end());
  p.id = next_pending_++;
  p.source = std::move(source);
  p.deadline = Clock::now() + o_.handshake_timeout;
  p.clients = Clients();
  p.conn = std::make_unique<Conn>(fd, std::move(peer));
  p.steps = std::make_unique<ServerHandshakeSteps>(*p.conn, *p.clients, repo_->repo_id());
  ++pending_per_source_[p.source];
  pending_by_id_[p.id] = it;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = p.id;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    warn_.Warn("accept_failed", {{"peer", p.conn->peer()}, {"error", std::strerror(errno)}});
    ClosePending(it);
  }
  DP420_ASSERT(pending_.size() <= o_.max_pending);
}

// Takes an unauthenticated connection out of the loop; returns its Conn.
std::unique_ptr<Conn> Server::TakePending(std::list<Pending>::iterator it) {
  (void)epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->conn->fd(), nullptr);
  auto count = pending_per_source_.find(it->source);
  DP420_ASSERT(count != pending_per_source_.end() && count->second > 0);
  if (--count->second == 0) pending_per_source_.erase(count);
  pending_by_id_.erase(it->id);
  it->steps.reset();  // refers to the Conn
  std::unique_ptr<Conn> conn = std::move(it->conn);
  pending_.erase(it);
  return conn;
}

// Closes an unauthenticated connection: the peer sees the end of the stream.
void Server::ClosePending(std::list<Pending>::iterator it) { (void)TakePending(it); }

// Moves the handshake of connection `id` on with what has arrived.
void Server::PendingReady(uint64_t id) {
  auto found = pending_by_id_.find(id);
  if (found == pending_by_id_.end()) return;  // closed earlier in this batch
  auto it = found->second;
  Pending& p = *it;
  for (;;) {
    std::span<uint8_t> want = p.steps->Want();
    auto got = p.conn->RecvAvailable(want.data(), want.size());
    Status s = got.ok() ? Status::Ok() : p.steps->Abandon(got.status(), Millis(0));
    if (s.ok() && got.value() == 0) return;  // the rest has not arrived yet
    if (s.ok()) s = p.steps->Received(got.value(), Millis(0));
    if (!s.ok()) {
      warn_.Warn(s.code() == Code::kPermission ? "auth_failed" : "handshake_failed",
                 {{"peer", p.conn->peer()}, {"error", s.ToString()}});
      ClosePending(it);
      return;
    }
    if (p.steps->done()) {
      Promote(it);
      return;
    }
  }
}

// Ends the handshakes whose deadline passed (the oldest come first).
void Server::ExpirePending() {
  auto now = Clock::now();
  while (!pending_.empty() && pending_.front().deadline <= now) {
    Pending& p = pending_.front();
    Status why = Status::Network("handshake with " + p.conn->peer() + " did not finish in " +
                                 std::to_string(o_.handshake_timeout.count()) + " ms");
    warn_.Warn("handshake_timeout", {{"peer", p.conn->peer()},
                                     {"error", p.steps->Abandon(why, Millis(0)).ToString()}});
    ClosePending(pending_.begin());
  }
}

// An authenticated connection leaves the loop for a session thread, its
// sealed state with it.
void Server::Promote(std::list<Pending>::iterator it) {
  ClientKey key = it->steps->client();
  std::unique_ptr<Conn> conn = TakePending(it);
  // Session threads block in their own receives.
  int flags = fcntl(conn->fd(), F_GETFL);
  if (flags >= 0) (void)fcntl(conn->fd(), F_SETFL, flags & ~O_NONBLOCK);
  StartSession(std::move(conn), key);
}

void Server::StartSession(std::unique_ptr<Conn> conn, const ClientKey& key) {
  std::lock_guard lock(sessions_mu_);
  auto session = std::make_unique<Session>();
  session->id = next_session_++;
  session->conn = std::move(conn);
  SessionInfo who{key.name, key.role, session->conn->peer(), session->id, KeyDigest(key)};
  if (Status room = SessionRoom(key); !room.ok()) {
    warn_.Warn("refused", {{"peer", who.peer}, {"client", who.client},
                           {"reason", room.message()}});
    // The client is authenticated: it may learn why (sealed).
    (void)SendError(*session->conn, room, Millis(0));
    return;
  }
  session->client = key.name;
  log_.Info("auth_ok", {{"peer", who.peer}, {"session", who.session_id}, {"client", who.client},
                        {"role", who.role}});
  Session* s = session.get();
  try {
    s->thread = std::thread([this, s, who] {
      try {
        Serve(*s, who);
      } catch (const std::exception& e) {
        SessionFailed(*s, e.what());
      } catch (...) {
        SessionFailed(*s, "unknown exception");
      }
      // The peer sees the end of the session now, not when the thread is reaped.
      s->conn->Shutdown();
      s->finished.store(true);
    });
  } catch (const std::system_error& e) {
    warn_.Warn("refused", {{"peer", who.peer}, {"reason", e.what()}});
    return;
  }
  sessions_.push_back(std::move(session));
}

// kBusy when the server is at max_sessions, or `key`'s client at its own
// max_sessions (sessions that finished but are not reaped yet do not count).
// Called with sessions_mu_ held.
Status Server::SessionRoom(const ClientKey& key) {
  if (sessions_.size() >= o_.max_sessions) {
    return Status::Busy("server is at its limit of " + std::to_string(o_.max_sessions) +
                        " sessions");
  }
  uint64_t bound = ClientLimits::Bound(key.limits.Over(o_.client_defaults).max_sessions);
  uint64_t own = std::count_if(sessions_.begin(), sessions_.end(), [&](const auto& s) {
    return !s->finished.load() && s->client == key.name;
  });
  if (own >= bound) {
    return Status::Busy("client '" + key.name + "' is at its limit of " + std::to_string(bound) +
                        " connections at once (max_sessions)");
  }
  return Status::Ok();
}

void Server::Serve(Session& s, const SessionInfo& who) {
  if (!Authenticated(s, who)) return;
  RequestLoop(*ctx_, s, who);
  log_.Info("close", {{"peer", who.peer}, {"session", s.id}, {"client", who.client},
                      {"bytes_sent", s.conn->bytes_sent()},
                      {"bytes_received", s.conn->bytes_received()}});
}

// Records who the session belongs to, then checks it against the clients
// file as of now: a client revoked while it authenticated (against the
// registry of the moment it connected) is turned away here, and one revoked
// later is found by WatchClients through s.who.
bool Server::Authenticated(Session& s, const SessionInfo& who) {
  {
    std::lock_guard lock(sessions_mu_);
    s.who = who;
  }
  if (StillAuthorized(*Clients(), who)) return true;
  log_.Warn("revoked", {{"peer", who.peer}, {"session", s.id}, {"client", who.client},
                        {"reason", "the client's entry changed while it authenticated"}});
  (void)SendError(*s.conn, Status::Make(Code::kPermission, "client '" + who.client +
                                                               "' is no longer authorized"),
                  kErrorSendTimeout);
  return false;
}

// Reloads the clients file every kRevocationPoll; when it changed, every
// session of a client that was removed or whose key or role changed ends.
// Applies the retention file's policies at start and every `every`.
void Server::RunRetention() {
  auto next = Clock::now();
  while (!stopping_.load()) {
    if (Clock::now() >= next) {
      (void)RunGuarded("retention", [&] {
        ApplyRetentionPass(*repo_, *schedule_, log_, &stopping_);
        return Status::Ok();
      });
      next = Clock::now() + schedule_->every;
    }
    std::this_thread::sleep_for(kRevocationPoll);
  }
}

void Server::WatchClients() {
  std::shared_ptr<const ClientRegistry> seen = Clients();
  while (!stopping_.load()) {
    std::this_thread::sleep_for(kRevocationPoll);
    auto now = RunGuarded("clients file", [&]() -> Result<std::shared_ptr<const ClientRegistry>> {
      return Clients();
    });
    if (!now.ok() || *now == seen) continue;
    seen = *now;
    Revoke(*seen);
  }
}

// Shuts down the connections of every session, and aborts every backup
// (running or waiting for its agent), of clients `clients` no longer
// authorizes. A backup aborted before its commit is never committed.
void Server::Revoke(const ClientRegistry& clients) {
  size_t ended = 0;
  {
    std::lock_guard lock(sessions_mu_);
    for (auto& s : sessions_) {
      if (s->who.client.empty() || s->finished.load() || StillAuthorized(clients, s->who)) {
        continue;
      }
      if (!s->revoked.exchange(true)) {
        log_.Warn("revoked", {{"peer", s->who.peer}, {"session", s->id},
                              {"client", s->who.client}});
        ++ended;
      }
      s->conn->Shutdown();
    }
  }
  size_t backups = backups_.AbortIf(
      [&](const SessionInfo& who) { return !StillAuthorized(clients, who); },
      Status::Make(Code::kPermission, "the client's authorization was revoked on the server; "
                                      "the backup was not committed"));
  if (ended > 0 || backups > 0) {
    log_.Info("revocation", {{"sessions_ended", ended}, {"backups_aborted", backups}});
  }
}

void Server::Fail(Session& s, const SessionInfo& who, const char* op, const Status& status,
                  bool threw) {
  // An exception is a bug on this side, not the agent's fault: logged apart.
  log_.Warn(threw ? "session_failed" : "request_failed",
            {{"peer", who.peer}, {"session", s.id}, {"client", who.client}, {"request", op},
             {"error", status.ToString()}});
  (void)SendError(*s.conn, status, kErrorSendTimeout);
}

// An exception escaped a session outside its requests (requests catch their
// own): the session ends, logged; the server and other sessions go on.
void Server::SessionFailed(Session& s, const char* reason) {
  try {
    log_.Warn("session_failed", {{"peer", s.conn->peer()}, {"session", s.id},
                                 {"error", std::string("unexpected exception: ") + reason}});
  } catch (...) {
    // Nothing left to report with; the session still ends cleanly.
  }
}

void Server::RequestLoop(ServerContext& ctx, Session& s, const SessionInfo& who) {
  Conn& conn = *s.conn;
  while (!stopping_.load()) {
    uint64_t received_at_frame = conn.bytes_received();
    auto received = conn.Recv(o_.LossTimeout());
    if (!received.ok()) {
      if (stopping_.load()) return;
      if (conn.closed_by_peer() && conn.bytes_received() == received_at_frame) {
        log_.Info("disconnected", {{"peer", who.peer}, {"session", s.id}, {"client", who.client}});
      } else if (received.status().code() == Code::kNetwork) {  // silent, reset or closed
        log_.Warn("lost", {{"peer", who.peer}, {"session", s.id}, {"client", who.client},
                           {"error", received.status().ToString()}});
      } else {
        Fail(s, who, "frame", received.status());
      }
      return;
    }
    const Frame& f = received.value();
    Status st;
    const char* op = nullptr;
    switch (f.type()) {
      case FrameType::kPing:
        st = AnswerPing(conn, f, o_.LossTimeout());
        if (!st.ok()) return Fail(s, who, "PING", st);
        continue;
      case FrameType::kPong:
        continue;  // a late answer to a heartbeat
      case FrameType::kList:
      case FrameType::kVerify:
      case FrameType::kRestore:
      case FrameType::kAdmin: {
        s.busy.store(true);
        auto start = Clock::now();
        Request rq{ctx, conn, who, f};
        op = f.type() == FrameType::kList     ? "list"
             : f.type() == FrameType::kVerify ? "verify"
             : f.type() == FrameType::kAdmin  ? "admin"
                                              : "restore";
        bool threw = false;
        st = RunGuarded(op, [&] {
          if (o_.on_session_point) o_.on_session_point(op);
          return f.type() == FrameType::kList     ? HandleList(rq)
                 : f.type() == FrameType::kVerify ? HandleVerify(rq)
                 : f.type() == FrameType::kAdmin  ? HandleAdmin(rq)
                                                  : HandleRestore(rq);
        }, &threw);
        s.busy.store(false);
        if (!st.ok()) return Fail(s, who, op, st, threw);
        double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        log_.Info("request", {{"peer", who.peer}, {"session", s.id}, {"client", who.client},
                              {"request", op}, {"seconds", seconds}});
        continue;
      }
      case FrameType::kGroupJoin: {
        // The connection is the agent's group channel from now on.
        s.busy.store(true);
        Request rq{ctx, conn, who, f};
        bool threw = false;
        st = RunGuarded("group", [&] {
          if (o_.on_session_point) o_.on_session_point("group");
          return ctx.groups->ServeMembers(rq);
        }, &threw);
        s.busy.store(false);
        if (!st.ok() && !stopping_.load()) return Fail(s, who, "group", st, threw);
        log_.Info("group channel closed", {{"peer", who.peer}, {"session", s.id},
                                           {"client", who.client}});
        return;
      }
      case FrameType::kBackupBegin:
      case FrameType::kStripeJoin: {
        s.busy.store(true);
        bool backup = f.type() == FrameType::kBackupBegin;
        op = backup ? "backup" : "stripe";
        // Both handlers catch their own exceptions (they must detach from the
        // backup first); this guard is the last line.
        bool threw = false;
        st = RunGuarded(op, [&] {
          if (o_.on_session_point) o_.on_session_point(op);
          return backup ? HandleBackup(ctx, conn, who, f) : HandleStripe(ctx, conn, who, f);
        }, &threw);
        s.busy.store(false);
        if (!st.ok()) return Fail(s, who, op, st, threw);
        log_.Info("request", {{"peer", who.peer}, {"session", s.id}, {"client", who.client},
                              {"request", op}});
        return;
      }
      default:
        return Fail(s, who, "frame",
                    Status::Network("unexpected " + FrameTypeName(f.header.type) +
                                    " frame from the agent"));
    }
  }
}

void Server::Reap(bool all) {
  std::list<std::unique_ptr<Session>> done;
  {
    std::lock_guard lock(sessions_mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (all || (*it)->finished.load()) {
        done.push_back(std::move(*it));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : done) s->thread.join();
}

// Idle sessions are closed at once; busy ones get drain_timeout to finish
// their request, then every connection is shut down.
void Server::Drain() {
  stopping_.store(true);
  if (groups_) groups_->StopAll();
  if (watcher_.joinable()) watcher_.join();
  if (retention_.joinable()) retention_.join();
  size_t count = 0;
  {
    std::lock_guard lock(sessions_mu_);
    count = sessions_.size();
  }
  log_.Info("stopping", {{"sessions", count}, {"drain_ms", o_.drain_timeout.count()}});
  auto deadline = Clock::now() + o_.drain_timeout;
  for (;;) {
    // A backup awaiting its lost agent cannot finish in the drain: no agent
    // can come back to a stopping server. It ends now, rolled back.
    backups_.AbortWaiting();
    bool all_done = true;
    {
      std::lock_guard lock(sessions_mu_);
      for (auto& s : sessions_) {
        if (s->finished.load()) continue;
        all_done = false;
        if (!s->busy.load()) s->conn->Shutdown();
      }
    }
    if (all_done || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(Millis(20));
  }
  {
    std::lock_guard lock(sessions_mu_);
    for (auto& s : sessions_) s->conn->Shutdown();
  }
  // No agent can come back to a stopping server: backups waiting for their
  // agent to resume end now, rolled back, instead of after resume_grace.
  backups_.AbortAll();
  Reap(true);
}

// No coordinator outlives its server: every group epoch left open is
// aborted, and every committed one whose members were not all published is
// rolled forward, before any agent is served (engine/core/group_repo.h).
Status Server::RecoverGroupsAtStart() {
  std::vector<std::string> done;
  Status s = RecoverGroups(*repo_, /*abort_open=*/true, std::chrono::seconds(30), &done);
  for (const auto& line : done) log_.Info("group recovery", {{"done", line}});
  // One group that could not be recovered (damaged, a volume locked by another
  // process) must not keep every client out: its volumes' next writers, or the
  // next start, finish it.
  if (!s.ok()) log_.Warn("group recovery", {{"error", s.ToString()}});
  return Status::Ok();
}

Status Server::Run() {
  auto encrypted = Repository::IsEncrypted(o_.repo_path);
  if (encrypted.ok() && *encrypted) {
    return Status::Version(o_.repo_path + " is an encrypted repository: dp420 serve does not "
                           "serve encrypted repositories yet (it would need their key); back up "
                           "to it locally, or serve a repository made with --encryption none");
  }
  DP420_ASSIGN_OR_RETURN(repo_, Repository::Open(o_.repo_path));
  DP420_RETURN_IF_ERROR(LoadClients());
  if (!o_.retention_file.empty()) {
    DP420_ASSIGN_OR_RETURN(RetentionSchedule schedule, LoadRetentionSchedule(o_.retention_file));
    schedule_ = std::make_unique<RetentionSchedule>(std::move(schedule));
    log_.Info("retention", {{"file", o_.retention_file}, {"rules", schedule_->rules.size()},
                            {"every_seconds", schedule_->every.count()}});
  }
  DP420_RETURN_IF_ERROR(RecoverGroupsAtStart());
  groups_ = std::make_unique<GroupService>(*repo_, log_, o_.tool_version);
  ctx_ = std::make_unique<ServerContext>(
      ServerContext{*repo_, o_, log_, backups_, stopping_, [this] { return Clients(); }});
  ctx_->groups = groups_.get();
  DP420_RETURN_IF_ERROR(Listen());
  try {
    watcher_ = std::thread([this] { WatchClients(); });
    if (schedule_) retention_ = std::thread([this] { RunRetention(); });
  } catch (const std::system_error& e) {
    return Status::Internal(std::string("cannot start the clients file watcher: ") + e.what());
  }
  Status s = AcceptLoop();
  Drain();
  if (!s.ok()) {
    log_.Warn("stopped", {{"error", s.ToString()}});
    return s;
  }
  log_.Info("stopped", {});
  return Status::Ok();
}

}  // namespace

void Logger::Log(const char* level, const char* event, const nlohmann::ordered_json& fields) {
  std::string line;
  if (json_) {
    OJson j;
    j["time"] = UtcNowMillis();
    j["level"] = level;
    j["event"] = event;
    if (fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = it.value();
    }
    line = Dump(j);
  } else {
    line = UtcNowMillis() + " " + level + " " + event;
    if (fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        line += " " + it.key() + "=" + TextValue(it.value());
      }
    }
  }
  line += '\n';
  std::lock_guard lock(mu_);
  (void)fwrite(line.data(), 1, line.size(), stderr);
  fflush(stderr);
}

bool StillAuthorized(const ClientRegistry& clients, const SessionInfo& who) {
  const ClientKey* k = clients.Find(who.client);
  return k != nullptr && k->role == who.role && KeyDigest(*k) == who.key_digest;
}

Status RunServer(const ServerOptions& options) {
  DP420_RETURN_IF_ERROR(CheckRange("heartbeat_interval", options.heartbeat_interval.count(),
                                   kMinHeartbeatMs, kMaxHeartbeatMs, "ms"));
  DP420_RETURN_IF_ERROR(CheckRange("heartbeat_misses", options.heartbeat_misses, 1, 100));
  if (options.max_pending == 0 || options.max_pending_per_source == 0 ||
      options.max_sessions == 0 || options.handshake_timeout.count() <= 0) {
    return Status::InvalidArgument(
        "max_pending, max_pending_per_source, max_sessions and handshake_timeout must be "
        "positive");
  }
  Server server(options);
  return server.Run();
}

}  // namespace dp420::net
