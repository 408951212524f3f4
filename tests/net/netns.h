// Network test harness: private network namespaces, veth pairs between them, packet loss
// and partitions with nftables, and rate limits with tc's tbf qdisc. Everything is undone
// by destructors (RAII), also when an assertion fails; a namespace left behind by a crashed
// test process is removed by the next process that creates one (see SweepStaleNamespaces).
//
// Needs root, iproute2 (`ip`, `tc`) and, for Nft, nftables (`nft`). No function throws;
// each reports failure by returning false (or -1) with a readable reason in `*error`.
//
// Addresses: a VethPair uses 10.242.<k>.1/24 and 10.242.<k>.2/24, only on its own two ends,
// so test traffic never leaves the namespaces this harness made (and this process's own
// namespace for a pair with one end there).
//
// Thread safety: the objects are not thread-safe; create, change and destroy each one from
// one thread (the test's). NetNs::Socket and NetNs::TcpCounter may be called from any thread.
// Spawn from the test's main thread: a spawned child is killed when the thread that
// started it exits (PR_SET_PDEATHSIG).

#ifndef DP420_TESTS_NET_NETNS_H_
#define DP420_TESTS_NET_NETNS_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dp420::testnet {

inline constexpr std::chrono::milliseconds kCommandTimeout{10000};
// Output kept from one command; the rest is read and dropped.
inline constexpr size_t kCommandOutputBytesMax = 1 << 20;
// Prefix of every namespace this harness creates: dp420t-<pid>-<n>.
inline constexpr const char* kNamespacePrefix = "dp420t-";

// Why network namespace tests cannot run here (not root, `ip` missing, `ip netns add`
// refused), or "" when they can. Probes once per process (creates and deletes a namespace).
std::string NetNsUnavailableReason();
// As NetNsUnavailableReason, and also needs `nft` and a working inet table.
std::string NftUnavailableReason();

// Runs argv to completion, inside the network namespace `netns_fd` when it is >= 0, with
// `input` on stdin (at most 64 KiB). argv[0] without a slash is looked up in PATH, then
// /usr/sbin and /sbin. `*output` (may be null) gets stdout and stderr, interleaved, cut at
// kCommandOutputBytesMax. Returns true when it exited with 0; otherwise false and `*error`
// names the command, its exit status (or the timeout, after which it was killed) and output.
bool RunCommand(const std::vector<std::string>& argv, std::string* output, std::string* error,
                int netns_fd = -1, const std::string& input = "",
                std::chrono::milliseconds timeout = kCommandTimeout);

// A child process in its own process group. Killed (SIGKILL to the group) and reaped by
// the destructor unless Wait() already reaped it. Move-only.
class Child {
 public:
  Child() = default;
  ~Child();
  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // True from a successful Spawn until the child has been reaped.
  bool started() const { return pid_ > 0 && !reaped_; }
  // Sends `signal_number` to the child's process group; false when already reaped.
  bool Signal(int signal_number);
  // Waits up to `timeout` for the child to end and reaps it. Returns true with the waitpid
  // status in `*wait_status` (may be null); false when it is still running.
  bool Wait(std::chrono::milliseconds timeout, int* wait_status);
  // SIGKILL to the group, then reap. Idempotent.
  void Kill();

 private:
  friend bool SpawnChild(const std::vector<std::string>&, int, const std::string&, Child*,
                         std::string*);
  void Reset();
  pid_t pid_ = -1;
  int pidfd_ = -1;
  bool reaped_ = false;
};

// Starts argv (looked up as in RunCommand) inside network namespace `netns_fd` (or this
// process's when < 0) with stdin from /dev/null and stdout and stderr appended to `log_path`
// (inherited when empty). `*child` must not hold a started child. Returns false with
// `*error` when the program cannot be started (not found, exec failed, setns failed).
bool SpawnChild(const std::vector<std::string>& argv, int netns_fd, const std::string& log_path,
                Child* child, std::string* error);

// Deletes namespaces named dp420t-<pid>-<n> whose process no longer exists (left behind by
// a crashed or SIGKILLed test). Returns how many it deleted. NetNs::Create runs it once per
// process.
int SweepStaleNamespaces();

// A private network namespace, dp420t-<pid>-<n>, with its loopback up. The destructor
// deletes it (`ip netns del`); veth ends inside it go with it.
class NetNs {
 public:
  NetNs() = default;
  ~NetNs();
  NetNs(const NetNs&) = delete;
  NetNs& operator=(const NetNs&) = delete;

  // Creates the namespace. False with `*error` when `ip netns add` fails (then nothing is
  // left behind). Call once.
  bool Create(std::string* error);
  // Deletes it now; also done by the destructor. Idempotent.
  void Destroy();

