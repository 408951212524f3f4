#include "engine/net/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "engine/core/manifest.h"
#include "io/inject.h"
#include "io/file.h"
#include "io/random.h"
#include "simd/simd.h"

namespace dp420::net {

void ComputeProof(const uint8_t key[kKeyBytes], ProofSide side,
                  const uint8_t transcript_hash[32], uint8_t out[kProofBytes]) {
  static const char kLabel[] = "dp420-auth-v2";
  uint8_t msg[sizeof(kLabel) - 1 + 1 + 32];
  std::memcpy(msg, kLabel, sizeof(kLabel) - 1);
  msg[sizeof(kLabel) - 1] = side == ProofSide::kClient ? 'C' : 'S';
  std::memcpy(msg + sizeof(kLabel), transcript_hash, 32);
  unsigned int out_len = kProofBytes;
  HMAC(EVP_sha256(), key, kKeyBytes, msg, sizeof(msg), out, &out_len);
}

bool ProofsEqual(const uint8_t a[kProofBytes], const uint8_t b[kProofBytes]) {
  return CRYPTO_memcmp(a, b, kProofBytes) == 0;
}

Status RandomNonce(uint8_t* out, size_t len) { return io::FillRandom(out, len); }

bool ValidClientName(const std::string& name) { return ValidVolumeName(name); }

namespace {

constexpr const char* kLimitFields[] = {"max_volumes", "max_bytes",         "max_backups",
                                        "max_waiting", "max_stripe_memory", "max_sessions"};
constexpr int kLimitCount = int(std::size(kLimitFields));

std::optional<uint64_t>* LimitField(ClientLimits& l, int i) {
  std::optional<uint64_t>* f[] = {&l.max_volumes, &l.max_bytes,         &l.max_backups,
                                  &l.max_waiting, &l.max_stripe_memory, &l.max_sessions};
  static_assert(std::size(f) == std::size(kLimitFields));
  return f[i];
}

}  // namespace

Status CheckPolicyFileSafe(const std::string& kind, const std::string& path,
                           const struct stat& st) {
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", unsigned(st.st_mode & 07777));
  std::string about = path + " (mode " + mode + ", owner uid " + std::to_string(st.st_uid) + ")";
  if (st.st_uid != geteuid()) {
    return Status::Make(Code::kPermission,
                        kind + " " + about + " is not owned by the server's user (uid " +
                            std::to_string(geteuid()) + "): another user could change what "
                            "the server allows or deletes; fix with chown " +
                            std::to_string(geteuid()) + " " + path);
  }
  if (st.st_mode & 022) {
    return Status::Make(Code::kPermission, kind + " " + about +
                                               " is writable by group or others; fix with "
                                               "chmod 600 " + path);
  }
  return Status::Ok();
}

namespace {

// Refuses a clients file that another user could have written: it decides
// who may back up and delete.
Status CheckClientsFileSafe(const std::string& path, const struct stat& st) {
  return CheckPolicyFileSafe("clients file", path, st);
}

Status ParseLimits(const Json& c, ClientLimits* l) {
  for (int i = 0; i < kLimitCount; ++i) {
    if (!c.contains(kLimitFields[i])) continue;
    const Json& v = c.at(kLimitFields[i]);
    if (!v.is_number_unsigned()) return Status::Corruption(std::string(kLimitFields[i]) +
                                                           " is not a non-negative integer");
    *LimitField(*l, i) = v.get<uint64_t>();
  }
  return Status::Ok();
}

}  // namespace

ClientLimits ClientLimits::Over(const ClientLimits& defaults) const {
  auto pick = [](const std::optional<uint64_t>& own, const std::optional<uint64_t>& dflt) {
    return own ? own : dflt;
  };
  ClientLimits out;
  out.max_volumes = pick(max_volumes, defaults.max_volumes);
  out.max_bytes = pick(max_bytes, defaults.max_bytes);
  out.max_backups = pick(max_backups, defaults.max_backups);
  out.max_waiting = pick(max_waiting, defaults.max_waiting);
  out.max_stripe_memory = pick(max_stripe_memory, defaults.max_stripe_memory);
  out.max_sessions = pick(max_sessions, defaults.max_sessions);
  return out;
}

uint64_t ClientLimits::Bound(const std::optional<uint64_t>& v) {
  return !v || *v == 0 ? UINT64_MAX : *v;
}

std::string KeyDigest(const ClientKey& k) {
  uint8_t digest[32];
  simd::Sha256(k.key.data(), kKeyBytes, digest);
  return simd::ToHex(digest, 32);
}

Result<ClientsFileLock> ClientsFileLock::Acquire(const std::string& clients_path) {
  std::string path = clients_path + ".lock";
  int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) return PosixError("open " + path + " (the clients file's lock)", errno);
  while (flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    close(fd);
    return PosixError("flock " + path, err);
  }
  return ClientsFileLock(fd);
}

