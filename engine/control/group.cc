#include "engine/control/group.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>

namespace dp420::control {
namespace {

// a - b, clamped to int64 (the operands may come from a peer).
int64_t SaturatingSub(int64_t a, int64_t b) {
  const __int128 d = __int128(a) - __int128(b);
  if (d > std::numeric_limits<int64_t>::max()) return std::numeric_limits<int64_t>::max();
  if (d < std::numeric_limits<int64_t>::min() + 1) return std::numeric_limits<int64_t>::min() + 1;
  return int64_t(d);
}

std::string Seconds(int64_t ns) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3f s", double(ns) / 1e9);
  return text;
}

}  // namespace

const char* GroupMsgName(GroupMsgKind kind) {
  switch (kind) {
    case GroupMsgKind::kPrepare: return "PREPARE";
    case GroupMsgKind::kQuiet: return "QUIET";
    case GroupMsgKind::kCut: return "CUT";
    case GroupMsgKind::kCutDone: return "CUT_DONE";
    case GroupMsgKind::kHeartbeat: return "HEARTBEAT";
    case GroupMsgKind::kDurable: return "DURABLE";
    case GroupMsgKind::kFail: return "FAIL";
    case GroupMsgKind::kFenced: return "FENCED";
    case GroupMsgKind::kAbort: return "ABORT";
    case GroupMsgKind::kCommitted: return "COMMITTED";
  }
  return "?";
}

Status GroupTimeouts::Validate() const {
  constexpr int64_t kMs = 1'000'000, kDay = 86'400'000 * kMs;
  struct Bound {
    const char* name;
    int64_t value, max;
  };
  for (const Bound& b : {Bound{"prepare", prepare_ns, kDay}, Bound{"cut", cut_ns, kDay},
                         Bound{"resend", resend_ns, kDay}, Bound{"heartbeat", heartbeat_ns, kDay},
                         Bound{"max_hold", max_hold_ns, 3'600'000 * kMs},
                         Bound{"max_skew", max_skew_ns, kDay},
                         Bound{"transfer", transfer_ns, 7 * kDay}}) {
    if (b.value < kMs || b.value > b.max) {
      return Status::InvalidArgument(std::string("group timeout ") + b.name + " is " +
                                     Seconds(b.value) + "; allowed 0.001 s to " + Seconds(b.max));
    }
  }
  if (loss_beats < 1 || loss_beats > 100) {
    return Status::InvalidArgument("loss_beats is " + std::to_string(loss_beats) +
                                   "; allowed 1 to 100");
  }
  return Status::Ok();
}

// ---- GroupMember ----

GroupMember::GroupMember(std::string name, const Clock& clock, GroupTransport& transport,
                         MemberVolume& volume, GroupTimeouts t, uint64_t highest_epoch,
                         std::function<Status(uint64_t)> persist, uint64_t jitter_seed)
    : name_(std::move(name)),
      clock_(clock),
      transport_(transport),
      volume_(volume),
      t_(t),
      persist_(std::move(persist)),
      beats_(clock, t.heartbeat_ns, std::numeric_limits<int64_t>::max() / 2, 20, jitter_seed),
      highest_(highest_epoch) {}

void GroupMember::OnMessage(const GroupMsg& msg) {
  if (!Admit(msg)) return;
  switch (msg.kind) {
    case GroupMsgKind::kPrepare: return OnPrepare(msg);
    case GroupMsgKind::kCut: return OnCut(msg);
    case GroupMsgKind::kAbort:
    case GroupMsgKind::kCommitted: return OnEnd(msg);
    default: return;  // a member's kinds, not for a member
  }
}

