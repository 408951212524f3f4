#include "engine/net/group_serve.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <set>
#include <thread>

#include "engine/core/text.h"
#include "engine/net/payloads.h"
#include "engine/net/volumes.h"

namespace dp420::net {

namespace {

using OJson = nlohmann::ordered_json;
using control::GroupMsg;
using control::GroupMsgKind;

constexpr Millis kCoordinatorTurn{20};
constexpr size_t kMaxGroupMembers = 64;

// Splits "CLIENT:VOLUME"; false when it is not one.
bool SplitMember(const std::string& member, std::string* client, std::string* volume) {
  size_t colon = member.find(':');
  if (colon == std::string::npos || colon == 0 || colon > kClientNameMax) return false;
  *client = member.substr(0, colon);
  *volume = member.substr(colon + 1);
  return ValidVolumeName(*volume);
}

int64_t MsField(const Json& args, const char* name, int64_t fallback_ns) {
  if (!args.contains(name)) return fallback_ns;
  const Json& v = args.at(name);
  if (!v.is_number_unsigned()) return -1;  // refused by Validate
  return int64_t(std::min<uint64_t>(v.get<uint64_t>(), uint64_t{1} << 40)) * 1'000'000;
}

}  // namespace

std::string MemberVolume(const Repository& repo, const std::string& member) {
  std::string client, volume;
  if (!SplitMember(member, &client, &volume)) return "";
  SessionInfo as{client, "append", "", 0, ""};
  auto v = ResolveVolume(repo, as, volume, /*for_backup=*/true);
  return v.ok() && v->owner == client ? v->repo : "";
}

Result<GroupBackupRequest> ParseGroupBackupRequest(const Json& args) {
  GroupBackupRequest r;
  if (!args.contains("group") || !args.at("group").is_string()) {
    return Status::InvalidArgument("group-backup needs a group name");
  }
  r.group = args.at("group").get<std::string>();
  if (!ValidGroupName(r.group)) {
    return Status::InvalidArgument("invalid group name '" + EscapeBytes(r.group) +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -, not starting with .)");
  }
  if (!args.contains("members") || !args.at("members").is_array() ||
      args.at("members").empty() || args.at("members").size() > kMaxGroupMembers) {
    return Status::InvalidArgument("group-backup needs 1 to " + std::to_string(kMaxGroupMembers) +
                                   " members CLIENT:VOLUME");
  }
  std::set<std::string> seen;
  for (const auto& m : args.at("members")) {
    std::string client, volume;
    std::string name = m.is_string() ? m.get<std::string>() : "";
    if (!SplitMember(name, &client, &volume) || CheckTextField("member", name, 128).code() != Code::kOk) {
      return Status::InvalidArgument("member '" + EscapeBytes(name) + "' is not CLIENT:VOLUME");
    }
    if (!seen.insert(name).second) {
      return Status::InvalidArgument("member '" + name + "' is named twice");
    }
  }
  r.members.assign(seen.begin(), seen.end());
  control::GroupTimeouts& t = r.timeouts;
  t.prepare_ns = MsField(args, "prepare_ms", t.prepare_ns);
  t.cut_ns = MsField(args, "cut_ms", t.cut_ns);
  t.heartbeat_ns = MsField(args, "heartbeat_ms", t.heartbeat_ns);
  t.max_skew_ns = MsField(args, "max_skew_ms", t.max_skew_ns);
  t.transfer_ns = MsField(args, "transfer_ms", t.transfer_ns);
  DP420_RETURN_IF_ERROR(t.Validate().Prefix("group-backup"));
  if (t.heartbeat_ns < 1'000'000'000) {
    // Agents beat every second: a shorter bound would call them lost.
    return Status::InvalidArgument("group-backup: heartbeat_ms below 1000");
  }
  return r;
}

// ---- the repository's side, under GroupService::mu_ ----

class GroupService::Store : public control::GroupStore {
 public:
  explicit Store(GroupService& s) : s_(s) {}

  Result<uint64_t> BeginEpoch(const std::string& group) override {
    return BeginGroupEpoch(s_.repo_, group);
  }