ClientsFileLock::~ClientsFileLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

Result<ClientRegistry> ClientRegistry::Load(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Status::InvalidArgument("clients file path '" + path + "' must be absolute");
  }
  // The checked file is the one read (one descriptor).
  DP420_ASSIGN_OR_RETURN(std::string text,
                         io::ReadFile(path, [&](const struct stat& st) {
                           return CheckClientsFileSafe(path, st);
                         }));
  return Parse(text, path);
}

Result<ClientRegistry> ClientRegistry::Parse(const std::string& text, const std::string& path) {
  DP420_ASSIGN_OR_RETURN(Json doc, UnsealJsonPlain(text, path));
  ClientRegistry reg;
  try {
    if (doc.at("format").get<std::string>() != "dp420-clients") {
      return Status::Corruption(path + ": not a dp420 clients file");
    }
    if (JsonUint<uint32_t>(doc.at("format_version")) > 2) {
      return Status::Version(path + ": clients file format is newer than this dp420");
    }
    if (doc.contains("server_identity")) {
      uint8_t seed[32];
      bool hex = simd::FromHex(doc.at("server_identity").get<std::string>(), seed, 32);
      auto id = hex ? ServerIdentity::FromSeed(seed) : Status::Corruption("not 64 hex digits");
      Cleanse(seed, sizeof(seed));
      if (!id.ok()) return Status::Corruption(path + ": bad server_identity");
      reg.identity_ = std::make_shared<const ServerIdentity>(std::move(id).value());
    }
    for (const auto& c : doc.at("clients")) {
      ClientKey k;
      k.name = c.at("name").get<std::string>();
      k.role = c.at("role").get<std::string>();
      if (!ValidClientName(k.name) || (k.role != "append" && k.role != "admin") ||
          !simd::FromHex(c.at("key").get<std::string>(), k.key.data(), kKeyBytes)) {
        return Status::Corruption(path + ": bad entry for client '" + k.name + "'");
      }
      if (Status l = ParseLimits(c, &k.limits); !l.ok()) {
        return l.Prefix(path + ": client '" + k.name + "'");
      }
      if (reg.Find(k.name)) return Status::Corruption(path + ": client '" + k.name + "' twice");
      reg.clients_.push_back(k);
    }
  } catch (const std::exception& e) {
    return Status::Corruption(path + ": malformed (" + e.what() + ")");
  }
  return reg;
}

Status ClientRegistry::Save(const std::string& path) const {
  Json list = Json::array();
  for (const auto& c : clients_) {
    Json entry = {{"name", c.name}, {"key", simd::ToHex(c.key.data(), kKeyBytes)}, {"role", c.role}};
    ClientLimits l = c.limits;
    for (int i = 0; i < kLimitCount; ++i) {
      if (*LimitField(l, i)) entry[kLimitFields[i]] = **LimitField(l, i);
    }
    list.push_back(entry);
  }
  Json doc = {{"format", "dp420-clients"}, {"format_version", 2}, {"clients", list}};
  if (identity_) doc["server_identity"] = simd::ToHex(identity_->seed().data(), 32);
  std::string text = SealJsonPlain(doc);
  Status written = io::WriteFileAtomic(path, text);
  Cleanse(text.data(), text.size());
  return written;
}

