// Encrypted and compressed repositories (format 3), end to end through the CLI:
// nothing of a volume's bytes, names or paths is readable in any repository file;
// chains of every block size restore bit-exact with compression on and off; a wrong
// key or passphrase is refused with its own exit code and changes nothing; every
// tampering with a stored record — a flipped bit, a record swapped for another of the
// repository, a record from another repository, an older record replayed in place of
// a newer one, a truncated pack — is found by verify --read-data and by restore, which
// never leaves a wrong target behind.

#include <gtest/gtest.h>

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

constexpr int kExitBadKey = 11;

// One entry of a pack's trailer index (engine/core/format.h ObjRef, 48 bytes).
struct TrailerEntry {
  uint8_t digest[32];
  uint32_t pack_id;
  uint32_t offset_4k;
  uint32_t stored_len;
  uint16_t flags;
  uint16_t key_id;
};
static_assert(sizeof(TrailerEntry) == 48);
constexpr uint16_t kTableFlags = (1u << 1) | (1u << 2);
constexpr uint16_t kSealedFlag = 1u << 9;

// The data records of a pack, read from its trailer (no key needed).
std::vector<TrailerEntry> DataRecords(const std::string& pack_path) {
  std::string bytes = ReadFile(pack_path);
  if (bytes.size() < 4096 + 64) Fail(pack_path + " is too short");
  const char* footer = bytes.data() + bytes.size() - 64;
  uint64_t index_offset = 0;
  uint32_t count = 0;
  std::memcpy(&index_offset, footer + 16, 8);
  std::memcpy(&count, footer + 24, 4);
  std::vector<TrailerEntry> out;
  for (uint32_t i = 0; i < count; ++i) {
    TrailerEntry e;
    std::memcpy(&e, bytes.data() + index_offset + i * sizeof(TrailerEntry), sizeof(e));
    if (!(e.flags & kTableFlags)) out.push_back(e);
  }
  return out;
}

// Every regular file under `root`, by path relative to it, with its bytes.
std::map<std::string, std::string> Files(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) {
      out[std::filesystem::relative(e.path(), root).string()] = ReadFile(e.path().string());
    }
  }
  return out;
}

// Files of the repository that hold `needle`.
std::vector<std::string> FilesHolding(const std::string& repo, const std::string& needle) {
  std::vector<std::string> hits;
  for (const auto& [name, bytes] : Files(repo)) {
    if (bytes.find(needle) != std::string::npos) hits.push_back(name);
  }
  return hits;
}

// Copies `len` bytes at `from_offset` of file `from` over `to_offset` of file `to`.
void CopyBytes(const std::string& from, uint64_t from_offset, const std::string& to,
               uint64_t to_offset, size_t len) {
  std::string src = ReadFile(from);
  std::string dst = ReadFile(to);
  if (from_offset + len > src.size() || to_offset + len > dst.size()) Fail("copy out of range");
  dst.replace(to_offset, len, src, from_offset, len);
  WriteFile(to, dst);
}

class EncryptionTest : public testing::Test {
 protected:
  // An encrypted repository opened with a key file.
  std::string NewRepo(const std::string& name, const std::string& key) {
    std::string repo = dir_ / name;
    Result r = Cli({"init", repo, "--encryption", "aes-256-gcm", "--repo-key-file", key});
    if (r.exit_code != kExitOk) Fail(r.Describe());
    return repo;
  }
  // With the key file `key` ("" for a repository without encryption).
  Result Run(std::vector<std::string> args, const std::string& key) {
    if (!key.empty()) {
      args.push_back("--repo-key-file");
      args.push_back(key);
    }
    return Cli(args);
  }
  Json BackupJson(const std::string& repo, const std::string& key, const std::string& volume,
                  const std::string& source, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"backup", "--repo", repo, "--volume", volume, source, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = Run(args, key);
    if (r.exit_code != kExitOk) Fail(r.Describe());
    return ParseJson(r);
  }
  // Restores and compares with `expect_sha256`; the exit code.
  int RestoreAndCompare(const std::string& repo, const std::string& key, const std::string& volume,
                        const std::string& snapshot, const std::string& expect_sha256) {
    std::string target = dir_ / ("restored-" + std::to_string(restores_++));
    Result r = Run({"restore", "--repo", repo, "--volume", volume, "--snapshot", snapshot, target},
                   key);
    if (r.exit_code != kExitOk) {
      EXPECT_FALSE(Exists(target)) << "a failed restore left its target: " << r.Describe();
      return r.exit_code;
    }
    EXPECT_EQ(Sha256File(target), expect_sha256) << r.Describe();
    return r.exit_code;
  }

  TempDir dir_;
  std::string key_ = dir_ / "repo.key";
  int restores_ = 0;
};

