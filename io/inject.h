// The process-wide I/O index: every I/O dp420 performs on a file, directory or
// socket (ring ops, and the plain syscalls below) passes through Before(),
// which counts it. Tests use the count to stop or fail the process at any
// chosen I/O of a real run (environment, read once at start):
//   DP420_IO_COUNT_FILE=PATH     at exit, write the number of I/Os to PATH
//   DP420_IO_TRACE_FILE=PATH     one line per I/O, written before it runs (so a
//                                killed process leaves it too): index, kind, target
//   DP420_CRASH_AT_IO=N          SIGKILL just before the Nth I/O (1-based)
//   DP420_FAULT_AT_IO=N:KIND     the Nth I/O fails once: KIND is EIO, ENOSPC
//                                (only where a full device can answer it: writes,
//                                syncs, creates, mkdir, rename, link, truncate,
//                                allocate), EINTR, EAGAIN, short (half the bytes
//                                of a transfer move) or reset (ECONNRESET; socket
//                                ops only); elsewhere the kind injects nothing
//   DP420_POWERLOSS_AT_IO=N[:SEED]  at the Nth I/O, undo what a power cut
//                                would lose, then SIGKILL: every write not yet
//                                covered by an fsync of its file is dropped
//                                (no SEED) or torn (SEED: a seeded random
//                                prefix of each stays), and every create,
//                                rename, link, unlink and mkdir not yet covered
//                                by an fsync of its directory is undone.
// With none of them set, Before() is one predictable branch.
//
// Power-loss mode keeps, in memory, the old bytes under each unsynced write of
// a regular file (bounded: the process stops with exit code 70 when the journal
// would pass 256 MiB) and a hard link to every file an unsynced rename or
// unlink replaced (".dp420-powerloss.*" beside it, removed once the directory is
// synced or at exit).
//
// Thread safety: all functions may be called from any thread.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace dp420::io {

namespace inject {

enum class Op : uint8_t {
  kOpen, kCreate, kRead, kWrite, kSync, kRename, kLink, kUnlink, kMkdir, kRmdir, kTruncate,
  kAllocate, kSend, kRecv,
};

// What Before() asks of the I/O about to run.
struct Action {
  int error = 0;         // > 0: fail the I/O with this errno without running it
  bool shorten = false;  // transfer ShortLength() of the bytes
};

// The bytes a shortened transfer of `len` moves: half of them (at least
// one); a transfer of whole 4 KiB blocks, which may be O_DIRECT, keeps whole
// blocks (half rounded down to 4 KiB; a single block is not shortened), as
// the kernel would.
inline size_t ShortLength(size_t len) {
  constexpr size_t kBlock = 4096;
  if (len % kBlock == 0) return len / 2 / kBlock * kBlock > 0 ? len / 2 / kBlock * kBlock : len;
  return len > 1 ? len / 2 : len;
}

extern bool g_on;          // any of the variables above is set
extern bool g_powerloss;   // DP420_POWERLOSS_AT_IO is set

Action BeforeSlow(Op op, int fd, const char* path);
// Counts one I/O on `fd` (or `path`) and applies the crash, fault or power
// loss planned for its index.
inline Action Before(Op op, int fd, const char* path = nullptr) {
  if (!g_on) [[likely]] return {};
  return BeforeSlow(op, fd, path);
}

// Power-loss journal (each a no-op unless g_powerloss).
// Before `len` bytes are written at `offset` of `fd` (offset ~0: at the
// descriptor's position, or the end with O_APPEND).
void NoteWrite(int fd, uint64_t offset, size_t len);
// Before `fd` is truncated to `size`.
void NoteTruncate(int fd, uint64_t size);
// A ticket taken before an fsync is issued; NoteSynced() after it succeeded:
// what was journalled before the ticket is durable.
uint64_t SyncTicket();
void NoteSynced(int fd, uint64_t ticket);

}  // namespace inject

// The plain syscalls of dp420, each one counted I/O. Same arguments and
// results as the syscall (-1 and errno on failure). Open/OpenAt, Fsync,
// Fdatasync, Rename, RenameAt2, LinkAt, Unlink, UnlinkAt, Mkdir, Ftruncate and
// Fallocate retry EINTR and EAGAIN themselves (bounded); Pread, Pwrite, Read,
// Write, Sendmsg and Recv are single attempts whose callers loop on EINTR,
// EAGAIN and short counts (File::ReadAt/WriteAt, Conn).
namespace sys {

int Open(const char* path, int flags, mode_t mode = 0);
int OpenAt(int dirfd, const char* name, int flags, mode_t mode = 0);
ssize_t Pread(int fd, void* buf, size_t len, off_t offset);
ssize_t Pwrite(int fd, const void* buf, size_t len, off_t offset);
ssize_t Read(int fd, void* buf, size_t len);
ssize_t Write(int fd, const void* buf, size_t len);
int Fsync(int fd);
int Fdatasync(int fd);
int Rename(const char* from, const char* to);
int RenameAt2(int from_dir, const char* from, int to_dir, const char* to, unsigned flags);
int LinkAt(int from_dir, const char* from, int to_dir, const char* to, int flags);
int Unlink(const char* path);
int UnlinkAt(int dirfd, const char* name, int flags);
int Mkdir(const char* path, mode_t mode);
int Rmdir(const char* path);
int Ftruncate(int fd, off_t size);
int Fallocate(int fd, int mode, off_t offset, off_t len);
ssize_t Sendmsg(int fd, const struct msghdr* msg, int flags);
ssize_t Recv(int fd, void* buf, size_t len, int flags);

}  // namespace sys

}  // namespace dp420::io
