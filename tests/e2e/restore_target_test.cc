// Restore's target rules through the CLI, on real files, device nodes, FIFOs,
// sockets and symbolic links: only a regular file or a block device is ever
// written, whatever is refused is left exactly as it was (same inode, mode,
// device number and content), restore deletes no file it did not create, a
// restore killed with SIGKILL leaves nothing the next run does not clean up,
// and a snapshot whose manifest disagrees with its table is never written.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr uint64_t kVolumeBytes = 8ull << 20;
constexpr uint64_t kBlockBytes = 64 << 10;

// What must not change about a file restore refused: lstat and content.
struct Identity {
  bool exists = false;
  ino_t ino = 0;
  mode_t mode = 0;
  dev_t rdev = 0;
  off_t size = 0;
  std::string content;  // a regular file's bytes, a link's target, a directory's names

  bool operator==(const Identity& o) const {
    return exists == o.exists && ino == o.ino && mode == o.mode && rdev == o.rdev &&
           size == o.size && content == o.content;
  }
};

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Identity IdentityOf(const std::string& path) {
  Identity id;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return id;
  id.exists = true;
  id.ino = st.st_ino;
  id.mode = st.st_mode;
  id.rdev = st.st_rdev;
  id.size = st.st_size;
  if (S_ISREG(st.st_mode)) id.content = ReadFile(path);
  if (S_ISLNK(st.st_mode)) id.content = std::filesystem::read_symlink(path).string();
  if (S_ISDIR(st.st_mode)) {
    for (const auto& name : Names(path)) id.content += name + "\n";
  }
  return id;
}

std::ostream& operator<<(std::ostream& os, const Identity& id) {
  return os << "{exists " << id.exists << ", ino " << id.ino << ", mode 0" << std::oct << id.mode
            << std::dec << ", rdev " << id.rdev << ", size " << id.size << "}";
}

// A unix socket bound at `path` (the file stays after the descriptor closes).
void MakeSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(addr.sun_path));
  std::copy(path.begin(), path.end(), addr.sun_path);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  close(fd);
}

// A repository with one snapshot of an 8 MiB volume with holes.
class RestoreTargetTest : public testing::Test {
 protected:
  void SetUp() override {
    repo_ = InitRepo(dir_);
    source_ = dir_ / "volume.raw";
    WritePatternFile(source_, kVolumeBytes, 5, 3);
    source_sha_ = Sha256File(source_);
    snapshot_ = Backup(repo_, "v", source_).at("snapshot_id").get<std::string>();
    targets_ = dir_ / "targets";
    std::filesystem::create_directories(targets_);
  }

  Result RestoreTo(const std::string& target, bool force, const Env& env = {},
                   const std::string& volume = "v") {
    std::vector<std::string> args{"restore", "--repo", repo_, "--volume", volume, target};
    if (force) args.push_back("--force");
    return Cli(args, env);
  }

  // Restore to `target` is refused with and without --force, with exit code
  // `code` (with --force: `force_code`), naming it and `kind`; it stays as it was
  // and nothing else appears next to it.
  void ExpectRefused(const std::string& target, const std::string& kind, int code,
                     int force_code) {
    const Identity before = IdentityOf(target);
    const std::vector<std::string> names = Names(targets_);
    for (bool force : {false, true}) {
      SCOPED_TRACE(target + (force ? " with --force" : " without --force"));
      Result r = RestoreTo(target, force);
      DP420_EXPECT_EXIT(r, force ? force_code : code);
      EXPECT_EQ(r.term_signal, 0) << r.Describe();
      EXPECT_TRUE(Mentions(r, target)) << r.Describe();
      EXPECT_TRUE(ContainsIgnoringCase(r.err, kind)) << r.Describe();
      EXPECT_EQ(IdentityOf(target), before);
      EXPECT_EQ(Names(targets_), names);
    }
  }

  TempDir dir_;
  std::string repo_;
  std::string source_;
  std::string source_sha_;
  std::string snapshot_;
  std::string targets_;
};

