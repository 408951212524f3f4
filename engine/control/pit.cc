#include "engine/control/pit.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/core/text.h"
#include "io/file.h"

namespace dp420::control {

namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string Errno(int err) { return std::strerror(err); }

// Runs `command` with /bin/sh -c in its own process group, stdin from
// /dev/null and stdout to stderr (dp420's stdout may be a JSON document);
// kills the group at `timeout`.
Status RunHook(const char* which, const std::string& command, std::chrono::milliseconds timeout) {
  pid_t pid = fork();
  if (pid < 0) return PosixError(std::string("fork for the ") + which, errno);
  if (pid == 0) {
    setpgid(0, 0);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) dup2(null, STDIN_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  const auto deadline = Clock::now() + timeout;
  bool timed_out = false;
  while (pidfd >= 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{pidfd, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n > 0) break;
  }
  if (pidfd >= 0) close(pidfd);
  if (timed_out) kill(-pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string what = std::string("the ") + which + " `" + EscapeBytes(command) + "`";
  if (timed_out) {
    return Status::IOError(what + " did not finish within " +
                           std::to_string(timeout.count() / 1000.0).substr(0, 6) +
                           " s (killed)");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
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
    auto text = io::ReadFile("/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" +
                             std::to_string(minor(st.st_rdev)) + "/stat");
    if (!text.ok()) return "";
    // Fields 5-8: writes, merged, sectors, ticks; 12-15: discards (kernel's iostats.rst).
    std::vector<std::string> f;
    size_t pos = 0;
    const std::string& t = *text;
    while (pos < t.size()) {
      size_t start = t.find_first_not_of(" \n", pos);
      if (start == std::string::npos) break;
      size_t end = t.find_first_of(" \n", start);
      f.push_back(t.substr(start, end - start));
      pos = end == std::string::npos ? t.size() : end;
    }
    if (f.size() < 7) return "";
    std::string fp = f[4] + "/" + f[6];
    if (f.size() >= 14) fp += "/" + f[11] + "/" + f[13];
    return fp;
  }
  return std::to_string(st.st_ino) + "/" + std::to_string(st.st_size) + "/" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "/" +
         std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec);
}

// Where the record of a freeze in progress is kept (one per machine, as a
// freeze is), so that a later dp420 thaws a file system a killed one left frozen.
std::string FreezeStateDir() { return "/run/dp420/frozen"; }

std::string FreezeMarker(const std::string& mount) {
  std::string name;
  for (char c : mount) name += (c == '/') ? '%' : c;
  return FreezeStateDir() + "/" + name;
}

// Thaws every file system whose freezer (pid in its marker) is gone.
void ThawAbandoned() {
  const std::string dir = FreezeStateDir();
  for (const std::string& name : io::ListDir(dir)) {
    auto pid_text = io::ReadFile(dir + "/" + name);
    if (pid_text.ok()) {
      pid_t pid = static_cast<pid_t>(std::atol(pid_text->c_str()));
      if (pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)) continue;  // still alive
    }
    std::string mount;
    for (char c : name) mount += (c == '%') ? '/' : c;
    int fd = open(mount.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      if (ioctl(fd, FITHAW, 0) == 0) {
        std::fprintf(stderr, "dp420: thawed %s, left frozen by a backup that ended without "
                     "thawing it\n", EscapeBytes(mount).c_str());
      }
      close(fd);
    }
    unlink((dir + "/" + name).c_str());
  }
}

// The file behind a loop device ("" for any other device).
std::string LoopBackingFile(const struct stat& st) {
  auto text = io::ReadFile("/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" +
                           std::to_string(minor(st.st_rdev)) + "/loop/backing_file");
  if (!text.ok()) return "";
  std::string path = *text;
  while (!path.empty() && path.back() == '\n') path.pop_back();
  return path;
}

}  // namespace

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
  Json j = {{"consistency", point_in_time ? "point-in-time" : "live"},
            {"method", PitMethodName(method)}};
  if (method != PitMethod::kNone) j["hold_ms"] = std::round(hold_ms * 1000) / 1000;
  if (!point_in_time) {
    if (change_known) {
      j["source_changed"] = source_changed;
    } else {
      j["source_changed"] = nullptr;
    }
  }
  if (!note.empty()) j["note"] = note;
  return j;
}

