// End-to-end test helpers: run the dp420 CLI and other tools as child processes, make
// realistic volumes (ext4 images of real files), and undo every loop device and mount
// they set up, also when an assertion fails (RAII guards).
//
// Thread safety: none; each test runs in its own process (gtest_discover_tests), single
// threaded.

#ifndef DP420_TESTS_E2E_E2E_UTIL_H_
#define DP420_TESTS_E2E_E2E_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace dp420::e2e {

using Json = nlohmann::json;
using Env = std::vector<std::pair<std::string, std::string>>;

// The contract's exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitDamage = 3;
inline constexpr int kExitNotFound = 4;
inline constexpr int kExitBusy = 5;
inline constexpr int kExitRefused = 6;
inline constexpr int kExitUnsupported = 7;
inline constexpr int kExitNoSpace = 10;  // a device full, or a server quota or limit

inline constexpr std::chrono::seconds kDefaultTimeout{300};

// What a finished child did.
struct Result {
  std::string command;
  int exit_code = -1;   // exit status, or 128 + signal like a shell
  int term_signal = 0;  // signal that ended it, 0 when it exited
  bool timed_out = false;
  std::string out;
  std::string err;

  std::string All() const { return out + err; }
  // Command, exit code and (cut) output, for assertion messages.
  std::string Describe() const;
};

// A started child process; stdout and stderr go to memory files read by Wait().
// The child gets this process's environment, less DP420_TEST_CRASH and DP420_FAULT,
// plus `env`. Wait() kills it (SIGKILL) when the timeout passes.
class Process {
 public:
  static std::unique_ptr<Process> Start(const std::vector<std::string>& argv, const Env& env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void Kill(int signal_number);
  Result Wait(std::chrono::milliseconds timeout = kDefaultTimeout);

 private:
  Process() = default;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  bool reaped_ = false;
  std::string command_;
};

Result RunCommand(const std::vector<std::string>& argv, const Env& env = {},
                  std::chrono::milliseconds timeout = kDefaultTimeout);
// `bash -c "set -euo pipefail; <script>"`.
Result Sh(const std::string& script);
// The dp420 CLI under test.
Result Cli(const std::vector<std::string>& args, const Env& env = {});
std::string CliPath();
std::string SourceDir();

// True when the command's stdout or stderr contains `what`.
inline bool Mentions(const Result& r, const std::string& what) {
  return r.All().find(what) != std::string::npos;
}
// True when `text` contains `needle`, ignoring ASCII case.
bool ContainsIgnoringCase(const std::string& text, const std::string& needle);
// True for 64 lower-case hex digits (a SHA-256 in hex).
bool IsSha256Hex(const std::string& s);

// Single-quotes `s` for bash.
std::string ShellQuote(const std::string& s);

// A directory under /var/tmp removed with everything in it at the end of its scope;
// anything still mounted below it is unmounted first. DP420_E2E_KEEP=1 keeps it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// True when this process can set up loop devices (root, /dev/loop-control, a free
// device). Otherwise false with the reason in *why.
bool CanUseLoop(std::string* why);
bool IsRoot();

// A loop device attached to a file, detached (`losetup -d`) at the end of its scope.
class LoopDevice {
 public:
  // Empty, with the reason in *why, on failure.
  static std::unique_ptr<LoopDevice> Attach(const std::string& file, std::string* why);
  ~LoopDevice();
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& device() const { return device_; }

 private:
  explicit LoopDevice(std::string device) : device_(std::move(device)) {}
  std::string device_;
};

// A mount undone (umount, else lazy umount) at the end of its scope.
class Mount {
 public:
  // `mount [-t type] [-o options] source target`; empty with the reason in *why on failure.
  static std::unique_ptr<Mount> Create(const std::string& source, const std::string& target,
                                       const std::string& type, const std::string& options,
                                       std::string* why);
  ~Mount();
  // Unmounts now; false (with the reason in *why) when umount fails.
  bool Unmount(std::string* why);
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;
  const std::string& target() const { return target_; }

 private:
  explicit Mount(std::string target) : target_(std::move(target)) {}
  std::string target_;
  bool mounted_ = true;
};

// Hex SHA-256 of a file's or device's bytes.
std::string Sha256File(const std::string& path);
std::string Sha256Hex(const std::string& bytes);
// scripts/volume-checksum.py's result: the independent oracle for checksum_sha256.
std::string VolumeChecksum(const std::string& path, uint64_t block_size);
uint64_t FileSize(const std::string& path);
// Bytes a file occupies on disk (st_blocks * 512), to see that a restore is sparse.
uint64_t AllocatedBytes(const std::string& path);
bool Exists(const std::string& path);

// Writes `size` bytes of seeded pseudo-random data; every `zero_every`-th 64 KiB block
// (0: none) is all zero, so volumes have holes to detect.
void WritePatternFile(const std::string& path, uint64_t size, uint64_t seed, int zero_every = 0);
// Overwrites `length` bytes at `offset` with seeded pseudo-random data.
void OverwriteRange(const std::string& path, uint64_t offset, uint64_t length, uint64_t seed);
void Truncate(const std::string& path, uint64_t size);
void FlipBit(const std::string& path, uint64_t offset, int bit);
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);

