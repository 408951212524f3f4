#include "engine/core/repo.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "engine/core/group_repo.h"
#include "engine/core/history.h"
#include "engine/core/links.h"
#include "io/inject.h"
#include "io/assert.h"
#include "io/file.h"
#include "io/random.h"

namespace dp420 {

namespace {

constexpr const char* kSubdirs[] = {"packs", "snapshots", "locks", "tmp", "keys"};

std::string UtcNow() {
  time_t now = time(nullptr);
  struct tm tm;
  gmtime_r(&now, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A config temp file (io::WriteFileAtomic) of an init that died.
bool ConfigTemp(const std::string& path, const std::string& name) {
  struct stat st;
  return name.rfind("config.tmp.", 0) == 0 && lstat((path + "/" + name).c_str(), &st) == 0 &&
         S_ISREG(st.st_mode);
}

// What a killed `init` leaves: some of dp420's subdirectories, holding no
// snapshot, no pack and no directory, perhaps a config temp file, and no
// config.
bool UnfinishedInit(const std::string& path, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    if (ConfigTemp(path, name)) continue;
    if (std::find(std::begin(kSubdirs), std::end(kSubdirs), name) == std::end(kSubdirs)) {
      return false;
    }
    for (const std::string& entry : io::ListDir(path + "/" + name)) {
      struct stat st;
      if (name != "keys" || lstat((path + "/keys/" + entry).c_str(), &st) != 0 ||
          !S_ISREG(st.st_mode)) {
        return false;
      }
    }
  }
  return true;
}

// Init's hold on `path`: the directory, created when missing, open and
// flock'ed, so that of concurrent inits of one path one builds the
// repository and the others then find it not empty. An unfinished init
// found under the lock is removed first. Returns the locked descriptor.
Result<io::File> LockForInit(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    return Status::Exists(path + " exists and is not a directory");
  }
  DP420_RETURN_IF_ERROR(io::MakeDirs(path));
  int fd = io::sys::Open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return PosixError("open " + path, errno);
  io::File dir = io::File::Adopt(fd, path, false);
  while (flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return PosixError("lock " + path, errno);
  }
  std::vector<std::string> names = io::ListDir(path);
  if (!names.empty() && UnfinishedInit(path, names)) {
    for (const std::string& name : names) {
      if (ConfigTemp(path, name)) {
        io::sys::Unlink((path + "/" + name).c_str());
        continue;
      }
      for (const std::string& entry : io::ListDir(path + "/" + name)) {
        io::sys::Unlink((path + "/" + name + "/" + entry).c_str());
      }
      io::sys::Rmdir((path + "/" + name).c_str());
    }
    names = io::ListDir(path);
  }
  if (!names.empty()) {
    return Status::Exists(path + " already exists and is not empty (a repository already, "
                          "or other files)");
  }
  return dir;
}

}  // namespace

VolumeLock::~VolumeLock() {
  if (fd_ >= 0) close(fd_);
}

VolumeLock& VolumeLock::operator=(VolumeLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

namespace {

Json NewConfig(const uint8_t repo_id[16], const char* encryption) {
  Json config;
  config["format"] = "dp420-repository";
  config["format_version"] = kRepoFormatVersion;
  config["repo_id"] = simd::ToHex(repo_id, 16);
  config["created"] = UtcNow();
  config["block_hash"] = "xxh3-128-keyed";
  config["encryption"] = encryption;
  return config;
}

}  // namespace

// An encrypted repository: no key file in the repository, only key slots
// wrapping a random master key; every key in use is derived from it.
Status Repository::InitEncrypted(const std::string& path, const KeySource& key_source) {
  // A repository that is there already is the error to report, not the missing secret.
  if (struct stat st; stat((path + "/config").c_str(), &st) == 0) {
    return Status::Exists(path + " already exists and is not empty (a repository already)");
  }
  if (!key_source.given()) {
    return Status::InvalidArgument(
        "an encrypted repository needs a secret for its first key slot: --passphrase-file FILE "
        "(or DP420_PASSPHRASE_FILE), --repo-key-file FILE (or DP420_REPO_KEY_FILE), a "
        "passphrase typed on a terminal, or --encryption none");
  }
  DP420_ASSIGN_OR_RETURN(io::File lock, LockForInit(path));
  chmod(path.c_str(), 0700);
  for (const char* sub : kSubdirs) DP420_RETURN_IF_ERROR(io::MakeDirs(path + "/" + sub));
  crypto::RepoId repo_id;
  DP420_RETURN_IF_ERROR(io::FillRandom(repo_id.data(), repo_id.size()));
  DP420_ASSIGN_OR_RETURN(crypto::MasterKey master, crypto::MasterKey::Generate());
  crypto::RepositoryKeys keys;
  DP420_RETURN_IF_ERROR(crypto::DeriveRepositoryKeys(master, repo_id, &keys));
  DP420_RETURN_IF_ERROR(CreateFirstSlot(path, repo_id, master, key_source));
  Json config = NewConfig(repo_id.data(), "aes-256-gcm");
  // The config is written last: its presence is what makes a repository.
  SealKey seal_key = SealKey::Derive(keys.seal_key.data(), keys.seal_key.size());
  DP420_RETURN_IF_ERROR(io::WriteFileAtomic(path + "/config", SealJson(config, seal_key)));
  return io::SyncDir(path);
}

Status Repository::Init(const std::string& path, const InitOptions& options) {
  if (options.encrypted) return InitEncrypted(path, options.key_source);
  // Held until the config is durable; released when `lock` closes.
  DP420_ASSIGN_OR_RETURN(io::File lock, LockForInit(path));
  chmod(path.c_str(), 0700);
  for (const char* sub : kSubdirs) DP420_RETURN_IF_ERROR(io::MakeDirs(path + "/" + sub));
  uint8_t key[simd::kHashSecretBytes];
  uint8_t repo_id[16];
  DP420_RETURN_IF_ERROR(io::FillRandom(key, sizeof(key)));
  DP420_RETURN_IF_ERROR(io::FillRandom(repo_id, sizeof(repo_id)));
  DP420_RETURN_IF_ERROR(io::WriteFileAtomic(
      path + "/keys/hash.key", std::string(reinterpret_cast<char*>(key), sizeof(key))));
  uint8_t key_digest[32];
  simd::Sha256(key, sizeof(key), key_digest);
  Json config = NewConfig(repo_id, "none");
  config["key_sha256"] = simd::ToHex(key_digest, 32);
  // The config is written last: its presence is what makes a repository.
  SealKey seal_key = SealKey::Derive(key, sizeof(key));
  OPENSSL_cleanse(key, sizeof(key));
  DP420_RETURN_IF_ERROR(io::WriteFileAtomic(path + "/config", SealJson(config, seal_key)));
  return io::SyncDir(path);
}

Repository::~Repository() { OPENSSL_cleanse(hash_key_.data(), hash_key_.size()); }

// Six HMAC-SHA-256 outputs under keys/hash.key, each over
// "dp420 block ids v1" || 0x00 || i || volume, make the volume's 192 bytes.
void Repository::VolumeSecret(const std::string& volume, uint8_t* out) const {
  static constexpr char kLabel[] = "dp420 block ids v1";
  static_assert(simd::kHashSecretBytes % 32 == 0);
  std::string msg(kLabel, sizeof(kLabel));  // the label and its NUL
  msg.push_back('\0');
  msg += volume;
  for (size_t i = 0; i < simd::kHashSecretBytes / 32; ++i) {
    msg[sizeof(kLabel)] = static_cast<char>(i);
    unsigned len = 0;
    uint8_t* r = HMAC(EVP_sha256(), hash_key_.data(), static_cast<int>(hash_key_.size()),
                      reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), out + i * 32,
                      &len);
    DP420_ASSERT(r != nullptr && len == 32);
  }
}

void Repository::DedupIndexKey(uint8_t out[32]) const {
  static constexpr char kLabel[] = "dp420 dedup index v1";
  unsigned len = 0;
  uint8_t* r = HMAC(EVP_sha256(), hash_key_.data(), static_cast<int>(hash_key_.size()),
                    reinterpret_cast<const uint8_t*>(kLabel), sizeof(kLabel), out, &len);
  DP420_ASSERT(r != nullptr && len == 32);
}

std::unique_ptr<simd::BlockHasher> Repository::VolumeHasher(const std::string& volume) const {
  std::array<uint8_t, simd::kHashSecretBytes> secret;
  VolumeSecret(volume, secret.data());
  auto hasher = std::make_unique<simd::BlockHasher>(
      std::span<const uint8_t, simd::kHashSecretBytes>(secret));
  OPENSSL_cleanse(secret.data(), secret.size());
  return hasher;
}

Result<std::unique_ptr<Repository>> Repository::Open(const std::string& path,
                                                     const KeySource& key_source) {
  return OpenAny(path, false, key_source);
}

Result<bool> Repository::IsEncrypted(const std::string& path) {
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(path + "/config"));
  Json j = Json::parse(text.substr(0, text.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Corruption(path + "/config: not JSON");
  return j.contains("encryption") && j["encryption"].is_string() && j["encryption"] != "none";
}

Result<std::unique_ptr<Repository>> Repository::OpenForUpgrade(const std::string& path) {
  return OpenAny(path, true, KeySource{});
}

// An encrypted repository's keys, from the master key a key slot opens.
Status Repository::Unlock(const KeySource& key_source) {
  DP420_ASSIGN_OR_RETURN(UnlockedKey unlocked, dp420::Unlock(path_, repo_id_array(), key_source));
  keys_ = std::make_unique<crypto::RepositoryKeys>();
  DP420_RETURN_IF_ERROR(crypto::DeriveRepositoryKeys(unlocked.master, repo_id_array(), keys_.get()));
  static_assert(crypto::kBlockIdSecretBytes == simd::kHashSecretBytes);
  std::memcpy(hash_key_.data(), keys_->block_id_secret.data(), hash_key_.size());
  seal_key_ = SealKey::Derive(keys_->seal_key.data(), keys_->seal_key.size());
  return Status::Ok();
}

Status Repository::CheckMasterKey(const std::string& path, const crypto::RepoId& repo_id,
                                  const crypto::MasterKey& master) {
  const std::string what = path + "/config";
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(what));
  crypto::RepositoryKeys keys;
  DP420_RETURN_IF_ERROR(crypto::DeriveRepositoryKeys(master, repo_id, &keys));
  SealKey seal_key = SealKey::Derive(keys.seal_key.data(), keys.seal_key.size());
  if (!UnsealJson(text, what, &seal_key).ok()) {
    return Status::BadKey("the key does not open " + path + ": the seal of its config does "
                          "not check under it (a key of another repository, or a damaged "
                          "config); nothing was written");
  }
  return Status::Ok();
}

// Reads keys/hash.key, checks it against the config's key_sha256 and derives
// the seal key.
Status Repository::LoadKey(const Json& config) {
  DP420_ASSIGN_OR_RETURN(std::string key, io::ReadFile(path_ + "/keys/hash.key"));
  if (key.size() != simd::kHashSecretBytes) {
    OPENSSL_cleanse(key.data(), key.size());
    return Status::Corruption(path_ + "/keys/hash.key: wrong size");
  }
  uint8_t key_digest[32];
  simd::Sha256(reinterpret_cast<const uint8_t*>(key.data()), key.size(), key_digest);
  std::memcpy(hash_key_.data(), key.data(), simd::kHashSecretBytes);
  OPENSSL_cleanse(key.data(), key.size());
  if (simd::ToHex(key_digest, 32) != config.at("key_sha256").get<std::string>()) {
    return Status::Corruption(path_ + "/keys/hash.key: does not match the config's key_sha256");
  }
  seal_key_ = SealKey::Derive(hash_key_.data(), hash_key_.size());
  return Status::Ok();
}

Result<std::unique_ptr<Repository>> Repository::OpenWithoutKey(const std::string& path) {
  return OpenAny(path, false, KeySource{}, true);
}

Result<std::unique_ptr<Repository>> Repository::OpenAny(const std::string& path,
                                                        bool legacy_ok,
                                                        const KeySource& key_source,
                                                        bool keyless) {
  const std::string what = path + "/config";
  auto text = io::ReadFile(what);
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) {
      return Status::NotFound(path + " is not a dp420 repository (no config file)");
    }
    return text.status();
  }
  // A plain seal is format 1; the keyed seal is read first and checked once
  // the key is loaded.
  auto plain = UnsealJsonPlain(text.value(), what);
  const bool plain_seal = plain.ok();
  Result<Json> config = plain_seal ? std::move(plain) : UnsealJson(text.value(), what, nullptr);
  if (!config.ok()) return config.status();
  std::unique_ptr<Repository> repo(new Repository());
  repo->path_ = path;
  std::string encryption;
  try {
    const Json& c = config.value();
    if (c.at("format").get<std::string>() != "dp420-repository") {
      return Status::Corruption(what + ": not a dp420 repository config");
    }
    repo->format_version_ = JsonUint<uint32_t>(c.at("format_version"));
    if (repo->format_version_ > kRepoFormatVersion) {
      return Status::Version(path + ": repository format version " +
                             std::to_string(repo->format_version_) +
                             " is newer than this dp420 supports (" +
                             std::to_string(kRepoFormatVersion) + "); upgrade dp420");
    }
    if ((repo->format_version_ < 2) != plain_seal) {
      return Status::Corruption(what + ": its seal does not fit its format version");
    }
    if (repo->format_version_ < 2 && !legacy_ok) {
      return Status::Version(path + ": repository format " +
                             std::to_string(repo->format_version_) +
                             " (seals without a key); run `dp420 upgrade " + path +
                             "` once to bring it to format " + std::to_string(kRepoFormatVersion));
    }
    if (!simd::FromHex(c.at("repo_id").get<std::string>(), repo->repo_id_, 16)) {
      return Status::Corruption(what + ": bad repo_id");
    }
    encryption = c.contains("encryption") ? c.at("encryption").get<std::string>() : "none";
    if (encryption != "none" && encryption != "aes-256-gcm") {
      return Status::Version(path + ": encryption '" + encryption +
                             "' is unknown to this dp420; upgrade dp420");
    }
    if (encryption != "none" && repo->format_version_ < 3) {
      return Status::Corruption(what + ": encryption in a repository of format " +
                                std::to_string(repo->format_version_));
    }
    // A secret given for a repository whose config says it is not encrypted:
    // the config may have been replaced by someone who cannot read the
    // repository, so that what is written next lands in the clear. Refused,
    // never ignored.
    if (encryption == "none" &&
        (!key_source.passphrase_file.empty() || !key_source.key_file.empty())) {
      return Status::BadKey(
          path + " is not an encrypted repository (its config says encryption none), yet a " +
          (key_source.key_file.empty() ? "passphrase" : "key") +
          " file was given: refused, in case its config was replaced to have data written in "
          "the clear; leave out --passphrase-file and --repo-key-file (and "
          "DP420_PASSPHRASE_FILE, DP420_REPO_KEY_FILE) for a repository without encryption");
    }
    if (encryption == "none") DP420_RETURN_IF_ERROR(repo->LoadKey(c));
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": malformed (" + e.what() + ")");
  }
  if (keyless && encryption != "none") return repo;
  if (encryption != "none") DP420_RETURN_IF_ERROR(repo->Unlock(key_source));
  if (!plain_seal) {
    DP420_RETURN_IF_ERROR(UnsealJson(text.value(), what, &repo->seal_key_).status());
  }
  // From here on, what the seal key seals in an encrypted repository is encrypted too.
  if (repo->keys_) repo->seal_key_.SetCipher(repo->keys_->object_key, repo->repo_id_array());
  return repo;
}

