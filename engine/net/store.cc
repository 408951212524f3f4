#include "engine/net/store.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>
#include <vector>

#include <openssl/crypto.h>

#include "engine/control/clock.h"
#include "engine/control/liveness.h"
#include "engine/core/damage.h"
#include "engine/core/history.h"
#include "engine/core/snapshot.h"
#include "engine/core/text.h"
#include "engine/net/id_cache.h"
#include "engine/net/payloads.h"
#include "engine/net/volumes.h"
#include "io/inject.h"
#include "io/assert.h"
#include "io/buffer_pool.h"
#include "io/file.h"
#include "io/random.h"
#include "io/ring.h"
#include "simd/simd.h"

namespace dp420::net {

namespace {

using Clock = std::chrono::steady_clock;

// Payloads a stripe receives while earlier ones are still being written: the
// pack writes share the disk with the agent's reads (on one machine) and may
// wait tens of ms, during which the socket must keep being read.
constexpr unsigned kStripeBuffers = 16;

std::string NewToken() {
  uint8_t raw[16] = {};
  while (!io::FillRandom(raw, sizeof(raw)).ok()) {
  }
  return simd::ToHex(raw, sizeof(raw));
}

}  // namespace

// One stripe of a backup: its packs and resume point survive connections.
struct StripeState {
  std::mutex mu;                 // held by the connection serving the stripe
  Conn* conn = nullptr;          // the connection serving it (guarded by owner_mu)
  uint64_t next_page = 0;        // first page not acknowledged yet
  std::unique_ptr<PackWriter> pack;
  uint64_t bytes_written = 0;    // finished packs
  uint64_t blocks_stored = 0;
  uint64_t blocks_changed = 0;
  uint64_t blocks_zero = 0;
  uint64_t bytes_received = 0;
};

// What a client's backup may use, and what its client had stored when it began.
struct BackupLimits {
  ClientLimits limits;        // effective (ClientLimits::Over the server's defaults)
  uint64_t committed_bytes = 0;
};

class BackupSession {
 public:
  // Takes over a backup slot already taken for who.client (TakeSlot).
  BackupSession(ServerContext& ctx, SessionInfo who, VolumeLock lock,
                std::unique_ptr<SnapshotBuilder> builder, std::unique_ptr<Manifest> parent,
                uint32_t stripes, BackupLimits limits)
      : registry_(ctx.backups), who_(std::move(who)), lock_(std::move(lock)),
        builder_(std::move(builder)), parent_(std::move(parent)), stripes_(stripes),
        limits_(limits) {
    if (parent_) {
      present_packs_ = ListReadablePackIds(ctx.repo);
      damage_ = LoadDamage(ctx.repo);
    }
    for (uint32_t i = 0; i < stripes; ++i) {
      stripe_.push_back(std::make_unique<StripeState>());
      stripe_.back()->next_page = i;
    }
    consumer_ = std::thread([this] {
      Status s = RunGuarded("table builder", [this] {
        return builder_->Consume([this] { return aborted_.load(); }, nullptr);
      });
      std::lock_guard lock(mu_);
      consumed_ = true;
      consume_status_ = s;
      cv_.notify_all();
    });
  }
  ~BackupSession() {
    Abort(Status::Ok());
    if (consumer_.joinable()) consumer_.join();
    registry_.Uncharge(who_.client, charged_.load());
    registry_.ReleaseSlot(who_.client);
  }

  const SessionInfo& who() const { return who_; }
  SnapshotBuilder& builder() { return *builder_; }
  const Manifest* parent() const { return parent_.get(); }
  // A parent entry whose stored copy is in a pack gone from the repository,
  // or that verify found damaged.
  bool Lost(const Entry& e) const {
    return e.ref.stored() &&
           (!std::binary_search(present_packs_.begin(), present_packs_.end(), e.ref.pack_id) ||
            damage_.Holds(e.ref));
  }
  uint32_t stripes() const { return stripes_; }
  StripeState& stripe(uint32_t i) { return *stripe_[i]; }
  bool aborted() const { return aborted_.load(); }
  std::string token;

  // Ends the session (its packs are rolled back when the last reference
  // goes). A non-OK `why` is sent to the agent's control connection first,
  // so the agent reports the reason instead of a lost connection.
  void Abort(const Status& why) {
    {
      // Never while a commit runs: an aborted backup is never committed.
      std::lock_guard commit(commit_mu_);
      if (aborted_.exchange(true)) return;
      // Committed: nothing to roll back, and a repeated COMMIT (an agent that
      // resumed on a new control connection) still gets its answer there.
      if (committed) return;
    }
    builder_->queue().Abort();
    std::lock_guard lock(owner_mu_);
    // The reason goes out on every connection before any is shut down, so
    // that whichever the agent reads first tells it why.
    if (control_ && !why.ok()) (void)SendError(*control_, why, Millis(1000));
    for (auto& s : stripe_) {
      if (s->conn && !why.ok()) (void)SendError(*s->conn, why, Millis(100));
    }
    for (auto& s : stripe_) {
      if (s->conn) s->conn->Shutdown();
    }
    if (control_) control_->Shutdown();
    cv_control_.notify_all();
  }
  bool has_control() {
    std::lock_guard lock(owner_mu_);
    return control_ != nullptr;
  }
  // Once committed, the volume is free for the next backup at once, even
  // before this session has answered and wound down.
  void ReleaseVolume() { lock_ = VolumeLock(); }

  // Held across the commit; Abort waits for it.
  std::mutex& commit_mu() { return commit_mu_; }
  // The commit's outcome, under commit_mu(). An agent whose control
  // connection was lost during its COMMIT resumes on a new one and sends
  // COMMIT again, possibly while the first still runs: the builder commits
  // once, and a repeated COMMIT answers from here.
  std::optional<Manifest> committed;  // the snapshot the first COMMIT committed
  Status commit_failed;                // why it failed, when it reached the builder and failed
  const BackupLimits& limits() const { return limits_; }

  // Counts `bytes` received against the client's quota; false when over it.
  bool Charge(uint64_t bytes) {
    uint64_t bound = ClientLimits::Bound(limits_.limits.max_bytes);
    if (bound == UINT64_MAX) return true;
    if (!registry_.Charge(who_.client, bytes, limits_.committed_bytes, bound)) return false;
    charged_ += bytes;
    return true;
  }
  Status QuotaExceeded() const {
    uint64_t bound = ClientLimits::Bound(limits_.limits.max_bytes);
    return Status::NoSpace("client '" + who_.client + "' is over its quota (max_bytes " +
                           std::to_string(bound) + "): its snapshots hold " +
                           std::to_string(limits_.committed_bytes) +
                           " bytes and this backup needs more; nothing was committed (the "
                           "server's operator may raise it with `dp420 client-set`)");
  }
  // Receive buffers of `each` bytes for one stripe, within the client's
  // bound: a fair share of it for each stripe of this backup, 2 to 16.
  unsigned ReserveBuffers(uint64_t each, unsigned most) {
    uint64_t bound = ClientLimits::Bound(limits_.limits.max_stripe_memory);
    uint64_t share = bound == UINT64_MAX ? most : bound / (each * stripes_);
    unsigned want = unsigned(std::clamp<uint64_t>(share, 2, most));
    return registry_.ReserveBuffers(who_.client, each, want, 2, bound);
  }
  void ReleaseBuffers(uint64_t bytes) { registry_.ReleaseBuffers(who_.client, bytes); }

