#include "engine/core/keystore.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cctype>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include "engine/crypto/secret.h"
#include "io/assert.h"
#include "io/file.h"
#include "io/inject.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

using crypto::KeySlot;
using crypto::SlotKind;

constexpr char kSlotPrefix[] = "slot-";
constexpr char kSlotSuffix[] = ".json";
constexpr size_t kSlotIdDigits = 8;
constexpr uint32_t kMaxSlotId = 99999999;
constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr char kPaperTitle[] = "dp420 recovery key v1";
constexpr size_t kPaperLines = 4;
constexpr size_t kPaperLineBytes = crypto::kMasterKeyBytes / kPaperLines;
static_assert(kPaperLines * kPaperLineBytes == crypto::kMasterKeyBytes);

constexpr char kNoSourceHint[] =
    "give the passphrase with --passphrase-file FILE (or DP420_PASSPHRASE_FILE), the key "
    "file with --repo-key-file FILE (or DP420_REPO_KEY_FILE), or run on a terminal to be "
    "asked; a secret is never accepted on the command line";

// ---- Secrets in secure memory ------------------------------------------------

// A passphrase on a page of its own (crypto::SecretBytes): cleansed when it
// goes away, never in a core dump.
class Passphrase {
 public:
  std::string_view view() const {
    return {reinterpret_cast<const char*>(bytes_.data()), size_};
  }
  uint8_t* data() { return bytes_.data(); }
  size_t size() const { return size_; }
  void set_size(size_t n) {
    DP420_ASSERT(n <= kMaxPassphraseBytes);
    size_ = n;
  }
  // Drops one trailing "\n" or "\r\n".
  void StripNewline() {
    if (size_ == 0 || bytes_.data()[size_ - 1] != '\n') return;
    --size_;
    if (size_ > 0 && bytes_.data()[size_ - 1] == '\r') --size_;
  }

 private:
  crypto::SecretBytes<kMaxPassphraseBytes> bytes_;
  size_t size_ = 0;
};

// Reads the whole passphrase file `path` into `out`, one trailing newline off.
Status ReadPassphraseFile(const std::string& path, Passphrase* out) {
  int fd = io::sys::Open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return PosixError("open passphrase file " + path, errno);
  io::File file = io::File::Adopt(fd, path, false);  // closes fd on every return
  struct stat st;
  if (fstat(fd, &st) != 0) return PosixError("stat passphrase file " + path, errno);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + " is not a regular file");
  size_t done = 0;
  for (;;) {
    if (done == kMaxPassphraseBytes) {
      uint8_t probe;
      ssize_t n = io::sys::Read(fd, &probe, 1);
      if (n == 0) break;
      if (n < 0 && errno == EINTR) continue;
      return Status::InvalidArgument("passphrase file " + path + " is longer than " +
                                     std::to_string(kMaxPassphraseBytes) + " bytes");
    }
    ssize_t n = io::sys::Read(fd, out->data() + done, kMaxPassphraseBytes - done);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return PosixError("read passphrase file " + path, errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out->set_size(done);
  out->StripNewline();
  if (out->size() == 0) {
    return Status::InvalidArgument("passphrase file " + path + " is empty: a passphrase is "
                                   "its whole content (one trailing newline is not part of it)");
  }
  return Status::Ok();
}

// The terminal of this process (/dev/tty) with echo off while it lives.
class Terminal {
 public:
  static Result<std::unique_ptr<Terminal>> Open() {
    int fd = io::sys::Open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
      return Status::InvalidArgument(std::string("no terminal to ask for the passphrase (") +
                                     std::strerror(errno) + "): " + kNoSourceHint);
    }
    auto t = std::unique_ptr<Terminal>(new Terminal(fd));
    if (tcgetattr(fd, &t->saved_) != 0) {
      return Status::InvalidArgument(std::string("/dev/tty is not a terminal: ") + kNoSourceHint);
    }
    struct termios quiet = t->saved_;
    quiet.c_lflag &= ~tcflag_t(ECHO);
    quiet.c_lflag |= ECHONL;  // the Enter still shows as a new line
    if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0) return PosixError("tcsetattr /dev/tty", errno);
    t->restore_ = true;
    return t;
  }
  ~Terminal() {
    if (restore_) (void)tcsetattr(fd_, TCSAFLUSH, &saved_);
    close(fd_);
  }
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  void Say(const std::string& text) const {
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = write(fd_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // best effort: the read says whether anyone is there
      done += static_cast<size_t>(n);
    }
  }

  // Shows `prompt` and reads one line into `out` (without its newline).
  Status Ask(const std::string& prompt, Passphrase* out) const {
    Say(prompt);
    size_t len = 0;
    for (;;) {
      uint8_t c;
      ssize_t n = read(fd_, &c, 1);
      if (n < 0 && errno == EINTR) return Status::Canceled("interrupted at the passphrase prompt");
      if (n < 0) return PosixError("read /dev/tty", errno);
      if (n == 0 || c == '\n') break;
      if (len == kMaxPassphraseBytes) {
        return Status::InvalidArgument("the passphrase is longer than " +
                                       std::to_string(kMaxPassphraseBytes) + " bytes");
      }
      out->data()[len++] = c;
    }
    out->set_size(len);
    out->StripNewline();
    if (out->size() == 0) return Status::InvalidArgument("an empty passphrase is refused");
    return Status::Ok();
  }

 private:
  explicit Terminal(int fd) : fd_(fd) {}
  int fd_;
  struct termios saved_ {};
  bool restore_ = false;
};

