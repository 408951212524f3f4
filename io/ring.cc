#include "io/ring.h"

#include <linux/capability.h>
#include <liburing.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>
#include <utility>

#include "io/assert.h"
#include "io/inject.h"

// Linux 6.2 UAPI (io_uring.h) values that Debian 12's liburing 2.3 headers
// predate: ask send_zc to report whether the kernel copied the data.
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

namespace dp420::io {

namespace {

constexpr unsigned kMaxDepth = 32768;  // the kernel's IORING_MAX_ENTRIES
// Consecutive EINTR/EAGAIN/EBUSY from io_uring_enter before Wait() gives up.
// Generous: a profiler's signals may interrupt many waits in a row.
constexpr unsigned kMaxEnterRetries = 1024;
// CQEs copied out of the ring per peek.
constexpr unsigned kReapBatch = 64;

// Whether RLIMIT_MEMLOCK binds this process: it does not with CAP_IPC_LOCK.
bool HasIpcLock() {
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  return ((data[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32)) & 1) != 0;
}

std::string MemlockLimit() {
  struct rlimit limit = {};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) return "unknown";
  return limit.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(limit.rlim_cur) + " bytes";
}

// Why `what` may have met ENOMEM. Registered buffers and files are pinned and
// count against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK; the ring
// itself did so only before Linux 5.12, and is charged to the memory cgroup
// since.
std::string NoMemoryHint(const std::string& what) {
  if (HasIpcLock()) {
    return "the kernel found no memory for it (RLIMIT_MEMLOCK does not apply: the process has "
           "CAP_IPC_LOCK); memory is short or too fragmented";
  }
  if (what == "io_uring_queue_init") {
    return "memory is short or too fragmented (before Linux 5.12 the ring also counted against "
           "RLIMIT_MEMLOCK, soft limit " + MemlockLimit() + ")";
  }
  return "pinned io_uring memory counts against RLIMIT_MEMLOCK (soft limit " + MemlockLimit() +
         "); raise it (ulimit -l, LimitMEMLOCK=) or run with CAP_IPC_LOCK";
}

// With IORING_SETUP_SINGLE_ISSUER the kernel answers EEXIST to any thread
// but the creator; say so instead of "File exists".
constexpr const char* kWrongThread =
    "ring used by a thread other than the one that created it (IORING_SETUP_SINGLE_ISSUER)";

Status UringError(const std::string& what, int err) {
  if (err == ENOMEM) {
    return Status::NoMemory(what + ": " + std::strerror(err) + "; " + NoMemoryHint(what));
  }
  if (err == EEXIST) return Status::IOError(what + ": " + kWrongThread);
  return PosixError(what, err);
}

const char* KindName(IoOp::Kind kind) {
  switch (kind) {
    case IoOp::kRead: return "read";
    case IoOp::kWrite: return "write";
    case IoOp::kFsync: return "fsync";
    case IoOp::kSend: return "send";
    case IoOp::kSendZc: return "send_zc";
    case IoOp::kRecv: return "recv";
  }
  return "op";
}

// ---- Fault injection ----

struct FaultRule {
  IoOp::Kind kind;
  int err;        // positive errno
  uint64_t nth;   // 1-based index of the first op of `kind` to fail
};

struct FaultState {
  std::vector<FaultRule> rules;
  std::array<std::atomic<uint64_t>, 3> counts{};  // ops seen, by IoOp::Kind
};

bool ParseKind(std::string_view text, IoOp::Kind* kind) {
  if (text == "read") *kind = IoOp::kRead;
  else if (text == "write") *kind = IoOp::kWrite;
  else if (text == "fsync") *kind = IoOp::kFsync;
  else return false;
  return true;
}

bool ParseNumber(std::string_view text, uint64_t* value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

bool ParseErrno(std::string_view text, int* err) {
  static constexpr std::pair<std::string_view, int> kNames[] = {
      {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},       {"ENODATA", ENODATA},
      {"EROFS", EROFS},   {"EACCES", EACCES}, {"EPERM", EPERM},         {"ENOMEM", ENOMEM},
      {"ENXIO", ENXIO},   {"ETIMEDOUT", ETIMEDOUT}, {"ECANCELED", ECANCELED},
  };
  for (const auto& [name, value] : kNames) {
    if (text == name) {
      *err = value;
      return true;
    }
  }
  uint64_t number = 0;
  if (!ParseNumber(text, &number) || number == 0 || number > 4095) return false;
  *err = static_cast<int>(number);
  return true;
}

// Parses one "<kind>:<errno>:<N>" item.
bool ParseRule(std::string_view item, FaultRule* rule) {
  size_t first = item.find(':');
  if (first == std::string_view::npos) return false;
  size_t second = item.find(':', first + 1);
  if (second == std::string_view::npos) return false;
  return ParseKind(item.substr(0, first), &rule->kind) &&
         ParseErrno(item.substr(first + 1, second - first - 1), &rule->err) &&
         ParseNumber(item.substr(second + 1), &rule->nth) && rule->nth > 0;
}

int ApplyFaults(FaultState& state, const IoOp& op) {
  if (op.kind > IoOp::kFsync) return 0;  // sockets: faults come from the network tests
  uint64_t seen = state.counts[op.kind].fetch_add(1, std::memory_order_relaxed) + 1;
  for (const FaultRule& rule : state.rules) {
    if (rule.kind == op.kind && seen >= rule.nth) return -rule.err;
  }
  return 0;
}

// DP420_FAULT, parsed once per process. Every Ring gets a copy of the same
// hook, so the counters are process-wide.
const Result<Ring::FaultHook>& EnvFaultHook() {
  static const Result<Ring::FaultHook> hook = []() -> Result<Ring::FaultHook> {
    const char* spec = std::getenv("DP420_FAULT");
    if (spec == nullptr || *spec == '\0') return Ring::FaultHook();
    Result<Ring::FaultHook> parsed = MakeFaultHook(spec);
    if (!parsed.ok()) return parsed.status().Prefix("DP420_FAULT");
    return parsed;
  }();
  return hook;
}

// Trial order of setup flags: the first the kernel accepts wins.
std::vector<uint32_t> SetupFlagTiers(bool single_issuer) {
  std::vector<uint32_t> tiers;
  if (single_issuer) {
    tiers.push_back(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                    IORING_SETUP_SUBMIT_ALL);
  }
  tiers.push_back(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL);
  tiers.push_back(0);
  return tiers;
}

// io_uring_setup has answered ENOMEM with gigabytes reclaimable while the page
// cache filled RAM (seen here in 4 of 4,026 trials of a loaded run; the ring's
// pages are allocated in one piece, likely without waiting for reclaim), so
// Create() tries again after each of these pauses (1.3 s in all) before it
// reports the error.
constexpr unsigned kSetupNomemDelaysMs[] = {1, 4, 16, 64, 256, 1024};

// DP420_RING_SETUP_ENOMEM=N (tests): the first N ring setups of the process
// fail with ENOMEM before reaching the kernel.
bool InjectSetupNomem() {
  static const uint64_t limit = [] {
    const char* v = std::getenv("DP420_RING_SETUP_ENOMEM");
    uint64_t n = 0;
    if (v != nullptr && !ParseNumber(v, &n)) n = 0;
    return n;
  }();
  static std::atomic<uint64_t> seen{0};
  return limit > 0 && seen.fetch_add(1, std::memory_order_relaxed) < limit;
}

// io_uring_queue_init_params with the first setup flags the kernel accepts;
// 0 or -errno.
int QueueInit(const RingOptions& options, struct io_uring* uring, struct io_uring_params* params) {
  if (InjectSetupNomem()) return -ENOMEM;
  int ret = -EINVAL;
  for (uint32_t flags : SetupFlagTiers(options.single_issuer)) {
    *params = {};
    params->flags = flags;
    ret = io_uring_queue_init_params(options.depth, uring, params);
    // EINVAL is how the kernel refuses a flag it does not know; anything else
    // (ENOMEM, EMFILE, EPERM) would not be cured by fewer flags.
    if (ret != -EINVAL) break;
  }
  return ret;
}

}  // namespace

Result<Ring::FaultHook> MakeFaultHook(const std::string& spec) {
  auto state = std::make_shared<FaultState>();
  std::string_view rest = spec;
  for (;;) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    FaultRule rule = {};
    if (!ParseRule(item, &rule)) {
      return Status::InvalidArgument("bad fault spec \"" + std::string(item) +
                                     "\" (want <read|write|fsync>:<ERRNO>:<N>, N >= 1)");
    }
    state->rules.push_back(rule);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return Ring::FaultHook([state](const IoOp& op) { return ApplyFaults(*state, op); });
}

// ---- Ring ----

Result<std::unique_ptr<Ring>> Ring::Create(const RingOptions& options) {
  if (options.depth == 0 || options.depth > kMaxDepth) {
    return Status::InvalidArgument("ring depth " + std::to_string(options.depth) +
                                   " not in [1, " + std::to_string(kMaxDepth) + "]");
  }
  const Result<FaultHook>& env_hook = EnvFaultHook();
  if (!env_hook.ok()) return env_hook.status();

  std::unique_ptr<Ring> ring(new Ring());
  auto uring = std::make_unique<struct io_uring>();
  struct io_uring_params params = {};
  int ret = QueueInit(options, uring.get(), &params);
  for (unsigned i = 0; ret == -ENOMEM && i < std::size(kSetupNomemDelaysMs); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(kSetupNomemDelaysMs[i]));
    ret = QueueInit(options, uring.get(), &params);
  }
  if (ret < 0) return UringError("io_uring_queue_init", -ret);
  DP420_ASSERT(params.sq_entries >= options.depth);
  DP420_ASSERT(params.cq_entries >= 2 * options.depth);
  if (options.max_file_workers > 0) {
    // [bounded, unbounded]; 0 leaves the unbounded (socket) workers alone.
    // A kernel without the call keeps its default: slower, not wrong.
    unsigned workers[2] = {options.max_file_workers, 0};
    (void)io_uring_register_iowq_max_workers(uring.get(), workers);
  }
  ring->ring_ = std::move(uring);
  ring->depth_ = options.depth;
  ring->cq_entries_ = params.cq_entries;
  ring->setup_flags_ = params.flags;
  ring->fault_hook_ = env_hook.value();
  ring->injected_.reserve(params.cq_entries);
  return ring;
}

