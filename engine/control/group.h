// Consistency groups: one point in time across the volumes of several nodes,
// published by one commit or not at all.
//
// The protocol (docs/ARCHITECTURE.md "Consistency groups"), between one
// coordinator (inside the repository server) and one member per volume:
//
//   1. The coordinator takes a new epoch from the repository (GroupStore::
//      BeginEpoch, durable): the fencing token. Everything of an older epoch
//      (a coordinator that was paused or lost, a member's late message, a
//      staging, a commit) is refused from then on.
//   2. PREPARE → every member holds its source (fsfreeze, a pre hook) for at
//      most max_hold, measured on its own monotonic clock, and answers QUIET
//      with its wall clock (the skew check).
//   3. When every member is QUIET, CUT → each member takes its point in time
//      (a reflink copy, or keeps reading under the hold), releases, answers
//      CUT_DONE, and sends its data to the repository, staged under the
//      epoch. There is an instant at which every member held: each member's
//      hold began before its QUIET and lasts until its cut, and no CUT is sent
//      before the last QUIET arrived. A member whose hold ended (its deadline,
//      a crash, an abort) never holds again for that epoch: it answers FAIL.
//   4. Every member's data durable (DURABLE, checked against the repository,
//      not taken on the member's word) → GroupStore::Commit publishes every
//      member's snapshot and the group manifest at once, refused unless the
//      epoch is still the newest. Then COMMITTED.
//   Any FAIL, FENCED, deadline (PREPARE, CUT), a member silent for
//   loss_beats heartbeats during the transfer, or a skew beyond max_skew
//   aborts: ABORT to every member (release, discard), and the repository
//   drops what the epoch staged. Unanswered messages are sent again every
//   resend interval; every handler is idempotent (the network may lose,
//   duplicate and reorder).
//
// The state machines here do no I/O of their own: time comes from a Clock,
// messages go out through a GroupTransport, a member's source is a
// MemberVolume, the repository a GroupStore. The agent and the server wire
// them to sockets, engine/control/pit.h and the repository; the simulation
// (tests/engine/group_sim_test.cc) to simulated ones.
//
// Thread safety: none; each object is driven by one thread (or a lock).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/control/clock.h"
#include "engine/control/liveness.h"
#include "io/status.h"

namespace dp420::control {

enum class GroupMsgKind : uint8_t {
  kPrepare = 1,  // coordinator → member: hold the source for this epoch
  kQuiet,        // member → coordinator: holding (probe, wall_ns); repeated while it holds
  kCut,          // coordinator → member: every member holds: take the point in time
  kCutDone,      // member → coordinator: taken and released
  kHeartbeat,    // member → coordinator: transferring (every heartbeat ± 20 %)
  kDurable,      // member → coordinator: staged in the repository (detail: manifest hash)
  kFail,         // member → coordinator: cannot go on (detail: why)
  kFenced,       // member → coordinator: it has seen a newer epoch (epoch: that one)
  kAbort,        // coordinator → member: drop this epoch
  kCommitted,    // coordinator → member: the group is published
};
const char* GroupMsgName(GroupMsgKind kind);

struct GroupMsg {
  GroupMsgKind kind = GroupMsgKind::kPrepare;
  std::string group;
  uint64_t epoch = 0;
  std::string member;       // the member it is from or for
  uint64_t probe = 0;        // PREPARE: its number; QUIET: the PREPARE it answers (0: none)
  int64_t wall_ns = 0;       // QUIET: the member's wall clock
  std::string detail;        // DURABLE: manifest hash; FAIL, ABORT: why

  static GroupMsg Make(GroupMsgKind kind, std::string group, uint64_t epoch, std::string member,
                       std::string detail = "") {
    GroupMsg m;
    m.kind = kind;
    m.group = std::move(group);
    m.epoch = epoch;
    m.member = std::move(member);
    m.detail = std::move(detail);
    return m;
  }
};

class GroupTransport {
 public:
  virtual ~GroupTransport() = default;
  // Best effort: a message may be lost, duplicated or delayed. `to` is a
  // member's name, or "" for the coordinator. Never delivers before it
  // returns (the state machines are not re-entered from their own sends).
  virtual void Send(const std::string& to, const GroupMsg& msg) = 0;
};

struct GroupTimeouts {
  int64_t prepare_ns = 10'000'000'000;  // every member QUIET within this of the start
  int64_t cut_ns = 5'000'000'000;       // every member CUT_DONE within this of the CUT
  int64_t resend_ns = 200'000'000;      // an unanswered message is sent again
  int64_t heartbeat_ns = 5'000'000'000; // a transferring member's beat (± 20 %)
  int loss_beats = 3;                   // silent this many beats: lost
  int64_t max_hold_ns = 7'000'000'000;  // a member's hold, never longer (--max-freeze)
  int64_t max_skew_ns = 500'000'000;    // a member's wall clock against the server's
  int64_t transfer_ns = 86'400'000'000'000;  // every member DURABLE within this of the cut

