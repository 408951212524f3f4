// Tests of io/ring.h against the real kernel: bulk reads into plain and
// registered buffers, O_DIRECT, writes and fsync, end of file, short reads,
// fault injection (hook and DP420_FAULT), and teardown with ops in flight.
#include "io/ring.h"

#include <fcntl.h>
#include <liburing.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "io/buffer_pool.h"
#include "io/file.h"
#include "tests/io/test_util.h"

extern char** environ;

namespace dp420::io {
namespace {

using testing::TempDir;

constexpr size_t kMiB = 1024 * 1024;
constexpr uint64_t kFileBytes = 40 * kMiB;
constexpr uint32_t kOpBytes = 1 * kMiB;
constexpr unsigned kDepth = 32;

std::unique_ptr<Ring> MakeRing(unsigned depth = kDepth, bool single_issuer = true) {
  RingOptions options;
  options.depth = depth;
  options.single_issuer = single_issuer;
  Result<std::unique_ptr<Ring>> ring = Ring::Create(options);
  EXPECT_TRUE(ring.ok()) << ring.status().ToString();
  return ring.ok() ? std::move(ring).value() : nullptr;
}

IoOp ReadOp(int fd, uint8_t* buf, uint32_t len, uint64_t offset) {
  IoOp op;
  op.kind = IoOp::kRead;
  op.fd = fd;
  op.buf = buf;
  op.len = len;
  op.offset = offset;
  return op;
}

// Waits until `op` alone has finished.
void WaitOne(Ring& ring, IoOp* op) {
  std::vector<IoOp*> done;
  ASSERT_TRUE(ring.Wait(1, &done).ok());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0], op);
  EXPECT_EQ(ring.in_flight(), 0u);
}

// Reads `size_bytes` of `fd` with ops of kOpBytes, keeping up to the ring's
// depth in flight. With a pool, each op reads into a pool buffer (fixed when
// the pool is registered) that is copied out; without, straight into place.
std::string ReadAllWithRing(Ring& ring, int fd, uint64_t size_bytes, BufferPool* pool) {
  std::string out(size_bytes, '\0');
  std::vector<IoOp> ops(ring.depth());
  std::vector<IoOp*> free_ops;
  for (IoOp& op : ops) free_ops.push_back(&op);
  uint64_t next_offset = 0;
  uint64_t finished_bytes = 0;
  std::vector<IoOp*> done;
  while (finished_bytes < size_bytes) {
    while (next_offset < size_bytes && !free_ops.empty()) {
      IoOp* op = free_ops.back();
      free_ops.pop_back();
      uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kOpBytes, size_bytes - next_offset));
      *op = ReadOp(fd, reinterpret_cast<uint8_t*>(&out[next_offset]), len, next_offset);
      if (pool != nullptr) {
        std::optional<unsigned> index = pool->Acquire();
        EXPECT_TRUE(index.has_value());
        op->buf = pool->data(*index);
        op->buf_index = pool->registered() ? static_cast<int>(*index) : -1;
        op->tag = *index;
      }
      ring.Queue(op);
      next_offset += len;
    }
    EXPECT_LE(ring.in_flight(), ring.depth());
    done.clear();
    Status status = ring.Wait(1, &done);
    EXPECT_TRUE(status.ok()) << status.ToString();
    if (!status.ok()) break;
    for (IoOp* op : done) {
      EXPECT_EQ(op->result, 0) << IoOpStatus(*op, "test file").ToString();
      EXPECT_EQ(op->done_bytes, op->len);
      if (pool != nullptr) {
        std::memcpy(&out[op->offset], op->buf, op->len);
        pool->Release(static_cast<unsigned>(op->tag));
      }
      finished_bytes += op->len;
      free_ops.push_back(op);
    }
  }
  EXPECT_EQ(ring.in_flight(), 0u);
  return out;
}

class RingReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("source");
    data_ = testing::RandomBytes(kFileBytes, 42);
    testing::WriteWholeFile(path_, data_);
  }
  TempDir dir_;
  std::string path_;
  std::string data_;
};