Ring::~Ring() {
  if (ring_ == nullptr) return;
  Drain();
  io_uring_queue_exit(ring_.get());
}

// Counts one send_zc CQE against its op's notifications: a notification
// (IORING_CQE_F_NOTIF, which also says whether the kernel copied the bytes)
// ends one; the send's own result announces one with IORING_CQE_F_MORE.
// True for the send's own result.
static bool CountZcCqe(IoOp* op, int res, uint32_t flags) {
  if (flags & IORING_CQE_F_NOTIF) {
    if (static_cast<uint32_t>(res) & IORING_NOTIF_USAGE_ZC_COPIED) op->zc_copied = true;
    DP420_ASSERT(op->zc_notifs > 0);
    --op->zc_notifs;
    return false;
  }
  if (flags & IORING_CQE_F_MORE) ++op->zc_notifs;
  return true;
}

// Cancels what can be canceled and waits for every op in flight, so that no
// kernel write lands in a buffer after the ring is gone.
void Ring::Drain() {
  in_flight_ -= static_cast<unsigned>(retried_.size());  // never reached the kernel
  retried_.clear();
  if (in_flight_ == 0) return;
  int error = 0;
  struct io_uring_sqe* sqe = GetSqe(&error);
  if (sqe != nullptr) {
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    io_uring_sqe_set_data(sqe, nullptr);
  }
  unsigned interrupts = 0;
  while (in_flight_ > 0) {
    int ret = io_uring_submit_and_wait(ring_.get(), 1);
    // Give up on a real failure (e.g. the wrong thread): queue_exit still
    // cancels in the kernel, only without waiting.
    if (ret < 0 && (ret != -EINTR || ++interrupts >= kMaxEnterRetries)) break;
    struct io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(ring_.get(), &cqe) == 0) {
      auto* op = static_cast<IoOp*>(io_uring_cqe_get_data(cqe));
      if (op != nullptr && op->kind == IoOp::kSendZc) {
        // A send_zc ends with its last notification (see Reap).
        if (CountZcCqe(op, cqe->res, cqe->flags)) op->zc_done = true;
        if (op->zc_done && op->zc_notifs == 0) --in_flight_;
      } else if (op != nullptr) {
        --in_flight_;
      }
      io_uring_cqe_seen(ring_.get(), cqe);
    }
  }
}

