#include "socket_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace dp420::testnet {
namespace {

using Clock = std::chrono::steady_clock;

bool Fail(std::string* error, std::string message) {
  *error = std::move(message);
  return false;
}

std::string ErrnoText(const std::string& what, int err) {
  return what + ": " + std::strerror(err);
}

// Milliseconds left until `deadline` for poll(): 0 when past, rounded up otherwise.
int PollTimeout(Deadline deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left.count(), 60000));
}

// Waits for `events` on fd until the deadline: 1 ready, 0 timeout, -1 error (errno set).
int WaitFor(int fd, short events, Deadline deadline) {
  for (int i = 0; i < 1000; ++i) {  // bounded: EINTR retries
    pollfd pfd = {fd, events, 0};
    int ready = poll(&pfd, 1, PollTimeout(deadline));
    if (ready >= 0 || errno != EINTR) return ready;
  }
  return 0;
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) Reset(other.Release());
  return *this;
}

int UniqueFd::Release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

bool ParseAddress(const std::string& ip, uint16_t port, sockaddr_storage* addr,
                  socklen_t* addr_len) {
  std::memset(addr, 0, sizeof(*addr));
  auto* v4 = reinterpret_cast<sockaddr_in*>(addr);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *addr_len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(addr);
  if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *addr_len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

bool ListenOn(int fd, const std::string& ip, uint16_t port, uint16_t* bound_port,
              std::string* error) {
  sockaddr_storage addr;
  socklen_t addr_len = 0;
  if (!ParseAddress(ip, port, &addr, &addr_len)) return Fail(error, "not an IP: " + ip);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  std::string where = ip + ":" + std::to_string(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    return Fail(error, ErrnoText("bind " + where, errno));
  }
  if (listen(fd, 64) != 0) return Fail(error, ErrnoText("listen " + where, errno));
  if (bound_port == nullptr) return true;
  addr_len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0) {
    return Fail(error, ErrnoText("getsockname", errno));
  }
  const auto* v4 = reinterpret_cast<const sockaddr_in*>(&addr);
  const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&addr);
  *bound_port = ntohs(addr.ss_family == AF_INET ? v4->sin_port : v6->sin6_port);
  return true;
}

UniqueFd ListenTcp(const std::string& ip, uint16_t port, uint16_t* bound_port,
                   std::string* error) {
  int family = ip.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    *error = ErrnoText("socket", errno);
    return UniqueFd();
  }
  if (!ListenOn(fd.get(), ip, port, bound_port, error)) return UniqueFd();
  return fd;
}

bool ConnectOn(int fd, const std::string& ip, uint16_t port, std::chrono::milliseconds timeout,
               std::string* error) {
  sockaddr_storage addr;
  socklen_t addr_len = 0;
  if (!ParseAddress(ip, port, &addr, &addr_len)) return Fail(error, "not an IP: " + ip);
  std::string where = "connect " + ip + ":" + std::to_string(port);
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), addr_len);
  if (rc != 0 && errno != EINPROGRESS) return Fail(error, ErrnoText(where, errno));
  if (rc != 0) {
    int ready = WaitFor(fd, POLLOUT, DeadlineIn(timeout));
    if (ready <= 0) return Fail(error, where + ": timed out");
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0) return Fail(error, ErrnoText(where, so_error));
  }
  fcntl(fd, F_SETFL, flags);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return true;
}

UniqueFd ConnectTcp(const std::string& ip, uint16_t port, std::chrono::milliseconds timeout,
                    std::string* error) {
  int family = ip.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    *error = ErrnoText("socket", errno);
    return UniqueFd();
  }
  if (!ConnectOn(fd.get(), ip, port, timeout, error)) return UniqueFd();
  return fd;
}

UniqueFd AcceptWithin(int listen_fd, std::chrono::milliseconds timeout, std::string* error) {
  int ready = WaitFor(listen_fd, POLLIN, DeadlineIn(timeout));
  if (ready <= 0) {
    *error = ready == 0 ? "accept: timed out" : ErrnoText("poll", errno);
    return UniqueFd();
  }
  UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) *error = ErrnoText("accept", errno);
  return fd;
}

bool SendAll(int fd, const void* data, size_t len, Deadline deadline, std::string* error) {
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  while (done < len) {  // bounded by the deadline: each turn waits or makes progress
    int ready = WaitFor(fd, POLLOUT, deadline);
    if (ready < 0) return Fail(error, ErrnoText("poll", errno));
    if (ready == 0) return Fail(error, "send: timed out");
    ssize_t n = send(fd, bytes + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) return Fail(error, ErrnoText("send", errno));
    done += static_cast<size_t>(n);
  }
  return true;
}

ssize_t RecvSome(int fd, void* data, size_t len, Deadline deadline, std::string* error) {
  for (int i = 0; i < 1000; ++i) {  // bounded: spurious wakeups and EINTR
    int ready = WaitFor(fd, POLLIN, deadline);
    if (ready < 0) {
      *error = ErrnoText("poll", errno);
      return -1;
    }
    if (ready == 0) {
      *error = "recv: timed out";
      return -2;
    }
    ssize_t n = recv(fd, data, len, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno != EAGAIN && errno != EINTR) {
      *error = ErrnoText("recv", errno);
      return -1;
    }
  }
  *error = "recv: no data after 1000 wakeups";
  return -1;
}

bool RecvAll(int fd, void* data, size_t len, Deadline deadline, std::string* error) {
  char* bytes = static_cast<char*>(data);
  size_t done = 0;
  while (done < len) {  // bounded by the deadline, as SendAll
    ssize_t n = RecvSome(fd, bytes + done, len - done, deadline, error);
    if (n == 0) return Fail(error, "recv: EOF after " + std::to_string(done) + " bytes");
    if (n < 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

void CloseWithReset(int fd) {
  if (fd < 0) return;
  linger reset = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  close(fd);
}

}  // namespace dp420::testnet
