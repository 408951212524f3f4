// Network backups end to end, over real sockets with real faults: the repository server
// (RunServer) on a thread of this process and agents (RemoteRepository) in it, over
// loopback, through the delaying and pausing proxy (delay_proxy.h), and across a veth pair
// between network namespaces with nftables loss (netns.h).
//
// Every test checks what was committed: each snapshot restores bit-exact (bytes compared
// with the source, and checksum_sha256 recomputed from the source as docs/FORMAT.md
// defines it), ListManifests holds exactly the expected snapshots, and RunVerify with
// read_data on the server's repository finds no problem.
//
// Servers, proxies, namespaces, running backups and temporary directories are owned by
// objects whose destructors stop, join and delete them, also when an assertion fails.

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "delay_proxy.h"
#include "engine/core/history.h"
#include "engine/core/repo.h"
#include "engine/core/restore.h"
#include "engine/core/table.h"
#include "engine/core/verify.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/server.h"
#include "engine/net/volumes.h"
#include "net_test_util.h"
#include "netns.h"
#include "server_thread.h"
#include "simd/simd.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dp420::testing::Exists;
using dp420::testing::FileSize;
using dp420::testing::TempDir;

constexpr uint32_t kBlockBytes = 64 * 1024;  // the volumes' pattern; most backups' blocks
constexpr uint32_t kSmallBlockBytes = 4096;
constexpr uint64_t kMiB = 1 << 20;
constexpr unsigned kStripes = 2;
constexpr uint64_t kCacheHeaderBytes = 64;  // id_cache.h: header, then 49 bytes a block
constexpr uint64_t kCacheRecordBytes = 49;  // id[16], sha256[32], zero flag

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- volumes ----

// Every fifth block of a fresh test volume is zero.
bool ZeroAtStart(uint64_t block) { return block % 5 == 2; }

// Block `block` as generation `seed` writes it: pseudo-random bytes, or zeros for seed 0.
void FillBlock(uint64_t seed, uint64_t block, uint8_t* out) {
  if (seed == 0) {
    std::memset(out, 0, kBlockBytes);
    return;
  }
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ULL + block);
  for (size_t i = 0; i < kBlockBytes; i += 8) {
    uint64_t word = rng();
    std::memcpy(out + i, &word, 8);
  }
}

void PwriteAll(int fd, const uint8_t* data, size_t len, uint64_t offset) {
  while (len > 0) {
    ssize_t n = pwrite(fd, data, len, static_cast<off_t>(offset));
    ASSERT_GT(n, 0) << "pwrite: " << std::strerror(errno);
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// A volume of `blocks` blocks of generation `seed`, zero where ZeroAtStart.
void WriteVolume(const std::string& path, uint64_t blocks, uint64_t seed) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<uint8_t> chunk(64 * kBlockBytes);
  for (uint64_t first = 0; first < blocks; first += 64) {
    uint64_t n = std::min<uint64_t>(64, blocks - first);
    for (uint64_t i = 0; i < n; ++i) {
      FillBlock(ZeroAtStart(first + i) ? 0 : seed, first + i, chunk.data() + i * kBlockBytes);
    }
    ASSERT_NO_FATAL_FAILURE(PwriteAll(fd, chunk.data(), n * kBlockBytes, first * kBlockBytes));
  }
  close(fd);
}

// Overwrites `blocks` with generation `seed` (zeros for 0).
void RewriteBlocks(const std::string& path, const std::vector<uint64_t>& blocks, uint64_t seed) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<uint8_t> block(kBlockBytes);
  for (uint64_t b : blocks) {
    FillBlock(seed, b, block.data());
    ASSERT_NO_FATAL_FAILURE(PwriteAll(fd, block.data(), kBlockBytes, b * kBlockBytes));
  }
  close(fd);
}

std::vector<uint8_t> ReadRange(const std::string& path, uint64_t offset, size_t len) {
  std::vector<uint8_t> out(len);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? pread(fd, out.data(), len, static_cast<off_t>(offset)) : -1;
  if (fd >= 0) close(fd);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

void WriteRange(const std::string& path, uint64_t offset, const std::vector<uint8_t>& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  PwriteAll(fd, data.data(), data.size(), offset);
  close(fd);
}


// "" when both files hold the same bytes, else where they first differ.
std::string FirstDifference(const std::string& a, const std::string& b) {
  if (FileSize(a) != FileSize(b)) {
    return "sizes differ: " + std::to_string(FileSize(a)) + " vs " + std::to_string(FileSize(b));
  }
  constexpr size_t kChunk = 4 * kMiB;
  for (uint64_t offset = 0; offset < FileSize(a); offset += kChunk) {
    std::vector<uint8_t> x = ReadRange(a, offset, kChunk);
    std::vector<uint8_t> y = ReadRange(b, offset, kChunk);
    if (x.size() != y.size()) return "short read at " + std::to_string(offset);
    if (std::memcmp(x.data(), y.data(), x.size()) == 0) continue;
    size_t i = 0;
    while (x[i] == y[i]) ++i;
    return "bytes differ at offset " + std::to_string(offset + i) + " (block " +
           std::to_string((offset + i) / kBlockBytes) + ")";
  }
  return "";
}

// checksum_sha256 of the file in blocks of `block_bytes`, computed here as
// docs/FORMAT.md defines it: SHA-256 over the SHA-256 of every block.
std::string VolumeChecksum(const std::string& path, uint32_t block_bytes) {
  simd::Sha256Stream volume;
  constexpr size_t kChunk = 4 * kMiB;  // a multiple of every block size
  for (uint64_t offset = 0; offset < FileSize(path); offset += kChunk) {
    std::vector<uint8_t> data = ReadRange(path, offset, kChunk);
    for (size_t at = 0; at < data.size(); at += block_bytes) {
      uint8_t digest[32];
      simd::Sha256(data.data() + at, std::min<size_t>(block_bytes, data.size() - at), digest);
      volume.Update(digest, sizeof(digest));
    }
  }
  uint8_t out[32];
  volume.Final(out);
  return simd::ToHex(out, sizeof(out));
}

// Sends this process's stderr (where the server logs) to `path` until destroyed.
class StderrCapture {
 public:
  explicit StderrCapture(const std::string& path) : path_(path) {
    std::fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
  }
  ~StderrCapture() {
    std::fflush(stderr);
    if (saved_ >= 0) {
      dup2(saved_, STDERR_FILENO);
      close(saved_);
    }
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  std::string Text() const {
    std::fflush(stderr);
    std::vector<uint8_t> bytes = ReadRange(path_, 0, FileSize(path_));
    return std::string(bytes.begin(), bytes.end());
  }

 private:
  std::string path_;
  int saved_ = -1;
};

// ---- a backup on its own thread ----

// RemoteRepository::Backup on a thread. The destructor cancels it and joins; `remote`
// must outlive this object.
class AsyncBackup {
 public:
  AsyncBackup(RemoteRepository& remote, BackupOptions options) : options_(std::move(options)) {
    options_.control.cancel = &cancel_;
    thread_ = std::thread([this, &remote] {
      Result<BackupResult> result = remote.Backup(options_);
      std::lock_guard lock(mu_);
      result_.emplace(std::move(result));
      cv_.notify_all();
    });
  }
  ~AsyncBackup() {
    cancel_.store(true);
    thread_.join();
  }
  AsyncBackup(const AsyncBackup&) = delete;
  AsyncBackup& operator=(const AsyncBackup&) = delete;

  // True once the backup returned, waiting at most `timeout`.
  bool Wait(Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return result_.has_value(); });
  }
  bool done() {
    std::lock_guard lock(mu_);
    return result_.has_value();
  }
  // Only after Wait() returned true.
  Result<BackupResult>& result() { return *result_; }

 private:
  BackupOptions options_;
  std::atomic<bool> cancel_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Result<BackupResult>> result_;
  std::thread thread_;
};

