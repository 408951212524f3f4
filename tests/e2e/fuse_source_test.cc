// A source read through the kernel's FUSE path (tests/tools/fuse_volume.c): a volume
// whose reads fail with EIO at a chosen offset, directly and through a loop device
// (O_DIRECT through the loop driver), and one whose read never answers. Needs root,
// /dev/fuse and the fuse_volume tool (built when libfuse3-dev is installed); each test
// skips with the reason otherwise. Every wait has a deadline, and the guards unmount,
// detach and kill what a test set up also when it fails.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <csignal>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

#ifndef DP420_FUSE_VOLUME_PATH
#define DP420_FUSE_VOLUME_PATH ""
#endif

namespace dp420::e2e {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr uint64_t kVolumeBytes = 24 << 20;
constexpr uint64_t kBlock = 64 << 10;
constexpr uint64_t kExtent = 1 << 20;  // what one read of the backup covers, at most
// A byte inside an extent, not at its start: the error must name where the failed read
// began, the extent holding this byte.
constexpr uint64_t kFaultByte = 13 * kExtent + 5 * kBlock + 777;

bool CanUseFuse(std::string* why) {
  if (std::string(DP420_FUSE_VOLUME_PATH).empty()) {
    *why = "tests/tools/fuse_volume was not built: libfuse3-dev (pkg-config fuse3) was missing "
           "when CMake configured (scripts/install-deps.sh installs it)";
    return false;
  }
  if (!IsRoot()) {
    *why = "needs root (mounts a FUSE file system, attaches loop devices)";
    return false;
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    *why = "no usable /dev/fuse (the fuse kernel module is not loaded?)";
    return false;
  }
  return true;
}

// A read of a small text file (the /status of the mount) with a deadline: the read runs
// in `timeout`, else "" (a hung file system must not hang the test).
std::string ReadWithTimeout(const std::string& path) {
  Result r = RunCommand({"timeout", "-s", "KILL", "5", "cat", path}, {}, seconds(10));
  return r.exit_code == 0 ? r.out : "";
}

// fuse_volume mounted on DIR/mnt, unmounted and killed at the end of its scope.
class FuseVolume {
 public:
  static std::unique_ptr<FuseVolume> Mount(const TempDir& dir, std::string* why) {
    std::string mnt = dir / "mnt";
    Sh("mkdir -p " + ShellQuote(mnt));
    std::unique_ptr<FuseVolume> v(new FuseVolume(mnt, dir / "fuse_volume.err"));
    // Its stderr goes to a file (read by Describe()), not to a pipe nobody reads before
    // it exits.
    v->process_ = Process::Start(
        {"bash", "-c",
         "exec " + ShellQuote(DP420_FUSE_VOLUME_PATH) + " " + ShellQuote(mnt) + " --size " +
             std::to_string(kVolumeBytes) + " --seed 1 2>" + ShellQuote(v->err_log_)});
    auto deadline = std::chrono::steady_clock::now() + seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Exists(v->volume())) return v;
      std::this_thread::sleep_for(milliseconds(20));
    }
    Result r = v->process_->Wait(seconds(1));
    *why = "fuse_volume did not mount within 20 s: " + r.Describe() + "; stderr: " +
           ReadWithTimeout(v->err_log_);
    v->process_.reset();
    return nullptr;
  }

  ~FuseVolume() {
    if (!process_) return;
    // Killing the server aborts the connection: every request still in the kernel ends
    // (ENOTCONN), so nothing stays stuck; then the dead mount goes.
    process_->Kill(SIGKILL);
    process_->Wait(seconds(20));
    RunCommand({"umount", "-l", mnt_}, {}, seconds(20));
  }

  std::string volume() const { return mnt_ + "/volume"; }
  void Control(const std::string& command) const {
    Result r = RunCommand({"timeout", "-s", "KILL", "5", "bash", "-c",
                           "printf %s " + ShellQuote(command) + " > " + ShellQuote(mnt_ + "/control")},
                          {}, seconds(10));
    if (r.exit_code != 0) {
      Fail("fuse_volume control '" + command + "': " + r.Describe() + "\n" + Describe());
    }
  }
  // The server's state for a failure message: running or how it ended (from /proc, not
  // reaped here), its stderr, and what the kernel logged about FUSE lately.
  std::string Describe() const {
    std::string out = "fuse_volume (pid " + std::to_string(process_->pid()) + "): ";
    std::string stat = ReadWithTimeout("/proc/" + std::to_string(process_->pid()) + "/stat");
    out += stat.empty() ? "gone" : "state " + stat.substr(stat.rfind(')') + 2, 1);
    // How it ended, if it did: read without reaping it (the destructor reaps).
    siginfo_t info{};
    if (waitid(P_PID, id_t(process_->pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == process_->pid()) {
      out += info.si_code == CLD_EXITED ? ", exited with " + std::to_string(info.si_status)
                                        : std::string(", killed by ") + strsignal(info.si_status);
    }
    out += "; stderr: [" + ReadWithTimeout(err_log_) + "]; kernel: [";
    out += RunCommand({"bash", "-c", "dmesg | grep -iE 'fuse|killed process|segfault' | tail -n 5"},
                      {}, seconds(10)).out;
    return out + "]";
  }
  // A counter of /status ("reads", "eio", "blocked", "released", "interrupted"), -1 when
  // the status cannot be read.
  long Status(const std::string& name) const {
    std::istringstream in(ReadWithTimeout(mnt_ + "/status"));
    std::string key;
    long value = 0;
    while (in >> key >> value) {
      if (key == name) return value;
    }
    return -1;
  }
  // /sys/fs/fuse/connections/N: the kernel's handle on this mount's connection.
  std::string ConnectionDir() const {
    struct stat st;
    if (stat(mnt_.c_str(), &st) != 0) return "";
    return "/sys/fs/fuse/connections/" + std::to_string(minor(st.st_dev));
  }

 private:
  FuseVolume(std::string mnt, std::string err_log)
      : mnt_(std::move(mnt)), err_log_(std::move(err_log)) {}
  std::string mnt_;
  std::string err_log_;
  std::unique_ptr<Process> process_;
};

// A loop device on `file` reading it with O_DIRECT (losetup --direct-io=on), detached
// at the end of its scope.
class DirectLoop {
 public:
  static std::unique_ptr<DirectLoop> Attach(const std::string& file, std::string* why) {
    Result r = RunCommand({"losetup", "--find", "--show", "--direct-io=on", file}, {}, seconds(30));
    std::string device = r.out.substr(0, r.out.find('\n'));
    if (r.exit_code != 0 || device.rfind("/dev/loop", 0) != 0) {
      *why = "losetup --direct-io=on failed: " + r.Describe();
      return nullptr;
    }
    return std::unique_ptr<DirectLoop>(new DirectLoop(device));
  }
  ~DirectLoop() {
    for (int attempt = 0; attempt < 50; ++attempt) {
      if (RunCommand({"losetup", "-d", device_}, {}, seconds(10)).exit_code == 0) return;
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  const std::string& device() const { return device_; }
  // "1" when the loop driver reads its file with O_DIRECT.
  std::string DirectIo() const {
    std::string name = device_.substr(device_.rfind('/') + 1);
    std::string dio = ReadFile("/sys/block/" + name + "/loop/dio");
    return dio.substr(0, dio.find('\n'));
  }

 private:
  explicit DirectLoop(std::string device) : device_(std::move(device)) {}
  std::string device_;
};

// The offset named by "... at offset N ..." in a message, or -1.
int64_t NamedOffset(const std::string& text) {
  const std::string key = "offset ";
  size_t at = text.find(key);
  if (at == std::string::npos) return -1;
  return std::stoll(text.substr(at + key.size()));
}

class FuseSourceTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CanUseFuse(&why)) GTEST_SKIP() << why;
    fuse_ = FuseVolume::Mount(dir_, &why);
    ASSERT_TRUE(fuse_) << why;
    repo_ = InitRepo(dir_);
  }

  // A block device's page cache would keep the old content, and make the backup read
  // it from memory: dropped before every read of the source.
  static void DropCache(const std::string& source) {
    if (source.rfind("/dev/", 0) == 0) Sh("blockdev --flushbufs " + ShellQuote(source));
  }
  static std::string ShaOf(const std::string& source) {
    DropCache(source);
    std::string sha = Sha256File(source);
    DropCache(source);
    return sha;
  }
  Result BackupOf(const std::string& source) {
    DropCache(source);
    return Cli({"backup", "--repo", repo_, "--volume", "v", source, "--json"});
  }
  void ExpectRestores(const std::string& snapshot, const std::string& sha) {
    std::string target = dir_ / ("restored-" + snapshot);
    Result r = Restore(repo_, "v", snapshot, target);
    DP420_ASSERT_EXIT(r, kExitOk);
    EXPECT_EQ(Sha256File(target), sha) << "snapshot " << snapshot << " is not bit-exact";
    Sh("rm -f " + ShellQuote(target));
  }
  void ExpectVerifyClean() {
    Result r = Cli({"verify", "--repo", repo_, "--read-data"});
    DP420_EXPECT_EXIT(r, kExitOk);
  }

  // Waits (at most `limit`) for `done`; false when the deadline passed.
  static bool WaitFor(const std::function<bool()>& done, seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(milliseconds(50));
    }
    return true;
  }

  // A full backup of seed 1 (its id in first_, the volume's hash in sha1_), then seed 2
  // with a read at kBlockedByte that never answers, and a backup started on it
  // (stderr in err_log_) that is signalled with `sig` once that read is held.
  std::unique_ptr<Process> SignalBackupOnBlockedRead(int sig);
  // The stopped backup: exit code 130, nothing committed, the repository verifies and
  // the snapshot before restores bit-exact.
  void ExpectInterruptedCleanly(Result r);

  // Backs up `source` (the FUSE file or a loop device on it): a full backup of seed 1,
  // then, with seed 2 and EIO at kFaultByte, a backup that must fail naming the offset
  // and leave the repository as it was; then the same without the fault.
  void EioThenClean(const std::string& source);

  static constexpr uint64_t kBlockedByte = 5 * kExtent + 100;

  TempDir dir_;
  std::unique_ptr<FuseVolume> fuse_;
  std::string repo_;
  std::string first_;
  std::string sha1_;
  std::string err_log_;
};