  Result<std::optional<std::string>> Staged(const std::string& group, uint64_t epoch,
                                            const std::string& member) const override {
    // Held here (its builder and volume lock alive) and on disk with a seal.
    if (!s_.staged_.count(Key{group, epoch, member})) return std::optional<std::string>();
    std::string volume = MemberVolume(s_.repo_, member);
    if (volume.empty()) return std::optional<std::string>();
    return StagedSeal(s_.repo_, group, epoch, volume);
  }

  Status Commit(const control::GroupCommit& c) override {
    std::vector<GroupMemberRecord> records;
    for (const auto& m : c.members) {
      GroupMemberRecord r;
      r.member = m.member;
      r.volume = MemberVolume(s_.repo_, m.member);
      r.manifest_seal = m.manifest_hash;
      r.skew_ns = m.skew_ns;
      r.skew_error_ns = m.skew_error_ns;
      records.push_back(std::move(r));
    }
    auto committed = CommitGroup(s_.repo_, c.group, c.epoch, std::move(records),
                                 s_.tool_version_);
    if (!committed.ok() && State(c.group, c.epoch) != EpochState::kCommitted) {
      return committed.status();
    }
    if (committed.ok()) s_.committed_[{c.group, c.epoch}] = *committed;
    // Durable: publish each member now (what fails here the next writer of
    // the volume, or the server's next start, rolls forward).
    Status published = PublishAll(c.group, c.epoch);
    return committed.ok() ? published : committed.status();
  }

  void Abort(const std::string& group, uint64_t epoch) override {
    Status s = AbortGroupEpoch(s_.repo_, group, epoch);
    if (!s.ok()) {
      s_.log_.Warn("group abort", {{"group", group}, {"epoch", epoch}, {"error", s.ToString()}});
    }
    if (State(group, epoch) == EpochState::kCommitted) return;
    // Dropping the sessions rolls their staged snapshots back.
    std::erase_if(s_.staged_, [&](const auto& kv) {
      return std::get<0>(kv.first) == group && std::get<1>(kv.first) == epoch;
    });
  }

  EpochState State(const std::string& group, uint64_t epoch) const override {
    auto st = GroupEpochStateOf(s_.repo_, group, epoch);
    if (!st.ok()) return EpochState::kOpen;  // cannot tell: neither committed nor ended
    switch (*st) {
      case GroupEpochState::kOpen: return EpochState::kOpen;
      case GroupEpochState::kCommitted: return EpochState::kCommitted;
      case GroupEpochState::kAborted: return EpochState::kAborted;
    }
    return EpochState::kOpen;
  }

 private:
  Status PublishAll(const std::string& group, uint64_t epoch) {
    Status first;
    for (auto it = s_.staged_.begin(); it != s_.staged_.end();) {
      if (std::get<0>(it->first) != group || std::get<1>(it->first) != epoch) {
        ++it;
        continue;
      }
      Status p = it->second.publish();
      if (!p.ok()) {
        s_.log_.Warn("group member not published", {{"group", group}, {"epoch", epoch},
                                                    {"member", std::get<2>(it->first)},
                                                    {"error", p.ToString()}});
        if (first.ok()) first = p;
      }
      it = s_.staged_.erase(it);
    }
    return first;
  }

  GroupService& s_;
};

// Frames for one member channel, queued by the coordinators (under mu_) and
// sent by the channel's own session thread: no socket is written under mu_,
// so an agent that stops reading stalls only its own channel.
struct GroupService::Outbox {
  static constexpr size_t kMax = 1024;  // beyond: dropped, as a network would
  std::mutex mu;
  std::deque<std::vector<uint8_t>> frames;
  int wake = -1;  // eventfd: the session thread polls it beside its socket
  Outbox() : wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~Outbox() {
    if (wake >= 0) close(wake);
  }
  void Push(std::vector<uint8_t> frame) {
    {
      std::lock_guard lock(mu);
      if (frames.size() >= kMax) return;
      frames.push_back(std::move(frame));
    }
    uint64_t one = 1;
    (void)!write(wake, &one, sizeof(one));
  }
  std::deque<std::vector<uint8_t>> Take() {
    uint64_t n = 0;
    (void)!read(wake, &n, sizeof(n));
    std::lock_guard lock(mu);
    return std::exchange(frames, {});
  }
};

// ---- messages to members, under GroupService::mu_ ----

class GroupService::Transport : public control::GroupTransport {
 public:
  explicit Transport(GroupService& s) : s_(s) {}
  void Send(const std::string& to, const GroupMsg& msg) override {
    auto it = s_.channels_.find(to);
    if (it == s_.channels_.end()) return;  // not connected: lost, as on a network
    PayloadWriter w;
    WriteGroupMsg(msg, &w);
    it->second.out->Push(w.bytes());
  }

