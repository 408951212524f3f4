// Deterministic simulation of a consistency group (engine/control/group.h):
// one server (the coordinators and the repository's GroupStore) and two to
// four members, on a simulated network and simulated clocks, driven by one
// seed. The network loses (0-40 %), duplicates, delays and so reorders
// messages, and partitions members from the server; members and the server
// crash and restart, members and coordinators pause (SIGSTOP), clocks are
// skewed by up to ±300 s, holds fail, transfers fail, and the admin starts a
// second attempt while the first one's coordinator is stalled.
//
// After every seed the history is checked against what the protocol
// promises (CheckHistory):
//   - a committed epoch published every member of the group, each with the
//     snapshot that member's transfer of that epoch staged;
//   - its cut is one point in time: there is an instant at which every
//     member held (max hold start <= min cut), each hold unbroken until its cut;
//   - no member held twice for one epoch, no hold outlasted max_hold, and
//     none is left at the end;
//   - what a coordinator or a member reports (committed, aborted) is what
//     the repository holds;
//   - a committed member's clock is within twice max_skew of the server's.
//
// DP420_GROUP_SIM_SEEDS=N runs N seeds (default 2,000; the long suite
// 100,000); DP420_GROUP_SIM_SEED=S replays seed S alone, printing its events
// with DP420_GROUP_SIM_TRACE=1.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/control/group.h"

namespace dp420::control {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kS = 1'000 * kMs;
constexpr int64_t kWallBase = 1'800'000'000 * kS;  // 2027: a plausible wall clock

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Unit() { return double(Next() >> 11) / double(1ull << 53); }
  bool Chance(double p) { return Unit() < p; }
  int64_t Range(int64_t lo, int64_t hi) { return lo + int64_t(Next() % uint64_t(hi - lo + 1)); }

 private:
  uint64_t s_;
};

// ---- the repository's side ----

class SimStore final : public GroupStore {
 public:
  struct Epoch {
    std::string group;
    EpochState state = EpochState::kOpen;
    std::map<std::string, std::string> staged;
    std::vector<std::string> published;  // the members a commit published
  };

  Result<uint64_t> BeginEpoch(const std::string& group) override {
    epochs_[++newest_].group = group;
    return newest_;
  }
  // A member's transfer ends here: refused for any epoch but the newest open one.
  Status Stage(const std::string& group, uint64_t epoch, const std::string& member,
               const std::string& hash) {
    auto it = epochs_.find(epoch);
    if (epoch != newest_ || it == epochs_.end() || it->second.group != group ||
        it->second.state != EpochState::kOpen) {
      return Status::Busy("epoch " + std::to_string(epoch) + " is fenced or ended");
    }
    it->second.staged[member] = hash;
    return Status::Ok();
  }
  Result<std::optional<std::string>> Staged(const std::string& group, uint64_t epoch,
                                            const std::string& member) const override {
    auto it = epochs_.find(epoch);
    if (it == epochs_.end() || it->second.group != group) return std::optional<std::string>();
    auto s = it->second.staged.find(member);
    if (s == it->second.staged.end()) return std::optional<std::string>();
    return std::optional<std::string>(s->second);
  }
  Status Commit(const GroupCommit& c) override {
    auto it = epochs_.find(c.epoch);
    if (c.epoch != newest_ || it == epochs_.end() || it->second.group != c.group ||
        it->second.state != EpochState::kOpen) {
      return Status::Busy("epoch " + std::to_string(c.epoch) + " is not the newest open one");
    }
    for (const GroupMemberResult& r : c.members) {
      auto s = it->second.staged.find(r.member);
      if (s == it->second.staged.end() || s->second != r.manifest_hash) {
        return Status::Corruption("member " + r.member + " has not staged its snapshot");
      }
    }
    it->second.state = EpochState::kCommitted;
    for (const GroupMemberResult& r : c.members) it->second.published.push_back(r.member);
    return Status::Ok();
  }
  void Abort(const std::string& group, uint64_t epoch) override {
    auto it = epochs_.find(epoch);
    if (it == epochs_.end() || it->second.group != group) return;
    if (it->second.state == EpochState::kOpen) {
      it->second.state = EpochState::kAborted;
      it->second.staged.clear();
    }
  }
  EpochState State(const std::string& group, uint64_t epoch) const override {
    auto it = epochs_.find(epoch);
    return it == epochs_.end() || it->second.group != group ? EpochState::kAborted
                                                             : it->second.state;
  }
  // A restarted server: every epoch left open had its coordinator die.
  void Recover() {
    for (auto& [epoch, e] : epochs_) Abort(e.group, epoch);
  }
  const std::map<uint64_t, Epoch>& epochs() const { return epochs_; }

 private:
  uint64_t newest_ = 0;
  std::map<uint64_t, Epoch> epochs_;
};

// ---- what happened, as the simulator saw it (true time) ----

struct Hold {
  std::string member;
  uint64_t epoch = 0;
  int64_t start = 0;
  int64_t end = -1;  // -1: still held
  int64_t cut = -1;  // -1: no cut under this hold
};

struct History {
  std::string group;
  std::vector<std::string> members;
  std::map<std::string, int64_t> true_skew_ns;
  int64_t max_hold_ns = 0;
  int64_t max_skew_ns = 0;
  std::vector<Hold> holds;
  std::map<std::pair<std::string, uint64_t>, std::string> transferred;  // what each staged
  std::vector<std::pair<uint64_t, bool>> coordinator_said;  // epoch, committed
  std::vector<std::pair<std::string, uint64_t>> member_done;  // member saw COMMITTED
  std::map<uint64_t, int64_t> ended_at;  // epoch -> when it aborted (coordinator, crash)
  const SimStore* store = nullptr;
};

void CheckCommitted(const History& h, uint64_t epoch, const SimStore::Epoch& e,
                    std::vector<std::string>* out) {
  auto bad = [&](const std::string& what) {
    out->push_back("epoch " + std::to_string(epoch) + ": " + what);
  };
  std::set<std::string> published(e.published.begin(), e.published.end());
  if (published != std::set<std::string>(h.members.begin(), h.members.end())) {
    bad("published " + std::to_string(published.size()) + " of " +
        std::to_string(h.members.size()) + " members (a torn group)");
  }
  int64_t last_start = INT64_MIN, first_cut = INT64_MAX;
  for (const std::string& m : h.members) {
    auto staged = e.staged.find(m);
    auto sent = h.transferred.find({m, epoch});
    if (staged == e.staged.end() || sent == h.transferred.end() || staged->second != sent->second) {
      bad(m + " published without its own transfer of this epoch");
    }
    int holds = 0;
    for (const Hold& x : h.holds) {
      if (x.member != m || x.epoch != epoch) continue;
      ++holds;
      if (x.cut < 0) bad(m + " has no cut under its hold");
      if (x.cut >= 0 && x.end >= 0 && x.cut > x.end) bad(m + " cut after its hold ended");
      last_start = std::max(last_start, x.start);
      first_cut = std::min(first_cut, x.cut < 0 ? INT64_MIN : x.cut);
    }
    if (holds != 1) bad(m + " held " + std::to_string(holds) + " times");
    auto skew = h.true_skew_ns.find(m);
    if (skew != h.true_skew_ns.end() && std::llabs(skew->second) > 2 * h.max_skew_ns) {
      bad(m + " committed with a clock " + std::to_string(skew->second / kMs) + " ms off");
    }
  }
  if (last_start > first_cut) {
    bad("no instant at which every member held: the last hold began at " +
        std::to_string(last_start / 1000) + " us, the first cut was at " +
        std::to_string(first_cut / 1000) + " us");
  }
}