// Waits until `done` holds, at most `timeout`.
template <typename Predicate>
bool WaitUntil(Predicate done, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// ---- the fixture: a repository with two append clients ----

class BackupNetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Repository::Init(repo_path_).ok());
    auto clients = testnet::WriteTestClients(clients_path_, dir_.path(), {{"alice"}, {"bob"}});
    ASSERT_TRUE(clients.ok()) << clients.status().ToString();
  }

  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }
  std::string KeyFile(const std::string& client) const {
    return testnet::TestKeyFile(dir_.path(), client);
  }

  ServerOptions ServerDefaults() const {
    ServerOptions o = testnet::TestServerOptions(repo_path_, clients_path_);
    o.resume_grace = 5s;
    return o;
  }

  RemoteOptions RemoteDefaults(const std::string& client, const std::string& address) const {
    RemoteOptions o;
    o.address = address;
    o.client = client;
    o.key_file = KeyFile(client);
    o.connect_timeout = 3s;
    o.heartbeat_interval = 1s;
    o.retry_for = 20s;
    o.cache_dir = Path("cache-" + client);
    return o;
  }

  std::unique_ptr<RemoteRepository> Connect(const RemoteOptions& o) {
    auto remote = RemoteRepository::Connect(o);
    EXPECT_TRUE(remote.ok()) << remote.status().ToString();
    return remote.ok() ? std::move(remote).value() : nullptr;
  }

  static BackupOptions BackupOf(const std::string& volume, const std::string& source,
                                uint32_t block_bytes = kBlockBytes) {
    BackupOptions o;
    o.volume = volume;
    o.source_path = source;
    o.block_size = block_bytes;
    o.threads = kStripes;
    o.tool_version = "backup_net_test";
    return o;
  }

  // Connects and runs one backup: a fresh RemoteRepository per operation, as the CLI
  // runs them (one object across operations: OneRemoteRepositoryRunsSeveralOperations).
  Result<BackupResult> BackupVia(const RemoteOptions& ro, const std::string& volume,
                                 const std::string& source,
                                 uint32_t block_bytes = kBlockBytes) {
    auto remote = RemoteRepository::Connect(ro);
    if (!remote.ok()) return remote.status();
    return (*remote)->Backup(BackupOf(volume, source, block_bytes));
  }

  // `m` restores bit-exact through a RemoteRepository with `ro` (when not null) and with
  // a local RunRestore on the server's repository, and its checksum_sha256 is the source's.
  void ExpectRestoresBitExact(const RemoteOptions* ro, const Manifest& m,
                              const std::string& source) {
    EXPECT_EQ(m.checksum_sha256, VolumeChecksum(source, m.block_size))
        << "snapshot " << m.snapshot_id;
    RestoreOptions o;
    o.volume = m.volume;
    o.snapshot = m.snapshot_id;
    o.threads = kStripes;
    if (ro != nullptr) {
      std::unique_ptr<RemoteRepository> remote = Connect(*ro);
      ASSERT_NE(remote, nullptr);
      o.target_path = Path("restore-remote-" + m.snapshot_id);
      Result<RestoreResult> restored = remote->Restore(o);
      ASSERT_TRUE(restored.ok()) << restored.status().ToString();
      EXPECT_EQ(restored->manifest.snapshot_id, m.snapshot_id);
      EXPECT_EQ(restored->manifest.checksum_sha256, m.checksum_sha256);
      EXPECT_EQ(FirstDifference(source, o.target_path), "") << "remote restore of "
                                                            << m.snapshot_id;
      unlink(o.target_path.c_str());
    }
    auto repo = Repository::Open(repo_path_);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    o.target_path = Path("restore-local-" + m.snapshot_id);
    Result<RestoreResult> restored = RunRestore(**repo, o);
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    EXPECT_EQ(restored->manifest.checksum_sha256, m.checksum_sha256);
    EXPECT_EQ(FirstDifference(source, o.target_path), "") << "local restore of "
                                                          << m.snapshot_id;
    unlink(o.target_path.c_str());
  }

  // The server's repository holds exactly these snapshots of `volume`, oldest
  // first: a repository volume name, or alice's volume (engine/net/volumes.h).
  void ExpectSnapshots(const std::string& volume, const std::vector<std::string>& ids) {
    auto repo = Repository::Open(repo_path_);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    std::vector<Manifest> list;
    std::vector<DamagedFile> damaged;
    std::string client, name;
    std::string repo_volume = SplitNamespacedVolume(volume, &client, &name)
                                  ? volume
                                  : NamespacedVolume("alice", volume);
    Status s = (*repo)->ListManifests(repo_volume, &list, &damaged);
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (const DamagedFile& d : damaged) ADD_FAILURE() << d.path << ": " << d.status.ToString();
    std::vector<std::string> got;
    for (const Manifest& m : list) got.push_back(m.snapshot_id);
    EXPECT_EQ(got, ids) << "snapshots of " << volume << " (" << repo_volume << ")";
  }

  // RunVerify with read_data over the whole repository: no problem, no broken snapshot.
  void ExpectRepositoryClean() {
    auto repo = Repository::Open(repo_path_);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    VerifyOptions o;
    o.read_data = true;
    Result<VerifyReport> report = RunVerify(**repo, o);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    for (const VerifyProblem& p : report->problems) {
      ADD_FAILURE() << "verify: " << p.object << ": " << p.message;
    }
    EXPECT_TRUE(report->broken_snapshots.empty());
  }

  TempDir dir_;
  std::string repo_path_ = dir_.path() + "/repo";
  std::string clients_path_ = dir_.path() + "/clients.json";
};

std::string Loopback(uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

std::vector<uint64_t> Range(uint64_t first, uint64_t count, uint64_t step) {
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < count; ++i) out.push_back(first + i * step);
  return out;
}

// ---- 1. loopback: full, incremental, the parent id cache ----