std::string Repository::repo_id_hex() const { return simd::ToHex(repo_id_, 16); }

crypto::RepoId Repository::repo_id_array() const {
  crypto::RepoId id;
  std::memcpy(id.data(), repo_id_, id.size());
  return id;
}

Result<std::unique_ptr<RecordCodec>> Repository::NewRecordCodec(const CodecSpec& compression) const {
  if (format_version_ < 3) return RecordCodec::Create(nullptr, repo_id_array(), CodecSpec{});
  return RecordCodec::Create(keys_ ? &keys_->object_key : nullptr, repo_id_array(), compression);
}

std::vector<uint32_t> Repository::ListPackIds() const {
  std::vector<uint32_t> ids;
  for (const std::string& name : io::ListDir(PacksDir())) {
    if (name.size() != 13 || name.compare(8, 5, ".pack") != 0) continue;
    if (name.find_first_not_of("0123456789abcdef") < 8) continue;
    ids.push_back(static_cast<uint32_t>(std::stoul(name.substr(0, 8), nullptr, 16)));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::string Repository::PackPath(uint32_t pack_id) const {
  return PacksDir() + "/" + PackName(pack_id) + ".pack";
}

std::string Repository::SnapshotsDir(const std::string& volume) const {
  return path_ + "/snapshots/" + volume;
}

std::vector<std::string> Repository::ListVolumes() const {
  std::vector<std::string> out;
  for (auto& name : io::ListDir(path_ + "/snapshots")) {
    if (ValidVolumeName(name)) out.push_back(name);
  }
  return out;
}

Status Repository::ListManifests(const std::string& volume, std::vector<Manifest>* out,
                                 std::vector<DamagedFile>* damaged) const {
  std::vector<std::string> volumes = volume.empty() ? ListVolumes()
                                                    : std::vector<std::string>{volume};
  for (const auto& vol : volumes) {
    std::vector<Manifest> listed;
    std::vector<DamagedFile> bad;
    // The manifests are read before the links: a forget that runs meanwhile
    // (it writes its links, then deletes what they cover) can leave a
    // manifest read before its deletion without the link read after it, a
    // parent that looks missing. The volume is read again while its folder's
    // names changed during the read; a read between no changes is one state.
    std::vector<std::string> before = io::ListDir(SnapshotsDir(vol));
    for (int attempt = 0; attempt < 8; ++attempt) {
      listed.clear();
      bad.clear();
      std::vector<DamagedFile>* bad_or_null = damaged ? &bad : nullptr;
      DP420_RETURN_IF_ERROR(ListVolumeManifests(vol, &listed, bad_or_null));
      if (format_version_ >= 2) {
        DP420_RETURN_IF_ERROR(ApplyLinks(*this, vol, &listed, bad_or_null, nullptr));
      }
      std::vector<std::string> after = io::ListDir(SnapshotsDir(vol));
      if (after == before) break;
      before = std::move(after);
    }
    for (auto& m : listed) out->push_back(std::move(m));
    if (damaged) damaged->insert(damaged->end(), bad.begin(), bad.end());
  }
  return Status::Ok();
}

Status Repository::ListVolumeManifests(const std::string& vol, std::vector<Manifest>* out,
                                       std::vector<DamagedFile>* damaged) const {
  for (const auto& name : io::ListDir(SnapshotsDir(vol))) {
    if (name.size() < 9 || name.substr(name.size() - 9) != ".manifest") continue;
    std::string rel = "snapshots/" + vol + "/" + name;
    Status status;
    auto text = io::ReadFile(path_ + "/" + rel);
    if (text.ok()) {
      // A format-1 repository is only opened to be upgraded, which reads
      // its manifests itself.
      Result<Manifest> m = format_version_ < 2
                               ? Result<Manifest>(Status::Version(rel + ": format 1 manifest"))
                               : Manifest::Parse(text.value(), rel, &seal_key_);
      if (!m.ok()) {
        status = m.status();
      } else if (m->file_name != name || m->volume != vol) {
        status = Status::Corruption(rel + ": file name does not match its content");
      } else if (m->repo_id != repo_id_hex()) {
        status = Status::Corruption(rel + ": belongs to another repository");
      } else {
        out->push_back(std::move(m).value());
        continue;
      }
    } else if (text.status().code() == Code::kNotFound) {
      continue;  // removed since the listing (forget, repair): as if listed after
    } else {
      status = text.status().Prefix(rel);
    }
    if (!damaged) return status;
    damaged->push_back({rel, status});
  }
  return Status::Ok();
}

Result<Manifest> Repository::FindSnapshot(const std::string& volume,
                                          const std::string& id) const {
  if (!ValidVolumeName(volume)) {
    return Status::InvalidArgument("invalid volume name '" + volume + "'");
  }
  DP420_ASSIGN_OR_RETURN(VolumeHistory h, LoadHistory(*this, volume));
  if (id == "latest") {
    DP420_ASSIGN_OR_RETURN(const Manifest* newest, h.Newest(path_));
    return *newest;
  }
  DP420_ASSIGN_OR_RETURN(const Manifest* found, h.Find(id));
  return *found;
}

Result<VolumeLock> Repository::LockVolume(const std::string& volume,
                                          std::chrono::milliseconds wait,
                                          const std::atomic<bool>* cancel) const {
  std::string path = path_ + "/locks/" + volume + ".lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  auto deadline = std::chrono::steady_clock::now() + wait;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK && std::chrono::steady_clock::now() < deadline) {
      if (cancel && cancel->load()) {
        close(fd);
        return Status::Canceled("canceled while waiting for the lock of volume '" + volume + "'");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    close(fd);
    if (err == EWOULDBLOCK) {
      return Status::Busy("volume '" + volume + "' is locked by another dp420 process (" +
                          path + ")");
    }
    return PosixError(path, err);
  }
  return VolumeLock(fd);
}

Result<VolumeLock> Repository::LockRepository(bool exclusive,
                                              const std::function<void()>& on_wait) const {
  std::string path = path_ + "/locks/.repository.lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 && !exclusive && (errno == EROFS || errno == EACCES || errno == EPERM)) {
    // A reader of a repository it may not write (read-only media, another
    // user's): flock works on a read-only descriptor. Without the file no
    // prune has ever run; on read-only media none can start, but a prune
    // by another user starting now is not waited for (the one case).
    fd = io::sys::Open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) return VolumeLock();
  }
  if (fd < 0) return PosixError(path, errno);
  VolumeLock lock(fd);
  int how = exclusive ? LOCK_EX : LOCK_SH;
  if (flock(fd, how | LOCK_NB) == 0) return lock;
  if (errno != EWOULDBLOCK) return PosixError(path, errno);
  if (on_wait) on_wait();
  while (flock(fd, how) != 0) {
    if (errno != EINTR) return PosixError(path, errno);
  }
  return lock;
}

