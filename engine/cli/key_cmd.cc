#include "engine/cli/key_cmd.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dp420cli {

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// Operators keep passphrase files at 0640 in configuration folders: others
// reading one is worth a warning, not a refusal.
void WarnIfOthersMayRead(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && (st.st_mode & S_IROTH)) {
    std::fprintf(stderr, "dp420: warning: passphrase file %s is readable by other users (mode "
                 "%04o)\n", path.c_str(), unsigned(st.st_mode & 0777));
  }
}

bool OnTerminal() { return isatty(STDIN_FILENO) == 1; }

const char* KindName(int kind) {
  switch (kind) {
    case DP420_KEY_SLOT_PASSPHRASE: return "passphrase";
    case DP420_KEY_SLOT_KEY_FILE: return "key-file";
    default: return "damaged";
  }
}

Json SlotJson(const dp420_key_slot_t& s) {
  Json j = {{"slot_id", s.slot_id}, {"kind", KindName(s.kind)}};
  if (s.kind == DP420_KEY_SLOT_PASSPHRASE) {
    j["scrypt"] = {{"n", s.scrypt_n}, {"r", s.scrypt_r}, {"p", s.scrypt_p}};
  }
  j["created"] = s.created;
  j["file"] = s.file;
  if (s.kind == DP420_KEY_SLOT_DAMAGED) j["damage"] = s.damage;
  j["opened"] = s.opened != 0;
  return j;
}

void PrintSlots(const dp420_key_list_t& list) {
  std::printf("%4s  %-10s  %-20s  %s\n", "slot", "kind", "scrypt N, r, p", "created");
  for (size_t i = 0; i < list.slot_count; ++i) {
    const dp420_key_slot_t& s = list.slots[i];
    char params[64] = "-";
    if (s.kind == DP420_KEY_SLOT_PASSPHRASE) {
      std::snprintf(params, sizeof(params), "%llu, %u, %u", (unsigned long long)s.scrypt_n,
                    s.scrypt_r, s.scrypt_p);
    }
    std::printf("%4u  %-10s  %-20s  %s%s\n", s.slot_id, KindName(s.kind), params, s.created,
                s.opened ? "  (opened this time)" : "");
    if (s.kind == DP420_KEY_SLOT_DAMAGED) std::printf("      %s: %s\n", s.file, s.damage);
  }
}

int CmdList(const Common& c) {
  dp420_key_list_t list;
  std::memset(&list, 0, sizeof(list));
  list.struct_size = sizeof(list);
  int rc = dp420_key_list(g_ctx, c.repo.c_str(), &list);
  if (rc != 0) return Report(c, "key list", rc);
  if (c.json) {
    Json slots = Json::array();
    for (size_t i = 0; i < list.slot_count; ++i) slots.push_back(SlotJson(list.slots[i]));
    PrintJson({{"repo", c.repo}, {"slots", slots}});
  } else {
    PrintSlots(list);
  }
  dp420_key_list_free(&list);
  return kExitOk;
}

// The new secret of add and passwd: a file, or the terminal when on one.
std::string NewSecretChoice(const KeyArgs& a, bool allow_key_file, bool* prompt) {
  const int files = int(!a.new_passphrase_file.empty()) + int(!a.new_key_file.empty());
  if (files > 1) return "give --new-passphrase-file or --new-key-file, not both";
  if (!a.new_passphrase_file.empty()) WarnIfOthersMayRead(a.new_passphrase_file);
  *prompt = files == 0;
  if (*prompt && !OnTerminal()) {
    return allow_key_file ? "give the new secret with --new-passphrase-file FILE or "
                            "--new-key-file FILE (or run on a terminal to be asked)"
                          : "give the new passphrase with --new-passphrase-file FILE (or run "
                            "on a terminal to be asked)";
  }
  return "";
}

const char* OrNull(const std::string& s) { return s.empty() ? nullptr : s.c_str(); }

int CmdAdd(const Common& c, const KeyArgs& a) {
  bool prompt = false;
  std::string wrong = NewSecretChoice(a, true, &prompt);
  if (!wrong.empty()) return UsageError(c, "key add", wrong);
  uint32_t id = 0;
  int rc = dp420_key_add(g_ctx, c.repo.c_str(), OrNull(a.new_passphrase_file),
                         OrNull(a.new_key_file), prompt ? 1 : 0, &id);
  if (rc != 0) return Report(c, "key add", rc);
  const char* kind = a.new_key_file.empty() ? "passphrase" : "key-file";
  if (c.json) {
    Json j = {{"repo", c.repo}, {"slot_id", id}, {"kind", kind}};
    if (!a.new_key_file.empty()) j["key_file"] = a.new_key_file;
    PrintJson(j);
  } else if (!c.quiet) {
    std::printf("added key slot %u (%s) to %s\n", id, kind, c.repo.c_str());
    if (!a.new_key_file.empty()) {
      std::printf("it opens with the key file %s (mode 0600): keep a copy apart from the "
                  "repository\n", a.new_key_file.c_str());
    }
  }
  return kExitOk;
}