std::string CopyPathFor(const std::string& source, const std::string& volume) {
  size_t slash = source.rfind('/');
  std::string dir = slash == std::string::npos ? "." : source.substr(0, slash);
  std::string name = slash == std::string::npos ? source : source.substr(slash + 1);
  return dir + "/." + name + "." + volume + ".dp420-pit";
}

void RemoveStaleCopy(const std::string& source, const std::string& volume) {
  const std::string copy = CopyPathFor(source, volume);
  int fd = open(copy.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st;
  // Only a regular file nobody holds: a copy in use is held under LOCK_EX.
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0) {
    unlink(copy.c_str());
  }
  close(fd);
}

struct PointInTime::State {
  PitOptions options;
  PitRecord record;
  std::string source_fingerprint;  // live reads: before the read
  std::string copy;                // the reflink copy, removed at the end
  int copy_fd = -1;                // held under LOCK_EX while the copy is in use
  bool pre_hook_ran = false;
  bool post_hook_ran = false;
  Clock::time_point hold_start;

  // fsfreeze
  std::mutex mu;
  std::condition_variable cv;
  int mount_fd = -1;
  std::string mount;
  bool frozen = false;
  bool thawed_by_watchdog = false;
  bool stop_watchdog = false;
  std::thread watchdog;
  Clock::time_point frozen_at;
  double frozen_ms = 0;

  ~State() {
    Thaw();
    if (watchdog.joinable()) watchdog.join();
    if (mount_fd >= 0) close(mount_fd);
    RemoveCopy();
  }

  void RemoveCopy() {
    if (copy_fd < 0) return;
    unlink(copy.c_str());
    close(copy_fd);
    copy_fd = -1;
  }

  // Thaws once (by the read's end, the watchdog or a failure); true when it
  // was frozen.
  bool Thaw() {
    std::lock_guard lock(mu);
    stop_watchdog = true;
    cv.notify_all();
    if (!frozen) return false;
    frozen = false;
    frozen_ms = MsSince(frozen_at);
    if (ioctl(mount_fd, FITHAW, 0) != 0) {
      std::fprintf(stderr, "dp420: FITHAW %s: %s\n", EscapeBytes(mount).c_str(),
                   Errno(errno).c_str());
    }
    unlink(FreezeMarker(mount).c_str());
    return true;
  }

  Status Freeze(const std::string& dir, std::chrono::milliseconds max) {
    mount = dir;
    mount_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) return PosixError("--freeze-mount " + EscapeBytes(dir), errno);
    DP420_RETURN_IF_ERROR(io::MakeDirs(FreezeStateDir()));
    DP420_RETURN_IF_ERROR(io::WriteFileAtomic(FreezeMarker(dir), std::to_string(getpid())));
    if (ioctl(mount_fd, FIFREEZE, 0) != 0) {
      int err = errno;
      unlink(FreezeMarker(dir).c_str());
      return PosixError("FIFREEZE " + EscapeBytes(dir) +
                            (err == EBUSY ? " (frozen already by someone else)" : ""),
                        err);
    }
    {
      std::lock_guard lock(mu);
      frozen = true;
      frozen_at = Clock::now();
    }
    watchdog = std::thread([this, max] {
      std::unique_lock lock(mu);
      if (cv.wait_for(lock, max, [this] { return stop_watchdog; })) return;
      lock.unlock();
      if (Thaw()) {
        std::lock_guard again(mu);
        thawed_by_watchdog = true;
      }
    });
    return Status::Ok();
  }
};

// A point in time that did not Finish (a failed backup): thawed first, then the
// post hook when the pre hook ran, then the copy removed (~State).
PointInTime::~PointInTime() {
  if (!state_) return;
  state_->Thaw();
  if (state_->pre_hook_ran && !state_->post_hook_ran && !state_->options.post_hook.empty()) {
    state_->post_hook_ran = true;
    Status s = RunHook("post-hook", state_->options.post_hook, state_->options.hook_timeout);
    if (!s.ok()) std::fprintf(stderr, "dp420: %s\n", s.message().c_str());
  }
}

