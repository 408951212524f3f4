#include "engine/control/pit.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <sstream>
#include <vector>

#include "engine/core/text.h"
#include "io/file.h"
#include "simd/simd.h"

namespace dp420::control {

namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string Errno(int err) { return std::strerror(err); }

// Waits for `pid` to end, up to `deadline`, polling `cancel`; false on timeout
// or cancel (the process is still running then).
bool WaitFor(pid_t pid, Clock::time_point deadline, const std::atomic<bool>* cancel) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  bool ended = false;
  while (!ended) {
    if (Clock::now() >= deadline || (cancel && cancel->load())) break;
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      ended = poll(&p, 1, 100) > 0;
    } else {
      int status = 0;
      ended = waitpid(pid, &status, WNOHANG) == pid;  // reaped: the caller's waitpid fails
      if (!ended) usleep(20000);
    }
  }
  if (pidfd >= 0) close(pidfd);
  return ended;
}

// Runs `command` with /bin/sh -c in its own process group, stdin from
// /dev/null and stdout to stderr (dp420's stdout may be a JSON document);
// kills the group at `timeout` or when `cancel` turns true.
Status RunHook(const char* which, const std::string& command, std::chrono::milliseconds timeout,
               const std::atomic<bool>* cancel) {
  pid_t pid = fork();
  if (pid < 0) return PosixError(std::string("fork for the ") + which, errno);
  if (pid == 0) {
    setpgid(0, 0);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) dup2(null, STDIN_FILENO);
    if (fcntl(STDERR_FILENO, F_GETFD) >= 0) {
      dup2(STDERR_FILENO, STDOUT_FILENO);
    } else {
      dup2(null, STDOUT_FILENO);  // never onto dp420's stdout
    }
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  const bool ended = WaitFor(pid, Clock::now() + timeout, cancel);
  if (!ended) kill(-pid, SIGKILL);
  int status = 0;
  pid_t reaped = 0;
  while ((reaped = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  std::string what = std::string("the ") + which + " `" + EscapeBytes(command) + "`";
  if (!ended && cancel && cancel->load()) return Status::Canceled(what + " was stopped");
  if (!ended) {
    char secs[32];
    std::snprintf(secs, sizeof(secs), "%.3g", timeout.count() / 1000.0);
    return Status::IOError(what + " did not finish within " + secs + " s (killed)");
  }
  if (reaped != pid || (WIFEXITED(status) && WEXITSTATUS(status) == 0)) return Status::Ok();
  if (WIFEXITED(status)) {
    return Status::IOError(what + " exited with status " + std::to_string(WEXITSTATUS(status)));
  }
  return Status::IOError(what + " was killed by signal " + std::to_string(WTERMSIG(status)));
}

// What tells whether a live source changed while it was read: a block
// device's write and discard counters, a file's change and modification
// times, size and inode. Empty when nothing can tell.
std::string Fingerprint(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "";
  if (S_ISBLK(st.st_mode)) {
    auto text = io::ReadFile(io::SysBlockPath(st.st_rdev, "stat"));
    if (!text.ok()) return "";
    // Fields 5-8: writes, merged, sectors, ticks; 12-15: discards (the kernel's iostats.rst).
    std::istringstream fields(*text);
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), {}};
    if (f.size() < 7) return "";
    return f[4] + "/" + f[6] + (f.size() >= 14 ? "/" + f[11] + "/" + f[13] : "");
  }
  return std::to_string(st.st_ino) + "/" + std::to_string(st.st_size) + "/" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "/" +
         std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec);
}

// ---- Notes of freezes in progress (/run/dp420/frozen) ----
//
// One file per freeze, "<hex of the mount path>.<pid>", holding the mount's
// device number and path, so that a later dp420 thaws what a backup killed
// together with its watchdog left frozen, and only that file system.

std::string FreezeStateDir() { return "/run/dp420/frozen"; }

std::string FreezeNote(const std::string& mount, pid_t pid) {
  return FreezeStateDir() + "/" +
         simd::ToHex(reinterpret_cast<const uint8_t*>(mount.data()), mount.size()) + "." +
         std::to_string(pid);
}