Status Ring::RegisterFiles(const std::vector<int>& fds) {
  if (fds.empty()) return Status::InvalidArgument("RegisterFiles: no descriptors");
  int ret = io_uring_register_files(ring_.get(), fds.data(), static_cast<unsigned>(fds.size()));
  if (ret < 0) return UringError("io_uring_register_files", -ret);
  return Status::Ok();
}

Status Ring::RegisterBuffers(const struct iovec* iovs, unsigned count) {
  DP420_ASSERT(iovs != nullptr);
  DP420_ASSERT(buffers_.empty());  // the kernel allows one registration per ring
  int ret = io_uring_register_buffers(ring_.get(), iovs, count);
  if (ret < 0) return UringError("io_uring_register_buffers", -ret);
  buffers_.reserve(count);
  for (unsigned i = 0; i < count; ++i) {
    buffers_.push_back({static_cast<const uint8_t*>(iovs[i].iov_base), iovs[i].iov_len});
  }
  return Status::Ok();
}

void Ring::Queue(IoOp* op) {
  DP420_ASSERT(op != nullptr);
  DP420_ASSERT(op->kind <= IoOp::kRecv);
  op->done_bytes = 0;
  op->result = 0;
  op->retries = 0;
  op->zc_copied = false;
  op->zc_done = false;
  op->zc_notifs = 0;
  op->zc_release_pending = false;
  op->short_cap = 0;
  if (!InjectIndex(op)) return;
  if (fault_hook_) {
    int injected = fault_hook_(*op);
    DP420_ASSERT(injected <= 0);
    if (injected < 0) {
      op->result = injected;
      injected_.push_back(op);
      return;
    }
  }
  DP420_ASSERT(in_flight_ < cq_entries_);
  ++in_flight_;
  Prep(op);
}