TEST_F(RingReadTest, ReadsIntoPlainBuffers) {
  std::unique_ptr<Ring> ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  Result<File> file = File::OpenRead(path_, false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string got = ReadAllWithRing(*ring, file->fd(), kFileBytes, nullptr);
  EXPECT_TRUE(got == testing::PreadBytes(path_, 0, kFileBytes));
}

TEST_F(RingReadTest, ReadsIntoRegisteredBuffers) {
  std::unique_ptr<Ring> ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  Result<BufferPool> pool = BufferPool::Create(kOpBytes, kDepth);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  Status registered = pool->Register(*ring);
  if (!registered.ok()) GTEST_SKIP() << registered.ToString();
  Result<File> file = File::OpenRead(path_, false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string got = ReadAllWithRing(*ring, file->fd(), kFileBytes, &pool.value());
  EXPECT_TRUE(got == data_);
  EXPECT_EQ(pool->available(), kDepth);
}

TEST_F(RingReadTest, ReadsWithoutSingleIssuer) {
  std::unique_ptr<Ring> ring = MakeRing(8, false);
  ASSERT_NE(ring, nullptr);
  EXPECT_EQ(ring->setup_flags() & IORING_SETUP_DEFER_TASKRUN, 0u);
  Result<File> file = File::OpenRead(path_, false);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(ReadAllWithRing(*ring, file->fd(), 8 * kMiB, nullptr) == data_.substr(0, 8 * kMiB));
}

TEST_F(RingReadTest, DirectReadIntoPoolBuffers) {
  std::unique_ptr<Ring> ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  Result<File> file = File::OpenRead(path_, true);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  if (!file->direct()) GTEST_SKIP() << "no O_DIRECT for files under /var/tmp";
  // Drop the cached pages so the timing below is of the disk.
  ASSERT_EQ(posix_fadvise(file->fd(), 0, 0, POSIX_FADV_DONTNEED), 0);
  Result<BufferPool> pool = BufferPool::Create(kOpBytes, kDepth);
  ASSERT_TRUE(pool.ok());
  // Over RLIMIT_MEMLOCK, fall back to unregistered buffers as the engine does.
  Status registered = pool->Register(*ring);
  if (!registered.ok()) std::printf("unregistered buffers: %s\n", registered.ToString().c_str());
  ASSERT_TRUE(registered.ok() || registered.code() == Code::kNoMemory);
  auto start = std::chrono::steady_clock::now();
  std::string got = ReadAllWithRing(*ring, file->fd(), kFileBytes, &pool.value());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(got == data_);
  std::printf("O_DIRECT ring read: %.0f MiB in %.1f ms, %.2f GB/s (depth %u, %u KiB ops, %s)\n",
              kFileBytes / double(kMiB), seconds * 1e3, kFileBytes / seconds / 1e9, kDepth,
              kOpBytes / 1024, pool->registered() ? "registered" : "unregistered");
}

TEST_F(RingReadTest, RegisteredFileAndFixedBufferOffset) {
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  Result<File> file = File::OpenRead(path_, false);
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE(ring->RegisterFiles({file->fd()}).ok());
  Result<BufferPool> pool = BufferPool::Create(kOpBytes, 1);
  ASSERT_TRUE(pool.ok());
  Status registered = pool->Register(*ring);
  if (!registered.ok()) GTEST_SKIP() << registered.ToString();
  // A fixed op may target any address inside its registered buffer.
  IoOp op = ReadOp(0, pool->data(0) + 4096, 64 * 1024, 3 * kMiB);
  op.fixed_file = true;
  op.buf_index = 0;
  ring->Queue(&op);
  WaitOne(*ring, &op);
  EXPECT_EQ(op.result, 0);
  EXPECT_EQ(std::memcmp(pool->data(0) + 4096, &data_[3 * kMiB], 64 * 1024), 0);
}

TEST(RingTest, CreatePrefersDeferTaskrun) {
  std::unique_ptr<Ring> ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  std::printf("setup flags 0x%x, SQ depth %u, CQ %u\n", ring->setup_flags(), ring->depth(),
              ring->cq_entries());
  EXPECT_EQ(ring->depth(), kDepth);
  EXPECT_GE(ring->cq_entries(), 2 * kDepth);
  EXPECT_EQ(ring->in_flight(), 0u);
  if ((ring->setup_flags() & IORING_SETUP_DEFER_TASKRUN) == 0) {
    GTEST_SKIP() << "kernel refused SINGLE_ISSUER|DEFER_TASKRUN; running with fallback flags";
  }
  EXPECT_NE(ring->setup_flags() & IORING_SETUP_SINGLE_ISSUER, 0u);
}

TEST(RingTest, RejectsBadDepth) {
  RingOptions options;
  options.depth = 0;
  EXPECT_EQ(Ring::Create(options).status().code(), Code::kInvalidArgument);
}

// Writes 8 MiB to a new file in 1 MiB ops, all in flight at once (O_DIRECT
// when `direct`), fsyncs it and checks the bytes.
void WriteEightMiBAndFsync(Ring& ring, bool direct) {
  TempDir dir;
  std::string path = dir.Join("written");
  Result<File> file = File::OpenWrite(path, O_RDWR | O_CREAT | O_EXCL, direct);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  Result<BufferPool> pool = BufferPool::Create(kMiB, 8);
  ASSERT_TRUE(pool.ok());
  bool fixed = pool->Register(ring).ok();
  std::string data = testing::RandomBytes(8 * kMiB, 7);
  std::vector<IoOp> ops(8);
  for (unsigned i = 0; i < 8; ++i) {
    std::memcpy(pool->data(i), &data[i * kMiB], kMiB);
    ops[i] = ReadOp(file->fd(), pool->data(i), kMiB, i * kMiB);
    ops[i].kind = IoOp::kWrite;
    ops[i].buf_index = fixed ? static_cast<int>(i) : -1;
    ring.Queue(&ops[i]);
  }
  std::vector<IoOp*> done;
  ASSERT_TRUE(ring.Wait(8, &done).ok());
  ASSERT_EQ(done.size(), 8u);
  for (IoOp* op : done) EXPECT_EQ(op->result, 0) << IoOpStatus(*op, path).ToString();

  IoOp sync;
  sync.kind = IoOp::kFsync;
  sync.fd = file->fd();
  ring.Queue(&sync);
  WaitOne(ring, &sync);
  EXPECT_EQ(sync.result, 0);
  EXPECT_TRUE(IoOpStatus(sync, path).ok());
  EXPECT_TRUE(testing::PreadBytes(path, 0, 8 * kMiB) == data);
}

TEST(RingTest, WriteThenFsync) {
  std::unique_ptr<Ring> ring = MakeRing(8);
  ASSERT_NE(ring, nullptr);
  WriteEightMiBAndFsync(*ring, true);
}

// A ring that writes one file at a time keeps one kernel file worker: the
// bound is in force (the kernel reports it back), and extending O_DIRECT
// writes, all in flight, still complete with the right bytes.
TEST(RingTest, MaxFileWorkersBoundsTheKernelsFileWorkers) {
  Result<std::unique_ptr<Ring>> ring = Ring::Create({.depth = 8, .max_file_workers = 1});
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  unsigned now[2] = {0, 0};  // zeros read the current bounds without changing them
  int ret = io_uring_register_iowq_max_workers((*ring)->raw(), now);
  if (ret == -EINVAL || ret == -ENOSYS) {
    GTEST_SKIP() << "kernel has no IORING_REGISTER_IOWQ_MAX_WORKERS (5.15+)";
  }
  ASSERT_EQ(ret, 0) << std::strerror(-ret);
  EXPECT_EQ(now[0], 1u) << "bounded (file) workers";
  EXPECT_NE(now[1], 0u) << "unbounded (socket) workers are left to the kernel";
  WriteEightMiBAndFsync(**ring, true);
}

class RingEofTest : public ::testing::Test {
 protected:
  // 3.5 MiB: not a multiple of the 1 MiB op length.
  static constexpr uint64_t kSize = 3 * kMiB + kMiB / 2;
  void SetUp() override {
    path_ = dir_.Join("tail");
    data_ = testing::RandomBytes(kSize, 9);
    testing::WriteWholeFile(path_, data_);
    ring_ = MakeRing(4);
    ASSERT_NE(ring_, nullptr);
    buf_.assign(kMiB, 0);
  }
  TempDir dir_;
  std::string path_;
  std::string data_;
  std::unique_ptr<Ring> ring_;
  std::vector<uint8_t> buf_;
};

TEST_F(RingEofTest, ReadBeyondEndIsNoData) {
  Result<File> file = File::OpenRead(path_, false);
  ASSERT_TRUE(file.ok());
  IoOp op = ReadOp(file->fd(), buf_.data(), 4096, 8 * kMiB);
  ring_->Queue(&op);
  WaitOne(*ring_, &op);
  EXPECT_EQ(op.result, -ENODATA);
  EXPECT_EQ(op.done_bytes, 0u);
  Status status = IoOpStatus(op, path_);
  EXPECT_EQ(status.code(), Code::kIOError);
  EXPECT_NE(status.message().find("unexpected end of file at offset 8388608"), std::string::npos)
      << status.ToString();
}

TEST_F(RingEofTest, LastOpAcrossEndIsNoDataWithPartialProgress) {
  for (bool direct : {false, true}) {
    SCOPED_TRACE(direct ? "O_DIRECT" : "buffered");
    Result<File> file = File::OpenRead(path_, direct);
    ASSERT_TRUE(file.ok());
    Result<BufferPool> pool = BufferPool::Create(kMiB, 1);  // aligned for O_DIRECT
    ASSERT_TRUE(pool.ok());
    IoOp op = ReadOp(file->fd(), pool->data(0), kOpBytes, 3 * kMiB);
    ring_->Queue(&op);
    WaitOne(*ring_, &op);
    // The kernel returned the 512 KiB before EOF; the ring requeued the rest
    // and got 0 bytes: end of file, with the progress kept in done_bytes.
    EXPECT_EQ(op.result, -ENODATA);
    EXPECT_EQ(op.done_bytes, kMiB / 2);
    EXPECT_EQ(std::memcmp(pool->data(0), &data_[3 * kMiB], kMiB / 2), 0);
    EXPECT_NE(IoOpStatus(op, path_).message().find("at offset 3670016"), std::string::npos);

    IoOp exact = ReadOp(file->fd(), pool->data(0), kMiB / 2, 3 * kMiB);
    ring_->Queue(&exact);
    WaitOne(*ring_, &exact);
    EXPECT_EQ(exact.result, 0);
    EXPECT_EQ(exact.done_bytes, kMiB / 2);
    EXPECT_EQ(std::memcmp(pool->data(0), &data_[3 * kMiB], kMiB / 2), 0);
  }
}

// A pipe returns what it holds, so a read of 32 KiB with 10 KiB buffered comes
// back short; the ring must requeue the remainder until the writer sends it.
TEST(RingTest, ShortReadIsRequeued) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::string data = testing::RandomBytes(32 * 1024, 11);
  ASSERT_EQ(write(fds[1], data.data(), 10 * 1024), 10 * 1024);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(write(fds[1], &data[10 * 1024], 12 * 1024), 12 * 1024);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(write(fds[1], &data[22 * 1024], 10 * 1024), 10 * 1024);
  });
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  std::vector<uint8_t> buf(32 * 1024);
  IoOp op = ReadOp(fds[0], buf.data(), 32 * 1024, 0);
  ring->Queue(&op);
  WaitOne(*ring, &op);
  writer.join();
  EXPECT_EQ(op.result, 0);
  EXPECT_EQ(op.done_bytes, 32u * 1024);
  EXPECT_EQ(std::memcmp(buf.data(), data.data(), data.size()), 0);

  // The writer goes away after 5 more bytes: a short read, then end of file.
  ASSERT_EQ(write(fds[1], "tail!", 5), 5);
  close(fds[1]);
  ring->Queue(&op);
  WaitOne(*ring, &op);
  EXPECT_EQ(op.result, -ENODATA);
  EXPECT_EQ(op.done_bytes, 5u);
  close(fds[0]);
}