Status WriteFreezeNote(const std::string& note, dev_t dev, const std::string& mount) {
  DP420_RETURN_IF_ERROR(io::MakeDirs(FreezeStateDir()));
  int fd = open(note.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError("create " + note, errno);
  std::string text = std::to_string(static_cast<unsigned long long>(dev)) + "\n" + mount + "\n";
  ssize_t n = write(fd, text.data(), text.size());
  int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) {
    unlink(note.c_str());
    return PosixError("write " + note, n < 0 ? err : EIO);
  }
  return Status::Ok();
}

// Thaws every file system whose freezing dp420 (the pid in its note's name)
// is gone, when the mount still holds the device the note names.
void ThawAbandoned() {
  const std::string dir = FreezeStateDir();
  for (const std::string& name : io::ListDir(dir)) {
    size_t dot = name.rfind('.');
    if (dot == std::string::npos) continue;
    pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + dot + 1));
    if (pid <= 0 || pid == getpid() || kill(pid, 0) == 0 || errno == EPERM) continue;
    auto text = io::ReadFile(dir + "/" + name);
    if (text.ok()) {
      size_t nl = text->find('\n');
      unsigned long long dev = std::strtoull(text->c_str(), nullptr, 10);
      std::string mount = nl == std::string::npos ? "" : text->substr(nl + 1);
      while (!mount.empty() && mount.back() == '\n') mount.pop_back();
      int fd = open(mount.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      struct stat st;
      if (fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == dev && ioctl(fd, FITHAW, 0) == 0) {
        std::fprintf(stderr, "dp420: thawed %s, left frozen by a backup that ended without "
                     "thawing it\n", EscapeBytes(mount).c_str());
      }
      if (fd >= 0) close(fd);
    }
    unlink((dir + "/" + name).c_str());
  }
}

// The watchdog: a process forked right after FIFREEZE that thaws when the
// deadline passes or when its pipe from dp420 closes (dp420 asked, or ended
// in any way). Only async-signal-safe calls in the child. Its exit code: 0
// thawed when asked, 1 thawed at the deadline, 3 found it thawed already
// (someone else thawed), 4 FITHAW failed otherwise.
pid_t StartWatchdog(int mount_fd, int pipe_r, int pipe_w, std::chrono::milliseconds max) {
  pid_t pid = fork();
  if (pid > 0) setpgid(pid, pid);  // before dp420 goes on: no group kill reaches it then
  if (pid != 0) return pid;
  close(pipe_w);
  // Out of dp420's process group and deaf to the signals that end it, so that
  // what stops dp420 (Ctrl-C, a group kill) leaves the watchdog to thaw.
  setpgid(0, 0);
  for (int sig : {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGUSR1, SIGUSR2}) signal(sig, SIG_IGN);
  // Nothing else of dp420's stays open here (locks, sockets, rings).
  int keep_lo = std::min(mount_fd, pipe_r), keep_hi = std::max(mount_fd, pipe_r);
  if (keep_lo > 3) syscall(SYS_close_range, 3u, unsigned(keep_lo - 1), 0u);
  if (keep_hi - keep_lo > 1) syscall(SYS_close_range, unsigned(keep_lo + 1), unsigned(keep_hi - 1), 0u);
  syscall(SYS_close_range, unsigned(keep_hi + 1), ~0u, 0u);
  timespec start{}, now{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  const int64_t max_ms = max.count();
  bool deadline = false;
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (spent >= max_ms) {
      deadline = true;
      break;
    }
    pollfd p{pipe_r, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(max_ms - spent, 1000)));
    if (r > 0) break;  // EOF or a byte: thaw now
  }
  if (ioctl(mount_fd, FITHAW, 0) != 0) _exit(errno == EINVAL ? 3 : 4);
  _exit(deadline ? 1 : 0);
}