// Returns a free SQE, submitting the full SQ first if needed (seastar's
// get_sqe()). On failure returns null with the -errno in `error`.
struct io_uring_sqe* Ring::GetSqe(int* error) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  for (unsigned attempt = 0; sqe == nullptr && attempt < kMaxRetries; ++attempt) {
    int ret = io_uring_submit(ring_.get());
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      *error = ret;
      return nullptr;
    }
    sqe = io_uring_get_sqe(ring_.get());
  }
  if (sqe == nullptr) *error = -EAGAIN;
  return sqe;
}

// Prepares the SQE for the part of `op` not yet transferred. If no SQE can be
// had, the op completes with the error on the next Wait().
void Ring::Prep(IoOp* op) {
  int error = 0;
  struct io_uring_sqe* sqe = GetSqe(&error);
  if (sqe == nullptr) {
    --in_flight_;
    op->result = error;
    injected_.push_back(op);
    return;
  }
  DP420_ASSERT(op->done_bytes <= op->len);
  uint8_t* addr = op->buf + op->done_bytes;
  unsigned len = op->len - op->done_bytes;
  if (op->short_cap > 0) {
    len = std::min(len, op->short_cap);
    op->short_cap = 0;
  }
  uint64_t offset = op->offset + op->done_bytes;
  if (op->kind != IoOp::kFsync && op->buf_index >= 0) {
    // A fixed op may use any part of its registered buffer.
    DP420_ASSERT(static_cast<size_t>(op->buf_index) < buffers_.size());
    const BufferRange& range = buffers_[op->buf_index];
    DP420_ASSERT(addr >= range.base);
    DP420_ASSERT(addr + len <= range.base + range.bytes);
  }
  switch (op->kind) {
    case IoOp::kRead:
      if (op->buf_index >= 0) {
        io_uring_prep_read_fixed(sqe, op->fd, addr, len, offset, op->buf_index);
      } else {
        io_uring_prep_read(sqe, op->fd, addr, len, offset);
      }
      break;
    case IoOp::kWrite:
      if (op->buf_index >= 0) {
        io_uring_prep_write_fixed(sqe, op->fd, addr, len, offset, op->buf_index);
      } else {
        io_uring_prep_write(sqe, op->fd, addr, len, offset);
      }
      break;
    case IoOp::kFsync:
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
      break;
    case IoOp::kSend:
      io_uring_prep_send(sqe, op->fd, addr, len, MSG_NOSIGNAL | MSG_WAITALL);
      break;
    case IoOp::kSendZc:
      if (op->buf_index >= 0) {
        io_uring_prep_send_zc_fixed(sqe, op->fd, addr, len, MSG_NOSIGNAL | MSG_WAITALL,
                                    IORING_SEND_ZC_REPORT_USAGE, op->buf_index);
      } else {
        io_uring_prep_send_zc(sqe, op->fd, addr, len, MSG_NOSIGNAL | MSG_WAITALL,
                              IORING_SEND_ZC_REPORT_USAGE);
      }
      break;
    case IoOp::kRecv:
      io_uring_prep_recv(sqe, op->fd, addr, len, 0);
      break;
  }
  if (op->fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, op);
}

