// Attacks on the wire protocol by an on-path relay (tamper_relay.h) between a real agent
// (RemoteRepository) and a real repository server (RunServer on a thread), over loopback,
// with real volume files. Each test mounts one attack and asserts that it is detected:
// the operation fails, nothing the attacker shaped is committed or written, and the
// repository still works for a clean agent afterwards.
//
// Every frame after AUTH_OK is sealed: the attacker cannot read it, so it flips a
// ciphertext byte (the relay repairs the CRC), rewrites the clear header, replays or
// drops a frame. Each tamper checks that the frame it hits is sealed, so a frame sent in
// the clear would fail the test instead of being attacked more weakly.
//
// Servers, relays and temporary directories are owned by objects whose destructors stop,
// join and delete them, also when an assertion fails.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/core/manifest.h"
#include "engine/core/repo.h"
#include "engine/core/snapshot.h"
#include "engine/net/auth.h"
#include "engine/net/client.h"
#include "engine/net/volumes.h"
#include "engine/net/frame.h"
#include "engine/net/server.h"
#include "io/file.h"
#include "server_thread.h"
#include "simd/simd.h"
#include "tamper_relay.h"
#include "test_clients.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/xxh3_collision.h"

namespace dp420::net {
namespace {

using namespace std::chrono_literals;
using dp420::testing::ReadAll;
using dp420::testing::TempDir;
using testnet::Action;
using testnet::Direction;
using testnet::FrameView;
using testnet::TamperRelay;
using testnet::TamperRelayOptions;

constexpr uint32_t kBlockBytes = 64 * 1024;
constexpr uint64_t kVolumeBlocks = 96;  // 6 MiB
constexpr unsigned kThreads = 1;        // one stripe connection: "the first BLOCKS" is one frame

// ---- setup: every use of the key, identity and clients-file API is in this section ----

// One repository server's files: its repository, its clients file with client "alice",
// and alice's key file, which names (pins) this server.
struct ServerSide {
  std::string repo;
  std::string clients;
  std::string key_file;
  SecretKey key;  // alice's key
};

// Creates the repository, registers alice in a fresh clients file (which gives the
// server its own identity) and writes her key file.
void MakeServerSide(const std::string& dir, ServerSide* side) {
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0) << dir;
  side->repo = dir + "/repo";
  side->clients = dir + "/clients.json";
  side->key_file = testnet::TestKeyFile(dir, "alice");
  ASSERT_TRUE(Repository::Init(side->repo).ok());
  Result<ClientRegistry> registry = testnet::WriteTestClients(side->clients, dir, {{"alice"}});
  ASSERT_TRUE(registry.ok()) << registry.status().ToString();
  side->key = registry->Find("alice")->key;
}

// A second server that knows alice's key (it was stolen, or the admin registered her on
// both) but has its own repository and everything else of its own, identity included:
// its clients file is made as the genuine one, then alice's key is replaced by the
// genuine key and the file resealed.
void MakeImpostorSide(const std::string& dir, const ServerSide& genuine, ServerSide* side) {
  ASSERT_NO_FATAL_FAILURE(MakeServerSide(dir, side));
  std::vector<uint8_t> bytes = ReadAll(side->clients);
  Result<Json> doc = UnsealJsonPlain(std::string(bytes.begin(), bytes.end()), "clients file");
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  for (Json& client : (*doc)["clients"]) {
    if (client["name"] == "alice") client["key"] = simd::ToHex(genuine.key.data(), kKeyBytes);
  }
  Status saved = io::WriteFileAtomic(side->clients, SealJsonPlain(*doc));
  ASSERT_TRUE(saved.ok()) << saved.ToString();
  side->key = genuine.key;
}

ServerOptions ServerOptionsFor(const ServerSide& side) {
  ServerOptions o = testnet::TestServerOptions(side.repo, side.clients);
  o.resume_grace = 2s;
  return o;
}

// Alice's agent options for the server at 127.0.0.1:`port` (the server or a relay).
// retry_for is short: a tampered session must end in a refusal, not in minutes of retries.
RemoteOptions RemoteOptionsFor(const ServerSide& side, uint16_t port,
                               const std::string& cache_dir) {
  RemoteOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.client = "alice";
  o.key_file = side.key_file;
  o.connect_timeout = 3s;
  o.heartbeat_interval = 1s;
  o.retry_for = 3s;
  o.cache_dir = cache_dir;
  return o;
}

// ---- volumes and files ----

// Block `block` of generation `seed`: pseudo-random, zero for every fifth block.
void FillBlock(uint64_t seed, uint64_t block, uint8_t* out) {
  if (block % 5 == 2) {
    std::memset(out, 0, kBlockBytes);
    return;
  }
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ULL + block);
  for (size_t i = 0; i < kBlockBytes; i += 8) {
    uint64_t word = rng();
    std::memcpy(out + i, &word, 8);
  }
}

