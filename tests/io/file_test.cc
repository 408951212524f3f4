// Tests of io/file.h against real files, tmpfs and (as root) a loop device.
#include "io/file.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/io/test_util.h"

namespace dp420::io {
namespace {

using testing::TempDir;

constexpr size_t kMiB = 1024 * 1024;

bool IsTmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST(FileTest, OpenReadRegularFile) {
  TempDir dir;
  std::string path = dir.Join("data");
  testing::WriteWholeFile(path, testing::RandomBytes(12345, 1));
  Result<File> file = File::OpenRead(path, false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_GE(file->fd(), 0);
  EXPECT_FALSE(file->direct());
  EXPECT_EQ(file->path(), path);
  EXPECT_TRUE(file->info().is_regular);
  EXPECT_FALSE(file->info().is_block_device);
  EXPECT_EQ(file->info().size_bytes, 12345u);
}

TEST(FileTest, OpenReadDirectoryIsInvalidArgument) {
  TempDir dir;
  Result<File> file = File::OpenRead(dir.path(), true);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), Code::kInvalidArgument);
  EXPECT_NE(file.status().message().find(dir.path()), std::string::npos);
  EXPECT_NE(file.status().message().find("is not a regular file or block device"),
            std::string::npos);
}

TEST(FileTest, OpenReadMissingIsNotFound) {
  TempDir dir;
  std::string path = dir.Join("missing");
  Result<File> file = File::OpenRead(path, false);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), Code::kNotFound);
  EXPECT_NE(file.status().message().find(path), std::string::npos);
}

TEST(FileTest, OpenReadFifoIsInvalidArgumentWithoutBlocking) {
  TempDir dir;
  std::string path = dir.Join("fifo");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  Result<File> file = File::OpenRead(path, false);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), Code::kInvalidArgument);
}

TEST(FileTest, ProbeDiskFileReportsDirectAlignment) {
  TempDir dir;
  std::string path = dir.Join("data");
  testing::WriteWholeFile(path, testing::RandomBytes(64 * 1024, 2));
  Result<File> file = File::OpenRead(path, true);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  if (file->info().dio_mem_align == 0) {
    GTEST_SKIP() << "the file system under /var/tmp reports no STATX_DIOALIGN";
  }
  std::printf("/var/tmp: dio_mem_align %u, dio_offset_align %u\n", file->info().dio_mem_align,
              file->info().dio_offset_align);
  EXPECT_GT(file->info().dio_offset_align, 0u);
  EXPECT_TRUE(file->direct());
  EXPECT_NE(fcntl(file->fd(), F_GETFL) & O_DIRECT, 0);
}

TEST(FileTest, ProbeTmpfsFileIsBuffered) {
  if (!IsTmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs here";
  std::string path = "/dev/shm/dp420_io_test." + std::to_string(getpid());
  testing::WriteWholeFile(path, testing::RandomBytes(8192, 3));
  Result<File> file = File::OpenRead(path, true);
  unlink(path.c_str());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->info().dio_mem_align, 0u);
  EXPECT_EQ(file->info().dio_offset_align, 0u);
  EXPECT_FALSE(file->direct());
  EXPECT_EQ(fcntl(file->fd(), F_GETFL) & O_DIRECT, 0);
  EXPECT_EQ(file->info().size_bytes, 8192u);
}

TEST(FileTest, LoopDeviceReportsSizeAndSectorAlignment) {
  if (!testing::IsRoot()) GTEST_SKIP() << "loop devices need root";
  TempDir dir;
  std::string backing = dir.Join("volume.img");
  std::string data = testing::RandomBytes(64 * kMiB, 4);
  testing::WriteWholeFile(backing, data);
  testing::LoopDevice loop(backing);
  if (loop.device().empty()) GTEST_SKIP() << loop.error();

  Result<File> file = File::OpenRead(loop.device(), true);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE(file->info().is_block_device);
  EXPECT_FALSE(file->info().is_regular);
  EXPECT_EQ(file->info().size_bytes, 64 * kMiB);
  EXPECT_GE(file->info().dio_mem_align, 512u);
  EXPECT_EQ(file->info().dio_mem_align, file->info().dio_offset_align);
  EXPECT_TRUE(file->direct());
  // A plain aligned pread through the O_DIRECT descriptor sees the backing data.
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 1 << 20), 0);
  ASSERT_TRUE(file->ReadAt(8 * kMiB, buf, 1 << 20).ok());
  EXPECT_EQ(std::string(static_cast<char*>(buf), 1 << 20), data.substr(8 * kMiB, 1 << 20));
  std::free(buf);
}