// The passphrase that opens `repo_path`, asked once on the terminal.
Status AskPassphrase(const std::string& repo_path, Passphrase* out) {
  DP420_ASSIGN_OR_RETURN(auto tty, Terminal::Open());
  return tty->Ask("Passphrase for " + repo_path + ": ", out);
}

// A new passphrase for `repo_path`, asked twice; the two must match.
Status AskNewPassphrase(const std::string& repo_path, Passphrase* out) {
  DP420_ASSIGN_OR_RETURN(auto tty, Terminal::Open());
  DP420_RETURN_IF_ERROR(tty->Ask("New passphrase for " + repo_path + ": ", out));
  Passphrase again;
  DP420_RETURN_IF_ERROR(tty->Ask("Repeat the new passphrase: ", &again));
  if (again.view() != out->view()) {
    return Status::InvalidArgument("the two passphrases typed differ: nothing was changed");
  }
  return Status::Ok();
}

// ---- Slot files --------------------------------------------------------------

std::string KeysDir(const std::string& repo_path) { return repo_path + "/keys"; }

std::string SlotName(uint32_t slot_id) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08u%s", kSlotPrefix, slot_id, kSlotSuffix);
  return name;
}

// The id of a slot file's name "slot-NNNNNNNN.json", or 0 for any other name
// (hash.key, a temporary file of io::WriteFileAtomic).
uint32_t SlotIdOfName(const std::string& name) {
  const size_t prefix = sizeof(kSlotPrefix) - 1;
  const size_t suffix = sizeof(kSlotSuffix) - 1;
  if (name.size() != prefix + kSlotIdDigits + suffix) return 0;
  if (name.compare(0, prefix, kSlotPrefix) != 0) return 0;
  if (name.compare(prefix + kSlotIdDigits, suffix, kSlotSuffix) != 0) return 0;
  uint32_t id = 0;
  for (size_t i = prefix; i < prefix + kSlotIdDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return 0;
    id = id * 10 + uint32_t(name[i] - '0');
  }
  return id;
}

// One slot file as read: its slot, or what is wrong with it.
struct SlotFile {
  uint32_t id = 0;
  std::string file;  // "keys/slot-NNNNNNNN.json"
  std::optional<KeySlot> slot;
  std::string damage;
  // The kind a damaged file names, when it names one: a damaged slot of the
  // other kind could not have opened the repository anyway.
  std::optional<SlotKind> kind_hint;
  int64_t mtime_s = 0;
};

std::optional<SlotKind> KindHint(std::string_view text) {
  if (text.find("\"kind\":\"passphrase\"") != std::string_view::npos) return SlotKind::kPassphrase;
  if (text.find("\"kind\":\"key-file\"") != std::string_view::npos) return SlotKind::kKeyFile;
  return std::nullopt;
}

