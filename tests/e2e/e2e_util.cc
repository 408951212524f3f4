#include "e2e_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace dp420::e2e {
namespace fs = std::filesystem;

namespace {

constexpr size_t kDescribeMaxChars = 6000;
constexpr uint64_t kPatternBlockBytes = 64 * 1024;

std::string Trim(const std::string& s) {
  size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

std::string Cut(const std::string& s) {
  if (s.size() <= kDescribeMaxChars) return s;
  return s.substr(0, kDescribeMaxChars / 2) + "\n[... cut ...]\n" +
         s.substr(s.size() - kDescribeMaxChars / 2);
}

std::string JoinCommand(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& arg : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !arg.empty() && arg.find_first_of(" \t\n'\"$;&|<>*?()") == std::string::npos;
    out += plain ? arg : ShellQuote(arg);
  }
  return out;
}

std::string ReadAllFd(int fd) {
  std::string data;
  if (lseek(fd, 0, SEEK_SET) < 0) return data;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

// This process's environment without the crash and fault hooks, plus `extra`. PATH gets
// /usr/sbin (mkfs.ext4, e2fsck, losetup), which a normal user's PATH lacks.
std::vector<std::string> ChildEnvironment(const Env& extra) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    std::string key = entry.substr(0, entry.find('='));
    if (key == "DP420_TEST_CRASH" || key == "DP420_FAULT") continue;
    if (key == "PATH" && (":" + entry.substr(5) + ":").find(":/usr/sbin:") == std::string::npos) {
      entry += ":/usr/sbin:/sbin";
    }
    bool overridden =
        std::any_of(extra.begin(), extra.end(), [&](const auto& kv) { return kv.first == key; });
    if (!overridden) out.push_back(entry);
  }
  for (const auto& [key, value] : extra) out.push_back(key + "=" + value);
  return out;
}

// argv[0] as execve needs it: looked up in the child's PATH unless it has a slash.
std::string ResolveProgram(const std::string& name, const std::vector<std::string>& env) {
  if (name.find('/') != std::string::npos) return name;
  std::string path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  for (const auto& entry : env) {
    if (entry.rfind("PATH=", 0) == 0) path = entry.substr(5);
  }
  std::istringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // execve fails and the child says so
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Mount points at or below `dir`, deepest first.
std::vector<std::string> MountsBelow(const std::string& dir) {
  std::vector<std::string> found;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    std::string decoded;  // mountinfo escapes blanks as \040 and so on
    for (size_t i = 0; i < mount_point.size(); ++i) {
      if (mount_point[i] == '\\' && i + 3 < mount_point.size()) {
        decoded += static_cast<char>(std::stoi(mount_point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        decoded += mount_point[i];
      }
    }
    if (decoded == dir || decoded.rfind(dir + "/", 0) == 0) found.push_back(decoded);
  }
  std::sort(found.begin(), found.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return found;
}

int OpenOrFail(const std::string& path, int flags) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) Fail("open " + path + ": " + std::strerror(errno));
  return fd;
}

void PwriteAll(int fd, const char* data, size_t length, uint64_t offset, const std::string& path) {
  while (length > 0) {
    ssize_t n = pwrite(fd, data, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) Fail("write " + path + ": " + std::strerror(errno));
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void FillRandom(std::mt19937_64& rng, std::vector<char>* buf) {
  size_t words = buf->size() / sizeof(uint64_t);
  auto* p = reinterpret_cast<uint64_t*>(buf->data());
  for (size_t i = 0; i < words; ++i) p[i] = rng();
  for (size_t i = words * sizeof(uint64_t); i < buf->size(); ++i)
    (*buf)[i] = static_cast<char>(rng());
}

std::string ToHex(const unsigned char* digest, unsigned int length) {
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

Result RunOrFail(const std::vector<std::string>& argv) {
  Result r = RunCommand(argv);
  if (r.exit_code != 0) Fail("command failed:\n" + r.Describe());
  return r;
}

}  // namespace

void Fail(const std::string& what) { throw std::runtime_error(what); }

std::string Result::Describe() const {
  std::ostringstream os;
  os << "command: " << command << "\nexit code: " << exit_code;
  if (term_signal != 0) os << " (killed by signal " << term_signal << ")";
  if (timed_out) os << " (timed out)";
  os << "\n--- stdout ---\n" << Cut(out) << "\n--- stderr ---\n" << Cut(err) << "\n";
  return os.str();
}

bool ContainsIgnoringCase(const std::string& text, const std::string& needle) {
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  return lower(text).find(lower(needle)) != std::string::npos;
}

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::unique_ptr<Process> Process::Start(const std::vector<std::string>& argv, const Env& env) {
  if (argv.empty()) Fail("Process::Start: empty argv");
  std::unique_ptr<Process> p(new Process());
  p->command_ = JoinCommand(argv);
  p->out_fd_ = memfd_create("stdout", MFD_CLOEXEC);
  p->err_fd_ = memfd_create("stderr", MFD_CLOEXEC);
  if (p->out_fd_ < 0 || p->err_fd_ < 0) Fail(std::string("memfd_create: ") + std::strerror(errno));
  std::vector<std::string> args = argv;
  std::vector<std::string> envs = ChildEnvironment(env);
  const std::string program = ResolveProgram(argv[0], envs);
  std::vector<char*> c_args = CStrings(args);
  std::vector<char*> c_envs = CStrings(envs);
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) Fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(p->out_fd_, STDOUT_FILENO);
    dup2(p->err_fd_, STDERR_FILENO);
    setpgid(0, 0);  // its own group, so a timeout can kill whatever it started
    execve(program.c_str(), c_args.data(), c_envs.data());
    dprintf(STDERR_FILENO, "exec %s: %s\n", c_args[0], std::strerror(errno));
    _exit(127);
  }
  p->pid_ = pid;
  p->pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  return p;
}

Process::~Process() {
  if (!reaped_ && pid_ > 0) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  for (int fd : {pidfd_, out_fd_, err_fd_}) {
    if (fd >= 0) close(fd);
  }
}

void Process::Kill(int signal_number) {
  if (!reaped_ && pid_ > 0) kill(pid_, signal_number);
}

Result Process::Wait(std::chrono::milliseconds timeout) {
  Result r;
  r.command = command_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) break;
    if (done < 0 && errno != EINTR) Fail(std::string("waitpid: ") + std::strerror(errno));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    if (pidfd_ >= 0) {
      pollfd pfd{pidfd_, POLLIN, 0};
      poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  reaped_ = true;
  kill(-pid_, SIGKILL);  // leftovers of its group, if any
  if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.term_signal = WTERMSIG(status);
    r.exit_code = 128 + r.term_signal;
  }
  r.out = ReadAllFd(out_fd_);
  r.err = ReadAllFd(err_fd_);
  return r;
}