std::unique_ptr<Process> FuseSourceTest::SignalBackupOnBlockedRead(int sig) {
  std::string source = fuse_->volume();
  sha1_ = ShaOf(source);
  Result full = BackupOf(source);
  if (full.exit_code != kExitOk) Fail("first backup: " + full.Describe());
  first_ = ParseJson(full).at("snapshot_id").get<std::string>();
  fuse_->Control("seed 2");
  fuse_->Control("block " + std::to_string(kBlockedByte));
  err_log_ = dir_ / "backup.err";
  std::unique_ptr<Process> backup = Process::Start(
      {"bash", "-c",
       "exec " + ShellQuote(CliPath()) + " backup --repo " + ShellQuote(repo_) +
           " --volume v " + ShellQuote(source) + " 2>" + ShellQuote(err_log_)});
  if (!WaitFor([&] { return fuse_->Status("blocked") == 1; }, seconds(60))) {
    backup->Kill(SIGKILL);
    Fail("the backup never reached the blocked read: " + backup->Wait(seconds(30)).Describe() +
         "\n" + fuse_->Describe());
  }
  backup->Kill(sig);
  // Said at once, while the read is still held in the kernel.
  std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM";
  bool said = WaitFor([&] { return ReadFile(err_log_).find(name + " received") != std::string::npos; },
                      seconds(30));
  EXPECT_TRUE(said) << "no word of the signal within 30 s: " << ReadFile(err_log_);
  EXPECT_EQ(fuse_->Status("blocked"), 1) << "the read is still held\n" << fuse_->Describe();
  return backup;
}