  const std::string& name() const { return name_; }
  // An open descriptor of the namespace (for setns), valid until Destroy.
  int fd() const { return fd_; }

  // RunCommand inside this namespace.
  bool Run(const std::vector<std::string>& argv, std::string* output, std::string* error,
           std::chrono::milliseconds timeout = kCommandTimeout) const;
  // SpawnChild inside this namespace.
  bool Spawn(const std::vector<std::string>& argv, const std::string& log_path, Child* child,
             std::string* error) const;
  // Runs `fn` on a short-lived thread that joined this namespace, and waits for it. Sockets
  // that `fn` creates belong to this namespace for their whole life, whichever thread then
  // uses them. False with `*error` when the thread cannot join the namespace.
  bool RunInside(const std::function<void()>& fn, std::string* error) const;
  // socket(domain, type | SOCK_CLOEXEC, 0) inside this namespace: the descriptor, or -1 with
  // `*error`. The caller owns the descriptor.
  int Socket(int domain, int type, std::string* error) const;
  // One counter of the "Tcp:" row of this namespace's /proc/net/snmp, e.g. "RetransSegs".
  bool TcpCounter(const std::string& counter, uint64_t* value, std::string* error) const;

 private:
  std::string name_;
  int fd_ = -1;
};

struct VethOptions {
  // gso_max_segs 1 on both ends: TCP hands the device one MTU-sized segment per packet, so
  // nftables loss drops wire-sized packets (not 64 KiB GSO super-packets) as a real link.
  bool one_segment_per_packet = true;
  int mtu_bytes = 1500;
};

// A veth pair between namespace `a` and namespace `b` (or this process's own namespace),
// with 10.242.<k>.1/24 on a's end and 10.242.<k>.2/24 on b's, both up. The destructor
// deletes it.
class VethPair {
 public:
  VethPair() = default;
  ~VethPair();
  VethPair(const VethPair&) = delete;
  VethPair& operator=(const VethPair&) = delete;

  // `b` null: the other end stays in this process's namespace; then k is chosen so that
  // 10.242.<k>.0/24 is not in use there. Both namespaces must outlive the pair. Call once.
  bool Create(const NetNs& a, const NetNs* b, std::string* error,
              const VethOptions& options = {});
  void Destroy();

  int subnet() const { return subnet_; }              // k
  const std::string& dev_a() const { return dev_a_; }  // device name on a's side
  const std::string& dev_b() const { return dev_b_; }
  std::string addr_a() const;  // "10.242.k.1"
  std::string addr_b() const;  // "10.242.k.2"

  // Shapes what a's (side 0) or b's (side 1) end sends to `rate_bits_per_s` with a tbf
  // qdisc (`tc qdisc replace dev D root tbf rate R burst B latency 200ms`). Replaces any
  // earlier limit on that end.
  bool LimitRate(int side, uint64_t rate_bits_per_s, std::string* error);
  // Removes the limit of that end.
  bool ClearRate(int side, std::string* error);

 private:
  bool RunOnSide(int side, const std::vector<std::string>& argv, std::string* error) const;

  std::string dev_a_;
  std::string dev_b_;
  int fd_a_ = -1;  // not owned: the namespaces' descriptors (-1: this process's namespace)
  int fd_b_ = -1;
  int subnet_ = -1;
};

// nftables rules inside one namespace for one device, in the table `inet dp420t_<dev>`:
// random packet loss and a partition that can be lifted. The destructor deletes the table.
class Nft {
 public:
  Nft() = default;
  ~Nft();
  Nft(const Nft&) = delete;
  Nft& operator=(const Nft&) = delete;

  // Installs the (empty) table in `ns` for `dev`. `ns` must outlive this object.
  bool Install(const NetNs& ns, const std::string& dev, std::string* error);
  void Remove();

  // Drops `percent` (0..100; 0 removes the rule) of the packets this namespace receives on
  // the device, at random: `numgen random mod 100 < P drop`. Loss on the receiving side is
  // silent to the sender, as on a real link; for loss in both directions install an Nft in
  // each namespace.
  bool SetLoss(int percent, std::string* error);
  // On: drops everything the device receives and sends (a full partition; the local
  // sender's stack sees its own packets refused, no connection is closed). Off: lifts it.
  bool SetPartition(bool on, std::string* error);

 private:
  bool Apply(const std::string& script, std::string* error);

  int ns_fd_ = -1;  // not owned
  std::string table_;
};

}  // namespace dp420::testnet

#endif  // DP420_TESTS_NET_NETNS_H_