// A random 32-byte marker repeated through a file of an ext4 volume, in a file and
// directory whose names are markers too: no repository file holds the marker, the
// names or the source's path, whether blocks are compressed or not. The same volume
// in a repository without encryption does hold them (the scan can fail).
TEST_F(EncryptionTest, MarkerNeverAppearsInAnyRepositoryFile) {
  const std::string marker = Sha256Hex("marker " + dir_.path()).substr(0, 32);
  const std::string name_marker = "nm" + Sha256Hex("name " + dir_.path()).substr(0, 20);
  std::string staging = dir_ / "staging";
  std::filesystem::create_directories(staging + "/" + name_marker);
  std::string content;
  for (int i = 0; i < (1 << 16); ++i) content += marker;  // 2 MiB
  WriteFile(staging + "/" + name_marker + "/" + name_marker + ".dat", content);
  WritePatternFile(staging + "/random.bin", 4 << 20, 5);
  std::string image = dir_ / ("vol-" + name_marker + ".img");
  Result mk = Sh("mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 -d " +
                 ShellQuote(staging) + " " + ShellQuote(image) + " 32M");
  ASSERT_EQ(mk.exit_code, 0) << mk.Describe();
  ASSERT_NE(ReadFile(image).find(marker), std::string::npos);  // the volume holds it

  std::string repo = NewRepo("repo", key_);
  BackupJson(repo, key_, "plainblocks", image, {"--compression", "off"});
  BackupJson(repo, key_, "lz4blocks", image, {"--compression", "lz4"});
  BackupJson(repo, key_, "zstdblocks", image, {"--compression", "zstd:3", "--block-size", "4096"});
  for (const std::string& needle : {marker, name_marker, std::string("vol-" + name_marker)}) {
    EXPECT_EQ(FilesHolding(repo, needle), std::vector<std::string>{}) << needle;
  }
  const std::string sha = Sha256File(image);
  for (const char* volume : {"plainblocks", "lz4blocks", "zstdblocks"}) {
    EXPECT_EQ(RestoreAndCompare(repo, key_, volume, "latest", sha), kExitOk) << volume;
  }

  std::string plain = dir_ / "plain";
  ASSERT_EQ(Cli({"init", plain, "--encryption", "none"}).exit_code, kExitOk);
  Backup(plain, "v", image, {"--compression", "off"});  // raw: the marker is readable
  EXPECT_FALSE(FilesHolding(plain, marker).empty());
  EXPECT_FALSE(FilesHolding(plain, "vol-" + name_marker).empty());  // the manifest's path
}

// Chains of incrementals at every block size, with incompressible, compressible and
// zero data, compressed and not: every snapshot restores bit-exact and verifies.
class EncryptedChainTest : public EncryptionTest,
                           public testing::WithParamInterface<std::tuple<uint32_t, const char*>> {};

TEST_P(EncryptedChainTest, RestoresBitExactAndVerifies) {
  const auto [block_size, compression] = GetParam();
  std::string repo = NewRepo("repo", key_);
  std::string vol = dir_ / "vol.img";
  // Random data with every 3rd 64 KiB zero, then 8 MiB of text that compresses.
  WritePatternFile(vol, 24 << 20, 7, 3);
  std::string text;
  while (text.size() < (8u << 20)) text += "the quick brown fox jumps over the lazy dog 0123456789\n";
  text.resize(8u << 20);
  {
    std::fstream f(vol, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8 << 20);
    f.write(text.data(), std::streamsize(text.size()));
  }
  std::vector<std::pair<std::string, std::string>> snaps;
  for (int round = 0; round < 3; ++round) {
    if (round > 0) {
      OverwriteRange(vol, uint64_t(round) * (3 << 20) + 4096, 1 << 20, 100 + round);
      Truncate(vol, (24u << 20) + uint64_t(round) * 5000);  // a short last block
    }
    Json b = BackupJson(repo, key_, "v", vol,
                        {"--compression", compression, "--block-size", std::to_string(block_size)});
    snaps.push_back({b["snapshot_id"].get<std::string>(), Sha256File(vol)});
    // The text compresses; a 4 KiB block never saves a slot, so it is stored raw.
    const uint64_t compressed = b["blocks_compressed"].get<uint64_t>();
    if (std::string(compression) == "off" || block_size == 4096) {
      EXPECT_EQ(compressed, 0u) << b.dump();
    } else if (round == 0) {
      EXPECT_GT(compressed, 0u) << b.dump();
    }
  }
  Result v = Run({"verify", "--repo", repo, "--read-data"}, key_);
  EXPECT_EQ(v.exit_code, kExitOk) << v.Describe();
  for (const auto& [id, sha] : snaps) {
    EXPECT_EQ(RestoreAndCompare(repo, key_, "v", id, sha), kExitOk) << id;
  }
}

INSTANTIATE_TEST_SUITE_P(
    BlockSizes, EncryptedChainTest,
    testing::Combine(testing::Values(4096u, 65536u, 1u << 20, 4u << 20),
                     testing::Values("off", "lz4", "zstd:1")),
    [](const auto& info) {
      std::string c = std::get<1>(info.param);
      for (char& ch : c) {
        if (ch == ':') ch = '_';
      }
      return std::to_string(std::get<0>(info.param)) + "_" + c;
    });