Result RunCommand(const std::vector<std::string>& argv, const Env& env,
                  std::chrono::milliseconds timeout) {
  return Process::Start(argv, env)->Wait(timeout);
}

Result Sh(const std::string& script) {
  return RunCommand({"bash", "-c", "set -euo pipefail; " + script});
}

std::string CliPath() { return DP420_CLI_PATH; }
std::string SourceDir() { return DP420_SOURCE_DIR; }

Result Cli(const std::vector<std::string>& args, const Env& env) {
  std::vector<std::string> argv{CliPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, env);
}

TempDir::TempDir() {
  std::string pattern = "/var/tmp/dp420-e2e-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) Fail(std::string("mkdtemp: ") + std::strerror(errno));
  path_ = pattern;
}

TempDir::~TempDir() {
  for (const auto& mount_point : MountsBelow(path_)) {
    Result r = RunCommand({"umount", mount_point});
    if (r.exit_code != 0) RunCommand({"umount", "-l", mount_point});
  }
  const char* keep = std::getenv("DP420_E2E_KEEP");
  if (keep != nullptr && std::string(keep) == "1") {
    std::cout << "[ keeping ] " << path_ << std::endl;
    return;
  }
  std::error_code ec;
  fs::remove_all(path_, ec);
  if (ec) std::cerr << "could not remove " << path_ << ": " << ec.message() << std::endl;
}

bool IsRoot() { return geteuid() == 0; }

bool CanUseLoop(std::string* why) {
  if (!IsRoot()) {
    *why = "not root (loop devices and mounts need root)";
    return false;
  }
  if (access("/dev/loop-control", F_OK) != 0) {
    *why = "no /dev/loop-control";
    return false;
  }
  Result r = RunCommand({"losetup", "--find"});
  if (r.exit_code != 0) {
    *why = "no free loop device: " + Trim(r.All());
    return false;
  }
  return true;
}

