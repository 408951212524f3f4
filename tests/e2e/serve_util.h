// `dp420 serve` run as a process by the end-to-end tests, its clients, and
// the options a command needs to reach it.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {

// Registers `name` in dir/clients.json with its key in dir/<name>.key.
inline std::string AddClient(const TempDir& dir, const std::string& name,
                      const std::string& role = "append") {
  std::string key = dir / (name + ".key");
  Result r = Cli({"client-add", "--clients", dir / "clients.json", "--client", name, "--key-out",
                  key, "--role", role});
  if (r.exit_code != kExitOk) Fail("client-add failed: " + r.Describe());
  return key;
}

// `dp420 serve` on 127.0.0.1 with a port the kernel picks, its stderr in a log
// file (read while it runs). The destructor kills it if Stop() was not called.
// `run_as`, when given, is a command prefix (e.g. setpriv) that execs dp420
// in the same process, so pid() is the server's.
class Server {
 public:
  // `flags`: more options of serve, shell words.
  // `listen`: HOST:PORT (port 0: one the kernel picks); `log` the log's name in dir.
  Server(const TempDir& dir, const std::string& repo, const std::string& run_as = "",
         const std::string& flags = "", const std::string& listen = "127.0.0.1:0",
         const std::string& log = "serve.log")
      : log_(dir / log), host_(listen.substr(0, listen.rfind(':'))) {
    std::string command = "exec " + run_as + ShellQuote(CliPath()) + " serve --repo " +
                          ShellQuote(repo) + " --listen " + listen + " --clients " +
                          ShellQuote(dir / "clients.json") + " --heartbeat-interval 1 " + flags +
                          " 2>" + ShellQuote(log_);
    process_ = Process::Start({"bash", "-c", command});
    WaitListening();
  }
  const std::string& address() const { return address_; }
  const std::string& port() const { return port_; }
  pid_t pid() const { return process_->pid(); }
  std::string Log() const { return Exists(log_) ? ReadFile(log_) : ""; }

  // SIGTERM, as a service manager stops it; the finished process.
  Result Stop() {
    process_->Kill(SIGTERM);
    return process_->Wait(std::chrono::seconds(60));
  }

 private:
  void WaitListening() {
    static const std::regex kListening(R"(dp420 serve: listening on (\S+):(\d+))");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      std::string log = Log();
      if (std::regex_search(log, m, kListening)) {
        EXPECT_EQ(m[1].str(), host_) << log;
        EXPECT_NE(m[2].str(), "0") << "the resolved port, not the requested one: " << log;
        port_ = m[2].str();
        address_ = m[1].str() + ":" + m[2].str();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Result r = Stop();
    Fail("dp420 serve did not report listening within 30 s: " + r.Describe() + "\n" + Log());
  }

  std::string log_;
  std::string host_;
  std::string address_, port_;
  std::unique_ptr<Process> process_;
};

// The remote options of one client, for backup, snapshots, restore, verify.
inline std::vector<std::string> Remote(const Server& s, const std::string& client,
                                const std::string& key) {
  return {"--remote", s.address(), "--client", client, "--key-file", key};
}

inline std::vector<std::string> Join(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace dp420::e2e