TEST(FileTest, ReadAtWriteAtAndEndOfFile) {
  TempDir dir;
  std::string path = dir.Join("meta");
  Result<File> file = File::OpenWrite(path, O_RDWR | O_CREAT | O_EXCL, false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  std::string data = testing::RandomBytes(10000, 5);
  ASSERT_TRUE(file->WriteAt(100, data.data(), data.size()).ok());
  ASSERT_TRUE(file->Sync().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE(file->ReadAt(100, back.data(), back.size()).ok());
  EXPECT_EQ(back, data);

  Status past_end = file->ReadAt(10000, back.data(), 200);
  EXPECT_EQ(past_end.code(), Code::kCorruption);
  EXPECT_NE(past_end.message().find(path), std::string::npos);
  EXPECT_NE(past_end.message().find("offset 10100"), std::string::npos) << past_end.ToString();

  ASSERT_TRUE(file->Truncate(4096).ok());
  ASSERT_TRUE(file->Refresh().ok());
  EXPECT_EQ(file->info().size_bytes, 4096u);
}

TEST(FileTest, OpenWriteCreatesMode0600AndRespectsExcl) {
  TempDir dir;
  std::string path = dir.Join("out");
  mode_t old_mask = umask(022);
  Result<File> file = File::OpenWrite(path, O_CREAT | O_EXCL, false);
  umask(old_mask);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_NE(fcntl(file->fd(), F_GETFL) & O_WRONLY, 0);  // access mode added when missing

  Result<File> again = File::OpenWrite(path, O_WRONLY | O_CREAT | O_EXCL, true);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kExists);
}

TEST(FileTest, OpenWriteDirectOnDiskAndBufferedOnTmpfs) {
  TempDir dir;
  Result<File> disk = File::OpenWrite(dir.Join("direct"), O_WRONLY | O_CREAT | O_EXCL, true);
  ASSERT_TRUE(disk.ok()) << disk.status().ToString();
  EXPECT_EQ(disk->direct(), disk->info().dio_mem_align != 0);
  if (!IsTmpfs("/dev/shm")) return;
  std::string shm = "/dev/shm/dp420_io_test_w." + std::to_string(getpid());
  Result<File> tmpfs = File::OpenWrite(shm, O_WRONLY | O_CREAT | O_EXCL, true);
  unlink(shm.c_str());
  ASSERT_TRUE(tmpfs.ok()) << tmpfs.status().ToString();
  EXPECT_FALSE(tmpfs->direct());
}

TEST(FileTest, AdoptOwnsDescriptor) {
  TempDir dir;
  std::string path = dir.Join("adopted");
  testing::WriteWholeFile(path, "hello");
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  {
    File file = File::Adopt(fd, path, false);
    EXPECT_EQ(file.fd(), fd);
    EXPECT_EQ(file.info().size_bytes, 5u);
    File moved = std::move(file);
    EXPECT_EQ(file.fd(), -1);  // NOLINT: checking the moved-from state
    EXPECT_EQ(moved.fd(), fd);
  }
  EXPECT_EQ(fcntl(fd, F_GETFD), -1);  // closed exactly once, by `moved`
}

TEST(FileTest, WriteFileAtomicAndReadFile) {
  TempDir dir;
  std::string path = dir.Join("manifest.json");
  ASSERT_TRUE(WriteFileAtomic(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "second version").ok());
  Result<std::string> data = ReadFile(path);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data.value(), "second version");
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_FALSE(Exists(path + ".tmp." + std::to_string(getpid())));

  std::string large = testing::RandomBytes(300 * 1024, 6);
  ASSERT_TRUE(WriteFileAtomic(path, large).ok());
  EXPECT_EQ(ReadFile(path).value(), large);
}

TEST(FileTest, WriteFileAtomicRemovesTempOnFailure) {
  TempDir dir;
  // Renaming a file over a non-empty directory fails after the temp is written.
  std::string target = dir.Join("busy");
  ASSERT_TRUE(MakeDirs(target + "/child").ok());
  Status status = WriteFileAtomic(target, "data");
  EXPECT_FALSE(status.ok());
  EXPECT_FALSE(Exists(target + ".tmp." + std::to_string(getpid())));

  Status missing_dir = WriteFileAtomic(dir.Join("no/such/dir/file"), "data");
  EXPECT_EQ(missing_dir.code(), Code::kNotFound);
}