TEST_F(BackupNetTest, FullAndIncrementalOverLoopbackSendExactlyTheChangedBlocks) {
  constexpr uint64_t kBlocks = 512;  // 32 MiB
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, kBlocks, 11));
  std::vector<std::string> ids;

  // Full: every non-zero block is sent and stored once.
  Result<BackupResult> full = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  uint64_t data_blocks = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) data_blocks += ZeroAtStart(b) ? 0 : 1;
  EXPECT_EQ(full->manifest.blocks_stored, data_blocks);
  EXPECT_EQ(full->bytes_sent_zerocopy, data_blocks * kBlockBytes);
  EXPECT_EQ(full->manifest.client, "alice");
  EXPECT_EQ(full->reconnects, 0u);
  ids.push_back(full->manifest.snapshot_id);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, full->manifest, source));

  // Incremental: 37 blocks get new data (7 of them were zero), 5 data blocks become zero.
  std::vector<uint64_t> changed = Range(3, 30, 16);  // never ZeroAtStart: 3 + 16k mod 5 != 2
  for (uint64_t b : Range(2, 7, 50)) changed.push_back(b);  // ZeroAtStart blocks
  std::vector<uint64_t> zeroed = Range(1, 5, 100);
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, changed, 22));
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, zeroed, 0));
  Result<BackupResult> inc = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  EXPECT_EQ(inc->manifest.parent, full->manifest.snapshot_id);
  EXPECT_EQ(inc->bytes_sent_zerocopy, changed.size() * kBlockBytes);
  EXPECT_GT(inc->bytes_sent, inc->bytes_sent_zerocopy);  // plus headers, ids and pages
  EXPECT_EQ(inc->manifest.blocks_stored, changed.size());
  EXPECT_EQ(inc->manifest.blocks_changed, changed.size() + zeroed.size());
  EXPECT_EQ(inc->bytes_resent, 0u);
  ids.push_back(inc->manifest.snapshot_id);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, inc->manifest, source));

  // A fresh cache directory: the parent's ids are fetched; the same blocks go out.
  std::string repo_id = full->manifest.repo_id;
  std::string cache = ro.cache_dir + "/" + repo_id + "/vol1.ids";
  ASSERT_TRUE(Exists(cache)) << cache;
  RemoteOptions fresh_ro = ro;
  fresh_ro.cache_dir = Path("cache-fresh");
  std::vector<uint64_t> third = Range(4, 23, 20);
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, third, 33));
  Result<BackupResult> fetched = BackupVia(fresh_ro, "vol1", source);
  ASSERT_TRUE(fetched.ok()) << fetched.status().ToString();
  EXPECT_EQ(fetched->bytes_sent_zerocopy, third.size() * kBlockBytes);
  EXPECT_EQ(fetched->manifest.blocks_stored, third.size());
  EXPECT_EQ(fetched->manifest.parent, inc->manifest.snapshot_id);
  ids.push_back(fetched->manifest.snapshot_id);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&fresh_ro, fetched->manifest, source));
  std::string fresh_cache = fresh_ro.cache_dir + "/" + repo_id + "/vol1.ids";
  ASSERT_EQ(FileSize(fresh_cache), kCacheHeaderBytes + kBlocks * kCacheRecordBytes);

  // Flipped ids (header and seal intact): a block whose cached id is wrong is sent again,
  // never taken as unchanged; the snapshot must restore bit-exact (or be refused).
  std::vector<uint64_t> fourth = Range(6, 11, 40);
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, fourth, 44));
  std::set<uint64_t> expect_stored(fourth.begin(), fourth.end());
  for (uint64_t b = 0; b < kBlocks; b += 16) {
    std::vector<uint8_t> record = ReadRange(fresh_cache, kCacheHeaderBytes + b * kCacheRecordBytes,
                                            kCacheRecordBytes);
    ASSERT_EQ(record.size(), kCacheRecordBytes);
    bool zero_now = ReadRange(source, b * kBlockBytes, kBlockBytes) ==
                    std::vector<uint8_t>(kBlockBytes, 0);
    for (size_t i = 0; i < 16; i += 3) record[i] ^= 0xa5;
    if (b % 64 == 0) record[48] ^= 1;  // the zero flag too
    ASSERT_NO_FATAL_FAILURE(
        WriteRange(fresh_cache, kCacheHeaderBytes + b * kCacheRecordBytes, record));
    if (!zero_now) expect_stored.insert(b);
  }
  // Damaged ids only make the agent send more: the backup commits.
  Result<BackupResult> corrupted = BackupVia(fresh_ro, "vol1", source);
  ASSERT_TRUE(corrupted.ok()) << corrupted.status().ToString();
  EXPECT_EQ(corrupted->manifest.blocks_stored, expect_stored.size());
  ids.push_back(corrupted->manifest.snapshot_id);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&fresh_ro, corrupted->manifest, source));
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", ids));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// The agent holds the committed snapshot against its own reads. A digest
// damaged in its local cache makes the check fail (the agent cannot tell that
// from a server that committed other digests); the cache is removed, and the
// next backup, fetching the parent's records from the server, passes.
TEST_F(BackupNetTest, DamagedDigestInTheLocalCacheFailsTheCommitCheckThenHeals) {
  constexpr uint64_t kBlocks = 64;
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, kBlocks, 12));
  Result<BackupResult> full = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  std::string cache = ro.cache_dir + "/" + full->manifest.repo_id + "/vol1.ids";
  const uint64_t victim = 9;  // a data block that stays unchanged
  ASSERT_FALSE(ZeroAtStart(victim));
  std::vector<uint8_t> record = ReadRange(cache, kCacheHeaderBytes + victim * kCacheRecordBytes,
                                          kCacheRecordBytes);
  ASSERT_EQ(record.size(), kCacheRecordBytes);
  record[16 + 5] ^= 0x40;  // its SHA-256; id and zero flag intact
  ASSERT_NO_FATAL_FAILURE(
      WriteRange(cache, kCacheHeaderBytes + victim * kCacheRecordBytes, record));
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, {3}, 5));

  Result<BackupResult> refused = BackupVia(ro, "vol1", source);
  ASSERT_FALSE(refused.ok()) << "a committed snapshot that does not match the agent's reads "
                                "was accepted";
  EXPECT_EQ(refused.status().code(), Code::kCorruption) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("checksum_sha256"), std::string::npos)
      << refused.status().ToString();
  EXPECT_FALSE(Exists(cache)) << "the damaged cache is still there";

  Result<BackupResult> healed = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, healed->manifest, source));
}

// The server lost the packs of the parent's blocks (a disk, a careless
// operator): the agent's cache calls them unchanged, the server refuses that,
// the agent fetches the parent's table again (it marks the lost blocks) and
// sends them: the snapshot commits, holds every block, restores bit-exact and
// says how many it healed; the next backup is an ordinary incremental.
TEST_F(BackupNetTest, IncrementalOnLostParentPacksHealsFromTheSource) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 32, 41));
  Result<BackupResult> full = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto repo = Repository::Open(repo_path_);
  ASSERT_TRUE(repo.ok());
  for (uint32_t id : (*repo)->ListPackIds()) {
    if (id != full->manifest.table_root.pack_id) {
      ASSERT_EQ(unlink((*repo)->PackPath(id).c_str()), 0);
    }
  }
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, {3}, 42));
  Result<BackupResult> healed = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->blocks_healed, full->manifest.blocks_stored);
  EXPECT_EQ(healed->manifest.blocks_stored, full->manifest.blocks_stored);
  EXPECT_GT(healed->bytes_resent, 0u) << "the refused first attempt's bytes";
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, healed->manifest, source));
  VerifyOptions vo;
  vo.volume = healed->manifest.volume;
  vo.snapshot = healed->manifest.snapshot_id;
  vo.read_data = true;
  auto verified = RunVerify(**repo, vo);
  ASSERT_TRUE(verified.ok());
  EXPECT_TRUE(verified->problems.empty()) << verified->problems[0].message;
  Result<BackupResult> next = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(next->blocks_healed, 0u);
  EXPECT_EQ(next->manifest.blocks_stored, 0u);
}