TEST(RingTest, WaitZeroDoesNotBlock) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  uint8_t byte = 0;
  IoOp op = ReadOp(fds[0], &byte, 1, 0);
  ring->Queue(&op);
  std::vector<IoOp*> done;
  ASSERT_TRUE(ring->Wait(0, &done).ok());
  EXPECT_TRUE(done.empty());
  EXPECT_EQ(ring->in_flight(), 1u);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  WaitOne(*ring, &op);
  EXPECT_EQ(op.result, 0);
  EXPECT_EQ(byte, 'x');
  close(fds[0]);
  close(fds[1]);
}

// Destroying a ring with an op that will never complete must not hang: the
// destructor cancels and reaps it.
TEST(RingTest, DestructorCancelsPendingOps) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  uint8_t byte = 0;
  IoOp op = ReadOp(fds[0], &byte, 1, 0);
  {
    std::unique_ptr<Ring> ring = MakeRing(4);
    ASSERT_NE(ring, nullptr);
    ring->Queue(&op);
    std::vector<IoOp*> done;
    ASSERT_TRUE(ring->Wait(0, &done).ok());
  }
  close(fds[0]);
  close(fds[1]);
}

// With SINGLE_ISSUER the kernel refuses every thread but the creator: Wait()
// says so, and the op is still there for the right thread.
TEST(RingTest, WrongThreadIsReported) {
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  if ((ring->setup_flags() & IORING_SETUP_SINGLE_ISSUER) == 0) {
    GTEST_SKIP() << "ring was created without IORING_SETUP_SINGLE_ISSUER";
  }
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  ASSERT_EQ(write(fds[1], "y", 1), 1);
  uint8_t byte = 0;
  IoOp op = ReadOp(fds[0], &byte, 1, 0);
  std::thread other([&] {
    ring->Queue(&op);
    std::vector<IoOp*> done;
    Status status = ring->Wait(1, &done);
    EXPECT_EQ(status.code(), Code::kIOError);
    EXPECT_NE(status.message().find("SINGLE_ISSUER"), std::string::npos) << status.ToString();
  });
  other.join();
  WaitOne(*ring, &op);
  EXPECT_EQ(op.result, 0);
  EXPECT_EQ(byte, 'y');
  close(fds[0]);
  close(fds[1]);
}