// Every promise of group.h against one history; what broke, or nothing.
std::vector<std::string> CheckHistory(const History& h) {
  std::vector<std::string> out;
  for (const auto& [epoch, e] : h.store->epochs()) {
    if (e.state == GroupStore::EpochState::kOpen) {
      out.push_back("epoch " + std::to_string(epoch) + " is still open at the end");
    }
    if (e.state == GroupStore::EpochState::kAborted && !e.staged.empty()) {
      out.push_back("epoch " + std::to_string(epoch) + " aborted with its staging kept");
    }
    if (e.state == GroupStore::EpochState::kCommitted) CheckCommitted(h, epoch, e, &out);
    if (e.state != GroupStore::EpochState::kCommitted && !e.published.empty()) {
      out.push_back("epoch " + std::to_string(epoch) + " published members without a commit");
    }
  }
  std::set<std::pair<std::string, uint64_t>> held;
  for (const Hold& x : h.holds) {
    if (!held.insert({x.member, x.epoch}).second) {
      out.push_back(x.member + " held twice for epoch " + std::to_string(x.epoch));
    }
    if (x.end < 0) out.push_back(x.member + " is still held at the end");
    if (x.end >= 0 && x.end - x.start > h.max_hold_ns) {
      out.push_back(x.member + " held for " + std::to_string((x.end - x.start) / kMs) + " ms");
    }
  }
  for (const auto& [epoch, committed] : h.coordinator_said) {
    const bool is = h.store->State(h.group, epoch) == GroupStore::EpochState::kCommitted;
    if (committed != is) {
      out.push_back("the coordinator of epoch " + std::to_string(epoch) + " said " +
                    (committed ? "committed" : "aborted") + ", the repository says otherwise");
    }
  }
  for (const auto& [member, epoch] : h.member_done) {
    if (h.store->State(h.group, epoch) != GroupStore::EpochState::kCommitted) {
      out.push_back(member + " was told epoch " + std::to_string(epoch) + " committed; it is not");
    }
  }
  return out;
}

// ---- the simulation ----

struct SimConfig {
  int members = 3;
  double loss = 0, dup = 0;
  int64_t max_delay_ns = 5 * kMs;
  double hold_fail = 0, transfer_fail = 0;
  int64_t transfer_max_ns = 2 * kS;
  std::vector<int64_t> skew_ns;  // per member
  int crashes = 0, pauses = 0, partitions = 0;
  bool server_crash = false, second_attempt = false;
  bool clean = false;  // no fault at all: must commit
  // A volume that cannot tell its hold ended (a freeze read in place whose
  // thaw it does not see): its Cut succeeds anyway, so only the member's own
  // deadline keeps the cut inside the hold.
  bool blind_volume = false;
  GroupTimeouts t;

  static SimConfig From(uint64_t seed, Rng& rng);
  std::string Describe() const;
};

SimConfig SimConfig::From(uint64_t seed, Rng& rng) {
  SimConfig c;
  c.members = int(rng.Range(2, 4));
  c.t.prepare_ns = 3 * kS;
  c.t.cut_ns = 2 * kS;
  c.t.resend_ns = 100 * kMs;
  c.t.heartbeat_ns = 500 * kMs;
  c.t.max_hold_ns = rng.Chance(0.2) ? 150 * kMs : 2 * kS;  // short holds: expiries
  c.skew_ns.assign(size_t(c.members), 0);
  c.clean = seed % 10 == 0;
  if (c.clean) {
    for (auto& s : c.skew_ns) s = rng.Range(-100, 100) * kMs;
    return c;
  }
  c.loss = rng.Chance(0.3) ? 0 : rng.Unit() * 0.4;
  c.dup = rng.Unit() * 0.1;
  c.max_delay_ns = rng.Range(1, 120) * kMs;
  c.hold_fail = rng.Chance(0.2) ? 0.3 : 0;
  c.transfer_fail = rng.Chance(0.2) ? 0.3 : 0;
  c.transfer_max_ns = rng.Range(1, 6) * kS;  // several heartbeats
  for (auto& s : c.skew_ns) {
    // Most within the bound, some far beyond it, some just beyond (where a
    // slow round trip could hide them).
    const double band = rng.Unit();
    s = band < 0.15   ? rng.Range(-300'000, 300'000) * kMs
        : band < 0.35 ? rng.Range(-5'000, 5'000) * kMs
                      : rng.Range(-300, 300) * kMs;
  }
  c.crashes = int(rng.Range(0, 2));
  c.pauses = int(rng.Range(0, 3));
  c.partitions = int(rng.Range(0, 2));
  c.server_crash = rng.Chance(0.15);
  c.blind_volume = rng.Chance(0.3);
  c.second_attempt = rng.Chance(0.25);
  return c;
}

std::string SimConfig::Describe() const {
  std::ostringstream o;
  o << members << " members, loss " << loss << ", dup " << dup << ", delay <= "
    << max_delay_ns / kMs << " ms, max_hold " << t.max_hold_ns / kMs << " ms, crashes "
    << crashes << ", pauses " << pauses << ", partitions " << partitions << ", server crash "
    << server_crash << ", second attempt " << second_attempt << ", blind volume "
    << blind_volume << ", skews (ms)";
  for (int64_t s : skew_ns) o << " " << s / kMs;
  return o.str();
}

class Sim;

class SimClock final : public Clock {
 public:
  SimClock(const Sim& sim, int64_t mono_offset, int64_t wall_offset)
      : sim_(sim), mono_offset_(mono_offset), wall_offset_(wall_offset) {}
  int64_t MonotonicNs() const override;
  int64_t WallNs() const override;

 private:
  const Sim& sim_;
  int64_t mono_offset_, wall_offset_;
};

class Sim {
 public:
  Sim(uint64_t seed, const SimConfig& c, bool trace);
  void Run();
  const History& history() const { return h_; }
  const SimStore& store() const { return store_; }
  int64_t now() const { return now_; }
  std::string trace() const { return trace_.str(); }
  int commits() const;

  // ---- the parts' callbacks ----
  void Send(const std::string& from, const std::string& to, const GroupMsg& msg);
  Status Hold(size_t m, uint64_t epoch, int64_t max_hold);
  Status Cut(size_t m, uint64_t epoch);
  void Release(size_t m, uint64_t epoch);
  void StartTransfer(size_t m, uint64_t epoch);
  void Discard(size_t m) { ++members_[m]->transfer_gen; }

