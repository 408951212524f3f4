#include "tamper_relay.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "socket_util.h"

namespace dp420::testnet {
namespace {

using Clock = std::chrono::steady_clock;

// How often a blocked read or write looks at stop, reset and the lifetime.
constexpr int kTickMs = 10;

uint32_t Crc32cBitwise(const uint8_t* data, size_t len) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

#if defined(__x86_64__)
// The bitwise loop takes tens of milliseconds per MiB; frames reach 4 MiB.
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(const uint8_t* data, size_t len) {
  uint64_t crc = 0xFFFFFFFFu;
  for (; len >= 8; data += 8, len -= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc = _mm_crc32_u64(crc, word);
  }
  uint32_t crc32 = static_cast<uint32_t>(crc);
  for (; len > 0; ++data, --len) crc32 = _mm_crc32_u8(crc32, *data);
  return ~crc32;
}
#endif

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(v));
}

FrameView ParseHeader(const uint8_t h[kWireHeaderBytes]) {
  FrameView f;
  f.magic = Load<uint32_t>(h);
  f.version = Load<uint16_t>(h + 4);
  f.type = Load<uint16_t>(h + 6);
  f.payload_len = Load<uint32_t>(h + 8);
  f.payload_crc32c = Load<uint32_t>(h + 12);
  f.request_id = Load<uint64_t>(h + 16);
  f.flags = Load<uint32_t>(h + 24);
  f.header_crc32c = Load<uint32_t>(h + 28);
  return f;
}

void WriteHeader(const FrameView& f, uint8_t h[kWireHeaderBytes]) {
  Store(h, f.magic);
  Store(h + 4, f.version);
  Store(h + 6, f.type);
  Store(h + 8, f.payload_len);
  Store(h + 12, f.payload_crc32c);
  Store(h + 16, f.request_id);
  Store(h + 24, f.flags);
  Store(h + 28, f.header_crc32c);
}

// Makes the frame consistent again after the hook, as an attacker without keys can: the
// length follows the payload, an unsealed payload gets its CRC, and a changed header its
// header CRC. Returns true when the frame differs from what was received.
bool RepairFrame(const uint8_t original_header[kWireHeaderBytes],
                 const std::vector<uint8_t>& original_payload, FrameView* f,
                 uint8_t header_out[kWireHeaderBytes]) {
  bool payload_changed = f->payload != original_payload;
  f->payload_len = static_cast<uint32_t>(f->payload.size());
  if (payload_changed && !f->sealed()) {
    f->payload_crc32c = Crc32cOf(f->payload.data(), f->payload.size());
  }
  WriteHeader(*f, header_out);
  // Compare bytes 0..27: the fields the header CRC covers.
  bool header_changed = std::memcmp(header_out, original_header, 28) != 0;
  if (header_changed || payload_changed) {
    f->header_crc32c = Crc32cOf(header_out, 28);
    Store(header_out + 28, f->header_crc32c);
  }
  return header_changed || payload_changed;
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

enum class Io { kOk, kEof, kFail };

}  // namespace

const char* DirectionName(Direction dir) {
  return dir == Direction::kAgentToServer ? "agent->server" : "server->agent";
}

uint32_t Crc32cOf(const uint8_t* data, size_t len) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return Crc32cSse42(data, len);
#endif
  return Crc32cBitwise(data, len);
}

struct TamperRelay::Connection {
  uint64_t index = 0;
  int agent = -1;   // accepted from the agent
  int server = -1;  // connected to the target
  std::atomic<bool> abort{false};  // reset both sides and end
  std::atomic<bool> finished{false};
  std::thread thread;
};

namespace {

// Reads exactly `len` bytes (all sockets are non-blocking). kEof when the peer closed
// first, with `*got` bytes read; kFail on an error or when `alive` turns false.
Io ReadExact(int fd, uint8_t* data, size_t len, size_t* got,
             const std::function<bool()>& alive) {
  *got = 0;
  while (*got < len) {
    if (!alive()) return Io::kFail;
    pollfd pfd = {fd, POLLIN, 0};
    int ready = poll(&pfd, 1, kTickMs);
    if (ready < 0 && errno != EINTR) return Io::kFail;
    if (ready <= 0) continue;
    ssize_t n = recv(fd, data + *got, len - *got, MSG_DONTWAIT);
    if (n == 0) return Io::kEof;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return Io::kFail;
    }
    *got += static_cast<size_t>(n);
  }
  return Io::kOk;
}

