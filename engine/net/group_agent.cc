#include "engine/net/group_agent.h"

#include <poll.h>

#include <charconv>
#include <condition_variable>
#include <deque>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "engine/control/group.h"
#include "engine/control/topology.h"
#include "engine/core/text.h"
#include "engine/net/payloads.h"
#include "engine/net/server.h"  // RunGuarded
#include "io/file.h"

namespace dp420::net {

namespace {

using control::GroupMsg;
using Clock = std::chrono::steady_clock;
constexpr Millis kLoopSlice{50};

// ---- --volume NAME=SOURCE[,KEY=VALUE]... ----

Result<uint64_t> ParseCount(const std::string& key, const std::string& value, uint64_t max) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size() || v == 0 || v > max) {
    return Status::InvalidArgument("--volume option " + key + "=" + EscapeBytes(value) +
                                   ": a number from 1 to " + std::to_string(max) + " expected");
  }
  return v;
}

Status SetVolumeOption(AgentVolume* v, const std::string& key, const std::string& value) {
  if (key == "snapshot-source") {
    DP420_ASSIGN_OR_RETURN(v->pit.method, control::ParsePitMethod(value));
  } else if (key == "freeze-mount") {
    v->pit.freeze_mount = control::AbsolutePath(value);
  } else if (key == "max-freeze") {
    DP420_ASSIGN_OR_RETURN(uint64_t ms, ParseCount(key, value, 3'600'000));
    v->pit.max_freeze = std::chrono::milliseconds(ms);
  } else if (key == "hook-timeout") {
    DP420_ASSIGN_OR_RETURN(uint64_t ms, ParseCount(key, value, 86'400'000));
    v->pit.hook_timeout = std::chrono::milliseconds(ms);
  } else if (key == "pre-hook") {
    v->pit.pre_hook = value;
  } else if (key == "post-hook") {
    v->pit.post_hook = value;
  } else if (key == "block-size") {
    DP420_ASSIGN_OR_RETURN(uint64_t bytes, ParseCount(key, value, 4u << 20));
    v->block_size = uint32_t(bytes);
  } else if (key == "threads") {
    DP420_ASSIGN_OR_RETURN(uint64_t n, ParseCount(key, value, kMaxStripes));
    v->threads = unsigned(n);
  } else {
    return Status::InvalidArgument("--volume: unknown option '" + EscapeBytes(key) +
                                   "' (snapshot-source, freeze-mount, max-freeze, pre-hook, "
                                   "post-hook, hook-timeout, block-size, threads)");
  }
  return Status::Ok();
}

}  // namespace

// A member must hold its source while the others do (one instant across the
// group): a freeze of the file system on it, or a pre hook that quiesces the
// application. Copying (reflink) or reading live alone holds nothing.
Status CheckHolds(const AgentVolume& v) {
  using control::PitMethod;
  const bool freeze = (v.pit.method == PitMethod::kFsfreeze || v.pit.method == PitMethod::kAuto) &&
                      !v.pit.freeze_mount.empty();
  if (freeze || !v.pit.pre_hook.empty()) return Status::Ok();
  return Status::InvalidArgument(
      "--volume " + v.name + ": a group member must hold its source while the other members "
      "do: give freeze-mount=DIR (fsfreeze of the file system on a block device; a loop device "
      "over a file on XFS or btrfs is cloned while frozen), or pre-hook=CMD that quiesces the "
      "application; snapshot-source=" + control::PitMethodName(v.pit.method) +
      " alone holds nothing");
}