// The file behind loop device `device` when the device maps all of it (no
// offset, no size limit) and it is the file the loop driver holds; else "".
std::string WholeBackingFile(const std::string& device, const struct stat& st) {
  auto text = io::ReadFile(io::SysBlockPath(st.st_rdev, "loop/backing_file"));
  if (!text.ok()) return "";
  std::string path = *text;
  while (!path.empty() && path.back() == '\n') path.pop_back();
  int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  loop_info64 info{};
  bool ok = ioctl(fd, LOOP_GET_STATUS64, &info) == 0;
  close(fd);
  struct stat bs;
  ok = ok && info.lo_offset == 0 && info.lo_sizelimit == 0 && stat(path.c_str(), &bs) == 0 &&
       bs.st_ino == info.lo_inode && bs.st_dev == info.lo_device;
  return ok ? path : "";
}

// Clones `from` into an unnamed file of its folder (O_TMPFILE); returns its fd.
Result<int> CloneUnnamed(const std::string& from) {
  size_t slash = from.rfind('/');
  std::string dir = slash == std::string::npos || slash == 0 ? "/" : from.substr(0, slash);
  int src = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return PosixError("open " + EscapeBytes(from), errno);
  int dst = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  int err = dst < 0 ? errno : 0;
  if (dst >= 0 && ioctl(dst, FICLONE, src) != 0) {
    err = errno;
    close(dst);
    dst = -1;
  }
  close(src);
  if (dst >= 0) return dst;
  const bool unsupported = err == EOPNOTSUPP || err == EINVAL || err == EXDEV || err == ENOTTY ||
                           err == EISDIR;
  return Status::InvalidArgument(
      "FICLONE " + EscapeBytes(from) + " into an unnamed file of " + EscapeBytes(dir) + ": " +
      Errno(err) +
      (unsupported ? " (the file system does not share extents: reflink needs XFS with reflink "
                     "or btrfs)"
                   : ""));
}

// Test-only crash points while frozen (engine/core/test_hooks.h): "frozen"
// SIGKILLs dp420, "frozen-orphaned" its watchdog first, then dp420.
void FrozenCrashPoint(pid_t watchdog) {
  const char* point = std::getenv("DP420_TEST_CRASH");
  if (point == nullptr) return;
  const bool orphaned = std::strcmp(point, "frozen-orphaned") == 0;
  if (orphaned && watchdog > 0) {
    kill(watchdog, SIGKILL);
    waitpid(watchdog, nullptr, 0);
  }
  if (orphaned || std::strcmp(point, "frozen") == 0) raise(SIGKILL);
}

}  // namespace

void ThawLeftFrozen() { ThawAbandoned(); }

Result<PitMethod> ParsePitMethod(std::string_view text) {
  if (text == "auto") return PitMethod::kAuto;
  if (text == "reflink") return PitMethod::kReflink;
  if (text == "fsfreeze") return PitMethod::kFsfreeze;
  if (text == "hook") return PitMethod::kHook;
  if (text == "none") return PitMethod::kNone;
  return Status::InvalidArgument("--snapshot-source is '" + EscapeBytes(std::string(text)) +
                                 "'; use auto, reflink, fsfreeze, hook or none");
}

const char* PitMethodName(PitMethod method) {
  switch (method) {
    case PitMethod::kAuto: return "auto";
    case PitMethod::kReflink: return "reflink";
    case PitMethod::kFsfreeze: return "fsfreeze";
    case PitMethod::kHook: return "hook";
    case PitMethod::kNone: return "none";
  }
  return "none";
}

Json PitRecord::ToJson() const {
  Json j = {{"consistency", consistency()},
            {"method", PitMethodName(method)}};
  if (method != PitMethod::kNone) j["hold_ms"] = std::round(hold_ms * 1000) / 1000;
  if (!point_in_time) j["source_changed"] = change_known ? Json(source_changed) : Json(nullptr);
  if (!note.empty()) j["note"] = note;
  return j;
}

struct PointInTime::State {
  PitOptions options;
  PitRecord record;
  std::string source_fingerprint;  // live reads: before the read
  int copy_fd = -1;                // the unnamed copy being read
  bool pre_hook_ran = false;
  bool post_hook_ran = false;
  Clock::time_point hold_start;

  // fsfreeze
  int mount_fd = -1;
  std::string note;                // the freeze's note in /run/dp420/frozen
  pid_t watchdog = -1;
  int watchdog_pipe = -1;          // closing it asks the watchdog to thaw
  Clock::time_point frozen_at;
  double frozen_ms = 0;
  int thaw_outcome = -1;           // the watchdog's exit code (StartWatchdog)