namespace {

// Clones `from` to `to` (created, 0600, held under LOCK_EX); returns its fd.
Result<int> Clone(const std::string& from, const std::string& to) {
  int src = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return PosixError("open " + EscapeBytes(from), errno);
  int dst = open(to.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (dst < 0) {
    int err = errno;
    close(src);
    if (err == EEXIST) {
      return Status::Busy("the point-in-time copy " + EscapeBytes(to) +
                          " is in use by another backup of this source and volume");
    }
    return PosixError("create the point-in-time copy " + EscapeBytes(to), err);
  }
  int err = 0;
  if (flock(dst, LOCK_EX | LOCK_NB) != 0 || ioctl(dst, FICLONE, src) != 0) err = errno;
  close(src);
  if (err != 0) {
    unlink(to.c_str());
    close(dst);
    std::string why = err == EOPNOTSUPP || err == EINVAL || err == EXDEV || err == ENOTTY
                          ? " (the file system does not share extents: reflink needs XFS with "
                            "reflink or btrfs)"
                          : "";
    return Status::InvalidArgument("FICLONE " + EscapeBytes(from) + ": " + Errno(err) + why);
  }
  return dst;
}

}  // namespace

Result<std::unique_ptr<PointInTime>> PointInTime::Take(const std::string& source,
                                                        const std::string& volume,
                                                        const PitOptions& o) {
  ThawAbandoned();
  std::unique_ptr<PointInTime> pit(new PointInTime());
  pit->source_ = source;
  pit->read_path_ = source;
  pit->state_ = std::make_unique<State>();
  State& s = *pit->state_;
  s.options = o;
  struct stat st;
  if (stat(source.c_str(), &st) != 0) return PosixError("source " + EscapeBytes(source), errno);
  const bool file = S_ISREG(st.st_mode);
  const bool hooks = !o.pre_hook.empty() || !o.post_hook.empty();
  PitMethod m = o.method;
  if (m == PitMethod::kNone && hooks) {
    return Status::InvalidArgument("--pre-hook and --post-hook need --snapshot-source hook, "
                                   "reflink, fsfreeze or auto, not none");
  }
  if (m == PitMethod::kHook && !hooks) {
    return Status::InvalidArgument("--snapshot-source hook needs --pre-hook CMD or --post-hook CMD");
  }
  if (m == PitMethod::kReflink && !file) {
    return Status::InvalidArgument("--snapshot-source reflink needs a file volume; " +
                                   EscapeBytes(source) + " is not a regular file (for a block "
                                   "device holding a mounted file system: fsfreeze --freeze-mount DIR)");
  }
  if (m == PitMethod::kFsfreeze && (o.freeze_mount.empty() || !S_ISBLK(st.st_mode))) {
    return Status::InvalidArgument(
        "--snapshot-source fsfreeze needs a block device as the source and --freeze-mount DIR, "
        "the mount point of the file system on it");
  }
  if (!o.freeze_mount.empty() && m != PitMethod::kFsfreeze && m != PitMethod::kAuto) {
    return Status::InvalidArgument("--freeze-mount goes with --snapshot-source fsfreeze or auto");
  }
  if (!o.freeze_mount.empty()) {
    struct stat mt;
    if (stat(o.freeze_mount.c_str(), &mt) != 0) {
      return PosixError("--freeze-mount " + EscapeBytes(o.freeze_mount), errno);
    }
    if (!S_ISBLK(st.st_mode) || mt.st_dev != st.st_rdev) {
      return Status::InvalidArgument("--freeze-mount " + EscapeBytes(o.freeze_mount) +
                                     " is not a mount of the file system on " + EscapeBytes(source));
    }
  }
  if (m == PitMethod::kAuto) {
    if (file) {
      m = PitMethod::kReflink;
    } else if (!o.freeze_mount.empty()) {
      m = PitMethod::kFsfreeze;
    } else {
      m = hooks ? PitMethod::kHook : PitMethod::kNone;
      if (S_ISBLK(st.st_mode)) {
        s.record.note = "a block device without --freeze-mount: read live";
      }
    }
  }
  DP420_RETURN_IF_ERROR(pit->Begin(m, o.method == PitMethod::kAuto, volume, st));
  return pit;
}

Status PointInTime::Begin(PitMethod m, bool automatic, const std::string& volume,
                          const struct stat& st) {
  State& s = *state_;
  const PitOptions& o = s.options;
  s.hold_start = Clock::now();
  if (!o.pre_hook.empty()) {
    s.pre_hook_ran = true;  // the post hook runs even when the pre hook failed half-way
    DP420_RETURN_IF_ERROR(RunHook("pre-hook", o.pre_hook, o.hook_timeout));
  }
  if (m == PitMethod::kReflink) {
    RemoveStaleCopy(source_, volume);
    s.copy = CopyPathFor(source_, volume);
    auto start = Clock::now();
    auto fd = Clone(source_, s.copy);
    if (fd.ok()) {
      s.copy_fd = *fd;
      read_path_ = s.copy;
      s.record.method = PitMethod::kReflink;
      s.record.point_in_time = true;
      s.record.hold_ms = MsSince(start);
    } else if (!automatic || fd.status().code() == Code::kBusy) {
      return fd.status();
    } else {
      s.record.note = "reflink not possible (" + fd.status().message() + "): read live";
      m = !o.pre_hook.empty() || !o.post_hook.empty() ? PitMethod::kHook : PitMethod::kNone;
    }
  }
  if (m == PitMethod::kFsfreeze) DP420_RETURN_IF_ERROR(BeginFreeze(volume, st));
  if (m == PitMethod::kHook) {
    s.record.method = PitMethod::kHook;
    s.record.point_in_time = true;  // the application vouches for the read between its hooks
  }
  if (m == PitMethod::kNone) {
    s.record.method = PitMethod::kNone;
    s.source_fingerprint = Fingerprint(source_);
  }
  // With a copy or a freeze the point in time is taken: the post hook runs now.
  if ((m == PitMethod::kReflink || s.record.method == PitMethod::kFsfreeze) &&
      !o.post_hook.empty()) {
    s.post_hook_ran = true;
    DP420_RETURN_IF_ERROR(RunHook("post-hook", o.post_hook, o.hook_timeout));
  }
  return Status::Ok();
}

Status PointInTime::BeginFreeze(const std::string& volume, const struct stat& st) {
  State& s = *state_;
  const PitOptions& o = s.options;
  s.record.method = PitMethod::kFsfreeze;
  s.record.point_in_time = true;
  DP420_RETURN_IF_ERROR(s.Freeze(o.freeze_mount, o.max_freeze));
  // A loop device's backing file on a file system that shares extents: cloned
  // while frozen, and the clone is read; the freeze lasts milliseconds.
  std::string backing = LoopBackingFile(st);
  if (!backing.empty()) {
    RemoveStaleCopy(backing, volume);
    s.copy = CopyPathFor(backing, volume);
    auto fd = Clone(backing, s.copy);
    if (fd.ok()) {
      s.copy_fd = *fd;
      read_path_ = s.copy;
      s.Thaw();
      s.record.hold_ms = s.frozen_ms;
      s.record.note = "loop device: its backing file cloned while frozen";
      return Status::Ok();
    }
    s.record.note = "loop device: its backing file could not be cloned (" +
                    fd.status().message() + "): read while frozen";
  }
  s.source_fingerprint = Fingerprint(source_);  // in case the freeze ends before the read
  return Status::Ok();
}

PitRecord PointInTime::Provisional() const {
  PitRecord r = state_->record;
  r.change_known = false;
  return r;
}

Result<PitRecord> PointInTime::Finish() {
  State& s = *state_;
  PitRecord& r = s.record;
  if (r.method == PitMethod::kFsfreeze && s.copy_fd < 0) {
    s.Thaw();
    r.hold_ms = s.frozen_ms;
    bool early = false;
    {
      std::lock_guard lock(s.mu);
      early = s.thawed_by_watchdog;
    }
    if (early) {
      // Part of the device was read after the thaw: live, and said so.
      r.point_in_time = false;
      r.note = "the read outlasted --max-freeze (" +
               std::to_string(s.options.max_freeze.count()) +
               " ms): thawed then, the rest read live";
    }
  }
  s.RemoveCopy();
  if (!s.post_hook_ran && !s.options.post_hook.empty()) {
    s.post_hook_ran = true;
    DP420_RETURN_IF_ERROR(RunHook("post-hook", s.options.post_hook, s.options.hook_timeout));
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