TEST(RingTest, QueueMoreThanSqDepthFlushes) {
  TempDir dir;
  std::string path = dir.Join("small");
  std::string data = testing::RandomBytes(64 * 4096, 12);
  testing::WriteWholeFile(path, data);
  Result<File> file = File::OpenRead(path, false);
  ASSERT_TRUE(file.ok());
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  // Twice the SQ size: Queue() must submit when the SQ fills.
  std::vector<uint8_t> buf(8 * 4096);
  std::vector<IoOp> ops(8);
  for (unsigned i = 0; i < 8; ++i) {
    ops[i] = ReadOp(file->fd(), &buf[i * 4096], 4096, i * 8192);
    ring->Queue(&ops[i]);
  }
  EXPECT_EQ(ring->in_flight(), 8u);
  std::vector<IoOp*> done;
  ASSERT_TRUE(ring->Wait(8, &done).ok());
  EXPECT_EQ(done.size(), 8u);
  for (unsigned i = 0; i < 8; ++i) {
    EXPECT_EQ(ops[i].result, 0);
    EXPECT_EQ(std::memcmp(&buf[i * 4096], &data[i * 8192], 4096), 0);
  }
}

TEST(RingFaultTest, HookFailsThirdRead) {
  TempDir dir;
  std::string path = dir.Join("faulty");
  std::string data = testing::RandomBytes(5 * 4096, 13);
  testing::WriteWholeFile(path, data);
  Result<File> file = File::OpenRead(path, false);
  ASSERT_TRUE(file.ok());
  std::unique_ptr<Ring> ring = MakeRing(8);
  ASSERT_NE(ring, nullptr);
  int reads = 0;
  ring->SetFaultHook([&reads](const IoOp& op) {
    return op.kind == IoOp::kRead && ++reads == 3 ? -EIO : 0;
  });
  std::vector<uint8_t> buf(5 * 4096);
  std::vector<IoOp> ops(5);
  for (unsigned i = 0; i < 5; ++i) {
    ops[i] = ReadOp(file->fd(), &buf[i * 4096], 4096, i * 4096);
    ring->Queue(&ops[i]);
  }
  // The injected op never reaches the kernel, but is owed to the caller.
  EXPECT_EQ(ring->in_flight(), 5u);
  std::vector<IoOp*> done;
  ASSERT_TRUE(ring->Wait(5, &done).ok());
  ASSERT_EQ(done.size(), 5u);
  EXPECT_EQ(done[0], &ops[2]);  // injected ops come back first
  for (unsigned i = 0; i < 5; ++i) EXPECT_EQ(ops[i].result, i == 2 ? -EIO : 0) << i;
  Status status = IoOpStatus(ops[2], path);
  EXPECT_EQ(status.code(), Code::kIOError);
  EXPECT_NE(status.message().find("read " + path + " at offset 8192"), std::string::npos)
      << status.ToString();
  EXPECT_NE(status.message().find(std::strerror(EIO)), std::string::npos);
}