// Reads one slot file. Damage (not JSON, out of bounds, another id or
// repository) is recorded in the result; an error reading it is returned.
Result<SlotFile> ReadSlotFile(const std::string& repo_path, const crypto::RepoId& repo_id,
                              uint32_t id) {
  SlotFile f;
  f.id = id;
  f.file = "keys/" + SlotName(id);
  auto text = io::ReadFile(repo_path + "/" + f.file, [&](const struct stat& st) {
    f.mtime_s = st.st_mtim.tv_sec;
    if (static_cast<uint64_t>(st.st_size) > crypto::kMaxKeySlotJsonBytes + 1) {
      return Status::Corruption("longer than " + std::to_string(crypto::kMaxKeySlotJsonBytes) +
                                " bytes");
    }
    return Status::Ok();
  });
  // Too long, or not a regular file: damage, not an error reading it.
  if (!text.ok() && (text.status().code() == Code::kCorruption ||
                     text.status().code() == Code::kInvalidArgument)) {
    f.damage = text.status().message();
    return f;
  }
  if (!text.ok()) return text.status();
  std::string_view json = *text;
  if (!json.empty() && json.back() == '\n') json.remove_suffix(1);
  auto slot = crypto::KeySlotFromJson(json);
  if (!slot.ok()) {
    f.damage = slot.status().message();
    f.kind_hint = KindHint(json);
    return f;
  }
  f.kind_hint = slot->kind;
  if (slot->repo_id != repo_id) {
    f.damage = "it belongs to another repository (repo_id " +
               simd::ToHex(slot->repo_id.data(), slot->repo_id.size()) + ")";
  } else if (slot->slot_id != id) {
    f.damage = "its slot_id " + std::to_string(slot->slot_id) + " is not its name's";
  } else {
    f.slot = std::move(slot).value();
  }
  return f;
}

// Every slot file of the repository, by id. kNotFound without a keys folder.
Result<std::vector<SlotFile>> ReadSlotFiles(const std::string& repo_path,
                                            const crypto::RepoId& repo_id) {
  struct stat st;
  if (stat(KeysDir(repo_path).c_str(), &st) != 0) {
    return PosixError("key slots of " + repo_path + ": " + KeysDir(repo_path), errno);
  }
  std::vector<uint32_t> ids;
  for (const auto& name : io::ListDir(KeysDir(repo_path))) {
    if (uint32_t id = SlotIdOfName(name); id != 0) ids.push_back(id);
  }
  if (ids.size() > kMaxSlotFiles) {
    return Status::Corruption(KeysDir(repo_path) + " holds " + std::to_string(ids.size()) +
                              " slot files, more than " + std::to_string(kMaxSlotFiles));
  }
  std::vector<SlotFile> files;
  for (uint32_t id : ids) {  // ListDir sorts; 8 digits sort as numbers
    auto f = ReadSlotFile(repo_path, repo_id, id);
    if (!f.ok() && f.status().code() == Code::kNotFound) continue;  // removed meanwhile
    if (!f.ok()) return f.status();
    files.push_back(std::move(f).value());
  }
  return files;
}

Status WriteSlot(const std::string& repo_path, const KeySlot& slot) {
  DP420_ASSERT(slot.slot_id != 0);
  return io::WriteFileAtomic(KeysDir(repo_path) + "/" + SlotName(slot.slot_id),
                             crypto::KeySlotToJson(slot) + "\n");
}

std::string KindWord(SlotKind kind) {
  return kind == SlotKind::kPassphrase ? "passphrase" : "key-file";
}

size_t CountIntact(const std::vector<SlotFile>& files, SlotKind kind) {
  return static_cast<size_t>(std::count_if(files.begin(), files.end(), [&](const SlotFile& f) {
    return f.slot && f.slot->kind == kind;
  }));
}

// ---- The lock on changes -----------------------------------------------------