// An ext4 image of real files (copied from /usr) plus random files, made without root
// through `mkfs.ext4 -d`. `staging` mirrors the image's files, for debugfs mode.
struct Ext4Volume {
  std::string image;
  std::string staging;
};
Ext4Volume MakeExt4Volume(const TempDir& dir, const std::string& name, int size_mib, int real_mib,
                          int random_mib);
// Changes about `percent` % of the volume's files (patch, append, delete, add) and, when
// add_file_mib > 0, adds a random file of that size. Through a loop mount when possible,
// else through debugfs on the image; returns how, with the reason the loop mount was
// skipped.
std::string MutateExt4Volume(const Ext4Volume& volume, const TempDir& dir, int seed, double percent,
                             int add_file_mib = 0);

// Repository helpers built on the CLI. They throw std::runtime_error (which gtest reports
// as a failure of the test, after unwinding every guard) when the CLI fails.
std::string InitRepo(const TempDir& dir, const std::string& name = "repo");
// `backup --json` of `source` as `volume`: the parsed object.
Json Backup(const std::string& repo, const std::string& volume, const std::string& source,
            const std::vector<std::string>& extra = {}, const Env& env = {});
Result Restore(const std::string& repo, const std::string& volume, const std::string& snapshot,
               const std::string& target, bool force = false);
// `snapshots --json`, of every volume or of one.
Json Snapshots(const std::string& repo, const std::string& volume = "");
// Snapshot ids of every volume, sorted.
std::vector<std::string> SnapshotIds(const std::string& repo);
// Parses a command's stdout as JSON; throws with the command's output when it is not.
Json ParseJson(const Result& result);
// Throws std::runtime_error(what): ends the test as failed, guards unwinding.
[[noreturn]] void Fail(const std::string& what);

// REPO/snapshots/<volume>/<seq>-<id>.manifest, or "" when there is none.
std::string FindManifest(const std::string& repo, const std::string& volume,
                         const std::string& snapshot_id);
// File names (not paths) in REPO/packs/.
std::vector<std::string> ListPacks(const std::string& repo);
// The keyed seal of `line` (with its newline) in repository `repo`, hex.
std::string RepositorySealHex(const std::string& repo, const std::string& line);
// How EditSignedFile seals what it edited.
enum class Reseal {
  kKeep,           // the old seal line stays: plain damage
  kBareSha256,     // `sha256 <hex>`: a forger without the repository key
  kRepositoryKey,  // `hmac-sha256 <hex>` under the key derived from REPO/keys/hash.key:
                   // someone who stole the key (or a writer with a bug)
};
// Rewrites a two-line sealed file of repository `repo` (line 1 JSON, line 2 the
// seal): `edit` changes line 1 (without its newline), then the seal line is made
// as `how` says. The keyed seal is computed here with OpenSSL from the key file,
// as docs/FORMAT.md describes it, independently of the engine.
void EditSignedFile(const std::string& repo, const std::string& path,
                    const std::function<void(std::string*)>& edit, Reseal how);

// Rewrites a manifest's JSON line with `edit` and seals it again as dp420 would with
// the repository key, then moves the volume's head to its new seal (ResealHead), so
// the edited manifest passes every seal and history check and only its content is
// wrong: what a holder of the key could write (docs/FORMAT.md).
void ResealManifest(const std::string& path, const std::function<void(std::string*)>& edit);
// Rewrites REPO/snapshots/VOLUME/HEAD one generation up, naming the seal its snapshot's
// manifest has now, sealed with the repository key.
void ResealHead(const std::string& repo, const std::string& volume);

// The fields the contract promises in `backup --json` and in `snapshots --json`.
const std::vector<std::string>& BackupJsonFields();
const std::vector<std::string>& ManifestJsonFields();

}  // namespace dp420::e2e

#define DP420_ASSERT_EXIT(result, code) ASSERT_EQ((result).exit_code, (code)) << (result).Describe()
#define DP420_EXPECT_EXIT(result, code) EXPECT_EQ((result).exit_code, (code)) << (result).Describe()

#endif  // DP420_TESTS_E2E_E2E_UTIL_H_
