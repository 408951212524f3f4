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

#include <algorithm>
#include <filesystem>
#include <signal.h>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"
#include "freeze_util.h"

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
ready = sys.argv[3] if len(sys.argv) > 3 else None
while True:
    buf.seek(0)
    buf.write(os.urandom(4096))
    os.pwrite(fd, buf, r.randrange(0, size // 4096) * 4096)
    if ready:
        open(ready, 'w').close()
        ready = None
)";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}


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
    if (Frozen(dir_ / "ext4")) {
      ADD_FAILURE() << "the file system is still frozen";
      ThawGuard thaw{dir_ / "ext4"};  // a touch would wait for the thaw uninterruptibly
      return;
    }
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

// The reflink copy has no name (O_TMPFILE): while it is read the source's folder holds
// nothing new, nothing can be planted under its name, two backups of one source at once
// (into two repositories) each get their own, and a backup killed while reading leaves
// nothing behind.
TEST_F(PitTest, ReflinkCopyHasNoNameAndLeavesNothing) {
  std::string xfs = MountXfs();
  ASSERT_FALSE(HasFailure());
  std::string src = xfs + "/vm.img";
  WritePatternFile(src, 16 << 20, 4);
  auto names = [&] {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(xfs)) v.push_back(e.path().filename());
    std::sort(v.begin(), v.end());
    return v;
  };
  const auto before = names();
  std::string listing = dir_ / "during.txt";
  Result r = Backup(src, {"--snapshot-source", "reflink", "--post-hook",
                          "ls -A " + ShellQuote(xfs) + " > " + ShellQuote(listing)});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  EXPECT_EQ(ParseJson(r)["point_in_time"]["method"], "reflink");
  std::string during = ReadFile(listing);
  for (const auto& n : before) EXPECT_NE(during.find(n), std::string::npos);
  EXPECT_EQ(std::count(during.begin(), during.end(), '\n'), long(before.size())) << during;

  std::string repo2 = dir_ / "repo2";
  ASSERT_EQ(Cli({"init", repo2, "--encryption", "none"}).exit_code, kExitOk);
  auto other = Process::Start({CliPath(), "backup", "--repo", repo2, "--volume", "v", src,
                               "--snapshot-source", "reflink"});
  Result mine = Backup(src, {"--snapshot-source", "reflink"});
  Result theirs = other->Wait();
  EXPECT_EQ(mine.exit_code, kExitOk) << mine.Describe();
  EXPECT_EQ(theirs.exit_code, kExitOk) << theirs.Describe();

  std::string flag = dir_ / "cloned";
  auto killed = Process::Start({CliPath(), "backup", "--repo", repo_, "--volume", "v", src,
                                "--snapshot-source", "reflink", "--post-hook",
                                "touch " + ShellQuote(flag) + "; sleep 60"});
  for (int i = 0; i < 500 && !Exists(flag); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  killed->Kill(SIGKILL);
  killed->Wait();
  EXPECT_EQ(names(), before);
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

  // The post hook of a freeze read in place runs after the thaw: one that writes to the
  // file system does not stall it.
  Result writes = Backup(device, {"--snapshot-source", "fsfreeze", "--freeze-mount",
                                  dir_ / "ext4", "--max-freeze", "30", "--post-hook",
                                  "date > " + ShellQuote(dir_ / "ext4/stamp")});
  ASSERT_EQ(writes.exit_code, kExitOk) << writes.Describe();
  EXPECT_EQ(ParseJson(writes)["consistency"], "point-in-time");
  EXPECT_TRUE(Exists(dir_ / "ext4/stamp"));

  Result hung = Backup(device, {"--snapshot-source", "fsfreeze", "--freeze-mount", dir_ / "ext4",
                                "--post-hook", "sleep 60", "--hook-timeout", "1"});
  EXPECT_EQ(hung.exit_code, 1) << hung.Describe();
  EXPECT_TRUE(Mentions(hung, "did not finish within")) << hung.Describe();
  ExpectWritable();
}

// A backup killed while the file system is frozen does not leave it frozen: its
// watchdog process thaws as soon as dp420 is gone. When the watchdog is killed too,
// the next dp420 backup thaws it, and says so.
TEST_F(PitTest, AKilledBackupNeverLeavesTheFileSystemFrozen) {
  std::string device = MountExt4OnLoop(dir_ / "disk.img", 32 << 20);
  ASSERT_FALSE(HasFailure());
  auto killed_while_frozen = [&](const char* point) {
    Result r = Cli({"backup", "--repo", repo_, "--volume", "v", device, "--snapshot-source",
                    "fsfreeze", "--freeze-mount", dir_ / "ext4", "--max-freeze", "600"},
                   {{"DP420_TEST_CRASH", point}});
    EXPECT_EQ(r.term_signal, SIGKILL) << r.Describe();
  };
  killed_while_frozen("frozen");
  for (int i = 0; i < 300 && Frozen(dir_ / "ext4"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    SCOPED_TRACE("dp420 killed, its watchdog alive");
    ExpectWritable();
  }

  killed_while_frozen("frozen-orphaned");
  EXPECT_TRUE(Frozen(dir_ / "ext4")) << "nothing was left to thaw it";
  std::string other = dir_ / "other.img";
  WritePatternFile(other, 1 << 20, 9);
  Result next = Cli({"backup", "--repo", repo_, "--volume", "w", other, "--snapshot-source", "none"});
  EXPECT_EQ(next.exit_code, kExitOk) << next.Describe();
  EXPECT_TRUE(Mentions(next, "thawed")) << next.Describe();
  ExpectWritable();
}

// What a frozen block device's read must not be: the device's page cache, older than
// what the file system wrote since (its data writes go around that cache). A file
// written, cached through the device, then overwritten in place: the snapshot holds
// the new bytes.
TEST_F(PitTest, FrozenDeviceIsNotReadFromItsStalePageCache) {
  std::string device = MountExt4OnLoop(dir_ / "disk.img", 32 << 20);
  ASSERT_FALSE(HasFailure());
  std::string file = dir_ / "ext4/data";
  WriteFile(file, std::string(1 << 20, 'O'));
  ASSERT_EQ(Sh("sync && dd if=" + device + " of=/dev/null bs=1M status=none").exit_code, 0);
  ASSERT_EQ(Sh("dd if=/dev/zero bs=1M count=1 status=none | tr '\\0' N | dd of=" +
               ShellQuote(file) + " conv=notrunc,fsync status=none").exit_code, 0);
  Result r = Backup(device, {"--snapshot-source", "fsfreeze", "--freeze-mount", dir_ / "ext4"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  std::string restored = Restore(ParseJson(r)["snapshot_id"]);
  std::string bytes = ReadFile(restored);
  EXPECT_NE(bytes.find(std::string(4096, 'N')), std::string::npos);
  EXPECT_EQ(bytes.find(std::string(4096, 'O')), std::string::npos) << "stale blocks read";
}

// A loop device that maps part of its file (an offset, a size limit) is never read
// through a clone of the whole file: the snapshot is the device, not the file.
TEST_F(PitTest, PartialLoopDeviceIsReadAsTheDevice) {
  std::string xfs = MountXfs();
  ASSERT_FALSE(HasFailure());
  std::string image = xfs + "/part.img";
  WriteFile(image, "");
  Truncate(image, 40 << 20);
  Result attach = RunCommand({"losetup", "-f", "--show", "-o", "1048576", "--sizelimit",
                              std::to_string(32 << 20), image});
  ASSERT_EQ(attach.exit_code, 0) << attach.Describe();
  std::string device = Trim(attach.out);
  struct Detach {
    std::string d;
    ~Detach() { RunCommand({"losetup", "-d", d}); }
  } detach{device};
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", device}).exit_code, 0);
  std::string why;
  auto mount = Mount::Create(device, dir_ / "part", "ext4", "", &why);
  ASSERT_TRUE(mount) << why;
  ThawGuard guard{dir_ / "part"};
  Result r = Backup(device, {"--freeze-mount", dir_ / "part"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  Json j = ParseJson(r);
  EXPECT_EQ(j["volume_size"].get<uint64_t>(), 32u << 20);
  EXPECT_EQ(j["point_in_time"]["method"], "fsfreeze");
  EXPECT_EQ(RunCommand({"e2fsck", "-fn", Restore(j["snapshot_id"])}).exit_code, 0);
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
    // The backup starts once the writer has written (a loaded machine can take
    // longer than any fixed wait to start it).
    std::string ready = dir_ / "writer-ready";
    std::filesystem::remove(ready);
    auto writer = Process::Start({"python3", "-c", kWriter, source, std::to_string(64 << 20), ready});
    for (int i = 0; i < 1000 && !Exists(ready); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(Exists(ready)) << "the writer did not write within 10 s";
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
  // A post hook alone quiesces nothing: recorded live.
  Result post_only = Backup(file, {"--snapshot-source", "hook", "--post-hook", "true"});
  ASSERT_EQ(post_only.exit_code, kExitOk) << post_only.Describe();
  EXPECT_EQ(ParseJson(post_only)["consistency"], "live");
  // A failing pre hook fails the backup; the post hook still runs.
  std::string post = dir_ / "post-ran";
  Result r = Backup(file, {"--pre-hook", "exit 3", "--post-hook", "touch " + ShellQuote(post)});
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_TRUE(Mentions(r, "exited with status 3")) << r.Describe();
  EXPECT_TRUE(Exists(post));
}

}  // namespace
}  // namespace dp420::e2e