// Prune of an encrypted, compressed repository: the full forgotten and every pack
// rewritten (`--max-unused 0`) copies sealed records unchanged into new packs — a
// record is bound to what it is, not where it lies — and the remaining snapshots
// verify and restore bit-exact; their sealed bytes are found again in the new packs.
TEST_F(EncryptionTest, PruneCopiesSealedRecordsUnchangedAndTheyStillOpen) {
  std::string repo = NewRepo("repo", key_);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 8 << 20, 31, 3);
  std::string text;
  while (text.size() < (2u << 20)) text += "sealed and compressed, then copied by prune\n";
  {
    std::fstream f(vol, std::ios::in | std::ios::out | std::ios::binary);
    f.write(text.data(), std::streamsize(text.size()));
  }
  std::string full = BackupJson(repo, key_, "v", vol, {"--compression", "lz4"})["snapshot_id"];
  OverwriteRange(vol, 3 << 20, 512 << 10, 32);
  Json incr = BackupJson(repo, key_, "v", vol, {"--compression", "lz4"});
  const std::string sha = Sha256File(vol);
  std::vector<std::string> sealed_before;
  for (const auto& p : ListPacks(repo)) {
    std::string bytes = ReadFile(repo + "/packs/" + p);
    for (const auto& e : DataRecords(repo + "/packs/" + p)) {
      ASSERT_TRUE(e.flags & kSealedFlag);
      sealed_before.push_back(bytes.substr(uint64_t(e.offset_4k) * 4096, e.stored_len));
    }
  }
  ASSERT_EQ(Run({"forget", "--repo", repo, "--volume", "v", "--snapshot", full}, key_).exit_code,
            kExitOk);
  Result pr = Run({"prune", "--repo", repo, "--max-unused", "0", "--json"}, key_);
  ASSERT_EQ(pr.exit_code, kExitOk) << pr.Describe();
  EXPECT_GT(ParseJson(pr)["packs_rewritten"].get<uint64_t>(), 0u) << pr.out;
  Result v = Run({"verify", "--repo", repo, "--read-data"}, key_);
  EXPECT_EQ(v.exit_code, kExitOk) << v.Describe();
  EXPECT_EQ(RestoreAndCompare(repo, key_, "v", incr["snapshot_id"], sha), kExitOk);
  // Every record now stored is one of the records sealed before, byte for byte.
  size_t copied = 0;
  for (const auto& p : ListPacks(repo)) {
    std::string bytes = ReadFile(repo + "/packs/" + p);
    for (const auto& e : DataRecords(repo + "/packs/" + p)) {
      std::string now = bytes.substr(uint64_t(e.offset_4k) * 4096, e.stored_len);
      EXPECT_NE(std::find(sealed_before.begin(), sealed_before.end(), now), sealed_before.end());
      ++copied;
    }
  }
  EXPECT_GT(copied, 0u);
}

// A key file or passphrase that opens no slot: exit 11 for every command, nothing
// in the repository changes, no restore target appears. After the passphrase slot is
// removed, the passphrase no longer opens it and the remaining key-file slot does.
TEST_F(EncryptionTest, WrongKeyOrPassphraseIsRefusedAndChangesNothing) {
  std::string pass = dir_ / "pass";
  WriteFile(pass, "correct horse battery staple\n");
  std::string repo = dir_ / "repo";
  Result init = Cli({"init", repo, "--encryption", "aes-256-gcm", "--passphrase-file", pass});
  ASSERT_EQ(init.exit_code, kExitOk) << init.Describe();
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 8 << 20, 3, 4);
  Result b = Cli({"backup", "--repo", repo, "--volume", "v", vol, "--passphrase-file", pass});
  ASSERT_EQ(b.exit_code, kExitOk) << b.Describe();

  std::string wrong = dir_ / "wrong";
  WriteFile(wrong, "correct horse battery stapler\n");
  std::string wrong_key = dir_ / "wrong.key";
  WriteFile(wrong_key, std::string(32, '\x5a'));
  std::filesystem::permissions(wrong_key, std::filesystem::perms::owner_read |
                                              std::filesystem::perms::owner_write);
  const auto before = Files(repo);
  for (const auto& secret : std::vector<std::vector<std::string>>{
           {"--passphrase-file", wrong}, {"--repo-key-file", wrong_key}}) {
    std::vector<std::vector<std::string>> commands = {
        {"snapshots", "--repo", repo},
        {"backup", "--repo", repo, "--volume", "v", vol},
        {"verify", "--repo", repo, "--read-data"},
        {"restore", "--repo", repo, "--volume", "v", dir_ / "target"},
        {"forget", "--repo", repo, "--volume", "v", "--keep-last", "1"},
        {"prune", "--repo", repo}};
    for (auto args : commands) {
      args.insert(args.end(), secret.begin(), secret.end());
      Result r = Cli(args);
      EXPECT_EQ(r.exit_code, kExitBadKey) << r.Describe();
      EXPECT_TRUE(ContainsIgnoringCase(r.err, "slot")) << r.Describe();
    }
  }
  EXPECT_FALSE(Exists(dir_ / "target"));
  EXPECT_TRUE(Files(repo) == before) << "a refused command changed the repository";

  // A second slot (a key file), then the passphrase slot removed.
  Result add = Cli({"key", "add", "--repo", repo, "--passphrase-file", pass, "--new-key-file",
                    key_, "--json"});
  ASSERT_EQ(add.exit_code, kExitOk) << add.Describe();
  Result list = Cli({"key", "list", "--repo", repo, "--repo-key-file", key_, "--json"});
  ASSERT_EQ(list.exit_code, kExitOk) << list.Describe();
  Result remove = Cli({"key", "remove", "--repo", repo, "--repo-key-file", key_, "--slot", "1"});
  ASSERT_EQ(remove.exit_code, kExitOk) << remove.Describe();
  Result old = Cli({"snapshots", "--repo", repo, "--passphrase-file", pass});
  EXPECT_EQ(old.exit_code, kExitBadKey) << old.Describe();
  EXPECT_EQ(RestoreAndCompare(repo, key_, "v", "latest", Sha256File(vol)), kExitOk);
  // With no secret at all (not on a terminal): a usage error naming the options.
  Result none = Cli({"snapshots", "--repo", repo});
  EXPECT_EQ(none.exit_code, kExitUsage) << none.Describe();
  EXPECT_NE(none.err.find("--passphrase-file"), std::string::npos) << none.Describe();
}