// A record damaged in place on the server: verify --read-data there records
// it, and the next backup over the network sends exactly that block again.
TEST_F(BackupNetTest, RecordVerifyFoundDamagedIsSentAgain) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 32, 43));
  Result<BackupResult> full = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto repo = Repository::Open(repo_path_);
  ASSERT_TRUE(repo.ok());
  TableReader table(**repo, full->manifest);
  uint32_t count = 0;
  auto leaf = table.Leaf(0, &count);
  ASSERT_TRUE(leaf.ok());
  const ObjRef ref = leaf.value()[5].ref;
  ASSERT_TRUE(ref.stored());
  {
    int fd = open((*repo)->PackPath(ref.pack_id).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    char c = 0x11;
    ASSERT_EQ(pwrite(fd, &c, 1, off_t(ref.offset_4k) * 4096 + 99), 1);
    close(fd);
  }
  VerifyOptions vo;
  vo.read_data = true;
  auto found = RunVerify(**repo, vo);
  ASSERT_TRUE(found.ok());
  ASSERT_FALSE(found->problems.empty());
  Result<BackupResult> healed = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(healed.ok()) << healed.status().ToString();
  EXPECT_EQ(healed->blocks_healed, 1u);
  EXPECT_EQ(healed->manifest.blocks_stored, 1u);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, healed->manifest, source));
}

// A nightly job that backs up again right after a backup (or a retry after
// the agent refused a commit) finds the volume free: the server gives the
// volume back as soon as it has committed, not when its session has wound
// down.
TEST_F(BackupNetTest, BackToBackBackupsNeverFindTheVolumeBusy) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 4, 31));
  for (int i = 0; i < 20; ++i) {
    if (i % 2) {
      ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, {1}, uint64_t(40 + i)));
    }
    Result<BackupResult> r = BackupVia(ro, "vol1", source);
    ASSERT_TRUE(r.ok()) << "backup " << i << ": " << r.status().ToString();
  }
}

// The server's whole state put back as it was (its repository's volume folder
// and its own anchors, as a restore of the server host from an older copy
// would): the server cannot tell, the agent can. It refuses to build on the
// older snapshot and names the file that accepts the rollback.
TEST_F(BackupNetTest, ServerWhoseHistoryWentBackIsRefusedByTheAgent) {
  constexpr uint64_t kBlocks = 32;
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, kBlocks, 21));
  Result<BackupResult> first = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto repo = Repository::Open(repo_path_);
  ASSERT_TRUE(repo.ok());
  std::string folder = (*repo)->SnapshotsDir(NamespacedVolume("alice", "vol1"));
  std::string saved = Path("saved-folder");
  std::filesystem::copy(folder, saved, std::filesystem::copy_options::recursive);
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, {2, 7}, 22));
  Result<BackupResult> second = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(second.ok()) << second.status().ToString();

  std::filesystem::remove_all(folder);
  std::filesystem::copy(saved, folder, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(AnchorDir(**repo));
  Result<BackupResult> refused = BackupVia(ro, "vol1", source);
  ASSERT_FALSE(refused.ok()) << "built on a server history that went back";
  EXPECT_EQ(refused.status().code(), Code::kCorruption);
  const std::string& message = refused.status().message();
  EXPECT_NE(message.find("went back"), std::string::npos) << message;
  EXPECT_NE(message.find(second->manifest.snapshot_id), std::string::npos) << message;
  std::vector<Manifest> listed;
  ASSERT_TRUE((*repo)->ListManifests(NamespacedVolume("alice", "vol1"), &listed, nullptr).ok());
  EXPECT_EQ(listed.size(), 1u) << "nothing was committed";
  // Nor does this host restore the older snapshot as "latest".
  auto remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  RestoreOptions latest;
  latest.volume = "vol1";
  latest.snapshot = "latest";
  latest.target_path = Path("latest.img");
  Result<RestoreResult> restored = remote->Restore(latest);
  ASSERT_FALSE(restored.ok()) << "restored a 'latest' older than what this host committed";
  EXPECT_NE(restored.status().message().find("went back"), std::string::npos)
      << restored.status().ToString();
  EXPECT_FALSE(Exists(latest.target_path));
  // And its verify, of the volume or of everything, reports the rollback
  // the server's own verify cannot see (its anchors went with its copy).
  for (const std::string& volume : {std::string("vol1"), std::string()}) {
    VerifyOptions vo;
    vo.volume = volume;
    Result<VerifyReport> report = remote->Verify(vo);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_EQ(report->problems.size(), 1u) << "verify of '" << volume << "'";
    EXPECT_NE(report->problems[0].message.find("went back"), std::string::npos)
        << report->problems[0].message;
  }
  remote.reset();

  size_t at = message.find("remove ");
  ASSERT_NE(at, std::string::npos);
  ASSERT_TRUE(std::filesystem::remove(message.substr(at + 7)));
  Result<BackupResult> accepted = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  EXPECT_EQ(accepted->manifest.parent, first->manifest.snapshot_id);
}

// A stale parent id cache: its header names the parent, its ids are the grandparent's,
// and a data block of the volume is back at its grandparent content. The agent calls that
// block unchanged, which only the server can see is wrong.
struct StaleCache {
  std::string cache;                 // the cache file
  std::vector<std::string> ids;      // the two snapshots committed to get there
};

class StaleCacheTest : public BackupNetTest {
 protected:
  // Two backups of `source` (the second changes block 8), then block 8 reverted and the
  // cache made stale.
  void MakeStaleCache(const RemoteOptions& ro, const std::string& source, StaleCache* out) {
    ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 5));
    Result<BackupResult> first = BackupVia(ro, "vol1", source);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    out->cache = ro.cache_dir + "/" + first->manifest.repo_id + "/vol1.ids";
    std::vector<uint8_t> grandparent_ids = ReadRange(out->cache, 0, 64 * kMiB);
    constexpr uint64_t kReverted = 8;  // a data block (not ZeroAtStart)
    std::vector<uint8_t> old_block = ReadRange(source, kReverted * kBlockBytes, kBlockBytes);
    ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, {kReverted}, 6));
    Result<BackupResult> second = BackupVia(ro, "vol1", source);
    ASSERT_TRUE(second.ok()) << second.status().ToString();
    ASSERT_EQ(second->manifest.blocks_stored, 1u);
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, second->manifest, source));
    out->ids = {first->manifest.snapshot_id, second->manifest.snapshot_id};

    ASSERT_NO_FATAL_FAILURE(WriteRange(source, kReverted * kBlockBytes, old_block));
    std::vector<uint8_t> parent_header = ReadRange(out->cache, 0, kCacheHeaderBytes);
    std::vector<uint8_t> stale(grandparent_ids);
    std::copy(parent_header.begin(), parent_header.end(), stale.begin());
    ASSERT_NO_FATAL_FAILURE(WriteRange(out->cache, 0, stale));
  }

  // A backup; while it meets the lock of an earlier refused session (kBusy), again.
  Result<BackupResult> BackupPastBusy(const RemoteOptions& ro, const std::string& source) {
    Result<BackupResult> r = BackupVia(ro, "vol1", source);
    for (auto until = Clock::now() + 10s;
         !r.ok() && r.status().code() == Code::kBusy && Clock::now() < until;) {
      std::this_thread::sleep_for(200ms);
      r = BackupVia(ro, "vol1", source);
    }
    return r;
  }
};