void FuseSourceTest::ExpectInterruptedCleanly(Result r) {
  std::string err = ReadFile(err_log_);
  EXPECT_FALSE(r.timed_out) << r.Describe() << err;
  EXPECT_EQ(r.exit_code, 130) << r.Describe() << err;
  EXPECT_TRUE(ContainsIgnoringCase(err, "canceled")) << err;
  EXPECT_EQ(SnapshotIds(repo_), std::vector<std::string>{first_}) << "nothing committed";
  ExpectVerifyClean();
  ExpectRestores(first_, sha1_);
}

void FuseSourceTest::EioThenClean(const std::string& source) {
  std::string sha1 = ShaOf(source);
  Result full = BackupOf(source);
  DP420_ASSERT_EXIT(full, kExitOk);
  std::string first = ParseJson(full).at("snapshot_id").get<std::string>();

  fuse_->Control("seed 2");
  fuse_->Control("eio " + std::to_string(kFaultByte));
  Result failed = BackupOf(source);
  DP420_EXPECT_EXIT(failed, kExitFailed);
  EXPECT_EQ(failed.term_signal, 0) << failed.Describe();
  EXPECT_GT(fuse_->Status("eio"), 0) << "the fault was never reached";
  std::string message = failed.All();
  EXPECT_TRUE(ContainsIgnoringCase(message, "Input/output error")) << failed.Describe();
  EXPECT_NE(message.find(source), std::string::npos) << "names the source\n" << failed.Describe();
  int64_t named = NamedOffset(message);
  EXPECT_GE(named, 0) << failed.Describe();
  EXPECT_LE(uint64_t(named), kFaultByte) << failed.Describe();
  EXPECT_LT(kFaultByte, uint64_t(named) + kExtent) << failed.Describe();
  EXPECT_EQ(SnapshotIds(repo_), std::vector<std::string>{first}) << "nothing committed";
  ExpectVerifyClean();
  ExpectRestores(first, sha1);

  fuse_->Control("clear");
  std::string sha2 = ShaOf(source);
  EXPECT_NE(sha2, sha1);
  Result clean = BackupOf(source);
  DP420_ASSERT_EXIT(clean, kExitOk);
  std::string second = ParseJson(clean).at("snapshot_id").get<std::string>();
  ExpectVerifyClean();
  ExpectRestores(second, sha2);
  ExpectRestores(first, sha1);
}