Status ClientRegistry::SetLimits(const std::string& name, const ClientLimits& limits) {
  for (auto& c : clients_) {
    if (c.name == name) {
      c.limits = limits;
      return Status::Ok();
    }
  }
  return Status::NotFound("client '" + name + "' is not registered");
}

const ClientKey* ClientRegistry::Find(const std::string& name) const {
  for (const auto& c : clients_) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

Status ClientRegistry::EnsureIdentity() {
  if (identity_) return Status::Ok();
  return RotateIdentity();
}

Status ClientRegistry::RotateIdentity() {
  DP420_ASSIGN_OR_RETURN(ServerIdentity id, ServerIdentity::Generate());
  identity_ = std::make_shared<const ServerIdentity>(std::move(id));
  return Status::Ok();
}

Result<ClientKey> ClientRegistry::Add(const std::string& name, const std::string& role) {
  if (!ValidClientName(name)) {
    return Status::InvalidArgument("invalid client name '" + name +
                                   "' (1-64 characters of A-Z a-z 0-9 . _ -)");
  }
  if (role != "append" && role != "admin") {
    return Status::InvalidArgument("role must be 'append' or 'admin', not '" + role + "'");
  }
  if (Find(name)) return Status::Exists("client '" + name + "' is already registered");
  ClientKey k;
  k.name = name;
  k.role = role;
  DP420_RETURN_IF_ERROR(RandomNonce(k.key.data(), kKeyBytes));
  clients_.push_back(k);
  return k;
}

Status ClientRegistry::Remove(const std::string& name) {
  for (auto it = clients_.begin(); it != clients_.end(); ++it) {
    if (it->name == name) {
      clients_.erase(it);
      return Status::Ok();
    }
  }
  return Status::NotFound("client '" + name + "' is not registered");
}

Status WriteKeyFile(const std::string& path, const uint8_t key[kKeyBytes],
                    const std::string& server_id_hex) {
  int fd = io::sys::Open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  std::string text = simd::ToHex(key, kKeyBytes) + "\nserver-id " + server_id_hex + "\n";
  size_t done = 0;
  bool ok = true;
  while (ok && done < text.size()) {
    ssize_t n = io::sys::Write(fd, text.data() + done, text.size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    ok = n > 0;
    if (ok) done += size_t(n);
  }
  ok = ok && io::sys::Fsync(fd) == 0;
  int err = errno;
  Cleanse(text.data(), text.size());
  close(fd);
  if (!ok) {
    io::sys::Unlink(path.c_str());
    return PosixError(path, err);
  }
  return Status::Ok();
}

Status ReadKeyFile(const std::string& path, uint8_t key[kKeyBytes],
                   uint8_t server_id[kFingerprintBytes]) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return PosixError(path, errno);
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%03o", unsigned(st.st_mode & 0777));
    return Status::Make(Code::kPermission, path + " is open to other users (mode " + mode +
                                               "): a key file must be 0600 (chmod 600 " + path +
                                               ")");
  }
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  size_t eol = text.find('\n');
  std::string first = text.substr(0, eol);
  std::string rest = eol == std::string::npos ? "" : text.substr(eol + 1);
  while (!rest.empty() && (rest.back() == '\n' || rest.back() == ' ')) rest.pop_back();
  bool key_ok = simd::FromHex(first, key, kKeyBytes);
  Cleanse(text.data(), text.size());
  Cleanse(first.data(), first.size());
  if (!key_ok) {
    return Status::InvalidArgument(path + " does not hold a dp420 key (64 hex digits)");
  }
  static const std::string kPrefix = "server-id ";
  if (rest.compare(0, kPrefix.size(), kPrefix) != 0 ||
      !simd::FromHex(rest.substr(kPrefix.size()), server_id, kFingerprintBytes)) {
    return Status::InvalidArgument(
        path + " pins no server identity: add the line 'server-id <fingerprint>' that "
               "`dp420 serve` logs at start (or `client-add` prints), so that no other "
               "server can pose as yours");
  }
  return Status::Ok();
}

}  // namespace dp420::net