Status Ring::Wait(unsigned min_complete, std::vector<IoOp*>* done) {
  DP420_ASSERT(done != nullptr);
  unsigned finished = TakeInjected(done) + TakeRetried(done);
  for (;;) {
    unsigned want = 0;
    // Never wait for more CQEs than ops in flight: each owes exactly one.
    if (finished < min_complete) want = std::min(min_complete - finished, in_flight_);
    DP420_RETURN_IF_ERROR(Enter(want));
    finished += Reap(done);
    finished += TakeInjected(done);
    if (finished >= min_complete || in_flight_ == 0) break;
  }
  // Remainders requeued by the last Reap() go to the kernel now, not on the
  // caller's next turn.
  if (io_uring_sq_ready(ring_.get()) > 0) DP420_RETURN_IF_ERROR(Enter(0));
  DP420_ASSERT(in_flight_ <= cq_entries_);
  return Status::Ok();
}

Status Ring::Submit() {
  if (io_uring_sq_ready(ring_.get()) == 0) return Status::Ok();
  for (unsigned attempt = 0;; ++attempt) {
    int ret = io_uring_submit(ring_.get());
    if (ret >= 0) return Status::Ok();
    bool transient = ret == -EINTR || ret == -EAGAIN || ret == -EBUSY;
    if (ret == -EEXIST) return Status::IOError(std::string("io_uring_enter: ") + kWrongThread);
    if (!transient || attempt + 1 >= kMaxEnterRetries) {
      return Status::IOError(std::string("io_uring_enter: ") + std::strerror(-ret));
    }
  }
}

// Submits the SQ and waits for `wait_nr` CQEs. With wait_nr == 0 it still
// enters the kernel: under DEFER_TASKRUN that is what posts completions.
Status Ring::Enter(unsigned wait_nr) {
  for (unsigned attempt = 0;; ++attempt) {
    int ret = wait_nr > 0 ? io_uring_submit_and_wait(ring_.get(), wait_nr)
                          : io_uring_submit_and_get_events(ring_.get());
    if (ret >= 0) return Status::Ok();
    bool transient = ret == -EINTR || ret == -EAGAIN || ret == -EBUSY;
    if (ret == -EEXIST) return Status::IOError(std::string("io_uring_enter: ") + kWrongThread);
    if (!transient || attempt + 1 >= kMaxEnterRetries) {
      return Status::IOError(std::string("io_uring_enter: ") + std::strerror(-ret));
    }
  }
}