// A manifest of an encrypted repository edited (one character of its encrypted
// text) or replaced by the plaintext manifest of a repository without encryption
// sealed under that repository's own key: refused, and restore of it fails.
TEST_F(EncryptionTest, EditedOrPlaintextManifestIsRefused) {
  std::string repo = NewRepo("repo", key_);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 4 << 20, 9);
  std::string id = BackupJson(repo, key_, "v", vol)["snapshot_id"].get<std::string>();
  std::string manifest = FindManifest(repo, "v", id);
  ASSERT_FALSE(manifest.empty());
  std::string original = ReadFile(manifest);
  ASSERT_EQ(original.rfind("{\"format\":\"dp420-sealed\"", 0), 0u) << original;

  std::string edited = original;
  size_t at = edited.find("\"data\":\"") + 20;
  edited[at] = edited[at] == 'A' ? 'B' : 'A';
  WriteFile(manifest, edited);
  Result r = Run({"restore", "--repo", repo, "--volume", "v", "--snapshot", id, dir_ / "t1"}, key_);
  EXPECT_EQ(r.exit_code, kExitDamage) << r.Describe();
  EXPECT_FALSE(Exists(dir_ / "t1"));
  Result v = Run({"verify", "--repo", repo}, key_);
  EXPECT_EQ(v.exit_code, kExitDamage) << v.Describe();

  // The plaintext manifest of the same volume from a repository without
  // encryption, under the same file name.
  std::string plain = dir_ / "plain";
  ASSERT_EQ(Cli({"init", plain, "--encryption", "none"}).exit_code, kExitOk);
  std::string pid = Backup(plain, "v", vol)["snapshot_id"].get<std::string>();
  WriteFile(manifest, ReadFile(FindManifest(plain, "v", pid)));
  r = Run({"restore", "--repo", repo, "--volume", "v", "--snapshot", id, dir_ / "t2"}, key_);
  EXPECT_EQ(r.exit_code, kExitDamage) << r.Describe();
  EXPECT_FALSE(Exists(dir_ / "t2"));

  WriteFile(manifest, original);
  EXPECT_EQ(RestoreAndCompare(repo, key_, "v", id, Sha256File(vol)), kExitOk);
}

// An encrypted init with no secret at all stops with a usage error naming the
// options, and leaves no repository behind; encryption is what `init` does unless
// told `--encryption none`.
TEST_F(EncryptionTest, EncryptedInitWithoutASecretIsAUsageError) {
  for (bool by_default : {true, false}) {
    SCOPED_TRACE(by_default ? "no --encryption" : "--encryption aes-256-gcm");
    std::string repo = dir_ / (by_default ? "default" : "explicit");
    std::vector<std::string> argv = {"init", repo};
    if (!by_default) argv.insert(argv.end(), {"--encryption", "aes-256-gcm"});
    Result r = Cli(argv);
    EXPECT_EQ(r.exit_code, kExitUsage) << r.Describe();
    EXPECT_NE(r.err.find("--passphrase-file"), std::string::npos) << r.Describe();
    EXPECT_NE(r.err.find("--encryption none"), std::string::npos) << r.Describe();
    EXPECT_FALSE(Exists(repo + "/config"));
  }
}

// `init` with only a key file makes an encrypted repository: its config says so,
// and a command without the key is refused.
TEST_F(EncryptionTest, InitEncryptsByDefault) {
  std::string repo = dir_ / "repo";
  Result init = Cli({"init", "--json", repo, "--repo-key-file", key_});
  ASSERT_EQ(init.exit_code, kExitOk) << init.Describe();
  EXPECT_EQ(ParseJson(init).at("encryption"), "aes-256-gcm");
  EXPECT_NE(ReadFile(repo + "/config").find("\"encryption\":\"aes-256-gcm\""), std::string::npos)
      << "the config (readable without the key) names the cipher";
  Result open = Cli({"snapshots", "--repo", repo});
  EXPECT_EQ(open.exit_code, kExitUsage) << open.Describe();
  EXPECT_EQ(Run({"snapshots", "--repo", repo}, key_).exit_code, kExitOk);
}