  ~State() {
    Thaw();
    if (mount_fd >= 0) close(mount_fd);
    if (copy_fd >= 0) close(copy_fd);
  }

  // Ends the freeze (once): asks the watchdog to thaw and learns how it went.
  void Thaw() {
    if (watchdog <= 0) return;
    close(watchdog_pipe);
    watchdog_pipe = -1;
    int status = 0;
    while (waitpid(watchdog, &status, 0) < 0 && errno == EINTR) {
    }
    watchdog = -1;
    frozen_ms = MsSince(frozen_at);
    thaw_outcome = WIFEXITED(status) ? WEXITSTATUS(status) : 4;
    if (thaw_outcome == 4 && ioctl(mount_fd, FITHAW, 0) == 0) thaw_outcome = 0;
    unlink(note.c_str());
  }

  Status Freeze(const std::string& dir, std::chrono::milliseconds max) {
    mount_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) return PosixError("--freeze-mount " + EscapeBytes(dir), errno);
    struct stat st;
    if (fstat(mount_fd, &st) != 0) return PosixError("--freeze-mount " + EscapeBytes(dir), errno);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return PosixError("pipe for the freeze watchdog", errno);
    note = FreezeNote(dir, getpid());
    if (Status s = WriteFreezeNote(note, st.st_dev, dir); !s.ok()) {
      close(p[0]);
      close(p[1]);
      return s;
    }
    if (ioctl(mount_fd, FIFREEZE, 0) != 0) {
      int err = errno;
      unlink(note.c_str());
      close(p[0]);
      close(p[1]);
      if (err == EBUSY) return Status::Busy(EscapeBytes(dir) + " is frozen already by someone else");
      return PosixError("FIFREEZE " + EscapeBytes(dir), err);
    }
    frozen_at = Clock::now();
    watchdog = StartWatchdog(mount_fd, p[0], p[1], max);
    close(p[0]);
    watchdog_pipe = p[1];
    if (watchdog < 0) {
      ioctl(mount_fd, FITHAW, 0);
      unlink(note.c_str());
      close(p[1]);
      return PosixError("fork the freeze watchdog", errno);
    }
    return Status::Ok();
  }
};

// A point in time that did not Finish (a failed backup): thawed first, then the
// post hook when the pre hook ran, then the copy dropped (~State).
PointInTime::~PointInTime() {
  if (!state_) return;
  state_->Thaw();
  if (state_->pre_hook_ran && !state_->post_hook_ran && !state_->options.post_hook.empty()) {
    state_->post_hook_ran = true;
    Status s = RunHook("post-hook", state_->options.post_hook, state_->options.hook_timeout,
                       nullptr);
    if (!s.ok()) std::fprintf(stderr, "dp420: %s\n", s.message().c_str());
  }
}