// Whether `msg` is for the attempt this member is in, after fencing: an
// older epoch is answered FENCED, a newer PREPARE ends the attempt before
// (persisted first), and an epoch this member lost (it restarted) is FAIL.
bool GroupMember::Admit(const GroupMsg& msg) {
  if (msg.member != name_ || msg.epoch == 0) return false;  // epochs start at 1
  const bool asks = msg.kind == GroupMsgKind::kPrepare || msg.kind == GroupMsgKind::kCut;
  auto answer = [&](GroupMsgKind kind, uint64_t epoch, std::string detail) {
    transport_.Send("", GroupMsg::Make(kind, msg.group, epoch, name_, std::move(detail)));
  };
  if (msg.epoch < highest_) {
    if (asks) answer(GroupMsgKind::kFenced, highest_, "");
    return false;
  }
  if (msg.epoch > highest_) {
    if (msg.kind == GroupMsgKind::kCut) {
      answer(GroupMsgKind::kFail, msg.epoch, "a CUT for an epoch it never held for");
      return false;
    }
    if (!asks && msg.kind != GroupMsgKind::kAbort) return false;
    Status saved = persist_(msg.epoch);
    if (!saved.ok()) {
      if (asks) answer(GroupMsgKind::kFail, msg.epoch, "cannot record the epoch: " + saved.message());
      return false;
    }
    if (epoch_ != 0) EndAttempt(State::kFailed);  // fenced by the newer coordinator
    highest_ = epoch_ = msg.epoch;
    group_ = msg.group;
    state_ = State::kIdle;
    why_.clear();
    if (msg.kind == GroupMsgKind::kAbort) {
      // It overtook its PREPARE: that epoch is over before this member held.
      state_ = State::kFailed;
      why_ = "aborted before this member was prepared: " + msg.detail;
      return false;
    }
    return true;
  }
  if (epoch_ != msg.epoch) {  // this epoch's attempt was lost (a restart)
    if (asks) answer(GroupMsgKind::kFail, msg.epoch, "the member restarted during the epoch");
    return false;
  }
  return true;
}

void GroupMember::OnPrepare(const GroupMsg& msg) {
  switch (state_) {
    case State::kIdle: {
      // The deadline counts from before the hold: never later than the
      // watchdog's, which starts once the hold is in force.
      const int64_t start = clock_.MonotonicNs();
      Status held = volume_.Hold(epoch_, t_.max_hold_ns);
      if (!held.ok()) return Fail("hold: " + held.message());
      state_ = State::kQuiet;
      hold_until_ = start + t_.max_hold_ns;
      ScheduleResend(clock_.MonotonicNs());
      return Reply(GroupMsgKind::kQuiet, "", &msg);
    }
    case State::kQuiet:  // a resend: answered with this PREPARE's probe
      if (clock_.MonotonicNs() >= hold_until_) {
        return Fail("the hold reached --max-freeze before every member held");
      }
      return Reply(GroupMsgKind::kQuiet, "", &msg);
    case State::kTransferring: return Reply(GroupMsgKind::kCutDone);
    case State::kDurable: return Reply(GroupMsgKind::kDurable, manifest_hash_);
    case State::kFailed: return Reply(GroupMsgKind::kFail, why_);
    case State::kDone: return;
  }
}

void GroupMember::OnCut(const GroupMsg&) {
  switch (state_) {
    case State::kQuiet: {
      const int64_t now = clock_.MonotonicNs();
      // Past its deadline the hold may have ended: a cut now could be later
      // than another member's, and this member never holds again for it.
      if (now >= hold_until_) return Fail("the hold reached --max-freeze before the CUT came");
      Status cut = volume_.Cut(epoch_);
      if (!cut.ok()) return Fail("cut: " + cut.message());
      state_ = State::kTransferring;
      volume_.StartTransfer(epoch_);
      beats_.Sent();
      return Reply(GroupMsgKind::kCutDone);
    }
    case State::kTransferring: return Reply(GroupMsgKind::kCutDone);
    case State::kDurable: return Reply(GroupMsgKind::kDurable, manifest_hash_);
    case State::kFailed: return Reply(GroupMsgKind::kFail, why_);
    case State::kIdle: return Fail("a CUT before this member held");
    case State::kDone: return;
  }
}

void GroupMember::OnEnd(const GroupMsg& msg) {
  if (state_ == State::kDone || state_ == State::kFailed) return;
  if (msg.kind == GroupMsgKind::kAbort) {
    EndAttempt(State::kFailed);
    why_ = "aborted by the coordinator: " + msg.detail;
    return;
  }
  // COMMITTED: only a member whose data is durable can be part of a commit;
  // anything else is a message this member cannot have earned.
  if (state_ == State::kDurable) {
    volume_.Discard(epoch_);  // the local copy is no longer needed
    state_ = State::kDone;
  }
}

void GroupMember::Tick() {
  const int64_t now = clock_.MonotonicNs();
  if (state_ == State::kQuiet && now >= hold_until_) {
    return Fail("the hold reached --max-freeze (" + Seconds(t_.max_hold_ns) +
                ") before every member held");
  }
  if (state_ == State::kTransferring && beats_.BeatDue()) {
    Reply(GroupMsgKind::kHeartbeat);
    beats_.Sent();
  }
  // Held or durable, it says so again until the outcome comes: a lost ABORT
  // is answered again, and the hold ends then, not at its deadline. (QUIET
  // without a probe is no clock sample.)
  if ((state_ == State::kQuiet || state_ == State::kDurable) && now >= next_send_) {
    if (state_ == State::kQuiet) {
      Reply(GroupMsgKind::kQuiet);
    } else {
      Reply(GroupMsgKind::kDurable, manifest_hash_);
    }
    ScheduleResend(now);
  }
}