  // Awaiting its agent since (steady clock ns), 0 while a control connection serves it.
  int64_t waiting_since() const { return waiting_since_.load(); }
  void MarkWaiting() {
    waiting_since_.store(Clock::now().time_since_epoch().count());
  }

  // The control connection: a newer one replaces (and wakes) an older one.
  void AttachControl(Conn* conn) {
    std::lock_guard lock(owner_mu_);
    waiting_since_.store(0);
    if (control_) control_->Shutdown();
    control_ = conn;
    ++control_generation_;
    cv_control_.notify_all();
  }
  uint64_t control_generation() {
    std::lock_guard lock(owner_mu_);
    return control_generation_;
  }
  void DetachControl(Conn* conn) {
    std::lock_guard lock(owner_mu_);
    if (control_ == conn) control_ = nullptr;
  }
  // Waits up to `grace` for another control connection; false when none came.
  bool WaitForNewControl(uint64_t generation, Millis grace) {
    std::unique_lock lock(owner_mu_);
    return cv_control_.wait_for(lock, grace, [&] {
      return aborted_.load() || control_generation_ != generation;
    }) && !aborted_.load();
  }
  void AttachStripe(StripeState& s, Conn* conn) {
    std::lock_guard lock(owner_mu_);
    if (s.conn) s.conn->Shutdown();
    s.conn = conn;
  }
  void DetachStripe(StripeState& s, Conn* conn) {
    std::lock_guard lock(owner_mu_);
    if (s.conn == conn) s.conn = nullptr;
  }
  // Waits (answering nothing) until every leaf page was consumed, or `timeout`.
  Result<bool> WaitConsumed(Millis timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return consumed_; });
    if (!consumed_) return false;
    DP420_RETURN_IF_ERROR(consume_status_);
    return builder_->complete();
  }

 private:
  BackupRegistry& registry_;
  SessionInfo who_;
  VolumeLock lock_;
  std::unique_ptr<SnapshotBuilder> builder_;
  std::unique_ptr<Manifest> parent_;
  std::vector<uint32_t> present_packs_;  // sorted, listed at the start (with a parent)
  DamageRecord damage_;                  // what verify found, read at the start
  uint32_t stripes_;
  BackupLimits limits_;
  std::atomic<uint64_t> charged_{0};
  std::atomic<int64_t> waiting_since_{0};
  std::mutex commit_mu_;
  std::vector<std::unique_ptr<StripeState>> stripe_;
  std::atomic<bool> aborted_{false};
  std::mutex owner_mu_;
  std::condition_variable cv_control_;  // with owner_mu_
  Conn* control_ = nullptr;
  uint64_t control_generation_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool consumed_ = false;
  Status consume_status_;
  std::thread consumer_;
};

// ---- BackupRegistry ----

BackupRegistry::~BackupRegistry() { AbortAll(); }

void BackupRegistry::Add(const std::string& token, std::shared_ptr<BackupSession> session) {
  std::lock_guard lock(mu_);
  sessions_[token] = std::move(session);
}

std::shared_ptr<BackupSession> BackupRegistry::FindVolume(const std::string& volume) {
  std::lock_guard lock(mu_);
  for (auto& [token, session] : sessions_) {
    if (session->builder().manifest().volume == volume) return session;
  }
  return nullptr;
}

std::shared_ptr<BackupSession> BackupRegistry::Find(const std::string& token) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(token);
  return it == sessions_.end() ? nullptr : it->second;
}

void BackupRegistry::Remove(const std::string& token, const Status& why) {
  std::shared_ptr<BackupSession> gone;
  {
    std::lock_guard lock(mu_);
    auto it = sessions_.find(token);
    if (it == sessions_.end()) return;
    gone = std::move(it->second);
    sessions_.erase(it);
  }
  gone->Abort(why);
}

void BackupRegistry::AbortAll() {
  std::map<std::string, std::shared_ptr<BackupSession>> all;
  {
    std::lock_guard lock(mu_);
    all.swap(sessions_);
  }
  for (auto& [token, session] : all) session->Abort(Status::Ok());
}