void WriteBlocks(const std::string& path, uint64_t first, uint64_t count, uint64_t seed) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<uint8_t> block(kBlockBytes);
  for (uint64_t b = first; b < first + count; ++b) {
    FillBlock(seed, b, block.data());
    ASSERT_EQ(pwrite(fd, block.data(), kBlockBytes, static_cast<off_t>(b * kBlockBytes)),
              static_cast<ssize_t>(kBlockBytes));
  }
  close(fd);
}

// "" when both files hold the same bytes, else where they first differ.
std::string FirstDifference(const std::string& a, const std::string& b) {
  std::vector<uint8_t> x = ReadAll(a);
  std::vector<uint8_t> y = ReadAll(b);
  if (x.size() != y.size()) {
    return "sizes differ: " + std::to_string(x.size()) + " vs " + std::to_string(y.size());
  }
  auto diff = std::mismatch(x.begin(), x.end(), y.begin());
  if (diff.first == x.end()) return "";
  size_t at = static_cast<size_t>(diff.first - x.begin());
  return "bytes differ at offset " + std::to_string(at) + " (block " +
         std::to_string(at / kBlockBytes) + ")";
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// ---- the attacker's tool ----

// Flips one bit in the middle of a sealed frame's payload: all an on-path attacker can do
// to it. A frame that is not sealed is a failure of its own.
void FlipMiddleByte(FrameView& f) {
  EXPECT_TRUE(f.sealed()) << "frame type " << f.type << " crossed the wire in the clear";
  if (!f.payload.empty()) f.payload[f.payload.size() / 2] ^= 0x01;
}

// ---- the fixture: one server, a relay in front of it ----

class AttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(MakeServerSide(dir_.path() + "/server", &side_));
    std::string error;
    ASSERT_TRUE(server_.Start(ServerOptionsFor(side_), -1, &error)) << error;
    TamperRelayOptions ro;
    ro.record = true;
    ASSERT_TRUE(relay_.Start("127.0.0.1", server_.port(), ro, &error)) << error;
    source_ = Path("vol1");
    ASSERT_NO_FATAL_FAILURE(WriteBlocks(source_, 0, kVolumeBlocks, 1));
  }

  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }
  RemoteOptions Direct() const { return RemoteOptionsFor(side_, server_.port(), Path("cache")); }
  RemoteOptions ViaRelay() const { return RemoteOptionsFor(side_, relay_.port(), Path("cache")); }

  static BackupOptions BackupOf(const std::string& volume, const std::string& source) {
    BackupOptions o;
    o.volume = volume;
    o.source_path = source;
    o.block_size = kBlockBytes;
    o.threads = kThreads;
    o.tool_version = "attack_test";
    return o;
  }

  Result<BackupResult> BackupVia(const RemoteOptions& ro) {
    auto remote = RemoteRepository::Connect(ro);
    if (!remote.ok()) return remote.status();
    return (*remote)->Backup(BackupOf("vol1", source_));
  }

  Result<RestoreResult> RestoreVia(const RemoteOptions& ro, const std::string& snapshot,
                                   const std::string& target) {
    auto remote = RemoteRepository::Connect(ro);
    if (!remote.ok()) return remote.status();
    RestoreOptions o;
    o.volume = "vol1";
    o.snapshot = snapshot;
    o.target_path = target;
    o.threads = kThreads;
    return (*remote)->Restore(o);
  }

  // Snapshot ids of vol1 in the server's repository, oldest first.
  std::vector<std::string> Snapshots(const std::string& repo_path) const {
    std::vector<std::string> ids;
    auto repo = Repository::Open(repo_path);
    EXPECT_TRUE(repo.ok()) << repo.status().ToString();
    if (!repo.ok()) return ids;
    std::vector<Manifest> list;
    std::vector<DamagedFile> damaged;
    // alice's volume vol1 (engine/net/volumes.h).
    Status s = (*repo)->ListManifests(NamespacedVolume("alice", "vol1"), &list, &damaged);
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(damaged.empty());
    for (const Manifest& m : list) ids.push_back(m.snapshot_id);
    return ids;
  }
  std::vector<std::string> Snapshots() const { return Snapshots(side_.repo); }

  // A full backup without the relay; returns its snapshot id.
  std::string FullBackupDirect() {
    Result<BackupResult> full = BackupVia(Direct());
    EXPECT_TRUE(full.ok()) << full.status().ToString();
    return full.ok() ? full->manifest.snapshot_id : "";
  }

  // Changes blocks 3..10 of the volume, for an incremental backup that sends them.
  void ChangeVolume(uint64_t seed) { WriteBlocks(source_, 3, 8, seed); }

  // The snapshot restores bit-exact from the server without the relay.
  void ExpectRestoresBitExact(const std::string& snapshot) {
    std::string target = Path("restore-" + snapshot);
    Result<RestoreResult> restored = RestoreVia(Direct(), snapshot, target);
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    EXPECT_EQ(FirstDifference(source_, target), "") << "snapshot " << snapshot;
    unlink(target.c_str());
  }

  // After a tampered backup: nothing was committed, and a clean backup (no relay) of the
  // same volume commits and restores bit-exact. An attack that got through is described.
  void ExpectNothingCommittedThenCleanBackupWorks(const Result<BackupResult>& attacked,
                                                  const std::vector<std::string>& before) {
    EXPECT_GE(relay_.frames_tampered(), 1u) << "the attack never happened";
    EXPECT_FALSE(attacked.ok()) << "the tampered backup reported success: snapshot "
                                << (attacked.ok() ? attacked->manifest.snapshot_id : "");
    if (!attacked.ok()) std::printf("[ refused ] %s\n", attacked.status().ToString().c_str());
    std::vector<std::string> after = Snapshots();
    EXPECT_EQ(after, before) << "the tampered backup committed a snapshot";
    if (after.size() > before.size()) {
      // The agent's id cache now follows the attacker's snapshot, so a clean backup would
      // only report a stale cache: describe what got in and stop here.
      DescribeCommittedAttack(after.back());
      return;
    }
    Result<BackupResult> clean = BackupVia(Direct());
    ASSERT_TRUE(clean.ok()) << clean.status().ToString();
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(clean->manifest.snapshot_id));
  }

  // Says what a snapshot the attacker shaped restores to, to make a failure readable.
  void DescribeCommittedAttack(const std::string& snapshot) {
    std::string target = Path("attacked-" + snapshot);
    Result<RestoreResult> restored = RestoreVia(Direct(), snapshot, target);
    if (!restored.ok()) {
      ADD_FAILURE() << "committed snapshot " << snapshot
                    << " does not restore: " << restored.status().ToString();
      return;
    }
    std::string diff = FirstDifference(source_, target);
    ADD_FAILURE() << "committed snapshot " << snapshot << " restores "
                  << (diff.empty() ? "the source's bytes" : "other bytes than the source: " + diff);
    unlink(target.c_str());
  }

  // The first frame of `type` going `dir` from now on goes through `tamper`, which may
  // edit it and says what to do with it; every other frame passes.
  template <typename Tamper>
  void TamperFirst(Direction dir, uint16_t type, Tamper tamper) {
    auto done = std::make_shared<bool>(false);
    relay_.SetHook([=](Direction d, uint64_t, uint64_t, FrameView& f) {
      if (*done || d != dir || f.type != type) return Action::kPass;
      *done = true;
      return tamper(f);
    });
  }

  TempDir dir_;
  ServerSide side_;
  ServerThread server_;  // after dir_: stopped before the files go
  TamperRelay relay_;    // after server_: stopped before it
  std::string source_;
};