TEST_F(StaleCacheTest, StaleParentCacheIsRefusedAndNothingIsCommitted) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  StaleCache stale;
  ASSERT_NO_FATAL_FAILURE(MakeStaleCache(ro, source, &stale));
  Result<BackupResult> refused = BackupVia(ro, "vol1", source);
  ASSERT_FALSE(refused.ok()) << "committed " << refused->manifest.snapshot_id
                             << " from a stale cache";
  // The refusal names the cache (StaleCacheRefusalEndsTheBackupAtOnce checks that the
  // backup is not started over).
  EXPECT_NE(refused.status().message().find("cache is stale"), std::string::npos)
      << refused.status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", stale.ids));

  // Without the cache the ids are fetched and the reverted block is sent.
  ASSERT_EQ(unlink(stale.cache.c_str()), 0);
  Result<BackupResult> third = BackupPastBusy(ro, source);
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  EXPECT_EQ(third->manifest.blocks_stored, 1u);
  EXPECT_EQ(third->bytes_sent_zerocopy, kBlockBytes);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, third->manifest, source));
  stale.ids.push_back(third->manifest.snapshot_id);
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", stale.ids));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

TEST_F(StaleCacheTest, StaleCacheRefusalEndsTheBackupAtOnce) {
  // The server refuses the page and reports the refusal on the control connection
  // before it ends the session, so the agent fails with that reason at once; it does
  // not mistake the closed connection for a lost server and start the backup over.
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::string source = Path("vol1");
  StaleCache stale;
  ASSERT_NO_FATAL_FAILURE(MakeStaleCache(ro, source, &stale));
  for (int i = 0; i < 5; ++i) {
    std::string log;
    Result<BackupResult> refused = Status::Internal("not run");
    {
      StderrCapture capture(Path("server.log"));
      refused = BackupPastBusy(ro, source);
      std::this_thread::sleep_for(500ms);  // the server logs what it does after the answer
      log = capture.Text();
    }
    ASSERT_FALSE(refused.ok()) << "committed from a stale cache";
    EXPECT_NE(refused.status().message().find("cache is stale"), std::string::npos)
        << "call " << i << ": " << refused.status().ToString();
    size_t started = 0;
    for (size_t at = log.find("backup started"); at != std::string::npos;
         at = log.find("backup started", at + 1)) {
      ++started;
    }
    EXPECT_EQ(started, 1u) << "call " << i << " started the backup " << started << " times";
  }
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", stale.ids));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 2. 50 ms each way ----

TEST_F(BackupNetTest, FiftyMillisecondsEachWayRestoresBitExact) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  testnet::DelayProxy proxy;
  testnet::DelayProxyOptions po;
  po.delay = 50ms;
  ASSERT_TRUE(proxy.Start("127.0.0.1", server.port(), po, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(proxy.port()));
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  EXPECT_GE(remote->clock().rtt_ns, 100'000'000);  // the proxy is in the path
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 7));
  auto start = Clock::now();
  Result<BackupResult> full = remote->Backup(BackupOf("vol1", source));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  std::printf("[ timing ] 32 MiB backup at 50 ms each way: %.2f s\n", SecondsSince(start));
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, Range(0, 64, 8), 8));
  Result<BackupResult> inc = BackupVia(ro, "vol1", source);
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  EXPECT_EQ(inc->bytes_sent_zerocopy, 64 * kBlockBytes);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&ro, inc->manifest, source));
  ASSERT_NO_FATAL_FAILURE(
      ExpectSnapshots("vol1", {full->manifest.snapshot_id, inc->manifest.snapshot_id}));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 3. 1 % loss in both directions ----

class NamespaceBackupTest : public BackupNetTest {
 protected:
  // A server in one namespace and the agent in another, joined by a veth pair with
  // `veth_options`, `loss_percent` of the packets each side receives dropped by nftables.
  // Backs up a 32 MiB volume and restores it; `*seconds` gets the backup's duration.
  void Run(const testnet::VethOptions& veth_options, int loss_percent, double* seconds) {
    std::string error;
    testnet::NetNs server_ns;
    testnet::NetNs agent_ns;
    testnet::VethPair veth;
    ASSERT_TRUE(server_ns.Create(&error)) << error;
    ASSERT_TRUE(agent_ns.Create(&error)) << error;
    ASSERT_TRUE(veth.Create(server_ns, &agent_ns, &error, veth_options)) << error;
    testnet::Nft server_nft;
    testnet::Nft agent_nft;
    ASSERT_TRUE(server_nft.Install(server_ns, veth.dev_a(), &error)) << error;
    ASSERT_TRUE(agent_nft.Install(agent_ns, veth.dev_b(), &error)) << error;
    if (loss_percent > 0) {
      ASSERT_TRUE(server_nft.SetLoss(loss_percent, &error)) << error;
      ASSERT_TRUE(agent_nft.SetLoss(loss_percent, &error)) << error;
    }
    ServerOptions so = ServerDefaults();
    so.listen = veth.addr_a() + ":0";
    ServerThread server;
    ASSERT_TRUE(server.Start(so, server_ns.fd(), &error)) << error;
    std::string source = Path("vol1");
    ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 9));
    uint64_t retrans_before = 0;
    uint64_t retrans_after = 0;
    ASSERT_TRUE(agent_ns.TcpCounter("RetransSegs", &retrans_before, &error)) << error;

    // Every socket of the agent (control, stripes, reconnects) is made on this thread or
    // the threads it starts, so all of them live in the agent's namespace.
    std::optional<Manifest> committed;
    RemoteOptions ro = RemoteDefaults("alice", veth.addr_a() + ":" + std::to_string(server.port()));
    auto start = Clock::now();
    ASSERT_TRUE(agent_ns.RunInside(
        [&] {
          Result<BackupResult> full = BackupVia(ro, "vol1", source);
          *seconds = SecondsSince(start);
          ASSERT_TRUE(full.ok()) << full.status().ToString();
          std::printf("[ timing ] 32 MiB backup, %d%% loss: %.2f s, reconnects %llu\n",
                      loss_percent, *seconds,
                      static_cast<unsigned long long>(full->reconnects));
          committed = full->manifest;
          ExpectRestoresBitExact(&ro, full->manifest, source);
        },
        &error))
        << error;
    ASSERT_TRUE(committed.has_value());
    ASSERT_TRUE(agent_ns.TcpCounter("RetransSegs", &retrans_after, &error)) << error;
    if (loss_percent > 0) {
      EXPECT_GT(retrans_after, retrans_before) << "no packet was lost";
    }
    ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {committed->snapshot_id}));
    ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
  }
};

TEST_F(NamespaceBackupTest, OnePercentLossRestoresBitExact) {
  DP420_SKIP_WITHOUT_NFT();
  // GSO on the veth pair: nftables drops whole TCP super-packets (up to 64 KiB); see
  // WireSizedPacketsBackUpAtLinkSpeed for the link of wire-sized packets.
  testnet::VethOptions vo;
  vo.one_segment_per_packet = false;
  double seconds = 0;
  ASSERT_NO_FATAL_FAILURE(Run(vo, 1, &seconds));
  EXPECT_LT(seconds, 30);
}