Result<AgentVolume> ParseAgentVolume(const std::string& spec) {
  AgentVolume v;
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Status::InvalidArgument("--volume '" + EscapeBytes(spec) + "' is not NAME=SOURCE[,OPTIONS]");
  }
  v.name = spec.substr(0, eq);
  if (!ValidVolumeName(v.name)) {
    return Status::InvalidArgument("--volume: invalid volume name '" + EscapeBytes(v.name) +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -)");
  }
  std::vector<std::string> parts;
  size_t at = eq + 1;
  for (;;) {
    size_t comma = spec.find(',', at);
    parts.push_back(spec.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  if (parts[0].empty()) return Status::InvalidArgument("--volume " + v.name + ": no source");
  v.source = control::AbsolutePath(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t e = parts[i].find('=');
    if (e == std::string::npos) {
      return Status::InvalidArgument("--volume " + v.name + ": option '" + EscapeBytes(parts[i]) +
                                     "' is not KEY=VALUE");
    }
    DP420_RETURN_IF_ERROR(SetVolumeOption(&v, parts[i].substr(0, e), parts[i].substr(e + 1)));
  }
  DP420_RETURN_IF_ERROR(CheckHolds(v));
  return v;
}

namespace {

// ---- one volume as a group member ----

// The volume's point in time, taken on a thread of its own: PointInTime::Take
// runs until the source is held, waits there (at_hold) for the cut or the
// release, then takes the point in time. Hold, Cut and Release are called by
// the agent's loop thread; the transfer runs on another thread and reports
// through `done`.
class PitVolume : public control::MemberVolume {
 public:
  using Done = std::function<void(uint64_t epoch, Result<BackupResult>)>;
  using GroupOf = std::function<std::string(uint64_t epoch)>;
  using Address = std::function<std::string()>;
  PitVolume(const AgentVolume& v, const AgentOptions& agent, GroupOf group_of, Address address,
            Done done)
      : v_(v), agent_(agent), group_of_(std::move(group_of)), address_(std::move(address)),
        done_(std::move(done)) {}
  ~PitVolume() override { Stop(); }

  Status Hold(uint64_t epoch, int64_t max_hold_ns) override;
  Status Cut(uint64_t epoch) override;
  void Release(uint64_t epoch) override { (void)epoch; Stop(); }
  void StartTransfer(uint64_t epoch) override;
  void Discard(uint64_t epoch) override { (void)epoch; Stop(); }
  // From another thread, when the coordinator aborted `epoch`: a hold still
  // being taken (a pre hook running) or a transfer of that epoch stops now,
  // not when the member's thread gets to the ABORT.
  void Interrupt(uint64_t epoch) {
    std::lock_guard lock(mu_);
    if (epoch != epoch_) return;
    cancel_.store(true);
    if (step_ == Step::kHolding) step_ = Step::kReleased;
    cv_.notify_all();
  }

 private:
  enum class Step { kIdle, kHolding, kCut, kReleased };
  Status AtHold();
  void Take(control::PitOptions o);
  void Transfer(uint64_t epoch);
  void Stop();

  AgentVolume v_;
  const AgentOptions& agent_;
  GroupOf group_of_;
  Address address_;  // the paths to the server, the one the agent uses now first
  Done done_;
  std::mutex mu_;
  std::condition_variable cv_;
  Step step_ = Step::kIdle;
  uint64_t epoch_ = 0;  // of the hold or transfer under way
  bool held_ = false, taken_ = false;
  Status take_status_;
  std::unique_ptr<control::PointInTime> pit_;
  std::atomic<bool> cancel_{false};
  std::thread taker_, transfer_;
};

Status PitVolume::AtHold() {
  std::unique_lock lock(mu_);
  held_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return step_ != Step::kHolding; });
  if (step_ == Step::kCut) return Status::Ok();
  return Status::Canceled("the hold ended before the cut");
}

void PitVolume::Take(control::PitOptions o) {
  auto pit = control::PointInTime::Take(v_.source, o);
  std::lock_guard lock(mu_);
  taken_ = true;
  take_status_ = pit.status();
  if (pit.ok()) pit_ = std::move(*pit);
  cv_.notify_all();
}

Status PitVolume::Hold(uint64_t epoch, int64_t max_hold_ns) {
  Stop();  // what an earlier epoch left
  control::PitOptions o = v_.pit;
  o.max_freeze = std::min(o.max_freeze, std::chrono::milliseconds(max_hold_ns / 1'000'000));
  o.cancel = &cancel_;
  o.at_hold = [this] { return AtHold(); };
  {
    std::lock_guard lock(mu_);
    step_ = Step::kHolding;
    epoch_ = epoch;
    held_ = taken_ = false;
    take_status_ = Status::Ok();
    cancel_.store(false);
  }
  taker_ = std::thread([this, o] { Take(o); });
  std::unique_lock lock(mu_);
  bool ready = cv_.wait_for(lock, std::chrono::nanoseconds(max_hold_ns),
                            [&] { return held_ || taken_; });
  if (held_) return Status::Ok();
  Status why = taken_ ? take_status_
                      : Status::Make(Code::kBusy, "the source was not held within the hold's "
                                                  "deadline (a pre hook still running?)");
  (void)ready;
  lock.unlock();
  Stop();
  return why.ok() ? Status::Internal("point in time taken without a hold") : why;
}

