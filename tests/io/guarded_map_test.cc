// GuardedMap: a mapped file truncated under the reader reads zeros past the
// new end and records the fault instead of raising SIGBUS; faults elsewhere
// still end the process as they would without it.

#include "io/guarded_map.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "io/file.h"
#include "tests/io/test_util.h"

namespace dp420::io {
namespace {

constexpr uint64_t kSize = 4 << 20;

int MakeFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  EXPECT_GE(fd, 0);
  std::string data(kSize, '\x5a');
  EXPECT_EQ(pwrite(fd, data.data(), data.size(), 0), ssize_t(kSize));
  return fd;
}

// Sums bytes [from, to) of the mapping, touching every page.
uint64_t Sum(const GuardedMap& m, uint64_t from, uint64_t to) {
  uint64_t sum = 0;
  for (uint64_t i = from; i < to; i += 512) sum += m.data()[i];
  return sum;
}

TEST(GuardedMapTest, TruncatedFileReadsZerosAndRecordsTheFault) {
  testing::TempDir dir;
  int fd = MakeFile(dir.Join("f"));
  auto m = GuardedMap::Map(fd, kSize);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(Sum(*m, 0, kSize), (kSize / 512) * 0x5a);
  EXPECT_EQ(m->fault_offset(), kNoFault);
  ASSERT_EQ(ftruncate(fd, kSize / 4), 0);
  EXPECT_EQ(Sum(*m, 0, kSize / 4), (kSize / 4 / 512) * 0x5a);
  EXPECT_EQ(m->fault_offset(), kNoFault);
  EXPECT_EQ(Sum(*m, kSize / 2, kSize), 0u);  // past the end: zeros, no signal
  EXPECT_EQ(m->fault_offset(), kSize / 2);
  EXPECT_EQ(Sum(*m, kSize / 4, kSize / 2), 0u);
  EXPECT_EQ(m->fault_offset(), kSize / 4);  // the lowest fault is kept
  close(fd);
}

TEST(GuardedMapTest, MappingsAreIndependentAndSlotsAreReused) {
  testing::TempDir dir;
  for (int round = 0; round < 3 * int(kMaxGuardedMaps); ++round) {
    int fd = MakeFile(dir.Join("f"));
    auto a = GuardedMap::Map(fd, kSize);
    auto b = GuardedMap::Map(fd, kSize);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->fault_offset(), kNoFault);
    if (round == 0) {
      ASSERT_EQ(ftruncate(fd, 0), 0);
      EXPECT_EQ(Sum(*a, 0, 4096), 0u);
      EXPECT_EQ(a->fault_offset(), 0u);
      EXPECT_EQ(b->fault_offset(), kNoFault);
    }
    close(fd);
  }
}

TEST(GuardedMapDeathTest, FaultOutsideEveryGuardedMappingStillKills) {
  testing::TempDir dir;
  int fd = MakeFile(dir.Join("f"));
  auto guarded = GuardedMap::Map(fd, kSize);  // installs the handler
  ASSERT_TRUE(guarded.ok());
  void* plain = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(plain, MAP_FAILED);
  ASSERT_EQ(ftruncate(fd, 0), 0);
  EXPECT_EXIT(
      {
        volatile uint8_t byte = static_cast<const uint8_t*>(plain)[kSize / 2];
        (void)byte;
        _exit(0);
      },
      ::testing::KilledBySignal(SIGBUS), "");
  munmap(plain, kSize);
  close(fd);
}

}  // namespace
}  // namespace dp420::io
