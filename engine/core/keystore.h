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
// Thread safety: functions on files; callers serialize changes of one
// repository's slots (the CLI holds locks/.keys.lock).
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
inline constexpr size_t kMaxSlotsTried = 8;

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
  std::string created;            // RFC 3339 UTC of the slot file's mtime
};

// For init: writes the first slot (slot id 1) of a new repository under
// `source` (a key file that does not exist yet is created, 0600). kInvalidArgument
// (exit 2) naming the options when `source` gives nothing and no terminal can be asked.
Status CreateFirstSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                       const crypto::MasterKey& master, const KeySource& source);

// Opens the repository's master key with `source`: kBadKey (exit 11) when no
// slot opens, nothing written; kInvalidArgument naming the options when
// `source` gives nothing; kCorruption naming a damaged slot file only when
// no slot opens.
Result<UnlockedKey> Unlock(const std::string& repo_path, const crypto::RepoId& repo_id,
                           const KeySource& source);

// Every slot, by id.
Result<std::vector<KeySlotInfo>> ListSlots(const std::string& repo_path,
                                           const crypto::RepoId& repo_id);

// Adds a slot wrapping `master` under `new_source`; returns its id.
Result<uint32_t> AddSlot(const std::string& repo_path, const crypto::RepoId& repo_id,
                         const crypto::MasterKey& master, const KeySource& new_source);

// Removes slot `slot_id`: kInvalidArgument when it is the last one or does not exist.
Status RemoveSlot(const std::string& repo_path, const crypto::RepoId& repo_id, uint32_t slot_id);

// Replaces passphrase slot `slot_id` by one under the passphrase of
// `new_source` (same id; the old one stays until the new one is durable).
Status ChangePassphrase(const std::string& repo_path, const crypto::RepoId& repo_id,
                        const crypto::MasterKey& master, uint32_t slot_id,
                        const KeySource& new_source);

// The printable recovery form of `master` (`dp420 key export --paper`), and
// its inverse (kInvalidArgument naming the line with a wrong check digit).
std::string PaperForm(const crypto::MasterKey& master, const crypto::RepoId& repo_id);
Result<crypto::MasterKey> ParsePaperForm(const std::string& text, const crypto::RepoId& repo_id);

}  // namespace dp420