std::unique_ptr<LoopDevice> LoopDevice::Attach(const std::string& file, std::string* why) {
  Result r = RunCommand({"losetup", "--find", "--show", file});
  std::string device = Trim(r.out);
  if (r.exit_code != 0 || device.rfind("/dev/", 0) != 0) {
    *why = "losetup failed: " + Trim(r.All());
    return nullptr;
  }
  return std::unique_ptr<LoopDevice>(new LoopDevice(device));
}

LoopDevice::~LoopDevice() {
  // Detaching fails while something still holds the device; retry briefly.
  for (int attempt = 0; attempt < 50; ++attempt) {
    Result r = RunCommand({"losetup", "-d", device_});
    if (r.exit_code == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::cerr << "could not detach " << device_ << std::endl;
}

std::unique_ptr<Mount> Mount::Create(const std::string& source, const std::string& target,
                                     const std::string& type, const std::string& options,
                                     std::string* why) {
  std::error_code ec;
  fs::create_directories(target, ec);
  std::vector<std::string> argv{"mount"};
  if (!type.empty()) argv.insert(argv.end(), {"-t", type});
  if (!options.empty()) argv.insert(argv.end(), {"-o", options});
  argv.insert(argv.end(), {source, target});
  Result r = RunCommand(argv);
  if (r.exit_code != 0) {
    *why = "mount failed: " + Trim(r.All());
    return nullptr;
  }
  return std::unique_ptr<Mount>(new Mount(target));
}

bool Mount::Unmount(std::string* why) {
  if (!mounted_) return true;
  RunCommand({"sync"});
  Result r = RunCommand({"umount", target_});
  if (r.exit_code != 0) {
    *why = "umount " + target_ + ": " + Trim(r.All());
    return false;
  }
  mounted_ = false;
  return true;
}

Mount::~Mount() {
  std::string why;
  if (Unmount(&why)) return;
  std::cerr << why << "; unmounting lazily" << std::endl;
  RunCommand({"umount", "-l", target_});
}

std::string Sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  return ToHex(digest, length);
}

std::string Sha256File(const std::string& path) {
  int fd = OpenOrFail(path, O_RDONLY);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(4 << 20);
  for (;;) {
    ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      Fail("read " + path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
  }
  close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  return ToHex(digest, length);
}

std::string VolumeChecksum(const std::string& path, uint64_t block_size) {
  Result r = RunOrFail(
      {"python3", SourceDir() + "/scripts/volume-checksum.py", path, std::to_string(block_size)});
  return Trim(r.out);
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) Fail("stat " + path + ": " + std::strerror(errno));
  if (S_ISBLK(st.st_mode)) {
    Result r = RunOrFail({"blockdev", "--getsize64", path});
    return std::stoull(Trim(r.out));
  }
  return static_cast<uint64_t>(st.st_size);
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) Fail("stat " + path + ": " + std::strerror(errno));
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

void WritePatternFile(const std::string& path, uint64_t size, uint64_t seed, int zero_every) {
  int fd = OpenOrFail(path, O_WRONLY | O_CREAT | O_TRUNC);
  std::mt19937_64 rng(seed);
  std::vector<char> buf(kPatternBlockBytes);
  uint64_t block = 0;
  for (uint64_t offset = 0; offset < size; offset += kPatternBlockBytes, ++block) {
    size_t length = static_cast<size_t>(std::min<uint64_t>(kPatternBlockBytes, size - offset));
    if (zero_every > 0 && block % static_cast<uint64_t>(zero_every) == 0) {
      std::fill(buf.begin(), buf.end(), 0);
    } else {
      FillRandom(rng, &buf);
    }
    PwriteAll(fd, buf.data(), length, offset, path);
  }
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) Fail("ftruncate " + path);
  close(fd);
}

void OverwriteRange(const std::string& path, uint64_t offset, uint64_t length, uint64_t seed) {
  int fd = OpenOrFail(path, O_WRONLY);
  std::mt19937_64 rng(seed);
  std::vector<char> buf(static_cast<size_t>(length));
  FillRandom(rng, &buf);
  PwriteAll(fd, buf.data(), buf.size(), offset, path);
  close(fd);
}

void Truncate(const std::string& path, uint64_t size) {
  if (truncate(path.c_str(), static_cast<off_t>(size)) != 0) {
    Fail("truncate " + path + ": " + std::strerror(errno));
  }
}