void GroupMember::OnTransferDone(uint64_t epoch, const Result<std::string>& manifest_hash) {
  if (epoch != epoch_ || state_ != State::kTransferring) return;  // ended meanwhile
  if (!manifest_hash.ok()) return Fail("transfer: " + manifest_hash.status().message());
  manifest_hash_ = manifest_hash.value();
  state_ = State::kDurable;
  ScheduleResend(clock_.MonotonicNs());
  Reply(GroupMsgKind::kDurable, manifest_hash_);
}

void GroupMember::EndAttempt(State to) {
  if (state_ == State::kQuiet) volume_.Release(epoch_);
  if (state_ == State::kTransferring || state_ == State::kDurable) volume_.Discard(epoch_);
  state_ = to;
}

void GroupMember::Fail(const std::string& why) {
  EndAttempt(State::kFailed);
  why_ = why;
  Reply(GroupMsgKind::kFail, why_);
}

void GroupMember::Reply(GroupMsgKind kind, std::string detail, const GroupMsg* echo) {
  GroupMsg m = GroupMsg::Make(kind, group_, epoch_, name_, std::move(detail));
  if (kind == GroupMsgKind::kQuiet) m.wall_ns = clock_.WallNs();
  if (echo != nullptr) m.probe = echo->probe;
  transport_.Send("", m);
}

// The next QUIET or DURABLE said again.
void GroupMember::ScheduleResend(int64_t now) { next_send_ = now + t_.resend_ns; }

// ---- GroupCoordinator ----

GroupCoordinator::GroupCoordinator(std::string group, std::vector<std::string> members,
                                   uint64_t epoch, const Clock& clock, GroupTransport& transport,
                                   GroupStore& store, GroupTimeouts t)
    : group_(std::move(group)),
      names_(std::move(members)),
      epoch_(epoch),
      clock_(clock),
      transport_(transport),
      store_(store),
      t_(t),
      members_(names_.size()),
      results_(names_.size()) {
  for (size_t i = 0; i < names_.size(); ++i) results_[i].member = names_[i];
}

void GroupCoordinator::Start() {
  if (started_) return;
  started_ = true;
  phase_ = Phase::kPreparing;
  phase_start_ = clock_.MonotonicNs();
  timeline_.started = phase_start_;
  Broadcast(GroupMsgKind::kPrepare, false);
}

void GroupCoordinator::OnMessage(const GroupMsg& msg) {
  if (msg.group != group_) return;
  size_t i = 0;
  while (i < names_.size() && names_[i] != msg.member) ++i;
  if (i == names_.size()) return;
  if (msg.kind == GroupMsgKind::kFenced) {
    if (msg.epoch > epoch_ && !done()) {
      Abort(Status::Busy("fenced: member " + msg.member + " has seen the newer epoch " +
                         std::to_string(msg.epoch)));
    }
    return;
  }
  if (msg.epoch != epoch_ || !started_) return;
  Member& m = members_[i];
  if (m.heard) m.heard->Heard();
  // After the end, every message of the epoch is answered with the outcome.
  if (phase_ == Phase::kCommitted) return SendTo(i, GroupMsgKind::kCommitted);
  if (phase_ == Phase::kAborted) return SendTo(i, GroupMsgKind::kAbort);
  switch (msg.kind) {
    case GroupMsgKind::kQuiet:
      if (phase_ == Phase::kPreparing) OnQuiet(msg, m, results_[i]);
      break;
    case GroupMsgKind::kCutDone:
      if (phase_ == Phase::kCutting) m.cut = true;
      break;
    case GroupMsgKind::kDurable: OnDurable(msg, m, results_[i]); break;
    case GroupMsgKind::kFail:
      return Abort(Status::Make(Code::kNetwork, "member " + msg.member + ": " + msg.detail));
    default: break;  // a heartbeat: heard
  }
  if (!done()) Advance();
}

