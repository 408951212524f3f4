// The key slots of an encrypted repository: REPO/keys/slot-NNNNNNNN.json, one
// crypto::KeySlot per file (engine/crypto/keyslot.h), each wrapping the one
// master key under a passphrase or a key file; and where the secret that
// opens them comes from (KeySource).
//
// A slot file is written to a temporary name, synced, renamed into place and
// its folder synced, so a crash leaves the old set of slots or the new one.
// The last slot of a repository is never removed. Unlock tries at most
// kMaxSlotsTried slots of the source's kind, so that a repository holding
// hostile slots cannot make a client spend unbounded scrypt work.
//
// Secrets (passphrases, key files' bytes, the master key) never appear in a
// Status message, a log line or a command line.
//
// Which secret opens what: a passphrase (from a file or the terminal) is tried
// on passphrase slots only, a key file on key-file slots only, in slot id
// order. A slot file that does not read (bad JSON, out-of-bounds scrypt
// parameters, a slot_id other than its name's, another repository's id) is
// skipped; when nothing opens, it is named: as the error (kCorruption) when
// no intact slot of the source's kind was there to try, so that it alone
// could have opened the repository; else in the kBadKey message.
//
// Thread safety: functions on files. CreateFirstSlot, AddSlot, RemoveSlot and
// ChangePassphrase hold an exclusive flock() on REPO/locks/.keys.lock while
// they read and change the slots (after any prompt, so that a person typing
// does not hold it); Unlock and ListSlots only read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/crypto/keys.h"
#include "engine/crypto/keyslot.h"
#include "io/status.h"

namespace dp420 {

// Slots of one kind Unlock tries at most (each passphrase slot may cost up to
// crypto::kMaxScryptMemoryBytes and ~16 s of scrypt).
// AddSlot refuses a slot of a kind that already has this many, so that every
// slot an operator made can open the repository.
inline constexpr size_t kMaxSlotsTried = 8;
// Slot files a repository may hold (each is read, not tried, when unlocking);
// more is damage.
inline constexpr size_t kMaxSlotFiles = 256;
// The largest passphrase file (and typed passphrase), in bytes: one page of
// secure memory (crypto::SecretBytes).
inline constexpr size_t kMaxPassphraseBytes = 4096;
// How long a change waits for another process's hold on locks/.keys.lock.
inline constexpr int kKeysLockWaitMs = 10000;

// Where the secret that opens (or, at init, first protects) an encrypted
// repository comes from. The CLI fills it from --passphrase-file /
// DP420_PASSPHRASE_FILE, --repo-key-file / DP420_REPO_KEY_FILE, and allows
// the prompt when it runs on a terminal.
struct KeySource {
  // A file whose content is the passphrase (one trailing "\n" or "\r\n" is
  // not part of it; an empty passphrase is refused).
  std::string passphrase_file;
  // A 32-byte key file (crypto::LoadKeyFile; mode 0600).
  std::string key_file;
  // May ask for a passphrase on /dev/tty (echo off) when neither file is given.
  bool prompt = false;

  bool given() const { return !passphrase_file.empty() || !key_file.empty() || prompt; }
};

// A repository's master key and the slot that opened it.
struct UnlockedKey {
  crypto::MasterKey master;
  uint32_t slot_id = 0;
};

// What `dp420 key list` shows of a slot (no secret).
struct KeySlotInfo {
  uint32_t slot_id = 0;
  crypto::SlotKind kind = crypto::SlotKind::kPassphrase;
  crypto::ScryptParams scrypt{};  // passphrase slots
  std::string created;            // RFC 3339 UTC of the slot file's mtime (seconds)
  std::string file;               // "keys/slot-NNNNNNNN.json"
  // Non-empty when the slot file does not read (what is wrong with it); kind
  // and scrypt are then meaningless. Such a slot opens nothing.
  std::string damage;
};

// The repository id from the first line of REPO/config (a JSON object with
// "repo_id": 32 hex digits), without opening the repository: kNotFound when
// there is no config, kCorruption when its first line is not such an object.
// A forged id gains nothing: the slots bind the true one (their AAD).
Result<crypto::RepoId> PeekRepoId(const std::string& repo_path);

// For init: writes the first slot (slot id 1) of a new repository under
// `source` (a key file that does not exist yet is created, 0600). kInvalidArgument
// (exit 2) naming the options when `source` gives nothing and no terminal can be asked.
// kExists when REPO/keys already holds a slot. `scrypt`: the cost of a
// passphrase slot (tests pass small ones; CheckScryptParams applies).
Status CreateFirstSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                       const crypto::MasterKey& master, const KeySource& source,
                       const crypto::ScryptParams& scrypt = crypto::kDefaultScrypt);

