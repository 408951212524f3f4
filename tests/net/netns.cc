#include "netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

extern char** environ;

namespace dp420::testnet {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kInputBytesMax = 64 * 1024;  // fits a pipe: written before the child reads
constexpr int kSubnetCount = 250;             // k in 10.242.<k>.0/24 is 1..250

bool Fail(std::string* error, std::string message) {
  *error = std::move(message);
  return false;
}

std::string ErrnoText(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

std::string Join(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& arg : argv) {
    if (!out.empty()) out += ' ';
    out += arg;
  }
  return out;
}

bool IsExecutable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// The path execve needs: argv[0] itself when it has a slash, else the first hit in PATH,
// /usr/sbin, /sbin (root's tools are there, and a CI PATH may lack them). Empty: not found.
std::string FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return IsExecutable(name) ? name : "";
  const char* env_path = std::getenv("PATH");
  std::string dirs = std::string(env_path ? env_path : "/usr/bin:/bin") + ":/usr/sbin:/sbin";
  std::stringstream stream(dirs);
  std::string dir;
  while (std::getline(stream, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (IsExecutable(candidate)) return candidate;
  }
  return "";
}

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// What the forked child needs, all prepared before fork(): after it only async-signal-safe
// calls are allowed (this process has threads).
struct ExecPlan {
  std::string path;
  std::vector<std::string> args;
  std::vector<char*> argv;
  int netns_fd = -1;
  int stdin_fd = -1;
  int stdout_fd = -1;  // also stderr; -1 inherits both
  int report_fd = -1;  // CLOEXEC pipe: the child writes errno here when it fails
  pid_t parent = 0;
};

[[noreturn]] void ChildFail(const ExecPlan& plan, int stage) {
  int report[2] = {stage, errno};
  ssize_t ignored = write(plan.report_fd, report, sizeof(report));
  (void)ignored;
  _exit(127);
}

[[noreturn]] void ChildExec(const ExecPlan& plan) {
  setpgid(0, 0);
  // Die with the test: a crashed test must not leave servers running.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != plan.parent) _exit(127);
  if (plan.netns_fd >= 0 && setns(plan.netns_fd, CLONE_NEWNET) != 0) ChildFail(plan, 1);
  if (plan.stdin_fd >= 0 && dup2(plan.stdin_fd, STDIN_FILENO) < 0) ChildFail(plan, 2);
  if (plan.stdout_fd >= 0) {
    if (dup2(plan.stdout_fd, STDOUT_FILENO) < 0) ChildFail(plan, 2);
    if (dup2(plan.stdout_fd, STDERR_FILENO) < 0) ChildFail(plan, 2);
  }
  // No descriptor of the test (listening sockets, namespace handles) leaks into the child.
  syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
  signal(SIGPIPE, SIG_DFL);
  execve(plan.path.c_str(), plan.argv.data(), environ);
  ChildFail(plan, 3);
}

// Forks and execs `plan`; returns the pid and a pidfd, or false with `*error`.
bool ForkExec(ExecPlan* plan, pid_t* pid_out, int* pidfd_out, std::string* error) {
  plan->path = FindProgram(plan->args.at(0));
  if (plan->path.empty()) {
    *error = plan->args[0] + ": program not found";
    return false;
  }
  for (std::string& arg : plan->args) plan->argv.push_back(arg.data());
  plan->argv.push_back(nullptr);
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    *error = ErrnoText("pipe2", errno);
    return false;
  }
  plan->report_fd = report[1];
  plan->parent = getpid();
  pid_t pid = fork();
  if (pid == 0) ChildExec(*plan);
  int fork_errno = errno;
  close(report[1]);
  if (pid < 0) {
    close(report[0]);
    *error = ErrnoText("fork", fork_errno);
    return false;
  }
  int failure[2] = {0, 0};
  ssize_t n = read(report[0], failure, sizeof(failure));  // EOF once exec succeeded
  close(report[0]);
  if (n == static_cast<ssize_t>(sizeof(failure))) {
    waitpid(pid, nullptr, 0);
    static const char* kStage[] = {"", "setns", "dup2", "execve"};
    *error = Join(plan->args) + ": " + ErrnoText(kStage[failure[0] & 3], failure[1]);
    return false;
  }
  *pid_out = pid;
  *pidfd_out = PidfdOpen(pid);
  return true;
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Reads the child's output until EOF or the deadline; keeps kCommandOutputBytesMax.
bool DrainOutput(int fd, Clock::time_point deadline, std::string* output) {
  char buffer[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd = {fd, POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    size_t room = kCommandOutputBytesMax - std::min(kCommandOutputBytesMax, output->size());
    output->append(buffer, std::min(room, static_cast<size_t>(n)));
  }
}

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

// A unique device name within 15 characters: dp<pid>v<n><side>.
std::string DeviceName(int n, char side) {
  std::string name = "dp" + std::to_string(getpid()) + "v" + std::to_string(n % 1000) + side;
  return name.size() <= 15 ? name : name.substr(name.size() - 15);
}

std::atomic<int> g_namespace_counter{0};
std::atomic<int> g_subnet_counter{0};
std::atomic<int> g_device_counter{0};
std::once_flag g_sweep_once;

// k for the next pair: one counter per process (pairs that share a namespace differ); in
// this process's own namespace, also one that no other interface there uses.
int PickSubnet(bool in_own_namespace) {
  int start = static_cast<int>(getpid() % kSubnetCount);
  for (int attempt = 0; attempt < kSubnetCount; ++attempt) {
    int k = 1 + (start + g_subnet_counter.fetch_add(1)) % kSubnetCount;
    if (!in_own_namespace) return k;
    std::string output;
    std::string error;
    std::string net = "10.242." + std::to_string(k) + ".0/24";
    if (!RunCommand({"ip", "-4", "-o", "addr", "show", "to", net}, &output, &error)) continue;
    std::string routes;
    if (!RunCommand({"ip", "-4", "route", "show", net}, &routes, &error)) continue;
    if (output.empty() && routes.empty()) return k;
  }
  return -1;
}

}  // namespace

bool RunCommand(const std::vector<std::string>& argv, std::string* output, std::string* error,
                int netns_fd, const std::string& input, std::chrono::milliseconds timeout) {
  if (argv.empty() || input.size() > kInputBytesMax) {
    *error = "RunCommand: empty argv or input over 64 KiB";
    return false;
  }
  int in_pipe[2];
  int out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return Fail(error, ErrnoText("pipe2", errno));
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    close(in_pipe[0]);
    close(in_pipe[1]);
    return Fail(error, ErrnoText("pipe2", errno));
  }
  fcntl(in_pipe[1], F_SETPIPE_SZ, static_cast<int>(kInputBytesMax));
  ExecPlan plan;
  plan.args = argv;
  plan.netns_fd = netns_fd;
  plan.stdin_fd = in_pipe[0];
  plan.stdout_fd = out_pipe[1];
  pid_t pid = -1;
  int pidfd = -1;
  bool started = ForkExec(&plan, &pid, &pidfd, error);
  close(in_pipe[0]);
  close(out_pipe[1]);
  if (started && !input.empty()) {
    ssize_t ignored = write(in_pipe[1], input.data(), input.size());
    (void)ignored;
  }
  close(in_pipe[1]);
  std::string captured;
  bool drained = started && DrainOutput(out_pipe[0], Clock::now() + timeout, &captured);
  close(out_pipe[0]);
  if (!started) return false;
  if (!drained) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (pidfd >= 0) close(pidfd);
  if (output != nullptr) *output = captured;
  if (drained && WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  *error = Join(argv) + ": " + (drained ? DescribeStatus(status) : "timed out, killed") +
           (captured.empty() ? "" : ": " + captured);
  while (!error->empty() && error->back() == '\n') error->pop_back();
  return false;
}

// ---- Child ----

Child::~Child() { Kill(); }

Child::Child(Child&& other) noexcept { *this = std::move(other); }

Child& Child::operator=(Child&& other) noexcept {
  if (this == &other) return *this;
  Kill();
  pid_ = other.pid_;
  pidfd_ = other.pidfd_;
  reaped_ = other.reaped_;
  other.pid_ = -1;
  other.pidfd_ = -1;
  other.reaped_ = false;
  return *this;
}

void Child::Reset() {
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  reaped_ = true;
}

bool Child::Signal(int signal_number) {
  if (!started()) return false;
  // The group: the child and whatever it started. The pidfd proves the pid is still ours.
  if (kill(-pid_, signal_number) == 0) return true;
  return pidfd_ >= 0 && syscall(SYS_pidfd_send_signal, pidfd_, signal_number, nullptr, 0) == 0;
}

bool Child::Wait(std::chrono::milliseconds timeout, int* wait_status) {
  if (!started()) return false;
  if (pidfd_ >= 0) {
    pollfd pfd = {pidfd_, POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(timeout.count()));
    if (ready <= 0) return false;
  }
  int status = 0;
  if (waitpid(pid_, &status, pidfd_ >= 0 ? 0 : WNOHANG) != pid_) return false;
  if (wait_status != nullptr) *wait_status = status;
  Reset();
  return true;
}

void Child::Kill() {
  if (!started()) return;
  Signal(SIGKILL);
  waitpid(pid_, nullptr, 0);
  Reset();
}

bool SpawnChild(const std::vector<std::string>& argv, int netns_fd, const std::string& log_path,
                Child* child, std::string* error) {
  if (argv.empty() || child->started()) {
    *error = "SpawnChild: empty argv or child already started";
    return false;
  }
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      *error = ErrnoText(log_path.c_str(), errno);
      close(null_fd);
      return false;
    }
  }
  ExecPlan plan;
  plan.args = argv;
  plan.netns_fd = netns_fd;
  plan.stdin_fd = null_fd;
  plan.stdout_fd = log_fd;
  pid_t pid = -1;
  int pidfd = -1;
  bool started = ForkExec(&plan, &pid, &pidfd, error);
  close(null_fd);
  if (log_fd >= 0) close(log_fd);
  if (!started) return false;
  *child = Child();
  child->pid_ = pid;
  child->pidfd_ = pidfd;
  child->reaped_ = false;
  return true;
}