int CmdRemove(const Common& c, const KeyArgs& a) {
  int rc = dp420_key_remove(g_ctx, c.repo.c_str(), a.slot);
  if (rc != 0) return Report(c, "key remove", rc);
  if (c.json) {
    PrintJson({{"repo", c.repo}, {"removed", a.slot}});
  } else if (!c.quiet) {
    std::printf("removed key slot %u from %s\n", a.slot, c.repo.c_str());
  }
  return kExitOk;
}

int CmdPasswd(const Common& c, const KeyArgs& a) {
  bool prompt = false;
  std::string wrong = NewSecretChoice(a, false, &prompt);
  if (!wrong.empty()) return UsageError(c, "key passwd", wrong);
  uint32_t id = 0;
  int rc = dp420_key_passwd(g_ctx, c.repo.c_str(), a.slot, OrNull(a.new_passphrase_file),
                            prompt ? 1 : 0, &id);
  if (rc != 0) return Report(c, "key passwd", rc);
  if (c.json) {
    PrintJson({{"repo", c.repo}, {"slot_id", id}});
  } else if (!c.quiet) {
    std::printf("changed the passphrase of key slot %u of %s\n", id, c.repo.c_str());
  }
  return kExitOk;
}

// Overwrites a secret (through volatile, so the stores are not dropped).
void Wipe(char* p, size_t n) {
  volatile char* v = p;
  for (size_t i = 0; i < n; ++i) v[i] = 0;
}

int CmdExport(const Common& c, const KeyArgs& a) {
  if (!a.paper) return UsageError(c, "key export", "give --paper (the one form there is)");
  char* text = nullptr;
  int rc = dp420_key_export_paper(g_ctx, c.repo.c_str(), &text);
  if (rc != 0) return Report(c, "key export", rc);
  std::fputs(text, stdout);
  std::fflush(stdout);
  Wipe(text, std::strlen(text));  // the form holds the master key
  dp420_free(text);
  return kExitOk;
}

// The recovery form's text from `path` ("-": standard input), at most 64 KiB
// (a form is about 300 bytes; comments may be added by hand).
bool ReadForm(const std::string& path, std::string* out, std::string* why) {
  std::FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
  if (!f) {
    *why = "cannot open the recovery form " + path + ": " + std::strerror(errno);
    return false;
  }
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0 && out->size() <= (64u << 10)) {
    out->append(buf, n);
  }
  const bool failed = std::ferror(f) != 0;
  if (f != stdin) std::fclose(f);
  Wipe(buf, sizeof(buf));
  if (failed) *why = "cannot read the recovery form " + path;
  if (out->size() > (64u << 10)) *why = "the recovery form " + path + " is larger than 64 KiB";
  return why->empty();
}

int CmdRecover(const Common& c, const KeyArgs& a) {
  bool prompt = false;
  std::string wrong = NewSecretChoice(a, true, &prompt);
  std::string form;
  if (wrong.empty() && a.paper_file == "-" && prompt) {
    wrong = "the recovery form comes from standard input: give the new secret with "
            "--new-passphrase-file FILE or --new-key-file FILE";
  }
  if (wrong.empty()) ReadForm(a.paper_file, &form, &wrong);
  if (!wrong.empty()) {
    Wipe(form.data(), form.size());
    return UsageError(c, "key recover", wrong);
  }
  uint32_t id = 0;
  int rc = dp420_key_recover(g_ctx, c.repo.c_str(), form.c_str(), OrNull(a.new_passphrase_file),
                             OrNull(a.new_key_file), prompt ? 1 : 0, &id);
  Wipe(form.data(), form.size());
  if (rc != 0) return Report(c, "key recover", rc);
  const char* kind = a.new_key_file.empty() ? "passphrase" : "key-file";
  if (c.json) {
    PrintJson({{"repo", c.repo}, {"slot_id", id}, {"kind", kind}});
  } else if (!c.quiet) {
    std::printf("recovered %s: added key slot %u (%s) with the key of the recovery form\n",
                c.repo.c_str(), id, kind);
  }
  return kExitOk;
}

CLI::App* AddKeySub(CLI::App* key, const char* name, const char* help, Common* c, KeyArgs* a,
                    bool json) {
  auto* cmd = key->add_subcommand(name, help);
  cmd->add_option("--repo", c->repo, "Repository directory")->required();
  if (json) AddCommon(cmd, c);
  AddKeySourceOptions(cmd, &a->source);
  return cmd;
}

}  // namespace