// Names in `dir` that contain ".tmp.".
std::vector<std::string> TempNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.find(".tmp.") != std::string::npos) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(FileTest, WriteFileAtomicLeavesNoTempAndRemovesStaleOnes) {
  TempDir dir;
  std::string target = dir.Join("busy");
  ASSERT_TRUE(MakeDirs(target + "/child").ok());
  EXPECT_FALSE(WriteFileAtomic(target, "data").ok());
  EXPECT_EQ(TempNames(dir.path()), std::vector<std::string>{});

  // What writers of `config` killed before their rename left; other names
  // (another file's temp, a name that is not ours) stay.
  std::string config = dir.Join("config");
  testing::WriteWholeFile(config + ".tmp.0123456789abcdef", "stale");
  testing::WriteWholeFile(config + ".tmp.fedcba9876543210", "stale");
  testing::WriteWholeFile(dir.Join("other.tmp.0123456789abcdef"), "not config's");
  testing::WriteWholeFile(config + ".tmp.mine", "not dp420's name");
  ASSERT_TRUE(WriteFileAtomic(config, "fresh").ok());
  EXPECT_EQ(ReadFile(config).value(), "fresh");
  EXPECT_EQ(TempNames(dir.path()),
            (std::vector<std::string>{"config.tmp.mine", "other.tmp.0123456789abcdef"}));
}

TEST(FileTest, TempFileGuardRemovesUnlessKept) {
  TempDir dir;
  std::string dropped = dir.Join("dropped.tmp");
  std::string kept = dir.Join("kept.tmp");
  {
    TempFileGuard a(dropped);
    TempFileGuard b(kept);
    testing::WriteWholeFile(dropped, "x");
    testing::WriteWholeFile(kept, "y");
    b.Keep();
  }
  EXPECT_FALSE(Exists(dropped));
  EXPECT_TRUE(Exists(kept));
}

TEST(FileTest, ReadFileErrors) {
  TempDir dir;
  EXPECT_EQ(ReadFile(dir.Join("missing")).status().code(), Code::kNotFound);
  EXPECT_EQ(ReadFile(dir.path()).status().code(), Code::kInvalidArgument);
  testing::WriteWholeFile(dir.Join("empty"), "");
  Result<std::string> empty = ReadFile(dir.Join("empty"));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty.value().empty());
}

TEST(FileTest, ListDirIsSortedWithoutDotsAndEmptyWhenMissing) {
  TempDir dir;
  for (const char* name : {"b", "a", "c.tmp"}) testing::WriteWholeFile(dir.path() + "/" + name, "x");
  EXPECT_EQ(ListDir(dir.path()), (std::vector<std::string>{"a", "b", "c.tmp"}));
  EXPECT_TRUE(ListDir(dir.path() + "/missing").empty());
}

TEST(FileTest, MakeDirsAndSyncDir) {
  TempDir dir;
  std::string nested = dir.Join("a/b//c/");
  ASSERT_TRUE(MakeDirs(nested).ok());
  EXPECT_EQ(ModeOf(dir.Join("a")) & 0777, 0700u);
  EXPECT_EQ(ModeOf(dir.Join("a/b/c")) & 0777, 0700u);
  EXPECT_TRUE(MakeDirs(nested).ok());  // already there
  EXPECT_TRUE(SyncDir(dir.Join("a/b")).ok());

  testing::WriteWholeFile(dir.Join("a/file"), "x");
  Status blocked = MakeDirs(dir.Join("a/file/d"));
  EXPECT_FALSE(blocked.ok());
  EXPECT_EQ(MakeDirs("").code(), Code::kInvalidArgument);
  EXPECT_EQ(SyncDir(dir.Join("missing")).code(), Code::kNotFound);
}

TEST(FileTest, CachedFractionSeesWarmAndColdFiles) {
  TempDir dir;
  std::string path = dir.Join("warm");
  testing::WriteWholeFile(path, testing::RandomBytes(8 << 20, 11));
  Result<File> file = File::OpenRead(path, false);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  double warm = CachedFraction(file->fd(), file->info().size_bytes);
  if (warm < 0) GTEST_SKIP() << "cachestat(2) is not available on this kernel";
  EXPECT_GT(warm, 0.9) << "a file just written is in the page cache";
  ASSERT_EQ(fdatasync(file->fd()), 0);
  ASSERT_EQ(posix_fadvise(file->fd(), 0, 0, POSIX_FADV_DONTNEED), 0);
  EXPECT_LT(CachedFraction(file->fd(), file->info().size_bytes), 0.1);
  EXPECT_EQ(CachedFraction(file->fd(), 0), 1.0);
}

}  // namespace
}  // namespace dp420::io