Status PitVolume::Cut(uint64_t epoch) {
  (void)epoch;
  std::unique_lock lock(mu_);
  if (step_ != Step::kHolding || !held_) return Status::Canceled("not holding");
  step_ = Step::kCut;
  cv_.notify_all();
  cv_.wait(lock, [&] { return taken_; });
  Status s = take_status_;
  lock.unlock();
  if (taker_.joinable()) taker_.join();
  return s;
}

void PitVolume::StartTransfer(uint64_t epoch) {
  if (transfer_.joinable()) transfer_.join();
  {
    std::lock_guard lock(mu_);
    epoch_ = epoch;
  }
  transfer_ = std::thread([this, epoch] { Transfer(epoch); });
}

void PitVolume::Transfer(uint64_t epoch) {
  Result<BackupResult> result = RunGuarded("group transfer", [&]() -> Result<BackupResult> {
    RemoteOptions ro = agent_.remote;
    ro.address = address_();
    ro.control = JobControl();
    ro.control.cancel = &cancel_;
    DP420_ASSIGN_OR_RETURN(auto remote, RemoteRepository::Connect(ro));
    BackupOptions o;
    o.volume = v_.name;
    o.source_path = v_.source;
    o.read_path = pit_->read_path();
    o.block_size = v_.block_size;
    o.threads = v_.threads;
    o.node_topology = control::LocalTopology(v_.name, v_.source);
    control::SetPointInTime(&o.node_topology, pit_->Provisional().ToJson());
    o.tool_version = agent_.tool_version;
    o.control.cancel = &cancel_;
    o.group = group_of_(epoch);
    o.group_epoch = epoch;
    o.end_point_in_time = [this](Json* topology) -> Status {
      DP420_ASSIGN_OR_RETURN(control::PitRecord record, pit_->Finish());
      control::SetPointInTime(topology, record.ToJson());
      // A freeze that ended before the read did (its deadline) is no point in
      // time: the member fails rather than stage a live read in the group.
      if (!record.point_in_time) {
        return Status::Busy("the point in time did not hold for the whole read (" +
                            record.note + "): nothing staged");
      }
      return Status::Ok();
    };
    return remote->Backup(o);
  });
  done_(epoch, std::move(result));
}

// Ends whatever runs: the hold (AtHold returns, Take thaws and runs the post
// hook), the transfer (canceled), the copy.
void PitVolume::Stop() {
  {
    std::lock_guard lock(mu_);
    if (step_ == Step::kHolding) step_ = Step::kReleased;
    cv_.notify_all();
  }
  cancel_.store(true);
  if (taker_.joinable()) taker_.join();
  if (transfer_.joinable()) transfer_.join();
  std::lock_guard lock(mu_);
  pit_.reset();
  step_ = Step::kIdle;
}

// ---- the agent ----

// GROUP_MSG frames to the coordinator, on the connection of the moment
// (none while reconnecting: lost, as on any network). Members' threads send
// at once; Conn::Send keeps frames whole.
class AgentTransport : public control::GroupTransport {
 public:
  void Send(const std::string& to, const GroupMsg& msg) override {
    (void)to;
    PayloadWriter w;
    WriteGroupMsg(msg, &w);
    std::lock_guard lock(mu_);
    if (conn_ == nullptr) return;
    (void)conn_->Send(FrameType::kGroupMsg, 0, w.bytes(), timeout_);
  }
  void Use(Conn* conn, Millis timeout) {
    std::lock_guard lock(mu_);
    conn_ = conn;
    timeout_ = timeout;
  }

 private:
  std::mutex mu_;
  Conn* conn_ = nullptr;
  Millis timeout_{1000};
};

struct TransferDone {
  uint64_t epoch = 0;
  Result<BackupResult> result = Status::Internal("no result");
};

// One volume as a member: its state machine runs on a thread of its own,
// so that a hold being taken (a pre hook may run for minutes) stalls neither
// the connection's heartbeats nor the other members. Messages and finished
// transfers reach it through its inbox.
struct MemberSlot {
  std::string name;  // "CLIENT:VOLUME"
  std::unique_ptr<PitVolume> volume;
  std::unique_ptr<control::GroupMember> member;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<GroupMsg> inbox;
  std::deque<TransferDone> done;
  std::thread thread;
  // The member thread's own:
  control::GroupMember::State seen = control::GroupMember::State::kIdle;
  std::optional<std::pair<uint64_t, BackupResult>> staged;  // epoch, the transfer's result
};

