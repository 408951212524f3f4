// RunServer on its own thread, for the network tests: started and waited for
// until it listens, stopped and joined by Stop() or the destructor.
//
// Thread safety: Start, Stop and the destructor from one thread; running()
// and port() from any.
#pragma once

#include <sched.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "engine/net/server.h"
#include "io/status.h"

namespace dp420::net {

// RunServer on its own thread (inside a network namespace when given one).
class ServerThread {
 public:
  ServerThread() = default;
  ~ServerThread() { (void)Stop(); }
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;

  // Starts the server (its `stop` and `on_listening` are this object's) and
  // waits (10 s at most) until it listens. False with `*error` when it ended
  // or did not listen in time. `netns_fd` >= 0: the server runs in that
  // network namespace.
  bool Start(const ServerOptions& options, int netns_fd, std::string* error) {
    options_ = options;
    options_.stop = &stop_;
    options_.on_listening = [this](uint16_t port) {
      std::lock_guard lock(mu_);
      port_ = port;
      listening_ = true;
      cv_.notify_all();
    };
    thread_ = std::thread([this, netns_fd] {
      Status status;
      if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) != 0) {
        status = PosixError("setns", errno);
      } else {
        status = RunServer(options_);
      }
      std::lock_guard lock(mu_);
      ended_ = true;
      status_ = status;
      cv_.notify_all();
    });
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return listening_ || ended_; });
    if (listening_) return true;
    *error = ended_ ? "server ended: " + status_.ToString() : "server did not listen in 10 s";
    return false;
  }

  // Sets the stop flag and joins. Returns RunServer's status; `*seconds` (may
  // be null) gets how long stopping took.
  Status Stop(double* seconds = nullptr) {
    auto start = std::chrono::steady_clock::now();
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    if (seconds != nullptr) {
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    std::lock_guard lock(mu_);
    return status_;
  }

  // Listening, and RunServer has not returned.
  bool running() {
    std::lock_guard lock(mu_);
    return listening_ && !ended_;
  }
  uint16_t port() const { return port_; }

 private:
  ServerOptions options_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool listening_ = false;
  bool ended_ = false;
  uint16_t port_ = 0;
  Status status_;
  std::thread thread_;
};

}  // namespace dp420::net