Result<VolumeLock> Repository::LockPrune() const {
  std::string path = path_ + "/locks/.prune.lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  VolumeLock lock(fd);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Busy("another prune of this repository is running (" + path + ")");
    }
    return PosixError(path, errno);
  }
  return lock;
}

Result<VolumeLock> Repository::LockDedupIndex() const {
  std::string path = path_ + "/locks/.dedup.lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  VolumeLock lock(fd);
  while (flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return PosixError(path, errno);
  }
  return lock;
}

BackupJournal::BackupJournal(BackupJournal&& o) noexcept { *this = std::move(o); }

BackupJournal& BackupJournal::operator=(BackupJournal&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    repo_ = o.repo_;
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    packs_ = std::move(o.packs_);
  }
  return *this;
}

BackupJournal::~BackupJournal() {
  if (fd_ >= 0) close(fd_);
}

std::vector<uint32_t> JournalPackIds(const std::string& t) {
  std::vector<uint32_t> packs;
  size_t pos = 0;
  while (pos < t.size()) {
    size_t nl = t.find('\n', pos);
    if (nl == std::string::npos) break;  // a torn last line names nothing durable
    std::string_view line(t.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.size() != 13 || line.substr(0, 5) != "pack ") continue;
    if (line.find_first_not_of("0123456789abcdef", 5) != std::string_view::npos) continue;
    const uint32_t id = static_cast<uint32_t>(std::strtoul(std::string(line.substr(5)).c_str(),
                                                           nullptr, 16));
    if (id != 0) packs.push_back(id);
  }
  return packs;
}

