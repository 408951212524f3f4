// Point in time of one source (`backup --snapshot-source`, engine/control/pit.h), on
// real file systems: a reflink copy on XFS taken while a writer keeps writing, a freeze
// of an ext4 file system on a loop device (cloned while frozen when its backing file
// is on XFS, read while frozen and bounded by --max-freeze otherwise), hooks that fail
// or hang, a backup killed while the file system is frozen, and live reads that say
// whether the source changed.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

namespace fs = std::filesystem;

// Writes pseudo-random 4 KiB blocks at random offsets of `path` until killed (a block
// device with O_DIRECT, so that every write reaches it at once).
const char kWriter[] = R"(
import mmap, os, random, sys
dev = sys.argv[1].startswith('/dev/')
fd = os.open(sys.argv[1], os.O_WRONLY | (os.O_DIRECT if dev else 0))
size = int(sys.argv[2]) if dev else os.fstat(fd).st_size
buf = mmap.mmap(-1, 4096)
r = random.Random(7)
while True:
    buf.seek(0)
    buf.write(os.urandom(4096))
    os.pwrite(fd, buf, r.randrange(0, size // 4096) * 4096)
)";

// Whether the file system mounted at `dir` is frozen: FIFREEZE says EBUSY when it is
// (and when it was not, freezes it, so it is thawed again at once).
bool Frozen(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool frozen = false;
  if (ioctl(fd, FIFREEZE, 0) == 0) {
    ioctl(fd, FITHAW, 0);
  } else {
    frozen = errno == EBUSY;
  }
  close(fd);
  return frozen;
}

// Thaws `dir` at the end of its scope, whatever a failed test left.
struct ThawGuard {
  std::string dir;
  ~ThawGuard() {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      ioctl(fd, FITHAW, 0);
      close(fd);
    }
  }
};

class PitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CanUseLoop(&why)) GTEST_SKIP() << "skipped: needs loop devices and mounts (" << why << ")";
    repo_ = InitRepo(dir_);
  }

  // An XFS file system with reflink, in a file of dir_, mounted at dir_/xfs.
  std::string MountXfs() {
    std::string image = dir_ / "xfs.img";
    WriteFile(image, "");
    Truncate(image, 512ull << 20);
    Result mk = RunCommand({"mkfs.xfs", "-q", "-m", "reflink=1", image});
    if (mk.exit_code != 0) ADD_FAILURE() << "mkfs.xfs: " << mk.Describe();
    std::string why;
    xfs_ = Mount::Create(image, dir_ / "xfs", "xfs", "loop", &why);
    if (!xfs_) ADD_FAILURE() << why;
    return dir_ / "xfs";
  }

  // An ext4 file system in `image` (size bytes) on a loop device, mounted at dir_/ext4,
  // holding a few files.
  std::string MountExt4OnLoop(const std::string& image, uint64_t size) {
    WriteFile(image, "");
    Truncate(image, size);
    Result mk = RunCommand({"mkfs.ext4", "-q", "-F", image});
    if (mk.exit_code != 0) ADD_FAILURE() << "mkfs.ext4: " << mk.Describe();
    std::string why;
    loop_ = LoopDevice::Attach(image, &why);
    if (!loop_) {
      ADD_FAILURE() << why;
      return "";
    }
    ext4_ = Mount::Create(loop_->device(), dir_ / "ext4", "ext4", "", &why);
    if (!ext4_) ADD_FAILURE() << why;
    thaw_.dir = dir_ / "ext4";
    for (int i = 0; i < 4; ++i) WritePatternFile(dir_ / ("ext4/f" + std::to_string(i)), 2 << 20, 50 + i);
    return loop_->device();
  }

  Result Backup(const std::string& source, std::vector<std::string> extra) {
    std::vector<std::string> argv = {"backup", "--repo", repo_, "--volume", "v", source, "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return Cli(argv);
  }
  std::string Restore(const std::string& id) {
    std::string target = dir_ / ("restored-" + id);
    Result r = Cli({"restore", "--repo", repo_, "--volume", "v", "--snapshot", id, target});
    EXPECT_EQ(r.exit_code, kExitOk) << r.Describe();
    return target;
  }
  // The point_in_time record the manifest of `id` holds.
  Json ManifestRecord(const std::string& id) {
    Json all = ParseJson(Cli({"snapshots", "--repo", repo_, "--json"}));
    for (const Json& s : all) {
      if (s.value("snapshot_id", "") == id) return s["node_topology"]["members"][0]["point_in_time"];
    }
    ADD_FAILURE() << "no snapshot " << id;
    return Json();
  }
  // A write to the ext4 file system finishes (it is not frozen).
  void ExpectWritable() {
    EXPECT_FALSE(Frozen(dir_ / "ext4"));
    Result r = Sh("timeout 20 touch " + ShellQuote(dir_ / "ext4/after"));
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
  }

  TempDir dir_;
  std::string repo_;
  std::unique_ptr<Mount> xfs_;
  std::unique_ptr<LoopDevice> loop_;
  std::unique_ptr<Mount> ext4_;
  ThawGuard thaw_;  // destroyed before the mounts
};