// A repository of format 2 (made before format 3: raw records in packs of version 1)
// keeps being written as format 2; after `dp420 upgrade` its chain goes on with
// compressed records in packs of version 2, and every snapshot of the mixed chain
// restores bit-exact — also after prune copied the old raw records into new packs.
TEST_F(EncryptionTest, Format2ChainGoesOnCompressedAfterTheUpgrade) {
  std::string repo = InitRepo(dir_);
  EditSignedFile(repo, repo + "/config", [](std::string* line) {
    Json j = Json::parse(*line);
    j["format_version"] = 2;
    j.erase("encryption");
    *line = j.dump();
  }, Reseal::kRepositoryKey);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 16 << 20, 21, 4);
  std::string text;
  while (text.size() < (4u << 20)) text += "a compressible line of text, again and again\n";
  auto put_text = [&](uint64_t at, const std::string& bytes) {
    std::fstream f(vol, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(at));
    f.write(bytes.data(), std::streamsize(bytes.size()));
  };
  put_text(0, text);
  std::vector<std::pair<std::string, std::string>> snaps;
  auto take = [&](const std::vector<std::string>& extra) {
    Json b = Backup(repo, "v", vol, extra);
    snaps.push_back({b["snapshot_id"].get<std::string>(), Sha256File(vol)});
    return b;
  };
  // Format 2: --compression changes nothing, packs are of version 1.
  EXPECT_EQ(take({"--compression", "lz4"})["blocks_compressed"].get<uint64_t>(), 0u);
  OverwriteRange(vol, 6 << 20, 1 << 20, 22);
  // The default, auto, even told the device is slow (the test hook): raw, and it says why.
  Json raw = Backup(repo, "v", vol, {}, {{"DP420_TEST_AUTO_DEVICE_BPS", "1e6"}});
  snaps.push_back({raw["snapshot_id"].get<std::string>(), Sha256File(vol)});
  EXPECT_EQ(raw["compression"], "off") << raw.dump();
  EXPECT_EQ(raw["blocks_compressed"].get<uint64_t>(), 0u);
  EXPECT_NE(raw["compression_measured"]["reason"].get<std::string>().find("format-2"),
            std::string::npos)
      << raw.dump();
  for (const auto& p : ListPacks(repo)) {
    EXPECT_EQ(ReadFile(repo + "/packs/" + p).substr(8, 1), std::string(1, '\x01')) << p;
  }
  Result up = Cli({"upgrade", repo, "--json"});
  ASSERT_EQ(up.exit_code, kExitOk) << up.Describe();
  EXPECT_EQ(ParseJson(up)["from_version"].get<int>(), 2);
  // Text the repository does not hold yet: blocks equal to the format-2 ones
  // at offset 0 would be shared with those raw records (the dedup index).
  std::string other_text;
  while (other_text.size() < (4u << 20)) other_text += "another line of text, compressible too\n";
  put_text(8 << 20, other_text);
  EXPECT_GT(take({"--compression", "zstd:1"})["blocks_compressed"].get<uint64_t>(), 0u);
  OverwriteRange(vol, 1 << 20, 256 << 10, 23);
  take({"--compression", "lz4"});
  Result v = Cli({"verify", "--repo", repo, "--read-data"});
  EXPECT_EQ(v.exit_code, kExitOk) << v.Describe();
  for (const auto& [id, sha] : snaps) {
    EXPECT_EQ(RestoreAndCompare(repo, "", "v", id, sha), kExitOk) << id;
  }
  // The full (format 2) forgotten, every pack rewritten: raw records of version-1
  // packs copied into packs of version 2.
  ASSERT_EQ(Cli({"forget", "--repo", repo, "--volume", "v", "--snapshot", snaps[0].first}).exit_code,
            kExitOk);
  Result pr = Cli({"prune", "--repo", repo, "--max-unused", "0", "--json"});
  ASSERT_EQ(pr.exit_code, kExitOk) << pr.Describe();
  EXPECT_GT(ParseJson(pr)["packs_rewritten"].get<uint64_t>(), 0u) << pr.out;
  v = Cli({"verify", "--repo", repo, "--read-data"});
  EXPECT_EQ(v.exit_code, kExitOk) << v.Describe();
  for (size_t i = 1; i < snaps.size(); ++i) {
    EXPECT_EQ(RestoreAndCompare(repo, "", "v", snaps[i].first, snaps[i].second), kExitOk);
  }
}

// Tampering with stored records, each on a fresh copy of one repository: found by
// verify --read-data (exit 3) and by the restore of the snapshot that needs the record
// (exit 3, no target left), while a snapshot that does not need it still restores.
class TamperTest : public EncryptionTest {
 protected:
  void SetUp() override {
    repo_ = NewRepo("repo", key_);
    // Incompressible blocks (no compression): every data record has the same length.
    vol_ = dir_ / "vol.img";
    WritePatternFile(vol_, 4 << 20, 11);
    first_ = Snap();
    packs_first_ = ListPacks(repo_);
    OverwriteRange(vol_, 0, 64 << 10, 12);  // block 0 changes
    second_ = Snap();
    other_ = dir_ / "other.img";
    WritePatternFile(other_, 1 << 20, 13);
    Json o = BackupJson(repo_, key_, "other", other_, {"--compression", "off"});
    other_snap_ = {o["snapshot_id"].get<std::string>(), Sha256File(other_)};
    for (const auto& p : ListPacks(repo_)) {
      bool old = std::find(packs_first_.begin(), packs_first_.end(), p) != packs_first_.end();
      if (!old && DataRecords(repo_ + "/packs/" + p).size() == 1 && second_pack_.empty()) {
        second_pack_ = p;  // the incremental's pack: block 0's new record
      }
    }
    ASSERT_FALSE(second_pack_.empty());
  }
  std::pair<std::string, std::string> Snap() {
    Json b = BackupJson(repo_, key_, "v", vol_, {"--compression", "off"});
    return {b["snapshot_id"].get<std::string>(), Sha256File(vol_)};
  }
  std::string PackPath(const std::string& name) { return repo_ + "/packs/" + name; }
  std::string FirstDataPack() {
    for (const auto& p : packs_first_) {
      if (DataRecords(PackPath(p)).size() > 8) return p;
    }
    Fail("no data pack of the full backup");
  }
  // verify --read-data finds damage, the second snapshot's restore fails cleanly,
  // the other volume still restores.
  void ExpectCaught(const std::string& what) {
    Result v = Run({"verify", "--repo", repo_, "--read-data"}, key_);
    EXPECT_EQ(v.exit_code, kExitDamage) << what << ": " << v.Describe();
    // Without the key too: the stored bytes no longer match their pack's trailer.
    Result keyless = Cli({"verify", "--repo", repo_, "--stored-only", "--json"});
    EXPECT_EQ(keyless.exit_code, kExitDamage) << what << ": " << keyless.Describe();
    EXPECT_TRUE(Mentions(keyless, "packs/")) << keyless.Describe();
    EXPECT_EQ(RestoreAndCompare(repo_, key_, "v", second_.first, second_.second), kExitDamage)
        << what;
    EXPECT_EQ(RestoreAndCompare(repo_, key_, "other", other_snap_.first, other_snap_.second),
              kExitOk)
        << what;
  }

  std::string repo_, vol_, other_, second_pack_;
  std::vector<std::string> packs_first_;
  std::pair<std::string, std::string> first_, second_, other_snap_;
};