  // Each duration 1 ms - 1 day (max_hold up to 1 h, transfer up to 7 days),
  // loss_beats 1-100.
  Status Validate() const;
};

// ---- member ----

// What a member does to its own source.
class MemberVolume {
 public:
  virtual ~MemberVolume() = default;
  // Holds the source (freeze, pre hook). Whatever happens to this process,
  // the hold ends within max_hold_ns (a watchdog's job: pit.h).
  virtual Status Hold(uint64_t epoch, int64_t max_hold_ns) = 0;
  // Takes the point in time under the hold, then releases it. Fails when the
  // hold ended before (its deadline, someone else thawed).
  virtual Status Cut(uint64_t epoch) = 0;
  // Ends a hold without a cut.
  virtual void Release(uint64_t epoch) = 0;
  // Sends the cut's data to the repository, staged under the epoch; the
  // outcome comes back through GroupMember::OnTransferDone.
  virtual void StartTransfer(uint64_t epoch) = 0;
  // Stops a transfer and drops the epoch's local copy.
  virtual void Discard(uint64_t epoch) = 0;
};

class GroupMember {
 public:
  enum class State { kIdle, kQuiet, kTransferring, kDurable, kFailed, kDone };

  // `highest_epoch`: the newest epoch this member has seen, as persisted
  // (`persist` is called with every newer one before the member acts on it).
  GroupMember(std::string name, const Clock& clock, GroupTransport& transport,
              MemberVolume& volume, GroupTimeouts t, uint64_t highest_epoch,
              std::function<Status(uint64_t)> persist, uint64_t jitter_seed);

  void OnMessage(const GroupMsg& msg);
  // Hold deadline, heartbeats and resends of DURABLE; call at least every
  // resend interval.
  void Tick();
  // The transfer of `epoch` ended: staged with `manifest_hash`, or failed.
  void OnTransferDone(uint64_t epoch, const Result<std::string>& manifest_hash);

  State state() const { return state_; }
  uint64_t epoch() const { return epoch_; }
  uint64_t highest_epoch() const { return highest_; }
  const std::string& group() const { return group_; }
  const std::string& why() const { return why_; }  // why it failed

 private:
  void OnPrepare(const GroupMsg& msg);
  void OnCut(const GroupMsg& msg);
  void OnEnd(const GroupMsg& msg);
  bool Admit(const GroupMsg& msg);
  void EndAttempt(State to);
  void Fail(const std::string& why);
  void Reply(GroupMsgKind kind, std::string detail = "", const GroupMsg* echo = nullptr);
  void ScheduleResend(int64_t now);

  std::string name_;
  const Clock& clock_;
  GroupTransport& transport_;
  MemberVolume& volume_;
  GroupTimeouts t_;
  std::function<Status(uint64_t)> persist_;
  Liveness beats_;  // heartbeats while transferring (± 20 %)
  uint64_t highest_ = 0;
  uint64_t epoch_ = 0;  // the attempt this member is in (0: none)
  std::string group_;
  State state_ = State::kIdle;
  int64_t hold_until_ = 0;
  int64_t next_send_ = 0;
  std::string manifest_hash_;
  std::string why_;
};

// ---- coordinator ----

struct GroupMemberResult {
  std::string member;
  std::string manifest_hash;
  int64_t skew_ns = 0;        // its wall clock minus the server's, as measured
  int64_t skew_error_ns = 0;  // ± half the round trip it was measured over
};

struct GroupCommit {
  std::string group;
  uint64_t epoch = 0;
  std::vector<GroupMemberResult> members;
};

// The repository's side: durable, the one authority on epochs.
class GroupStore {
 public:
  enum class EpochState { kOpen, kCommitted, kAborted };
  virtual ~GroupStore() = default;
  // A new epoch, newer than every one before in the repository (of any
  // group: a member is fenced by the newest it has seen), durable before it
  // returns.
  virtual Result<uint64_t> BeginEpoch(const std::string& group) = 0;
  // The manifest hash `member` staged under (group, epoch), if it did; an
  // error when the repository cannot tell.
  virtual Result<std::optional<std::string>> Staged(const std::string& group, uint64_t epoch,
                                                    const std::string& member) const = 0;
  // Publishes every member's snapshot and the group manifest at once, or
  // nothing: refused unless c.epoch is the newest, still open, and every
  // member staged the hash named. An error may come after the commit became
  // durable: State tells.
  virtual Status Commit(const GroupCommit& c) = 0;
  // Drops what the epoch staged; a committed epoch is left as it is, one
  // never begun is not touched.
  virtual void Abort(const std::string& group, uint64_t epoch) = 0;
  // kAborted also for an epoch never begun.
  virtual EpochState State(const std::string& group, uint64_t epoch) const = 0;
};

class GroupCoordinator {
 public:
  enum class Phase { kPreparing, kCutting, kTransferring, kCommitted, kAborted };