size_t BackupRegistry::AbortIf(const std::function<bool(const SessionInfo&)>& revoked,
                               const Status& why) {
  std::vector<std::shared_ptr<BackupSession>> gone;
  {
    std::lock_guard lock(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (revoked(it->second->who())) {
        gone.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : gone) s->Abort(why);
  return gone.size();
}

size_t BackupRegistry::AbortWaiting() {
  std::vector<std::shared_ptr<BackupSession>> gone;
  {
    std::lock_guard lock(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->waiting_since() != 0) {
        gone.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : gone) s->Abort(Status::Ok());
  return gone.size();
}

std::shared_ptr<BackupSession> BackupRegistry::OldestWaiting(const std::string& client) {
  std::shared_ptr<BackupSession> oldest;
  for (auto& [token, s] : sessions_) {
    if (s->who().client != client || s->waiting_since() == 0 || s->aborted()) continue;
    if (!oldest || s->waiting_since() < oldest->waiting_since()) oldest = s;
  }
  return oldest;
}

Status BackupRegistry::TakeSlot(const std::string& client, uint64_t bound) {
  auto deadline = Clock::now() + std::chrono::seconds(2);
  bool rolled_back = false;
  for (;;) {
    std::shared_ptr<BackupSession> victim;
    {
      std::lock_guard lock(mu_);
      Usage& u = usage_[client];
      if (u.slots < bound) {
        ++u.slots;
        return Status::Ok();
      }
      if (!rolled_back) victim = OldestWaiting(client);
    }
    if (victim) {
      // Its handler wakes, ends, and frees the slot when the last reference goes.
      Remove(victim->token);
      rolled_back = true;
    }
    if (!rolled_back || Clock::now() > deadline) {
      return Status::Busy("client '" + client + "' has " + std::to_string(bound) +
                          " backups in progress, its limit (max_backups): wait for one to "
                          "finish");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void BackupRegistry::ReleaseSlot(const std::string& client) {
  std::lock_guard lock(mu_);
  Usage& u = usage_[client];
  if (u.slots > 0) --u.slots;
}

void BackupRegistry::TrimWaiting(const std::string& client, uint64_t bound) {
  for (;;) {
    std::shared_ptr<BackupSession> oldest;
    {
      std::lock_guard lock(mu_);
      uint64_t waiting = 0;
      for (auto& [token, s] : sessions_) {
        waiting += s->who().client == client && s->waiting_since() != 0 && !s->aborted();
      }
      if (waiting <= bound) return;
      oldest = OldestWaiting(client);
    }
    if (!oldest) return;
    Remove(oldest->token);
  }
}

unsigned BackupRegistry::ReserveBuffers(const std::string& client, uint64_t each, unsigned want,
                                        unsigned least, uint64_t bound) {
  std::lock_guard lock(mu_);
  Usage& u = usage_[client];
  uint64_t room = bound > u.buffer_bytes ? bound - u.buffer_bytes : 0;
  unsigned n = unsigned(std::min<uint64_t>(want, room / each));
  if (n < least) return 0;
  u.buffer_bytes += n * each;
  return n;
}

void BackupRegistry::ReleaseBuffers(const std::string& client, uint64_t bytes) {
  std::lock_guard lock(mu_);
  Usage& u = usage_[client];
  u.buffer_bytes -= std::min(u.buffer_bytes, bytes);
}

bool BackupRegistry::Charge(const std::string& client, uint64_t bytes, uint64_t committed,
                            uint64_t bound) {
  std::lock_guard lock(mu_);
  Usage& u = usage_[client];
  if (committed + u.charged + bytes > bound) return false;
  u.charged += bytes;
  return true;
}

void BackupRegistry::Uncharge(const std::string& client, uint64_t bytes) {
  std::lock_guard lock(mu_);
  Usage& u = usage_[client];
  u.charged -= std::min(u.charged, bytes);
}

// ---- control connection ----

namespace {

// The manifest file's sealed text, as on disk.
Result<std::string> SealedText(const Repository& repo, const Manifest& m) {
  return io::ReadFile(repo.SnapshotsDir(m.volume) + "/" + m.file_name);
}

Status SendReady(ServerContext& ctx, Conn& conn, BackupSession& s, Millis timeout) {
  const Manifest& m = s.builder().manifest();
  std::string parent_text;
  if (s.parent()) {
    DP420_ASSIGN_OR_RETURN(parent_text, SealedText(ctx.repo, *s.parent()));
  }
  // The volume's block-id secret, never the repository's key.
  std::array<uint8_t, simd::kHashSecretBytes> key;
  ctx.repo.VolumeSecret(m.volume, key.data());
  PayloadWriter w;
  w.String(s.token);
  w.String(m.snapshot_id);
  w.U32(m.block_size);
  w.String(parent_text);
  w.Bytes({key.data(), key.size()});
  OPENSSL_cleanse(key.data(), key.size());
  w.U64(NowUnixNs());
  return conn.Send(FrameType::kBackupReady, 0, w.bytes(), timeout);
}

// PARENT_REQ: the parent's leaf pages as (id, SHA-256, zero) records, then DONE.
Status SendParentIds(ServerContext& ctx, Conn& conn, BackupSession& s, const Frame& f,
                     Millis timeout) {
  uint64_t first = 0;
  uint32_t count = 0;
  DP420_RETURN_IF_ERROR(ParseParentReq(f.payload, &first, &count));
  if (!s.parent()) return Status::InvalidArgument("PARENT_REQ: the volume has no parent snapshot");
  TableReader table(ctx.repo, *s.parent());
  uint64_t pages = table.shape().PagesAt(0);
  if (table.shape().blocks == 0) pages = 0;
  uint64_t end = std::min<uint64_t>(pages, first + count);
  uint64_t lost_blocks = 0;
  for (uint64_t p = first; p < end; ++p) {
    uint32_t n = 0;
    DP420_ASSIGN_OR_RETURN(const Entry* entries, table.Leaf(p, &n));
    PayloadWriter w;
    w.U64(p);
    w.U32(n);
    for (uint32_t i = 0; i < n; ++i) {
      w.Bytes({entries[i].id, 16});
      w.Bytes({entries[i].ref.sha256, 32});
      bool lost = s.Lost(entries[i]);
      lost_blocks += lost;
      w.U8(lost ? kCacheLost : (entries[i].ref.flags & kObjZero) ? kCacheZero : kCacheStored);
    }
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kParentPage, f.header.request_id, w.bytes(),
                                    timeout));
  }
  if (lost_blocks > 0) {
    ctx.log.Warn("parent_blocks_lost", {{"client", s.who().client},
                                        {"volume", QualifiedName(s.parent()->volume)},
                                        {"snapshot", s.parent()->snapshot_id},
                                        {"blocks", lost_blocks}});
  }
  PayloadWriter done;
  done.String("{}");
  return conn.Send(FrameType::kDone, f.header.request_id, done.bytes(), timeout);
}

// The access checks again, under the volume lock, just before the commit:
// the client still holds its key and role, and the volume is still its own.
Status CheckStillAllowed(ServerContext& ctx, BackupSession& s) {
  const SessionInfo& who = s.who();
  auto clients = ctx.clients ? ctx.clients() : nullptr;
  if (clients && !StillAuthorized(*clients, who)) {
    return Status::Make(Code::kPermission, "client '" + who.client +
                                               "' is no longer authorized (removed, or its "
                                               "key or role changed): nothing was committed");
  }
  const std::string& volume = s.builder().manifest().volume;
  std::vector<Manifest> chain;
  std::vector<DamagedFile> damaged;
  DP420_RETURN_IF_ERROR(ctx.repo.ListManifests(volume, &chain, &damaged));
  for (const auto& m : chain) {
    if (m.client != who.client) {
      return Status::Make(Code::kPermission, "the volume's snapshots are not all client '" +
                                                 who.client + "''s: nothing was committed");
    }
  }
  return Status::Ok();
}

// Waits until the table builder took every page, PINGing the agent; fails
// when the backup is aborted, the agent hangs up or pages never come.
Status AwaitConsumed(ServerContext& ctx, Conn& conn, BackupSession& s, Millis timeout) {
  auto deadline = Clock::now() + ctx.options.LossTimeout() * 4;
  control::Liveness beats(control::SystemClock(),
                          std::chrono::nanoseconds(ctx.options.heartbeat_interval).count(),
                          std::chrono::nanoseconds(ctx.options.LossTimeout()).count());
  for (;;) {
    DP420_ASSIGN_OR_RETURN(bool done, s.WaitConsumed(std::min<Millis>(
                                          ctx.options.heartbeat_interval, Millis(200))));
    if (done) return Status::Ok();
    if (s.aborted()) return Status::Network("backup aborted");
    if (Clock::now() > deadline) {
      return Status::InvalidArgument("COMMIT before every page was sent and acknowledged");
    }
    // An agent that hung up after COMMIT gives the volume back at once.
    pollfd pfd{conn.fd(), POLLRDHUP, 0};
    if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
      return Status::Network("the agent closed the connection while its COMMIT waited");
    }
    if (!beats.BeatDue()) continue;
    beats.Sent();
    PayloadWriter ping;
    ping.U64(WallClockNs());
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kPing, 0, ping.bytes(), timeout));
  }
}

// Finishes the stripes' packs and makes them durable; their counters.
Result<SnapshotStats> CloseStripes(ServerContext& ctx, BackupSession& s) {
  SnapshotStats stats;
  for (uint32_t i = 0; i < s.stripes(); ++i) {
    StripeState& st = s.stripe(i);
    std::lock_guard lock(st.mu);
    if (st.pack) {
      DP420_RETURN_IF_ERROR(st.pack->Finish());
      st.bytes_written += st.pack->final_size();
      st.pack.reset();
    }
    stats.blocks_changed += st.blocks_changed;
    stats.blocks_zero += st.blocks_zero;
    stats.blocks_stored += st.blocks_stored;
    stats.bytes_written += st.bytes_written;
  }
  DP420_RETURN_IF_ERROR(io::SyncDir(ctx.repo.PacksDir()));
  Manifest& m = s.builder().manifest();
  stats.bytes_read = m.volume_size;  // the agent read the whole volume
  m.seconds = static_cast<double>(NowUnixNs() - m.created_unix_ns) / 1e9;
  return stats;
}

// Commits the snapshot once. An agent whose control connection was lost
// during its COMMIT resumes on a new one and sends COMMIT again, possibly
// while the first still runs: the repeat gets the committed manifest
// (*repeated) or the first one's failure. Revocation aborts under the same
// lock: either it came first and nothing is committed, or the commit did.
Result<Manifest> CommitOnce(ServerContext& ctx, BackupSession& s, const SnapshotStats& stats,
                            bool* repeated) {
  std::lock_guard commit_lock(s.commit_mu());
  *repeated = s.committed.has_value();
  if (s.committed) return *s.committed;
  if (!s.commit_failed.ok()) {
    return s.commit_failed.Prefix("an earlier COMMIT of this backup failed");
  }
  if (s.aborted()) return Status::Network("backup aborted");
  DP420_RETURN_IF_ERROR(CheckStillAllowed(ctx, s));
  Result<Manifest> built = s.builder().Commit(stats);
  if (!built.ok()) {
    s.commit_failed = built.status();
    return built.status();
  }
  s.committed = built.value();
  s.ReleaseVolume();
  return built;
}

// COMMIT: every stripe is acknowledged. Waits for the table builder, closes
// the stripes' packs and commits; answers COMMITTED with the manifest.
Status Commit(ServerContext& ctx, Conn& conn, BackupSession& s, const Frame& f, Millis timeout) {
  if (ctx.options.on_session_point) ctx.options.on_session_point("commit");
  DP420_RETURN_IF_ERROR(AwaitConsumed(ctx, conn, s, timeout));
  DP420_ASSIGN_OR_RETURN(SnapshotStats stats, CloseStripes(ctx, s));
  CommitCounters counters;  // the agent's send counters, for the log
  DP420_RETURN_IF_ERROR(ParseCommit(f.payload, &counters));
  bool repeated = false;
  DP420_ASSIGN_OR_RETURN(Manifest committed, CommitOnce(ctx, s, stats, &repeated));
  DP420_ASSIGN_OR_RETURN(std::string text, SealedText(ctx.repo, committed));
  if (repeated) {
    ctx.log.Info("backup COMMIT repeated, answered with the committed snapshot",
                 {{"client", s.who().client},
                  {"volume", committed.volume},
                  {"snapshot", committed.snapshot_id}});
  } else {
    uint64_t received = 0;
    for (uint32_t i = 0; i < s.stripes(); ++i) received += s.stripe(i).bytes_received;
    ctx.log.Info("backup committed", {{"client", s.who().client},
                                      {"volume", committed.volume},
                                      {"snapshot", committed.snapshot_id},
                                      {"blocks_stored", committed.blocks_stored},
                                      {"bytes_written", committed.bytes_written},
                                      {"block_bytes_received", received},
                                      {"bytes_sent", counters.sent},
                                      {"bytes_sent_zerocopy", counters.zerocopy},
                                      {"bytes_zerocopy_copied", counters.copied},
                                      {"bytes_resent", counters.resent}});
  }
  PayloadWriter w;
  w.String(text);
  return conn.Send(FrameType::kCommitted, f.header.request_id, w.bytes(), timeout);
}

// Locks repository volume `volume` for a backup by `who`. A backup of it
// whose agent was lost waits for it to resume; a new backup by the same
// client supersedes it.
Result<VolumeLock> LockForBackup(ServerContext& ctx, const SessionInfo& who,
                                 const std::string& volume, const std::string& shown) {
  auto locked = ctx.repo.LockVolume(volume);
  if (!locked.ok() && locked.status().code() == Code::kBusy) {
    // A session that just ended may still be releasing the lock: wait a little.
    auto old = ctx.backups.FindVolume(volume);
    // (Sessions are aborted only once out of the registry.)
    bool supersede = old && old->who().client == who.client && !old->has_control();
    if (!old || supersede) {
      if (supersede) {
        ctx.log.Warn("backup superseded", {{"client", who.client}, {"volume", volume}});
        ctx.backups.Remove(old->token);
      }
      old.reset();
      auto until = Clock::now() + std::chrono::seconds(5);
      while (Clock::now() < until) {
        locked = ctx.repo.LockVolume(volume);
        if (locked.ok() || locked.status().code() != Code::kBusy) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }
  if (!locked.ok()) {
    return locked.status().Prefix("a backup of volume '" + shown + "' is in progress");
  }
  return std::move(locked).value();
}

// The client's limits, and what it stores: kNoSpace when it may not create
// `vol` (max_volumes) or is at its quota already (max_bytes).
Result<BackupLimits> CheckLimits(ServerContext& ctx, const SessionInfo& who,
                                 const ResolvedVolume& vol) {
  auto clients = ctx.clients ? ctx.clients() : nullptr;
  const ClientKey* key = clients ? clients->Find(who.client) : nullptr;
  if (clients && (!key || !StillAuthorized(*clients, who))) {
    return Status::Make(Code::kPermission, "client '" + who.client + "' is no longer authorized");
  }
  BackupLimits out;
  out.limits = (key ? key->limits : ClientLimits{}).Over(ctx.options.client_defaults);
  std::vector<Manifest> all;
  DP420_RETURN_IF_ERROR(ctx.repo.ListManifests("", &all, nullptr));
  for (const auto& m : all) out.committed_bytes += m.client == who.client ? m.bytes_written : 0;
  uint64_t max_bytes = ClientLimits::Bound(out.limits.max_bytes);
  if (out.committed_bytes >= max_bytes) {
    return Status::NoSpace("client '" + who.client + "' is at its quota (max_bytes " +
                           std::to_string(max_bytes) + "): its snapshots hold " +
                           std::to_string(out.committed_bytes) + " bytes");
  }
  uint64_t max_volumes = ClientLimits::Bound(out.limits.max_volumes);
  if (!vol.exists && max_volumes != UINT64_MAX) {
    SessionInfo own = who;
    own.role = "append";  // its own volumes only
    std::vector<VisibleVolume> volumes;
    DP420_RETURN_IF_ERROR(VisibleVolumes(ctx.repo, own, &volumes));
    if (volumes.size() >= max_volumes) {
      return Status::NoSpace("client '" + who.client + "' has " +
                             std::to_string(volumes.size()) + " volumes, its limit "
                             "(max_volumes): volume '" + vol.shown + "' cannot be created");
    }
  }
  return out;
}

// Releases a backup slot unless a session took it over.
struct SlotGuard {
  BackupRegistry& registry;
  std::string client;
  bool held = true;
  ~SlotGuard() {
    if (held) registry.ReleaseSlot(client);
  }
};

Result<std::shared_ptr<BackupSession>> StartSession(ServerContext& ctx, const SessionInfo& who,
                                                    const BeginRequest& b) {
  DP420_ASSIGN_OR_RETURN(ResolvedVolume vol, ResolveVolume(ctx.repo, who, b.volume, true));
  DP420_ASSIGN_OR_RETURN(BackupLimits limits, CheckLimits(ctx, who, vol));
  DP420_RETURN_IF_ERROR(
      ctx.backups.TakeSlot(who.client, ClientLimits::Bound(limits.limits.max_backups)));
  SlotGuard slot{ctx.backups, who.client};
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, LockForBackup(ctx, who, vol.repo, vol.shown));
  // Again under the lock: the volume it resolved to is still the one to use.
  DP420_ASSIGN_OR_RETURN(ResolvedVolume again, ResolveVolume(ctx.repo, who, b.volume, true));
  if (again.repo != vol.repo || again.owner != who.client) {
    return Status::Busy("volume '" + vol.shown + "' changed while the backup began: retry");
  }
  // What a dead writer left first: it may publish a group member, which
  // changes the newest snapshot.
  DP420_RETURN_IF_ERROR(BackupJournal::Recover(ctx.repo, vol.repo));
  auto newest = ParentOfNextBackup(ctx.repo, vol.repo);
  if (!newest.ok()) {
    return Status::Make(newest.status().code(), newest.status().message() +
                                                    " (the server's operator must act)");
  }
  std::unique_ptr<Manifest> parent;
  if (newest->has_value()) parent = std::make_unique<Manifest>(**newest);
  DP420_ASSIGN_OR_RETURN(auto builder,
                         SnapshotBuilder::Start(ctx.repo, vol.repo, parent.get(), b.block_size,
                                                b.volume_size, DefaultPageWindow(b.stripes)));
  Manifest& m = builder->manifest();
  // All checked by ParseBegin: valid UTF-8, bounded.
  m.source_path = b.source_path;
  m.source_kind = b.source_kind;
  m.tool_version = b.tool_version;
  m.client = who.client;
  m.node_topology = b.topology;
  auto session = std::make_shared<BackupSession>(ctx, who, std::move(lock), std::move(builder),
                                                 std::move(parent), b.stripes, limits);
  slot.held = false;
  session->token = NewToken();
  ctx.backups.Add(session->token, session);
  return session;
}

}  // namespace

namespace {

// The session BACKUP_BEGIN names: the one `resume_token` names, or a new one.
// Refusals are sent to the agent here.
Result<std::shared_ptr<BackupSession>> OpenBackup(ServerContext& ctx, Conn& conn,
                                                  const SessionInfo& who, const BeginRequest& b) {
  Millis timeout = ctx.options.LossTimeout();
  if (!b.resume_token.empty()) {
    auto s = ctx.backups.Find(b.resume_token);
    auto vol = ResolveVolume(ctx.repo, who, b.volume, true);
    if (!s || s->who().client != who.client || !vol.ok() ||
        s->builder().manifest().volume != vol->repo) {
      Status gone = Status::NotFound("backup session " + b.resume_token +
                                     " is unknown to the server (it restarted or gave up)");
      (void)SendError(conn, gone, timeout);
      return gone;
    }
    ctx.log.Info("backup resumed", {{"client", who.client}, {"volume", b.volume},
                                    {"peer", conn.peer()}});
    return s;
  }
  auto started = StartSession(ctx, who, b);
  if (!started.ok()) {
    (void)SendError(conn, started.status(), timeout);
    return started.status();
  }
  auto s = *started;
  ctx.log.Info("backup started", {{"client", who.client},
                                  {"volume", b.volume},
                                  {"snapshot", s->builder().manifest().snapshot_id},
                                  {"parent", s->builder().manifest().parent},
                                  {"stripes", b.stripes},
                                  {"peer", conn.peer()}});
  return s;
}

// The control connection's frames after BACKUP_READY, until COMMIT was
// answered (*commit_seen) or the session failed.
Status ServeControl(ServerContext& ctx, Conn& conn, BackupSession& s, bool* commit_seen) {
  Millis timeout = ctx.options.LossTimeout();
  DP420_RETURN_IF_ERROR(SendReady(ctx, conn, s, timeout));
  for (;;) {
    DP420_ASSIGN_OR_RETURN(Frame frame, conn.Recv(timeout));
    Status status;
    switch (frame.type()) {
      case FrameType::kPing: status = AnswerPing(conn, frame, timeout); break;
      case FrameType::kPong: break;
      case FrameType::kParentReq: status = SendParentIds(ctx, conn, s, frame, timeout); break;
      case FrameType::kCommit: {
        *commit_seen = true;
        Status committed = Commit(ctx, conn, s, frame, timeout);
        if (!committed.ok()) (void)SendError(conn, committed, timeout);
        return committed;
      }
      case FrameType::kError: return StatusFromError(frame, conn.peer());
      default:
        status = Status::InvalidArgument("protocol violation: unexpected frame type " +
                                         std::to_string(frame.header.type) +
                                         " in a backup session");
        (void)SendError(conn, status, timeout);
    }
    DP420_RETURN_IF_ERROR(status);
  }
}

}  // namespace

Status HandleBackup(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& begin) {
  Millis timeout = ctx.options.LossTimeout();
  auto parsed = ParseBegin(begin.payload);
  if (!parsed.ok()) {
    (void)SendError(conn, parsed.status(), timeout);
    return parsed.status();
  }
  const BeginRequest& b = *parsed;
  bool threw = false;
  auto opened = RunGuarded("backup", [&] { return OpenBackup(ctx, conn, who, b); }, &threw);
  if (threw) (void)SendError(conn, opened.status(), timeout);
  DP420_RETURN_IF_ERROR(opened.status());
  std::shared_ptr<BackupSession> s = *opened;
  s->AttachControl(&conn);
  uint64_t generation = s->control_generation();
  bool commit_seen = false;
  // An exception ends this backup like any other failure: detached, rolled
  // back, and reported to the agent.
  Status status =
      RunGuarded("backup", [&] { return ServeControl(ctx, conn, *s, &commit_seen); }, &threw);
  if (threw) (void)SendError(conn, status, timeout);
  s->DetachControl(&conn);
  if (commit_seen || s->aborted()) {
    ctx.backups.Remove(s->token);
    return status;
  }
  if (status.code() != Code::kNetwork) {
    // A protocol or repository error: the backup cannot go on.
    ctx.log.Warn("backup failed", {{"client", who.client}, {"error", status.ToString()}});
    ctx.backups.Remove(s->token);
    return status;
  }
  // Lost agent: keep the session for a while so it can reconnect and resume
  // (no more than max_waiting of a client's: its oldest are rolled back).
  ctx.log.Warn("backup agent lost", {{"client", who.client},
                                     {"volume", b.volume},
                                     {"error", status.message()},
                                     {"grace_s", ctx.options.resume_grace.count() / 1000.0}});
  s->MarkWaiting();
  ctx.backups.TrimWaiting(who.client, ClientLimits::Bound(s->limits().limits.max_waiting));
  if (!s->WaitForNewControl(generation, ctx.options.resume_grace)) {
    if (!s->aborted()) {
      ctx.log.Warn("backup abandoned", {{"client", who.client}, {"volume", b.volume}});
    }
    ctx.backups.Remove(s->token);  // rolls back
  }
  return status;
}

// ---- stripe connection ----

namespace {

// Receives a stripe's BLOCKS and PAGE frames, checks and stores them.
class StripeReceiver {
 public:
  StripeReceiver(ServerContext& ctx, Conn& conn, BackupSession& s, StripeState& st, uint32_t id)
      : ctx_(ctx), conn_(conn), s_(s), st_(st), id_(id),
        block_size_(s.builder().manifest().block_size) {}
  ~StripeReceiver() { s_.ReleaseBuffers(uint64_t{buffers_} * buffer_bytes_); }

  Status Setup() {
    // A payload holds at most one extent of blocks (plus the padding of a
    // short last block up to 4 KiB).
    buffer_bytes_ = RoundUp(std::max<uint64_t>(block_size_, kMinExtentBytes) + kRecordAlign,
                            kRecordAlign);
    // Within the client's bound on pinned receive buffers (max_stripe_memory).
    buffers_ = s_.ReserveBuffers(buffer_bytes_, kStripeBuffers);
    if (buffers_ == 0) {
      return Status::Busy("client '" + s_.who().client + "' holds its limit of stripe "
                          "receive buffers (max_stripe_memory " +
                          std::to_string(ClientLimits::Bound(
                              s_.limits().limits.max_stripe_memory)) +
                          " bytes) in other stripes");
    }
    DP420_ASSIGN_OR_RETURN(ring_, io::Ring::Create({.depth = kStripeBuffers, .max_file_workers = 1}));
    DP420_ASSIGN_OR_RETURN(pool_, io::BufferPool::Create(buffer_bytes_, buffers_));
    (void)pool_.Register(*ring_);
    writes_.resize(buffers_);
    if (s_.parent()) parent_ = std::make_unique<TableReader>(ctx_.repo, *s_.parent());
    return Status::Ok();
  }

  Status Run();
  // Waits for every pack write; the first write error, if any.
  Status Flush() { return ring_ ? WaitWrites(true) : Status::Ok(); }
  // The agent broke the protocol (as opposed to the connection failing).
  bool violated() const { return violated_; }

 private:
  Status Violation(const std::string& what) {
    violated_ = true;
    return Status::Network("protocol violation: " + what);
  }
  bool violated_ = false;
  static constexpr uint64_t kNoWrite = UINT64_MAX;
  struct Write {
    io::IoOp op;
    uint64_t seq = kNoWrite;  // its sequence number while in flight
  };
  Status OnBlocks(const FrameHeader& h);
  Status OnPage(const Frame& f);
  Status WaitWrites(bool all);
  Status Reap(bool wait_one);
  Status SendAcks();
  Status EnsurePack(uint64_t bytes);
  Result<unsigned> FreeBuffer();

  ServerContext& ctx_;
  Conn& conn_;
  BackupSession& s_;
  StripeState& st_;
  uint32_t id_;
  uint32_t block_size_;
  uint64_t buffer_bytes_ = 0;
  unsigned buffers_ = 0;  // receive buffers reserved (ReserveBuffers)
  // The writes and buffers outlive the ring, whose destructor waits for the
  // writes still in flight.
  std::vector<Write> writes_;
  io::BufferPool pool_;
  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<TableReader> parent_;
  // Blocks of the current page received so far, by index in the page.
  std::vector<Entry> received_ = std::vector<Entry>(kPageEntries);
  std::vector<uint8_t> have_ = std::vector<uint8_t>(kPageEntries);
  uint32_t received_count_ = 0;
  std::vector<io::IoOp*> done_;
  std::vector<uint8_t> meta_;     // a BLOCKS frame's ids and digests
  std::vector<Entry> entries_;    // ... as entries
  // Pages are acknowledged once every write queued before their PAGE frame
  // completed: (page, writes queued by then).
  std::deque<std::pair<uint64_t, uint64_t>> acks_;
  uint64_t next_write_seq_ = 0;
  Status write_error_;
};

Status StripeReceiver::Reap(bool wait_one) {
  if (ring_->in_flight() == 0) return write_error_;
  done_.clear();
  DP420_RETURN_IF_ERROR(ring_->Wait(wait_one ? 1 : 0, &done_));
  for (io::IoOp* op : done_) {
    Write* w = static_cast<Write*>(op->owner);
    w->seq = kNoWrite;
    pool_.Release(static_cast<unsigned>(w - writes_.data()));
    if (write_error_.ok() && op->result != 0) write_error_ = io::IoOpStatus(*op, st_.pack->path());
  }
  return write_error_;
}

Status StripeReceiver::WaitWrites(bool all) {
  do {
    DP420_RETURN_IF_ERROR(Reap(true));
  } while (all && ring_->in_flight() > 0);
  return Status::Ok();
}

Status StripeReceiver::SendAcks() {
  if (acks_.empty()) return Status::Ok();
  // Every write numbered below the oldest one still in flight has completed.
  uint64_t done_below = next_write_seq_;
  for (const Write& w : writes_) done_below = std::min(done_below, w.seq);
  while (!acks_.empty() && acks_.front().second <= done_below) {
    PayloadWriter ack;
    ack.U64(acks_.front().first);
    acks_.pop_front();
    DP420_RETURN_IF_ERROR(conn_.Send(FrameType::kAck, 0, ack.bytes(), ctx_.options.LossTimeout()));
  }
  return Status::Ok();
}

Result<unsigned> StripeReceiver::FreeBuffer() {
  for (;;) {
    auto b = pool_.Acquire();
    if (b) return *b;
    DP420_RETURN_IF_ERROR(WaitWrites(false));
  }
}

Status StripeReceiver::EnsurePack(uint64_t bytes) {
  if (st_.pack && !st_.pack->Full(bytes)) return Status::Ok();
  if (st_.pack) {
    DP420_RETURN_IF_ERROR(WaitWrites(true));
    DP420_RETURN_IF_ERROR(st_.pack->Finish());
    st_.bytes_written += st_.pack->final_size();
    st_.pack.reset();
  }
  DP420_ASSIGN_OR_RETURN(PackWriter w, s_.builder().NewPack(true));
  st_.pack = std::make_unique<PackWriter>(std::move(w));
  return Status::Ok();
}

// BLOCKS: u64 first_block, u32 n, n x (id[16], sha256[32]), then the bytes
// of blocks first_block .. first_block+n-1.
Status StripeReceiver::OnBlocks(const FrameHeader& h) {
  Millis timeout = ctx_.options.LossTimeout();
  uint8_t fixed[12];
  const uint32_t plain_len = Conn::PlainLen(h);
  if (plain_len < sizeof(fixed)) return Violation("BLOCKS frame too short");
  // What RecvOpen delivers is checked for bounds only until EndOpen has
  // authenticated the whole frame; nothing is written before that.
  DP420_RETURN_IF_ERROR(conn_.BeginOpen(h));
  DP420_RETURN_IF_ERROR(conn_.RecvOpen(fixed, sizeof(fixed), timeout));
  PayloadReader r({fixed, sizeof(fixed)});
  uint64_t first = r.U64();
  uint32_t n = r.U32();
  const SnapshotBuilder& b = s_.builder();
  uint64_t page = st_.next_page;
  if (n == 0 || n > kPageEntries || first / kPageEntries != page ||
      (first + n - 1) / kPageEntries != page || first + n > b.blocks()) {
    return Violation("BLOCKS " + std::to_string(first) + "+" + std::to_string(n) +
                           " outside page " + std::to_string(page) + " of stripe " +
                           std::to_string(id_));
  }
  uint64_t data_len = 0;
  for (uint32_t i = 0; i < n; ++i) data_len += b.BlockLen(first + i);
  uint64_t meta_len = uint64_t{n} * 48;
  if (plain_len != sizeof(fixed) + meta_len + data_len || data_len + kRecordAlign > buffer_bytes_) {
    return Violation("BLOCKS frame length " + std::to_string(plain_len) +
                           " does not match its " + std::to_string(n) + " blocks");
  }
  std::vector<uint8_t>& meta = meta_;  // reused: no allocation per frame
  meta.resize(meta_len);
  DP420_RETURN_IF_ERROR(conn_.RecvOpen(meta.data(), meta.size(), timeout));
  DP420_ASSIGN_OR_RETURN(unsigned buffer, FreeBuffer());
  uint8_t* data = pool_.data(buffer);
  Status received = conn_.RecvOpen(data, data_len, timeout);
  if (received.ok()) received = conn_.EndOpen(timeout);
  if (!received.ok()) {
    pool_.Release(buffer);
    return received;
  }
  // Every block must hash to the keyed id the agent claims: the id, not the
  // agent's word, is what later backups diff against. The SHA-256 is the
  // agent's own and is not recomputed here (docs/SECURITY.md "Block
  // identities": a false one breaks only the agent's own volume, and verify
  // and restore find it).
  uint64_t off = 0;
  std::vector<Entry>& entries = entries_;
  entries.assign(n, Entry{});
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len = b.BlockLen(first + i);
    Entry& e = entries[i];
    std::memcpy(e.id, &meta[i * 48], 16);
    std::memcpy(e.ref.sha256, &meta[i * 48 + 16], 32);
    uint8_t id[16];
    b.hasher().Hash(data + off, len).ToBytes(id);
    if (std::memcmp(id, e.id, 16) != 0) {
      pool_.Release(buffer);
      return Status::Corruption("block " + std::to_string(first + i) +
                                " does not match its id (refused)");
    }
    off += len;
  }
  uint64_t padded = RoundUp(data_len, kRecordAlign);
  if (!s_.Charge(padded)) {
    pool_.Release(buffer);
    return s_.QuotaExceeded();
  }
  if (padded != data_len) std::memset(data + data_len, 0, padded - data_len);
  Status packed = EnsurePack(padded);
  if (!packed.ok()) {
    pool_.Release(buffer);
    return packed;
  }
  uint64_t pack_offset = 0;
  uint64_t at = 0;
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len = b.BlockLen(first + i);
    st_.pack->Reserve(len, &entries[i].ref, data + at);
    at += len;
    if (i == 0) pack_offset = entries[i].ref.offset_bytes();
    uint32_t k = static_cast<uint32_t>((first + i) % kPageEntries);
    received_count_ += have_[k] ? 0 : 1;
    have_[k] = 1;
    received_[k] = entries[i];
  }
  Write& w = writes_[buffer];
  w.seq = next_write_seq_++;
  w.op = io::IoOp{};
  w.op.kind = io::IoOp::kWrite;
  w.op.fd = st_.pack->fd();
  w.op.buf = data;
  w.op.buf_index = pool_.registered() ? int(buffer) : -1;
  w.op.len = static_cast<uint32_t>(padded);
  w.op.offset = pack_offset;
  w.op.owner = &w;
  ring_->Queue(&w.op);  // submitted by the next Reap, with what finished
  st_.bytes_received += data_len;
  return Status::Ok();
}

// PAGE: u64 page, u32 count, count x (u8 verdict, id[16]). Builds the leaf
// from the parent's entries, the zero entry and the received blocks, and
// never from what the agent claims alone.
Status StripeReceiver::OnPage(const Frame& f) {
  auto msg = std::make_unique<PageMsg>();
  ParsePage(f.payload, 16, "PAGE", msg.get());
  uint64_t page = msg->page;
  uint32_t count = msg->count;
  const SnapshotBuilder& b = s_.builder();
  uint64_t expect = std::min<uint64_t>(kPageEntries, b.blocks() - std::min(b.blocks(), page * kPageEntries));
  if (!msg->head_ok || page != st_.next_page || count != expect) {
    return Violation("PAGE " + std::to_string(page) + " out of order on stripe " +
                           std::to_string(id_) + " (expected page " +
                           std::to_string(st_.next_page) + ")");
  }
  auto leaf = std::make_unique<LeafPage>();
  leaf->index = page;
  leaf->count = count;
  const Entry* parent = nullptr;
  uint32_t parent_count = 0;
  if (parent_ && page < parent_->shape().PagesAt(0) &&
      page * kPageEntries < parent_->shape().blocks) {
    DP420_ASSIGN_OR_RETURN(parent, parent_->Leaf(page, &parent_count));
  }
  uint64_t changed = 0, zero = 0, stored = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (i >= msg->entries) break;  // the payload ended: msg->finish says so
    uint8_t verdict = msg->kind[i];
    const uint8_t* id = msg->bytes[i].data();
    uint64_t block = page * kPageEntries + i;
    uint32_t len = b.BlockLen(block);
    Entry& e = leaf->entries[i];
    const Entry* old = i < parent_count ? &parent[i] : nullptr;
    auto where = [block] { return "block " + std::to_string(block); };
    if (verdict == kUnchanged) {
      if (!old) {
        return Violation(where() + ": announced as unchanged, but the parent has no such block "
                                   "(or there is no parent)");
      }
      if (std::memcmp(old->id, id, 16) != 0) {
        return Status::InvalidArgument(
            where() + ": the agent's copy of the parent table differs from the server's "
                    "(its cache is stale); nothing was committed");
      }
      if (s_.Lost(*old)) {
        // The agent fetches the parent's table again, which marks such
        // blocks, and sends them (kParentCopyLost).
        return Status::Corruption(where() + ": " + kParentCopyLost + " (pack " +
                                  PackName(old->ref.pack_id) + " is missing or damaged); "
                                  "nothing was committed");
      }
      e = *old;
    } else if (verdict == kZero) {
      e = b.ZeroEntry(len);
      if (std::memcmp(e.id, id, 16) != 0) {
        return Violation(where() + ": announced as zero with another id");
      }
      if (old && !(old->ref.flags & kObjZero)) ++changed;
    } else if (verdict == kData) {
      if (!have_[i] || std::memcmp(received_[i].id, id, 16) != 0) {
        return Violation(where() + ": announced as changed but its data was not received");
      }
      e = received_[i];
      ++changed;
      ++stored;
    } else {
      return Violation(where() + ": unknown verdict " + std::to_string(verdict));
    }
    if (e.ref.flags & kObjZero) ++zero;
  }
  DP420_RETURN_IF_ERROR(msg->finish);
  if (received_count_ != stored) {
    return Violation("page " + std::to_string(page) +
                           ": blocks were sent that the page does not reference");
  }
  while (!s_.builder().queue().WaitForRoomFor(page, ctx_.options.heartbeat_interval)) {
    if (s_.aborted() || s_.builder().queue().aborted()) return Status::Network("backup aborted");
  }
  s_.builder().queue().Put(std::move(leaf));
  std::fill(have_.begin(), have_.end(), 0);
  received_count_ = 0;
  st_.blocks_changed += changed;
  st_.blocks_zero += zero;
  st_.blocks_stored += stored;
  st_.next_page = page + s_.stripes();
  // Acknowledged once its blocks are in the pack (SendAcks).
  acks_.emplace_back(page, next_write_seq_);
  return Status::Ok();
}