void FlipBit(const std::string& path, uint64_t offset, int bit) {
  int fd = OpenOrFail(path, O_RDWR);
  char byte = 0;
  if (pread(fd, &byte, 1, static_cast<off_t>(offset)) != 1) Fail("pread " + path);
  byte = static_cast<char>(byte ^ (1 << bit));
  PwriteAll(fd, &byte, 1, offset, path);
  fsync(fd);
  close(fd);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read " + path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  if (!out) Fail("cannot write " + path);
}

Ext4Volume MakeExt4Volume(const TempDir& dir, const std::string& name, int size_mib, int real_mib,
                          int random_mib) {
  Ext4Volume v{dir / (name + ".img"), dir / (name + "-staging")};
  RunOrFail({"python3", SourceDir() + "/scripts/e2e-volume.py", "stage", v.staging, "--real-mib",
             std::to_string(real_mib), "--random-mib", std::to_string(random_mib)});
  RunOrFail({"mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d",
             v.staging, v.image, std::to_string(size_mib) + "M"});
  return v;
}

std::string MutateExt4Volume(const Ext4Volume& volume, const TempDir& dir, int seed, double percent,
                             int add_file_mib) {
  std::vector<std::string> argv{"python3",        SourceDir() + "/scripts/e2e-volume.py",
                                "mutate",         "",
                                "--seed",         std::to_string(seed),
                                "--percent",      std::to_string(percent),
                                "--add-file-mib", std::to_string(add_file_mib)};
  std::string why;
  if (CanUseLoop(&why)) {
    std::string mnt = dir / "mnt";
    auto mount = Mount::Create(volume.image, mnt, "", "loop", &why);
    if (!mount) Fail(why);
    argv[3] = mnt;
    RunOrFail(argv);
    if (!mount->Unmount(&why)) Fail(why);
    return "loop mount";
  }
  argv[3] = volume.staging;
  argv.insert(argv.end(), {"--debugfs-image", volume.image});
  RunOrFail(argv);
  return "debugfs -w (loop mount skipped: " + why + ")";
}

std::string InitRepo(const TempDir& dir, const std::string& name) {
  std::string repo = dir / name;
  Result r = Cli({"init", repo, "--encryption", "none"});
  if (r.exit_code != 0) Fail("dp420 init failed:\n" + r.Describe());
  return repo;
}

Json ParseJson(const Result& result) {
  try {
    return Json::parse(result.out);
  } catch (const Json::exception& e) {
    Fail(std::string("output is not JSON (") + e.what() + "):\n" + result.Describe());
  }
}