class Agent {
 public:
  explicit Agent(const AgentOptions& o) : o_(o) {}
  ~Agent() { StopMembers(); }
  Status Init();
  Status Run();

 private:
  Status AddMember(size_t i, std::random_device& rd);
  void MemberLoop(MemberSlot& m);
  void Report(MemberSlot& m);
  void StopMembers();
  Status Session(RemoteRepository& remote);
  Status Join(Conn& c);
  Status Turn(Conn& c, control::Liveness& beats);
  Status OnMessage(const Frame& f);
  void Pause(unsigned attempt);
  Status PersistEpoch(size_t i, uint64_t epoch);
  void Event(const std::string& line) {
    std::lock_guard lock(event_mu_);
    if (o_.on_event) o_.on_event(line);
  }
  bool Stopped() const { return o_.remote.control.Canceled(); }
  std::string GroupOf(uint64_t epoch) {
    std::lock_guard lock(mu_);
    auto it = group_of_.find(epoch);
    return it == group_of_.end() ? "" : it->second;
  }

  const AgentOptions& o_;
  std::string state_dir_;
  AgentTransport transport_;
  std::vector<std::unique_ptr<MemberSlot>> members_;
  std::atomic<bool> stop_members_{false};
  std::mutex event_mu_;
  std::mutex mu_;  // guards group_of_ and address_
  std::map<uint64_t, std::string> group_of_;
  std::vector<std::string> addresses_;  // --remote A[,B]...: the paths to the server
  std::string address_;                 // the one in use
};

Result<uint64_t> ReadEpoch(const std::string& path) {
  auto text = io::ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) return uint64_t{0};
    return text.status();
  }
  uint64_t v = 0;
  std::string t = *text;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || ec != std::errc() || end != t.data() + t.size()) {
    return Status::Corruption(path + " does not hold an epoch: remove it only if no group "
                              "backup of this volume can still be running");
  }
  return v;
}

Status Agent::PersistEpoch(size_t i, uint64_t epoch) {
  return io::WriteFileAtomic(state_dir_ + "/" + o_.volumes[i].name + ".epoch",
                             std::to_string(epoch) + "\n")
      .Prefix("recording epoch " + std::to_string(epoch) + " of volume " + o_.volumes[i].name);
}

Status Agent::Init() {
  if (o_.volumes.empty() || o_.volumes.size() > kGroupJoinMax) {
    return Status::InvalidArgument("dp420 agent needs 1 to " + std::to_string(kGroupJoinMax) +
                                   " --volume NAME=SOURCE");
  }
  std::set<std::string> seen;
  for (const auto& v : o_.volumes) {
    if (!seen.insert(v.name).second) {
      return Status::InvalidArgument("--volume " + v.name + " is given twice");
    }
  }
  addresses_ = SplitAddresses(o_.remote.address);
  for (const auto& a : addresses_) {
    if (a.empty()) return Status::InvalidArgument("--remote: an empty address");
  }
  address_ = addresses_[0];
  state_dir_ = o_.state_dir.empty() ? DefaultCacheDir() + "/agent-" + o_.remote.client
                                    : o_.state_dir;
  DP420_RETURN_IF_ERROR(io::MakeDirs(state_dir_).Prefix("agent state folder"));
  // What an agent killed with its freeze watchdog left frozen is thawed now,
  // not at the next group backup.
  control::ThawLeftFrozen();
  std::random_device rd;
  for (size_t i = 0; i < o_.volumes.size(); ++i) DP420_RETURN_IF_ERROR(AddMember(i, rd));
  for (auto& m : members_) {
    MemberSlot* slot = m.get();
    m->thread = std::thread([this, slot] { MemberLoop(*slot); });
  }
  return Status::Ok();
}