int SweepStaleNamespaces() {
  DIR* dir = opendir("/run/netns");
  if (dir == nullptr) return 0;
  std::vector<std::string> stale;
  const std::string prefix = kNamespacePrefix;
  for (int i = 0; i < 100000; ++i) {  // bounded: a directory listing
    dirent* entry = readdir(dir);
    if (entry == nullptr) break;
    std::string name = entry->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid <= 0 || pid == getpid()) continue;
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) stale.push_back(name);
  }
  closedir(dir);
  int deleted = 0;
  for (const std::string& name : stale) {
    std::string error;
    if (RunCommand({"ip", "netns", "del", name}, nullptr, &error)) ++deleted;
  }
  return deleted;
}

// ---- NetNs ----

NetNs::~NetNs() { Destroy(); }

bool NetNs::Create(std::string* error) {
  if (!name_.empty()) return Fail(error, "NetNs::Create called twice");
  std::call_once(g_sweep_once, [] { SweepStaleNamespaces(); });
  std::string name = kNamespacePrefix + std::to_string(getpid()) + "-" +
                     std::to_string(g_namespace_counter.fetch_add(1));
  if (!RunCommand({"ip", "netns", "add", name}, nullptr, error)) return false;
  name_ = name;  // from here on Destroy() deletes it
  std::string path = "/run/netns/" + name;
  fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    *error = ErrnoText(path.c_str(), errno);
    Destroy();
    return false;
  }
  if (!Run({"ip", "link", "set", "lo", "up"}, nullptr, error)) {
    Destroy();
    return false;
  }
  return true;
}