Json Backup(const std::string& repo, const std::string& volume, const std::string& source,
            const std::vector<std::string>& extra, const Env& env) {
  std::vector<std::string> args{"backup", "--repo", repo, "--volume", volume, "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(source);
  Result r = Cli(args, env);
  if (r.exit_code != 0) Fail("backup failed:\n" + r.Describe());
  Json j = ParseJson(r);
  if (!j.is_object()) Fail("backup --json did not print an object:\n" + r.Describe());
  return j;
}

Result Restore(const std::string& repo, const std::string& volume, const std::string& snapshot,
               const std::string& target, bool force) {
  std::vector<std::string> args{"restore", "--repo",     repo,    "--volume",
                                volume,    "--snapshot", snapshot};
  if (force) args.push_back("--force");
  args.push_back(target);
  return Cli(args);
}

Json Snapshots(const std::string& repo, const std::string& volume) {
  std::vector<std::string> args{"snapshots", "--repo", repo, "--json"};
  if (!volume.empty()) args.insert(args.end(), {"--volume", volume});
  Result r = Cli(args);
  if (r.exit_code != 0) Fail("snapshots failed:\n" + r.Describe());
  Json j = ParseJson(r);
  if (!j.is_array()) Fail("snapshots --json did not print an array:\n" + r.Describe());
  return j;
}

std::vector<std::string> SnapshotIds(const std::string& repo) {
  std::vector<std::string> ids;
  for (const auto& m : Snapshots(repo)) ids.push_back(m.at("snapshot_id").get<std::string>());
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::string FindManifest(const std::string& repo, const std::string& volume,
                         const std::string& snapshot_id) {
  std::error_code ec;
  fs::directory_iterator it(repo + "/snapshots/" + volume, ec);
  if (ec) return "";
  std::string suffix = "-" + snapshot_id + ".manifest";
  for (const auto& entry : it) {
    std::string name = entry.path().filename().string();
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return entry.path().string();
    }
  }
  return "";
}

std::vector<std::string> ListPacks(const std::string& repo) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(repo + "/packs", ec)) {
    if (entry.path().extension() == ".pack") names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

namespace {

// HMAC-SHA-256 of `data` under `key`, hex.
std::string HmacSha256Hex(const std::string& key, const std::string& data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &length);
  return ToHex(mac, length);
}

std::string FromHexOrFail(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

}  // namespace

std::string RepositorySealHex(const std::string& repo, const std::string& line) {
  std::string seal_key_hex = HmacSha256Hex(ReadFile(repo + "/keys/hash.key"), "dp420 seals v1");
  return HmacSha256Hex(FromHexOrFail(seal_key_hex), line);
}

void EditSignedFile(const std::string& repo, const std::string& path,
                    const std::function<void(std::string*)>& edit, Reseal how) {
  std::string text = ReadFile(path);
  size_t first_nl = text.find('\n');
  if (first_nl == std::string::npos) Fail(path + " has no second line");
  size_t second_nl = text.find('\n', first_nl + 1);
  std::string line1 = text.substr(0, first_nl);
  std::string line2 = text.substr(
      first_nl + 1, second_nl == std::string::npos ? std::string::npos : second_nl - first_nl - 1);
  std::string rest = second_nl == std::string::npos ? "" : text.substr(second_nl);
  if (line2.rfind("hmac-sha256 ", 0) != 0) {
    Fail(path + ": line 2 is not `hmac-sha256 <hex>`: " + line2);
  }
  std::string before = line1;
  edit(&line1);
  if (line1 == before) Fail("the edit did not change " + path);
  if (how == Reseal::kBareSha256) line2 = "sha256 " + Sha256Hex(line1 + "\n");
  if (how == Reseal::kRepositoryKey) line2 = "hmac-sha256 " + RepositorySealHex(repo, line1 + "\n");
  WriteFile(path, line1 + "\n" + line2 + rest);
}

namespace {

// REPO/snapshots/VOLUME/NAME -> REPO and VOLUME.
void SplitManifestPath(const std::string& path, std::string* repo, std::string* volume) {
  std::filesystem::path p(path);
  *volume = p.parent_path().filename().string();
  *repo = p.parent_path().parent_path().parent_path().string();
}

}  // namespace

void ResealHead(const std::string& repo, const std::string& volume) {
  std::string head_path = repo + "/snapshots/" + volume + "/HEAD";
  std::string text = ReadFile(head_path);
  Json head = Json::parse(text.substr(0, text.find('\n')));
  std::string manifest = FindManifest(repo, volume, head.at("snapshot_id").get<std::string>());
  if (manifest.empty()) Fail(head_path + " names a snapshot without a manifest");
  std::string sealed = ReadFile(manifest);
  std::string seal_line = sealed.substr(sealed.find('\n') + 1);
  head["manifest_seal"] = seal_line.substr(seal_line.find(' ') + 1, 64);
  head["generation"] = head.at("generation").get<uint64_t>() + 1;
  std::string line = head.dump() + "\n";
  WriteFile(head_path, line + "hmac-sha256 " + RepositorySealHex(repo, line) + "\n");
}

void ResealManifest(const std::string& path, const std::function<void(std::string*)>& edit) {
  std::string repo, volume;
  SplitManifestPath(path, &repo, &volume);
  EditSignedFile(repo, path, edit, Reseal::kRepositoryKey);
  ResealHead(repo, volume);
}

const std::vector<std::string>& BackupJsonFields() {
  static const std::vector<std::string> kFields{
      "snapshot_id",  "parent",          "volume_size", "bytes_read",
      "blocks_total", "blocks_changed",  "blocks_zero", "bytes_written",
      "seconds",      "checksum_sha256", "block_size"};
  return kFields;
}

const std::vector<std::string>& ManifestJsonFields() {
  static const std::vector<std::string> kFields{
      "snapshot_id", "volume",      "parent",       "created",        "checksum_sha256", "sequence",
      "block_size",  "volume_size", "blocks_total", "blocks_changed", "blocks_zero"};
  return kFields;
}

}  // namespace dp420::e2e