// An exclusive flock() on REPO/locks/.keys.lock, released when destroyed.
class KeysLock {
 public:
  static Result<KeysLock> Take(const std::string& repo_path) {
    const std::string dir = repo_path + "/locks";
    DP420_RETURN_IF_ERROR(io::MakeDirs(dir));
    const std::string path = dir + "/.keys.lock";
    int fd = io::sys::Open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return PosixError("open " + path, errno);
    KeysLock lock(fd);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(kKeysLockWaitMs);
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) return PosixError("flock " + path, errno);
      if (std::chrono::steady_clock::now() >= deadline) {
        return Status::Busy("another process is changing the key slots of " + repo_path +
                            " (it holds " + path + ")");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return lock;
  }
  KeysLock(KeysLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  KeysLock& operator=(KeysLock&&) = delete;
  ~KeysLock() {
    if (fd_ >= 0) close(fd_);
  }

 private:
  explicit KeysLock(int fd) : fd_(fd) {}
  int fd_;
};

// ---- New secrets -------------------------------------------------------------

// The secret a new slot is made under: a passphrase, or a key file's bytes.
struct NewSecret {
  SlotKind kind = SlotKind::kPassphrase;
  Passphrase passphrase;
  crypto::SecretKey file_key;
  std::string created_key_file;  // removed again unless Keep()
  ~NewSecret() {
    if (!created_key_file.empty()) io::sys::Unlink(created_key_file.c_str());
  }
  void Keep() { created_key_file.clear(); }
};

Status CheckOneSource(const KeySource& s) {
  if (!s.given()) return Status::InvalidArgument(std::string("no secret given: ") + kNoSourceHint);
  if (!s.passphrase_file.empty() && !s.key_file.empty()) {
    return Status::InvalidArgument("give a passphrase file or a key file, not both");
  }
  return Status::Ok();
}

// Reads (or creates, for a key file that does not exist) the secret of
// `source`; the prompt asks twice.
Status ReadNewSecret(const std::string& repo_path, const KeySource& source, NewSecret* out) {
  DP420_RETURN_IF_ERROR(CheckOneSource(source));
  if (!source.passphrase_file.empty()) {
    return ReadPassphraseFile(source.passphrase_file, &out->passphrase);
  }
  if (source.key_file.empty()) return AskNewPassphrase(repo_path, &out->passphrase);
  out->kind = SlotKind::kKeyFile;
  struct stat st;
  if (lstat(source.key_file.c_str(), &st) != 0 && errno == ENOENT) {
    DP420_RETURN_IF_ERROR(crypto::CreateKeyFile(source.key_file, &out->file_key));
    out->created_key_file = source.key_file;
    return Status::Ok();
  }
  return crypto::LoadKeyFile(source.key_file, &out->file_key);
}

Result<KeySlot> Wrap(const crypto::MasterKey& master, const crypto::RepoId& repo_id,
                     uint32_t slot_id, const NewSecret& secret,
                     const crypto::ScryptParams& scrypt) {
  if (secret.kind == SlotKind::kKeyFile) {
    return crypto::WrapWithKeyFile(master, repo_id, slot_id, secret.file_key);
  }
  return crypto::WrapWithPassphrase(master, repo_id, slot_id, secret.passphrase.view(), scrypt);
}

// ---- Unlock ------------------------------------------------------------------

// The error when nothing opened: see keystore.h.
Status NothingOpened(const std::string& repo_path, const KeySource& source, SlotKind kind,
                     const std::vector<SlotFile>& files, size_t tried) {
  std::vector<const SlotFile*> could_have;  // damaged slots that might be of `kind`
  for (const auto& f : files) {
    if (!f.slot && (!f.kind_hint || *f.kind_hint == kind)) could_have.push_back(&f);
  }
  std::string damaged;
  for (const SlotFile* f : could_have) {
    damaged += (damaged.empty() ? "" : "; ") + f->file + " (" + f->damage + ")";
  }
  const size_t intact = CountIntact(files, kind);
  if (intact == 0 && !could_have.empty()) {
    return Status::Corruption("no " + KindWord(kind) + " slot of " + repo_path +
                              " can be tried: damaged slot files: " + damaged);
  }
  if (intact == 0) {
    const std::string other = kind == SlotKind::kPassphrase
                                  ? "its key file (--repo-key-file FILE or DP420_REPO_KEY_FILE)"
                                  : "a passphrase (--passphrase-file FILE, DP420_PASSPHRASE_FILE "
                                    "or the terminal)";
    return Status::BadKey(repo_path + " has no " + KindWord(kind) + " slot: open it with " +
                          other);
  }
  std::string msg = kind == SlotKind::kPassphrase
                        ? "the passphrase"
                        : "the key file " + source.key_file;
  msg += " opens none of the " + std::to_string(intact) + " " + KindWord(kind) + " slot(s) of " +
         repo_path;
  if (tried < intact) {
    msg += " (only the first " + std::to_string(tried) + " were tried: at most " +
           std::to_string(kMaxSlotsTried) + " are)";
  }
  if (!damaged.empty()) msg += "; damaged slot files were skipped: " + damaged;
  return Status::BadKey(msg);
}

// Tries the intact slots of `kind` in id order, at most kMaxSlotsTried.
template <typename UnwrapFn>
Result<UnlockedKey> TrySlots(std::vector<SlotFile>* files, SlotKind kind, size_t* tried,
                             UnwrapFn&& unwrap) {
  for (auto& f : *files) {
    if (!f.slot || f.slot->kind != kind) continue;
    if (*tried == kMaxSlotsTried) break;
    ++*tried;
    auto master = unwrap(*f.slot);
    if (master.ok()) return UnlockedKey{std::move(master).value(), f.id};
    if (master.status().code() == Code::kBadKey) continue;
    // Out-of-bounds parameters and the like: damage, skipped like a file that
    // does not parse.
    f.damage = master.status().message();
    f.slot.reset();
  }
  return Status::BadKey("");
}

// ---- Paper form --------------------------------------------------------------

std::string Hex(const uint8_t* data, size_t len) { return simd::ToHex(data, len); }

// First `digits` hex digits of SHA-256(prefix || bytes).
std::string CheckHex(const uint8_t* prefix, size_t prefix_len, const uint8_t* bytes, size_t len,
                     size_t digits) {
  uint8_t buf[crypto::kRepoIdBytes + crypto::kMasterKeyBytes];
  DP420_ASSERT(prefix_len + len <= sizeof(buf));
  std::memcpy(buf, prefix, prefix_len);
  std::memcpy(buf + prefix_len, bytes, len);
  uint8_t digest[simd::kSha256Bytes];
  simd::Sha256(buf, prefix_len + len, digest);
  crypto::Cleanse(buf, sizeof(buf));
  return Hex(digest, simd::kSha256Bytes).substr(0, digits);
}

std::string LineCheck(size_t line, const uint8_t* bytes) {
  const uint8_t number = static_cast<uint8_t>(line);
  return CheckHex(&number, 1, bytes, kPaperLineBytes, 2);
}

std::string KeyCheck(const crypto::RepoId& repo_id, const uint8_t* key) {
  return CheckHex(repo_id.data(), repo_id.size(), key, crypto::kMasterKeyBytes, 8);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The hex digits of `text` (spaces and tabs ignored) into lower case; false
// on any other character.
bool OnlyHex(std::string_view text, std::string* out) {
  out->clear();
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (HexValue(c) < 0) return false;
    *out += static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
  }
  return true;
}

bool HexToBytes(const std::string& hex, uint8_t* out, size_t len) {
  if (hex.size() != 2 * len) return false;
  for (size_t i = 0; i < len; ++i) {
    out[i] = static_cast<uint8_t>(HexValue(hex[2 * i]) << 4 | HexValue(hex[2 * i + 1]));
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// Parses key line `number` ("L: hhhh hhhh hhhh hhhh  cc", after "L:") into
// its 8 bytes of `key`.
Status ParseKeyLine(size_t number, std::string_view body, uint8_t* key) {
  std::string hex;
  const std::string where = "line " + std::to_string(number) + " of the key";
  if (!OnlyHex(body, &hex) || hex.size() != 2 * kPaperLineBytes + 2) {
    crypto::Cleanse(hex.data(), hex.size());
    return Status::InvalidArgument(where + " is not 16 hex digits and a 2-digit check value");
  }
  uint8_t* bytes = key + (number - 1) * kPaperLineBytes;
  (void)HexToBytes(hex.substr(0, 2 * kPaperLineBytes), bytes, kPaperLineBytes);
  const bool ok = LineCheck(number, bytes) == hex.substr(2 * kPaperLineBytes);
  crypto::Cleanse(hex.data(), hex.size());
  if (!ok) {
    return Status::InvalidArgument(where + " does not match its check value: a digit of it "
                                           "is mistyped");
  }
  return Status::Ok();
}

}  // namespace

// ---- Public functions --------------------------------------------------------

Result<crypto::RepoId> PeekRepoId(const std::string& repo_path) {
  const std::string path = repo_path + "/config";
  auto text = io::ReadFile(path, [&](const struct stat& st) {
    if (static_cast<uint64_t>(st.st_size) > kMaxConfigBytes) {
      return Status::Corruption(path + " is larger than " + std::to_string(kMaxConfigBytes) +
                                " bytes");
    }
    return Status::Ok();
  });
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) {
      return Status::NotFound(repo_path + " is not a dp420 repository (no config)");
    }
    return text.status();
  }
  const std::string line = text->substr(0, text->find('\n'));
  auto config = nlohmann::json::parse(line, nullptr, false);
  std::string hex;
  if (config.is_object() && config.contains("repo_id") && config["repo_id"].is_string()) {
    hex = config["repo_id"].get<std::string>();
  }
  crypto::RepoId id{};
  std::string lower;
  if (!OnlyHex(hex, &lower) || lower != hex || !HexToBytes(hex, id.data(), id.size())) {
    return Status::Corruption(path + ": its first line is not a JSON object with \"repo_id\" "
                                     "(32 lower-case hex digits)");
  }
  return id;
}