// A reflink copy on XFS is the volume at one instant, while a writer keeps writing: the
// snapshot restores to exactly the copy the pre hook took with the writer stopped, the
// live file has moved on, and the copy is gone afterwards.
TEST_F(PitTest, ReflinkIsOneInstantOfAFileBeingWritten) {
  std::string xfs = MountXfs();
  ASSERT_FALSE(HasFailure());
  std::string src = xfs + "/vm.img";
  WritePatternFile(src, 48 << 20, 3);
  auto writer = Process::Start({"python3", "-c", kWriter, src});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string pid = std::to_string(writer->pid());
  std::string ref = dir_ / "at-the-cut.img";
  Result r = Backup(src, {"--snapshot-source", "reflink", "--pre-hook",
                          "kill -STOP " + pid + " && cp --reflink=never " + ShellQuote(src) + " " +
                              ShellQuote(ref),
                          "--post-hook", "kill -CONT " + pid});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  writer->Kill(SIGKILL);
  writer->Wait();
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  Json j = ParseJson(r);
  EXPECT_EQ(j["consistency"], "point-in-time");
  EXPECT_EQ(j["point_in_time"]["method"], "reflink");
  const std::string id = j["snapshot_id"];
  EXPECT_EQ(Sha256File(Restore(id)), Sha256File(ref));
  EXPECT_NE(Sha256File(src), Sha256File(ref)) << "the writer wrote after the cut";
  EXPECT_EQ(ManifestRecord(id)["consistency"], "point-in-time");
  for (const auto& e : fs::directory_iterator(xfs)) {
    EXPECT_EQ(e.path().filename().string().find("dp420-pit"), std::string::npos) << e.path();
  }
  // auto picks reflink here.
  Result a = Backup(src, {});
  ASSERT_EQ(a.exit_code, kExitOk) << a.Describe();
  EXPECT_EQ(ParseJson(a)["point_in_time"]["method"], "reflink");
}