  GroupCoordinator(std::string group, std::vector<std::string> members, uint64_t epoch,
                   const Clock& clock, GroupTransport& transport, GroupStore& store,
                   GroupTimeouts t);

  // Sends the first PREPAREs; once (later calls do nothing).
  void Start();
  void OnMessage(const GroupMsg& msg);
  // Deadlines, loss and resends; call at least every resend interval.
  void Tick();
  // Aborts unless it ended already (the operator gave up, the server stops).
  void Cancel(Status why);

  // When each phase began, on the monotonic clock (0: not reached).
  struct Timeline {
    int64_t started = 0, all_quiet = 0, all_cut = 0, ended = 0;
  };
  const Timeline& timeline() const { return timeline_; }

  const std::string& group() const { return group_; }
  Phase phase() const { return phase_; }
  bool done() const { return phase_ == Phase::kCommitted || phase_ == Phase::kAborted; }
  uint64_t epoch() const { return epoch_; }
  const std::vector<std::string>& members() const { return names_; }
  const Status& outcome() const { return why_; }  // why it aborted
  const std::vector<GroupMemberResult>& results() const { return results_; }

 private:
  // A PREPARE sent: its number and the server's clocks then. The round
  // trip is measured on these, never on times a member sends back.
  struct Probe {
    uint64_t id = 0;
    int64_t mono = 0, wall = 0;
  };
  struct Member {
    bool quiet = false, cut = false, durable = false;
    int64_t last_sent = 0;
    std::array<Probe, 8> probes{};
    std::optional<Liveness> heard;  // while transferring: its heartbeats
  };
  void OnQuiet(const GroupMsg& msg, Member& m, GroupMemberResult& r);
  void OnDurable(const GroupMsg& msg, Member& m, GroupMemberResult& r);
  void Advance();
  void Commit();
  void Abort(Status why);
  void Broadcast(GroupMsgKind kind, bool only_unanswered);
  void SendTo(size_t i, GroupMsgKind kind);
  bool Answered(const Member& m) const;
  void CheckDeadlines(int64_t now);
  const Probe* FindProbe(const Member& m, uint64_t id) const;

  std::string group_;
  std::vector<std::string> names_;
  uint64_t epoch_;
  const Clock& clock_;
  GroupTransport& transport_;
  GroupStore& store_;
  GroupTimeouts t_;
  Phase phase_ = Phase::kPreparing;
  bool started_ = false;
  uint64_t probes_sent_ = 0;
  int64_t phase_start_ = 0;
  std::vector<Member> members_;
  std::vector<GroupMemberResult> results_;
  Status why_;
  Timeline timeline_;
};

// Which running coordinator a member's message is for (the server's side):
// the one of its group and epoch; for FENCED (which names the member's
// newest epoch, not the coordinator's) every one of its group older than
// that. None: no coordinator runs that epoch any more (AnswerForEndedEpoch).
class GroupRouter {
 public:
  void Add(GroupCoordinator* c) { running_.push_back(c); }
  void Remove(const GroupCoordinator* c);
  std::vector<GroupCoordinator*> Targets(const GroupMsg& msg) const;

 private:
  std::vector<GroupCoordinator*> running_;
};

// The server's answer to a member's message for an epoch no live coordinator
// runs (the coordinator ended, or the server restarted): COMMITTED when the
// repository has it committed, else ABORT (and the epoch's staging dropped).
void AnswerForEndedEpoch(GroupStore& store, GroupTransport& transport, const GroupMsg& msg);

}  // namespace dp420::control