Status CreateFirstSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                       const crypto::MasterKey& master, const KeySource& source,
                       const crypto::ScryptParams& scrypt) {
  DP420_RETURN_IF_ERROR(crypto::CheckScryptParams(scrypt));
  NewSecret secret;
  DP420_RETURN_IF_ERROR(ReadNewSecret(repo_path, source, &secret));
  DP420_RETURN_IF_ERROR(io::MakeDirs(KeysDir(repo_path)));
  DP420_ASSIGN_OR_RETURN(KeysLock lock, KeysLock::Take(repo_path));
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  if (!files.empty()) {
    return Status::Exists(repo_path + " already has key slots (" + files.front().file + ")");
  }
  DP420_ASSIGN_OR_RETURN(KeySlot slot, Wrap(master, repo_id, 1, secret, scrypt));
  DP420_RETURN_IF_ERROR(WriteSlot(repo_path, slot));
  secret.Keep();
  return Status::Ok();
}

Result<UnlockedKey> Unlock(const std::string& repo_path, const crypto::RepoId& repo_id,
                           const KeySource& source) {
  if (!source.given()) {
    return Status::InvalidArgument("the repository " + repo_path + " is encrypted: " +
                                   kNoSourceHint);
  }
  DP420_RETURN_IF_ERROR(CheckOneSource(source));
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  if (files.empty()) {
    return Status::NotFound(repo_path + " has no key slots: it is not an encrypted repository");
  }
  const SlotKind kind = source.key_file.empty() ? SlotKind::kPassphrase : SlotKind::kKeyFile;
  size_t tried = 0;
  // Nothing to try: say so before asking for a secret.
  if (CountIntact(files, kind) == 0) return NothingOpened(repo_path, source, kind, files, 0);
  Result<UnlockedKey> opened = Status::BadKey("");
  if (kind == SlotKind::kKeyFile) {
    crypto::SecretKey key;
    DP420_RETURN_IF_ERROR(crypto::LoadKeyFile(source.key_file, &key));
    opened = TrySlots(&files, kind, &tried, [&](const KeySlot& slot) {
      return crypto::UnwrapWithKeyFile(slot, repo_id, key);
    });
  } else {
    Passphrase passphrase;
    DP420_RETURN_IF_ERROR(source.passphrase_file.empty()
                              ? AskPassphrase(repo_path, &passphrase)
                              : ReadPassphraseFile(source.passphrase_file, &passphrase));
    opened = TrySlots(&files, kind, &tried, [&](const KeySlot& slot) {
      return crypto::UnwrapWithPassphrase(slot, repo_id, passphrase.view());
    });
  }
  if (opened.ok()) return opened;
  return NothingOpened(repo_path, source, kind, files, tried);
}