// ---- the relay itself ----

TEST_F(AttackTest, RelayPassesTrafficUnchanged) {
  uint64_t hooked = 0;
  relay_.SetHook([&](Direction, uint64_t, uint64_t, FrameView&) {
    ++hooked;
    return Action::kPass;
  });
  Result<BackupResult> full = BackupVia(ViaRelay());
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ChangeVolume(2);
  Result<BackupResult> inc = BackupVia(ViaRelay());
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  std::string target = Path("restored");
  Result<RestoreResult> restored = RestoreVia(ViaRelay(), inc->manifest.snapshot_id, target);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(FirstDifference(source_, target), "");
  EXPECT_EQ(Snapshots(), (std::vector<std::string>{full->manifest.snapshot_id,
                                                   inc->manifest.snapshot_id}));
  EXPECT_EQ(relay_.frames_tampered(), 0u);
  EXPECT_EQ(relay_.unparsed_streams(), 0u);
  EXPECT_GT(hooked, 0u);
  EXPECT_GE(relay_.FramesSeen(Direction::kAgentToServer, testnet::kWireBlocks), 2u);
  EXPECT_GE(relay_.FramesSeen(Direction::kServerToAgent, testnet::kWireRestoreData), 1u);
  EXPECT_GE(relay_.connections_accepted(), 4u);  // control and stripe, twice; restore
}