// The check without a key reads every record of an intact encrypted repository back
// against its pack's trailer and finds nothing; a pack of another repository planted
// among this one's is named.
TEST_F(TamperTest, StoredOnlyCheckNeedsNoKey) {
  Result r = Cli({"verify", "--repo", repo_, "--stored-only", "--json"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.Describe();
  Json j = ParseJson(r);
  EXPECT_EQ(j["stored_only"], true);
  EXPECT_EQ(j["packs_checked"].get<uint64_t>(), ListPacks(repo_).size());
  EXPECT_GT(j["blocks_checked"].get<uint64_t>(), 64u);  // the full backup's blocks and pages
  Result scoped = Cli({"verify", "--repo", repo_, "--stored-only", "--volume", "v"});
  EXPECT_EQ(scoped.exit_code, kExitUsage) << scoped.Describe();

  std::string other_repo = NewRepo("repo2", dir_ / "repo2.key");
  BackupJson(other_repo, dir_ / "repo2.key", "v", vol_, {"--compression", "off"});
  const std::string name = ListPacks(other_repo).front();
  ASSERT_FALSE(Exists(PackPath(name)));
  std::filesystem::copy_file(other_repo + "/packs/" + name, PackPath(name));
  Result swapped = Cli({"verify", "--repo", repo_, "--stored-only"});
  EXPECT_EQ(swapped.exit_code, kExitDamage) << swapped.Describe();
  EXPECT_TRUE(Mentions(swapped, "another repository")) << swapped.Describe();
}

TEST_F(TamperTest, FlippedBitIsCaught) {
  std::string pack = PackPath(FirstDataPack());
  auto records = DataRecords(pack);
  ASSERT_TRUE(records[3].flags & kSealedFlag);
  FlipBit(pack, uint64_t(records[3].offset_4k) * 4096 + 100, 3);
  ExpectCaught("a flipped bit");
}

TEST_F(TamperTest, RecordSwappedWithAnotherOfTheRepositoryIsCaught) {
  std::string pack = PackPath(FirstDataPack());
  auto records = DataRecords(pack);
  ASSERT_EQ(records[2].stored_len, records[5].stored_len);
  CopyBytes(pack, uint64_t(records[5].offset_4k) * 4096, pack, uint64_t(records[2].offset_4k) * 4096,
            records[5].stored_len);
  ExpectCaught("a record swapped within its pack");
}

TEST_F(TamperTest, OlderRecordReplayedInPlaceOfANewerIsCaught) {
  // Block 0 of the full backup written over block 0 of the incremental.
  std::string full = PackPath(FirstDataPack());
  std::string incr = PackPath(second_pack_);
  auto old_records = DataRecords(full);
  auto new_records = DataRecords(incr);
  ASSERT_EQ(new_records.size(), 1u);
  ASSERT_EQ(old_records[0].stored_len, new_records[0].stored_len);
  CopyBytes(full, uint64_t(old_records[0].offset_4k) * 4096, incr,
            uint64_t(new_records[0].offset_4k) * 4096, new_records[0].stored_len);
  ExpectCaught("an older record replayed");
  // The full backup, which holds the older record legitimately, still restores.
  EXPECT_EQ(RestoreAndCompare(repo_, key_, "v", first_.first, first_.second), kExitOk);
}

TEST_F(TamperTest, RecordFromAnotherRepositoryIsCaught) {
  // Another repository with the same key file and the same volume: its record of the
  // same block (same bytes, same length) put in place of this repository's.
  std::string other_repo = NewRepo("repo2", dir_ / "repo2.key");
  std::string other_key = dir_ / "repo2.key";
  BackupJson(other_repo, other_key, "v", vol_, {"--compression", "off"});
  std::string theirs;
  for (const auto& p : ListPacks(other_repo)) {
    if (DataRecords(other_repo + "/packs/" + p).size() > 8) theirs = other_repo + "/packs/" + p;
  }
  ASSERT_FALSE(theirs.empty());
  std::string incr = PackPath(second_pack_);
  auto mine = DataRecords(incr);
  auto their_records = DataRecords(theirs);
  ASSERT_EQ(mine[0].stored_len, their_records[0].stored_len);
  CopyBytes(theirs, uint64_t(their_records[0].offset_4k) * 4096, incr,
            uint64_t(mine[0].offset_4k) * 4096, mine[0].stored_len);
  ExpectCaught("a record of another repository");
}

TEST_F(TamperTest, TruncatedPackIsCaught) {
  // Cut inside block 0's record (its trailer goes with it).
  std::string incr = PackPath(second_pack_);
  auto records = DataRecords(incr);
  Truncate(incr, uint64_t(records[0].offset_4k) * 4096 + 4096);
  ExpectCaught("a truncated pack");
}

// What someone holding keys/hash.key of a repository without encryption can write:
// the leaf entries of snapshot `snapshot` (its table's root, the only leaf page, stored
// raw: a volume of at most 256 blocks backed up with --compression off) changed by
// `edit`, which gets their references; the page's
// SHA-256, the manifest and the head made to match and sealed with the repository key.
void RewriteLeafEntries(const std::string& repo, const std::string& volume,
                        const std::string& snapshot,
                        const std::function<void(std::vector<TrailerEntry>*)>& edit) {
  const std::string manifest = FindManifest(repo, volume, snapshot);
  const std::string text = ReadFile(manifest);
  const Json root = Json::parse(text.substr(0, text.find('\n')))["table"]["root"];
  if (root["flags"].get<uint32_t>() & 0x700) Fail("the root page is encoded");
  const std::string pack = repo + "/packs/" + root["pack"].get<std::string>() + ".pack";
  const uint64_t offset = root["offset_4k"].get<uint64_t>() * 4096;
  const size_t len = root["stored_len"].get<size_t>();
  std::string bytes = ReadFile(pack);
  std::string page = bytes.substr(offset, len);
  std::vector<TrailerEntry> refs(len / 64);
  for (size_t i = 0; i < refs.size(); ++i) {
    std::memcpy(&refs[i], page.data() + 64 * i + 16, sizeof(TrailerEntry));
  }
  edit(&refs);
  for (size_t i = 0; i < refs.size(); ++i) {
    std::memcpy(page.data() + 64 * i + 16, &refs[i], sizeof(TrailerEntry));
  }
  bytes.replace(offset, len, page);
  WriteFile(pack, bytes);
  const std::string sha = Sha256Hex(page);
  ResealManifest(manifest, [&](std::string* line) {
    Json j = Json::parse(*line);
    j["table"]["root"]["sha256"] = sha;
    *line = j.dump();
  });
}

// A raw (unencoded) entry claiming a record longer than its block, with the SHA-256 of
// that many bytes of its pack: verify --read-data reports it (it copied the record into
// a buffer of the block's length, past its end: a crash) and restore refuses it.
TEST_F(EncryptionTest, RawEntryLongerThanItsBlockIsDamageNotACrash) {
  std::string repo = InitRepo(dir_);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 4 << 20, 31);
  Json b = Backup(repo, "v", vol, {"--compression", "off"});
  const std::string id = b["snapshot_id"].get<std::string>();
  uint64_t offset = 0;
  RewriteLeafEntries(repo, "v", id, [&](std::vector<TrailerEntry>* refs) {
    TrailerEntry* ref = &(*refs)[0];
    offset = uint64_t(ref->offset_4k) * 4096;
    ref->stored_len = 3u << 20;
    char pack[16];
    std::snprintf(pack, sizeof(pack), "%08x", ref->pack_id);
    std::string bytes = ReadFile(repo + "/packs/" + pack + ".pack");
    ASSERT_GE(bytes.size(), offset + ref->stored_len);
    std::string sha = Sha256Hex(bytes.substr(offset, ref->stored_len));
    for (size_t i = 0; i < 32; ++i) {
      ref->digest[i] = static_cast<uint8_t>(std::stoi(sha.substr(2 * i, 2), nullptr, 16));
    }
  });
  Result v = Cli({"verify", "--repo", repo, "--read-data"});
  EXPECT_EQ(v.term_signal, 0) << v.Describe();
  EXPECT_EQ(v.exit_code, kExitDamage) << v.Describe();
  // The record itself is named (not only the entry): it was taken as good.
  EXPECT_NE(v.All().find("record at offset " + std::to_string(offset) + " has stored_len 3145728"),
            std::string::npos)
      << v.Describe();
  EXPECT_EQ(RestoreAndCompare(repo, "", "v", id, Sha256File(vol)), kExitDamage);
}

// Two entries of one snapshot naming the same record (two equal blocks), one of them
// claiming it is LZ4-compressed: restore refuses the snapshot, and so must verify
// --read-data, which used to check the record only as whichever entry sorted first
// (and then said the repository was fine).
TEST_F(EncryptionTest, RecordNamedAsTwoThingsIsCheckedAsEach) {
  std::string repo = InitRepo(dir_);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 2 << 20, 51);
  CopyBytes(vol, 0, vol, 64 << 10, 64 << 10);  // block 1 = block 0
  Json b = Backup(repo, "v", vol, {"--compression", "off"});
  const std::string id = b["snapshot_id"].get<std::string>();
  RewriteLeafEntries(repo, "v", id, [](std::vector<TrailerEntry>* refs) {
    TrailerEntry& first = (*refs)[0];
    const TrailerEntry& second = (*refs)[1];
    ASSERT_EQ(std::memcmp(first.digest, second.digest, 32), 0);
    first.offset_4k = second.offset_4k;  // block 0 read from block 1's record...
    first.flags |= 1u << 10;             // ...as LZ4
  });
  EXPECT_EQ(RestoreAndCompare(repo, "", "v", id, Sha256File(vol)), kExitDamage);
  Result v = Cli({"verify", "--repo", repo, "--read-data"});
  EXPECT_EQ(v.exit_code, kExitDamage) << v.Describe();
  EXPECT_NE(v.All().find("does not decode"), std::string::npos) << v.Describe();
}