Result<std::vector<KeySlotInfo>> ListSlots(const std::string& repo_path,
                                           const crypto::RepoId& repo_id) {
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  std::vector<KeySlotInfo> out;
  for (const auto& f : files) {
    KeySlotInfo info;
    info.slot_id = f.id;
    info.file = f.file;
    info.damage = f.damage;
    if (f.slot) {
      info.kind = f.slot->kind;
      info.scrypt = f.slot->scrypt;
    } else if (f.kind_hint) {
      info.kind = *f.kind_hint;
    }
    time_t t = static_cast<time_t>(f.mtime_s);
    struct tm tm {};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    info.created = buf;
    out.push_back(std::move(info));
  }
  return out;
}

Result<uint32_t> AddSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                         const crypto::MasterKey& master, const KeySource& new_source,
                         const crypto::ScryptParams& scrypt) {
  DP420_RETURN_IF_ERROR(crypto::CheckScryptParams(scrypt));
  NewSecret secret;
  DP420_RETURN_IF_ERROR(ReadNewSecret(repo_path, new_source, &secret));
  DP420_ASSIGN_OR_RETURN(KeysLock lock, KeysLock::Take(repo_path));
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  if (CountIntact(files, secret.kind) >= kMaxSlotsTried) {
    return Status::InvalidArgument(
        repo_path + " already has " + std::to_string(kMaxSlotsTried) + " " +
        KindWord(secret.kind) + " slots, the most an unlock tries: remove one first");
  }
  const uint32_t id = files.empty() ? 1 : files.back().id + 1;
  if (id > kMaxSlotId) return Status::InvalidArgument("no slot id is left after 99999999");
  DP420_ASSIGN_OR_RETURN(KeySlot slot, Wrap(master, repo_id, id, secret, scrypt));
  DP420_RETURN_IF_ERROR(WriteSlot(repo_path, slot));
  secret.Keep();
  return id;
}

