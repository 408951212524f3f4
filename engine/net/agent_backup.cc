// The agent side of a network backup (docs/PROTOCOL.md, "Backup"): the
// local Scanner reads, hashes and diffs the volume against the parent's block
// ids; each worker sends its changed blocks on its own stripe connection with
// io_uring send_zc from the registered buffer the block was read into, then
// a PAGE frame with the verdict of every block of the page. The server checks
// and stores them, acknowledges each page, and commits on COMMIT.
//
// The parent's ids come from a local cache that is used only while its seal
// equals the server's parent manifest seal; otherwise they are fetched.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <openssl/crypto.h>

#include "engine/control/clock.h"
#include "engine/control/liveness.h"
#include "engine/core/scanner.h"
#include "engine/net/client.h"
#include "engine/net/id_cache.h"
#include "engine/net/payloads.h"
#include "io/inject.h"
#include "io/assert.h"
#include "io/file.h"
#include "simd/simd.h"

namespace dp420::net {

namespace {

using Clock = std::chrono::steady_clock;

Status WriteAll(int fd, uint64_t offset, const void* data, size_t len, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = io::sys::Pwrite(fd, p, len, static_cast<off_t>(offset));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return PosixError("write " + path, n < 0 ? errno : EIO);
    p += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Stripe connections, so the control thread can wake every worker at once
// when the server is lost.
class StripeSockets {
 public:
  void Set(unsigned stripe, int fd) {
    std::lock_guard lock(mu_);
    if (fds_.size() <= stripe) fds_.resize(stripe + 1, -1);
    fds_[stripe] = fd;
  }
  void ShutdownAll() {
    std::lock_guard lock(mu_);
    for (int fd : fds_) {
      if (fd >= 0) shutdown(fd, SHUT_RDWR);
    }
  }

 private:
  std::mutex mu_;
  std::vector<int> fds_;
};

// What the workers of one backup attempt share.
struct AgentJob {
  RemoteRepository& remote;
  const BackupOptions& options;
  std::string token;
  unsigned stripes = 1;
  int parent_cache_fd = -1;      // parent ids, or -1 (no parent)
  uint64_t parent_blocks = 0;
  int new_cache_fd = -1;         // this snapshot's ids
  std::string new_cache_path;
  StripeSockets sockets;
  std::atomic<bool> failed{false};
  std::atomic<int64_t> retry_deadline_ns{0};  // steady clock; set while reconnecting
  std::mutex mu;
  Status error;
  std::atomic<uint64_t> bytes_sent{0}, bytes_zc{0}, bytes_zc_copied{0}, bytes_resent{0};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> blocks_healed{0};  // parent blocks the server lost, sent again
  std::atomic<bool> zc_unsupported{false};
  std::atomic<bool> session_lost{false};  // the server no longer knows this backup

  AgentJob(RemoteRepository& r, const BackupOptions& o) : remote(r), options(o) {}
  void Fail(Status s) {
    {
      std::lock_guard lock(mu);
      if (error.ok()) error = std::move(s);
    }
    failed.store(true);
    sockets.ShutdownAll();
  }
  // The end of the current reconnect window: the workers and the control
  // connection that lose the server at about the same time share one window;
  // a loss after the window closed (or after a reconnect succeeded) opens a
  // new one.
  Clock::time_point RetryDeadline() {
    int64_t now = Clock::now().time_since_epoch().count();
    int64_t d = retry_deadline_ns.load();
    if (d == 0 || d < now) {
      int64_t fresh = now + std::chrono::nanoseconds(remote.options().retry_for).count();
      if (retry_deadline_ns.compare_exchange_strong(d, fresh)) d = fresh;
    }
    return Clock::time_point(Clock::duration(d));
  }
};

// The largest send buffer TCP autotuning may use (tcp_wmem's third field).
int TcpWmemMax() {
  static const int value = [] {
    int low = 0, def = 0, max = 0;
    FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
    if (f != nullptr) {
      // The kernel prints this file from ints (proc_dointvec), which %d holds.
      // NOLINTNEXTLINE(cert-err34-c)
      if (std::fscanf(f, "%d %d %d", &low, &def, &max) != 3) max = 0;
      std::fclose(f);
    }
    return max > 0 ? max : 4 << 20;
  }();
  return value;
}

// ---- the per-worker sink ----

class NetSink : public ScanSink {
 public:
  NetSink(AgentJob& job, unsigned stripe) : job_(job), stripe_(stripe) {}
  ~NetSink() override {
    job_.sockets.Set(stripe_, -1);
  }

  unsigned OpsPerBuffer(uint32_t blocks_per_extent) const override {
    return 2 * blocks_per_extent + 2;  // header + data per run; page frames; the receive
  }
  Status Setup(Scanner& scanner) override {
    scanner_ = &scanner;
    uint64_t next = 0;
    DP420_RETURN_IF_ERROR(Join(&next));
    if (next != stripe_) return Status::Network("server resumed a fresh stripe at page " +
                                                std::to_string(next));
    return Status::Ok();
  }
  Status ParentLeaf(uint64_t page, Entry* out, uint32_t* count) override;
  Status Changed(ScanRead& read, uint32_t index, uint32_t len, Entry& entry) override;
  Status ReadDone(ScanRead&) override { return FlushRun(); }
  Status PageDone(std::unique_ptr<LeafPage> page) override;
  Status OnOp(io::IoOp* op) override;
  Status Turn() override {
    Kick();
    return Status::Ok();
  }
  Result<bool> Finish() override;
  void Abort() override { Break(); }
  Result<uint64_t> Recover(const Status& lost) override;

 private:
  // A piece of a frame. Frames are sealed when they are released for
  // sending (Release), in the order they go on the wire: a head's bytes
  // start with room for the header, a zero-copy run is sealed in place in
  // its read buffer, and the frame's last piece is followed by its tag.
  struct SendItem {
    std::vector<uint8_t> bytes;     // copied bytes (headers, metadata, pages, tags)
    const uint8_t* zc = nullptr;    // or a run of blocks in a read buffer
    uint32_t zc_len = 0;
    ScanRead* read = nullptr;
    uint64_t page = 0;
    FrameType type = FrameType::kBlocks;  // a head: the frame's type
    uint32_t plain_len = 0;               // a head: the frame's payload length
    bool head = false;                    // bytes start a frame (header room first)
    bool last = false;                    // the frame's last piece
  };
  static constexpr uint64_t kTagSend = 2;
  static constexpr uint64_t kTagRecv = 3;
  static constexpr size_t kRecvBytes = 64 * 1024;

  Status Join(uint64_t* next_page);
  Status FlushRun();
  void Stage(SendItem item, bool ends_page);
  void Release(SendItem item);
  void Push(SendItem item);
  void Kick();
  void Break();
  void ArmRecv();
  Status OnReceived();
  bool AllAcked() const;

  AgentJob& job_;
  unsigned stripe_;
  Scanner* scanner_ = nullptr;
  std::unique_ptr<Conn> conn_;
  bool broken_ = false;
  bool closing_ = false;
  bool peer_closed_ = false;
  // The open run of consecutive changed blocks of one read.
  ScanRead* run_read_ = nullptr;
  uint32_t run_first_ = 0;
  uint32_t run_count_ = 0;
  uint32_t run_bytes_ = 0;
  std::vector<uint8_t> run_meta_;
  // Frames leave in page order (the server takes a stripe's pages in
  // order), though a worker finishes its open pages in any order: items of
  // later pages wait here until every earlier page of the stripe has left.
  // This cannot deadlock: an earlier page's reads were queued first, so they
  // hold their buffers already.
  std::map<uint64_t, std::deque<SendItem>> staged_;
  std::set<uint64_t> staged_done_;    // pages whose PAGE frame is staged
  uint64_t send_page_ = 0;            // the page whose frames may leave now
  std::deque<SendItem> sends_;
  // Send ops: one at a time in its sending stage (frames stay in order);
  // zero-copy ones stay in flight until the kernel releases their buffer.
  struct SendOp {
    io::IoOp op;
    SendItem item;
  };
  std::deque<SendOp> send_ops_;
  std::vector<SendOp*> free_send_ops_;
  SendOp* sending_ = nullptr;         // the send in its sending stage
  size_t SendOpsInFlight() const { return send_ops_.size() - free_send_ops_.size(); }
  io::IoOp recv_op_;
  bool recv_in_flight_ = false;
  std::vector<uint8_t> recv_buf_ = std::vector<uint8_t>(kRecvBytes);
  std::vector<uint8_t> pending_;      // received bytes not yet parsed
  int64_t acked_page_ = -1;           // highest acknowledged page of this stripe
  int64_t last_page_ = -1;            // highest page handed over for sending
  int64_t resend_until_ = -1;         // pages up to this one were sent before a loss
  Status received_error_;
};

Status NetSink::Join(uint64_t* next_page) {
  DP420_ASSIGN_OR_RETURN(conn_, job_.remote.OpenConnection());
  Millis timeout = job_.remote.options().LossTimeout();
  PayloadWriter w;
  w.String(job_.token);
  w.U32(stripe_);
  DP420_RETURN_IF_ERROR(conn_->Send(FrameType::kStripeJoin, 0, w.bytes(), timeout));
  DP420_ASSIGN_OR_RETURN(Frame f, conn_->Recv(timeout));
  DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kStripeReady, conn_->peer()));
  DP420_RETURN_IF_ERROR(ParseU64(f.payload, "STRIPE_READY", next_page));
  int one = 1;
  setsockopt(conn_->fd(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  // Data the peer has not acknowledged for the loss timeout ends the
  // connection: a zero-copy send's buffer is released only then, so a silent
  // peer cannot hold a worker (and the backup) forever.
  // A fixed send buffer as large as autotuning's maximum: zero-copy sends
  // charge the send buffer more than copies do, and autotuning then keeps it
  // at a few segments on links without segmentation offload (measured: one
  // 1448-byte segment per delayed ACK). SO_SNDBUFFORCE passes wmem_max when
  // allowed (root).
  int sndbuf = TcpWmemMax();
  if (setsockopt(conn_->fd(), SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) != 0) {
    setsockopt(conn_->fd(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  }
  unsigned user_timeout_ms = static_cast<unsigned>(timeout.count());
  setsockopt(conn_->fd(), IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
             sizeof(user_timeout_ms));
  job_.sockets.Set(stripe_, conn_->fd());
  broken_ = closing_ = peer_closed_ = false;
  pending_.clear();
  send_page_ = *next_page;
  acked_page_ = static_cast<int64_t>(*next_page) - static_cast<int64_t>(job_.stripes);
  ArmRecv();
  return Status::Ok();
}

Status NetSink::ParentLeaf(uint64_t page, Entry* out, uint32_t* count) {
  *count = 0;
  if (job_.parent_cache_fd < 0) return Status::Ok();
  uint64_t first = page * kPageEntries;
  if (first >= job_.parent_blocks) return Status::Ok();
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kPageEntries, job_.parent_blocks - first));
  uint8_t raw[kPageEntries * kCacheRecord];
  Status read = ReadCacheRecords(job_.parent_cache_fd, first, n, raw);
  if (!read.ok()) {
    std::string path = job_.new_cache_path.substr(0, job_.new_cache_path.size() - 4);  // .new
    return read.Prefix("the parent's block id cache " + path +
                       (read.code() == Code::kIOError ? "" : " (delete it to fetch it again)"));
  }
  for (uint32_t i = 0; i < n; ++i) {
    out[i] = GetCacheRecord(raw + i * kCacheRecord);
    if (raw[i * kCacheRecord + 48] == kCacheLost) job_.blocks_healed.fetch_add(1);
  }
  *count = n;
  return Status::Ok();
}

Status NetSink::Changed(ScanRead& read, uint32_t index, uint32_t len, Entry& entry) {
  if (run_read_ != &read || run_first_ + run_count_ != index ||
      run_meta_.size() + 48 + 12 + run_bytes_ + len > kMaxPlainBytes) {
    DP420_RETURN_IF_ERROR(FlushRun());
    run_read_ = &read;
    run_first_ = index;
  }
  run_meta_.insert(run_meta_.end(), entry.id, entry.id + 16);
  run_meta_.insert(run_meta_.end(), entry.ref.sha256, entry.ref.sha256 + 32);
  ++run_count_;
  run_bytes_ += len;
  return Status::Ok();
}

// One BLOCKS frame for the open run: header and metadata copied, the block
// bytes sealed in place and sent zero-copy from the read buffer.
Status NetSink::FlushRun() {
  if (run_count_ == 0) return Status::Ok();
  ScanRead& read = *run_read_;
  const ScanGeometry& g = scanner_->ctx().geo;
  PayloadWriter fixed;
  fixed.U64(read.first_block + run_first_);
  fixed.U32(run_count_);
  const uint8_t* data = read.data + uint64_t{run_first_} * g.block_size;
  SendItem head;
  head.head = true;
  head.type = FrameType::kBlocks;
  head.plain_len =
      static_cast<uint32_t>(fixed.bytes().size() + run_meta_.size() + run_bytes_);
  head.bytes.resize(sizeof(FrameHeader));
  head.bytes.insert(head.bytes.end(), fixed.bytes().begin(), fixed.bytes().end());
  head.bytes.insert(head.bytes.end(), run_meta_.begin(), run_meta_.end());
  SendItem body;
  body.zc = data;
  body.zc_len = run_bytes_;
  body.read = &read;
  body.page = (read.first_block + run_first_) / kPageEntries;
  body.last = true;
  head.page = body.page;
  ++read.holds;
  Stage(std::move(head), false);
  Stage(std::move(body), false);
  run_read_ = nullptr;
  run_count_ = 0;
  run_bytes_ = 0;
  run_meta_.clear();
  Kick();
  return Status::Ok();
}

Status NetSink::PageDone(std::unique_ptr<LeafPage> page) {
  // This snapshot's ids, for the next backup's cache.
  if (job_.new_cache_fd >= 0) {
    uint8_t raw[kPageEntries * kCacheRecord];
    for (uint32_t i = 0; i < page->count; ++i) {
      PutCacheRecord(page->entries[i], raw + i * kCacheRecord);
    }
    DP420_RETURN_IF_ERROR(WriteAll(job_.new_cache_fd,
                                   kCacheHeader + page->index * kPageEntries * kCacheRecord, raw,
                                   page->count * kCacheRecord, job_.new_cache_path));
  }
  PayloadWriter w;
  w.U64(page->index);
  w.U32(page->count);
  for (uint32_t i = 0; i < page->count; ++i) {
    w.U8(page->verdict[i]);
    w.Bytes({page->entries[i].id, 16});
  }
  SendItem item;
  item.head = item.last = true;
  item.type = FrameType::kPage;
  item.plain_len = static_cast<uint32_t>(w.bytes().size());
  item.bytes.resize(sizeof(FrameHeader));
  item.bytes.insert(item.bytes.end(), w.bytes().begin(), w.bytes().end());
  item.page = page->index;
  last_page_ = std::max<int64_t>(last_page_, static_cast<int64_t>(page->index));
  Stage(std::move(item), true);
  Kick();
  return Status::Ok();
}

void NetSink::Stage(SendItem item, bool ends_page) {
  uint64_t page = item.page;
  staged_[page].push_back(std::move(item));
  if (ends_page) staged_done_.insert(page);
  // Release everything of the current page; move on while pages are complete.
  for (;;) {
    auto it = staged_.find(send_page_);
    if (it != staged_.end()) {
      for (SendItem& i : it->second) Release(std::move(i));
      staged_.erase(it);
    }
    if (!staged_done_.erase(send_page_)) break;
    send_page_ += job_.stripes;
  }
}

// Seals `item` and queues it for sending. A zero-copy run is encrypted in
// its read buffer, which the scanner no longer reads (the blocks are hashed)
// and which goes back to the pool after the send: nothing is copied.
void NetSink::Release(SendItem item) {
  if (item.head) {
    FrameHeader h = conn_->BeginSeal(item.type, 0, item.plain_len);
    std::memcpy(item.bytes.data(), &h, sizeof(h));
    uint8_t* payload = item.bytes.data() + sizeof(h);
    conn_->SealPiece(payload, payload, item.bytes.size() - sizeof(h));
  } else {
    DP420_ASSERT(item.zc != nullptr);
    uint8_t* run = const_cast<uint8_t*>(item.zc);
    conn_->SealPiece(run, run, item.zc_len);
  }
  if (!item.last) {
    Push(std::move(item));
    return;
  }
  uint8_t tag[kTagBytes];
  conn_->EndSeal(tag);
  if (!item.zc) {
    item.bytes.insert(item.bytes.end(), tag, tag + kTagBytes);
    Push(std::move(item));
    return;
  }
  SendItem trailer;
  trailer.bytes.assign(tag, tag + kTagBytes);
  trailer.page = item.page;
  Push(std::move(item));
  Push(std::move(trailer));
}

// Queues a sealed piece. Copied bytes that follow copied bytes still
// waiting join them: a frame's tag, the next frame's head and PAGE frames
// then go in one send instead of one each.
void NetSink::Push(SendItem item) {
  if (!item.zc && !sends_.empty() && !sends_.back().zc) {
    std::vector<uint8_t>& into = sends_.back().bytes;
    into.insert(into.end(), item.bytes.begin(), item.bytes.end());
    return;
  }
  sends_.push_back(std::move(item));
}

// Frames leave in order: one send in its sending stage on the socket at a
// time; a zero-copy send that is sent but whose buffer the kernel still holds
// (until the peer acknowledges it) no longer blocks the next one.
void NetSink::Kick() {
  if (sending_ || broken_ || sends_.empty()) return;
  if (free_send_ops_.empty()) {
    send_ops_.emplace_back();
    free_send_ops_.push_back(&send_ops_.back());
  }
  SendOp* so = free_send_ops_.back();
  free_send_ops_.pop_back();
  so->item = std::move(sends_.front());
  sends_.pop_front();
  const SendItem& item = so->item;
  io::IoOp& op = so->op;
  op = io::IoOp{};
  op.fd = conn_->fd();
  if (item.zc) {
    op.kind = job_.zc_unsupported.load() ? io::IoOp::kSend : io::IoOp::kSendZc;
    op.buf = const_cast<uint8_t*>(item.zc);
    op.len = item.zc_len;
    op.buf_index = scanner_->pool().registered() ? int(item.read->buffer) : -1;
    if (op.kind == io::IoOp::kSend) op.buf_index = -1;
    op.zc_report_sent = true;
  } else {
    op.kind = io::IoOp::kSend;
    op.buf = const_cast<uint8_t*>(item.bytes.data());
    op.len = static_cast<uint32_t>(item.bytes.size());
  }
  op.owner = so;
  op.tag = kTagSend;
  sending_ = so;
  scanner_->QueueSinkOp(&op);
}

void NetSink::ArmRecv() {
  if (recv_in_flight_ || peer_closed_) return;
  recv_op_ = io::IoOp{};
  recv_op_.kind = io::IoOp::kRecv;
  recv_op_.fd = conn_->fd();
  recv_op_.buf = recv_buf_.data();
  recv_op_.len = static_cast<uint32_t>(recv_buf_.size());
  recv_op_.owner = this;
  recv_op_.tag = kTagRecv;
  recv_in_flight_ = true;
  scanner_->QueueSinkOp(&recv_op_);
}

void NetSink::Break() {
  broken_ = true;
  if (conn_) conn_->Shutdown();
}

Status NetSink::OnReceived() {
  size_t at = 0;
  while (pending_.size() - at >= sizeof(FrameHeader)) {
    FrameHeader h;
    std::memcpy(&h, pending_.data() + at, sizeof(h));
    DP420_RETURN_IF_ERROR(CheckHeader(h));
    if (pending_.size() - at < sizeof(h) + h.payload_len) break;
    Frame f;
    f.header = h;
    f.payload.assign(pending_.begin() + at + sizeof(h),
                     pending_.begin() + at + sizeof(h) + h.payload_len);
    at += sizeof(h) + h.payload_len;
    DP420_RETURN_IF_ERROR(conn_->OpenInPlace(h, f.payload.data()));
    f.payload.resize(Conn::PlainLen(h));
    if (f.type() == FrameType::kAck) {
      uint64_t page = 0;
      DP420_RETURN_IF_ERROR(ParseU64(f.payload, "ACK", &page));
      acked_page_ = std::max(acked_page_, static_cast<int64_t>(page));
    } else if (f.type() == FrameType::kError) {
      return StatusFromError(f, "server " + conn_->peer());
    } else if (f.type() != FrameType::kPing && f.type() != FrameType::kPong) {
      return Status::Network("unexpected frame type " + std::to_string(h.type) + " on a stripe");
    }
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(at));
  return Status::Ok();
}

Status NetSink::OnOp(io::IoOp* op) {
  if (op->tag == kTagRecv) {
    recv_in_flight_ = false;
    if (op->result == -ENODATA) {
      peer_closed_ = true;
      if (closing_ && AllAcked()) return Status::Ok();
      Break();
      return received_error_.ok() ? Status::Network("server " + conn_->peer() +
                                                    " closed the stripe connection")
                                  : received_error_;
    }
    if (op->result != 0) {
      Break();
      return io::IoOpStatus(*op, "stripe to " + conn_->peer());
    }
    pending_.insert(pending_.end(), recv_buf_.begin(), recv_buf_.begin() + op->done_bytes);
    Status s = OnReceived();
    if (!s.ok()) {
      received_error_ = s;
      Break();
      return s;
    }
    if (!broken_) ArmRecv();
    return Status::Ok();
  }
  DP420_ASSERT(op->tag == kTagSend);
  SendOp* so = static_cast<SendOp*>(op->owner);
  const SendItem& item = so->item;
  Status status;
  if (so == sending_) {  // the sending stage ended
    sending_ = nullptr;
    if (op->result != 0) {
      if (op->kind == io::IoOp::kSendZc &&
          (op->result == -EINVAL || op->result == -EOPNOTSUPP)) {
        // This kernel or socket cannot send_zc: plain sends from now on; the
        // connection is redone (the stream is incomplete).
        job_.zc_unsupported.store(true);
      }
      Break();
      status = io::IoOpStatus(*op, "stripe to " + conn_->peer());
    } else {
      job_.bytes_sent.fetch_add(op->len, std::memory_order_relaxed);
      if (item.zc && op->kind == io::IoOp::kSendZc) {
        job_.bytes_zc.fetch_add(op->len, std::memory_order_relaxed);
      }
      if (item.zc && static_cast<int64_t>(item.page) <= resend_until_) {
        job_.bytes_resent.fetch_add(op->len, std::memory_order_relaxed);
      }
    }
  }
  if (!op->zc_release_pending) {  // the buffer is free again
    if (op->result == 0 && item.zc && op->zc_copied) {
      job_.bytes_zc_copied.fetch_add(op->len, std::memory_order_relaxed);
    }
    if (item.read) scanner_->Unhold(item.read);
    so->item = SendItem{};
    free_send_ops_.push_back(so);
  }
  if (status.ok()) Kick();
  return status;
}

bool NetSink::AllAcked() const {
  return sends_.empty() && staged_.empty() && acked_page_ >= last_page_;
}

Result<bool> NetSink::Finish() {
  if (!received_error_.ok()) return received_error_;
  if (!sends_.empty() || !staged_.empty() || SendOpsInFlight() > 0 ||
      acked_page_ < last_page_) {
    Kick();
    if (!recv_in_flight_ && SendOpsInFlight() == 0) {
      return Status::Network("stripe " + std::to_string(stripe_) + " stalled");
    }
    return false;
  }
  if (!closing_) {
    // Every page is acknowledged: close our side; the server closes its side.
    closing_ = true;
    shutdown(conn_->fd(), SHUT_WR);
  }
  if (recv_in_flight_) return false;
  return true;
}

Result<uint64_t> NetSink::Recover(const Status& lost) {
  // Unsent items still hold their read buffers.
  for (SendItem& item : sends_) {
    if (item.read) scanner_->Unhold(item.read);
  }
  sends_.clear();
  for (auto& [page, items] : staged_) {
    for (SendItem& item : items) {
      if (item.read) scanner_->Unhold(item.read);
    }
  }
  staged_.clear();
  staged_done_.clear();
  run_read_ = nullptr;
  run_count_ = 0;
  run_bytes_ = 0;
  run_meta_.clear();
  resend_until_ = std::max(resend_until_, last_page_);
  job_.sockets.Set(stripe_, -1);
  conn_.reset();
  Clock::time_point deadline = job_.RetryDeadline();
  Status last = lost;
  for (unsigned attempt = 0;; ++attempt) {
    if (job_.failed.load() || job_.options.control.Canceled()) return lost;
    if (Clock::now() >= deadline) {
      return Status::Network("stripe " + std::to_string(stripe_) + " lost (" + lost.message() +
                             "); reconnecting for " +
                             std::to_string(job_.remote.options().retry_for.count() / 1000) +
                             " s failed: " + last.message());
    }
    if (!PauseBeforeReconnect(attempt, deadline, [&] {
          return job_.failed.load() || job_.options.control.Canceled();
        })) {
      return lost;
    }
    uint64_t next = 0;
    Status joined = Join(&next);
    if (joined.ok()) {
      job_.reconnects.fetch_add(1);
      job_.retry_deadline_ns.store(0);
      last_page_ = static_cast<int64_t>(next) - static_cast<int64_t>(job_.stripes);
      return next;
    }
    last = joined;
    conn_.reset();
    if (joined.code() == Code::kNotFound) job_.session_lost.store(true);
    if (joined.code() != Code::kNetwork) return joined;  // e.g. the session is gone
  }
}

// ---- cache files ----

std::string CachePath(const RemoteRepository& remote, const std::string& volume) {
  std::string dir = remote.options().cache_dir.empty() ? DefaultCacheDir()
                                                       : remote.options().cache_dir;
  return IdCachePath(dir, remote.repo_id(), volume);
}

// Worker threads of a remote backup: as a local one, and at most one per
// stripe the server accepts. The chain's block size is the server's and is
// known only once the backup began: the default count is sized for the
// largest block size, an explicit one is checked again then.
Result<unsigned> AgentThreads(const BackupOptions& o) {
  uint32_t bs = o.threads == 0 || o.block_size == 0 ? kMaxBlockSize
                                                    : std::min(o.block_size, kMaxBlockSize);
  DP420_ASSIGN_OR_RETURN(unsigned threads, ResolveThreads(o.threads, bs));
  if (o.threads == 0) return std::min(threads, kMaxStripes);
  if (threads > kMaxStripes) {
    return Status::InvalidArgument("threads is " + std::to_string(threads) +
                                   "; allowed 1.." + std::to_string(kMaxStripes) +
                                   " for a remote backup (one stripe connection each)");
  }
  return threads;
}

}  // namespace

// The parent's ids and digests: the cache when it is the parent's (its seal
// matches), else fetched from the server (PARENT_REQ) into a new cache.
Result<io::File> RemoteRepository::OpenParentCache(const Manifest& parent,
                                                   const std::string& cache_path,
                                                   Millis timeout) {
  auto cached = io::File::OpenRead(cache_path, false);
  if (cached.ok() && CacheValid(cached->fd(), parent)) return std::move(cached).value();
  std::string tmp = cache_path + ".fetch";
  // O_TRUNC reuses what an agent killed during a fetch left; any failure
  // below removes it.
  io::TempFileGuard tmp_guard(tmp);
  DP420_ASSIGN_OR_RETURN(io::File f, io::File::OpenWrite(tmp, O_CREAT | O_TRUNC | O_RDWR, false));
  uint64_t pages = DivCeil(parent.blocks_total, kPageEntries);
  PayloadWriter w;
  w.U64(0);
  w.U32(static_cast<uint32_t>(pages));
  DP420_RETURN_IF_ERROR(control_->Send(FrameType::kParentReq, 7, w.bytes(), timeout));
  for (;;) {
    DP420_ASSIGN_OR_RETURN(Frame pf, control_->Recv(timeout));
    if (pf.type() == FrameType::kDone) break;
    if (pf.type() == FrameType::kPing) {
      DP420_RETURN_IF_ERROR(AnswerPing(*control_, pf, timeout));
      continue;
    }
    DP420_RETURN_IF_ERROR(ExpectFrame(pf, FrameType::kParentPage, control_->peer()));
    uint64_t page = 0;
    uint32_t count = 0;
    DP420_RETURN_IF_ERROR(ParseParentPage(pf.payload, pages, &page, &count));
    DP420_RETURN_IF_ERROR(WriteAll(f.fd(), kCacheHeader + page * kPageEntries * kCacheRecord,
                                   pf.payload.data() + 12, count * kCacheRecord, tmp));
  }
  CacheHeader h = MakeCacheHeader(parent);
  DP420_RETURN_IF_ERROR(f.Truncate(kCacheHeader + parent.blocks_total * kCacheRecord));
  DP420_RETURN_IF_ERROR(WriteAll(f.fd(), 0, &h, sizeof(h), tmp));
  // Durable before it takes the cache's name: after a power cut the name
  // holds the old cache or the whole new one, never a header over lost records.
  DP420_RETURN_IF_ERROR(f.Sync());
  if (io::sys::Rename(tmp.c_str(), cache_path.c_str()) != 0) {
    return PosixError("rename " + tmp + " -> " + cache_path, errno);
  }
  tmp_guard.Keep();
  return io::File::OpenRead(cache_path, false);
}

// A backup the server lost (it restarted: what it had acknowledged is gone)
// starts over, while reconnecting is allowed (retry_for); the bytes sent by
// the lost attempt count as resent.
Result<BackupResult> RemoteRepository::Backup(const BackupOptions& o) {
  if (o.time_unix_ns != 0) {
    return Status::InvalidArgument("the backup time can be given for a local repository only: "
                                   "the server stamps a remote snapshot with its own clock");
  }
  auto start = Clock::now();
  uint64_t resent = 0, reconnects = 0;
  bool healing = false;
  for (unsigned attempt = 0;; ++attempt) {
    bool session_lost = false;
    uint64_t sent = 0;
    Result<BackupResult> r = BackupAttempt(o, &session_lost, &sent, &reconnects);
    // The server ends the connection with the backup; the next call reconnects.
    control_.reset();
    if (r.ok()) {
      r->bytes_resent += resent;
      r->reconnects = reconnects;
      r->seconds = std::chrono::duration<double>(Clock::now() - start).count();
      return r;
    }
    // A parent whose data the server lost (kParentCopyLost): this agent's
    // cache called those blocks unchanged. Once, the parent's table is
    // fetched again (it marks them lost) and the backup starts over, sending
    // them: the repository heals.
    if (!healing && r.status().code() == Code::kCorruption &&
        r.status().message().find(kParentCopyLost) != std::string::npos &&
        !o.control.Canceled()) {
      healing = true;
      if (io::sys::Unlink(CachePath(*this, o.volume).c_str()) != 0 && errno != ENOENT) {
        return r.status();
      }
      resent += sent;
      continue;
    }
    // Only a backup the server forgot starts over (not one it refused).
    if (!session_lost || r.status().code() != Code::kNotFound || o.control.Canceled() ||
        Clock::now() - start > options_.retry_for * (attempt + 2)) {
      return r.status();
    }
    resent += sent;
  }
}

// One try of a remote backup, step by step: the checks before anything is
// sent, the session (BEGIN, READY, the hasher's key), the parent's ids and
// this snapshot's cache, the workers with the control connection kept alive
// (and reconnected), the commit (retried across a reconnect), the check of
// what the server committed against what this host read, and the caches
// kept for the next backup.
class AgentAttempt {
 public:
  AgentAttempt(RemoteRepository& remote, const BackupOptions& o)
      : remote_(remote),
        o_(o),
        job_(remote, o),
        timeout_(remote.options().LossTimeout()),
        liveness_(control::SystemClock(), Nanos(remote.options().heartbeat_interval),
                  Nanos(timeout_), kHeartbeatJitterPercent, uint64_t(getpid()) ^ WallClockNs()) {}