bool JournalGroupMark(const std::string& t, std::string* group, uint64_t* epoch) {
  static constexpr std::string_view kTag = "group ";
  size_t pos = 0;
  while (pos < t.size()) {
    size_t nl = t.find('\n', pos);
    if (nl == std::string::npos) return false;  // torn: the staged manifest was not written
    std::string_view line(t.data() + pos, nl - pos);
    pos = nl + 1;
    if (line.substr(0, kTag.size()) != kTag) continue;
    const size_t space = line.rfind(' ');
    const std::string_view name = line.substr(kTag.size(), space - kTag.size());
    const std::string_view digits = line.substr(space + 1);
    if (space <= kTag.size() || digits.empty() || digits.size() > 20 ||
        digits.find_first_not_of("0123456789") != std::string_view::npos) {
      return false;
    }
    *group = std::string(name);
    *epoch = std::strtoull(std::string(digits).c_str(), nullptr, 10);
    return ValidGroupName(*group) && *epoch != 0;
  }
  return false;
}

Result<std::vector<uint32_t>> JournalledPackIds(const Repository& repo) {
  std::vector<uint32_t> packs;
  const std::string dir = repo.path() + "/tmp";
  for (const std::string& name : io::ListDir(dir)) {
    if (name.size() < 9 || name.compare(name.size() - 8, 8, ".journal") != 0) continue;
    if (name[0] == '.') continue;  // prune's own journal
    auto text = io::ReadFile(dir + "/" + name);
    if (!text.ok() && text.status().code() == Code::kNotFound) continue;
    if (!text.ok()) return text.status();
    for (uint32_t id : JournalPackIds(*text)) packs.push_back(id);
  }
  std::sort(packs.begin(), packs.end());
  return packs;
}