 private:
  GroupService& s_;
};

GroupService::GroupService(const Repository& repo, Logger& log, std::string tool_version)
    : repo_(repo), log_(log), tool_version_(std::move(tool_version)), store_(std::make_unique<Store>(*this)),
      transport_(std::make_unique<Transport>(*this)) {}

GroupService::~GroupService() = default;

void GroupService::StopAll() {
  std::lock_guard lock(mu_);
  stopping_ = true;
}

Status GroupService::CheckStaging(const std::string& group, uint64_t epoch,
                                  const std::string& member) {
  std::lock_guard lock(mu_);
  auto it = running_.find(group);
  if (it == running_.end() || it->second->epoch() != epoch || it->second->done()) {
    return Status::Busy("group '" + group + "' epoch " + std::to_string(epoch) +
                        " is not running on this server (ended, or fenced by a newer one)");
  }
  if (it->second->phase() != control::GroupCoordinator::Phase::kTransferring &&
      it->second->phase() != control::GroupCoordinator::Phase::kCutting) {
    return Status::Busy("group '" + group + "' epoch " + std::to_string(epoch) +
                        " has not cut yet");
  }
  const auto& names = it->second->members();
  if (!std::binary_search(names.begin(), names.end(), member)) {
    return Status::Make(Code::kPermission, "'" + member + "' is not a member of group '" + group +
                                               "' epoch " + std::to_string(epoch));
  }
  return Status::Ok();
}

void GroupService::AddStaged(const std::string& group, uint64_t epoch, const std::string& member,
                             StagedMember staged) {
  std::unique_lock lock(mu_);
  auto it = running_.find(group);
  if (it == running_.end() || it->second->epoch() != epoch || it->second->done()) {
    lock.unlock();
    staged.hold.reset();  // ended meanwhile: rolled back (outside the lock)
    return;
  }
  staged_[Key{group, epoch, member}] = std::move(staged);
}

// Answers to messages of epochs no coordinator runs, per channel: each is a
// repository read under mu_, so a member cannot make the server do them
// without bound.
class EndedEpochBudget {
 public:
  bool Take() {
    auto now = std::chrono::steady_clock::now();
    if (now - since_ > std::chrono::seconds(1)) {
      since_ = now;
      used_ = 0;
    }
    return ++used_ <= kPerSecond;
  }