void NetNs::Destroy() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (name_.empty()) return;
  std::string error;
  if (!RunCommand({"ip", "netns", "del", name_}, nullptr, &error)) {
    std::fprintf(stderr, "netns: could not delete %s: %s\n", name_.c_str(), error.c_str());
  }
  name_.clear();
}

bool NetNs::Run(const std::vector<std::string>& argv, std::string* output, std::string* error,
                std::chrono::milliseconds timeout) const {
  if (fd_ < 0) return Fail(error, "NetNs::Run: namespace not created");
  return RunCommand(argv, output, error, fd_, "", timeout);
}

bool NetNs::Spawn(const std::vector<std::string>& argv, const std::string& log_path,
                  Child* child, std::string* error) const {
  if (fd_ < 0) return Fail(error, "NetNs::Spawn: namespace not created");
  return SpawnChild(argv, fd_, log_path, child, error);
}

bool NetNs::RunInside(const std::function<void()>& fn, std::string* error) const {
  if (fd_ < 0) return Fail(error, "NetNs::RunInside: namespace not created");
  int setns_errno = 0;
  // setns(CLONE_NEWNET) moves only the calling thread; a fresh thread keeps the test's own.
  std::thread thread([&] {
    if (setns(fd_, CLONE_NEWNET) != 0) {
      setns_errno = errno;
      return;
    }
    fn();
  });
  thread.join();
  if (setns_errno == 0) return true;
  *error = ErrnoText(("setns " + name_).c_str(), setns_errno);
  return false;
}

