// Tests of io/buffer_pool.h: layout, free-list, registration and the
// RLIMIT_MEMLOCK failure a non-root user meets.
#include "io/buffer_pool.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "io/ring.h"
#include "tests/io/test_util.h"

namespace dp420::io {
namespace {

constexpr size_t kMiB = 1024 * 1024;

TEST(BufferPoolTest, LayoutIsHugePageAligned) {
  Result<BufferPool> pool = BufferPool::Create(kMiB, 5);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  EXPECT_EQ(pool->count(), 5u);
  EXPECT_EQ(pool->buffer_bytes(), kMiB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->data(0)) % (2 * kMiB), 0u);
  for (unsigned i = 0; i < pool->count(); ++i) {
    EXPECT_EQ(pool->data(i), pool->data(0) + i * kMiB);
    EXPECT_EQ(pool->data(i)[0], 0);  // pre-faulted, zero-filled
    std::memset(pool->data(i), static_cast<int>(i), kMiB);
  }
  EXPECT_EQ(pool->data(4)[kMiB - 1], 4);
  EXPECT_FALSE(pool->registered());
}

// Reads AnonHugePages (kB) of the mapping that starts at `base`, or -1.
long AnonHugePagesKb(const void* base) {
  char start[32];
  std::snprintf(start, sizeof(start), "%lx-", reinterpret_cast<unsigned long>(base));
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_mapping = false;
  while (std::getline(smaps, line)) {
    if (line.rfind(start, 0) == 0) in_mapping = true;
    if (in_mapping && line.rfind("AnonHugePages:", 0) == 0) {
      return std::strtol(line.c_str() + std::strlen("AnonHugePages:"), nullptr, 10);
    }
  }
  return -1;
}

TEST(BufferPoolTest, BackedByHugePagesWhenAvailable) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  std::getline(thp, mode);
  if (mode.empty() || mode.find("[never]") != std::string::npos) {
    GTEST_SKIP() << "transparent huge pages are disabled";
  }
  Result<BufferPool> pool = BufferPool::Create(kMiB, 8);
  ASSERT_TRUE(pool.ok());
  long huge_kb = AnonHugePagesKb(pool->data(0));
  ASSERT_GE(huge_kb, 0) << "mapping not found in /proc/self/smaps";
  if (huge_kb == 0) GTEST_SKIP() << "the kernel had no free huge pages";
  EXPECT_EQ(huge_kb, 8 * 1024);
}

TEST(BufferPoolTest, AcquireAndRelease) {
  Result<BufferPool> pool = BufferPool::Create(64 * 1024, 4);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  EXPECT_EQ(pool->available(), 4u);
  std::set<unsigned> taken;
  for (unsigned i = 0; i < 4; ++i) {
    std::optional<unsigned> index = pool->Acquire();
    ASSERT_TRUE(index.has_value());
    EXPECT_TRUE(taken.insert(*index).second);
  }
  EXPECT_EQ(taken, (std::set<unsigned>{0, 1, 2, 3}));
  EXPECT_FALSE(pool->Acquire().has_value());
  EXPECT_EQ(pool->available(), 0u);
  pool->Release(2);
  EXPECT_EQ(pool->available(), 1u);
  EXPECT_EQ(pool->Acquire(), std::optional<unsigned>(2));
}

TEST(BufferPoolTest, MoveKeepsMapping) {
  Result<BufferPool> created = BufferPool::Create(4096, 2);
  ASSERT_TRUE(created.ok());
  BufferPool pool = std::move(created).value();
  uint8_t* base = pool.data(0);
  BufferPool other = std::move(pool);
  EXPECT_EQ(other.data(0), base);
  EXPECT_EQ(pool.count(), 0u);  // NOLINT: checking the moved-from state
  other.data(1)[4095] = 7;
}

TEST(BufferPoolTest, RejectsBadSizes) {
  EXPECT_EQ(BufferPool::Create(1000, 4).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BufferPool::Create(0, 4).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(BufferPool::Create(4096, 0).status().code(), Code::kInvalidArgument);
}

TEST(BufferPoolDeathTest, DoubleReleaseAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Result<BufferPool> pool = BufferPool::Create(4096, 2);
  ASSERT_TRUE(pool.ok());
  std::optional<unsigned> index = pool->Acquire();
  ASSERT_TRUE(index.has_value());
  pool->Release(*index);
  EXPECT_DEATH(pool->Release(*index), "assertion failed");
}

TEST(BufferPoolTest, RegistersWithRing) {
  Result<std::unique_ptr<Ring>> ring = Ring::Create(RingOptions{});
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  Result<BufferPool> pool = BufferPool::Create(kMiB, 4);
  ASSERT_TRUE(pool.ok());
  Status status = pool->Register(**ring);
  if (status.code() == Code::kNoMemory) GTEST_SKIP() << status.ToString();
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_TRUE(pool->registered());
}

// In a child that drops root and lowers RLIMIT_MEMLOCK to 1 MiB, registering
// 4 MiB must fail with kNoMemory naming the limit. Exit codes: 0 pass,
// 10 + n for the n-th failed check.
int MemlockChild() {
  if (setgid(65534) != 0 || setuid(65534) != 0) return 10;
  struct rlimit limit = {kMiB, kMiB};
  if (setrlimit(RLIMIT_MEMLOCK, &limit) != 0) return 11;
  Result<std::unique_ptr<Ring>> ring = Ring::Create(RingOptions{});
  if (!ring.ok()) return 12;
  Result<BufferPool> pool = BufferPool::Create(kMiB, 4);
  if (!pool.ok()) return 13;
  Status status = pool->Register(**ring);
  if (status.code() != Code::kNoMemory) return 14;
  if (status.message().find("RLIMIT_MEMLOCK") == std::string::npos) return 15;
  if (status.message().find("1048576 bytes") == std::string::npos) return 16;
  if (pool->registered()) return 17;
  return 0;
}

TEST(BufferPoolTest, RegisterBeyondMemlockIsNoMemory) {
  if (!testing::IsRoot()) GTEST_SKIP() << "needs root to switch to an unprivileged user";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(MemlockChild());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed check " << WEXITSTATUS(status) - 10;
}

}  // namespace
}  // namespace dp420::io