namespace {

Status CheckOptions(const std::string& source, const struct stat& st, const PitOptions& o) {
  const bool hooks = !o.pre_hook.empty() || !o.post_hook.empty();
  const PitMethod m = o.method;
  if (m == PitMethod::kNone && hooks) {
    return Status::InvalidArgument("--pre-hook and --post-hook need --snapshot-source hook, "
                                   "reflink, fsfreeze or auto, not none");
  }
  if (m == PitMethod::kHook && !hooks) {
    return Status::InvalidArgument("--snapshot-source hook needs --pre-hook CMD or --post-hook CMD");
  }
  if (m == PitMethod::kReflink && !S_ISREG(st.st_mode)) {
    return Status::InvalidArgument("--snapshot-source reflink needs a file volume; " +
                                   EscapeBytes(source) + " is not a regular file (for a block "
                                   "device holding a mounted file system: fsfreeze --freeze-mount DIR)");
  }
  if (m == PitMethod::kFsfreeze && (o.freeze_mount.empty() || !S_ISBLK(st.st_mode))) {
    return Status::InvalidArgument(
        "--snapshot-source fsfreeze needs a block device as the source and --freeze-mount DIR, "
        "the mount point of the file system on it");
  }
  if (o.freeze_mount.empty()) return Status::Ok();
  if (m != PitMethod::kFsfreeze && m != PitMethod::kAuto) {
    return Status::InvalidArgument("--freeze-mount goes with --snapshot-source fsfreeze or auto");
  }
  struct stat mt;
  if (stat(o.freeze_mount.c_str(), &mt) != 0) {
    return PosixError("--freeze-mount " + EscapeBytes(o.freeze_mount), errno);
  }
  if (!S_ISBLK(st.st_mode) || mt.st_dev != st.st_rdev) {
    return Status::InvalidArgument("--freeze-mount " + EscapeBytes(o.freeze_mount) +
                                   " is not a mount of the file system on " + EscapeBytes(source));
  }
  struct stat rt;
  if (!o.repo_path.empty() && stat(o.repo_path.c_str(), &rt) == 0 && rt.st_dev == mt.st_dev) {
    return Status::InvalidArgument("the repository " + EscapeBytes(o.repo_path) +
                                   " is on the file system --freeze-mount would freeze: the "
                                   "backup could not write to it; keep the repository elsewhere");
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<PointInTime>> PointInTime::Take(const std::string& source,
                                                        const PitOptions& o) {
  ThawAbandoned();
  struct stat st;
  if (stat(source.c_str(), &st) != 0) return PosixError("source " + EscapeBytes(source), errno);
  DP420_RETURN_IF_ERROR(CheckOptions(source, st, o));
  std::unique_ptr<PointInTime> pit(new PointInTime());
  pit->source_ = source;
  pit->read_path_ = source;
  pit->state_ = std::make_unique<State>();
  pit->state_->options = o;
  const bool hooks = !o.pre_hook.empty() || !o.post_hook.empty();
  PitMethod m = o.method;
  if (m == PitMethod::kAuto) {
    if (S_ISREG(st.st_mode)) {
      m = PitMethod::kReflink;
    } else if (!o.freeze_mount.empty()) {
      m = PitMethod::kFsfreeze;
    } else {
      m = hooks ? PitMethod::kHook : PitMethod::kNone;
      if (S_ISBLK(st.st_mode)) pit->state_->record.note = "a block device without --freeze-mount";
    }
  }
  DP420_RETURN_IF_ERROR(pit->Begin(m, o.method == PitMethod::kAuto, st));
  return pit;
}

Status PointInTime::Begin(PitMethod m, bool automatic, const struct stat& st) {
  State& s = *state_;
  const PitOptions& o = s.options;
  s.hold_start = Clock::now();
  if (!o.pre_hook.empty()) {
    s.pre_hook_ran = true;  // the post hook runs even when the pre hook failed half-way
    DP420_RETURN_IF_ERROR(RunHook("pre-hook", o.pre_hook, o.hook_timeout, o.cancel));
  }
  // A freeze holds once frozen (BeginFreeze); every other method once the
  // pre hook ran, and without one nothing holds: a caller that needs a hold
  // (a group member) is refused rather than told it holds.
  if (m != PitMethod::kFsfreeze && o.at_hold) {
    if (o.pre_hook.empty()) {
      return Status::InvalidArgument(
          std::string("nothing holds ") + EscapeBytes(source_) + " (snapshot-source " +
          PitMethodName(m) + " without a pre hook" +
          (s.record.note.empty() ? "" : "; " + s.record.note) +
          "): a group member needs fsfreeze with freeze-mount=DIR, or a pre-hook");
    }
    DP420_RETURN_IF_ERROR(o.at_hold());
  }
  if (m == PitMethod::kReflink) {
    auto fd = CloneUnnamed(source_);
    if (fd.ok()) {
      s.copy_fd = *fd;
      read_path_ = "/proc/self/fd/" + std::to_string(*fd);
      s.record.method = PitMethod::kReflink;
      s.record.point_in_time = true;
      s.record.hold_ms = MsSince(s.hold_start);
    } else if (!automatic) {
      return fd.status();
    } else {
      s.record.note = "reflink not possible: " + fd.status().message();
      m = !o.pre_hook.empty() || !o.post_hook.empty() ? PitMethod::kHook : PitMethod::kNone;
    }
  }
  if (m == PitMethod::kFsfreeze) DP420_RETURN_IF_ERROR(BeginFreeze(st));
  if (m == PitMethod::kHook) {
    s.record.method = PitMethod::kHook;
    // The application vouches for the read between its hooks; without a pre
    // hook nothing quiesced it.
    s.record.point_in_time = !o.pre_hook.empty();
    if (!s.record.point_in_time) s.record.note = "no --pre-hook: nothing quiesced the source";
  }
  if (!s.record.point_in_time) s.source_fingerprint = Fingerprint(source_);
  // With a copy, the point in time is taken: the post hook runs now.
  if (s.copy_fd >= 0 && !o.post_hook.empty()) {
    s.post_hook_ran = true;
    DP420_RETURN_IF_ERROR(RunHook("post-hook", o.post_hook, o.hook_timeout, o.cancel));
  }
  return Status::Ok();
}

Status PointInTime::BeginFreeze(const struct stat& st) {
  State& s = *state_;
  const PitOptions& o = s.options;
  s.record.method = PitMethod::kFsfreeze;
  s.record.point_in_time = true;
  // A loop device over a whole file on a file system that shares extents:
  // that file is cloned while frozen and the clone is read.
  const std::string backing = WholeBackingFile(source_, st);
  DP420_RETURN_IF_ERROR(s.Freeze(o.freeze_mount, o.max_freeze));
  if (o.at_hold) DP420_RETURN_IF_ERROR(o.at_hold());  // thawed by ~State on an error
  if (!backing.empty()) {
    auto fd = CloneUnnamed(backing);
    if (fd.ok()) {
      s.copy_fd = *fd;
      read_path_ = "/proc/self/fd/" + std::to_string(*fd);
      s.Thaw();
      s.record.hold_ms = s.frozen_ms;
      if (s.thaw_outcome == 0) {
        s.record.note = "loop device: its backing file cloned while frozen";
        return Status::Ok();
      }
      s.record.point_in_time = false;  // thawed early by someone else, or at the deadline
      s.record.note = "the freeze ended before the clone was taken";
      return Status::Ok();
    }
    s.record.note = "loop device: its backing file could not be cloned (" +
                    fd.status().message() + "): read while frozen";
  }
  FrozenCrashPoint(s.watchdog);
  // The post hook runs after the thaw (Finish): one that writes to the frozen
  // file system would stall until the deadline.
  s.source_fingerprint = Fingerprint(source_);  // in case the freeze ends before the read
  return Status::Ok();
}

PitRecord PointInTime::Provisional() const {
  PitRecord r = state_->record;
  r.change_known = false;
  // A freeze read in place can still end early: claim no more than a live read.
  if (r.method == PitMethod::kFsfreeze && state_->copy_fd < 0) {
    r.point_in_time = false;
    r.note = "read while frozen; whether the freeze held for the whole read is known to the "
             "agent only";
  }
  return r;
}

Result<PitRecord> PointInTime::Finish() {
  State& s = *state_;
  PitRecord& r = s.record;
  if (r.method == PitMethod::kFsfreeze && s.copy_fd < 0) {
    s.Thaw();
    r.hold_ms = s.frozen_ms;
    if (s.thaw_outcome != 0) {
      // Part of the device was read after the thaw: live, and said so.
      r.point_in_time = false;
      r.note = s.thaw_outcome == 1
                   ? "the read outlasted --max-freeze (" +
                         std::to_string(s.options.max_freeze.count()) +
                         " ms): thawed then, the rest read live"
                   : "the file system was thawed by someone else during the read";
    }
  }
  if (s.copy_fd >= 0) {
    close(s.copy_fd);
    s.copy_fd = -1;
  }
  if (!s.post_hook_ran && !s.options.post_hook.empty()) {
    s.post_hook_ran = true;
    DP420_RETURN_IF_ERROR(
        RunHook("post-hook", s.options.post_hook, s.options.hook_timeout, s.options.cancel));
  }
  if (r.method == PitMethod::kHook) r.hold_ms = MsSince(s.hold_start);
  if (!r.point_in_time) {
    std::string after = Fingerprint(source_);
    r.change_known = !s.source_fingerprint.empty() && !after.empty();
    r.source_changed = r.change_known && after != s.source_fingerprint;
  }
  return r;
}

}  // namespace dp420::control