Status Agent::AddMember(size_t i, std::random_device& rd) {
  const AgentVolume& v = o_.volumes[i];
  DP420_ASSIGN_OR_RETURN(uint64_t highest, ReadEpoch(state_dir_ + "/" + v.name + ".epoch"));
  control::GroupTimeouts t;
  t.max_hold_ns = std::chrono::nanoseconds(v.pit.max_freeze).count();
  t.heartbeat_ns = 1'000'000'000;  // well inside any coordinator's loss bound (>= 1 s beats)
  DP420_RETURN_IF_ERROR(t.Validate().Prefix("--volume " + v.name));
  auto m = std::make_unique<MemberSlot>();
  MemberSlot* slot = m.get();
  m->name = o_.remote.client + ":" + v.name;
  m->volume = std::make_unique<PitVolume>(
      v, o_, [this](uint64_t e) { return GroupOf(e); },
      [this] {
        // Every path, the one in use first: a transfer whose path fails
        // moves to the next and resumes (RemoteRepository's reconnect).
        std::lock_guard lock(mu_);
        std::string all = address_;
        for (const auto& a : addresses_) {
          if (a != address_) all += "," + a;
        }
        return all;
      },
      [slot](uint64_t epoch, Result<BackupResult> r) {
        std::lock_guard lock(slot->mu);
        slot->done.push_back(TransferDone{epoch, std::move(r)});
        slot->cv.notify_all();
      });
  m->member = std::make_unique<control::GroupMember>(
      m->name, control::SystemClock(), transport_, *m->volume, t, highest,
      [this, i](uint64_t e) { return PersistEpoch(i, e); }, (uint64_t(rd()) << 32) | rd());
  members_.push_back(std::move(m));
  return Status::Ok();
}

// A member's thread: its messages and finished transfers, its ticks, and
// what changed reported.
void Agent::MemberLoop(MemberSlot& m) {
  while (!stop_members_.load()) {
    std::deque<GroupMsg> inbox;
    std::deque<TransferDone> done;
    {
      std::unique_lock lock(m.mu);
      m.cv.wait_for(lock, kLoopSlice, [&] { return !m.inbox.empty() || !m.done.empty(); });
      inbox.swap(m.inbox);
      done.swap(m.done);
    }
    for (auto& d : done) {
      if (d.result.ok()) {
        m.staged.emplace(d.epoch, *d.result);
        m.member->OnTransferDone(d.epoch, d.result->manifest.seal);
      } else {
        m.member->OnTransferDone(d.epoch, d.result.status());
      }
    }
    for (const auto& msg : inbox) m.member->OnMessage(msg);
    m.member->Tick();
    Report(m);
  }
}

// What changed since the last report; a published member's anchor moves.
void Agent::Report(MemberSlot& m) {
  const control::GroupMember& g = *m.member;
  if (g.state() == m.seen) return;
  m.seen = g.state();
  std::string at = g.group() + " epoch " + std::to_string(g.epoch()) + " " + m.name;
  using S = control::GroupMember::State;
  switch (g.state()) {
    case S::kQuiet: Event("holding " + at); break;
    case S::kTransferring: Event("cut " + at); break;
    case S::kDurable: Event("staged " + at); break;
    case S::kFailed: Event("aborted " + at + ": " + g.why()); break;
    case S::kDone:
      if (m.staged && m.staged->first == g.epoch() && !m.staged->second.anchor_path.empty()) {
        (void)io::WriteFileAtomic(m.staged->second.anchor_path, m.staged->second.anchor_text);
      }
      m.staged.reset();
      Event("committed " + at);
      break;
    case S::kIdle: break;
  }
}

// Every hold ends, every transfer stops.
void Agent::StopMembers() {
  stop_members_.store(true);
  for (auto& m : members_) {
    if (m->thread.joinable()) m->thread.join();
  }
  for (auto& m : members_) m->volume->Release(0);
}

Status Agent::OnMessage(const Frame& f) {
  GroupMsg msg;
  if (Status s = ParseGroupMsg(f.payload, &msg); !s.ok()) {
    return Status::Network("malformed GROUP_MSG from the server: " + s.message());
  }
  for (auto& m : members_) {
    if (m->name != msg.member) continue;
    if (msg.kind == control::GroupMsgKind::kPrepare) {
      std::lock_guard lock(mu_);
      group_of_[msg.epoch] = msg.group;
    }
    // An abort reaches a hold being taken at once (its pre hook is killed).
    if (msg.kind == control::GroupMsgKind::kAbort) m->volume->Interrupt(msg.epoch);
    std::lock_guard lock(m->mu);
    m->inbox.push_back(std::move(msg));
    m->cv.notify_all();
    break;
  }
  return Status::Ok();  // not one of ours: ignored
}