TEST_F(FuseSourceTest, FileWithEioAtOffsetFailsNamingItAndKeepsTheRepository) {
  EioThenClean(fuse_->volume());
}

TEST_F(FuseSourceTest, LoopDeviceWithDirectIoOnEioFileFailsNamingTheOffset) {
  std::string why;
  if (!CanUseLoop(&why)) GTEST_SKIP() << why;
  std::unique_ptr<DirectLoop> loop = DirectLoop::Attach(fuse_->volume(), &why);
  ASSERT_TRUE(loop) << why;
  EXPECT_EQ(loop->DirectIo(), "1") << "the loop driver reads the FUSE file with O_DIRECT";
  EioThenClean(loop->device());
}

// EIO in every extent in turn, each time at another position in it (its first byte,
// its last, between): every backup fails naming the read that holds the byte, with no
// signal and nothing committed; the first snapshot still verifies and restores.
TEST_F(FuseSourceTest, EioInEveryExtentInTurnFailsNamingEachAndCommitsNothing) {
  std::string source = fuse_->volume();
  std::string sha1 = ShaOf(source);
  Result full = BackupOf(source);
  DP420_ASSERT_EXIT(full, kExitOk);
  std::string first = ParseJson(full).at("snapshot_id").get<std::string>();
  fuse_->Control("seed 2");
  for (uint64_t extent = 0; extent < kVolumeBytes / kExtent; ++extent) {
    uint64_t within = extent % 3 == 0 ? 0 : extent % 3 == 1 ? kExtent - 1 : extent * 40503 % kExtent;
    uint64_t byte = extent * kExtent + within;
    SCOPED_TRACE("EIO at byte " + std::to_string(byte));
    fuse_->Control("eio " + std::to_string(byte));
    Result failed = BackupOf(source);
    fuse_->Control("clear");
    DP420_EXPECT_EXIT(failed, kExitFailed);
    EXPECT_EQ(failed.term_signal, 0) << failed.Describe();
    EXPECT_TRUE(ContainsIgnoringCase(failed.All(), "Input/output error")) << failed.Describe();
    int64_t named = NamedOffset(failed.All());
    EXPECT_GE(named, 0) << failed.Describe();
    EXPECT_LE(uint64_t(named), byte) << failed.Describe();
    EXPECT_LT(byte, uint64_t(named) + kExtent) << failed.Describe();
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GE(fuse_->Status("eio"), long(kVolumeBytes / kExtent)) << "a fault was never reached";
  EXPECT_EQ(SnapshotIds(repo_), std::vector<std::string>{first}) << "nothing committed";
  ExpectVerifyClean();
  ExpectRestores(first, sha1);
}

// A source whose read never answers: the signal is acknowledged at once, and once the
// server answers the held read the backup ends as interrupted, nothing committed.
TEST_F(FuseSourceTest, SigtermOnBlockedReadEndsWhenTheServerAnswers) {
  std::unique_ptr<Process> backup = SignalBackupOnBlockedRead(SIGTERM);
  fuse_->Control("release");
  ExpectInterruptedCleanly(backup->Wait(seconds(120)));
  EXPECT_EQ(fuse_->Status("released"), 1);
}

// A server that never answers: aborting its connection
// (/sys/fs/fuse/connections/N/abort) fails the held read (ENOTCONN), and the backup
// ends as interrupted, nothing committed.
TEST_F(FuseSourceTest, SigintOnBlockedReadEndsWhenTheConnectionIsAborted) {
  std::string abort = fuse_->ConnectionDir() + "/abort";
  if (!Exists(abort)) RunCommand({"mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"});
  if (!Exists(abort)) GTEST_SKIP() << "no " << abort << " (fusectl cannot be mounted)";
  std::unique_ptr<Process> backup = SignalBackupOnBlockedRead(SIGINT);
  WriteFile(abort, "1");
  ExpectInterruptedCleanly(backup->Wait(seconds(120)));
}

}  // namespace
}  // namespace dp420::e2e