// Writes all `len` bytes; kFail on an error or when `alive` turns false.
Io WriteAll(int fd, const uint8_t* data, size_t len, const std::function<bool()>& alive) {
  size_t sent = 0;
  while (sent < len) {
    if (!alive()) return Io::kFail;
    pollfd pfd = {fd, POLLOUT, 0};
    int ready = poll(&pfd, 1, kTickMs);
    if (ready < 0 && errno != EINTR) return Io::kFail;
    if (ready <= 0) continue;
    ssize_t n = send(fd, data + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return Io::kFail;
    }
    sent += static_cast<size_t>(n);
  }
  return Io::kOk;
}

}  // namespace

TamperRelay::TamperRelay() = default;

TamperRelay::~TamperRelay() { Stop(); }

bool TamperRelay::Start(const std::string& target_ip, uint16_t target_port,
                        const TamperRelayOptions& options, std::string* error) {
  if (listen_fd_ >= 0 || stop_.load()) {
    *error = "TamperRelay::Start called twice";
    return false;
  }
  if (!ParseAddress(target_ip, target_port, &target_, &target_len_)) {
    *error = "TamperRelay: target is not an IP: " + target_ip;
    return false;
  }
  options_ = options;
  UniqueFd listener = ListenTcp("127.0.0.1", 0, &port_, error);
  if (!listener.valid()) return false;
  listen_fd_ = listener.Release();
  end_of_life_ = Clock::now() + options.lifetime_max;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return true;
}

void TamperRelay::Stop() {
  stop_.store(true);
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);  // wakes the accept loop
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
  // stop_ is set: every pump ends within a tick.
  ReapFinished(/*all=*/true);
}

void TamperRelay::SetHook(FrameHook hook) {
  std::lock_guard lock(mutex_);
  hook_ = std::move(hook);
}

std::vector<uint8_t> TamperRelay::Recorded(Direction dir) const {
  std::lock_guard lock(mutex_);
  std::vector<uint8_t> out;
  for (const auto& conn : recorded_) {
    const auto& bytes = conn[static_cast<int>(dir)];
    out.insert(out.end(), bytes.begin(), bytes.end());
  }
  return out;
}

bool TamperRelay::RecordedContains(const uint8_t* needle, size_t len) const {
  std::lock_guard lock(mutex_);
  std::boyer_moore_horspool_searcher searcher(needle, needle + len);
  for (const auto& conn : recorded_) {
    for (const auto& bytes : conn) {
      if (std::search(bytes.begin(), bytes.end(), searcher) != bytes.end()) return true;
    }
  }
  return false;
}

uint64_t TamperRelay::FramesSeen(Direction dir, uint16_t type) const {
  std::lock_guard lock(mutex_);
  return type <= kWireMaxType ? frames_seen_[static_cast<int>(dir)][type] : 0;
}