TEST_F(RestoreTargetTest, DirectoryFifoAndSocketAreRefusedAndUntouched) {
  std::string directory = targets_ + "/dir";
  std::filesystem::create_directories(directory);
  WriteFile(directory + "/inside.txt", "mine\n");
  ExpectRefused(directory, "a directory", kExitUsage, kExitUsage);
  std::filesystem::remove_all(directory);

  std::string fifo = targets_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0640), 0);
  ExpectRefused(fifo, "a FIFO", kExitUsage, kExitUsage);  // and restore did not block on it
  std::filesystem::remove(fifo);

  std::string sock = targets_ + "/sock";
  MakeSocket(sock);
  ExpectRefused(sock, "a socket", kExitUsage, kExitUsage);
}

TEST_F(RestoreTargetTest, CharacterDeviceIsRefusedAndUntouched) {
  if (!IsRoot()) GTEST_SKIP() << "mknod of a character device needs root (CAP_MKNOD)";
  // The same device as /dev/null (1, 3), made here so that a failure cannot harm /dev.
  std::string null_node = targets_ + "/null";
  ASSERT_EQ(mknod(null_node.c_str(), S_IFCHR | 0666, makedev(1, 3)), 0) << strerror(errno);
  ExpectRefused(null_node, "a character device", kExitUsage, kExitUsage);
}

TEST_F(RestoreTargetTest, NonEmptyFileNeedsForce) {
  std::string file = targets_ + "/old.img";
  WriteFile(file, "the user's data\n");
  const Identity before = IdentityOf(file);
  Result r = RestoreTo(file, false);
  DP420_EXPECT_EXIT(r, kExitRefused);
  EXPECT_TRUE(Mentions(r, file)) << r.Describe();
  EXPECT_EQ(IdentityOf(file), before);
  Result forced = RestoreTo(file, true);
  DP420_ASSERT_EXIT(forced, kExitOk);
  EXPECT_EQ(Sha256File(file), source_sha_);
  EXPECT_EQ(Names(targets_), std::vector<std::string>{"old.img"});
}

// A symbolic link is never replaced. Without --force it is refused (exit 6)
// and neither it nor what it points to changes; with --force the file it
// points to is restored and the link stays a link. A link that resolves to
// nothing, or to a kind restore never writes, is refused either way.
TEST_F(RestoreTargetTest, SymbolicLinkIsRefusedWithoutForceAndResolvedWithIt) {
  std::string real = targets_ + "/real.img";
  WriteFile(real, "the user's data\n");
  std::string link = targets_ + "/link.img";
  std::filesystem::create_symlink(real, link);
  const Identity real_before = IdentityOf(real);
  const Identity link_before = IdentityOf(link);
  Result r = RestoreTo(link, false);
  DP420_EXPECT_EXIT(r, kExitRefused);
  EXPECT_TRUE(Mentions(r, link)) << r.Describe();
  EXPECT_TRUE(Mentions(r, "symbolic link")) << r.Describe();
  EXPECT_EQ(IdentityOf(real), real_before);
  EXPECT_EQ(IdentityOf(link), link_before);

  Result forced = RestoreTo(link, true);
  DP420_ASSERT_EXIT(forced, kExitOk);
  EXPECT_EQ(IdentityOf(link), link_before) << "the link itself is kept";
  EXPECT_EQ(Sha256File(real), source_sha_);
  EXPECT_EQ(Names(targets_), (std::vector<std::string>{"link.img", "real.img"}));

  std::string dangling = targets_ + "/dangling.img";
  std::filesystem::create_symlink(targets_ + "/nothing-here", dangling);
  ExpectRefused(dangling, "symbolic link", kExitUsage, kExitUsage);
  EXPECT_FALSE(Exists(targets_ + "/nothing-here"));

  std::string fifo = targets_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0640), 0);
  std::string to_fifo = targets_ + "/to-fifo.img";
  std::filesystem::create_symlink(fifo, to_fifo);
  const Identity fifo_before = IdentityOf(fifo);
  ExpectRefused(to_fifo, "symbolic link", kExitRefused, kExitUsage);
  EXPECT_EQ(IdentityOf(fifo), fifo_before);
}

