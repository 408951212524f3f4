#include "engine/net/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/core/manifest.h"
#include "io/file.h"
#include "io/random.h"
#include "simd/simd.h"

namespace dp420::net {

void ComputeProof(const uint8_t key[kKeyBytes], ProofSide side, const std::string& client_name,
                  const uint8_t client_nonce[kNonceBytes],
                  const uint8_t server_nonce[kNonceBytes], uint8_t out[kProofBytes]) {
  static const char kLabel[] = "dp420-auth-v1";
  std::string msg(kLabel, sizeof(kLabel) - 1);
  msg.push_back(side == ProofSide::kClient ? 'C' : 'S');
  uint32_t len = static_cast<uint32_t>(client_name.size());
  msg.append(reinterpret_cast<const char*>(&len), 4);
  msg += client_name;
  msg.append(reinterpret_cast<const char*>(client_nonce), kNonceBytes);
  msg.append(reinterpret_cast<const char*>(server_nonce), kNonceBytes);
  unsigned int out_len = kProofBytes;
  HMAC(EVP_sha256(), key, kKeyBytes, reinterpret_cast<const unsigned char*>(msg.data()),
       msg.size(), out, &out_len);
}

bool ProofsEqual(const uint8_t a[kProofBytes], const uint8_t b[kProofBytes]) {
  return CRYPTO_memcmp(a, b, kProofBytes) == 0;
}

Status RandomNonce(uint8_t* out, size_t len) { return io::FillRandom(out, len); }

bool ValidClientName(const std::string& name) { return ValidVolumeName(name); }

Result<ClientRegistry> ClientRegistry::Load(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Status::InvalidArgument("clients file path '" + path + "' must be absolute");
  }
  DP420_ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  DP420_ASSIGN_OR_RETURN(Json doc, UnsealJson(text, path));
  ClientRegistry reg;
  try {
    if (doc.at("format").get<std::string>() != "dp420-clients") {
      return Status::Corruption(path + ": not a dp420 clients file");
    }
    if (doc.at("format_version").get<uint32_t>() > 1) {
      return Status::Version(path + ": clients file format is newer than this dp420");
    }
    for (const auto& c : doc.at("clients")) {
      ClientKey k;
      k.name = c.at("name").get<std::string>();
      k.role = c.at("role").get<std::string>();
      if (!ValidClientName(k.name) || (k.role != "append" && k.role != "admin") ||
          !simd::FromHex(c.at("key").get<std::string>(), k.key, kKeyBytes)) {
        return Status::Corruption(path + ": bad entry for client '" + k.name + "'");
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
    list.push_back({{"name", c.name}, {"key", simd::ToHex(c.key, kKeyBytes)}, {"role", c.role}});
  }
  Json doc = {{"format", "dp420-clients"}, {"format_version", 1}, {"clients", list}};
  return io::WriteFileAtomic(path, SealJson(doc));
}

const ClientKey* ClientRegistry::Find(const std::string& name) const {
  for (const auto& c : clients_) {
    if (c.name == name) return &c;
  }
  return nullptr;
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
  DP420_RETURN_IF_ERROR(RandomNonce(k.key, kKeyBytes));
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

Status WriteKeyFile(const std::string& path, const uint8_t key[kKeyBytes]) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  std::string line = simd::ToHex(key, kKeyBytes) + "\n";
  bool ok = write(fd, line.data(), line.size()) == ssize_t(line.size()) && fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok) {
    unlink(path.c_str());
    return PosixError(path, err);
  }
  return Status::Ok();
}

Status ReadKeyFile(const std::string& path, uint8_t key[kKeyBytes]) {
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
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!simd::FromHex(text, key, kKeyBytes)) {
    return Status::InvalidArgument(path + " does not hold a dp420 key (64 hex digits)");
  }
  return Status::Ok();
}

}  // namespace dp420::net