// QUIET: the member holds. Its clock is checked against the server's over the
// round trip of the PREPARE it answers: beyond max_skew (even allowing for
// the round trip) the group does not go on. A member that goes on is within
// twice max_skew whatever the network did.
void GroupCoordinator::OnQuiet(const GroupMsg& msg, Member& m, GroupMemberResult& r) {
  const Probe* p = FindProbe(m, msg.probe);
  if (p == nullptr) return;  // a QUIET said again, or one whose PREPARE is long gone
  const int64_t mono = clock_.MonotonicNs() - p->mono;
  const int64_t wall = SaturatingSub(clock_.WallNs(), p->wall);
  // The server's two clocks disagree about how long the round trip took (a
  // suspend stops the monotonic clock, the wall clock was stepped): no
  // sample; the PREPARE sent again measures anew. So is one over a round
  // trip longer than the bound, where the clock cannot be told within it.
  const int64_t rtt = std::max(mono, wall);
  if (std::llabs(SaturatingSub(wall, mono)) > t_.max_skew_ns / 2 || rtt > t_.max_skew_ns) return;
  r.skew_ns = SaturatingSub(msg.wall_ns, p->wall + rtt / 2);
  r.skew_error_ns = rtt / 2;
  if (std::llabs(r.skew_ns) - r.skew_error_ns > t_.max_skew_ns) {
    return Abort(Status::ClockSkew("member " + msg.member + ": its clock is " +
                                   Seconds(r.skew_ns) + " off the server's (± " +
                                   Seconds(r.skew_error_ns) + "), more than the " +
                                   Seconds(t_.max_skew_ns) + " allowed"));
  }
  m.quiet = true;
}

const GroupCoordinator::Probe* GroupCoordinator::FindProbe(const Member& m, uint64_t id) const {
  if (id == 0) return nullptr;
  for (const Probe& p : m.probes) {
    if (p.id == id) return &p;
  }
  return nullptr;
}

// DURABLE is checked against the repository: a member's word does not make
// its data durable.
void GroupCoordinator::OnDurable(const GroupMsg& msg, Member& m, GroupMemberResult& r) {
  if (phase_ == Phase::kPreparing) return;  // no CUT was sent: nothing can be durable
  // Said again until the outcome: checked once (the repository read is not free).
  if (m.durable && r.manifest_hash == msg.detail) return;
  Result<std::optional<std::string>> read = store_.Staged(group_, epoch_, msg.member);
  if (!read.ok()) {
    return Abort(read.status().Prefix("reading what member " + msg.member + " staged"));
  }
  const std::optional<std::string>& staged = read.value();
  if (!staged || *staged != msg.detail) {
    return Abort(Status::Corruption("member " + msg.member +
                                    " reports its snapshot durable, but the repository holds " +
                                    (staged ? "another one" : "none") + " for epoch " +
                                    std::to_string(epoch_)));
  }
  m.cut = m.durable = true;
  r.manifest_hash = msg.detail;
}

void GroupCoordinator::Advance() {
  auto all = [&](bool Member::*flag) {
    for (const Member& m : members_) {
      if (!(m.*flag)) return false;
    }
    return true;
  };
  const int64_t now = clock_.MonotonicNs();
  if (phase_ == Phase::kPreparing && all(&Member::quiet)) {
    phase_ = Phase::kCutting;
    phase_start_ = now;
    timeline_.all_quiet = now;
    Broadcast(GroupMsgKind::kCut, false);
  }
  if (phase_ == Phase::kCutting && all(&Member::cut)) {
    phase_ = Phase::kTransferring;
    phase_start_ = now;
    timeline_.all_cut = now;
    // Beats come every heartbeat + 20 % at the latest.
    const int64_t lost_after = t_.loss_beats * (t_.heartbeat_ns / 100 * 120);
    for (Member& m : members_) m.heard.emplace(clock_, t_.heartbeat_ns, lost_after);
  }
  if (phase_ == Phase::kTransferring && all(&Member::durable)) Commit();
}

void GroupCoordinator::Commit() {
  Status committed = store_.Commit(GroupCommit{group_, epoch_, results_});
  // An error may come after the commit became durable: the repository says.
  if (!committed.ok() && store_.State(group_, epoch_) != GroupStore::EpochState::kCommitted) {
    return Abort(committed.Prefix("group commit"));
  }
  phase_ = Phase::kCommitted;
  timeline_.ended = clock_.MonotonicNs();
  Broadcast(GroupMsgKind::kCommitted, false);
}

void GroupCoordinator::Abort(Status why) {
  why_ = std::move(why);
  phase_ = Phase::kAborted;
  timeline_.ended = clock_.MonotonicNs();
  store_.Abort(group_, epoch_);
  Broadcast(GroupMsgKind::kAbort, false);
}