  // Scripted scenarios drive these directly.
  uint64_t StartAttempt();
  void PauseCoordinator(uint64_t epoch, int64_t until);
  void PauseMember(size_t m, int64_t until) { members_[m]->paused_until = until; }
  // Runs in steps of 1 ms until `done` or `limit`; whether `done`.
  bool RunUntilTrue(const std::function<bool()>& done, int64_t limit) {
    while (!done() && now_ < limit) RunUntil(now_ + kMs);
    return done();
  }
  void At(int64_t t, std::function<void()> fn) { events_.push({t, seq_++, std::move(fn)}); }
  void RunUntil(int64_t end);
  GroupCoordinator* coordinator(uint64_t epoch) {
    auto it = coordinators_.find(epoch);
    return it == coordinators_.end() ? nullptr : it->second.sm.get();
  }
  GroupMember* member(size_t m) { return members_[m]->sm.get(); }
  SimStore& mutable_store() { return store_; }
  // A test's own losses: true drops the message.
  std::function<bool(const std::string& from, const std::string& to, const GroupMsg&)> drop;
  void Log(const std::string& line) {
    if (tracing_) trace_ << now_ / 1000 << " us: " << line << "\n";
  }

 private:
  struct Event {
    int64_t t;
    uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };
  struct Transport final : GroupTransport {
    Sim* sim;
    std::string self;
    void Send(const std::string& to, const GroupMsg& msg) override {
      sim->Send(self, to.empty() ? "server" : to, msg);
    }
  };
  struct Volume final : MemberVolume {
    Sim* sim;
    size_t m;
    Status Hold(uint64_t e, int64_t max) override { return sim->Hold(m, e, max); }
    Status Cut(uint64_t e) override { return sim->Cut(m, e); }
    void Release(uint64_t e) override { sim->Release(m, e); }
    void StartTransfer(uint64_t e) override { sim->StartTransfer(m, e); }
    void Discard(uint64_t) override { sim->Discard(m); }
  };
  struct MemberNode {
    std::string name;
    std::unique_ptr<SimClock> clock;
    Transport transport;
    Volume volume;
    std::unique_ptr<GroupMember> sm;  // null while down
    uint64_t persisted = 0;
    int64_t paused_until = 0;
    uint64_t transfer_gen = 0;
    int hold = -1;  // index into h_.holds of the hold in force, or -1
    bool reported_done = false;
  };
  struct CoordinatorNode {
    std::unique_ptr<GroupCoordinator> sm;
    int64_t paused_until = 0;
    bool reported = false;
  };

  void Deliver(const std::string& to, const GroupMsg& msg);
  void DeliverToServer(const GroupMsg& msg);
  void TickMember(size_t m);
  void TickServer();
  void Report();
  void ScheduleFaults();
  void CrashMember(size_t m, int64_t down_for);
  void CrashServer(int64_t down_for);
  bool Partitioned(const std::string& a, const std::string& b) const;
  void EndHold(size_t m);
  void FinishTransfer(size_t m, uint64_t epoch, uint64_t gen, bool fails);

  uint64_t seed_;
  SimConfig c_;
  Rng rng_;
  bool tracing_;
  std::ostringstream trace_;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
  SimStore store_;
  History h_;
  std::unique_ptr<SimClock> server_clock_;
  Transport server_transport_;
  bool server_up_ = true;
  std::map<uint64_t, CoordinatorNode> coordinators_;
  GroupRouter router_;
  std::vector<std::unique_ptr<MemberNode>> members_;
  std::vector<std::tuple<std::string, int64_t, int64_t>> partitions_;  // member, from, to
};

int64_t SimClock::MonotonicNs() const { return sim_.now() + mono_offset_; }
int64_t SimClock::WallNs() const { return kWallBase + sim_.now() + wall_offset_; }

Sim::Sim(uint64_t seed, const SimConfig& c, bool trace)
    : seed_(seed), c_(c), rng_(seed ^ 0x5EED), tracing_(trace) {
  h_.group = "g";
  h_.max_hold_ns = c.t.max_hold_ns;
  h_.max_skew_ns = c.t.max_skew_ns;
  h_.store = &store_;
  server_clock_ = std::make_unique<SimClock>(*this, rng_.Range(0, 1000) * kS, 0);
  server_transport_.sim = this;
  server_transport_.self = "server";
  for (int i = 0; i < c.members; ++i) {
    auto n = std::make_unique<MemberNode>();
    n->name = "node" + std::to_string(i) + ":vol";
    n->clock = std::make_unique<SimClock>(*this, rng_.Range(0, 1000) * kS, c.skew_ns[size_t(i)]);
    n->transport.sim = this;
    n->transport.self = n->name;
    n->volume.sim = this;
    n->volume.m = size_t(i);
    h_.members.push_back(n->name);
    h_.true_skew_ns[n->name] = c.skew_ns[size_t(i)];
    members_.push_back(std::move(n));
  }
  for (size_t m = 0; m < members_.size(); ++m) {
    MemberNode& n = *members_[m];
    n.sm = std::make_unique<GroupMember>(
        n.name, *n.clock, n.transport, n.volume, c_.t, 0,
        [this, m](uint64_t e) {
          members_[m]->persisted = e;
          return Status::Ok();
        },
        seed_ * 31 + m);
    At(rng_.Range(1, 20) * kMs, [this, m] { TickMember(m); });
  }
  At(1 * kMs, [this] { TickServer(); });
}

int Sim::commits() const {
  int n = 0;
  for (const auto& [epoch, e] : store_.epochs()) n += e.state == GroupStore::EpochState::kCommitted;
  return n;
}

void Sim::Run() {
  At(10 * kMs, [this] { StartAttempt(); });
  ScheduleFaults();
  RunUntil(120 * kS);
}

void Sim::RunUntil(int64_t end) {
  while (!events_.empty() && events_.top().t <= end) {
    Event e = events_.top();
    events_.pop();
    now_ = e.t;
    e.fn();
    Report();
  }
  now_ = end;
}

uint64_t Sim::StartAttempt() {
  if (!server_up_) return 0;
  uint64_t epoch = store_.BeginEpoch(h_.group).value();
  CoordinatorNode& node = coordinators_[epoch];
  node.sm = std::make_unique<GroupCoordinator>(h_.group, h_.members, epoch, *server_clock_,
                                               server_transport_, store_, c_.t);
  router_.Add(node.sm.get());
  Log("attempt with epoch " + std::to_string(epoch));
  node.sm->Start();
  return epoch;
}

void Sim::PauseCoordinator(uint64_t epoch, int64_t until) {
  auto it = coordinators_.find(epoch);
  if (it != coordinators_.end()) it->second.paused_until = until;
}

// What the coordinators and members now say of their outcome, once each.
void Sim::Report() {
  for (auto& [epoch, node] : coordinators_) {
    if (node.sm && node.sm->done() && !node.reported) {
      node.reported = true;
      const bool committed = node.sm->phase() == GroupCoordinator::Phase::kCommitted;
      h_.coordinator_said.push_back({epoch, committed});
      if (!committed) h_.ended_at.emplace(epoch, now_);
      Log("coordinator " + std::to_string(epoch) + ": " +
          (committed ? "committed" : "aborted: " + node.sm->outcome().message()));
    }
  }
  for (auto& n : members_) {
    if (n->sm && n->sm->state() == GroupMember::State::kDone && !n->reported_done) {
      n->reported_done = true;
      h_.member_done.push_back({n->name, n->sm->epoch()});
    }
    if (n->sm && n->sm->state() != GroupMember::State::kDone) n->reported_done = false;
  }
}