Status BackupJournal::Recover(const Repository& repo, const std::string& volume,
                              bool* rolled_forward) {
  if (rolled_forward) *rolled_forward = false;
  std::string path = repo.path() + "/tmp/" + volume + ".journal";
  auto text = io::ReadFile(path);
  if (!text.ok()) return Status::Ok();  // no journal: nothing to roll back
  std::string snapshot_id;
  const std::string& t = text.value();
  // The snapshot line comes first, whole before any pack is created.
  if (t.rfind("snapshot ", 0) == 0 && t.find('\n') != std::string::npos) {
    snapshot_id = t.substr(9, t.find('\n') - 9);
  }
  std::string group;
  uint64_t epoch = 0;
  if (!snapshot_id.empty() && JournalGroupMark(t, &group, &epoch)) {
    bool forward = false;
    DP420_RETURN_IF_ERROR(RecoverMemberJournal(repo, volume, group, epoch, snapshot_id, &forward));
    if (forward) {  // published: its packs are referenced
      if (rolled_forward) *rolled_forward = true;
      io::sys::Unlink(path.c_str());
      return io::SyncDir(repo.path() + "/tmp");
    }
  }
  const std::vector<uint32_t> packs = JournalPackIds(t);
  bool committed = false;
  for (const auto& name : io::ListDir(repo.SnapshotsDir(volume))) {
    if (!snapshot_id.empty() && name.find("-" + snapshot_id + ".manifest") != std::string::npos) {
      committed = true;
    }
  }
  if (!snapshot_id.empty()) {
    io::sys::Unlink((repo.path() + "/tmp/" + snapshot_id + ".manifest.tmp").c_str());
  }
  if (!committed) {
    for (uint32_t id : packs) io::sys::Unlink(repo.PackPath(id).c_str());
    DP420_RETURN_IF_ERROR(io::SyncDir(repo.PacksDir()));
  }
  io::sys::Unlink(path.c_str());
  return io::SyncDir(repo.path() + "/tmp");
}

