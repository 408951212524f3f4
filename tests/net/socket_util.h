// Small blocking TCP helpers for the network tests: listen, connect with a timeout, send
// and receive everything before a deadline, and close with a reset. IPv4 and IPv6
// literals only (no name lookup). No function throws; failures return false (or an
// empty UniqueFd) with the reason in `*error`.
//
// Thread safety: the functions are thread-safe; a descriptor is used by one thread at a
// time.

#ifndef DP420_TESTS_NET_SOCKET_UTIL_H_
#define DP420_TESTS_NET_SOCKET_UTIL_H_

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dp420::testnet {

using Deadline = std::chrono::steady_clock::time_point;

inline Deadline DeadlineIn(std::chrono::milliseconds timeout) {
  return std::chrono::steady_clock::now() + timeout;
}

// Owns one descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release();
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Fills `*addr` from an IP literal and a port. False when `ip` is not a literal.
bool ParseAddress(const std::string& ip, uint16_t port, sockaddr_storage* addr,
                  socklen_t* addr_len);

// Binds `fd` (a fresh TCP socket, e.g. from NetNs::Socket) to ip:port with SO_REUSEADDR
// and listens; `*bound_port` (may be null) gets the port (useful with port 0).
bool ListenOn(int fd, const std::string& ip, uint16_t port, uint16_t* bound_port,
              std::string* error);
// A new listening socket in this thread's namespace; empty on failure.
UniqueFd ListenTcp(const std::string& ip, uint16_t port, uint16_t* bound_port,
                   std::string* error);

// Connects `fd` (a fresh TCP socket) to ip:port within `timeout`; `fd` stays blocking.
bool ConnectOn(int fd, const std::string& ip, uint16_t port, std::chrono::milliseconds timeout,
               std::string* error);
// A new connected socket in this thread's namespace; empty on failure.
UniqueFd ConnectTcp(const std::string& ip, uint16_t port, std::chrono::milliseconds timeout,
                    std::string* error);

// accept() within `timeout`: the connection, or empty with `*error`.
UniqueFd AcceptWithin(int listen_fd, std::chrono::milliseconds timeout, std::string* error);

// Sends all `len` bytes before `deadline` (MSG_NOSIGNAL). False on error or timeout.
bool SendAll(int fd, const void* data, size_t len, Deadline deadline, std::string* error);
// Receives exactly `len` bytes before `deadline`. False on EOF, error or timeout.
bool RecvAll(int fd, void* data, size_t len, Deadline deadline, std::string* error);
// Receives at most `len` bytes, waiting until `deadline`. Returns the count, 0 on EOF, -1
// with `*error` on error, -2 on timeout.
ssize_t RecvSome(int fd, void* data, size_t len, Deadline deadline, std::string* error);

// Closes with SO_LINGER 0: the peer gets a reset (RST) instead of an orderly FIN.
void CloseWithReset(int fd);

}  // namespace dp420::testnet

#endif  // DP420_TESTS_NET_SOCKET_UTIL_H_
