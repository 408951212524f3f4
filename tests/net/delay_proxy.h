// A TCP proxy for network tests: listens on 127.0.0.1:<any>, forwards every connection to
// one target and holds every chunk for a fixed delay in each direction (a timed queue, so
// a round trip through it takes at least twice the delay). It can pause forwarding (a
// stall: connections stay open, nothing moves), resume, reset all connections (both sides
// get an RST), and be killed (reset, and new connections are refused).
//
// Each direction of a connection buffers at most `queue_bytes_max`; when it is full the
// proxy stops reading that side, so TCP flow control pushes back on the sender.
//
// Threads: one accepting, one per connection (both directions, with poll). The public
// methods are thread-safe. The destructor resets every connection and joins all threads.

#ifndef DP420_TESTS_NET_DELAY_PROXY_H_
#define DP420_TESTS_NET_DELAY_PROXY_H_

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace dp420::testnet {

struct DelayProxyOptions {
  std::chrono::milliseconds delay{0};  // added to each direction
  size_t queue_bytes_max = 4 << 20;    // per direction of a connection
  size_t chunk_bytes = 64 << 10;       // one read
  size_t connections_max = 32;         // more are accepted and closed at once
  std::chrono::milliseconds connect_timeout{2000};
  // Nothing runs longer: the proxy stops forwarding and accepting after this.
  std::chrono::milliseconds lifetime_max{600000};
};

class DelayProxy {
 public:
  DelayProxy();
  ~DelayProxy();
  DelayProxy(const DelayProxy&) = delete;
  DelayProxy& operator=(const DelayProxy&) = delete;

  // Listens on 127.0.0.1:0 and forwards to target_ip:target_port (an IP literal). False
  // with `*error` when it cannot listen. The target is connected per accepted connection;
  // when that fails, the accepted connection is reset. Call once.
  bool Start(const std::string& target_ip, uint16_t target_port,
             const DelayProxyOptions& options, std::string* error);
  uint16_t port() const { return port_; }

  // Stops (Pause) or restarts (Resume) forwarding on every connection, in both directions.
  // Reading goes on until the queues are full. Chunks held during a pause are due at once.
  void Pause();
  void Resume();
  // Changes the delay of chunks read from now on.
  void SetDelay(std::chrono::milliseconds delay);
  // Resets (RST) both sides of every current connection and returns when they are closed
  // (at most 2 s). The proxy keeps accepting.
  void ResetConnections();
  // Stops accepting (new connections are refused), then ResetConnections().
  void Kill();

  uint64_t bytes_forwarded() const { return bytes_forwarded_.load(); }  // both directions
  uint64_t connections_accepted() const { return connections_accepted_.load(); }

 private:
  struct Connection;
  void AcceptLoop();
  void ReapFinished(bool all);
  void Serve(Connection* connection);

  DelayProxyOptions options_;
  sockaddr_storage target_{};
  socklen_t target_len_ = 0;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::chrono::steady_clock::time_point end_of_life_;

  std::atomic<bool> stop_{false};
  std::atomic<bool> killed_{false};
  std::atomic<bool> paused_{false};
  std::atomic<int64_t> delay_ms_{0};
  std::atomic<uint64_t> generation_{0};  // ResetConnections ends connections of older ones
  std::atomic<uint64_t> bytes_forwarded_{0};
  std::atomic<uint64_t> connections_accepted_{0};

  std::mutex mutex_;
  std::condition_variable closed_;  // a connection thread finished
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mutex_
  std::thread accept_thread_;
};

}  // namespace dp420::testnet

#endif  // DP420_TESTS_NET_DELAY_PROXY_H_