void TamperRelay::ReapFinished(bool all) {
  std::list<std::unique_ptr<Connection>> done;
  {
    std::lock_guard lock(mutex_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (all || (*it)->finished.load()) {
        done.push_back(std::move(*it));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& connection : done) connection->thread.join();
}

void TamperRelay::AcceptLoop() {
  // Bounded by stop_ and end_of_life_; each turn waits at most 20 ms.
  while (!stop_.load() && Clock::now() < end_of_life_) {
    ReapFinished(/*all=*/false);
    pollfd pfd = {listen_fd_, POLLIN, 0};
    if (poll(&pfd, 1, 20) <= 0) continue;
    int agent = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (agent < 0) {
      if (errno == EINVAL) break;  // shut down by Stop
      continue;
    }
    std::lock_guard lock(mutex_);
    if (connections_.size() >= options_.connections_max) {
      CloseWithReset(agent);
      continue;
    }
    auto connection = std::make_unique<Connection>();
    connection->index = connections_accepted_.fetch_add(1);
    connection->agent = agent;
    Connection* raw = connection.get();
    connection->thread = std::thread([this, raw] { Serve(raw); });
    connections_.push_back(std::move(connection));
  }
}

bool TamperRelay::Alive(const Connection* c) const {
  return !stop_.load() && !c->abort.load() && Clock::now() < end_of_life_;
}

// Connects the target, pumps both directions (one on a helper thread), and closes: with a
// reset when either pump failed or a hook asked for one, else in order.
void TamperRelay::Serve(Connection* c) {
  int one = 1;
  setsockopt(c->agent, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  c->server = ConnectTarget(target_, target_len_, options_.connect_timeout);
  if (c->server < 0) {
    c->abort.store(true);
  } else {
    std::thread back([this, c] { Pump(c, Direction::kServerToAgent); });
    Pump(c, Direction::kAgentToServer);
    back.join();
  }
  if (c->abort.load()) {
    CloseWithReset(c->agent);
    if (c->server >= 0) CloseWithReset(c->server);
  } else {
    close(c->agent);
    close(c->server);
  }
  c->finished.store(true);
}

Action TamperRelay::RunHook(Direction dir, uint64_t conn_index, uint64_t frame_index,
                            FrameView& frame) {
  std::lock_guard lock(mutex_);
  if (frame.type <= kWireMaxType) ++frames_seen_[static_cast<int>(dir)][frame.type];
  if (!hook_) return Action::kPass;
  return hook_(dir, conn_index, frame_index, frame);
}

void TamperRelay::Record(uint64_t conn_index, Direction dir, const uint8_t* data, size_t len) {
  if (!options_.record || len == 0) return;
  std::lock_guard lock(mutex_);
  if (recorded_bytes_ + len > options_.record_bytes_max) return;
  if (recorded_.size() <= conn_index) recorded_.resize(conn_index + 1);
  auto& bytes = recorded_[conn_index][static_cast<int>(dir)];
  bytes.insert(bytes.end(), data, data + len);
  recorded_bytes_ += len;
}

// Passes bytes on as they come, for a direction that stopped parsing as frames.
void TamperRelay::PumpRaw(Connection* c, Direction dir, int from, int to) {
  std::function<bool()> alive = [this, c] { return Alive(c); };
  std::vector<uint8_t> buffer(64 << 10);
  for (;;) {
    size_t got = 0;
    Io io = ReadExact(from, buffer.data(), 1, &got, alive);
    if (io == Io::kFail) return c->abort.store(true);
    if (io == Io::kEof) {
      shutdown(to, SHUT_WR);
      return;
    }
    ssize_t more = recv(from, buffer.data() + 1, buffer.size() - 1, MSG_DONTWAIT);
    got += more > 0 ? static_cast<size_t>(more) : 0;
    Record(c->index, dir, buffer.data(), got);
    if (WriteAll(to, buffer.data(), got, alive) != Io::kOk) return c->abort.store(true);
  }
}

// Relays one direction until its sender closes (passed on as a half close), an error, a
// hook's reset, or Stop: frame by frame while the bytes parse as frames, raw after.
void TamperRelay::Pump(Connection* c, Direction dir) {
  int from = dir == Direction::kAgentToServer ? c->agent : c->server;
  int to = dir == Direction::kAgentToServer ? c->server : c->agent;
  std::function<bool()> alive = [this, c] { return Alive(c); };
  auto send_frame = [&](const uint8_t* header, const uint8_t* payload, size_t len) {
    return WriteAll(to, header, kWireHeaderBytes, alive) == Io::kOk &&
           WriteAll(to, payload, len, alive) == Io::kOk;
  };
  for (uint64_t index = 0;; ++index) {
    uint8_t header[kWireHeaderBytes];
    size_t got = 0;
    Io io = ReadExact(from, header, sizeof(header), &got, alive);
    if (io != Io::kFail) Record(c->index, dir, header, got);
    if (io == Io::kFail) return c->abort.store(true);
    if (io == Io::kEof) {
      // A partial header goes on as it is: the receiver judges it, not the relay.
      if (WriteAll(to, header, got, alive) != Io::kOk) return c->abort.store(true);
      shutdown(to, SHUT_WR);
      return;
    }
    FrameView frame = ParseHeader(header);
    if (frame.magic != kWireMagic || frame.payload_len > options_.payload_bytes_max) {
      unparsed_streams_.fetch_add(1);
      if (WriteAll(to, header, sizeof(header), alive) != Io::kOk) return c->abort.store(true);
      return PumpRaw(c, dir, from, to);
    }
    frame.payload.resize(frame.payload_len);
    io = ReadExact(from, frame.payload.data(), frame.payload.size(), &got, alive);
    if (io != Io::kFail) Record(c->index, dir, frame.payload.data(), got);
    if (io == Io::kFail) return c->abort.store(true);
    if (io == Io::kEof) {
      // The sender closed inside a frame: pass on the fragment, then the close.
      if (!send_frame(header, frame.payload.data(), got)) return c->abort.store(true);
      shutdown(to, SHUT_WR);
      return;
    }
    std::vector<uint8_t> original = frame.payload;
    Action action = RunHook(dir, c->index, index, frame);
    uint8_t out[kWireHeaderBytes];
    bool changed = RepairFrame(header, original, &frame, out);
    if (changed || action != Action::kPass) frames_tampered_.fetch_add(1);
    if (action == Action::kReset) return c->abort.store(true);
    if (action == Action::kDrop) continue;
    int copies = action == Action::kDuplicate ? 2 : 1;
    for (int copy = 0; copy < copies; ++copy) {
      if (!send_frame(out, frame.payload.data(), frame.payload.size())) {
        return c->abort.store(true);
      }
    }
  }
}

}  // namespace dp420::testnet