// An op failed at queue time counts as in flight until Wait() returns it: a
// caller that waits while in_flight() > 0 sees its error.
TEST(RingFaultTest, OpFailedAtQueueTimeIsInFlightUntilReturned) {
  TempDir dir;
  std::string path = dir.Join("alone");
  testing::WriteWholeFile(path, testing::RandomBytes(4096, 14));
  Result<File> file = File::OpenRead(path, false);
  ASSERT_TRUE(file.ok());
  std::unique_ptr<Ring> ring = MakeRing(4);
  ASSERT_NE(ring, nullptr);
  ring->SetFaultHook([](const IoOp&) { return -EIO; });
  std::vector<uint8_t> buf(4096);
  IoOp op = ReadOp(file->fd(), buf.data(), 4096, 0);
  ring->Queue(&op);
  EXPECT_EQ(ring->in_flight(), 1u);
  std::vector<IoOp*> done;
  while (ring->in_flight() > 0) ASSERT_TRUE(ring->Wait(1, &done).ok());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0], &op);
  EXPECT_EQ(op.result, -EIO);
  EXPECT_EQ(ring->in_flight(), 0u);
}

TEST(RingFaultTest, ParsesSpecs) {
  IoOp read;
  IoOp write;
  write.kind = IoOp::kWrite;
  IoOp sync;
  sync.kind = IoOp::kFsync;

  Result<Ring::FaultHook> hook = MakeFaultHook("write:ENOSPC:2");
  ASSERT_TRUE(hook.ok()) << hook.status().ToString();
  EXPECT_EQ((*hook)(write), 0);
  EXPECT_EQ((*hook)(read), 0);
  EXPECT_EQ((*hook)(write), -ENOSPC);
  EXPECT_EQ((*hook)(write), -ENOSPC);  // every later one too
  EXPECT_EQ((*hook)(read), 0);

  Result<Ring::FaultHook> multi = MakeFaultHook("read:5:1,fsync:EDQUOT:2,read:ENODATA:1");
  ASSERT_TRUE(multi.ok()) << multi.status().ToString();
  EXPECT_EQ((*multi)(read), -5);
  EXPECT_EQ((*multi)(sync), 0);
  EXPECT_EQ((*multi)(sync), -EDQUOT);

  // Copies share the counters, as every Ring shares the DP420_FAULT hook.
  Result<Ring::FaultHook> shared = MakeFaultHook("read:EIO:2");
  ASSERT_TRUE(shared.ok());
  Ring::FaultHook copy = shared.value();
  EXPECT_EQ(copy(read), 0);
  EXPECT_EQ((*shared)(read), -EIO);

  for (const char* bad : {"", "read", "read:EIO", "read:EIO:0", "read:EIO:x", "disk:EIO:1",
                          "read:EFOO:1", "read:0:1", "read:EIO:1,", "read:EIO:1:2"}) {
    EXPECT_EQ(MakeFaultHook(bad).status().code(), Code::kInvalidArgument) << bad;
  }
}

