#include "io/inject.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dp420::io::inject {

bool g_on = false;
bool g_powerloss = false;

namespace {

constexpr uint64_t kJournalLimit = 256ull << 20;  // old bytes kept in power-loss mode
constexpr int kJournalFullExit = 70;

enum class FaultKind : uint8_t { kNone, kError, kShort, kReset };

struct Plan {
  uint64_t crash_at = 0;
  uint64_t fault_at = 0;
  FaultKind fault = FaultKind::kNone;
  int fault_errno = 0;
  uint64_t powerloss_at = 0;
  bool tear = false;
  uint64_t seed = 0;
  std::string count_file;
  std::string trace_file;
};

Plan g_plan;
std::atomic<uint64_t> g_count{0};
std::mutex g_trace_mu;
int g_trace_fd = -1;

const char* OpName(Op op) {
  static constexpr const char* kNames[] = {
      "open",  "create", "read",  "write",    "sync",     "rename", "link",
      "unlink", "mkdir", "rmdir", "truncate", "allocate", "send",   "recv"};
  return kNames[static_cast<unsigned>(op)];
}

bool ParseU64(std::string_view text, uint64_t* value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

[[noreturn]] void BadEnv(const char* name, const char* value, const char* want) {
  std::fprintf(stderr, "dp420: bad %s=\"%s\" (want %s)\n", name, value, want);
  std::_Exit(2);
}

bool ParseFaultKind(std::string_view kind, Plan* plan) {
  static constexpr std::pair<std::string_view, int> kErrors[] = {
      {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EINTR", EINTR}, {"EAGAIN", EAGAIN}};
  for (const auto& [name, err] : kErrors) {
    if (kind == name) {
      plan->fault = FaultKind::kError;
      plan->fault_errno = err;
      return true;
    }
  }
  if (kind == "short") plan->fault = FaultKind::kShort;
  else if (kind == "reset") plan->fault = FaultKind::kReset;
  else return false;
  return true;
}

// "N" or "N:SUFFIX": the index, and the suffix (empty when none).
bool SplitIndex(std::string_view text, uint64_t* index, std::string_view* suffix) {
  size_t colon = text.find(':');
  *suffix = colon == std::string_view::npos ? std::string_view() : text.substr(colon + 1);
  return ParseU64(text.substr(0, colon), index) && *index > 0;
}

void ParseEnv(Plan* plan) {
  std::string_view suffix;
  if (const char* v = std::getenv("DP420_CRASH_AT_IO"); v && *v) {
    if (!SplitIndex(v, &plan->crash_at, &suffix) || !suffix.empty()) {
      BadEnv("DP420_CRASH_AT_IO", v, "N >= 1");
    }
  }
  if (const char* v = std::getenv("DP420_FAULT_AT_IO"); v && *v) {
    if (!SplitIndex(v, &plan->fault_at, &suffix) || !ParseFaultKind(suffix, plan)) {
      BadEnv("DP420_FAULT_AT_IO", v, "N:KIND, KIND one of EIO ENOSPC EINTR EAGAIN short reset");
    }
  }
  if (const char* v = std::getenv("DP420_POWERLOSS_AT_IO"); v && *v) {
    if (!SplitIndex(v, &plan->powerloss_at, &suffix) ||
        (!suffix.empty() && !ParseU64(suffix, &plan->seed))) {
      BadEnv("DP420_POWERLOSS_AT_IO", v, "N or N:SEED");
    }
    plan->tear = !suffix.empty();
  }
  if (const char* v = std::getenv("DP420_IO_COUNT_FILE"); v && *v) plan->count_file = v;
  if (const char* v = std::getenv("DP420_IO_TRACE_FILE"); v && *v) plan->trace_file = v;
}

// Writes `text` to `path` with plain syscalls (not counted).
void WriteReport(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "dp420: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return;
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += size_t(n);
  }
  close(fd);
}

// ---- Power-loss journal ----

struct FileKey {
  dev_t dev;
  ino_t ino;
  bool operator<(const FileKey& o) const { return dev != o.dev ? dev < o.dev : ino < o.ino; }
  bool operator==(const FileKey& o) const { return dev == o.dev && ino == o.ino; }
};

// One unsynced change of a file's bytes: a write, or a truncate (len 0,
// `old` the bytes it cut off at `offset`).
struct WriteRec {
  uint64_t seq;
  uint64_t offset;
  uint64_t len;
  uint64_t size_before;  // the file's size before the change
  std::string old;       // the bytes under [offset, offset + max(len, old.size()))
};

struct FileRec {
  int fd = -1;  // our own descriptor of the file, to undo through
  std::vector<WriteRec> changes;
};

enum class DirKind : uint8_t { kCreate, kRename, kUnlink, kLink, kMkdir };

struct DirRec {
  uint64_t seq;
  DirKind kind;
  FileKey dir;        // the directory whose fsync makes it durable
  std::string path;   // created / unlinked path, or the rename's target
  std::string from;   // rename: source
  std::string stash;  // rename over a file / unlink: a link to the old file
};

std::mutex g_mu;  // the journal; held for ever once the power is cut
std::map<FileKey, FileRec> g_files;
std::vector<DirRec> g_dirs;
uint64_t g_seq = 0;
uint64_t g_journal_bytes = 0;
uint64_t g_stash_count = 0;
std::vector<std::string> g_pending_stashes;  // made for an operation not yet journalled

bool KeyOf(int fd, FileKey* key, struct stat* st) {
  if (fstat(fd, st) != 0) return false;
  *key = {st->st_dev, st->st_ino};
  return true;
}

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool DirKey(const std::string& path, FileKey* key) {
  struct stat st;
  if (stat(DirOf(path).c_str(), &st) != 0) return false;
  *key = {st.st_dev, st.st_ino};
  return true;
}

// The path `name` relative to `dirfd` names.
std::string AtPath(int dirfd, const char* name) {
  if (name[0] == '/' || dirfd == AT_FDCWD) return name;
  char buf[4096];
  std::string link = "/proc/self/fd/" + std::to_string(dirfd);
  ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return name;
  return std::string(buf, size_t(n)) + "/" + name;
}

void ChargeJournal(uint64_t bytes) {
  g_journal_bytes += bytes;
  if (g_journal_bytes > kJournalLimit) {
    std::fprintf(stderr, "dp420: power-loss journal over its bound of %llu bytes\n",
                 static_cast<unsigned long long>(kJournalLimit));
    std::_Exit(kJournalFullExit);
  }
}

// The record of the regular file behind `fd` (null for anything else).
FileRec* RecordOf(int fd, struct stat* st) {
  FileKey key;
  if (!KeyOf(fd, &key, st) || !S_ISREG(st->st_mode)) return nullptr;
  FileRec& rec = g_files[key];
  if (rec.fd < 0) {
    std::string proc = "/proc/self/fd/" + std::to_string(fd);
    rec.fd = open(proc.c_str(), O_RDWR | O_CLOEXEC);
    if (rec.fd < 0) {
      std::fprintf(stderr, "dp420: power-loss mode cannot reopen %s: %s\n", proc.c_str(),
                   std::strerror(errno));
      std::_Exit(kJournalFullExit);
    }
  }
  return &rec;
}

std::string OldBytes(int fd, uint64_t offset, uint64_t len, uint64_t size) {
  std::string old(len, '\0');
  uint64_t have = offset >= size ? 0 : std::min(len, size - offset);
  size_t done = 0;
  while (done < have) {
    ssize_t n = pread(fd, old.data() + done, have - done, off_t(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += size_t(n);
  }
  return old;
}

std::string NewStash(const std::string& path) {
  return DirOf(path) + "/.dp420-powerloss." + std::to_string(getpid()) + "." +
         std::to_string(++g_stash_count);
}

// A link to `path`'s file, so that an unsynced rename over it or unlink of it
// can be undone; "" when there is no file there.
std::string Stash(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 || S_ISDIR(st.st_mode)) return "";
  std::string stash = NewStash(path);
  if (link(path.c_str(), stash.c_str()) != 0) return "";
  g_pending_stashes.push_back(stash);
  return stash;
}

void Unpend(const std::string& stash) {
  auto it = std::find(g_pending_stashes.begin(), g_pending_stashes.end(), stash);
  if (it != g_pending_stashes.end()) g_pending_stashes.erase(it);
}

void AddDirRec(DirKind kind, const std::string& path, std::string from, std::string stash) {
  if (!stash.empty()) Unpend(stash);
  DirRec rec{++g_seq, kind, {}, path, std::move(from), std::move(stash)};
  if (!DirKey(path, &rec.dir)) {
    if (!rec.stash.empty()) unlink(rec.stash.c_str());
    return;
  }
  g_dirs.push_back(std::move(rec));
}

int RemoveTreeEntry(const char* path, const struct stat*, int type, struct FTW*) {
  if (type == FTW_DP) rmdir(path);
  else unlink(path);
  return 0;
}

// Undoes one file's unsynced changes, newest first; torn: a seeded prefix
// of each write stays.
void RevertFile(FileRec& rec, std::mt19937_64& rng) {
  if (rec.changes.empty()) return;
  uint64_t size = rec.changes.front().size_before;
  for (auto it = rec.changes.rbegin(); it != rec.changes.rend(); ++it) {
    uint64_t keep = 0;
    if (g_plan.tear && it->len > 0) keep = rng() % (it->len + 1);
    if (keep > 0) size = std::max(size, it->offset + keep);
    const std::string& old = it->old;
    if (keep < old.size()) {
      (void)!pwrite(rec.fd, old.data() + keep, old.size() - keep, off_t(it->offset + keep));
    }
  }
  (void)!ftruncate(rec.fd, off_t(size));
}

void RevertDirs() {
  for (auto it = g_dirs.rbegin(); it != g_dirs.rend(); ++it) {
    switch (it->kind) {
      case DirKind::kCreate:
      case DirKind::kLink: unlink(it->path.c_str()); break;
      case DirKind::kMkdir:
        nftw(it->path.c_str(), RemoveTreeEntry, 16, FTW_DEPTH | FTW_PHYS);
        break;
      case DirKind::kRename:
        (void)rename(it->path.c_str(), it->from.c_str());
        if (!it->stash.empty()) (void)rename(it->stash.c_str(), it->path.c_str());
        break;
      case DirKind::kUnlink:
        if (!it->stash.empty()) (void)rename(it->stash.c_str(), it->path.c_str());
        break;
    }
  }
}

[[noreturn]] void CutPower(uint64_t index) {
  g_mu.lock();  // never released: every other I/O of the process stops here
  std::mt19937_64 rng(g_plan.seed ^ (index * 0x9e3779b97f4a7c15ull));
  size_t writes = 0;
  for (auto& [key, rec] : g_files) {
    writes += rec.changes.size();
    RevertFile(rec, rng);
  }
  std::fprintf(stderr, "dp420: power cut at I/O %llu: %zu unsynced file changes %s, %zu "
               "directory operations undone\n",
               static_cast<unsigned long long>(index), writes, g_plan.tear ? "torn" : "dropped",
               g_dirs.size());
  RevertDirs();
  // Links made for a rename or unlink that the cut came before.
  for (const std::string& stash : g_pending_stashes) unlink(stash.c_str());
  kill(getpid(), SIGKILL);
  std::abort();
}

void RemoveStashes() {
  std::lock_guard<std::mutex> lock(g_mu);
  for (const DirRec& rec : g_dirs) {
    if (!rec.stash.empty()) unlink(rec.stash.c_str());
  }
  g_dirs.clear();
}

void AtExit() {
  if (g_powerloss) RemoveStashes();
  if (!g_plan.count_file.empty()) {
    WriteReport(g_plan.count_file, std::to_string(g_count.load()) + "\n");
  }
}

// Reads the plan before main(); the I/O of static constructors that run
// earlier is not counted.
[[maybe_unused]] const bool g_initialized = [] {
  ParseEnv(&g_plan);
  g_powerloss = g_plan.powerloss_at > 0;
  g_on = g_plan.crash_at > 0 || g_plan.fault_at > 0 || g_powerloss ||
         !g_plan.count_file.empty() || !g_plan.trace_file.empty();
  if (g_on) std::atexit(AtExit);
  if (!g_plan.trace_file.empty()) {
    g_trace_fd = open(g_plan.trace_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND |
                      O_CLOEXEC, 0600);
    if (g_trace_fd < 0) BadEnv("DP420_IO_TRACE_FILE", g_plan.trace_file.c_str(), "a writable file");
  }
  return true;
}();

// Where a full device can answer ENOSPC.
bool CanBeFull(Op op) {
  switch (op) {
    case Op::kCreate: case Op::kWrite: case Op::kSync: case Op::kRename: case Op::kLink:
    case Op::kMkdir: case Op::kTruncate: case Op::kAllocate: return true;
    default: return false;
  }
}

bool IsTransfer(Op op) {
  return op == Op::kRead || op == Op::kWrite || op == Op::kSend || op == Op::kRecv;
}

void Trace(uint64_t index, Op op, int fd, const char* path) {
  std::string target = path != nullptr ? std::string(path) : AtPath(fd, "");
  if (path == nullptr && !target.empty() && target.back() == '/') target.pop_back();
  // Written at once, so that a process killed at an index leaves its trace.
  std::string line = std::to_string(index) + " " + OpName(op) + " " + target + "\n";
  std::lock_guard<std::mutex> lock(g_trace_mu);
  (void)!write(g_trace_fd, line.data(), line.size());
}

}  // namespace

Action BeforeSlow(Op op, int fd, const char* path) {
  if (g_powerloss) {  // waits here for ever once the power is cut
    std::lock_guard<std::mutex> lock(g_mu);
  }
  uint64_t index = g_count.fetch_add(1, std::memory_order_relaxed) + 1;
  if (!g_plan.trace_file.empty()) Trace(index, op, fd, path);
  if (index == g_plan.crash_at) {
    kill(getpid(), SIGKILL);
    std::abort();
  }
  if (index == g_plan.powerloss_at) CutPower(index);
  Action action;
  if (index != g_plan.fault_at) return action;
  switch (g_plan.fault) {
    case FaultKind::kError:
      if (g_plan.fault_errno != ENOSPC || CanBeFull(op)) action.error = g_plan.fault_errno;
      break;
    case FaultKind::kShort: action.shorten = IsTransfer(op); break;
    case FaultKind::kReset:
      if (op == Op::kSend || op == Op::kRecv) action.error = ECONNRESET;
      break;
    case FaultKind::kNone: break;
  }
  return action;
}

void NoteWrite(int fd, uint64_t offset, size_t len) {
  if (!g_powerloss || len == 0) return;
  std::lock_guard<std::mutex> lock(g_mu);
  struct stat st;
  FileRec* rec = RecordOf(fd, &st);
  if (rec == nullptr) return;
  if (offset == ~uint64_t{0}) {
    int flags = fcntl(fd, F_GETFL);
    off_t pos = lseek(fd, 0, SEEK_CUR);
    offset = (flags >= 0 && (flags & O_APPEND)) || pos < 0 ? uint64_t(st.st_size) : uint64_t(pos);
  }
  uint64_t size = uint64_t(st.st_size);
  rec->changes.push_back({++g_seq, offset, len, size, OldBytes(rec->fd, offset, len, size)});
  ChargeJournal(len);
}

void NoteTruncate(int fd, uint64_t new_size) {
  if (!g_powerloss) return;
  std::lock_guard<std::mutex> lock(g_mu);
  struct stat st;
  FileRec* rec = RecordOf(fd, &st);
  if (rec == nullptr) return;
  uint64_t size = uint64_t(st.st_size);
  uint64_t cut = size > new_size ? size - new_size : 0;
  rec->changes.push_back({++g_seq, new_size, 0, size, OldBytes(rec->fd, new_size, cut, size)});
  ChargeJournal(cut);
}

uint64_t SyncTicket() {
  if (!g_powerloss) return 0;
  std::lock_guard<std::mutex> lock(g_mu);
  return ++g_seq;
}

void NoteSynced(int fd, uint64_t ticket) {
  if (!g_powerloss) return;
  std::lock_guard<std::mutex> lock(g_mu);
  FileKey key;
  struct stat st;
  if (!KeyOf(fd, &key, &st)) return;
  if (S_ISDIR(st.st_mode)) {
    auto synced = [&](const DirRec& r) { return r.dir == key && r.seq < ticket; };
    for (const DirRec& r : g_dirs) {
      if (synced(r) && !r.stash.empty()) unlink(r.stash.c_str());
    }
    g_dirs.erase(std::remove_if(g_dirs.begin(), g_dirs.end(), synced), g_dirs.end());
    return;
  }
  auto it = g_files.find(key);
  if (it == g_files.end()) return;
  auto& changes = it->second.changes;
  for (const WriteRec& w : changes) {
    if (w.seq < ticket) g_journal_bytes -= std::max<uint64_t>(w.len, w.old.size());
  }
  changes.erase(std::remove_if(changes.begin(), changes.end(),
                               [&](const WriteRec& w) { return w.seq < ticket; }),
                changes.end());
  if (changes.empty()) {
    close(it->second.fd);
    g_files.erase(it);
  }
}

// ---- Directory journal, for the syscall wrappers below ----

namespace {

// Before a create: whether `path` exists (then opening it creates nothing).
bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

void NoteDirOp(DirKind kind, const std::string& path, std::string from, std::string stash) {
  std::lock_guard<std::mutex> lock(g_mu);
  AddDirRec(kind, path, std::move(from), std::move(stash));
}

std::string StashLocked(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  return Stash(path);
}

void DropStash(const std::string& stash) {
  if (stash.empty()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  Unpend(stash);
  unlink(stash.c_str());
}

}  // namespace

}  // namespace dp420::io::inject

namespace dp420::io::sys {

namespace {

using inject::Action;
using inject::Op;
constexpr int kMaxRetries = 16;

// Runs `call` (one attempt of a syscall returning -1 and errno on failure)
// after counting it, retrying EINTR and EAGAIN.
template <typename Call>
int Retrying(Op op, int fd, const char* path, Call call) {
  for (int attempt = 0;; ++attempt) {
    Action a = inject::Before(op, fd, path);
    int rc;
    if (a.error != 0) {
      errno = a.error;
      rc = -1;
    } else {
      rc = call();
    }
    if (rc >= 0 || (errno != EINTR && errno != EAGAIN) || attempt + 1 >= kMaxRetries) return rc;
  }
}

int Synced(int fd, int (*sync)(int)) {
  uint64_t ticket = inject::SyncTicket();
  int rc = Retrying(Op::kSync, fd, nullptr, [&] { return sync(fd); });
  if (rc == 0) inject::NoteSynced(fd, ticket);
  return rc;
}

// Opens through `call`, noting the file it created, and the truncation of an
// existing one.
template <typename Call>
int Opening(const std::string& path, int flags, Call call) {
  bool journal = inject::g_powerloss;
  bool creates = (flags & O_CREAT) && (flags & O_TMPFILE) != O_TMPFILE;
  bool existed = journal && creates && inject::Exists(path);
  if (journal && (flags & O_TRUNC) && inject::Exists(path)) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    if (fd >= 0) {
      inject::NoteTruncate(fd, 0);
      close(fd);
    }
  }
  int fd = Retrying((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? Op::kCreate : Op::kOpen,
                    -1, path.c_str(), call);
  if (fd >= 0 && journal && creates && !existed) {
    inject::NoteDirOp(inject::DirKind::kCreate, path, "", "");
  }
  return fd;
}

template <typename Call>
ssize_t Transfer(Op op, int fd, size_t len, Call call) {
  Action a = inject::Before(op, fd);
  if (a.error != 0) {
    errno = a.error;
    return -1;
  }
  return call(a.shorten ? inject::ShortLength(len) : len);
}

// A rename of `from` to `to` through `call`: the file it replaces is stashed
// so that power-loss mode can undo it.
template <typename Call>
int Renaming(const std::string& from, const std::string& to, Call call) {
  std::string stash = inject::g_powerloss ? inject::StashLocked(to) : "";
  int rc = Retrying(Op::kRename, -1, to.c_str(), call);
  if (rc != 0 || !inject::g_powerloss) {
    inject::DropStash(stash);
    return rc;
  }
  inject::NoteDirOp(inject::DirKind::kRename, to, from, stash);
  return rc;
}

template <typename Call>
int Unlinking(const std::string& path, Call call) {
  std::string stash = inject::g_powerloss ? inject::StashLocked(path) : "";
  int rc = Retrying(Op::kUnlink, -1, path.c_str(), call);
  if (rc != 0 || !inject::g_powerloss) {
    inject::DropStash(stash);
    return rc;
  }
  inject::NoteDirOp(inject::DirKind::kUnlink, path, "", stash);
  return rc;
}

}  // namespace

int Open(const char* path, int flags, mode_t mode) {
  return Opening(path, flags, [&] { return open(path, flags, mode); });
}

int OpenAt(int dirfd, const char* name, int flags, mode_t mode) {
  std::string path = inject::g_on ? inject::AtPath(dirfd, name) : name;
  return Opening(path, flags, [&] { return openat(dirfd, name, flags, mode); });
}

ssize_t Pread(int fd, void* buf, size_t len, off_t offset) {
  return Transfer(Op::kRead, fd, len, [&](size_t n) { return pread(fd, buf, n, offset); });
}

ssize_t Pwrite(int fd, const void* buf, size_t len, off_t offset) {
  return Transfer(Op::kWrite, fd, len, [&](size_t n) {
    inject::NoteWrite(fd, uint64_t(offset), n);
    return pwrite(fd, buf, n, offset);
  });
}

ssize_t Read(int fd, void* buf, size_t len) {
  return Transfer(Op::kRead, fd, len, [&](size_t n) { return read(fd, buf, n); });
}

ssize_t Write(int fd, const void* buf, size_t len) {
  return Transfer(Op::kWrite, fd, len, [&](size_t n) {
    inject::NoteWrite(fd, ~uint64_t{0}, n);
    return write(fd, buf, n);
  });
}

int Fsync(int fd) { return Synced(fd, fsync); }
int Fdatasync(int fd) { return Synced(fd, fdatasync); }

int Rename(const char* from, const char* to) {
  return Renaming(from, to, [&] { return rename(from, to); });
}

int RenameAt2(int from_dir, const char* from, int to_dir, const char* to, unsigned flags) {
  std::string to_path = inject::g_on ? inject::AtPath(to_dir, to) : to;
  std::string from_path = inject::g_on ? inject::AtPath(from_dir, from) : from;
  return Renaming(from_path, to_path,
                  [&] { return renameat2(from_dir, from, to_dir, to, flags); });
}

int LinkAt(int from_dir, const char* from, int to_dir, const char* to, int flags) {
  std::string path = inject::g_on ? inject::AtPath(to_dir, to) : to;
  int rc = Retrying(Op::kLink, -1, path.c_str(),
                    [&] { return linkat(from_dir, from, to_dir, to, flags); });
  if (rc == 0 && inject::g_powerloss) inject::NoteDirOp(inject::DirKind::kLink, path, "", "");
  return rc;
}

int Unlink(const char* path) {
  return Unlinking(path, [&] { return unlink(path); });
}

int UnlinkAt(int dirfd, const char* name, int flags) {
  std::string path = inject::g_on ? inject::AtPath(dirfd, name) : name;
  return Unlinking(path, [&] { return unlinkat(dirfd, name, flags); });
}

int Mkdir(const char* path, mode_t mode) {
  int rc = Retrying(Op::kMkdir, -1, path, [&] { return mkdir(path, mode); });
  if (rc == 0 && inject::g_powerloss) inject::NoteDirOp(inject::DirKind::kMkdir, path, "", "");
  return rc;
}

int Rmdir(const char* path) {
  return Retrying(Op::kRmdir, -1, path, [&] { return rmdir(path); });
}

int Ftruncate(int fd, off_t size) {
  return Retrying(Op::kTruncate, fd, nullptr, [&] {
    inject::NoteTruncate(fd, uint64_t(size));
    return ftruncate(fd, size);
  });
}

int Fallocate(int fd, int mode, off_t offset, off_t len) {
  return Retrying(Op::kAllocate, fd, nullptr, [&] {
    inject::NoteWrite(fd, uint64_t(offset), size_t(len));
    return fallocate(fd, mode, offset, len);
  });
}

ssize_t Sendmsg(int fd, const struct msghdr* msg, int flags) {
  Action a = inject::Before(Op::kSend, fd);
  if (a.error != 0) {
    errno = a.error;
    return -1;
  }
  if (!a.shorten || msg->msg_iovlen == 0 || msg->msg_iov[0].iov_len < 2) {
    return sendmsg(fd, msg, flags);
  }
  struct iovec half = msg->msg_iov[0];
  half.iov_len /= 2;
  struct msghdr shorter = *msg;
  shorter.msg_iov = &half;
  shorter.msg_iovlen = 1;
  return sendmsg(fd, &shorter, flags);
}

ssize_t Recv(int fd, void* buf, size_t len, int flags) {
  return Transfer(Op::kRecv, fd, len, [&](size_t n) { return recv(fd, buf, n, flags); });
}

}  // namespace dp420::io::sys