TEST_F(NamespaceBackupTest, WireSizedPacketsBackUpAtLinkSpeed) {
  // The harness' default link: one MTU-sized segment per packet (gso_max_segs 1), as a
  // NIC without segmentation offload puts on the wire; no loss at all. Zero-copy sends
  // once crawled here at one segment per delayed ACK (the send buffer stayed at a few
  // segments); the agent now sizes its stripes' send buffer and sends the next frame as
  // soon as the previous one is sent, not once it is acknowledged.
  DP420_SKIP_WITHOUT_NFT();
  testnet::VethOptions vo;
  vo.one_segment_per_packet = true;
  double seconds = 0;
  ASSERT_NO_FATAL_FAILURE(Run(vo, 0, &seconds));
  EXPECT_LT(seconds, 10);
}

// ---- 4. a 20 s partition in the middle of a backup ----

// A proxy that moves about 5 MiB/s per connection: 256 KiB queued per 50 ms. The backups
// through it use 4 KiB blocks: a leaf page covers 1 MiB, so a resume (at a page boundary)
// has something left to skip.
testnet::DelayProxyOptions ThrottledProxy() {
  testnet::DelayProxyOptions po;
  po.delay = 50ms;
  po.queue_bytes_max = 256 * 1024;
  po.chunk_bytes = 64 * 1024;
  po.connections_max = 256;  // every reconnect attempt during a stall is one more
  return po;
}

// Starts `server` with `so`, and `proxy` (ThrottledProxy) in front of it.
void StartBehindThrottledProxy(ServerThread& server, const ServerOptions& so,
                               testnet::DelayProxy& proxy) {
  std::string error;
  ASSERT_TRUE(server.Start(so, -1, &error)) << error;
  ASSERT_TRUE(proxy.Start("127.0.0.1", server.port(), ThrottledProxy(), &error)) << error;
}

// Waits until `bytes` of the running backup went through `proxy`; fails when the
// backup ended first.
void WaitForwarded(testnet::DelayProxy& proxy, AsyncBackup& backup, uint64_t bytes) {
  ASSERT_TRUE(WaitUntil([&] { return proxy.bytes_forwarded() >= bytes || backup.done(); },
                        30s));
  ASSERT_FALSE(backup.done()) << "the backup ended before " << bytes / kMiB
                              << " MiB went through the proxy";
}

TEST_F(BackupNetTest, TwentySecondPartitionMidBackupResumes) {
  constexpr uint64_t kBlocks = 1024;  // 64 MiB, ~51 MiB of data: ~5 s through the proxy
  ServerOptions so = ServerDefaults();
  so.resume_grace = 60s;  // longer than the partition: the session waits for the agent
  ServerThread server;
  testnet::DelayProxy proxy;
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(server, so, proxy));
  RemoteOptions ro = RemoteDefaults("alice", Loopback(proxy.port()));
  ro.retry_for = 30s;
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, kBlocks, 12));

  auto start = Clock::now();
  AsyncBackup backup(*remote, BackupOf("vol1", source, kSmallBlockBytes));
  ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxy, backup, 12 * kMiB));
  uint64_t at_partition = proxy.bytes_forwarded();
  proxy.Pause();
  std::this_thread::sleep_for(20s);
  EXPECT_FALSE(backup.done()) << "the backup gave up during a 20 s partition with 30 s of retry";
  proxy.Resume();
  // ~40 MiB left at the proxy's pace, after at most one 8 s backoff: well within 45 s,
  // and the test's waits (30 + 20 + 45 s) stay inside its 120 s limit.
  ASSERT_TRUE(backup.Wait(45s)) << "backup hung after the partition";
  Result<BackupResult>& result = backup.result();
  std::printf("[ timing ] partition at %.1f MiB, backup ended after %.1f s: %s\n",
              static_cast<double>(at_partition) / kMiB, SecondsSince(start),
              result.ok() ? "committed" : result.status().ToString().c_str());
  uint64_t data_bytes = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) data_bytes += ZeroAtStart(b) ? 0 : kBlockBytes;
  // The partition is shorter than retry_for and resume_grace: the backup resumes.
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GE(result->reconnects, 1u);
  EXPECT_EQ(result->manifest.blocks_stored, data_bytes / kSmallBlockBytes);
  EXPECT_LT(result->bytes_resent, data_bytes) << "the resume sent everything again";
  std::printf("[ result ] reconnects %llu, bytes_resent %llu\n",
              static_cast<unsigned long long>(result->reconnects),
              static_cast<unsigned long long>(result->bytes_resent));
  RemoteOptions direct = RemoteDefaults("alice", Loopback(server.port()));
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&direct, result->manifest, source));
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {result->manifest.snapshot_id}));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// Several paths to one server ("A,B"): path A (through a proxy) dies in the
// middle of the backup and refuses new connections; the agent moves to path B
// and resumes the same backup there, not starting it over.
TEST_F(BackupNetTest, APathThatFailsMidBackupGivesWayToTheNextWithoutStartingOver) {
  constexpr uint64_t kBlocks = 1024;
  ServerOptions so = ServerDefaults();
  so.resume_grace = 60s;
  ServerThread server;
  testnet::DelayProxy proxy;
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(server, so, proxy));
  RemoteOptions ro = RemoteDefaults(
      "alice", Loopback(proxy.port()) + "," + Loopback(server.port()));
  ro.retry_for = 30s;
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, kBlocks, 14));
  AsyncBackup backup(*remote, BackupOf("vol1", source, kSmallBlockBytes));
  ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxy, backup, 12 * kMiB));
  proxy.Kill();  // path A: connections reset, new ones refused
  ASSERT_TRUE(backup.Wait(60s)) << "backup hung after its first path failed";
  Result<BackupResult>& result = backup.result();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_GE(result->reconnects, 1u);
  uint64_t data_bytes = 0;
  for (uint64_t b = 0; b < kBlocks; ++b) data_bytes += ZeroAtStart(b) ? 0 : kBlockBytes;
  EXPECT_LT(result->bytes_resent, data_bytes) << "the backup started over on path B";
  RemoteOptions direct = RemoteDefaults("alice", Loopback(server.port()));
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&direct, result->manifest, source));
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {result->manifest.snapshot_id}));
}

TEST_F(BackupNetTest, AnEmptyPathIsRefusedBeforeAnythingIsDialed) {
  RemoteOptions ro = RemoteDefaults("alice", "127.0.0.1:1,");
  auto r = RemoteRepository::Connect(ro);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
}

// ---- 5. a peer that never answers again ----

