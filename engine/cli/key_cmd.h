// The keys of encrypted repositories on the command line: the options that
// say where the opening secret comes from (for every command that opens an
// encrypted repository), and `dp420 key list|add|remove|passwd|export`,
// through the C API (dp420_ctx_set_passphrase_file ..., dp420_key_*).
//
// A secret is never accepted on the command line: only files, the
// environment's file names, and the terminal.
//
// Thread safety: as cli.h.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "engine/cli/cli.h"

namespace dp420cli {

// Where the secret that opens the repository comes from.
struct KeySourceArgs {
  std::string passphrase_file;  // --passphrase-file, else $DP420_PASSPHRASE_FILE
  std::string repo_key_file;    // --repo-key-file, else $DP420_REPO_KEY_FILE
};

// Adds --passphrase-file FILE and --repo-key-file FILE to `cmd`.
void AddKeySourceOptions(CLI::App* cmd, KeySourceArgs* a);
// Sets g_ctx's key source from `a`, else the environment, and allows the
// prompt when stdin is a terminal. Options win over the environment; two
// files at once are refused. Warns on stderr about a passphrase file that
// others may read. Returns "" or the usage error.
std::string ApplyKeySource(const KeySourceArgs& a);

struct KeyArgs {
  KeySourceArgs source;
  std::string new_passphrase_file;
  std::string new_key_file;
  uint32_t slot = 0;  // remove: required; passwd: 0 = the slot that opened
  bool paper = false;
  std::string paper_file;  // recover: the recovery form ("-": standard input)
};

struct KeyCommands {
  CLI::App* list = nullptr;
  CLI::App* add = nullptr;
  CLI::App* remove = nullptr;
  CLI::App* passwd = nullptr;
  CLI::App* exp = nullptr;
  CLI::App* recover = nullptr;
};

// Adds `dp420 key` and its subcommands to `app`, parsing into `c` and `a`.
KeyCommands AddKeyCommands(CLI::App* app, Common* c, KeyArgs* a);
// Runs the one that was given; false when none was.
bool RunKeyCommand(const Common& c, const KeyArgs& a, const KeyCommands& cmds, int* exit_code);

}  // namespace dp420cli