// A client with valid keys cannot date its snapshot: a backup asking for a time is
// refused before anything is sent (the protocol has no field for one), and the
// snapshot that follows carries the server's clock.
TEST_F(AttackTest, ClientCannotDateItsSnapshot) {
  auto remote = RemoteRepository::Connect(Direct());
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  BackupOptions dated = BackupOf("vol1", source_);
  dated.time_unix_ns = 1000000000ull;  // 1970-01-01T00:00:01Z
  Result<BackupResult> refused = (*remote)->Backup(dated);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument) << refused.status().ToString();
  EXPECT_TRUE(Snapshots().empty()) << "nothing committed";

  uint64_t before = NowUnixNs();
  Result<BackupResult> full = (*remote)->Backup(BackupOf("vol1", source_));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_GE(full->manifest.created_unix_ns, before);
  EXPECT_LE(full->manifest.created_unix_ns, NowUnixNs());
  EXPECT_EQ(Snapshots(), std::vector<std::string>{full->manifest.snapshot_id});
}

// ---- data the agent sends ----

TEST_F(AttackTest, TamperedBlocksDetected) {
  std::vector<std::string> before = {FullBackupDirect()};
  ChangeVolume(2);
  TamperFirst(Direction::kAgentToServer, testnet::kWireBlocks, [](FrameView& f) {
    FlipMiddleByte(f);  // in a block's bytes or ids
    return Action::kPass;
  });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommittedThenCleanBackupWorks(attacked, before));
}

TEST_F(AttackTest, TamperedPageDetected) {
  std::vector<std::string> before = {FullBackupDirect()};
  ChangeVolume(3);
  TamperFirst(Direction::kAgentToServer, testnet::kWirePage, [](FrameView& f) {
    FlipMiddleByte(f);  // in a verdict or a block id
    return Action::kPass;
  });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommittedThenCleanBackupWorks(attacked, before));
}

TEST_F(AttackTest, ReplayedFrameDetected) {
  std::vector<std::string> before = {FullBackupDirect()};
  ChangeVolume(4);
  TamperFirst(Direction::kAgentToServer, testnet::kWireBlocks,
              [](FrameView&) { return Action::kDuplicate; });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommittedThenCleanBackupWorks(attacked, before));
}