TEST_F(BackupNetTest, SilentPeerEndsTheBackupWithNetworkErrorInBoundedTime) {
  // Bytes a silent peer never acknowledges would hold a zero-copy send (and its worker)
  // until TCP gives up (tcp_retries2, ~15 min); the agent's stripes set TCP_USER_TIMEOUT
  // to the loss timeout, so the connection ends and the backup fails in bounded time.
  ServerOptions so = ServerDefaults();
  so.resume_grace = 2s;
  ServerThread server;
  testnet::DelayProxy proxy;
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(server, so, proxy));
  RemoteOptions ro = RemoteDefaults("alice", Loopback(proxy.port()));
  ro.retry_for = 5s;
  ro.connect_timeout = 2s;
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 1024, 13));

  AsyncBackup backup(*remote, BackupOf("vol1", source, kSmallBlockBytes));
  ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxy, backup, 4 * kMiB));
  proxy.Pause();
  auto silent_since = Clock::now();
  // Loss is noticed after LossTimeout; reconnecting goes on for retry_for; an attempt
  // under way when the window closes may take one connect_timeout more, plus a backoff.
  auto bound = ro.LossTimeout() + ro.retry_for + 2 * ro.connect_timeout + 3s;
  bool ended = backup.Wait(bound + 20s);
  double seconds = SecondsSince(silent_since);
  if (!ended) {
    auto killed = Clock::now();
    proxy.Kill();  // resets the connections: whatever waits on them ends
    bool after_kill = backup.Wait(30s);
    FAIL() << "backup still running " << seconds << " s after its peer went silent; "
           << (after_kill ? "it ended " + std::to_string(SecondsSince(killed)) +
                                " s after the connections were reset"
                          : std::string("it still runs after the connections were reset"));
  }
  Result<BackupResult>& result = backup.result();
  ASSERT_FALSE(result.ok()) << "committed through a silent peer";
  EXPECT_EQ(result.status().code(), Code::kNetwork) << result.status().ToString();
  EXPECT_LE(seconds, std::chrono::duration<double>(bound).count())
      << result.status().ToString();
  std::printf("[ timing ] silent peer: kNetwork after %.1f s (bound %.1f s): %s\n", seconds,
              std::chrono::duration<double>(bound).count(),
              result.status().message().c_str());
  proxy.Kill();
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {}));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 6. the server dies in the middle of a backup ----

TEST_F(BackupNetTest, ServerRestartMidBackupThenANewBackupSucceeds) {
  ServerOptions so = ServerDefaults();
  so.drain_timeout = 1s;
  so.resume_grace = 5s;
  auto first = std::make_unique<ServerThread>();
  testnet::DelayProxy proxy;
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(*first, so, proxy));
  uint16_t port = first->port();
  RemoteOptions ro = RemoteDefaults("alice", Loopback(proxy.port()));
  ro.retry_for = 20s;
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 1024, 14));

  std::optional<Result<BackupResult>> interrupted;
  {
    AsyncBackup backup(*remote, BackupOf("vol1", source, kSmallBlockBytes));
    ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxy, backup, 8 * kMiB));
    double stop_seconds = 0;
    Status stopped = first->Stop(&stop_seconds);
    EXPECT_TRUE(stopped.ok()) << stopped.ToString();
    std::printf("[ timing ] server stopped in %.1f s (drain 1 s, resume grace 5 s)\n",
                stop_seconds);
    first.reset();
    so.listen = Loopback(port);  // the same address: the agent reconnects to it
    ServerThread second;
    std::string error;
    ASSERT_TRUE(second.Start(so, -1, &error)) << error;
    ASSERT_TRUE(backup.Wait(60s)) << "backup hung after the server restarted";
    interrupted.emplace(std::move(backup.result()));
    RemoteOptions direct = RemoteDefaults("alice", Loopback(second.port()));
    std::vector<std::string> ids;
    // The new server does not know the session; the agent starts the backup
    // over within retry_for, and what the lost attempt sent counts as resent.
    ASSERT_TRUE(interrupted->ok()) << interrupted->status().ToString();
    std::printf("[ result ] interrupted backup committed: reconnects %llu, bytes_resent %llu\n",
                static_cast<unsigned long long>((*interrupted)->reconnects),
                static_cast<unsigned long long>((*interrupted)->bytes_resent));
    EXPECT_GT((*interrupted)->bytes_resent, 0u);
    ids.push_back((*interrupted)->manifest.snapshot_id);
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&direct, (*interrupted)->manifest, source));
    ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", ids));

    // A new backup on the restarted server.
    ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, Range(0, 10, 3), 15));
    Result<BackupResult> again = BackupVia(direct, "vol1", source, kSmallBlockBytes);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    ids.push_back(again->manifest.snapshot_id);
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&direct, again->manifest, source));
    ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", ids));
    ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
  }
}

TEST_F(BackupNetTest, ServerStopDoesNotWaitOutTheResumeGrace) {
  // Stop during a backup: the drain gives busy sessions drain_timeout, then closes every
  // connection and rolls uncommitted backups back. No agent can resume on a stopping
  // server, so its stop must not wait resume_grace on top.
  ServerOptions so = ServerDefaults();
  so.drain_timeout = 1s;
  so.resume_grace = 30s;
  ServerThread server;
  testnet::DelayProxy proxy;
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(server, so, proxy));
  RemoteOptions ro = RemoteDefaults("alice", Loopback(proxy.port()));
  ro.retry_for = 2s;
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 1024, 16));
  AsyncBackup backup(*remote, BackupOf("vol1", source, kSmallBlockBytes));
  ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxy, backup, 4 * kMiB));
  double stop_seconds = 0;
  Status stopped = server.Stop(&stop_seconds);
  EXPECT_TRUE(stopped.ok()) << stopped.ToString();
  EXPECT_LT(stop_seconds, 1.0 + 4.0) << "stopping took drain_timeout + resume_grace";
  ASSERT_TRUE(backup.Wait(60s));
  EXPECT_FALSE(backup.result().ok());
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {}));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 7. two agents at once ----

TEST_F(BackupNetTest, TwoAgentsBackingUpAtOnceBothRestoreBitExact) {
  // Each agent reaches the server through its own throttled proxy (~5 MiB/s a
  // connection), so that both backups take seconds and the test can see both moving
  // data at the same time.
  ServerThread server;
  testnet::DelayProxy proxies[2];
  ASSERT_NO_FATAL_FAILURE(StartBehindThrottledProxy(server, ServerDefaults(), proxies[0]));
  std::string error;
  ASSERT_TRUE(proxies[1].Start("127.0.0.1", server.port(), ThrottledProxy(), &error)) << error;
  const char* clients[2] = {"alice", "bob"};
  std::string sources[2] = {Path("vola"), Path("volb")};
  ASSERT_NO_FATAL_FAILURE(WriteVolume(sources[0], 768, 21));
  ASSERT_NO_FATAL_FAILURE(WriteVolume(sources[1], 640, 31));
  RemoteOptions options[2] = {RemoteDefaults(clients[0], Loopback(proxies[0].port())),
                              RemoteDefaults(clients[1], Loopback(proxies[1].port()))};
  std::unique_ptr<RemoteRepository> remotes[2];
  for (int i = 0; i < 2; ++i) {
    remotes[i] = Connect(options[i]);
    ASSERT_NE(remotes[i], nullptr);
  }
  std::optional<AsyncBackup> backups[2];
  backups[0].emplace(*remotes[0], BackupOf("vola", sources[0]));
  backups[1].emplace(*remotes[1], BackupOf("volb", sources[1]));
  for (int i = 0; i < 2; ++i) {
    ASSERT_NO_FATAL_FAILURE(WaitForwarded(proxies[i], *backups[i], 4 * kMiB)) << clients[i];
  }
  EXPECT_FALSE(backups[0]->done()) << "alice's backup ended before bob's had sent 4 MiB";
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(backups[i]->Wait(60s)) << clients[i] << " hung";
  for (int i = 0; i < 2; ++i) {
    Result<BackupResult>& r = backups[i]->result();
    ASSERT_TRUE(r.ok()) << clients[i] << ": " << r.status().ToString();
    EXPECT_EQ(r->manifest.client, clients[i]);
    RemoteOptions direct = RemoteDefaults(clients[i], Loopback(server.port()));
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&direct, r->manifest, sources[i]));
    ASSERT_NO_FATAL_FAILURE(ExpectSnapshots(r->manifest.volume, {r->manifest.snapshot_id}));
  }
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 8. keys and ownership ----

