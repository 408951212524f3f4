// Ring: the one wrapper around liburing. Callers describe I/O as IoOp structs
// that outlive their completion; the ring prepares SQEs (flushing when the SQ
// is full), submits once per turn, reaps completions in batches, and hides the
// retry rules of the io_uring boundary:
//   - EINTR / EAGAIN: resubmitted (bounded by kMaxRetries);
//   - short read or write: the remainder is requeued (a read returning 0
//     before `len` bytes is end-of-file: result -ENODATA);
//   - EBADF / EFAULT: a bug, asserted.
// Every other error is reported in IoOp::result as -errno for the caller to
// turn into a Status (see IoOpStatus()).
//
// Fault injection (the seam tests use): SetFaultHook() installs a function
// consulted before each op is submitted; returning a negative errno completes
// the op with that error instead of touching the kernel. The environment
// variable DP420_FAULT ("read:EIO:N" or "write:ENOSPC:N": fail the Nth op of
// that kind, 1-based, process-wide, and every later one) installs a hook in
// every Ring created by the process; it is how end-to-end tests inject faults
// into the real binary.
//
// Every op queued is also one I/O of the process-wide I/O index (io/inject.h):
// DP420_CRASH_AT_IO=N kills the process before its Nth I/O, DP420_FAULT_AT_IO=N:KIND
// fails it once (EIO, ENOSPC: the op's result; EINTR, EAGAIN: retried as above;
// short: half the bytes, the rest requeued; reset: ECONNRESET on socket ops),
// DP420_POWERLOSS_AT_IO=N[:SEED] drops or tears every write not covered by an
// fsync and undoes unsynced directory operations before killing it, and
// DP420_IO_COUNT_FILE=PATH / DP420_IO_TRACE_FILE=PATH report the I/Os made.
//
// Create() tries a setup the kernel answers with ENOMEM again after short pauses
// (seen while the page cache filled RAM, with memory reclaimable); DP420_RING_SETUP_ENOMEM=N fails the
// first N setups of the process that way, for tests.
//
// Thread safety: none; one Ring per thread (IORING_SETUP_SINGLE_ISSUER).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/status.h"

// liburing and <sys/uio.h> types, declared at global scope so that the
// `struct io_uring` below names liburing's type, not a new dp420::io one.
struct io_uring;
struct io_uring_sqe;
struct iovec;

namespace dp420::io {

struct IoOp {
  // kSend / kSendZc / kRecv work on a connected stream socket (offset unused).
  // kSend and kSendZc send all of `len` (MSG_WAITALL; a short send is sent on).
  // kSendZc is io_uring send_zc (from the registered buffer when buf_index >= 0):
  // a short send is continued at once, and the op finishes only after the
  // kernel's notification for every part, so the buffer may be reused as soon
  // as Wait() returns it; zc_copied tells whether the kernel copied the data
  // anyway. kRecv finishes with the first bytes that arrive
  // (done_bytes of them; -ENODATA when the peer closed).
  enum Kind : uint8_t { kRead = 0, kWrite = 1, kFsync = 2, kSend = 3, kSendZc = 4, kRecv = 5 };
  Kind kind = kRead;
  int fd = -1;             // a descriptor, or a registered file index when fixed_file
  bool fixed_file = false;
  int buf_index = -1;      // registered buffer index, or -1 for plain read/write
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  uint64_t offset = 0;
  // Filled by the ring:
  uint32_t done_bytes = 0;  // bytes transferred so far (short I/O progress)
  int result = 0;           // 0 on success, else -errno (-ENODATA: EOF on read)
  uint16_t retries = 0;
  // kSendZc with zc_report_sent: Wait() returns the op twice, first when its
  // bytes are sent while the kernel still holds the buffer (zc_release_pending
  // set; the op is still in flight), then once the buffer is released. This
  // lets a caller send the next frame without waiting for the peer's ACK.
  bool zc_report_sent = false;
  bool zc_release_pending = false;
  bool zc_copied = false;    // kSendZc: the kernel copied (some of) the data
  uint32_t short_cap = 0;    // injected short count: the next submission's length (internal)
  uint64_t sync_ticket = 0;  // kFsync in power-loss mode (internal; io/inject.h)
  bool zc_done = false;      // kSendZc: every byte is sent (internal)
  uint16_t zc_notifs = 0;    // kSendZc: notifications still to come (internal)
  // For the caller; the ring never touches these.
  void* owner = nullptr;
  uint64_t tag = 0;
};

struct RingOptions {
  unsigned depth = 32;          // SQ entries; CQ is 2x
  bool single_issuer = true;    // IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN, if supported
  // At most this many of the kernel's async workers for file I/O (io-wq's
  // bounded workers; 0: the kernel's default, one per CPU). A ring whose
  // writes go to one file at a time sets 1: O_DIRECT writes that extend a
  // file are handed to these workers and then queue on the file's inode
  // lock, where more workers only spin (docs/ARCHITECTURE.md).
  unsigned max_file_workers = 0;
};

class Ring {
 public:
  static constexpr uint16_t kMaxRetries = 16;