Status Agent::Join(Conn& c) {
  PayloadWriter w;
  w.U32(uint32_t(o_.volumes.size()));
  for (const auto& v : o_.volumes) w.String(v.name);
  Millis timeout = o_.remote.LossTimeout();
  DP420_RETURN_IF_ERROR(c.Send(FrameType::kGroupJoin, 1, w.bytes(), timeout));
  for (;;) {
    DP420_ASSIGN_OR_RETURN(Frame f, c.Recv(timeout));
    if (f.type() == FrameType::kPing) {
      DP420_RETURN_IF_ERROR(AnswerPing(c, f, timeout));
      continue;
    }
    if (f.type() == FrameType::kPong) continue;
    return ExpectFrame(f, FrameType::kDone, c.peer());
  }
}

Status Agent::Turn(Conn& c, control::Liveness& beats) {
  pollfd p{c.fd(), POLLIN, 0};
  int r = poll(&p, 1, int(kLoopSlice.count()));
  if (r < 0 && errno != EINTR) return PosixError("poll " + c.peer(), errno);
  if (r > 0) {
    DP420_ASSIGN_OR_RETURN(Frame f, c.Recv(o_.remote.LossTimeout()));
    beats.Heard();
    switch (f.type()) {
      case FrameType::kGroupMsg: DP420_RETURN_IF_ERROR(OnMessage(f)); break;
      case FrameType::kPing: DP420_RETURN_IF_ERROR(AnswerPing(c, f, o_.remote.LossTimeout())); break;
      case FrameType::kPong: break;
      case FrameType::kError: return StatusFromError(f, "server");
      default:
        return Status::Network("server sent " + FrameTypeName(f.header.type) +
                               " on the group channel");
    }
  }
  if (beats.Lost()) return Status::Network("server " + c.peer() + " stopped answering");
  if (beats.BeatDue()) {
    beats.Sent();
    PayloadWriter ping;
    ping.U64(WallClockNs());
    DP420_RETURN_IF_ERROR(c.Send(FrameType::kPing, 0, ping.bytes(), o_.remote.LossTimeout()));
  }
  return Status::Ok();
}

Status Agent::Session(RemoteRepository& remote) {
  Conn& c = remote.control();
  DP420_RETURN_IF_ERROR(Join(c));
  Event("connected to " + remote.options().address + " as " + o_.remote.client);
  control::Liveness beats(control::SystemClock(),
                          std::chrono::nanoseconds(o_.remote.heartbeat_interval).count(),
                          std::chrono::nanoseconds(o_.remote.LossTimeout()).count(), 10,
                          uint64_t(WallClockNs()));
  beats.Restart();
  transport_.Use(&c, std::min<Millis>(o_.remote.LossTimeout(), Millis(1000)));
  Status s;
  while (s.ok() && !Stopped()) s = Turn(c, beats);
  transport_.Use(nullptr, Millis(0));
  return s;
}

// Between connections (members go on ticking on their threads: a hold
// still ends at its deadline).
void Agent::Pause(unsigned attempt) {
  auto until = Clock::now() + ReconnectDelay(attempt);
  while (Clock::now() < until && !Stopped()) std::this_thread::sleep_for(kLoopSlice);
}

bool Fatal(const Status& s) {
  return s.code() == Code::kPermission || s.code() == Code::kInvalidArgument ||
         s.code() == Code::kVersion || s.code() == Code::kNotFound;
}

// Connects through each path in turn: one that fails gives way to the next
// (a transfer in flight reconnects on its own, resuming, to the path in use).
Status Agent::Run() {
  unsigned attempt = 0;
  size_t path = 0;
  while (!Stopped()) {
    RemoteOptions ro = o_.remote;
    ro.address = addresses_[path];
    {
      std::lock_guard lock(mu_);
      address_ = ro.address;
    }
    auto remote = RemoteRepository::Connect(ro);
    Status s = remote.ok() ? Session(**remote) : remote.status();
    if (Stopped()) break;
    if (Fatal(s)) return s;
    if (remote.ok()) attempt = 0;
    Event("lost " + ro.address + ": " + s.ToString());
    path = (path + 1) % addresses_.size();
    // A new path is tried at once; the same one (or all of them again) after a pause.
    if (path == 0 || addresses_.size() == 1) Pause(attempt++);
  }
  StopMembers();
  return Status::Ok();
}

}  // namespace

Status RunAgent(const AgentOptions& options) {
  Agent agent(options);
  DP420_RETURN_IF_ERROR(agent.Init());
  return agent.Run();
}

}  // namespace dp420::net