Status StripeReceiver::Run() {
  Millis timeout = ctx_.options.LossTimeout();
  for (;;) {
    DP420_RETURN_IF_ERROR(Reap(false));
    DP420_RETURN_IF_ERROR(SendAcks());
    if (!acks_.empty()) {
      // Nothing to read right now: wait for one write and acknowledge what it
      // completes, then look at the socket again (waiting for all of them
      // would leave the agent's data unread meanwhile).
      pollfd pfd{conn_.fd(), POLLIN, 0};
      if (poll(&pfd, 1, 0) == 0) {
        DP420_RETURN_IF_ERROR(WaitWrites(false));
        DP420_RETURN_IF_ERROR(SendAcks());
        continue;
      }
    }
    auto header = conn_.RecvHeader(timeout);
    if (!header.ok()) {
      // The agent closes its side once every page of the stripe is acknowledged.
      if (st_.next_page >= s_.builder().pages() && header.status().code() == Code::kNetwork) {
        return Status::Ok();
      }
      return header.status();
    }
    FrameType type = static_cast<FrameType>(header->type);
    if (type == FrameType::kBlocks) {
      DP420_RETURN_IF_ERROR(OnBlocks(*header));
      continue;
    }
    DP420_ASSIGN_OR_RETURN(Frame f, conn_.RecvPayload(*header, timeout));
    switch (type) {
      case FrameType::kPage: DP420_RETURN_IF_ERROR(OnPage(f)); break;
      case FrameType::kPing: DP420_RETURN_IF_ERROR(AnswerPing(conn_, f, timeout)); break;
      case FrameType::kPong: break;
      case FrameType::kError: return StatusFromError(f, conn_.peer());
      default:
        return Violation("unexpected frame type " + std::to_string(header->type) +
                               " on a stripe");
    }
  }
}

}  // namespace