// What a child test exits with when all its checks passed; a filter that
// matches nothing exits 0 and so cannot pass by accident.
constexpr int kChildPassed = 42;

// Re-runs this binary with DP420_FAULT set, limited to one disabled test.
int RunChild(const std::string& test, const std::string& fault) {
  std::string filter = "--gtest_filter=RingFaultEnvChild.DISABLED_" + test;
  std::string exe = "/proc/self/exe";
  std::vector<char*> argv = {exe.data(), filter.data(),
                             const_cast<char*>("--gtest_also_run_disabled_tests"), nullptr};
  std::vector<std::string> env_strings = {"DP420_FAULT=" + fault};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "DP420_FAULT=", 12) != 0) env_strings.push_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()) != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(RingFaultTest, EnvironmentVariableInjectsAcrossRings) {
  EXPECT_EQ(RunChild("SecondReadFails", "read:EIO:2"), kChildPassed);
  EXPECT_EQ(RunChild("MalformedSpecFailsCreate", "read:EBOGUS:1"), kChildPassed);
}

// Run only by EnvironmentVariableInjectsAcrossRings, with DP420_FAULT=read:EIO:2.
TEST(RingFaultEnvChild, DISABLED_SecondReadFails) {
  {
    TempDir dir;  // scoped: removed before std::exit() below
    std::string path = dir.Join("env");
    testing::WriteWholeFile(path, testing::RandomBytes(4096, 14));
    Result<File> file = File::OpenRead(path, false);
    ASSERT_TRUE(file.ok());
    std::unique_ptr<Ring> first = MakeRing(4);
    std::unique_ptr<Ring> second = MakeRing(4);
    ASSERT_NE(first, nullptr);
    ASSERT_NE(second, nullptr);
    std::vector<uint8_t> buf(4096);
    IoOp op = ReadOp(file->fd(), buf.data(), 4096, 0);
    first->Queue(&op);
    WaitOne(*first, &op);
    EXPECT_EQ(op.result, 0);
    second->Queue(&op);  // the process's second read, on another ring
    WaitOne(*second, &op);
    EXPECT_EQ(op.result, -EIO);
    first->Queue(&op);
    WaitOne(*first, &op);
    EXPECT_EQ(op.result, -EIO);
  }
  if (!HasFailure()) std::exit(kChildPassed);
}

// Run only by EnvironmentVariableInjectsAcrossRings, with a malformed spec.
TEST(RingFaultEnvChild, DISABLED_MalformedSpecFailsCreate) {
  Result<std::unique_ptr<Ring>> ring = Ring::Create(RingOptions{});
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.status().code(), Code::kInvalidArgument);
  EXPECT_NE(ring.status().message().find("DP420_FAULT"), std::string::npos);
  if (!HasFailure()) std::exit(kChildPassed);
}

TEST(RingTest, IoOpStatusMapsErrno) {
  IoOp op;
  op.kind = IoOp::kWrite;
  op.offset = 4096;
  op.done_bytes = 512;
  op.result = -ENOSPC;
  Status status = IoOpStatus(op, "repo/pack");
  EXPECT_EQ(status.code(), Code::kNoSpace);
  EXPECT_NE(status.message().find("write repo/pack at offset 4608"), std::string::npos)
      << status.ToString();
  op.kind = IoOp::kFsync;
  op.result = -EIO;
  EXPECT_EQ(IoOpStatus(op, "repo/pack").code(), Code::kIOError);
  op.result = 0;
  EXPECT_TRUE(IoOpStatus(op, "repo/pack").ok());
}

}  // namespace
}  // namespace dp420::io