int NetNs::Socket(int domain, int type, std::string* error) const {
  int fd = -1;
  int socket_errno = 0;
  bool joined = RunInside(
      [&] {
        fd = socket(domain, type | SOCK_CLOEXEC, 0);
        socket_errno = errno;
      },
      error);
  if (joined && fd < 0) *error = ErrnoText("socket", socket_errno);
  return fd;
}

bool NetNs::TcpCounter(const std::string& counter, uint64_t* value, std::string* error) const {
  std::vector<std::string> rows;
  // /proc/thread-self/net is the calling thread's namespace (/proc/self/net is the main
  // thread's).
  bool joined = RunInside(
      [&] {
        std::ifstream snmp("/proc/thread-self/net/snmp");
        std::string line;
        for (int i = 0; i < 64 && std::getline(snmp, line); ++i) {
          if (line.rfind("Tcp:", 0) == 0) rows.push_back(line);
        }
      },
      error);
  if (!joined) return false;
  if (rows.size() != 2) return Fail(error, "no Tcp rows in /proc/net/snmp");
  std::istringstream names(rows[0]);
  std::istringstream values(rows[1]);
  std::string name;
  std::string number;
  for (int i = 0; i < 64 && names >> name && values >> number; ++i) {
    if (name == counter) {
      *value = std::strtoull(number.c_str(), nullptr, 10);
      return true;
    }
  }
  *error = "no Tcp counter " + counter;
  return false;
}

// ---- VethPair ----

VethPair::~VethPair() { Destroy(); }

std::string VethPair::addr_a() const { return "10.242." + std::to_string(subnet_) + ".1"; }
std::string VethPair::addr_b() const { return "10.242." + std::to_string(subnet_) + ".2"; }

bool VethPair::RunOnSide(int side, const std::vector<std::string>& argv,
                         std::string* error) const {
  return RunCommand(argv, nullptr, error, side == 0 ? fd_a_ : fd_b_);
}

bool VethPair::Create(const NetNs& a, const NetNs* b, std::string* error,
                      const VethOptions& options) {
  if (subnet_ >= 0) return Fail(error, "VethPair::Create called twice");
  if (a.fd() < 0 || (b != nullptr && b->fd() < 0)) {
    return Fail(error, "VethPair::Create: namespace not created");
  }
  int subnet = PickSubnet(b == nullptr);
  if (subnet < 0) return Fail(error, "no free subnet 10.242.<k>.0/24");
  int n = g_device_counter.fetch_add(1);
  std::string dev_a = DeviceName(n, 'a');
  std::string dev_b = DeviceName(n, 'b');
  std::string peer_ns = b != nullptr ? b->name() : std::to_string(getpid());
  // Created inside `a` with its peer moved straight to b: neither end ever appears in this
  // process's namespace unless asked for.
  if (!RunCommand({"ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns",
                   peer_ns},
                  nullptr, error, a.fd())) {
    return false;
  }
  dev_a_ = dev_a;
  dev_b_ = dev_b;
  fd_a_ = a.fd();
  fd_b_ = b != nullptr ? b->fd() : -1;
  subnet_ = subnet;
  std::string mtu = std::to_string(options.mtu_bytes);
  for (int side = 0; side < 2; ++side) {
    const std::string& dev = side == 0 ? dev_a_ : dev_b_;
    std::string addr = (side == 0 ? addr_a() : addr_b()) + "/24";
    std::vector<std::string> link = {"ip", "link", "set", "dev", dev, "mtu", mtu};
    if (options.one_segment_per_packet) {
      link.insert(link.end(), {"gso_max_segs", "1", "gso_max_size", mtu});
    }
    if (!RunOnSide(side, link, error) ||
        !RunOnSide(side, {"ip", "addr", "add", addr, "dev", dev}, error) ||
        !RunOnSide(side, {"ip", "link", "set", "dev", dev, "up"}, error)) {
      Destroy();
      return false;
    }
  }
  return true;
}

void VethPair::Destroy() {
  if (dev_a_.empty()) return;
  std::string error;
  // Deleting one end deletes both. It may already be gone with its namespace.
  RunCommand({"ip", "link", "del", "dev", dev_a_}, nullptr, &error, fd_a_);
  dev_a_.clear();
  dev_b_.clear();
}