// A copy a killed backup left is removed by the next one; a copy another backup holds
// makes this one wait its turn (busy, exit 5), and is left alone.
TEST_F(PitTest, StaleCopyIsRemovedAndAHeldOneIsBusy) {
  std::string xfs = MountXfs();
  ASSERT_FALSE(HasFailure());
  std::string src = xfs + "/vm.img";
  WritePatternFile(src, 4 << 20, 4);
  std::string copy = xfs + "/.vm.img.v.dp420-pit";
  WriteFile(copy, "left by a backup that was killed");
  Result r = Backup(src, {"--snapshot-source", "reflink"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  EXPECT_FALSE(Exists(copy));
  auto holder = Process::Start({"flock", copy, "sleep", "60"});
  for (int i = 0; i < 100 && !Exists(copy); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  Result busy = Backup(src, {"--snapshot-source", "reflink"});
  EXPECT_EQ(busy.exit_code, kExitBusy) << busy.Describe();
  EXPECT_TRUE(Mentions(busy, "in use")) << busy.Describe();
  EXPECT_TRUE(Exists(copy));
  holder->Kill(SIGKILL);
  holder->Wait();
  // A symbolic link planted under the copy's name is never followed: not removed, not
  // written through; the backup is refused and the link's target is untouched.
  fs::remove(copy);
  std::string victim = dir_ / "victim";
  WriteFile(victim, "not to be cloned over");
  fs::create_symlink(victim, copy);
  Result planted = Backup(src, {"--snapshot-source", "reflink"});
  EXPECT_NE(planted.exit_code, kExitOk) << planted.Describe();
  EXPECT_EQ(ReadFile(victim), "not to be cloned over");
  EXPECT_TRUE(fs::is_symlink(copy));
}

// fsfreeze of ext4 on a loop device whose backing file is on XFS: the backing file is
// cloned while frozen (milliseconds), the file system is thawed at once, and the
// restored device is a clean file system.
TEST_F(PitTest, FreezeClonesALoopDevicesBackingFileAndThaws) {
  std::string xfs = MountXfs();
  ASSERT_FALSE(HasFailure());
  std::string device = MountExt4OnLoop(xfs + "/disk.img", 64 << 20);
  ASSERT_FALSE(HasFailure());
  auto writer = Process::Start({"python3", "-c", kWriter, dir_ / "ext4/f0"});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Result r = Backup(device, {"--freeze-mount", dir_ / "ext4"});  // auto
  writer->Kill(SIGKILL);
  writer->Wait();
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  Json j = ParseJson(r);
  EXPECT_EQ(j["consistency"], "point-in-time");
  EXPECT_EQ(j["point_in_time"]["method"], "fsfreeze");
  EXPECT_LT(j["point_in_time"]["hold_ms"].get<double>(), 7000);
  ExpectWritable();
  Json rec = ManifestRecord(j["snapshot_id"]);
  EXPECT_NE(rec.value("note", "").find("cloned while frozen"), std::string::npos) << rec.dump();
  Result fsck = RunCommand({"e2fsck", "-fn", Restore(j["snapshot_id"])});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.Describe();
}

// Without a clone the device is read while frozen, never longer than --max-freeze:
// a read that outlasts it is thawed at the deadline and reported live; a post hook
// that hangs is killed at --hook-timeout and the file system is thawed.
TEST_F(PitTest, FreezeIsBoundedAndAHangingHookStillThaws) {
  std::string device = MountExt4OnLoop(dir_ / "disk.img", 96 << 20);
  ASSERT_FALSE(HasFailure());
  Result r = Backup(device, {"--snapshot-source", "fsfreeze", "--freeze-mount", dir_ / "ext4",
                             "--max-freeze", "0.001"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  Json j = ParseJson(r);
  EXPECT_EQ(j["consistency"], "live");
  EXPECT_EQ(j["point_in_time"]["method"], "fsfreeze");
  EXPECT_NE(ManifestRecord(j["snapshot_id"]).value("note", "").find("max-freeze"), std::string::npos);
  ExpectWritable();

  Result hung = Backup(device, {"--snapshot-source", "fsfreeze", "--freeze-mount", dir_ / "ext4",
                                "--post-hook", "sleep 60", "--hook-timeout", "1"});
  EXPECT_EQ(hung.exit_code, 1) << hung.Describe();
  EXPECT_TRUE(Mentions(hung, "did not finish within")) << hung.Describe();
  ExpectWritable();
}

// A backup killed while the file system is frozen leaves it frozen; the next dp420
// backup thaws it (and says so) before it does anything else.
TEST_F(PitTest, NextBackupThawsWhatAKilledOneLeftFrozen) {
  std::string device = MountExt4OnLoop(dir_ / "disk.img", 32 << 20);
  ASSERT_FALSE(HasFailure());
  std::string flag = dir_ / "frozen-now";
  auto p = Process::Start({CliPath(), "backup", "--repo", repo_, "--volume", "v", device,
                           "--snapshot-source", "fsfreeze", "--freeze-mount", dir_ / "ext4",
                           "--max-freeze", "600", "--post-hook", "touch " + ShellQuote(flag) + "; sleep 60"});
  for (int i = 0; i < 500 && !Exists(flag); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(Exists(flag));
  p->Kill(SIGKILL);
  p->Wait();
  EXPECT_TRUE(Frozen(dir_ / "ext4")) << "a SIGKILL leaves the freeze";
  std::string other = dir_ / "other.img";
  WritePatternFile(other, 1 << 20, 9);
  Result next = Cli({"backup", "--repo", repo_, "--volume", "w", other, "--snapshot-source", "none"});
  EXPECT_EQ(next.exit_code, kExitOk) << next.Describe();
  EXPECT_TRUE(Mentions(next, "thawed")) << next.Describe();
  ExpectWritable();
}

// A live read says whether the source changed while it was read: a file a writer
// changes, a block device a writer writes, and a quiet file.
TEST_F(PitTest, LiveReadsSayWhetherTheSourceChanged) {
  std::string quiet = dir_ / "quiet.img";
  WritePatternFile(quiet, 8 << 20, 5);
  Result q = Backup(quiet, {"--snapshot-source", "none"});
  ASSERT_EQ(q.exit_code, kExitOk) << q.Describe();
  EXPECT_EQ(ParseJson(q)["consistency"], "live");
  EXPECT_EQ(ParseJson(q)["point_in_time"]["source_changed"], false);

  std::string busy = dir_ / "busy.img";
  WritePatternFile(busy, 64 << 20, 6);
  std::string image = dir_ / "dev.img";
  WritePatternFile(image, 64 << 20, 8);
  std::string why;
  auto loop = LoopDevice::Attach(image, &why);
  ASSERT_TRUE(loop) << why;
  for (const std::string& source : {busy, loop->device()}) {
    SCOPED_TRACE(source);
    auto writer = Process::Start({"python3", "-c", kWriter, source, std::to_string(64 << 20)});
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    Result r = Cli({"backup", "--repo", repo_, "--volume", "b", source, "--json", "--snapshot-source", "none"});
    writer->Kill(SIGKILL);
    writer->Wait();
    ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
    Json j = ParseJson(r);
    EXPECT_EQ(j["consistency"], "live");
    EXPECT_EQ(j["point_in_time"]["source_changed"], true);
    EXPECT_EQ(ManifestRecord(j["snapshot_id"])["source_changed"], true);
  }
}

// Options that cannot apply are usage errors naming what to do, before anything runs.
TEST_F(PitTest, MethodsThatDoNotApplyAreRefused) {
  std::string file = dir_ / "f.img";
  WritePatternFile(file, 1 << 20, 1);
  std::string ran = dir_ / "hook-ran";
  struct Case { std::vector<std::string> args; const char* says; };
  for (const Case& c : {Case{{"--snapshot-source", "reflink"}, "share extents"},  // ext4 here
                        Case{{"--snapshot-source", "fsfreeze"}, "--freeze-mount"},
                        Case{{"--snapshot-source", "hook"}, "--pre-hook"},
                        Case{{"--snapshot-source", "none", "--pre-hook", "touch " + ran}, "hook"},
                        Case{{"--freeze-mount", dir_.path()}, "not a mount of"}}) {
    Result r = Backup(file, c.args);
    EXPECT_EQ(r.exit_code, kExitUsage) << r.Describe();
    EXPECT_TRUE(Mentions(r, c.says)) << r.Describe();
  }
  EXPECT_FALSE(Exists(ran));
  // A failing pre hook fails the backup; the post hook still runs.
  std::string post = dir_ / "post-ran";
  Result r = Backup(file, {"--pre-hook", "exit 3", "--post-hook", "touch " + ShellQuote(post)});
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_TRUE(Mentions(r, "exited with status 3")) << r.Describe();
  EXPECT_TRUE(Exists(post));
}

}  // namespace
}  // namespace dp420::e2e