Status RemoveSlot(const std::string& repo_path, const crypto::RepoId& repo_id, uint32_t slot_id) {
  DP420_ASSIGN_OR_RETURN(KeysLock lock, KeysLock::Take(repo_path));
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  auto it = std::find_if(files.begin(), files.end(),
                         [&](const SlotFile& f) { return f.id == slot_id; });
  if (it == files.end()) {
    return Status::InvalidArgument(repo_path + " has no key slot " + std::to_string(slot_id));
  }
  const size_t others = static_cast<size_t>(std::count_if(
      files.begin(), files.end(), [&](const SlotFile& f) { return f.slot && f.id != slot_id; }));
  if (others == 0) {
    return Status::InvalidArgument("slot " + std::to_string(slot_id) + " is the last slot that "
                                   "opens " + repo_path + ": add another first (dp420 key add)");
  }
  const std::string path = repo_path + "/" + it->file;
  if (io::sys::Unlink(path.c_str()) != 0) return PosixError("remove " + path, errno);
  return io::SyncDir(KeysDir(repo_path));
}

Status ChangePassphrase(const std::string& repo_path, const crypto::RepoId& repo_id,
                        const crypto::MasterKey& master, uint32_t slot_id,
                        const KeySource& new_source, const crypto::ScryptParams& scrypt) {
  DP420_RETURN_IF_ERROR(crypto::CheckScryptParams(scrypt));
  if (!new_source.key_file.empty()) {
    return Status::InvalidArgument("a passphrase is changed to another passphrase, not to a key "
                                   "file: add a key-file slot instead (dp420 key add)");
  }
  NewSecret secret;
  DP420_RETURN_IF_ERROR(ReadNewSecret(repo_path, new_source, &secret));
  DP420_ASSIGN_OR_RETURN(KeysLock lock, KeysLock::Take(repo_path));
  DP420_ASSIGN_OR_RETURN(auto files, ReadSlotFiles(repo_path, repo_id));
  auto it = std::find_if(files.begin(), files.end(),
                         [&](const SlotFile& f) { return f.id == slot_id; });
  const std::string name = "slot " + std::to_string(slot_id);
  if (it == files.end()) return Status::InvalidArgument(repo_path + " has no key " + name);
  if (!it->slot) return Status::InvalidArgument(name + " is damaged (" + it->damage + ")");
  if (it->slot->kind != SlotKind::kPassphrase) {
    return Status::InvalidArgument(name + " is a key-file slot: only a passphrase slot's "
                                          "passphrase can be changed");
  }
  DP420_ASSIGN_OR_RETURN(KeySlot slot, Wrap(master, repo_id, slot_id, secret, scrypt));
  return WriteSlot(repo_path, slot);  // a temporary file renamed over the old slot
}