 private:
  static constexpr int kPerSecond = 20;
  std::chrono::steady_clock::time_point since_{};
  int used_ = 0;
};

Result<std::set<std::string>> GroupService::JoinMembers(Request& rq) {
  std::vector<std::string> volumes;
  if (Status s = ParseGroupJoin(rq.frame.payload, &volumes); !s.ok()) {
    return Status::Network("malformed GROUP_JOIN: " + s.message());
  }
  std::set<std::string> mine;
  for (const auto& v : volumes) {
    std::string member = rq.who.client + ":" + v;
    if (MemberVolume(repo_, member).empty()) {
      return Status::InvalidArgument("volume '" + v + "' cannot be client '" + rq.who.client +
                                     "''s (its name is too long, or it holds another client's "
                                     "snapshots)");
    }
    mine.insert(member);
  }
  rq.ctx.log.Info("group members joined", {{"client", rq.who.client},
                                          {"session", rq.who.session_id}, {"volumes", volumes}});
  OJson joined = OJson::object();
  joined["members"] = std::vector<std::string>(mine.begin(), mine.end());
  // Answered before anything of the protocol can reach the agent.
  DP420_RETURN_IF_ERROR(rq.Done(joined));
  return mine;
}

// One frame from the agent on its channel.
Status GroupService::OnChannelFrame(Request& rq, const std::set<std::string>& mine,
                                    EndedEpochBudget& budget) {
  DP420_ASSIGN_OR_RETURN(Frame f, rq.conn.Recv(rq.timeout()));
  rq.liveness.Heard();
  if (f.type() == FrameType::kPing) return AnswerPing(rq.conn, f, rq.timeout());
  if (f.type() == FrameType::kPong) return Status::Ok();
  if (f.type() != FrameType::kGroupMsg) {
    return Status::Network("agent sent " + FrameTypeName(f.header.type) + " on its group channel");
  }
  GroupMsg msg;
  DP420_RETURN_IF_ERROR(ParseGroupMsg(f.payload, &msg));
  if (!mine.count(msg.member)) {
    return Status::Make(Code::kPermission, "GROUP_MSG for member '" + msg.member +
                                               "', which this connection did not join as");
  }
  std::lock_guard lock(mu_);
  auto targets = router_.Targets(msg);
  if (targets.empty()) {
    if (budget.Take()) control::AnswerForEndedEpoch(*store_, *transport_, msg);
    return Status::Ok();
  }
  for (auto* c : targets) c->OnMessage(msg);
  return Status::Ok();
}

Status GroupService::ServeMembers(Request& rq) {
  DP420_ASSIGN_OR_RETURN(std::set<std::string> mine, JoinMembers(rq));
  auto out = std::make_shared<Outbox>();
  if (out->wake < 0) return PosixError("eventfd for a group channel", errno);
  {
    std::lock_guard lock(mu_);
    for (const auto& m : mine) channels_[m] = Channel{out};
  }
  // Whatever ends this channel (an error, an exception) unregisters it.
  struct Unregister {
    GroupService& s;
    const std::set<std::string>& mine;
    const Outbox* out;
    ~Unregister() {
      std::lock_guard lock(s.mu_);
      for (const auto& m : mine) {
        auto it = s.channels_.find(m);
        if (it != s.channels_.end() && it->second.out.get() == out) s.channels_.erase(it);
      }
    }
  } unregister{*this, mine, out.get()};
  EndedEpochBudget budget;
  rq.liveness.Heard();
  Status served;
  while (served.ok() && !rq.ctx.stopping.load()) {
    pollfd p[2] = {{rq.conn.fd(), POLLIN, 0}, {out->wake, POLLIN, 0}};
    int r = poll(p, 2, 50);
    if (r < 0 && errno != EINTR) return PosixError("poll " + rq.conn.peer(), errno);
    if (r > 0 && (p[1].revents & POLLIN)) {
      for (const auto& frame : out->Take()) {
        served = rq.conn.Send(FrameType::kGroupMsg, 0, frame, rq.timeout());
        if (!served.ok()) break;
        rq.liveness.Sent();
      }
    }
    if (served.ok() && r > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      served = OnChannelFrame(rq, mine, budget);
    }
    if (served.ok() && rq.liveness.Lost()) {
      served = Status::Network("agent " + rq.conn.peer() + " stopped answering heartbeats");
    }
    if (served.ok()) served = rq.Tick();
  }
  return served;
}

Status GroupService::RunGroupBackup(Request& rq, const Json& args) {
  if (rq.who.role != "admin") {
    return Status::Make(Code::kPermission, "group-backup needs an admin client: client '" + rq.who.client +
                              "' is not one");
  }
  DP420_ASSIGN_OR_RETURN(GroupBackupRequest req, ParseGroupBackupRequest(args));
  std::atomic<bool> cancel{false};
  Result<OJson> summary = Status::Internal("group backup did not run");
  DP420_RETURN_IF_ERROR(RunKeptAlive(rq, cancel, [&] {
    summary = RunGuarded("group backup", [&] { return RunCoordinator(rq, req, cancel); });
  }));
  DP420_RETURN_IF_ERROR(summary.status());
  return rq.Done(*summary);
}

Status GroupService::CheckMembers(const GroupBackupRequest& req) const {
  if (stopping_) return Status::Busy("the server is stopping");
  // One at a time: epochs fence across groups (the repository commits only the
  // newest), so a second group would abort the first at its commit.
  if (!running_.empty()) {
    const auto& [group, c] = *running_.begin();
    return Status::Busy("group '" + group + "' is backing up (epoch " +
                        std::to_string(c->epoch()) + "): one group backup at a time on a "
                        "server; try again when it ended");
  }
  for (const auto& m : req.members) {
    if (MemberVolume(repo_, m).empty()) {
      return Status::InvalidArgument("member '" + m + "': no such client volume can be "
                                     "backed up (its name is too long, or the volume holds "
                                     "another client's snapshots)");
    }
    if (!channels_.count(m)) {
      std::string client = m.substr(0, m.find(':'));
      return Status::NotFound("member '" + m + "' is not connected: no dp420 agent of client '" +
                              client + "' serves volume '" + m.substr(m.find(':') + 1) + "'");
    }
  }
  return Status::Ok();
}

// Runs one coordinator to its end, turning it every kCoordinatorTurn; the
// summary DONE reports.
Result<OJson> GroupService::RunCoordinator(Request& rq, const GroupBackupRequest& req,
                                           const std::atomic<bool>& cancel) {
  std::unique_lock lock(mu_);
  DP420_RETURN_IF_ERROR(CheckMembers(req));
  DP420_ASSIGN_OR_RETURN(uint64_t epoch, store_->BeginEpoch(req.group));
  control::GroupCoordinator c(req.group, req.members, epoch, control::SystemClock(), *transport_,
                              *store_, req.timeouts);
  running_[req.group] = &c;
  router_.Add(&c);
  // Unregistered on every way out (an exception too), under mu_.
  struct Unregister {
    GroupService& s;
    control::GroupCoordinator& c;
    std::unique_lock<std::mutex>& lock;
    ~Unregister() {
      if (!lock.owns_lock()) lock.lock();
      s.router_.Remove(&c);
      s.running_.erase(c.group());
    }
  } unregister{*this, c, lock};
  rq.ctx.log.Info("group backup started", {{"client", rq.who.client}, {"group", req.group},
                                           {"epoch", epoch}, {"members", req.members}});
  c.Start();
  while (!c.done()) {
    lock.unlock();
    std::this_thread::sleep_for(kCoordinatorTurn);
    lock.lock();
    if (cancel.load()) c.Cancel(Status::Canceled("the admin that asked for it was lost"));
    if (stopping_) c.Cancel(Status::Canceled("the server is stopping"));
    c.Tick();
  }
  OJson summary = Summary(c);
  committed_.erase({req.group, epoch});
  rq.ctx.log.Info(c.phase() == control::GroupCoordinator::Phase::kCommitted ? "group committed"
                                                                           : "group aborted",
                  summary);
  return summary;
}

// What DONE says of a coordinator that ended (under mu_).
nlohmann::ordered_json GroupService::Summary(const control::GroupCoordinator& c) const {
  const bool ok = c.phase() == control::GroupCoordinator::Phase::kCommitted;
  const auto& t = c.timeline();
  auto ms = [](int64_t from, int64_t to) -> OJson {
    return from > 0 && to > 0 ? OJson(double(to - from) / 1e6) : OJson(nullptr);
  };
  OJson j;
  j["group"] = c.group();
  j["epoch"] = c.epoch();
  j["outcome"] = ok ? "committed" : "aborted";
  if (!ok) {
    j["error"] = c.outcome().message();
    j["code"] = int(c.outcome().code());
  }
  j["prepare_ms"] = ms(t.started, t.all_quiet);  // PREPARE to every member holding
  j["cut_ms"] = ms(t.started, t.all_cut);        // PREPARE to every member cut
  j["total_ms"] = ms(t.started, t.ended);
  auto it = committed_.find({c.group(), c.epoch()});
  if (ok && it != committed_.end()) {
    j["group_snapshot_id"] = it->second.group_snapshot_id;
    j["file"] = "groups/" + c.group() + "/" + it->second.file_name;
  }
  OJson members = OJson::array();
  for (const auto& r : c.results()) {
    OJson m = {{"member", r.member}, {"volume", QualifiedName(MemberVolume(repo_, r.member))}};
    if (ok && it != committed_.end()) {
      for (const auto& rec : it->second.members) {
        if (rec.member == r.member) m["snapshot_id"] = rec.snapshot_id;
      }
    }
    m["manifest_sha256"] = r.manifest_hash;
    m["skew_ms"] = double(r.skew_ns) / 1e6;
    m["skew_error_ms"] = double(r.skew_error_ns) / 1e6;
    members.push_back(std::move(m));
  }
  j["members"] = std::move(members);
  return j;
}

}  // namespace dp420::net