// Files named like partial files but not dp420's (the name an older dp420
// used, and the current pattern without dp420's marker) survive a restore.
TEST_F(RestoreTargetTest, UsersFilesNamedLikePartialFilesSurvive) {
  std::string target = targets_ + "/r.img";
  WriteFile(target + ".dp420-partial", "mine, old name\n");
  WriteFile(target + ".dp420-partial.0123456789abcdef", "mine, new pattern\n");
  const Identity old_name = IdentityOf(target + ".dp420-partial");
  const Identity new_name = IdentityOf(target + ".dp420-partial.0123456789abcdef");
  for (const Env& env : {Env{}, Env{{"DP420_TEST_NO_TMPFILE", "1"}}}) {
    SCOPED_TRACE(env.empty() ? "O_TMPFILE" : "named partial file");
    std::filesystem::remove(target);
    Result r = RestoreTo(target, false, env);
    DP420_ASSERT_EXIT(r, kExitOk);
    EXPECT_EQ(Sha256File(target), source_sha_);
    EXPECT_EQ(IdentityOf(target + ".dp420-partial"), old_name);
    EXPECT_EQ(IdentityOf(target + ".dp420-partial.0123456789abcdef"), new_name);
    EXPECT_EQ(Names(targets_), (std::vector<std::string>{
                                   "r.img", "r.img.dp420-partial",
                                   "r.img.dp420-partial.0123456789abcdef"}));
  }
}

// SIGKILL in the middle of writing: with O_TMPFILE nothing was ever named;
// with a named partial file (file systems without O_TMPFILE) the next run
// proves it dp420's and removes it. Either way the next run succeeds and the
// directory holds exactly the target and the user's files.
TEST_F(RestoreTargetTest, KilledMidWriteLeavesNothingAfterTheNextRun) {
  std::string target = targets_ + "/r.img";
  std::string mine = target + ".dp420-partial.fedcba9876543210";  // no marker: the user's
  WriteFile(mine, "mine\n");
  const Identity mine_before = IdentityOf(mine);
  const std::regex partial(R"(r\.img\.dp420-partial\.[0-9a-f]{16})");
  for (bool named : {false, true}) {
    SCOPED_TRACE(named ? "named partial file" : "O_TMPFILE");
    Env env = {{"DP420_TEST_CRASH", "restore-writing"}};
    if (named) env.push_back({"DP420_TEST_NO_TMPFILE", "1"});
    Result killed = RestoreTo(target, false, env);
    EXPECT_EQ(killed.term_signal, SIGKILL) << killed.Describe();
    EXPECT_FALSE(Exists(target));
    std::vector<std::string> left;
    for (const auto& name : Names(targets_)) {
      if (name != "r.img.dp420-partial.fedcba9876543210") left.push_back(name);
    }
    if (named) {
      ASSERT_EQ(left.size(), 1u) << "the killed run's partial file";
      EXPECT_TRUE(std::regex_match(left[0], partial)) << left[0];
      std::string marker(64, '\0');
      ssize_t n = getxattr((targets_ + "/" + left[0]).c_str(), "user.dp420.partial",
                           marker.data(), marker.size());
      ASSERT_GT(n, 0) << "marked as dp420's";
      EXPECT_EQ(marker.substr(0, size_t(n)), left[0]);
    } else {
      EXPECT_EQ(left, std::vector<std::string>{}) << "an unnamed file vanishes with its process";
    }
    Result next = RestoreTo(target, false);
    DP420_ASSERT_EXIT(next, kExitOk);
    EXPECT_EQ(Sha256File(target), source_sha_);
    EXPECT_EQ(Names(targets_),
              (std::vector<std::string>{"r.img", "r.img.dp420-partial.fedcba9876543210"}));
    EXPECT_EQ(IdentityOf(mine), mine_before);
    std::filesystem::remove(target);
  }
}

// Replacing an existing file names the new one for a moment before the
// rename; killed right then, the old file is intact, and the next run removes
// the named leftover.
TEST_F(RestoreTargetTest, KilledBeforeRenameKeepsTheOldFileAndNextRunCleansUp) {
  std::string target = targets_ + "/r.img";
  WriteFile(target, "old contents\n");
  const Identity old_file = IdentityOf(target);
  Result killed = RestoreTo(target, true, {{"DP420_TEST_CRASH", "restore-before-rename"}});
  EXPECT_EQ(killed.term_signal, SIGKILL) << killed.Describe();
  EXPECT_EQ(IdentityOf(target), old_file);
  std::vector<std::string> names = Names(targets_);
  ASSERT_EQ(names.size(), 2u);
  EXPECT_TRUE(std::regex_match(names[1], std::regex(R"(r\.img\.dp420-partial\.[0-9a-f]{16})")))
      << names[1];
  Result next = RestoreTo(target, true);
  DP420_ASSERT_EXIT(next, kExitOk);
  EXPECT_EQ(Sha256File(target), source_sha_);
  EXPECT_EQ(Names(targets_), std::vector<std::string>{"r.img"});
}