// Opens the repository's master key with `source`: kBadKey (exit 11) when no
// slot opens, nothing written; kInvalidArgument naming the options when
// `source` gives nothing; kCorruption naming a damaged slot file only when
// no slot opens; kNotFound when the repository has no slot (it is not
// encrypted); kPermission for a key file open to others; kCanceled when a
// prompt is interrupted (EINTR).
Result<UnlockedKey> Unlock(const std::string& repo_path, const crypto::RepoId& repo_id,
                           const KeySource& source);

// Every slot file, by id, the damaged ones too (KeySlotInfo::damage).
Result<std::vector<KeySlotInfo>> ListSlots(const std::string& repo_path,
                                           const crypto::RepoId& repo_id);

// Adds a slot wrapping `master` under `new_source` (exactly one of its
// passphrase file, key file, or the prompt, which asks twice); returns its
// id, one more than the highest slot file's. A key file that does not exist
// is created (0600) and removed again when the slot is not written.
// kInvalidArgument when the kind already has kMaxSlotsTried slots.
Result<uint32_t> AddSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                         const crypto::MasterKey& master, const KeySource& new_source,
                         const crypto::ScryptParams& scrypt = crypto::kDefaultScrypt);

// Removes slot `slot_id` (a damaged one too): kInvalidArgument when it does
// not exist or no other intact slot would be left.
Status RemoveSlot(const std::string& repo_path, const crypto::RepoId& repo_id, uint32_t slot_id);

// Replaces passphrase slot `slot_id` by one under the passphrase of
// `new_source` (a passphrase file, or the prompt, which asks twice) under
// the same id: the new slot is written to a temporary name, synced and
// renamed over the old one, so a crash leaves one or the other.
// kInvalidArgument for a key-file, damaged or absent slot, or a key file
// as `new_source`.
Status ChangePassphrase(const std::string& repo_path, const crypto::RepoId& repo_id,
                        const crypto::MasterKey& master, uint32_t slot_id,
                        const KeySource& new_source,
                        const crypto::ScryptParams& scrypt = crypto::kDefaultScrypt);

// The printable recovery form of `master` (`dp420 key export --paper`), and
// its inverse (kInvalidArgument naming the line with a wrong check digit).
// The form (version 1; lines starting with '#' are comments, blank lines and
// the case of hex digits do not matter when parsed):
//
//   dp420 recovery key v1
//   repository 0123456789abcdef0123456789abcdef
//   1: 3f1a 09c2 77d0 e415  c7
//   2: 8b02 5e6f 1a9d 44c3  1e
//   3: ...
//   4: ...
//   check 5d2e90a1
//
// Line L (1 to 4) holds bytes 8(L-1) .. 8L-1 of the master key as four
// groups of 4 hex digits, then its check value: the first 2 hex digits of
// SHA-256(byte L || those 8 bytes), which finds a mistyped line (all but 1 in
// 256 typing errors). "check" is the first 8 hex digits of
// SHA-256(repo_id || master key): the whole key, of this repository.
std::string PaperForm(const crypto::MasterKey& master, const crypto::RepoId& repo_id);
Result<crypto::MasterKey> ParsePaperForm(const std::string& text, const crypto::RepoId& repo_id);

}  // namespace dp420