// Someone who cannot read an encrypted repository puts the config (and keys/hash.key)
// of a repository without encryption in its place, so that the next backup would be
// written in the clear: every command given the repository's key file refuses it
// (exit 11) and writes nothing; it used to back up a new volume in the clear.
TEST_F(EncryptionTest, ConfigReplacedByOneWithoutEncryptionIsRefused) {
  std::string repo = NewRepo("repo", key_);
  std::string vol = dir_ / "vol.img";
  WritePatternFile(vol, 4 << 20, 41);
  BackupJson(repo, key_, "v", vol);
  std::string plain = InitRepo(dir_, "plain");
  WriteFile(repo + "/config", ReadFile(plain + "/config"));
  WriteFile(repo + "/keys/hash.key", ReadFile(plain + "/keys/hash.key"));
  const auto before = Files(repo);
  std::vector<std::vector<std::string>> commands = {
      {"backup", "--repo", repo, "--volume", "w", vol},
      {"backup", "--repo", repo, "--volume", "v", vol},
      {"snapshots", "--repo", repo},
      {"restore", "--repo", repo, "--volume", "v", dir_ / "target"},
      {"verify", "--repo", repo},
      {"prune", "--repo", repo}};
  for (const auto& args : commands) {
    Result r = Run(args, key_);
    EXPECT_EQ(r.exit_code, kExitBadKey) << r.Describe();
    EXPECT_NE(r.err.find("not an encrypted repository"), std::string::npos) << r.Describe();
  }
  EXPECT_FALSE(Exists(dir_ / "target"));
  EXPECT_TRUE(Files(repo) == before) << "a refused command changed the repository";
  EXPECT_FALSE(Exists(repo + "/snapshots/w"));
  // So is a genuine repository without encryption given a key, and `init --encryption
  // none` does not make one while a secret is given (it made it, and ignored the secret).
  Result plain_with_key = Run({"snapshots", "--repo", plain}, key_);
  EXPECT_EQ(plain_with_key.exit_code, kExitBadKey) << plain_with_key.Describe();
  EXPECT_EQ(Cli({"snapshots", "--repo", plain}).exit_code, kExitOk);
  Result init = Run({"init", dir_ / "other", "--encryption", "none"}, key_);
  EXPECT_EQ(init.exit_code, kExitUsage) << init.Describe();
  EXPECT_NE(init.err.find("--encryption aes-256-gcm"), std::string::npos) << init.Describe();
  EXPECT_FALSE(Exists(dir_ / "other/config"));
}