std::string PaperForm(const crypto::MasterKey& master, const crypto::RepoId& repo_id) {
  const uint8_t* key = master.bytes().data();
  std::string text = std::string(kPaperTitle) + "\n";
  text += "# The master key of a dp420 repository: whoever holds this form can read every\n";
  text += "# backup in it. Keep it like the passphrase, offline. Each line ends with its\n";
  text += "# check value; \"check\" covers the whole key and the repository id.\n";
  text += "repository " + Hex(repo_id.data(), repo_id.size()) + "\n";
  for (size_t line = 1; line <= kPaperLines; ++line) {
    const uint8_t* bytes = key + (line - 1) * kPaperLineBytes;
    std::string hex = Hex(bytes, kPaperLineBytes);
    text += std::to_string(line) + ":";
    for (size_t g = 0; g < hex.size(); g += 4) {
      text += ' ';
      text.append(hex, g, 4);
    }
    text += "  " + LineCheck(line, bytes) + "\n";
    crypto::Cleanse(hex.data(), hex.size());
  }
  text += "check " + KeyCheck(repo_id, key) + "\n";
  return text;
}

Result<crypto::MasterKey> ParsePaperForm(const std::string& text, const crypto::RepoId& repo_id) {
  crypto::SecretKey key;
  bool seen[kPaperLines + 1] = {};
  bool title = false;
  std::string repo_hex, check_hex;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line = Trim(std::string_view(text).substr(at, end - at));
    at = end + 1;
    if (line.empty() || line.front() == '#') continue;
    if (line == kPaperTitle) {
      title = true;
    } else if (line.rfind("repository ", 0) == 0) {
      repo_hex = std::string(Trim(line.substr(11)));
    } else if (line.rfind("check ", 0) == 0) {
      check_hex = std::string(Trim(line.substr(6)));
    } else if (line.size() >= 2 && line[1] == ':' && line[0] >= '1' &&
               line[0] < char('1' + kPaperLines)) {
      const size_t number = size_t(line[0] - '0');
      if (seen[number]) return Status::InvalidArgument("line " + std::string(1, line[0]) +
                                                       " of the key is given twice");
      DP420_RETURN_IF_ERROR(ParseKeyLine(number, line.substr(2), key.data()));
      seen[number] = true;
    } else {
      // A mangled key line holds key digits: never quoted back.
      const bool digits = !line.empty() && std::isxdigit(static_cast<unsigned char>(line[0]));
      return Status::InvalidArgument(
          digits ? "a line of the recovery form is neither a key line (\"N: xxxx xxxx xxxx "
                   "xxxx  cc\", N from 1 to 4) nor one of its other lines"
                 : "not a line of a dp420 recovery key: '" + std::string(line.substr(0, 40)) + "'");
    }
  }
  if (!title) return Status::InvalidArgument(std::string("no '") + kPaperTitle + "' line");
  for (size_t n = 1; n <= kPaperLines; ++n) {
    if (!seen[n]) {
      return Status::InvalidArgument("line " + std::to_string(n) + " of the key is missing");
    }
  }
  std::string lower;
  if (!OnlyHex(repo_hex, &lower) || lower != Hex(repo_id.data(), repo_id.size())) {
    return Status::InvalidArgument("the form is of repository '" + repo_hex + "', not of " +
                                   Hex(repo_id.data(), repo_id.size()));
  }
  if (!OnlyHex(check_hex, &lower) || lower != KeyCheck(repo_id, key.data())) {
    return Status::InvalidArgument("the key does not match its check value '" + check_hex +
                                   "': a line of it is mistyped in a way its own check misses");
  }
  return crypto::MasterKey::FromBytes(key.span());
}

}  // namespace dp420
