#include "engine/crypto/keyslot.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "io/assert.h"
#include "io/file.h"
#include "io/inject.h"
#include "io/random.h"

namespace dp420::crypto {

namespace {

using Json = nlohmann::ordered_json;

constexpr char kFormat[] = "dp420-key-slot";
constexpr char kCipher[] = "aes-256-gcm";
constexpr size_t kSlotAadBytes = kRepoIdBytes + 4 + 1;

// repo_id || slot_id (u32 LE) || kind
std::array<uint8_t, kSlotAadBytes> SlotAad(const RepoId& repo_id, uint32_t slot_id,
                                           SlotKind kind) {
  std::array<uint8_t, kSlotAadBytes> aad{};
  std::memcpy(aad.data(), repo_id.data(), kRepoIdBytes);
  for (int i = 0; i < 4; ++i) aad[kRepoIdBytes + i] = static_cast<uint8_t>(slot_id >> (8 * i));
  aad[kRepoIdBytes + 4] = static_cast<uint8_t>(kind);
  return aad;
}

std::string Hex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is not written, so not read
}

// Exactly 2 * out.size() lower-case hex digits.
bool FromHex(const std::string& hex, std::span<uint8_t> out) {
  if (hex.size() != 2 * out.size()) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = HexDigit(hex[2 * i]);
    const int lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::string MiB(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// Wraps `master` under `kek` into `slot` (whose id, kind and repository are set).
Status Wrap(const MasterKey& master, const SecretKey& kek, KeySlot* slot) {
  DP420_RETURN_IF_ERROR(io::FillRandom(slot->nonce.data(), slot->nonce.size()));
  const auto aad = SlotAad(slot->repo_id, slot->slot_id, slot->kind);
  return AesGcmSeal(kek.span(), slot->nonce, aad, master.bytes(), slot->wrapped_key, slot->tag);
}

// The master key in `slot` under `kek`: kBadKey when the tag does not match.
Result<MasterKey> Unwrap(const KeySlot& slot, const SecretKey& kek, const char* secret_name) {
  const auto aad = SlotAad(slot.repo_id, slot.slot_id, slot.kind);
  SecretKey plain;
  if (!AesGcmOpen(kek.span(), slot.nonce, aad, slot.wrapped_key, plain.span(), slot.tag)) {
    return Status::BadKey(std::string("the ") + secret_name + " does not open key slot " +
                          std::to_string(slot.slot_id) + " (wrong " + secret_name +
                          ", or the slot is damaged)");
  }
  return MasterKey::FromBytes(plain.span());
}

// What every unwrap checks first.
Status CheckSlot(const KeySlot& slot, const RepoId& repo_id, SlotKind kind) {
  const std::string name = "key slot " + std::to_string(slot.slot_id);
  if (slot.kind != kind) {
    return Status::InvalidArgument(name + " is a " + SlotKindName(slot.kind) + " slot, not a " +
                                   SlotKindName(kind) + " slot");
  }
  if (slot.repo_id != repo_id) {
    return Status::Corruption(name + " belongs to repository " + Hex(slot.repo_id) +
                              ", not to " + Hex(repo_id));
  }
  if (kind == SlotKind::kPassphrase) {
    Status s = CheckScryptParams(slot.scrypt);
    if (!s.ok()) return Status::Corruption(name + ": " + s.message());
  }
  return Status::Ok();
}

}  // namespace

// ---- scrypt ----

uint64_t ScryptMemoryBytes(const ScryptParams& params) {
  // Bounded before it is multiplied by the callers that read parameters from
  // outside (CheckScryptParams checks N and r first).
  return 128 * uint64_t{params.r} * params.n;
}

Status CheckScryptParams(const ScryptParams& params) {
  const ScryptParams& p = params;
  if (p.n < 2 || p.n > kMaxScryptN || (p.n & (p.n - 1)) != 0) {
    return Status::InvalidArgument("scrypt N " + std::to_string(p.n) +
                                   " is not a power of two from 2 to 2^22");
  }
  if (p.r < 1 || p.r > kMaxScryptR) {
    return Status::InvalidArgument("scrypt r " + std::to_string(p.r) + " is not from 1 to " +
                                   std::to_string(kMaxScryptR));
  }
  if (p.p < 1 || p.p > kMaxScryptP) {
    return Status::InvalidArgument("scrypt p " + std::to_string(p.p) + " is not from 1 to " +
                                   std::to_string(kMaxScryptP));
  }
  if (ScryptMemoryBytes(p) > kMaxScryptMemoryBytes) {
    return Status::InvalidArgument("scrypt N " + std::to_string(p.n) + " and r " +
                                   std::to_string(p.r) + " need " + MiB(ScryptMemoryBytes(p)) +
                                   ", more than " + MiB(kMaxScryptMemoryBytes));
  }
  if (p.n * p.r * p.p > kMaxScryptWork) {
    return Status::InvalidArgument("scrypt N " + std::to_string(p.n) + ", r " +
                                   std::to_string(p.r) + " and p " + std::to_string(p.p) +
                                   " are more work than 2^25 (N * r * p)");
  }
  return Status::Ok();
}

Status Scrypt(std::string_view passphrase, std::span<const uint8_t> salt,
              const ScryptParams& params, std::span<uint8_t> out) {
  DP420_ASSERT(!out.empty() && out.size() <= 1024);
  DP420_RETURN_IF_ERROR(CheckScryptParams(params));
  // OpenSSL needs 128 * r * (N + 2) bytes for its table and 128 * r * p more.
  const uint64_t max_mem = ScryptMemoryBytes(params) + 128 * uint64_t{params.r} * (params.p + 2);
  // A null passphrase asks OpenSSL for the memory only: an empty one is "".
  const char* pass = passphrase.data() != nullptr ? passphrase.data() : "";
  const uint8_t no_salt = 0;
  const uint8_t* salt_p = salt.data() != nullptr ? salt.data() : &no_salt;
  if (EVP_PBE_scrypt(pass, passphrase.size(), salt_p, salt.size(), params.n, params.r, params.p,
                     max_mem, out.data(), out.size()) != 1) {
    return Status::NoMemory("scrypt failed (it needs " + MiB(ScryptMemoryBytes(params)) + ")");
  }
  return Status::Ok();
}

const char* SlotKindName(SlotKind kind) {
  switch (kind) {
    case SlotKind::kPassphrase: return "passphrase";
    case SlotKind::kKeyFile: return "key-file";
  }
  return "unknown";
}

// ---- Wrapping and unwrapping ----

Result<KeySlot> WrapWithPassphrase(const MasterKey& master, const RepoId& repo_id,
                                   uint32_t slot_id, std::string_view passphrase,
                                   const ScryptParams& params) {
  if (passphrase.empty()) return Status::InvalidArgument("an empty passphrase");
  DP420_RETURN_IF_ERROR(CheckScryptParams(params));
  KeySlot slot;
  slot.slot_id = slot_id;
  slot.kind = SlotKind::kPassphrase;
  slot.repo_id = repo_id;
  slot.scrypt = params;
  DP420_RETURN_IF_ERROR(io::FillRandom(slot.kdf_salt.data(), slot.kdf_salt.size()));
  SecretKey kek;
  DP420_RETURN_IF_ERROR(Scrypt(passphrase, slot.kdf_salt, params, kek.span()));
  DP420_RETURN_IF_ERROR(Wrap(master, kek, &slot));
  return slot;
}

Result<KeySlot> WrapWithKeyFile(const MasterKey& master, const RepoId& repo_id,
                                uint32_t slot_id, const SecretKey& file_key) {
  KeySlot slot;
  slot.slot_id = slot_id;
  slot.kind = SlotKind::kKeyFile;
  slot.repo_id = repo_id;
  DP420_RETURN_IF_ERROR(Wrap(master, file_key, &slot));
  return slot;
}

Result<MasterKey> UnwrapWithPassphrase(const KeySlot& slot, const RepoId& repo_id,
                                       std::string_view passphrase) {
  DP420_RETURN_IF_ERROR(CheckSlot(slot, repo_id, SlotKind::kPassphrase));
  SecretKey kek;
  DP420_RETURN_IF_ERROR(Scrypt(passphrase, slot.kdf_salt, slot.scrypt, kek.span()));
  return Unwrap(slot, kek, "passphrase");
}

Result<MasterKey> UnwrapWithKeyFile(const KeySlot& slot, const RepoId& repo_id,
                                    const SecretKey& file_key) {
  DP420_RETURN_IF_ERROR(CheckSlot(slot, repo_id, SlotKind::kKeyFile));
  return Unwrap(slot, file_key, "key file");
}

// ---- JSON ----

std::string KeySlotToJson(const KeySlot& slot) {
  Json j;
  j["format"] = kFormat;
  j["format_version"] = kKeySlotFormatVersion;
  j["slot_id"] = slot.slot_id;
  j["kind"] = SlotKindName(slot.kind);
  j["repo_id"] = Hex(slot.repo_id);
  if (slot.kind == SlotKind::kPassphrase) {
    j["kdf"] = "scrypt";
    j["scrypt_n"] = slot.scrypt.n;
    j["scrypt_r"] = slot.scrypt.r;
    j["scrypt_p"] = slot.scrypt.p;
    j["kdf_salt"] = Hex(slot.kdf_salt);
  } else {
    j["kdf"] = "none";
  }
  j["cipher"] = kCipher;
  j["nonce"] = Hex(slot.nonce);
  j["wrapped_key"] = Hex(slot.wrapped_key);
  j["tag"] = Hex(slot.tag);
  return j.dump();
}

namespace {

// Reads the fields of one slot object, naming the first that is wrong.
class SlotReader {
 public:
  explicit SlotReader(const Json& j) : j_(j) {}

  Status String(const char* name, std::string* out) {
    DP420_ASSIGN_OR_RETURN(const Json* v, Field(name));
    if (!v->is_string()) return Bad(name, "is not a string");
    *out = v->get<std::string>();
    return Status::Ok();
  }
  Status Literal(const char* name, const char* expected) {
    std::string value;
    DP420_RETURN_IF_ERROR(String(name, &value));
    if (value != expected) return Bad(name, std::string("is not \"") + expected + "\"");
    return Status::Ok();
  }
  Status Unsigned(const char* name, uint64_t max, uint64_t* out) {
    DP420_ASSIGN_OR_RETURN(const Json* v, Field(name));
    if (!v->is_number_unsigned() || v->get<uint64_t>() > max) {
      return Bad(name, "is not an integer from 0 to " + std::to_string(max));
    }
    *out = v->get<uint64_t>();
    return Status::Ok();
  }
  Status HexBytes(const char* name, std::span<uint8_t> out) {
    std::string value;
    DP420_RETURN_IF_ERROR(String(name, &value));
    if (!FromHex(value, out)) {
      return Bad(name, "is not " + std::to_string(2 * out.size()) + " lower-case hex digits");
    }
    return Status::Ok();
  }
  // kCorruption naming a field that no read asked for.
  Status NoOtherFields() const {
    for (const auto& item : j_.items()) {
      if (read_.find(item.key()) == read_.end()) {
        return Status::Corruption("key slot: unknown field '" + item.key() + "'");
      }
    }
    return Status::Ok();
  }

 private:
  Result<const Json*> Field(const char* name) {
    auto it = j_.find(name);
    if (it == j_.end()) return Status::Corruption(std::string("key slot: field '") + name +
                                                  "' is missing");
    read_.insert(name);
    return &*it;
  }
  static Status Bad(const char* name, const std::string& why) {
    return Status::Corruption(std::string("key slot: field '") + name + "' " + why);
  }

  const Json& j_;
  std::set<std::string> read_;
};

Status ReadScrypt(SlotReader& r, KeySlot* slot) {
  DP420_RETURN_IF_ERROR(r.Literal("kdf", "scrypt"));
  uint64_t n = 0, rr = 0, p = 0;
  DP420_RETURN_IF_ERROR(r.Unsigned("scrypt_n", kMaxScryptN, &n));
  DP420_RETURN_IF_ERROR(r.Unsigned("scrypt_r", kMaxScryptR, &rr));
  DP420_RETURN_IF_ERROR(r.Unsigned("scrypt_p", kMaxScryptP, &p));
  slot->scrypt = {n, static_cast<uint32_t>(rr), static_cast<uint32_t>(p)};
  Status s = CheckScryptParams(slot->scrypt);
  if (!s.ok()) {
    return Status::Corruption("key slot: fields 'scrypt_n', 'scrypt_r', 'scrypt_p': " +
                              s.message());
  }
  return r.HexBytes("kdf_salt", slot->kdf_salt);
}

Result<KeySlot> ReadSlot(const Json& j) {
  SlotReader r(j);
  DP420_RETURN_IF_ERROR(r.Literal("format", kFormat));
  uint64_t version = 0;
  DP420_RETURN_IF_ERROR(r.Unsigned("format_version", UINT32_MAX, &version));
  if (version != kKeySlotFormatVersion) {
    return Status::Make(version > kKeySlotFormatVersion ? Code::kVersion : Code::kCorruption,
                        "key slot: format_version " + std::to_string(version) +
                            " (this dp420 reads version 1)");
  }
  KeySlot slot;
  uint64_t slot_id = 0;
  DP420_RETURN_IF_ERROR(r.Unsigned("slot_id", UINT32_MAX, &slot_id));
  slot.slot_id = static_cast<uint32_t>(slot_id);
  std::string kind;
  DP420_RETURN_IF_ERROR(r.String("kind", &kind));
  if (kind == SlotKindName(SlotKind::kPassphrase)) {
    slot.kind = SlotKind::kPassphrase;
  } else if (kind == SlotKindName(SlotKind::kKeyFile)) {
    slot.kind = SlotKind::kKeyFile;
  } else {
    return Status::Corruption("key slot: field 'kind' is not \"passphrase\" or \"key-file\"");
  }
  DP420_RETURN_IF_ERROR(r.HexBytes("repo_id", slot.repo_id));
  if (slot.kind == SlotKind::kPassphrase) {
    DP420_RETURN_IF_ERROR(ReadScrypt(r, &slot));
  } else {
    DP420_RETURN_IF_ERROR(r.Literal("kdf", "none"));
  }
  DP420_RETURN_IF_ERROR(r.Literal("cipher", kCipher));
  DP420_RETURN_IF_ERROR(r.HexBytes("nonce", slot.nonce));
  DP420_RETURN_IF_ERROR(r.HexBytes("wrapped_key", slot.wrapped_key));
  DP420_RETURN_IF_ERROR(r.HexBytes("tag", slot.tag));
  DP420_RETURN_IF_ERROR(r.NoOtherFields());
  return slot;
}

}  // namespace

Result<KeySlot> KeySlotFromJson(std::string_view text) {
  if (text.size() > kMaxKeySlotJsonBytes) {
    return Status::Corruption("key slot: " + std::to_string(text.size()) +
                              " bytes, more than a key slot holds (" +
                              std::to_string(kMaxKeySlotJsonBytes) + ")");
  }
  // The parser ends the text at a NUL byte: what follows would go unread.
  if (text.find('\0') != std::string_view::npos) {
    return Status::Corruption("key slot: a NUL byte in the text");
  }
  try {
    // The parser keeps the last of a field given twice: such a slot is refused.
    std::string repeated;
    std::set<std::string> names;
    const Json::parser_callback_t note_names = [&](int depth, Json::parse_event_t event,
                                                   Json& parsed) {
      if (event == Json::parse_event_t::key && depth == 1 && repeated.empty() &&
          !names.insert(parsed.get<std::string>()).second) {
        repeated = parsed.get<std::string>();
      }
      return true;
    };
    const Json j = Json::parse(text, note_names, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return Status::Corruption("key slot: not a JSON object");
    }
    if (!repeated.empty()) {
      return Status::Corruption("key slot: field '" + repeated + "' is given twice");
    }
    return ReadSlot(j);
  } catch (const std::exception& e) {  // nothing above should throw; never let it escape
    return Status::Corruption(std::string("key slot: ") + e.what());
  }
}

// ---- Key files ----

Status CreateKeyFile(const std::string& path, SecretKey* key) {
  DP420_RETURN_IF_ERROR(io::FillRandom(key->data(), key->size()));
  int fd = io::sys::Open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0600);
  if (fd < 0) return PosixError("create key file " + path, errno);
  // Exactly 0600 whatever the umask (it could have taken the owner's bits).
  bool ok = fchmod(fd, 0600) == 0;
  size_t done = 0;
  while (ok && done < key->size()) {
    ssize_t n = io::sys::Write(fd, key->data() + done, key->size() - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ok && io::sys::Fsync(fd) == 0;
  const int err = errno;
  close(fd);
  if (!ok) {
    io::sys::Unlink(path.c_str());
    return PosixError("write key file " + path, err);
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  return io::SyncDir(dir.empty() ? "." : dir);
}

Status LoadKeyFile(const std::string& path, SecretKey* key) {
  int fd = io::sys::Open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return PosixError("open key file " + path, errno);
  io::File file = io::File::Adopt(fd, path, false);  // closes fd on every return
  struct stat st;
  if (fstat(fd, &st) != 0) return PosixError("stat key file " + path, errno);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%03o", unsigned(st.st_mode & 0777));
    return Status::Make(Code::kPermission, path + " is open to other users (mode " + mode +
                                               "): a key file must be 0600 (chmod 600 " + path +
                                               ")");
  }
  // One byte more than a key: a file that grew after fstat is still refused.
  uint8_t buf[kKeyFileBytes + 1];
  size_t done = 0;
  while (done < sizeof(buf)) {
    ssize_t n = io::sys::Read(fd, buf + done, sizeof(buf) - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) {
      const int err = errno;
      Cleanse(buf, sizeof(buf));
      return PosixError("read key file " + path, err);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  const bool is_key = done == kKeyFileBytes && st.st_size == static_cast<off_t>(kKeyFileBytes);
  if (is_key) std::memcpy(key->data(), buf, kKeyFileBytes);
  Cleanse(buf, sizeof(buf));
  if (!is_key) {
    return Status::BadKey(path + " is not a repository key file (" + std::to_string(st.st_size) +
                          " bytes; a key file holds " + std::to_string(kKeyFileBytes) + ")");
  }
  return Status::Ok();
}

}  // namespace dp420::crypto