// A recovery form made with only a repository id and check values that hold:
// the lines of `key` (32 bytes) with their check digits and the whole-key check.
std::string ForgeRecoveryForm(const std::string& repo_id_hex, const std::string& key) {
  std::string form = "dp420 recovery key v1\nrepository " + repo_id_hex + "\n";
  for (int line = 1; line <= 4; ++line) {
    std::string bytes = key.substr(8 * (line - 1), 8);
    std::string hex;
    static const char* kDigits = "0123456789abcdef";
    for (size_t i = 0; i < bytes.size(); ++i) {
      if (i > 0 && i % 2 == 0) hex += ' ';
      hex += kDigits[uint8_t(bytes[i]) >> 4];
      hex += kDigits[uint8_t(bytes[i]) & 15];
    }
    std::string check = Sha256Hex(std::string(1, char(line)) + bytes).substr(0, 2);
    form += std::to_string(line) + ": " + hex + "  " + check + "\n";
  }
  std::string id_bytes;
  for (size_t i = 0; i < repo_id_hex.size(); i += 2) {
    id_bytes += char(std::stoi(repo_id_hex.substr(i, 2), nullptr, 16));
  }
  return form + "check " + Sha256Hex(id_bytes + key).substr(0, 8) + "\n";
}

// Every secret lost: the printed recovery form, typed back in, adds a new slot, and the
// backups restore with it. A mistyped form, another repository's form, and a form
// forged with valid check values but another key are refused, and add no slot.
TEST_F(EncryptionTest, RecoveryFormRestoresAccessAndForgedFormsAreRefused) {
  std::string repo = NewRepo("repo", key_);
  std::string vol = dir_ / "vol.raw";
  WritePatternFile(vol, 3 << 20, 71, 3);
  BackupJson(repo, key_, "v", vol);
  Result exported = Run({"key", "export", "--repo", repo, "--paper"}, key_);
  ASSERT_EQ(exported.exit_code, kExitOk) << exported.Describe();
  std::string form = dir_ / "form.txt";
  WriteFile(form, exported.out);
  std::string other = NewRepo("other", dir_ / "other.key");
  Result other_form = Run({"key", "export", "--repo", other, "--paper"}, dir_ / "other.key");
  ASSERT_EQ(other_form.exit_code, kExitOk);
  std::filesystem::remove(key_);  // every secret of `repo` is gone
  auto slots = [&] {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(repo + "/keys")) {
      n += e.path().filename().string().rfind("slot-", 0) == 0;
    }
    return n;
  };
  const size_t before = slots();

  std::string typo = exported.out;
  size_t line2 = typo.find("\n2: ") + 4;
  typo[line2] = typo[line2] == '0' ? '1' : '0';
  std::string id_line = exported.out.substr(exported.out.find("\nrepository ") + 1, 43);
  std::string foreign = other_form.out;
  foreign.replace(foreign.find("\nrepository ") + 1, 43, id_line);
  std::string forged = ForgeRecoveryForm(id_line.substr(11), std::string(32, '\x5a'));
  struct Case { const char* what; std::string text; int exit_code; const char* says; };
  for (const Case& c : {Case{"typo", typo, kExitUsage, "line 2"},
                        Case{"foreign", other_form.out, kExitUsage, "repository"},
                        Case{"foreign, id line replaced", foreign, kExitUsage, "check"},
                        Case{"forged", forged, kExitBadKey, "does not open"}}) {
    SCOPED_TRACE(c.what);
    WriteFile(dir_ / "bad-form.txt", c.text);
    Result r = Cli({"key", "recover", "--repo", repo, "--paper-file", dir_ / "bad-form.txt",
                    "--new-key-file", dir_ / "never.key"});
    EXPECT_EQ(r.exit_code, c.exit_code) << r.Describe();
    EXPECT_TRUE(ContainsIgnoringCase(r.err, c.says)) << r.Describe();
    EXPECT_EQ(slots(), before);
    EXPECT_FALSE(Exists(dir_ / "never.key")) << "a refused recovery leaves no key file";
  }

  std::string fresh = dir_ / "fresh.key";
  Result ok = Sh("cat " + ShellQuote(form) + " | " + ShellQuote(CliPath()) +
                 " key recover --json --repo " + ShellQuote(repo) + " --paper-file - --new-key-file " +
                 ShellQuote(fresh));
  ASSERT_EQ(ok.exit_code, kExitOk) << ok.Describe();
  EXPECT_EQ(slots(), before + 1);
  EXPECT_EQ(RestoreAndCompare(repo, fresh, "v", "latest", Sha256File(vol)), kExitOk);
  EXPECT_EQ(Run({"verify", "--repo", repo, "--read-data"}, fresh).exit_code, kExitOk);
}

}  // namespace
}  // namespace dp420::e2e