  // Cancels and waits for the ops in flight, reading them: destroy the ring
  // before the ops and the buffers they use.
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Creates a ring; falls back to fewer setup flags when the kernel refuses
  // them. Errors: kNoMemory (with the RLIMIT_MEMLOCK hint), kIOError.
  static Result<std::unique_ptr<Ring>> Create(const RingOptions& options);

  // Registers files for fixed-file ops; indices follow `fds`.
  Status RegisterFiles(const std::vector<int>& fds);
  Status RegisterBuffers(const struct iovec* iovs, unsigned count);

  // Queues `op` (prepares its SQE; submits first if the SQ is full). The op
  // must stay alive and untouched until it is returned by Wait(). Resets the
  // ring-filled fields. At most cq_entries() (>= 2 x depth) ops may be in
  // flight at once (asserted): the completion queue must never overflow.
  void Queue(IoOp* op);

  // Submits everything queued and waits until at least `min_complete` ops
  // have finished (or none is in flight). Appends finished ops to `done`
  // (success or final error; retries and short I/O handled inside). Returns
  // kIOError only when io_uring_enter itself fails.
  Status Wait(unsigned min_complete, std::vector<IoOp*>* done);

  // Submits everything queued without waiting or reaping, so new requests
  // reach the device while the caller keeps working on earlier completions.
  Status Submit();

  // Ops queued and not yet returned by Wait(): those the kernel holds, those
  // to be retried, and those that failed at queue time (the I/O index, the
  // fault hook, no SQE to be had), which the next Wait() returns first. A
  // caller that stops waiting at 0 thus never misses an op's error.
  unsigned in_flight() const { return in_flight_ + static_cast<unsigned>(injected_.size()); }
  unsigned depth() const { return depth_; }
  unsigned cq_entries() const { return cq_entries_; }
  // The IORING_SETUP_* flags the kernel accepted (see Create()).
  uint32_t setup_flags() const { return setup_flags_; }
  struct io_uring* raw() { return ring_.get(); }

  using FaultHook = std::function<int(const IoOp&)>;
  void SetFaultHook(FaultHook hook) { fault_hook_ = std::move(hook); }
  // The fault the hook injects into `op` (0 or -errno) without queueing it:
  // for transfers done without the kernel's help (a mapped source), so the
  // same fault specs reach them.
  // It is also one I/O of the I/O index (io/inject.h): its EIO or ENOSPC is
  // returned; EINTR, EAGAIN and short counts do not apply to a mapped copy.
  int InjectedFault(const IoOp& op) const;

 private:
  Ring() = default;
  struct BufferRange {
    const uint8_t* base;
    size_t bytes;
  };
  void Prep(IoOp* op);
  struct io_uring_sqe* GetSqe(int* error);
  Status Enter(unsigned wait_nr);
  unsigned Reap(std::vector<IoOp*>* done);
  bool Complete(IoOp* op, int res);
  bool CompleteNoProgress(IoOp* op);
  void Finish(IoOp* op, int result, std::vector<IoOp*>* done);
  unsigned TakeInjected(std::vector<IoOp*>* done);
  void Drain();
  unsigned TakeRetried(std::vector<IoOp*>* done);
  bool InjectIndex(IoOp* op);
  std::unique_ptr<struct io_uring> ring_;
  unsigned depth_ = 0;
  unsigned cq_entries_ = 0;
  uint32_t setup_flags_ = 0;
  unsigned in_flight_ = 0;
  std::vector<BufferRange> buffers_;  // registered buffers, to check fixed ops
  std::vector<IoOp*> injected_;  // ops completed by the fault hook, not the kernel
  // Ops that the I/O index (io/inject.h) answered with EINTR or EAGAIN, to go
  // through the retry rules as if the kernel had.
  std::vector<std::pair<IoOp*, int>> retried_;
  FaultHook fault_hook_;
};

// Parses a fault spec in the DP420_FAULT syntax: comma-separated
// "<read|write|fsync>:<ERRNO name or number>:<N>" items, each failing the Nth
// op of its kind (1-based) and every later one. The hook's counters are shared
// by all copies of it and are atomic. kInvalidArgument on a malformed spec.
Result<Ring::FaultHook> MakeFaultHook(const std::string& spec);

// Turns a finished op into a Status naming `what` (e.g. a path) and the offset.
Status IoOpStatus(const IoOp& op, const std::string& what);

}  // namespace dp420::io