// Copies CQEs out in batches, then handles them outside the peek loop:
// finished ops go to `done`, the others are prepared again.
unsigned Ring::Reap(std::vector<IoOp*>* done) {
  unsigned finished = 0;
  for (;;) {
    std::array<struct io_uring_cqe*, kReapBatch> cqes;
    unsigned count = io_uring_peek_batch_cqe(ring_.get(), cqes.data(), kReapBatch);
    if (count == 0) return finished;
    struct Cqe {
      IoOp* op;
      int res;
      uint32_t flags;
    };
    std::array<Cqe, kReapBatch> batch;
    for (unsigned i = 0; i < count; ++i) {
      batch[i] = {static_cast<IoOp*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res,
                  cqes[i]->flags};
    }
    io_uring_cq_advance(ring_.get(), count);
    for (unsigned i = 0; i < count; ++i) {
      IoOp* op = batch[i].op;
      DP420_ASSERT(op != nullptr);
      if (op->kind == IoOp::kSendZc) {
        // Two CQEs per send_zc SQE: the send's result (IORING_CQE_F_MORE when
        // a notification follows), then the notification (IORING_CQE_F_NOTIF)
        // once the kernel no longer needs those bytes. A short send goes on at
        // once (waiting for its notification would wait for the peer's ACK);
        // the op ends when every byte is sent and every notification is in.
        if (CountZcCqe(op, batch[i].res, batch[i].flags)) {
          op->zc_done = Complete(op, batch[i].res);
          if (!op->zc_done) {
            Prep(op);
            continue;
          }
          if (op->zc_notifs > 0 && op->zc_report_sent) {
            op->zc_release_pending = true;  // sent; still in flight
            done->push_back(op);
            ++finished;
            continue;
          }
        }
        if (op->zc_done && op->zc_notifs == 0) {
          // A "sent" report the caller has not seen yet merges into this one.
          auto seen = std::find(done->begin(), done->end(), op);
          if (seen != done->end()) {
            done->erase(seen);
            --finished;
          }
          op->zc_release_pending = false;
          Finish(op, op->result, done);
          ++finished;
        }
        continue;
      }
      if (Complete(op, batch[i].res)) {
        Finish(op, op->result, done);
        ++finished;
      } else {
        Prep(op);
      }
    }
  }
}

// Applies one CQE result to `op`. Returns true when the op is finished (its
// result set), false when it must be submitted again.
bool Ring::Complete(IoOp* op, int res) {
  // EBADF and EFAULT mean a wrong descriptor or buffer: a bug in the caller.
  DP420_ASSERT(res != -EBADF);
  DP420_ASSERT(res != -EFAULT);
  if (res == -EINTR || res == -EAGAIN) {
    if (op->retries >= kMaxRetries) {
      op->result = res;
      return true;
    }
    ++op->retries;
    return false;
  }
  if (res < 0 || op->kind == IoOp::kFsync) {
    op->result = std::min(res, 0);
    return true;
  }
  uint32_t remaining = op->len - op->done_bytes;
  DP420_ASSERT(static_cast<uint32_t>(res) <= remaining);
  if (res == 0 && remaining > 0) return CompleteNoProgress(op);
  op->done_bytes += static_cast<uint32_t>(res);
  if (op->kind == IoOp::kRecv) {  // whatever arrived
    op->result = 0;
    return true;
  }
  if (op->done_bytes < op->len) return false;
  op->result = 0;
  return true;
}

// A transfer of 0 bytes: end of file for a read; for a write, retried a
// bounded number of times, then EIO.
bool Ring::CompleteNoProgress(IoOp* op) {
  if (op->kind == IoOp::kRead || op->kind == IoOp::kRecv) {
    op->result = -ENODATA;
    return true;
  }
  if (op->retries >= kMaxRetries) {
    op->result = -EIO;
    return true;
  }
  ++op->retries;
  return false;
}