bool VethPair::LimitRate(int side, uint64_t rate_bits_per_s, std::string* error) {
  if (dev_a_.empty() || side < 0 || side > 1 || rate_bits_per_s < 8000) {
    return Fail(error, "VethPair::LimitRate: no pair, bad side or rate under 8 kbit/s");
  }
  // burst: 20 ms of traffic, at least a few full packets, so tbf never starves a segment.
  uint64_t burst_bytes = std::max<uint64_t>(rate_bits_per_s / 8 / 50, 16 * 1024);
  const std::string& dev = side == 0 ? dev_a_ : dev_b_;
  return RunOnSide(side,
                   {"tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                    std::to_string(rate_bits_per_s) + "bit", "burst",
                    std::to_string(burst_bytes), "latency", "200ms"},
                   error);
}

bool VethPair::ClearRate(int side, std::string* error) {
  if (dev_a_.empty() || side < 0 || side > 1) return Fail(error, "VethPair::ClearRate");
  const std::string& dev = side == 0 ? dev_a_ : dev_b_;
  return RunOnSide(side, {"tc", "qdisc", "del", "dev", dev, "root"}, error);
}

// ---- Nft ----

Nft::~Nft() { Remove(); }

bool Nft::Apply(const std::string& script, std::string* error) {
  // One `nft -f` batch is one transaction: all of it applies or none.
  return RunCommand({"nft", "-f", "-"}, nullptr, error, ns_fd_, script);
}

bool Nft::Install(const NetNs& ns, const std::string& dev, std::string* error) {
  if (!table_.empty()) return Fail(error, "Nft::Install called twice");
  if (ns.fd() < 0 || dev.empty()) return Fail(error, "Nft::Install: no namespace or device");
  ns_fd_ = ns.fd();
  std::string table = "dp420t_" + dev;
  std::string quoted = "\"" + dev + "\"";
  std::string script =
      "table inet " + table + " {\n"
      "  chain loss { }\n"
      "  chain partition { }\n"
      "  chain input {\n"
      "    type filter hook input priority -10; policy accept;\n"
      "    iifname " + quoted + " jump partition\n"
      "    iifname " + quoted + " jump loss\n"
      "  }\n"
      "  chain output {\n"
      "    type filter hook output priority -10; policy accept;\n"
      "    oifname " + quoted + " jump partition\n"
      "  }\n"
      "}\n";
  if (!Apply(script, error)) return false;
  table_ = table;
  return true;
}

void Nft::Remove() {
  if (table_.empty()) return;
  std::string error;
  if (!RunCommand({"nft", "delete", "table", "inet", table_}, nullptr, &error, ns_fd_)) {
    std::fprintf(stderr, "nft: could not delete table %s: %s\n", table_.c_str(), error.c_str());
  }
  table_.clear();
}

bool Nft::SetLoss(int percent, std::string* error) {
  if (table_.empty() || percent < 0 || percent > 100) {
    return Fail(error, "Nft::SetLoss: not installed or percent outside 0..100");
  }
  std::string script = "flush chain inet " + table_ + " loss\n";
  if (percent > 0) {
    script += "add rule inet " + table_ + " loss numgen random mod 100 < " +
              std::to_string(percent) + " drop\n";
  }
  return Apply(script, error);
}

bool Nft::SetPartition(bool on, std::string* error) {
  if (table_.empty()) return Fail(error, "Nft::SetPartition: not installed");
  std::string script = "flush chain inet " + table_ + " partition\n";
  if (on) script += "add rule inet " + table_ + " partition drop\n";
  return Apply(script, error);
}

// ---- Availability ----

std::string NetNsUnavailableReason() {
  static const std::string reason = [] {
    if (geteuid() != 0) return std::string("network namespace tests need root");
    for (const char* tool : {"ip", "tc"}) {
      if (FindProgram(tool).empty()) return std::string(tool) + " not found (iproute2)";
    }
    NetNs probe;
    std::string error;
    if (!probe.Create(&error)) return "cannot create a network namespace: " + FirstLine(error);
    return std::string();
  }();
  return reason;
}

std::string NftUnavailableReason() {
  static const std::string reason = [] {
    std::string netns = NetNsUnavailableReason();
    if (!netns.empty()) return netns;
    if (FindProgram("nft").empty()) return std::string("nft not found (package nftables)");
    NetNs probe;
    std::string error;
    if (!probe.Create(&error)) return "cannot create a network namespace: " + FirstLine(error);
    Nft nft;
    if (!nft.Install(probe, "lo", &error)) return "nft refused a table: " + FirstLine(error);
    return std::string();
  }();
  return reason;
}

}  // namespace dp420::testnet