TEST_F(AttackTest, DroppedFrameDetected) {
  std::vector<std::string> before = {FullBackupDirect()};
  ChangeVolume(5);
  TamperFirst(Direction::kAgentToServer, testnet::kWireBlocks,
              [](FrameView&) { return Action::kDrop; });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommittedThenCleanBackupWorks(attacked, before));
}

// The header is clear but must be bound to the payload: another request_id on a data frame
// (with its header CRC fixed) must not pass.
TEST_F(AttackTest, HeaderRewriteDetected) {
  std::vector<std::string> before = {FullBackupDirect()};
  ChangeVolume(6);
  TamperFirst(Direction::kAgentToServer, testnet::kWireBlocks, [](FrameView& f) {
    f.request_id ^= 0x40;
    return Action::kPass;
  });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectNothingCommittedThenCleanBackupWorks(attacked, before));
}

// ---- answers the server sends ----

// The server may already have committed when COMMITTED is forged; what matters is that the
// agent does not report success with a manifest that is not the server's.
TEST_F(AttackTest, TamperedCommittedDetected) {
  FullBackupDirect();
  ChangeVolume(7);
  TamperFirst(Direction::kServerToAgent, testnet::kWireCommitted, [](FrameView& f) {
    FlipMiddleByte(f);  // in the manifest
    return Action::kPass;
  });
  Result<BackupResult> attacked = BackupVia(ViaRelay());
  relay_.SetHook(nullptr);
  EXPECT_GE(relay_.frames_tampered(), 1u) << "the attack never happened";
  EXPECT_FALSE(attacked.ok()) << "the agent accepted a forged manifest: checksum "
                              << (attacked.ok() ? attacked->manifest.checksum_sha256 : "");
  if (!attacked.ok()) std::printf("[ refused ] %s\n", attacked.status().ToString().c_str());
  // What the server committed, if it got that far, is its own intact snapshot of the
  // changed volume; and the next backup works.
  std::vector<std::string> ids = Snapshots();
  ASSERT_FALSE(ids.empty());
  if (ids.size() == 2) {
    ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(ids.back()));
  }
  Result<BackupResult> clean = BackupVia(Direct());
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(clean->manifest.snapshot_id));
}

TEST_F(AttackTest, TamperedRestoreDataDetected) {
  std::string snapshot = FullBackupDirect();
  TamperFirst(Direction::kServerToAgent, testnet::kWireRestoreData, [](FrameView& f) {
    FlipMiddleByte(f);  // in a block's bytes; the relay fixes the CRC
    return Action::kPass;
  });
  std::string target = Path("restored");
  Result<RestoreResult> restored = RestoreVia(ViaRelay(), snapshot, target);
  EXPECT_GE(relay_.frames_tampered(), 1u) << "the attack never happened";
  EXPECT_FALSE(restored.ok()) << "the restore accepted tampered data";
  if (!restored.ok()) std::printf("[ refused ] %s\n", restored.status().ToString().c_str());
  EXPECT_FALSE(Exists(target)) << "a failed restore left its target";
  EXPECT_FALSE(Exists(target + ".dp420-partial"));
}

TEST_F(AttackTest, TamperedRestorePageDetected) {
  std::string snapshot = FullBackupDirect();
  TamperFirst(Direction::kServerToAgent, testnet::kWireRestorePage, [](FrameView& f) {
    FlipMiddleByte(f);  // in a block's kind or digest
    return Action::kPass;
  });
  std::string target = Path("restored");
  Result<RestoreResult> restored = RestoreVia(ViaRelay(), snapshot, target);
  EXPECT_GE(relay_.frames_tampered(), 1u) << "the attack never happened";
  EXPECT_FALSE(restored.ok()) << "the restore accepted a tampered page";
  if (!restored.ok()) std::printf("[ refused ] %s\n", restored.status().ToString().c_str());
  EXPECT_FALSE(Exists(target)) << "a failed restore left its target";
  EXPECT_FALSE(Exists(target + ".dp420-partial"));
}