namespace {

// After an ERROR on a stripe the agent may still be sending blocks: closing
// with them unread would reset the connection, and a reset can discard the
// ERROR before the agent reads it. So the sending side is shut, and what
// arrives is read and dropped until the agent closes (it does on reading
// the ERROR), for at most `most`.
void LingerAfterError(Conn& conn, Millis most) {
  if (::shutdown(conn.fd(), SHUT_WR) != 0) return;
  auto until = Clock::now() + most;
  char sink[64 * 1024];
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(until - Clock::now()).count();
    if (left <= 0) return;
    pollfd p{conn.fd(), POLLIN, 0};
    int r = poll(&p, 1, int(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    ssize_t n = io::sys::Recv(conn.fd(), sink, sizeof(sink), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return;
  }
}

}  // namespace

Status HandleStripe(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& join) {
  Millis timeout = ctx.options.LossTimeout();
  std::string token;
  uint32_t stripe = 0;
  Status parsed = ParseStripeJoin(join.payload, &token, &stripe);
  std::shared_ptr<BackupSession> s = parsed.ok() ? ctx.backups.Find(token) : nullptr;
  if (!parsed.ok() || !s || s->who().client != who.client || stripe >= s->stripes()) {
    Status gone = parsed.ok() ? Status::NotFound("backup session " + token +
                                                 " is unknown to the server (it restarted or "
                                                 "gave up)")
                              : parsed;
    (void)SendError(conn, gone, timeout);
    return gone;
  }
  StripeState& st = s->stripe(stripe);
  s->AttachStripe(st, &conn);  // wakes a connection still serving it
  std::lock_guard lock(st.mu);
  if (s->aborted()) return Status::Network("backup aborted");
  StripeReceiver receiver(ctx, conn, *s, st, stripe);
  // An exception fails the whole backup (below) after the stripe detached.
  // STRIPE_READY goes out once the stripe's buffers are reserved.
  Status status = RunGuarded("stripe " + std::to_string(stripe), [&] {
    DP420_RETURN_IF_ERROR(receiver.Setup());
    PayloadWriter w;
    w.U64(st.next_page);
    DP420_RETURN_IF_ERROR(conn.Send(FrameType::kStripeReady, 0, w.bytes(), timeout));
    return receiver.Run();
  });
  // Pages were handed to the table before their writes completed: a failed
  // write must fail the backup, whatever happened to the connection.
  Status flushed = receiver.Flush();
  if (!flushed.ok() && flushed.code() != Code::kNetwork) status = flushed;
  s->DetachStripe(st, &conn);
  if (!status.ok() && (status.code() != Code::kNetwork || receiver.violated())) {
    // The agent sent something unacceptable: the whole backup fails.
    (void)SendError(conn, status, timeout);
    ctx.log.Warn("backup refused", {{"client", who.client}, {"error", status.ToString()}});
    ctx.backups.Remove(token, status);
    LingerAfterError(conn, Millis(1000));
  }
  return status;
}

}  // namespace dp420::net