void GroupCoordinator::Cancel(Status why) {
  if (done()) return;
  Abort(std::move(why));
}

void GroupCoordinator::Tick() {
  if (!started_ || done()) return;
  const int64_t now = clock_.MonotonicNs();
  CheckDeadlines(now);
  if (done()) return;
  if (phase_ == Phase::kPreparing) Broadcast(GroupMsgKind::kPrepare, true);
  if (phase_ == Phase::kCutting) Broadcast(GroupMsgKind::kCut, true);
}

void GroupCoordinator::CheckDeadlines(int64_t now) {
  std::string late;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (!Answered(members_[i])) late += (late.empty() ? "" : ", ") + names_[i];
  }
  if (phase_ == Phase::kPreparing && now - phase_start_ > t_.prepare_ns) {
    return Abort(Status::Network("not every member held within " + Seconds(t_.prepare_ns) +
                                 ": " + late));
  }
  if (phase_ == Phase::kCutting && now - phase_start_ > t_.cut_ns) {
    return Abort(Status::Network("not every member took its point in time within " +
                                 Seconds(t_.cut_ns) + ": " + late));
  }
  if (phase_ != Phase::kTransferring) return;
  // A member that beats but never becomes durable holds the others' volumes
  // (their staged snapshots keep their locks): not for longer than this.
  if (now - phase_start_ > t_.transfer_ns) {
    return Abort(Status::Network("not every member's data was durable within " +
                                 Seconds(t_.transfer_ns) + " of the cut: " + late));
  }
  for (size_t i = 0; i < members_.size(); ++i) {
    const Member& m = members_[i];
    if (!m.durable && m.heard && m.heard->Lost()) {
      return Abort(Status::Network("member " + names_[i] + " lost: silent for " +
                                   Seconds(m.heard->SilentNs())));
    }
  }
}

bool GroupCoordinator::Answered(const Member& m) const {
  switch (phase_) {
    case Phase::kPreparing: return m.quiet;
    case Phase::kCutting: return m.cut;
    case Phase::kTransferring: return m.durable;
    default: return true;
  }
}

void GroupCoordinator::Broadcast(GroupMsgKind kind, bool only_unanswered) {
  const int64_t now = clock_.MonotonicNs();
  for (size_t i = 0; i < members_.size(); ++i) {
    if (!only_unanswered) {
      SendTo(i, kind);
    } else if (!Answered(members_[i]) && now - members_[i].last_sent >= t_.resend_ns) {
      SendTo(i, kind);
    }
  }
}

void GroupCoordinator::SendTo(size_t i, GroupMsgKind kind) {
  GroupMsg m = GroupMsg::Make(kind, group_, epoch_, names_[i]);
  const int64_t now = clock_.MonotonicNs();
  if (kind == GroupMsgKind::kPrepare) {
    m.probe = ++probes_sent_;
    members_[i].probes[m.probe % members_[i].probes.size()] = {m.probe, now, clock_.WallNs()};
  }
  if (kind == GroupMsgKind::kAbort) m.detail = why_.message();
  members_[i].last_sent = now;
  transport_.Send(names_[i], m);
}

void GroupRouter::Remove(const GroupCoordinator* c) {
  running_.erase(std::remove(running_.begin(), running_.end(), c), running_.end());
}

std::vector<GroupCoordinator*> GroupRouter::Targets(const GroupMsg& msg) const {
  std::vector<GroupCoordinator*> out;
  for (GroupCoordinator* c : running_) {
    if (c->group() != msg.group) continue;
    const bool fenced = msg.kind == GroupMsgKind::kFenced;
    if (fenced ? c->epoch() < msg.epoch : c->epoch() == msg.epoch) out.push_back(c);
  }
  return out;
}

void AnswerForEndedEpoch(GroupStore& store, GroupTransport& transport, const GroupMsg& msg) {
  // FENCED names the member's newest epoch, not the one it answers: it is
  // for a coordinator only (aborting "its" epoch could end a live one).
  if (msg.kind == GroupMsgKind::kFenced || msg.epoch == 0) return;
  GroupMsg answer = GroupMsg::Make(GroupMsgKind::kAbort, msg.group, msg.epoch, msg.member);
  if (store.State(msg.group, msg.epoch) == GroupStore::EpochState::kCommitted) {
    answer.kind = GroupMsgKind::kCommitted;
  } else {
    store.Abort(msg.group, msg.epoch);
    answer.detail = "the coordinator of this epoch ended before its commit";
  }
  transport.Send(msg.member, answer);
}

}  // namespace dp420::control