// Damage in the repository must not be hidden by the path: the attacker flips a byte of
// the first PROBLEM or DONE, the frames that report it.
TEST_F(AttackTest, TamperedVerifyAnswerDetected) {
  FullBackupDirect();
  // Damage the largest pack in its middle, where its blocks are.
  std::string largest;
  uintmax_t largest_size = 0;
  for (const auto& entry : std::filesystem::directory_iterator(side_.repo + "/packs")) {
    if (entry.file_size() > largest_size) {
      largest = entry.path();
      largest_size = entry.file_size();
    }
  }
  ASSERT_FALSE(largest.empty());
  std::vector<uint8_t> pack = ReadAll(largest);
  pack[pack.size() / 2] ^= 0xFF;
  dp420::testing::WriteAll(largest, pack);

  VerifyOptions vo;
  vo.volume = "vol1";
  vo.read_data = true;
  {
    auto direct = RemoteRepository::Connect(Direct());
    ASSERT_TRUE(direct.ok()) << direct.status().ToString();
    Result<VerifyReport> honest = (*direct)->Verify(vo);
    ASSERT_TRUE(honest.ok()) << honest.status().ToString();
    ASSERT_FALSE(honest->problems.empty()) << "the damage was not found without the relay";
  }
  auto flipped = std::make_shared<bool>(false);
  relay_.SetHook([=](Direction dir, uint64_t, uint64_t, FrameView& f) {
    if (dir != Direction::kServerToAgent || *flipped) return Action::kPass;
    if (f.type != testnet::kWireProblem && f.type != testnet::kWireDone) return Action::kPass;
    FlipMiddleByte(f);
    *flipped = true;
    return Action::kPass;
  });
  auto remote = RemoteRepository::Connect(ViaRelay());
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  Result<VerifyReport> attacked = (*remote)->Verify(vo);
  relay_.SetHook(nullptr);
  EXPECT_GE(relay_.frames_tampered(), 1u) << "the attack never happened";
  EXPECT_FALSE(attacked.ok()) << "verify returned a report through a tampered path ("
                              << (attacked.ok() ? attacked->problems.size() : 0)
                              << " problems, the repository is damaged)";
  if (!attacked.ok()) std::printf("[ refused ] %s\n", attacked.status().ToString().c_str());
}

// ---- confidentiality and the server's identity ----

// ---- block ids ----

// Another client ("bob") is given the secret of his own volume only. Two
// blocks with equal ids under it are built; alice's volume first holds one,
// then the other. Her incremental must store the change and restore it: with
// one repository-wide secret, handed to every client, it reported
// "blocks_changed 0" and restored the old block.
TEST_F(AttackTest, CollisionBuiltWithAnotherVolumesSecretIsSeenAsChanged) {
  auto repo = Repository::Open(side_.repo);
  ASSERT_TRUE(repo.ok()) << repo.status().ToString();
  std::array<uint8_t, simd::kHashSecretBytes> bob{};
  (*repo)->VolumeSecret("bob-vol", bob.data());  // what BACKUP_READY gives bob's agent
  std::vector<uint8_t> x, y;
  dp420::testing::BuildCollision(bob, kBlockBytes, 17, &x, &y);
  ASSERT_EQ(simd::BlockHasher(bob).Hash(x.data(), x.size()),
            simd::BlockHasher(bob).Hash(y.data(), y.size()));
  auto put = [&](const std::vector<uint8_t>& block) {
    int fd = open(source_.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, block.data(), block.size(), 5 * kBlockBytes),
              static_cast<ssize_t>(block.size()));
    close(fd);
  };
  ASSERT_NO_FATAL_FAILURE(put(x));
  FullBackupDirect();
  ASSERT_NO_FATAL_FAILURE(put(y));
  Result<BackupResult> inc = BackupVia(Direct());
  ASSERT_TRUE(inc.ok()) << inc.status().ToString();
  EXPECT_EQ(inc->manifest.blocks_changed, 1u);
  EXPECT_EQ(inc->manifest.blocks_stored, 1u);
  ASSERT_NO_FATAL_FAILURE(ExpectRestoresBitExact(inc->manifest.snapshot_id));
}