namespace {

// Appends `line` to the journal and fdatasyncs it; short writes, EINTR and
// EAGAIN are retried.
Status AppendDurably(int fd, const std::string& line, const std::string& path) {
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = io::sys::Write(fd, line.data() + done, line.size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return PosixError("write " + path, n < 0 ? errno : EIO);
    done += size_t(n);
  }
  if (io::sys::Fdatasync(fd) != 0) return PosixError("fdatasync " + path, errno);
  return Status::Ok();
}

}  // namespace

Result<BackupJournal> BackupJournal::Start(const Repository& repo, const std::string& volume,
                                           const std::string& snapshot_id) {
  bool rolled_forward = false;
  DP420_RETURN_IF_ERROR(Recover(repo, volume, &rolled_forward));
  if (rolled_forward) {
    return Status::Busy("a consistency group's snapshot of volume '" + volume + "' was published "
                        "as this backup began (the roll-forward of a committed group): the "
                        "backup's parent is not the newest snapshot any more; start it again");
  }
  BackupJournal j;
  j.repo_ = &repo;
  j.path_ = repo.path() + "/tmp/" + volume + ".journal";
  j.fd_ = io::sys::Open(j.path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (j.fd_ < 0) return PosixError(j.path_, errno);
  std::string line = "snapshot " + snapshot_id + "\n";
  DP420_RETURN_IF_ERROR(AppendDurably(j.fd_, line, j.path_));
  DP420_RETURN_IF_ERROR(io::SyncDir(repo.path() + "/tmp"));
  return j;
}

Status BackupJournal::MarkGroup(const std::string& group, uint64_t epoch) {
  char digits[32];
  std::snprintf(digits, sizeof(digits), "%020llu", static_cast<unsigned long long>(epoch));
  return AppendDurably(fd_, "group " + group + " " + digits + "\n", path_);
}

Status BackupJournal::AddPack(uint32_t pack_id) {
  std::string line = "pack " + PackName(pack_id) + "\n";
  DP420_RETURN_IF_ERROR(AppendDurably(fd_, line, path_));
  packs_.push_back(pack_id);
  return Status::Ok();
}

void BackupJournal::Commit() {
  if (fd_ < 0) return;
  close(fd_);
  fd_ = -1;
  io::sys::Unlink(path_.c_str());
}

void BackupJournal::Rollback() {
  if (fd_ < 0) return;
  for (uint32_t id : packs_) io::sys::Unlink(repo_->PackPath(id).c_str());
  (void)io::SyncDir(repo_->PacksDir());
  close(fd_);
  fd_ = -1;
  io::sys::Unlink(path_.c_str());
}

}  // namespace dp420
