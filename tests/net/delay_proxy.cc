#include "delay_proxy.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <vector>

#include "socket_util.h"

namespace dp420::testnet {
namespace {

using Clock = std::chrono::steady_clock;

// How often a connection thread looks at pause, reset and stop when nothing else wakes it.
constexpr std::chrono::milliseconds kTick{5};

struct Chunk {
  std::vector<char> bytes;
  size_t sent = 0;
  Clock::time_point due;
};

// One direction of a connection: bytes read from `from`, held, written to `to`.
struct Direction {
  int from = -1;
  int to = -1;
  std::deque<Chunk> queue;
  size_t queued_bytes = 0;
  bool eof = false;       // `from` sent FIN
  bool shut_sent = false;  // FIN passed on to `to`
};

enum class Step { kGoOn, kDone, kAbort };

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Reads one chunk into the queue, due `delay` from now.
Step ReadChunk(Direction* d, size_t chunk_bytes, std::chrono::milliseconds delay) {
  Chunk chunk;
  chunk.bytes.resize(chunk_bytes);
  ssize_t n = recv(d->from, chunk.bytes.data(), chunk.bytes.size(), MSG_DONTWAIT);
  if (n < 0) return errno == EAGAIN || errno == EINTR ? Step::kGoOn : Step::kAbort;
  if (n == 0) {
    d->eof = true;
    return Step::kGoOn;
  }
  chunk.bytes.resize(static_cast<size_t>(n));
  chunk.due = Clock::now() + delay;
  d->queued_bytes += chunk.bytes.size();
  d->queue.push_back(std::move(chunk));
  return Step::kGoOn;
}

// Writes due chunks until the socket is full; counts what went out.
Step WriteDue(Direction* d, std::atomic<uint64_t>* forwarded) {
  Clock::time_point now = Clock::now();
  for (size_t i = 0; i < 1024 && !d->queue.empty() && d->queue.front().due <= now; ++i) {
    Chunk& head = d->queue.front();
    ssize_t n = send(d->to, head.bytes.data() + head.sent, head.bytes.size() - head.sent,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? Step::kGoOn : Step::kAbort;
    head.sent += static_cast<size_t>(n);
    forwarded->fetch_add(static_cast<uint64_t>(n));
    if (head.sent < head.bytes.size()) return Step::kGoOn;
    d->queued_bytes -= head.bytes.size();
    d->queue.pop_front();
  }
  return Step::kGoOn;
}

// Passes a FIN on once everything before it went out.
void ForwardEof(Direction* d) {
  if (d->eof && d->queue.empty() && !d->shut_sent) {
    shutdown(d->to, SHUT_WR);
    d->shut_sent = true;
  }
}

// Poll timeout: the next due chunk (when not paused), at most one tick.
int NextWakeMs(const Direction dirs[2], bool paused) {
  auto wake = Clock::now() + kTick;
  for (int i = 0; i < 2; ++i) {
    if (!paused && !dirs[i].queue.empty()) wake = std::min(wake, dirs[i].queue.front().due);
  }
  auto left = std::chrono::ceil<std::chrono::milliseconds>(wake - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Non-blocking connect with a deadline; -1 when it fails.
int ConnectTarget(const sockaddr_storage& target, socklen_t target_len,
                  std::chrono::milliseconds timeout) {
  int fd = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int rc = connect(fd, reinterpret_cast<const sockaddr*>(&target), target_len);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd pfd = {fd, POLLOUT, 0};
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (poll(&pfd, 1, static_cast<int>(timeout.count())) == 1 &&
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) == 0 && so_error == 0) {
      rc = 0;
    }
  }
  if (rc != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

}  // namespace

struct DelayProxy::Connection {
  int client = -1;
  int upstream = -1;
  uint64_t generation = 0;
  std::atomic<bool> finished{false};
  std::thread thread;
};

DelayProxy::DelayProxy() = default;

DelayProxy::~DelayProxy() {
  stop_.store(true);
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);  // wakes and ends the accept loop
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  ReapFinished(/*all=*/true);
}

bool DelayProxy::Start(const std::string& target_ip, uint16_t target_port,
                       const DelayProxyOptions& options, std::string* error) {
  if (listen_fd_ >= 0) {
    *error = "DelayProxy::Start called twice";
    return false;
  }
  if (!ParseAddress(target_ip, target_port, &target_, &target_len_)) {
    *error = "DelayProxy: target is not an IP: " + target_ip;
    return false;
  }
  options_ = options;
  delay_ms_.store(options.delay.count());
  UniqueFd listener = ListenTcp("127.0.0.1", 0, &port_, error);
  if (!listener.valid()) return false;
  listen_fd_ = listener.Release();
  end_of_life_ = Clock::now() + options.lifetime_max;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return true;
}

void DelayProxy::Pause() { paused_.store(true); }
void DelayProxy::Resume() { paused_.store(false); }
void DelayProxy::SetDelay(std::chrono::milliseconds delay) { delay_ms_.store(delay.count()); }

void DelayProxy::ResetConnections() {
  uint64_t generation = generation_.fetch_add(1) + 1;
  std::unique_lock<std::mutex> lock(mutex_);
  closed_.wait_for(lock, std::chrono::seconds(2), [&] {
    for (const auto& connection : connections_) {
      if (connection->generation < generation && !connection->finished.load()) return false;
    }
    return true;
  });
}

void DelayProxy::Kill() {
  killed_.store(true);
  // On Linux, shutdown() of a listening socket closes it for new connections at once
  // (they are refused) and wakes the accept loop.
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);
  ResetConnections();
}

void DelayProxy::ReapFinished(bool all) {
  std::list<std::unique_ptr<Connection>> done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (all || (*it)->finished.load()) {
        done.push_back(std::move(*it));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // stop_ is set when `all`: every Serve loop ends within a tick.
  for (auto& connection : done) connection->thread.join();
}

void DelayProxy::AcceptLoop() {
  // Bounded by stop_, killed_ and end_of_life_.
  while (!stop_.load() && !killed_.load() && Clock::now() < end_of_life_) {
    ReapFinished(/*all=*/false);
    pollfd pfd = {listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 20) <= 0) continue;
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINVAL) break;  // shut down by Kill or the destructor
      continue;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (connections_.size() >= options_.connections_max) {
      CloseWithReset(client);
      continue;
    }
    connections_accepted_.fetch_add(1);
    auto connection = std::make_unique<Connection>();
    connection->client = client;
    connection->generation = generation_.load();
    Connection* raw = connection.get();
    connection->thread = std::thread([this, raw] { Serve(raw); });
    connections_.push_back(std::move(connection));
  }
}

void DelayProxy::Serve(Connection* c) {
  c->upstream = ConnectTarget(target_, target_len_, options_.connect_timeout);
  Step step = c->upstream >= 0 ? Step::kGoOn : Step::kAbort;
  SetNonBlocking(c->client);
  Direction dirs[2];
  dirs[0].from = dirs[1].to = c->client;
  dirs[0].to = dirs[1].from = c->upstream;
  // Bounded by stop_, the generation and end_of_life_; each turn waits at most one tick.
  while (step == Step::kGoOn) {
    if (stop_.load() || generation_.load() != c->generation || Clock::now() > end_of_life_) {
      step = Step::kAbort;
      break;
    }
    bool paused = paused_.load();
    pollfd fds[2] = {{c->client, 0, 0}, {c->upstream, 0, 0}};
    for (int i = 0; i < 2; ++i) {
      Direction& d = dirs[i];
      if (!d.eof && d.queued_bytes < options_.queue_bytes_max) fds[i].events |= POLLIN;
      if (!paused && !d.queue.empty()) fds[1 - i].events |= POLLOUT;
    }
    int ready = poll(fds, 2, NextWakeMs(dirs, paused));
    if (ready < 0 && errno != EINTR) step = Step::kAbort;
    if ((fds[0].revents | fds[1].revents) & POLLERR) step = Step::kAbort;
    auto delay = std::chrono::milliseconds(delay_ms_.load());
    for (int i = 0; i < 2 && step == Step::kGoOn; ++i) {
      if (fds[i].revents & (POLLIN | POLLHUP)) {
        if (fds[i].events & POLLIN) step = ReadChunk(&dirs[i], options_.chunk_bytes, delay);
      }
      if (step == Step::kGoOn && !paused_.load()) step = WriteDue(&dirs[i], &bytes_forwarded_);
      ForwardEof(&dirs[i]);
    }
    if (dirs[0].shut_sent && dirs[1].shut_sent) step = Step::kDone;
    // Both sides hung up while a full queue waits for a paused or closed reader: idle a tick
    // instead of spinning on POLLHUP.
    if (step == Step::kGoOn && ready > 0 && !(fds[0].revents & ~POLLHUP) &&
        !(fds[1].revents & ~POLLHUP)) {
      std::this_thread::sleep_for(kTick);
    }
  }
  if (step == Step::kAbort) {
    CloseWithReset(c->client);
    CloseWithReset(c->upstream);
  } else {
    close(c->client);
    close(c->upstream);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    c->finished.store(true);
  }
  closed_.notify_all();
}

}  // namespace dp420::testnet