TEST_F(AttackTest, SecretNeverOnTheWire) {
  // A marker written all over the volume: it must not be readable on the path.
  uint8_t marker[32];
  std::mt19937_64 rng(std::random_device{}());
  for (size_t i = 0; i < sizeof(marker); i += 8) {
    uint64_t word = rng();
    std::memcpy(marker + i, &word, 8);
  }
  {
    std::vector<uint8_t> volume(kVolumeBlocks * kBlockBytes);
    for (size_t at = 0; at + sizeof(marker) <= volume.size(); at += sizeof(marker)) {
      std::memcpy(&volume[at], marker, sizeof(marker));
    }
    for (uint64_t b = 0; b < kVolumeBlocks; ++b) {
      std::memcpy(&volume[b * kBlockBytes], &b, sizeof(b));  // blocks differ: no dedup
    }
    dp420::testing::WriteAll(source_, volume);
  }
  Result<BackupResult> full = BackupVia(ViaRelay());
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  std::string target = Path("restored");
  Result<RestoreResult> restored = RestoreVia(ViaRelay(), full->manifest.snapshot_id, target);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(FirstDifference(source_, target), "");

  // The recording holds the session: frame headers are clear.
  uint8_t magic[4];
  std::memcpy(magic, &testnet::kWireMagic, 4);
  ASSERT_TRUE(relay_.RecordedContains(magic, sizeof(magic)));
  ASSERT_GE(relay_.FramesSeen(Direction::kAgentToServer, testnet::kWireBlocks), 1u);

  std::vector<uint8_t> hash_key = ReadAll(side_.repo + "/keys/hash.key");
  ASSERT_EQ(hash_key.size(), simd::kHashSecretBytes);
  std::string key_hex = simd::ToHex(side_.key.data(), kKeyBytes);
  EXPECT_FALSE(relay_.RecordedContains(side_.key.data(), kKeyBytes)) << "the client's key";
  EXPECT_FALSE(relay_.RecordedContains(reinterpret_cast<const uint8_t*>(key_hex.data()),
                                       key_hex.size()))
      << "the client's key in hex";
  EXPECT_FALSE(relay_.RecordedContains(hash_key.data(), hash_key.size()))
      << "the repository's block-hash key";
  EXPECT_FALSE(relay_.RecordedContains(hash_key.data(), 32)) << "part of the block-hash key";
  EXPECT_FALSE(relay_.RecordedContains(marker, sizeof(marker))) << "the volume's data";
}

TEST_F(AttackTest, ImpostorServerRefused) {
  ServerSide impostor;
  ASSERT_NO_FATAL_FAILURE(MakeImpostorSide(Path("impostor"), side_, &impostor));
  ServerThread fake;
  std::string error;
  ASSERT_TRUE(fake.Start(ServerOptionsFor(impostor), -1, &error)) << error;
  TamperRelay watch;
  TamperRelayOptions wo;
  wo.record = true;
  ASSERT_TRUE(watch.Start("127.0.0.1", fake.port(), wo, &error)) << error;

  // Alice's genuine options (key file pinning the genuine server), the impostor's address.
  RemoteOptions ro = RemoteOptionsFor(side_, watch.port(), Path("cache"));
  Result<BackupResult> attempt = BackupVia(ro);
  EXPECT_FALSE(attempt.ok()) << "the agent backed up to an impostor";
  EXPECT_EQ(attempt.status().code(), Code::kPermission) << attempt.status().ToString();
  if (!attempt.ok()) std::printf("[ refused ] %s\n", attempt.status().ToString().c_str());
  EXPECT_EQ(watch.FramesSeen(Direction::kAgentToServer, testnet::kWireBackupBegin), 0u);
  EXPECT_EQ(watch.FramesSeen(Direction::kAgentToServer, testnet::kWireBlocks), 0u);
  EXPECT_TRUE(Snapshots(impostor.repo).empty());
  watch.Stop();
  (void)fake.Stop();
}

}  // namespace
}  // namespace dp420::net