void Sim::Send(const std::string& from, const std::string& to, const GroupMsg& msg) {
  Log(from + " -> " + to + ": " + GroupMsgName(msg.kind) + " e" + std::to_string(msg.epoch) +
      (msg.detail.empty() ? "" : " (" + msg.detail + ")"));
  const std::string member = from == "server" ? to : from;
  if (drop && drop(from, to, msg)) return Log("  (lost, by the test)");
  if (Partitioned(member, "server") || rng_.Chance(c_.loss)) return;
  const int copies = rng_.Chance(c_.dup) ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    At(now_ + rng_.Range(100'000, c_.max_delay_ns), [this, to, msg] { Deliver(to, msg); });
  }
}

bool Sim::Partitioned(const std::string& a, const std::string&) const {
  for (const auto& [member, from, to] : partitions_) {
    if (member == a && now_ >= from && now_ < to) return true;
  }
  return false;
}

void Sim::Deliver(const std::string& to, const GroupMsg& msg) {
  if (to == "server") return DeliverToServer(msg);
  for (size_t m = 0; m < members_.size(); ++m) {
    MemberNode& n = *members_[m];
    if (n.name != to) continue;
    if (!n.sm) return;  // down: lost
    if (n.paused_until > now_) return At(n.paused_until, [this, to, msg] { Deliver(to, msg); });
    n.sm->OnMessage(msg);
  }
}

void Sim::DeliverToServer(const GroupMsg& msg) {
  if (!server_up_) return;
  std::vector<GroupCoordinator*> targets = router_.Targets(msg);
  if (targets.empty()) {
    // FENCED is for a coordinator only; anything else is answered from the
    // repository.
    if (msg.kind != GroupMsgKind::kFenced) AnswerForEndedEpoch(store_, server_transport_, msg);
    return;
  }
  for (GroupCoordinator* c : targets) {
    CoordinatorNode& node = coordinators_.at(c->epoch());
    if (node.paused_until > now_) {
      const uint64_t e = c->epoch();
      At(node.paused_until, [this, e, msg] {
        if (GroupCoordinator* again = coordinator(e)) again->OnMessage(msg);
      });
    } else {
      c->OnMessage(msg);
    }
  }
}

void Sim::TickMember(size_t m) {
  MemberNode& n = *members_[m];
  if (n.sm && n.paused_until <= now_) n.sm->Tick();
  At(now_ + 20 * kMs, [this, m] { TickMember(m); });
}

void Sim::TickServer() {
  if (server_up_) {
    for (auto& [epoch, node] : coordinators_) {
      if (node.sm && node.paused_until <= now_) node.sm->Tick();
    }
  }
  At(now_ + 20 * kMs, [this] { TickServer(); });
}

// ---- the volume, as the simulator models it ----

Status Sim::Hold(size_t m, uint64_t epoch, int64_t max_hold) {
  MemberNode& n = *members_[m];
  if (rng_.Chance(c_.hold_fail)) return Status::IOError("FIFREEZE: Device or resource busy");
  if (n.hold >= 0) EndHold(m);  // a member bug would show as two holds at once
  h_.holds.push_back({n.name, epoch, now_, -1, -1});
  n.hold = int(h_.holds.size() - 1);
  const int hold = n.hold;
  // The watchdog: the hold ends at its deadline whatever the member does.
  At(now_ + max_hold, [this, m, hold] {
    if (members_[m]->hold == hold) {
      Log(members_[m]->name + ": the watchdog ends the hold");
      EndHold(m);
    }
  });
  Log(n.name + ": holds for e" + std::to_string(epoch));
  return Status::Ok();
}

Status Sim::Cut(size_t m, uint64_t epoch) {
  MemberNode& n = *members_[m];
  if (n.hold < 0 || h_.holds[size_t(n.hold)].epoch != epoch) {
    if (!c_.blind_volume) return Status::IOError("the hold had ended");
    // It cuts anyway: the cut is recorded on the hold it believes in force.
    for (auto it = h_.holds.rbegin(); it != h_.holds.rend(); ++it) {
      if (it->member == n.name && it->epoch == epoch && it->cut < 0) {
        it->cut = now_;
        Log(n.name + ": cut for e" + std::to_string(epoch) + " after its hold ended");
        return Status::Ok();
      }
    }
    return Status::IOError("never held");
  }
  h_.holds[size_t(n.hold)].cut = now_;
  Log(n.name + ": cut for e" + std::to_string(epoch));
  EndHold(m);
  return Status::Ok();
}

void Sim::Release(size_t m, uint64_t epoch) {
  MemberNode& n = *members_[m];
  if (n.hold >= 0 && h_.holds[size_t(n.hold)].epoch == epoch) EndHold(m);
}

void Sim::EndHold(size_t m) {
  MemberNode& n = *members_[m];
  if (n.hold >= 0) h_.holds[size_t(n.hold)].end = now_;
  n.hold = -1;
}

void Sim::StartTransfer(size_t m, uint64_t epoch) {
  const uint64_t gen = ++members_[m]->transfer_gen;
  const int64_t takes = rng_.Range(10 * kMs, c_.transfer_max_ns);
  const bool fails = rng_.Chance(c_.transfer_fail);
  At(now_ + takes, [this, m, epoch, gen, fails] { FinishTransfer(m, epoch, gen, fails); });
}

// The end of a transfer: staged in the repository (when the server is up and
// the epoch is still the newest) and told to the member.
void Sim::FinishTransfer(size_t m, uint64_t epoch, uint64_t gen, bool fails) {
  MemberNode& n = *members_[m];
  if (!n.sm || n.transfer_gen != gen) return;  // crashed or discarded meanwhile
  if (n.paused_until > now_) {
    return At(n.paused_until, [this, m, epoch, gen, fails] { FinishTransfer(m, epoch, gen, fails); });
  }
  const std::string hash = n.name + "@" + std::to_string(epoch);
  Status staged = fails        ? Status::IOError("connection reset")
                  : !server_up_ ? Status::Network("server down")
                                : store_.Stage(h_.group, epoch, n.name, hash);
  if (staged.ok()) h_.transferred[{n.name, epoch}] = hash;
  Log(n.name + ": transfer of e" + std::to_string(epoch) + (staged.ok() ? " staged" : " failed"));
  n.sm->OnTransferDone(epoch, staged.ok() ? Result<std::string>(hash) : Result<std::string>(staged));
}

// ---- faults ----

void Sim::ScheduleFaults() {
  for (int i = 0; i < c_.crashes; ++i) {
    size_t m = size_t(rng_.Range(0, c_.members - 1));
    int64_t at = rng_.Range(0, 8000) * kMs, down = rng_.Range(10, 3000) * kMs;
    At(at, [this, m, down] { CrashMember(m, down); });
  }
  for (int i = 0; i < c_.pauses; ++i) {
    int64_t at = rng_.Range(0, 8000) * kMs, len = rng_.Range(10, 4000) * kMs;
    int who = int(rng_.Range(-1, c_.members - 1));  // -1: the newest coordinator
    At(at, [this, who, len] {
      if (who < 0) {
        if (!coordinators_.empty()) PauseCoordinator(coordinators_.rbegin()->first, now_ + len);
        Log("coordinator paused");
      } else {
        members_[size_t(who)]->paused_until = now_ + len;
        Log(members_[size_t(who)]->name + " paused");
      }
    });
  }
  for (int i = 0; i < c_.partitions; ++i) {
    size_t m = size_t(rng_.Range(0, c_.members - 1));
    int64_t at = rng_.Range(0, 8000) * kMs;
    partitions_.push_back({members_[m]->name, at, at + rng_.Range(10, 5000) * kMs});
  }
  if (c_.server_crash) {
    int64_t at = rng_.Range(0, 8000) * kMs, down = rng_.Range(10, 3000) * kMs;
    At(at, [this, down] { CrashServer(down); });
  }
  if (c_.second_attempt) {
    int64_t at = rng_.Range(50, 6000) * kMs;
    At(at, [this] {
      if (!coordinators_.empty()) {
        PauseCoordinator(coordinators_.rbegin()->first, now_ + rng_.Range(100, 5000) * kMs);
      }
      StartAttempt();
    });
  }
}

void Sim::CrashMember(size_t m, int64_t down_for) {
  MemberNode& n = *members_[m];
  if (!n.sm) return;
  Log(n.name + " crashes");
  n.sm.reset();
  EndHold(m);  // the watchdog thaws as soon as the process is gone
  ++n.transfer_gen;
  At(now_ + down_for, [this, m] {
    MemberNode& r = *members_[m];
    r.sm = std::make_unique<GroupMember>(
        r.name, *r.clock, r.transport, r.volume, c_.t, r.persisted,
        [this, m](uint64_t e) {
          members_[m]->persisted = e;
          return Status::Ok();
        },
        seed_ * 31 + m + 7);
    Log(r.name + " restarts");
  });
}

void Sim::CrashServer(int64_t down_for) {
  Log("server crashes");
  server_up_ = false;
  router_ = GroupRouter();
  coordinators_.clear();  // their outcome was never said
  At(now_ + down_for, [this] {
    server_up_ = true;
    for (const auto& [epoch, e] : store_.epochs()) {
      if (e.state == GroupStore::EpochState::kOpen) h_.ended_at.emplace(epoch, now_);
    }
    store_.Recover();
    Log("server restarts");
    if (rng_.Chance(0.5)) StartAttempt();  // the admin tries again
  });
}

// ---- the tests ----

uint64_t EnvNumber(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

struct SeedOutcome {
  std::vector<std::string> broken;
  int commits = 0;
  std::string config;
};

SeedOutcome RunSeed(uint64_t seed, bool trace, std::string* log = nullptr) {
  Rng rng(seed);
  SimConfig c = SimConfig::From(seed, rng);
  Sim sim(seed, c, trace);
  sim.Run();
  if (log != nullptr) *log = sim.trace();
  return {CheckHistory(sim.history()), sim.commits(), c.Describe()};
}

TEST(GroupSimTest, EverySeedKeepsEveryPromise) {
  const uint64_t only = EnvNumber("DP420_GROUP_SIM_SEED", 0);
  const bool trace = EnvNumber("DP420_GROUP_SIM_TRACE", 0) != 0;
  const uint64_t first = only != 0 ? only : 1;
  const uint64_t seeds = only != 0 ? 1 : EnvNumber("DP420_GROUP_SIM_SEEDS", 2000);
  uint64_t committed = 0, clean = 0, clean_committed = 0, aborted = 0;
  for (uint64_t seed = first; seed < first + seeds; ++seed) {
    std::string log;
    SeedOutcome o = RunSeed(seed, trace, &log);
    if (trace) std::cout << log;
    if (!o.broken.empty()) {
      std::string all;
      for (const std::string& b : o.broken) all += "\n  " + b;
      FAIL() << "seed " << seed << " (" << o.config << "):" << all
             << "\nreplay: DP420_GROUP_SIM_SEED=" << seed
             << " DP420_GROUP_SIM_TRACE=1 engine_test --gtest_filter=GroupSimTest.*";
    }
    committed += o.commits > 0;
    aborted += o.commits == 0;
    if (seed % 10 == 0) {
      ++clean;
      clean_committed += o.commits > 0;
      EXPECT_EQ(o.commits, 1) << "seed " << seed << " had no fault and did not commit ("
                              << o.config << ")";
    }
  }
  std::cout << "group simulation: " << seeds << " seeds, " << committed << " committed, "
            << aborted << " nothing published; fault-free " << clean_committed << "/" << clean
            << "\n";
  // Not vacuous: faults abort many, but many commit through them.
  if (only == 0) {
    EXPECT_GE(committed * 7, seeds) << "fewer than a seventh of the seeds committed";
    EXPECT_GE(aborted * 10, seeds) << "fewer than a tenth aborted: the faults do not bite";
  }
}

TEST(GroupSimTest, ASeedReplaysExactly) {
  for (uint64_t seed : {7ull, 1234ull, 99991ull}) {
    std::string a, b;
    RunSeed(seed, true, &a);
    RunSeed(seed, true, &b);
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_GT(a.size(), 100u);
  }
}

// The checker itself: histories that break each promise are caught.
TEST(GroupSimTest, TheCheckerCatchesWhatBreaksAPromise) {
  SimStore store;
  History h;
  h.group = "g";
  h.members = {"a", "b"};
  h.max_hold_ns = 2 * kS;
  h.max_skew_ns = 500 * kMs;
  h.store = &store;
  const uint64_t e = store.BeginEpoch("g").value();
  ASSERT_TRUE(store.Stage("g", e, "a", "ha").ok());
  ASSERT_TRUE(store.Stage("g", e, "b", "hb").ok());
  h.transferred[{"a", e}] = "ha";
  h.transferred[{"b", e}] = "hb";
  ASSERT_TRUE(store.Commit({"g", e, {{"a", "ha"}, {"b", "hb"}}}).ok());
  // b's hold began after a's cut: no instant at which both held.
  h.holds = {{"a", e, 0, 10 * kMs, 10 * kMs}, {"b", e, 20 * kMs, 30 * kMs, 30 * kMs}};
  std::vector<std::string> broken = CheckHistory(h);
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_NE(broken[0].find("no instant"), std::string::npos) << broken[0];
  // Overlapping: clean.
  h.holds[1].start = 5 * kMs;
  EXPECT_TRUE(CheckHistory(h).empty());
  // a's cut came after its hold ended (a thaw it did not see).
  History late = h;
  late.holds[0].cut = 15 * kMs;
  broken = CheckHistory(late);
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_NE(broken[0].find("cut after its hold ended"), std::string::npos) << broken[0];
  // A member held twice, a hold left, a hold too long, a false report.
  History worse = h;
  worse.holds.push_back({"a", e, 0, -1, -1});
  worse.holds.push_back({"b", e + 1, 0, 3 * kS, -1});
  worse.coordinator_said.push_back({e, false});
  worse.member_done.push_back({"a", e + 1});
  worse.true_skew_ns["b"] = 2 * kS;
  ASSERT_EQ(store.BeginEpoch("g").value(), e + 1);  // and an epoch never ended
  const std::string all = [&] {
    std::string s;
    for (const std::string& b : CheckHistory(worse)) s += b + "\n";
    return s;
  }();
  for (const char* want : {"held 2 times", "still held", "held for 3000 ms", "said aborted",
                           "still open at the end",
                           "was told epoch", "clock 2000 ms off"}) {
    EXPECT_NE(all.find(want), std::string::npos) << want << " not in:\n" << all;
  }
}

// ---- scripted attacks ----

SimConfig Calm(int members) {
  Rng rng(10);  // seed 10: a fault-free configuration
  SimConfig c = SimConfig::From(10, rng);
  c.members = members;
  c.skew_ns.assign(size_t(members), 0);
  c.t.max_hold_ns = 2 * kS;
  return c;
}

// A coordinator stalled once every member had cut, while a newer one began:
// when it wakes to every member's DURABLE, its commit is refused (the
// repository's epoch moved on); the newer one commits.
TEST(GroupSimTest, AStalledOlderCoordinatorCannotCommit) {
  Sim sim(1, Calm(2), true);
  const uint64_t old_epoch = sim.StartAttempt();
  ASSERT_TRUE(sim.RunUntilTrue(
      [&] { return sim.coordinator(old_epoch)->phase() == GroupCoordinator::Phase::kTransferring; },
      5 * kS))
      << sim.trace();
  sim.PauseCoordinator(old_epoch, 60 * kS);
  sim.RunUntil(10 * kS);  // the members stage and say DURABLE to the stalled one
  ASSERT_TRUE(sim.store().Staged("g", old_epoch, "node0:vol").value().has_value()) << sim.trace();
  ASSERT_TRUE(sim.store().Staged("g", old_epoch, "node1:vol").value().has_value()) << sim.trace();
  const uint64_t new_epoch = sim.StartAttempt();
  sim.RunUntil(80 * kS);
  EXPECT_EQ(sim.coordinator(old_epoch)->phase(), GroupCoordinator::Phase::kAborted)
      << sim.trace();
  EXPECT_NE(sim.coordinator(old_epoch)->outcome().message().find("group commit"),
            std::string::npos)
      << sim.coordinator(old_epoch)->outcome().ToString();
  EXPECT_EQ(sim.coordinator(new_epoch)->phase(), GroupCoordinator::Phase::kCommitted)
      << sim.trace();
  EXPECT_EQ(sim.store().State("g", old_epoch), GroupStore::EpochState::kAborted);
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// Member-side fencing: a PREPARE or CUT of an epoch older than one the
// member has seen is answered FENCED, and that coordinator aborts on it.
TEST(GroupSimTest, AMemberFencesAnOlderEpoch) {
  Sim sim(2, Calm(2), true);
  const uint64_t older = sim.StartAttempt();
  sim.RunUntil(1 * kMs);  // its PREPAREs are on the way
  const uint64_t newer = sim.StartAttempt();
  sim.RunUntil(30 * kS);
  EXPECT_EQ(sim.coordinator(newer)->phase(), GroupCoordinator::Phase::kCommitted) << sim.trace();
  EXPECT_EQ(sim.coordinator(older)->phase(), GroupCoordinator::Phase::kAborted) << sim.trace();
  EXPECT_NE(sim.coordinator(older)->outcome().message().find("fenced"), std::string::npos)
      << sim.coordinator(older)->outcome().ToString();
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// A member whose hold ended at max_hold never holds again for that epoch
// (a late CUT would cut after the others released): PREPARE sent again gets
// FAIL, not QUIET, and the group aborts.
TEST(GroupSimTest, AHoldThatEndedIsNeverTakenAgainForTheEpoch) {
  SimConfig c = Calm(2);
  c.t.max_hold_ns = 100 * kMs;
  Sim sim(3, c, true);
  sim.PauseMember(1, 5 * kS);  // stalls before it holds; member 0's hold runs out
  const uint64_t epoch = sim.StartAttempt();
  sim.RunUntil(20 * kMs);
  ASSERT_EQ(sim.member(0)->state(), GroupMember::State::kQuiet) << sim.trace();
  sim.RunUntil(300 * kMs);
  EXPECT_EQ(sim.member(0)->state(), GroupMember::State::kFailed) << sim.trace();
  GroupMsg prepare = GroupMsg::Make(GroupMsgKind::kPrepare, "g", epoch, "node0:vol");
  sim.member(0)->OnMessage(prepare);
  EXPECT_EQ(sim.member(0)->state(), GroupMember::State::kFailed) << "held again";
  sim.RunUntil(30 * kS);
  EXPECT_EQ(sim.store().State("g", epoch), GroupStore::EpochState::kAborted) << sim.trace();
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// A member (holding valid credentials) that says DURABLE before it staged
// anything does not get a commit: the coordinator asks the repository, and
// aborts.
TEST(GroupSimTest, AMemberThatLiesAboutDurabilityGetsNoCommit) {
  Sim sim(4, Calm(2), true);
  const uint64_t epoch = sim.StartAttempt();
  ASSERT_TRUE(sim.RunUntilTrue(
      [&] { return sim.coordinator(epoch)->phase() == GroupCoordinator::Phase::kTransferring; },
      5 * kS))
      << sim.trace();
  ASSERT_FALSE(sim.store().Staged("g", epoch, "node1:vol").value().has_value()) << sim.trace();
  GroupMsg lie = GroupMsg::Make(GroupMsgKind::kDurable, "g", epoch, "node1:vol",
                                "node1:vol@" + std::to_string(epoch));
  sim.coordinator(epoch)->OnMessage(lie);
  sim.RunUntil(30 * kS);
  EXPECT_EQ(sim.store().State("g", epoch), GroupStore::EpochState::kAborted);
  EXPECT_NE(sim.coordinator(epoch)->outcome().message().find("reports its snapshot durable"),
            std::string::npos)
      << sim.coordinator(epoch)->outcome().ToString();
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// A member far off the server's clock stops the group before anything is cut.
TEST(GroupSimTest, AMemberWithASkewedClockStopsTheGroup) {
  SimConfig c = Calm(3);
  c.skew_ns[2] = 40 * kS;
  Sim sim(5, c, true);
  const uint64_t epoch = sim.StartAttempt();
  sim.RunUntil(30 * kS);
  EXPECT_EQ(sim.coordinator(epoch)->phase(), GroupCoordinator::Phase::kAborted);
  EXPECT_EQ(sim.coordinator(epoch)->outcome().code(), Code::kClockSkew);
  EXPECT_NE(sim.coordinator(epoch)->outcome().message().find("node2:vol"), std::string::npos);
  for (const Hold& h : sim.history().holds) EXPECT_EQ(h.cut, -1) << h.member << " cut";
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// A member a little beyond the bound answers late (it was stopped): over that
// round trip its clock cannot be told from a good one, so that answer does
// not count; the PREPARE sent again measures it, and the group stops.
TEST(GroupSimTest, ASlowAnswerDoesNotHideASkewedClock) {
  SimConfig c = Calm(3);
  c.t.prepare_ns = 20 * kS;
  c.t.max_hold_ns = 30 * kS;
  c.skew_ns[2] = -2500 * kMs;  // with a 6 s wait on its side, it would look right
  Sim sim(6, c, true);
  sim.PauseMember(2, 6 * kS);
  const uint64_t epoch = sim.StartAttempt();
  sim.RunUntil(40 * kS);
  EXPECT_EQ(sim.coordinator(epoch)->outcome().code(), Code::kClockSkew)
      << sim.coordinator(epoch)->outcome().ToString();
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

// ---- the state machines alone, on a clock the test moves ----

struct ManualClock final : Clock {
  int64_t mono = 1000 * kS, wall = kWallBase;
  int64_t MonotonicNs() const override { return mono; }
  int64_t WallNs() const override { return wall; }
  void Advance(int64_t ns) {
    mono += ns;
    wall += ns;
  }
};
struct Outbox final : GroupTransport {
  std::vector<std::pair<std::string, GroupMsg>> sent;
  void Send(const std::string& to, const GroupMsg& m) override { sent.push_back({to, m}); }
  // The newest message of `kind` to `to`.
  GroupMsg Last(GroupMsgKind kind, const std::string& to) const {
    for (auto it = sent.rbegin(); it != sent.rend(); ++it) {
      if (it->first == to && it->second.kind == kind) return it->second;
    }
    return GroupMsg();
  }
};
struct CountingVolume final : MemberVolume {
  int holds = 0;
  Status Hold(uint64_t, int64_t) override {
    ++holds;
    return Status::Ok();
  }
  Status Cut(uint64_t) override { return Status::Ok(); }
  void Release(uint64_t) override {}
  void StartTransfer(uint64_t) override {}
  void Discard(uint64_t) override {}
};
// Its commit becomes durable, then reports an error (an fsync of the folder
// failed after the rename).
struct LateErrorStore final : GroupStore {
  bool committed = false;
  Result<uint64_t> BeginEpoch(const std::string&) override { return uint64_t(1); }
  Result<std::optional<std::string>> Staged(const std::string&, uint64_t,
                                            const std::string& m) const override {
    return std::optional<std::string>(m + "@1");
  }
  Status Commit(const GroupCommit&) override {
    committed = true;
    return Status::IOError("fsync of the folder: Input/output error");
  }
  void Abort(const std::string&, uint64_t) override {}
  EpochState State(const std::string&, uint64_t) const override {
    return committed ? EpochState::kCommitted : EpochState::kOpen;
  }
};

GroupMsg QuietFor(const GroupMsg& prepare, int64_t member_wall) {
  GroupMsg q = GroupMsg::Make(GroupMsgKind::kQuiet, prepare.group, prepare.epoch, prepare.member);
  q.probe = prepare.probe;
  q.wall_ns = member_wall;
  return q;
}

// A commit whose error came after it became durable is reported committed,
// as the repository holds it; COMMITTED goes out, not ABORT.
TEST(GroupStateTest, ACommitThatFailedLateIsReportedAsTheRepositoryHoldsIt) {
  ManualClock clock;
  Outbox net;
  LateErrorStore store;
  GroupCoordinator c("g", {"a"}, 1, clock, net, store, GroupTimeouts{});
  c.Start();
  clock.Advance(kMs);
  c.OnMessage(QuietFor(net.Last(GroupMsgKind::kPrepare, "a"), clock.wall));
  c.OnMessage(GroupMsg::Make(GroupMsgKind::kCutDone, "g", 1, "a"));
  c.OnMessage(GroupMsg::Make(GroupMsgKind::kDurable, "g", 1, "a", "a@1"));
  ASSERT_TRUE(store.committed);
  EXPECT_EQ(c.phase(), GroupCoordinator::Phase::kCommitted) << c.outcome().ToString();
  EXPECT_EQ(net.sent.back().second.kind, GroupMsgKind::kCommitted);
}

// A member that keeps beating but never becomes durable does not hold the
// group (and the others' staged volumes) open: the transfer has a deadline.
// A durable member repeating DURABLE is read from the repository once.
TEST(GroupStateTest, ATransferThatNeverEndsIsAbortedAtItsDeadline) {
  ManualClock clock;
  Outbox net;
  struct CountingStore final : GroupStore {
    mutable int staged_reads = 0;
    bool aborted = false;
    Result<uint64_t> BeginEpoch(const std::string&) override { return uint64_t(1); }
    Result<std::optional<std::string>> Staged(const std::string&, uint64_t,
                                              const std::string& m) const override {
      ++staged_reads;
      return std::optional<std::string>(m + "@1");
    }
    Status Commit(const GroupCommit&) override { return Status::Internal("not reached"); }
    void Abort(const std::string&, uint64_t) override { aborted = true; }
    EpochState State(const std::string&, uint64_t) const override {
      return aborted ? EpochState::kAborted : EpochState::kOpen;
    }
  } store;
  GroupTimeouts t;
  t.transfer_ns = 60 * kS;
  GroupCoordinator c("g", {"a", "b"}, 1, clock, net, store, t);
  c.Start();
  clock.Advance(kMs);
  for (const char* m : {"a", "b"}) c.OnMessage(QuietFor(net.Last(GroupMsgKind::kPrepare, m), clock.wall));
  for (const char* m : {"a", "b"}) c.OnMessage(GroupMsg::Make(GroupMsgKind::kCutDone, "g", 1, m));
  ASSERT_EQ(c.phase(), GroupCoordinator::Phase::kTransferring);
  for (int i = 0; i < 5; ++i) c.OnMessage(GroupMsg::Make(GroupMsgKind::kDurable, "g", 1, "a", "a@1"));
  EXPECT_EQ(store.staged_reads, 1);
  // b beats every second for 59 s: still going; past 60 s: aborted, naming b.
  for (int s = 0; s < 59; ++s) {
    clock.Advance(kS);
    c.OnMessage(GroupMsg::Make(GroupMsgKind::kHeartbeat, "g", 1, "b"));
    c.Tick();
  }
  EXPECT_EQ(c.phase(), GroupCoordinator::Phase::kTransferring);
  clock.Advance(2 * kS);
  c.OnMessage(GroupMsg::Make(GroupMsgKind::kHeartbeat, "g", 1, "b"));
  c.Tick();
  ASSERT_EQ(c.phase(), GroupCoordinator::Phase::kAborted);
  EXPECT_TRUE(store.aborted);
  EXPECT_NE(c.outcome().message().find("durable within"), std::string::npos)
      << c.outcome().ToString();
  EXPECT_NE(c.outcome().message().find("b"), std::string::npos);
}

// Start() once; Tick() before it does nothing (no deadline counted from 0).
TEST(GroupStateTest, StartIsOnceAndTickBeforeItDoesNothing) {
  ManualClock clock;
  Outbox net;
  LateErrorStore store;
  GroupCoordinator c("g", {"a"}, 1, clock, net, store, GroupTimeouts{});
  c.Tick();
  EXPECT_FALSE(c.done()) << c.outcome().ToString();
  EXPECT_TRUE(net.sent.empty());
  c.Start();
  clock.Advance(kMs);
  c.OnMessage(QuietFor(net.Last(GroupMsgKind::kPrepare, "a"), clock.wall));
  ASSERT_EQ(c.phase(), GroupCoordinator::Phase::kCutting);
  c.Start();
  EXPECT_EQ(c.phase(), GroupCoordinator::Phase::kCutting) << "started over";
}

// Epoch 0 is no epoch: a fresh member does not hold for it.
TEST(GroupStateTest, EpochZeroIsNoEpoch) {
  ManualClock clock;
  Outbox net;
  CountingVolume volume;
  GroupMember m("a", clock, net, volume, GroupTimeouts{}, 0, [](uint64_t) { return Status::Ok(); },
                1);
  m.OnMessage(GroupMsg::Make(GroupMsgKind::kPrepare, "g", 0, "a"));
  EXPECT_EQ(volume.holds, 0);
  EXPECT_TRUE(net.sent.empty());
}

// An ABORT that overtook its PREPARE ends the epoch for the member: the
// PREPARE, arriving after, is answered FAIL and nothing is held.
TEST(GroupStateTest, AnAbortThatOvertookItsPrepareEndsTheEpoch) {
  ManualClock clock;
  Outbox net;
  CountingVolume volume;
  uint64_t persisted = 0;
  GroupMember m("a", clock, net, volume, GroupTimeouts{}, 0,
                [&](uint64_t e) {
                  persisted = e;
                  return Status::Ok();
                },
                1);
  m.OnMessage(GroupMsg::Make(GroupMsgKind::kAbort, "g", 3, "a", "deadline"));
  EXPECT_EQ(persisted, 3u);
  GroupMsg prepare = GroupMsg::Make(GroupMsgKind::kPrepare, "g", 3, "a");
  prepare.probe = 1;
  m.OnMessage(prepare);
  EXPECT_EQ(volume.holds, 0);
  EXPECT_EQ(m.state(), GroupMember::State::kFailed);
  EXPECT_EQ(net.Last(GroupMsgKind::kFail, "").epoch, 3u);
}

// The server suspended between sending a PREPARE and reading its answer:
// CLOCK_MONOTONIC stood still, the wall clock ran on. The two disagree, so
// the answer is no clock sample, and a member 9.5 s behind is not let
// through on a round trip that looked 20 ms long.
TEST(GroupStateTest, ASuspendedServerDoesNotHideASkewedClock) {
  ManualClock clock;
  Outbox net;
  LateErrorStore store;
  GroupCoordinator c("g", {"a"}, 1, clock, net, store, GroupTimeouts{});
  c.Start();
  const GroupMsg prepare = net.Last(GroupMsgKind::kPrepare, "a");
  clock.mono += 10 * kMs;
  clock.wall += 10 * kS;  // suspended
  c.OnMessage(QuietFor(prepare, clock.wall - 9500 * kMs));
  clock.Advance(10 * kMs);
  EXPECT_EQ(c.phase(), GroupCoordinator::Phase::kPreparing) << "a counted as quiet";
  // The PREPARE sent again measures it: beyond the bound, the group stops.
  clock.Advance(300 * kMs);
  c.Tick();
  const GroupMsg again = net.Last(GroupMsgKind::kPrepare, "a");
  ASSERT_NE(again.probe, prepare.probe);
  clock.Advance(5 * kMs);
  c.OnMessage(QuietFor(again, clock.wall - 9500 * kMs));
  EXPECT_EQ(c.outcome().code(), Code::kClockSkew) << c.outcome().ToString();
}

// A QUIET whose clocks are forged to the ends of int64 (a member holding
// valid credentials): no overflow, no probe the server sent, no sample.
TEST(GroupStateTest, ForgedQuietClocksAreNoSample) {
  ManualClock clock;
  Outbox net;
  LateErrorStore store;
  GroupCoordinator c("g", {"a", "b"}, 1, clock, net, store, GroupTimeouts{});
  c.Start();
  for (uint64_t probe : {uint64_t(0), uint64_t(99), ~uint64_t(0)}) {
    GroupMsg q = GroupMsg::Make(GroupMsgKind::kQuiet, "g", 1, "a");
    q.probe = probe;
    q.wall_ns = INT64_MIN;
    c.OnMessage(q);
  }
  GroupMsg real = QuietFor(net.Last(GroupMsgKind::kPrepare, "a"), INT64_MIN);
  clock.Advance(kMs);
  c.OnMessage(real);  // its probe, a clock at the end of int64: far off, no overflow
  EXPECT_EQ(c.outcome().code(), Code::kClockSkew) << c.outcome().ToString();
}

TEST(GroupStateTest, TimeoutsOutOfRangeAreRefused) {
  EXPECT_TRUE(GroupTimeouts{}.Validate().ok());
  GroupTimeouts t;
  t.loss_beats = 0;
  EXPECT_NE(t.Validate().message().find("loss_beats"), std::string::npos);
  t = GroupTimeouts{};
  t.heartbeat_ns = 50;
  EXPECT_NE(t.Validate().message().find("heartbeat"), std::string::npos);
  t = GroupTimeouts{};
  t.max_hold_ns = INT64_MAX;
  EXPECT_NE(t.Validate().message().find("max_hold"), std::string::npos);
}

// One ABORT lost on its way to a holding member: the member says QUIET again
// every resend interval, is answered ABORT again, and releases then, not at
// its deadline seconds later.
TEST(GroupSimTest, ALostAbortIsAnsweredAgainAndTheHoldEndsThen) {
  SimConfig c = Calm(2);
  c.t.max_hold_ns = 7 * kS;
  c.t.prepare_ns = 3 * kS;
  Sim sim(21, c, true);
  sim.PauseMember(1, 20 * kS);  // never QUIET in time: the prepare deadline aborts
  bool lost = false;
  sim.drop = [&](const std::string&, const std::string& to, const GroupMsg& m) {
    if (lost || to != "node0:vol" || m.kind != GroupMsgKind::kAbort) return false;
    return lost = true;
  };
  const uint64_t epoch = sim.StartAttempt();
  sim.RunUntil(30 * kS);
  ASSERT_TRUE(lost);
  ASSERT_EQ(sim.coordinator(epoch)->phase(), GroupCoordinator::Phase::kAborted);
  const int64_t aborted = sim.history().ended_at.at(epoch);
  int held = 0;
  for (const Hold& h : sim.history().holds) {
    if (h.member != "node0:vol" || h.epoch != epoch) continue;
    ++held;
    EXPECT_LT(h.end - aborted, 1 * kS) << "held " << (h.end - aborted) / kMs
                                       << " ms after the abort\n" << sim.trace();
  }
  EXPECT_EQ(held, 1);
  EXPECT_TRUE(CheckHistory(sim.history()).empty());
}

}  // namespace
}  // namespace dp420::control