// A manifest re-sealed with another volume_size (its seal is valid, its
// content wrong) is never restored: restore runs verify's checks before the
// target gets a name, fails naming the snapshot, and creates no TARGET.
class ResealedManifestTest : public RestoreTargetTest {
 protected:
  // Backs up `volume` from a copy of the source whose last block is zero
  // (`zero_tail`) or data; returns its manifest's path.
  std::string BackupVolume(const std::string& volume, bool zero_tail) {
    std::string source = dir_ / (volume + ".raw");
    WritePatternFile(source, kVolumeBytes, 9, 0);
    if (zero_tail) {
      Truncate(source, kVolumeBytes - kBlockBytes);
      Truncate(source, kVolumeBytes);
    }
    std::string id = Backup(repo_, volume, source).at("snapshot_id").get<std::string>();
    return FindManifest(repo_, volume, id);
  }

  void ExpectRestoreFails(const std::string& volume, const std::string& manifest,
                          uint64_t volume_size, uint64_t blocks_total) {
    std::string original = ReadFile(manifest);
    ResealManifest(manifest, [&](std::string* line) {
      *line = std::regex_replace(*line, std::regex(R"("volume_size":\d+)"),
                                 "\"volume_size\":" + std::to_string(volume_size));
      *line = std::regex_replace(*line, std::regex(R"("blocks_total":\d+)"),
                                 "\"blocks_total\":" + std::to_string(blocks_total));
    });
    std::string target = targets_ + "/" + volume + ".img";
    for (const Env& env : {Env{}, Env{{"DP420_TEST_NO_TMPFILE", "1"}}}) {
      Result r = RestoreTo(target, false, env, volume);
      DP420_EXPECT_EXIT(r, kExitDamage);
      EXPECT_TRUE(ContainsIgnoringCase(r.err, "damaged") ||
                  ContainsIgnoringCase(r.err, "disagree")) << r.Describe();
      EXPECT_FALSE(Exists(target));
      EXPECT_EQ(Names(targets_), std::vector<std::string>{});
    }
    Result verify = Cli({"verify", "--repo", repo_, "--volume", volume});
    DP420_EXPECT_EXIT(verify, kExitDamage) << "verify finds what restore refused";
    WriteFile(manifest, original);
    ResealHead(repo_, volume);
    Result good = RestoreTo(target, false, {}, volume);
    DP420_EXPECT_EXIT(good, kExitOk);
    std::filesystem::remove(target);
  }
};

TEST_F(ResealedManifestTest, SmallerVolumeSizeWithinTheLastZeroBlock) {
  // blocks_total stays right; only the zero last block's entry disagrees.
  std::string manifest = BackupVolume("z", /*zero_tail=*/true);
  ExpectRestoreFails("z", manifest, kVolumeBytes - 4096, kVolumeBytes / kBlockBytes);
}

TEST_F(ResealedManifestTest, SmallerVolumeSizeWithinTheLastDataBlock) {
  std::string manifest = BackupVolume("d", /*zero_tail=*/false);
  ExpectRestoreFails("d", manifest, kVolumeBytes - 4096, kVolumeBytes / kBlockBytes);
}

TEST_F(ResealedManifestTest, LargerVolumeWithMatchingBlocksTotal) {
  std::string manifest = BackupVolume("l", /*zero_tail=*/false);
  ExpectRestoreFails("l", manifest, kVolumeBytes + kBlockBytes, kVolumeBytes / kBlockBytes + 1);
}

TEST_F(ResealedManifestTest, VolumeSizeThatDisagreesWithBlocksTotal) {
  std::string manifest = BackupVolume("x", /*zero_tail=*/false);
  ExpectRestoreFails("x", manifest, kVolumeBytes + (1 << 20), kVolumeBytes / kBlockBytes);
}

}  // namespace
}  // namespace dp420::e2e