void AddKeySourceOptions(CLI::App* cmd, KeySourceArgs* a) {
  auto* g = cmd->add_option_group("opening", "What opens an encrypted repository");
  g->add_option("--passphrase-file", a->passphrase_file,
                "File holding the passphrase (default: $DP420_PASSPHRASE_FILE; else asked on "
                "the terminal)");
  g->add_option("--repo-key-file", a->repo_key_file,
                "The repository's key file, mode 0600 (default: $DP420_REPO_KEY_FILE)");
}

std::string ApplyKeySource(const KeySourceArgs& a) {
  std::string pass = a.passphrase_file;
  std::string key = a.repo_key_file;
  if (!pass.empty() && !key.empty()) return "give --passphrase-file or --repo-key-file, not both";
  if (pass.empty() && key.empty()) {
    pass = Env("DP420_PASSPHRASE_FILE");
    key = Env("DP420_REPO_KEY_FILE");
    if (!pass.empty() && !key.empty()) {
      return "DP420_PASSPHRASE_FILE and DP420_REPO_KEY_FILE are both set: unset one, or give "
             "--passphrase-file or --repo-key-file";
    }
  }
  if (!pass.empty()) WarnIfOthersMayRead(pass);
  if (dp420_ctx_set_passphrase_file(g_ctx, pass.c_str()) != 0 ||
      dp420_ctx_set_repo_key_file(g_ctx, key.c_str()) != 0 ||
      dp420_ctx_set_passphrase_prompt(g_ctx, OnTerminal() ? 1 : 0) != 0) {
    return dp420_errmsg(g_ctx);
  }
  return "";
}

KeyCommands AddKeyCommands(CLI::App* app, Common* c, KeyArgs* a) {
  auto* key = app->add_subcommand("key", "The key slots of an encrypted repository");
  key->require_subcommand(1);
  KeyCommands k;
  k.list = AddKeySub(key, "list", "List the key slots", c, a, true);
  k.add = AddKeySub(key, "add", "Add a key slot under a new passphrase or key file", c, a, true);
  k.add->add_option("--new-passphrase-file", a->new_passphrase_file,
                    "File holding the new passphrase (default: asked twice on the terminal)");
  k.add->add_option("--new-key-file", a->new_key_file,
                    "Key file of the new slot (created, mode 0600, when absent)");
  k.remove = AddKeySub(key, "remove", "Remove a key slot (never the last)", c, a, true);
  k.remove->add_option("--slot", a->slot, "Slot id (dp420 key list)")
      ->required()
      ->check(CLI::Range(1u, 99999999u));
  k.passwd = AddKeySub(key, "passwd", "Change the passphrase of a passphrase slot", c, a, true);
  k.passwd->add_option("--slot", a->slot, "Slot id (default: the slot the passphrase opens)")
      ->check(CLI::Range(1u, 99999999u));
  k.passwd->add_option("--new-passphrase-file", a->new_passphrase_file,
                       "File holding the new passphrase (default: asked twice on the terminal)");
  k.exp = AddKeySub(key, "export", "Print the master key as a recovery form", c, a, false);
  k.exp->add_flag("--paper", a->paper, "A printable form with a check value on each line");
  k.recover = AddKeySub(key, "recover",
                        "Add a key slot with the master key of a recovery form (export --paper)",
                        c, a, true);
  k.recover->add_option("--paper-file", a->paper_file,
                        "The recovery form, as printed and typed back in (-: standard input)")
      ->required();
  k.recover->add_option("--new-passphrase-file", a->new_passphrase_file,
                        "File holding the new passphrase (default: asked twice on the terminal)");
  k.recover->add_option("--new-key-file", a->new_key_file,
                        "Key file of the new slot (created, mode 0600, when absent)");
  return k;
}

bool RunKeyCommand(const Common& c, const KeyArgs& a, const KeyCommands& cmds, int* exit_code) {
  const char* what = *cmds.list ? "key list" : *cmds.add ? "key add" : *cmds.remove ? "key remove"
                     : *cmds.passwd ? "key passwd" : *cmds.exp ? "key export"
                     : *cmds.recover ? "key recover" : nullptr;
  if (what == nullptr) return false;
  std::string wrong = ApplyKeySource(a.source);
  if (!wrong.empty()) {
    *exit_code = UsageError(c, what, wrong);
    return true;
  }
  if (*cmds.list) *exit_code = CmdList(c);
  if (*cmds.add) *exit_code = CmdAdd(c, a);
  if (*cmds.remove) *exit_code = CmdRemove(c, a);
  if (*cmds.passwd) *exit_code = CmdPasswd(c, a);
  if (*cmds.exp) *exit_code = CmdExport(c, a);
  if (*cmds.recover) *exit_code = CmdRecover(c, a);
  return true;
}

}  // namespace dp420cli