TEST_F(BackupNetTest, WrongKeyIsRefusedAndVolumesAreNamespaced) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  std::string address = Loopback(server.port());

  uint8_t wrong[kKeyBytes];
  ASSERT_TRUE(RandomNonce(wrong, sizeof(wrong)).ok());
  auto registry = ClientRegistry::Load(clients_path_);
  ASSERT_TRUE(registry.ok());
  ASSERT_TRUE(WriteKeyFile(Path("wrong.key"), wrong, registry->identity()->FingerprintHex()).ok());
  for (const char* client : {"alice", "mallory"}) {
    RemoteOptions o = RemoteDefaults(client, address);
    o.key_file = Path("wrong.key");
    auto refused = RemoteRepository::Connect(o);
    ASSERT_FALSE(refused.ok()) << client;
    EXPECT_EQ(refused.status().code(), Code::kPermission) << refused.status().ToString();
    EXPECT_NE(refused.status().message().find("authentication failed"), std::string::npos)
        << refused.status().ToString();
  }

  RemoteOptions alice = RemoteDefaults("alice", address);
  std::string source = Path("vola");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 41));
  Result<BackupResult> owned = BackupVia(alice, "vola", source);
  ASSERT_TRUE(owned.ok()) << owned.status().ToString();

  std::unique_ptr<RemoteRepository> bob = Connect(RemoteDefaults("bob", address));
  ASSERT_NE(bob, nullptr);
  std::string bob_source = Path("volb");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(bob_source, 512, 42));
  // Bob's "vola" is his own (volumes are namespaced per client): alice's
  // answers to him as a missing volume does.
  RestoreOptions ro;
  ro.volume = "vola";
  ro.target_path = Path("stolen");
  Result<RestoreResult> restore = bob->Restore(ro);
  ASSERT_FALSE(restore.ok()) << "bob restored alice's volume";
  EXPECT_EQ(restore.status().code(), Code::kNotFound) << restore.status().ToString();
  EXPECT_EQ(restore.status().message().find("another client"), std::string::npos);
  EXPECT_FALSE(Exists(ro.target_path));
  EXPECT_FALSE(Exists(ro.target_path + ".dp420-partial"));

  std::vector<Manifest> listed;
  ASSERT_TRUE(bob->ListManifests("vola", &listed).ok());
  EXPECT_TRUE(listed.empty());
  ASSERT_TRUE(bob->ListManifests("", &listed).ok());
  EXPECT_TRUE(listed.empty()) << "bob sees " << listed.size() << " snapshots of others";

  VerifyOptions vo;
  vo.volume = "vola";
  Result<VerifyReport> verify = bob->Verify(vo);
  ASSERT_FALSE(verify.ok());
  EXPECT_EQ(verify.status().code(), Code::kNotFound) << verify.status().ToString();

  Result<BackupResult> backup = bob->Backup(BackupOf("vola", bob_source));
  ASSERT_TRUE(backup.ok()) << backup.status().ToString();
  EXPECT_EQ(backup->manifest.volume, NamespacedVolume("bob", "vola"));

  // Alice still has exactly her snapshot, and it is intact.
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vola", {owned->manifest.snapshot_id}));
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(&alice, owned->manifest, source));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- 9. clock skew ----

TEST_F(BackupNetTest, ClockSkewBeyondTheLimitRefusesTheBackup) {
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 51));
  RemoteOptions o = RemoteDefaults("alice", Loopback(server.port()));
  o.max_clock_skew = 0ms;

  // The offset on loopback is a few microseconds of either sign (half the asymmetry of
  // one round trip), not exactly 0 but for a one-in-millions chance; each Connect
  // measures it again, so a zero is retried.
  std::unique_ptr<RemoteRepository> remote;
  for (int attempt = 0; attempt < 5 && (!remote || remote->clock().offset_ns == 0); ++attempt) {
    remote = Connect(o);
    ASSERT_NE(remote, nullptr);
  }
  ASSERT_NE(remote->clock().offset_ns, 0) << "five measurements of exactly 0 ns";
  Result<BackupResult> refused = remote->Backup(BackupOf("vol1", source));
  ASSERT_FALSE(refused.ok()) << "backup ran with a clock offset of "
                             << remote->clock().offset_ns << " ns over a 0 ms limit";
  EXPECT_EQ(refused.status().code(), Code::kClockSkew) << refused.status().ToString();
  std::string offset_ms = std::to_string(remote->clock().offset_ns / 1000000) + " ms";
  EXPECT_NE(refused.status().message().find("differs from the server's by " + offset_ms),
            std::string::npos)
      << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("allowed 0 ms"), std::string::npos)
      << refused.status().ToString();
  std::printf("[ result ] offset %lld ns (error %lld ns): %s\n",
              static_cast<long long>(remote->clock().offset_ns),
              static_cast<long long>(remote->clock().error_ns),
              refused.status().message().c_str());

  // With the default limit the same host backs up.
  o.max_clock_skew = 500ms;
  std::unique_ptr<RemoteRepository> allowed = Connect(o);
  ASSERT_NE(allowed, nullptr);
  Result<BackupResult> backup = allowed->Backup(BackupOf("vol1", source));
  ASSERT_TRUE(backup.ok()) << backup.status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectSnapshots("vol1", {backup->manifest.snapshot_id}));
  ASSERT_NO_FATAL_FAILURE(ExpectRepositoryClean());
}

// ---- one RemoteRepository for several operations ----

TEST_F(BackupNetTest, OneRemoteRepositoryRunsSeveralOperations) {
  // The server ends the connection once a backup committed (RequestLoop returns after
  // HandleBackup); the next call on the same object must notice and reconnect.
  ServerThread server;
  std::string error;
  ASSERT_TRUE(server.Start(ServerDefaults(), -1, &error)) << error;
  RemoteOptions ro = RemoteDefaults("alice", Loopback(server.port()));
  std::unique_ptr<RemoteRepository> remote = Connect(ro);
  ASSERT_NE(remote, nullptr);
  std::string source = Path("vol1");
  ASSERT_NO_FATAL_FAILURE(WriteVolume(source, 512, 61));
  Result<BackupResult> full = remote->Backup(BackupOf("vol1", source));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  std::vector<Manifest> listed;
  Status list = remote->ListManifests("vol1", &listed);
  EXPECT_TRUE(list.ok()) << list.ToString();
  EXPECT_EQ(listed.size(), 1u);
  ASSERT_NO_FATAL_FAILURE(RewriteBlocks(source, Range(0, 8, 9), 62));
  Result<BackupResult> inc = remote->Backup(BackupOf("vol1", source));
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  RestoreOptions o;
  o.volume = "vol1";
  o.target_path = Path("restored");
  Result<RestoreResult> restored = remote->Restore(o);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(FirstDifference(source, o.target_path), "");
}

}  // namespace
}  // namespace dp420::net