  Result<BackupResult> Run(bool* session_lost, uint64_t* bytes_sent, uint64_t* reconnects);

 private:
  // Beats of the control connection: ± 10 %, so agents started together
  // (a nightly schedule) do not beat in step.
  static constexpr unsigned kHeartbeatJitterPercent = 10;
  static int64_t Nanos(Millis ms) { return std::chrono::nanoseconds(ms).count(); }

  Status Preflight();
  Result<Frame> Begin(const std::string& resume);
  Status OpenSession();
  Status PrepareCaches();
  void PrepareScan();
  Status RunWorkers();
  Status KeepControl(bool readable);
  Status Reconnect(const Status& why);
  Status Abandon(const Status& why);
  Result<Manifest> Commit();
  Result<Manifest> CommitOnce(Status* sent);
  Result<Manifest> CheckAgainstCaches(Result<Manifest> committed);
  void KeepCaches(const Manifest& committed);
  BackupResult MakeResult(const Manifest& committed, uint64_t reconnects) const;

  RemoteRepository& remote_;
  const BackupOptions& o_;
  AgentJob job_;
  Millis timeout_;
  control::Liveness liveness_;
  Clock::time_point start_ = Clock::now();
  unsigned threads_ = 1;
  std::optional<ScanSource> source_;
  std::string snapshot_id_;
  uint32_t block_size_ = 0;
  std::string parent_text_;
  std::unique_ptr<simd::BlockHasher> hasher_;
  std::unique_ptr<Manifest> parent_;
  std::string cache_path_;
  std::string anchor_path_, anchor_text_;  // KeepCaches: this host's anchor of the volume
  std::string final_point_in_time_;        // the point-in-time record after the read (JSON)
  io::File parent_cache_;
  io::File new_cache_;
  std::optional<io::TempFileGuard> new_cache_guard_;
  ScanContext ctx_;
};

Status AgentAttempt::Preflight() {
  if (!ValidVolumeName(o_.volume)) {
    return Status::InvalidArgument("invalid volume name '" + o_.volume +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -)");
  }
  const RemoteOptions& ro = remote_.options();
  const int64_t offset_ns = remote_.clock().offset_ns;
  if (std::llabs(offset_ns) > std::chrono::nanoseconds(ro.max_clock_skew).count()) {
    return Status::ClockSkew("this host's clock differs from the server's by " +
                             std::to_string(offset_ns / 1000000) + " ms (more than the allowed " +
                             std::to_string(ro.max_clock_skew.count()) +
                             " ms; fix the clocks or raise --max-clock-skew)");
  }
  DP420_ASSIGN_OR_RETURN(threads_, AgentThreads(o_));
  DP420_ASSIGN_OR_RETURN(ScanSource source,
                         ScanSource::Open(o_.read_path.empty() ? o_.source_path : o_.read_path));
  source_.emplace(std::move(source));
  DP420_RETURN_IF_ERROR(remote_.EnsureControl());
  // DP420_NO_ZEROCOPY=1: plain sends (a copy each) instead of send_zc.
  if (const char* no_zc = std::getenv("DP420_NO_ZEROCOPY"); no_zc && *no_zc == '1') {
    job_.zc_unsupported.store(true);
  }
  job_.stripes = threads_;
  return Status::Ok();
}

// BEGIN (`resume`: the token of the backup to take up again after a
// reconnect, "" for a new one) and its READY.
Result<Frame> AgentAttempt::Begin(const std::string& resume) {
  PayloadWriter w;
  w.String(o_.volume);
  w.U32(o_.block_size);
  w.U64(source_->size());
  w.U32(threads_);
  w.String(EscapeBytes(o_.source_path));  // the manifest's form: valid UTF-8
  w.String(SourceKind(o_, *source_));
  w.String(o_.node_topology.dump());
  w.String(o_.tool_version);
  w.String(resume);
  if (!o_.group.empty()) {
    w.String(o_.group);
    w.U64(o_.group_epoch);
  }
  Conn& control = *remote_.control_;
  DP420_RETURN_IF_ERROR(control.Send(FrameType::kBackupBegin, 0, w.bytes(), timeout_));
  DP420_ASSIGN_OR_RETURN(Frame f, control.Recv(timeout_));
  DP420_RETURN_IF_ERROR(ExpectFrame(f, FrameType::kBackupReady, control.peer()));
  return f;
}

// The session: the server's snapshot id, block size, parent and the key of
// this backup's block ids (cleansed once the hasher holds it).
Status AgentAttempt::OpenSession() {
  DP420_ASSIGN_OR_RETURN(Frame ready, Begin(""));
  auto msg = std::make_unique<BackupReadyMsg>();  // cleanses the key when it goes
  DP420_RETURN_IF_ERROR(ParseBackupReady(ready.payload, msg.get()));
  job_.token = msg->token;
  snapshot_id_ = msg->snapshot_id;
  block_size_ = msg->block_size;
  parent_text_ = std::move(msg->parent_text);
  uint8_t key[simd::kHashSecretBytes];
  std::memcpy(key, msg->key, sizeof(key));
  msg.reset();
  if (Result<unsigned> fits = ResolveThreads(threads_, block_size_); !fits.ok()) {
    OPENSSL_cleanse(key, sizeof(key));
    (void)SendError(*remote_.control_, fits.status(), timeout_);  // the server rolls back
    return fits.status();
  }
  hasher_ = std::make_unique<simd::BlockHasher>(
      std::span<const uint8_t, simd::kHashSecretBytes>(key, sizeof(key)));
  OPENSSL_cleanse(key, sizeof(key));
  return Status::Ok();
}

// The parent's ids (the cache when its seal matches, else fetched), the
// check that the server's history did not go back, and the new cache.
Status AgentAttempt::PrepareCaches() {
  cache_path_ = CachePath(remote_, o_.volume);
  std::string dir = cache_path_.substr(0, cache_path_.find_last_of('/'));
  DP420_RETURN_IF_ERROR(io::MakeDirs(dir).Prefix("parent id cache (--cache-dir)"));
  if (!parent_text_.empty()) {
    DP420_ASSIGN_OR_RETURN(Manifest pm, Manifest::Parse(parent_text_, "parent manifest", nullptr));
    parent_ = std::make_unique<Manifest>(std::move(pm));
  }
  if (Status seen = CheckNotRolledBack(SeenPath(cache_path_), parent_.get()); !seen.ok()) {
    (void)SendError(*remote_.control_, seen, timeout_);  // the server rolls back its side
    return seen;
  }
  if (parent_) {
    DP420_ASSIGN_OR_RETURN(parent_cache_, remote_.OpenParentCache(*parent_, cache_path_, timeout_));
    job_.parent_cache_fd = parent_cache_.fd();
    job_.parent_blocks = parent_->blocks_total;
  }
  job_.new_cache_path = cache_path_ + ".new";
  // Renamed over the cache once the snapshot is committed; removed on every
  // other way out.
  new_cache_guard_.emplace(job_.new_cache_path);
  DP420_ASSIGN_OR_RETURN(new_cache_, io::File::OpenWrite(job_.new_cache_path,
                                                         O_CREAT | O_TRUNC | O_RDWR, false));
  job_.new_cache_fd = new_cache_.fd();
  return Status::Ok();
}

void AgentAttempt::PrepareScan() {
  ctx_.geo = ScanGeometry::For(source_->size(), block_size_);
  ctx_.source = &*source_;
  ctx_.hasher = hasher_.get();
  ctx_.zero_full = ZeroBlockEntry(*hasher_, block_size_);
  ctx_.zero_tail =
      ZeroBlockEntry(*hasher_, ctx_.geo.blocks ? ctx_.geo.BlockLen(ctx_.geo.blocks - 1) : 0);
  ctx_.threads = threads_;
  ctx_.control = o_.control;
  ctx_.stop = &job_.failed;
}

// The workers scan and send on their stripes while this thread keeps the
// control connection alive; the first failure is the job's.
Status AgentAttempt::RunWorkers() {
  DP420_RETURN_IF_ERROR(new_cache_.Truncate(kCacheHeader + ctx_.geo.blocks * kCacheRecord));
  std::vector<std::unique_ptr<NetSink>> sinks;
  std::vector<std::unique_ptr<Scanner>> scanners;
  for (unsigned i = 0; i < threads_; ++i) {
    sinks.push_back(std::make_unique<NetSink>(job_, i));
    scanners.push_back(std::make_unique<Scanner>(ctx_, i, sinks.back().get()));
  }
  std::atomic<unsigned> finished{0};
  // A worker that ends wakes the control loop at once: the commit follows the
  // last worker without waiting out the loop's poll.
  int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return PosixError("eventfd", errno);
  io::File wake = io::File::Adopt(wake_fd, "eventfd", false);
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads_; ++i) {
    pool.emplace_back([&, i] {
      Status s = scanners[i]->Run();
      if (!s.ok()) job_.Fail(s);
      finished.fetch_add(1);
      uint64_t one = 1;
      (void)!write(wake.fd(), &one, sizeof(one));
    });
  }
  liveness_.Restart();
  auto last_progress = Clock::now() - std::chrono::seconds(1);
  while (finished.load() < threads_) {
    if (o_.control.progress && Clock::now() - last_progress > std::chrono::milliseconds(200)) {
      last_progress = Clock::now();
      o_.control.progress({"backup", ctx_.bytes_read.load(), ctx_.geo.volume_size});
    }
    // Once the job failed, only the workers' ends matter (the control
    // connection may be gone).
    bool failed = job_.failed.load();
    pollfd pfd[2] = {{wake.fd(), POLLIN, 0}, {failed ? -1 : remote_.control_->fd(), POLLIN, 0}};
    (void)poll(pfd, 2, 100);
    if (pfd[0].revents & POLLIN) {
      uint64_t count = 0;
      (void)!read(wake.fd(), &count, sizeof(count));
    }
    if (failed) continue;
    Status lost = KeepControl(pfd[1].revents != 0);
    if (!lost.ok() && lost.code() == Code::kNetwork) {
      Status s = Reconnect(lost);
      if (!s.ok()) job_.Fail(s);
    } else if (!lost.ok()) {
      job_.Fail(lost);
    }
  }
  for (auto& t : pool) t.join();
  if (job_.error.ok()) job_.error = source_->CheckSize();
  return job_.error;
}

// One turn of the control connection: what the server sent (a PING
// answered, an ERROR fails the job), a heartbeat when one is due, and the
// loss of a server silent for the loss timeout.
Status AgentAttempt::KeepControl(bool readable) {
  Conn& control = *remote_.control_;
  Status lost;
  if (readable) {
    auto f = control.Recv(timeout_);
    if (!f.ok()) {
      lost = f.status();
    } else {
      liveness_.Heard();
      if (f->type() == FrameType::kPing) {
        lost = AnswerPing(control, *f, timeout_);
      } else if (f->type() == FrameType::kError) {
        job_.Fail(StatusFromError(*f, "server " + control.peer()));
      }
    }
  }
  if (lost.ok() && liveness_.BeatDue()) {
    PayloadWriter ping;
    ping.U64(WallClockNs());
    lost = control.Send(FrameType::kPing, 0, ping.bytes(), timeout_);
    liveness_.Sent();
  }
  if (lost.ok() && liveness_.Lost()) {
    lost = Status::Network("no answer from server " + remote_.options().address + " for " +
                           std::to_string(timeout_.count() / 1000.0).substr(0, 4) + " s");
  }
  return lost;
}

// A new control connection that takes the backup up again (its token), with
// backoff, within the reconnect window the stripes share.
Status AgentAttempt::Reconnect(const Status& why) {
  job_.sockets.ShutdownAll();  // the stripes reconnect on their own
  Clock::time_point deadline = job_.RetryDeadline();
  Status last = why;
  for (unsigned attempt = 0; Clock::now() < deadline; ++attempt) {
    if (!PauseBeforeReconnect(attempt, deadline,
                              [&] { return job_.failed.load() || o_.control.Canceled(); })) {
      break;
    }
    auto conn = remote_.OpenConnection();
    if (!conn.ok()) {
      last = conn.status();
      if (last.code() != Code::kNetwork) return last;
      continue;
    }
    remote_.control_ = std::move(conn).value();
    auto resumed = Begin(job_.token);
    if (resumed.ok()) {
      job_.reconnects.fetch_add(1);
      job_.retry_deadline_ns.store(0);
      liveness_.Restart();
      return Status::Ok();
    }
    last = resumed.status();
    remote_.control_.reset();
    if (last.code() == Code::kNotFound) job_.session_lost.store(true);
    if (last.code() != Code::kNetwork) return last;
  }
  return Status::Network("server " + remote_.options().address + " lost (" + why.message() +
                         "); reconnecting for " +
                         std::to_string(remote_.options().retry_for.count() / 1000) +
                         " s failed: " + last.message());
}

// Ends the attempt without a snapshot: the server is told to roll back now
// (rather than wait for this agent), and the new cache goes.
Status AgentAttempt::Abandon(const Status& why) {
  if (remote_.control_) (void)SendError(*remote_.control_, why, timeout_);
  io::sys::Unlink(job_.new_cache_path.c_str());
  return why;
}

// COMMIT and its COMMITTED (the server builds the table and writes the
// manifest); `*sent` is how the exchange itself ended.
Result<Manifest> AgentAttempt::CommitOnce(Status* sent) {
  Conn& control = *remote_.control_;
  PayloadWriter counters;  // for the server's log
  counters.U64(job_.bytes_sent.load());
  counters.U64(job_.bytes_zc.load());
  counters.U64(job_.bytes_zc_copied.load());
  counters.U64(job_.bytes_resent.load());
  if (!final_point_in_time_.empty()) counters.String(final_point_in_time_);
  *sent = control.Send(FrameType::kCommit, 9, counters.bytes(), timeout_);
  while (sent->ok()) {
    auto f = control.Recv(timeout_);
    if (!f.ok()) {
      *sent = f.status();
      break;
    }
    if (f->type() == FrameType::kPing) {
      *sent = AnswerPing(control, *f, timeout_);
      continue;
    }
    if (f->type() == FrameType::kPong) continue;
    Status expected = ExpectFrame(*f, FrameType::kCommitted, control.peer());
    if (!expected.ok()) {
      *sent = expected;
      return expected;
    }
    std::string text;
    DP420_RETURN_IF_ERROR(ParseText(f->payload, 1 << 20, "COMMITTED", &text));
    return Manifest::Parse(text, "committed manifest", nullptr);
  }
  return *sent;
}

// The commit, tried again after a reconnect; a connection lost during it may
// have lost only the answer: the snapshot is then looked for by its id.
Result<Manifest> AgentAttempt::Commit() {
  Result<Manifest> committed = Status::Network("no answer to COMMIT");
  for (unsigned attempt = 0; attempt < 3; ++attempt) {
    Status sent;
    committed = CommitOnce(&sent);
    if (committed.ok() || sent.code() != Code::kNetwork) break;
    Status back = Reconnect(sent);
    if (!back.ok()) {
      std::vector<Manifest> list;
      if (remote_.EnsureControl().ok() && remote_.ListManifests(o_.volume, &list).ok()) {
        for (const Manifest& m : list) {
          if (m.snapshot_id == snapshot_id_) committed = m;
        }
      }
      if (!committed.ok()) committed = back;
      break;
    }
  }
  return committed;
}

// What the server committed, checked against what this host read and sent
// (id_cache.h CheckCommitted).
Result<Manifest> AgentAttempt::CheckAgainstCaches(Result<Manifest> committed) {
  if (!committed.ok()) return committed;
  SentSnapshot sent{remote_.options().client, o_.volume, snapshot_id_,
                    parent_ ? parent_->snapshot_id : "", block_size_, source_->size(),
                    ctx_.geo.blocks};
  Status checked = CheckCommitted(*committed, sent, new_cache_.fd(), job_.parent_cache_fd,
                                  job_.parent_blocks);
  if (checked.ok()) return committed;
  if (checked.code() == Code::kIOError) {
    // This host could not read its caches: nothing is known to differ, and
    // the cache is kept.
    return checked.Prefix("checking the committed snapshot " + snapshot_id_ +
                          " against this agent's block id caches (new: " + job_.new_cache_path +
                          ", parent's: " + (parent_ ? cache_path_ : std::string("none")) + ")");
  }
  // Either side may be wrong: the server, or this host's cache of the
  // parent. The cache goes, so the next backup fetches the parent's records.
  if (parent_) io::sys::Unlink(cache_path_.c_str());
  return Status::Corruption(checked.message() +
                            (parent_ ? " (the local id cache " + cache_path_ +
                                           " was removed: if the next backup passes this "
                                           "check, that cache had been damaged)"
                                     : ""));
}

// This agent's anchor (the newest it committed) and the new snapshot's ids
// as the cache of the next backup.
void AgentAttempt::KeepCaches(const Manifest& committed) {
  // A group member's snapshot is only staged: the anchor moves once the
  // group is published (BackupResult::anchor_*, written by the agent).
  anchor_path_ = SeenPath(cache_path_);
  anchor_text_ = std::to_string(committed.sequence) + " " + committed.snapshot_id + "\n";
  if (o_.group.empty()) (void)io::WriteFileAtomic(anchor_path_, anchor_text_);
  CacheHeader h = MakeCacheHeader(committed);
  // Made durable before the rename, as a fetched cache is; if that fails the
  // next backup fetches the parent's ids again.
  if (WriteAll(new_cache_.fd(), 0, &h, sizeof(h), job_.new_cache_path).ok() &&
      new_cache_.Sync().ok() &&
      io::sys::Rename(job_.new_cache_path.c_str(), cache_path_.c_str()) == 0) {
    new_cache_guard_->Keep();
  }
}

BackupResult AgentAttempt::MakeResult(const Manifest& committed, uint64_t reconnects) const {
  BackupResult result;
  result.manifest = committed;
  result.bytes_read = ctx_.bytes_read.load();
  result.bytes_written = committed.bytes_written;
  result.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  result.threads = threads_;
  result.direct_io = source_->direct.direct();
  result.registered_buffers = ctx_.registered.load();
  result.bytes_sent = job_.bytes_sent.load();
  result.bytes_sent_zerocopy = job_.bytes_zc.load();
  result.bytes_zerocopy_copied = job_.bytes_zc_copied.load();
  result.bytes_resent = job_.bytes_resent.load();
  result.blocks_healed = job_.blocks_healed.load();
  result.reconnects = reconnects;
  if (!o_.group.empty()) {
    result.anchor_path = anchor_path_;
    result.anchor_text = anchor_text_;
  }
  return result;
}

Result<BackupResult> AgentAttempt::Run(bool* session_lost, uint64_t* bytes_sent,
                                       uint64_t* reconnects) {
  DP420_RETURN_IF_ERROR(Preflight());
  DP420_RETURN_IF_ERROR(OpenSession());
  DP420_RETURN_IF_ERROR(PrepareCaches());
  PrepareScan();
  Status ran = RunWorkers();
  *session_lost = job_.session_lost.load();
  *bytes_sent = job_.bytes_zc.load();
  *reconnects += job_.reconnects.load();
  if (!ran.ok() && o_.control.Canceled()) ran = Status::Canceled("backup canceled");
  if (!ran.ok()) return Abandon(ran);
  // The point in time ends before the commit: a post hook that fails, or a
  // freeze that could not be ended, commits nothing.
  // How the source was read is known only now (a freeze that held for the
  // whole read, a live source that changed): it goes with COMMIT, and the
  // server writes it into the manifest in place of what BACKUP_BEGIN said.
  if (o_.end_point_in_time) {
    Json topology = o_.node_topology;
    if (Status ended = o_.end_point_in_time(&topology); !ended.ok()) return Abandon(ended);
    if (topology.contains("members") && topology["members"].is_array() &&
        !topology["members"].empty() && topology["members"][0].contains("point_in_time")) {
      final_point_in_time_ = topology["members"][0]["point_in_time"].dump();
    }
  }
  Result<Manifest> committed = CheckAgainstCaches(Commit());
  if (!committed.ok()) {
    io::sys::Unlink(job_.new_cache_path.c_str());
    return committed.status();
  }
  KeepCaches(*committed);
  if (o_.control.progress) o_.control.progress({"backup", ctx_.geo.volume_size, ctx_.geo.volume_size});
  return MakeResult(*committed, *reconnects);
}

Result<BackupResult> RemoteRepository::BackupAttempt(const BackupOptions& o, bool* session_lost,
                                                     uint64_t* bytes_sent,
                                                     uint64_t* reconnects) {
  AgentAttempt attempt(*this, o);
  return attempt.Run(session_lost, bytes_sent, reconnects);
}

}  // namespace dp420::net