void Ring::Finish(IoOp* op, int result, std::vector<IoOp*>* done) {
  DP420_ASSERT(in_flight_ > 0);
  DP420_ASSERT(result <= 0);
  op->result = result;
  --in_flight_;
  if (op->kind == IoOp::kFsync && result == 0 && !op->fixed_file) {
    inject::NoteSynced(op->fd, op->sync_ticket);
  }
  done->push_back(op);
}

static inject::Op InjectOp(IoOp::Kind kind) {
  switch (kind) {
    case IoOp::kRead: return inject::Op::kRead;
    case IoOp::kWrite: return inject::Op::kWrite;
    case IoOp::kFsync: return inject::Op::kSync;
    case IoOp::kSend:
    case IoOp::kSendZc: return inject::Op::kSend;
    case IoOp::kRecv: return inject::Op::kRecv;
  }
  return inject::Op::kRead;
}

// Counts `op` as one I/O of the process (io/inject.h) and applies what the
// index asks: false when the op is already answered (an error, or EINTR /
// EAGAIN to be retried by TakeRetried()).
bool Ring::InjectIndex(IoOp* op) {
  inject::Action action = inject::Before(InjectOp(op->kind), op->fixed_file ? -1 : op->fd);
  if (action.error == EINTR || action.error == EAGAIN) {
    DP420_ASSERT(in_flight_ < cq_entries_);
    ++in_flight_;
    retried_.emplace_back(op, -action.error);
    return false;
  }
  if (action.error != 0) {
    op->result = -action.error;
    injected_.push_back(op);
    return false;
  }
  if (action.shorten && inject::ShortLength(op->len) < op->len) {
    op->short_cap = uint32_t(inject::ShortLength(op->len));
  }
  if (inject::g_powerloss && !op->fixed_file) {
    if (op->kind == IoOp::kWrite) inject::NoteWrite(op->fd, op->offset, op->len);
    if (op->kind == IoOp::kFsync) op->sync_ticket = inject::SyncTicket();
  }
  return true;
}

// Ops answered EINTR / EAGAIN by the I/O index go through Complete() as a
// kernel's answer would: resubmitted, or finished once the retries run out.
unsigned Ring::TakeRetried(std::vector<IoOp*>* done) {
  std::vector<std::pair<IoOp*, int>> retried;
  retried.swap(retried_);
  unsigned finished = 0;
  for (auto [op, res] : retried) {
    if (Complete(op, res)) {
      Finish(op, op->result, done);
      ++finished;
    } else {
      Prep(op);
    }
  }
  return finished;
}

unsigned Ring::TakeInjected(std::vector<IoOp*>* done) {
  unsigned count = static_cast<unsigned>(injected_.size());
  for (IoOp* op : injected_) {
    DP420_ASSERT(op->result < 0);
    done->push_back(op);
  }
  injected_.clear();
  return count;
}

int Ring::InjectedFault(const IoOp& op) const {
  inject::Action action = inject::Before(InjectOp(op.kind), op.fixed_file ? -1 : op.fd);
  if (action.error != 0 && action.error != EINTR && action.error != EAGAIN) return -action.error;
  return fault_hook_ ? fault_hook_(op) : 0;
}

Status IoOpStatus(const IoOp& op, const std::string& what) {
  if (op.result == 0) return Status::Ok();
  DP420_ASSERT(op.result < 0);
  if (op.kind == IoOp::kFsync) return PosixError("fsync " + what, -op.result);
  if (op.kind >= IoOp::kSend) {
    if (op.result == -ENODATA) return Status::Network(what + ": connection closed by peer");
    return Status::Network(std::string(KindName(op.kind)) + " " + what + ": " +
                           std::strerror(-op.result));
  }
  uint64_t offset = op.offset + op.done_bytes;
  if (op.kind == IoOp::kRead && op.result == -ENODATA) {
    return Status::IOError(what + ": unexpected end of file at offset " +
                           std::to_string(offset));
  }
  return PosixError(std::string(KindName(op.kind)) + " " + what + " at offset " +
                        std::to_string(offset),
                    -op.result);
}

}  // namespace dp420::io
