// `dp420 key ...` run as a process against a repository folder whose first
// slot the test made with the library: list, add, remove, passwd and export
// with their exit codes and JSON; the opening secret from files, the
// environment, and a pseudo-terminal that the test types into; and no secret
// accepted in argv.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/core/keystore.h"
#include "tests/keys/keys_test_util.h"

extern char** environ;

namespace dp420 {
namespace {

using Json = nlohmann::json;
using keystest::Files;
using keystest::kFast;
using keystest::ReadText;
using keystest::WriteText;

struct CliRun {
  int exit_code = -1;
  std::string out, err;
  Json json() const { return Json::parse(out, nullptr, false); }
};

// The environment of the child: ours without DP420_*, plus `extra`.
std::vector<std::string> ChildEnv(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    if (std::strncmp(*e, "DP420_", 6) != 0) env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> p;
  for (auto& s : strings) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

class KeyCliTest : public keystest::RepoWithMasterKey {
 protected:
  void SetUp() override {
    keystest::RepoWithMasterKey::SetUp();
    if (HasFatalFailure()) return;
    alpha_ = PassFile("alpha", "alpha passphrase\n");
    KeySource s;
    s.passphrase_file = alpha_;
    ASSERT_TRUE(CreateFirstSlot(repo_, repo_id_, *master_, s, kFast).ok());
  }

  std::string PassFile(const std::string& name, const std::string& text) {
    std::string path = dir_.path() + "/" + name;
    WriteText(path, text, 0600);
    return path;
  }

  // Runs dp420 with `args`, stdin from /dev/null, stdout and stderr captured.
  CliRun Dp420(std::vector<std::string> args, const std::vector<std::string>& env_extra = {}) {
    args.insert(args.begin(), DP420_CLI_PATH);
    std::vector<std::string> env = ChildEnv(env_extra);
    const std::string out = dir_.path() + "/stdout", err = dir_.path() + "/stderr";
    pid_t pid = fork();
    if (pid == 0) {
      int in = open("/dev/null", O_RDONLY);
      int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(in, 0);
      dup2(o, 1);
      dup2(e, 2);
      execve(args[0].c_str(), Pointers(args).data(), Pointers(env).data());
      _exit(127);
    }
    return Wait(pid, out, err);
  }

  CliRun Wait(pid_t pid, const std::string& out, const std::string& err) {
    CliRun r;
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadText(out);
    r.err = ReadText(err);
    return r;
  }

  std::vector<std::string> Opening(const std::string& pass) {
    return {"--repo", repo_, "--passphrase-file", pass};
  }
  static std::vector<std::string> Cat(std::vector<std::string> a,
                                      const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  std::string alpha_;
};

TEST_F(KeyCliTest, ListAddPasswdRemoveExport) {
  CliRun list = Dp420(Cat({"key", "list", "--json"}, Opening(alpha_)));
  ASSERT_EQ(list.exit_code, 0) << list.err;
  Json j = list.json();
  ASSERT_EQ(j["slots"].size(), 1u) << list.out;
  EXPECT_EQ(j["slots"][0]["slot_id"], 1);
  EXPECT_EQ(j["slots"][0]["kind"], "passphrase");
  EXPECT_EQ(j["slots"][0]["scrypt"]["n"], kFast.n);
  EXPECT_EQ(j["slots"][0]["opened"], true);

  // A second passphrase, then a key file (created 0600), opened from the environment.
  const std::string beta = PassFile("beta", "beta passphrase");
  CliRun add = Dp420(Cat({"key", "add", "--json", "--new-passphrase-file", beta}, Opening(alpha_)));
  ASSERT_EQ(add.exit_code, 0) << add.err;
  EXPECT_EQ(add.json()["slot_id"], 2);
  const std::string key = dir_.path() + "/repo.key";
  CliRun add_key = Dp420({"key", "add", "--repo", repo_, "--json", "--new-key-file", key},
                      {"DP420_PASSPHRASE_FILE=" + beta});
  ASSERT_EQ(add_key.exit_code, 0) << add_key.err;
  EXPECT_EQ(add_key.json()["slot_id"], 3);
  EXPECT_EQ(add_key.json()["kind"], "key-file");
  struct stat st;
  ASSERT_EQ(stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  CliRun by_key = Dp420({"key", "list", "--repo", repo_, "--json", "--repo-key-file", key});
  ASSERT_EQ(by_key.exit_code, 0) << by_key.err;
  ASSERT_EQ(by_key.json()["slots"].size(), 3u);
  EXPECT_EQ(by_key.json()["slots"][2]["kind"], "key-file");
  EXPECT_EQ(by_key.json()["slots"][2]["opened"], true);
  EXPECT_EQ(by_key.json()["slots"][0]["opened"], false);
  CliRun text = Dp420({"key", "list", "--repo", repo_}, {"DP420_REPO_KEY_FILE=" + key});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("key-file"), std::string::npos) << text.out;

  // passwd changes the slot that opened; the old passphrase no longer opens.
  const std::string gamma = PassFile("gamma", "gamma passphrase\n");
  CliRun passwd = Dp420(Cat({"key", "passwd", "--json", "--new-passphrase-file", gamma},
                         Opening(beta)));
  ASSERT_EQ(passwd.exit_code, 0) << passwd.err;
  EXPECT_EQ(passwd.json()["slot_id"], 2);
  EXPECT_EQ(Dp420(Cat({"key", "list"}, Opening(beta))).exit_code, 11);
  EXPECT_EQ(Dp420(Cat({"key", "list"}, Opening(gamma))).exit_code, 0);
  // passwd of a key-file slot is refused.
  EXPECT_EQ(Dp420(Cat({"key", "passwd", "--slot", "3", "--new-passphrase-file", beta},
                      Opening(gamma)))
                .exit_code,
            2);

  CliRun remove = Dp420(Cat({"key", "remove", "--slot", "1", "--json"}, Opening(gamma)));
  ASSERT_EQ(remove.exit_code, 0) << remove.err;
  EXPECT_EQ(remove.json()["removed"], 1);
  EXPECT_EQ(Dp420(Cat({"key", "list"}, Opening(alpha_))).exit_code, 11);
  ASSERT_EQ(Dp420({"key", "remove", "--repo", repo_, "--slot", "2", "--repo-key-file", key})
                .exit_code,
            0);
  CliRun last = Dp420({"key", "remove", "--repo", repo_, "--slot", "3", "--repo-key-file", key,
                    "--json"});
  EXPECT_EQ(last.exit_code, 2);
  EXPECT_EQ(last.json()["error"]["exit_code"], 2) << last.out;
  EXPECT_NE(last.err.find("last slot"), std::string::npos) << last.err;

  // The paper form holds the master key of this repository.
  CliRun paper = Dp420({"key", "export", "--repo", repo_, "--paper", "--repo-key-file", key});
  ASSERT_EQ(paper.exit_code, 0) << paper.err;
  auto back = ParsePaperForm(paper.out, repo_id_);
  ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << paper.out;
  EXPECT_TRUE(std::equal(back->bytes().begin(), back->bytes().end(), master_->bytes().begin()));
}

TEST_F(KeyCliTest, WrongPassphraseExits11AndWritesNothing) {
  const std::string wrong = PassFile("wrong", "not the passphrase\n");
  const auto before = Files(repo_ + "/keys");
  CliRun r = Dp420(Cat({"key", "add", "--json", "--new-passphrase-file", wrong}, Opening(wrong)));
  EXPECT_EQ(r.exit_code, 11) << r.err;
  EXPECT_NE(r.err.find("opens none"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("not the passphrase"), std::string::npos) << "no secret in messages";
  EXPECT_EQ(r.json()["error"]["exit_code"], 11) << r.out;
  EXPECT_EQ(Files(repo_ + "/keys"), before);
}

TEST_F(KeyCliTest, NoSourceNamesTheOptions) {
  CliRun r = Dp420({"key", "list", "--repo", repo_});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  for (const char* option : {"--passphrase-file FILE", "DP420_PASSPHRASE_FILE",
                             "--repo-key-file FILE", "DP420_REPO_KEY_FILE", "terminal"}) {
    EXPECT_NE(r.err.find(option), std::string::npos) << r.err;
  }
  // A new secret without a file and without a terminal.
  EXPECT_EQ(Dp420(Cat({"key", "add"}, Opening(alpha_))).exit_code, 2);
}

TEST_F(KeyCliTest, SecretNeverInArgv) {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"key", "add", "--repo", repo_, "--passphrase", "x"},
        std::vector<std::string>{"key", "list", "--repo", repo_, "--passphrase=x"}}) {
    CliRun r = Dp420(args);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("--passphrase-file"), std::string::npos) << r.err;
  }
}

// A dp420 process whose controlling terminal is a pseudo-terminal the test
// types into; stdout goes to a file.
class PtyRun {
 public:
  PtyRun(std::vector<std::string> args, const std::string& out_path) {
    master_ = posix_openpt(O_RDWR | O_NOCTTY);
    EXPECT_GE(master_, 0);
    EXPECT_EQ(grantpt(master_), 0);
    EXPECT_EQ(unlockpt(master_), 0);
    const std::string slave = ptsname(master_);
    args.insert(args.begin(), DP420_CLI_PATH);
    std::vector<std::string> env = ChildEnv({});
    pid_ = fork();
    if (pid_ == 0) {
      setsid();  // a new session without a terminal, then this one
      int fd = open(slave.c_str(), O_RDWR);
      if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) != 0) _exit(126);
      int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fd, 0);
      dup2(out, 1);
      dup2(fd, 2);
      close(master_);
      execve(args[0].c_str(), Pointers(args).data(), Pointers(env).data());
      _exit(127);
    }
  }
  ~PtyRun() {
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) close(master_);
  }

  // Reads what the terminal shows until it holds `text` (30 s at most).
  bool Expect(const std::string& text) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (screen_.find(text, seen_) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      pollfd p{master_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[512];
      ssize_t n = read(master_, buf, sizeof(buf));
      if (n <= 0) return false;  // the child closed the terminal
      screen_.append(buf, size_t(n));
    }
    seen_ = screen_.find(text, seen_) + text.size();
    return true;
  }
  void Type(const std::string& text) {
    ASSERT_EQ(write(master_, text.data(), text.size()), ssize_t(text.size()));
  }
  int Exit() {
    // Drain the terminal so that the child never blocks writing to it.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return -1;
      pollfd p{master_, POLLIN, 0};
      if (poll(&p, 1, 50) > 0) {
        char buf[512];
        ssize_t n = read(master_, buf, sizeof(buf));
        if (n > 0) screen_.append(buf, size_t(n));
      }
    }
    waited_ = true;
    // What it wrote just before it ended is still in the terminal: read it too
    // (once the child is gone, a read returns what is left, then fails).
    for (;;) {
      pollfd p{master_, POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) break;
      char buf[512];
      ssize_t n = read(master_, buf, sizeof(buf));
      if (n <= 0) break;
      screen_.append(buf, size_t(n));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string& screen() const { return screen_; }

 private:
  int master_ = -1;
  pid_t pid_ = -1;
  bool waited_ = false;
  std::string screen_;
  size_t seen_ = 0;
};

TEST_F(KeyCliTest, PromptOnTheTerminal) {
  const std::string out = dir_.path() + "/pty-stdout";
  {
    // Opening by prompt, a new passphrase asked twice.
    PtyRun run({"key", "add", "--repo", repo_, "--json"}, out);
    ASSERT_TRUE(run.Expect("Passphrase for " + repo_ + ": ")) << run.screen();
    run.Type("alpha passphrase\n");
    ASSERT_TRUE(run.Expect("New passphrase for " + repo_ + ": ")) << run.screen();
    run.Type("typed secret\n");
    ASSERT_TRUE(run.Expect("Repeat the new passphrase: ")) << run.screen();
    run.Type("typed secret\n");
    ASSERT_EQ(run.Exit(), 0) << run.screen();
    EXPECT_EQ(run.screen().find("alpha passphrase"), std::string::npos) << "echo is off";
    EXPECT_EQ(run.screen().find("typed secret"), std::string::npos) << "echo is off";
    EXPECT_EQ(Json::parse(ReadText(out))["slot_id"], 2);
  }
  const std::string typed = PassFile("typed", "typed secret\n");
  EXPECT_EQ(Dp420(Cat({"key", "list"}, Opening(typed))).exit_code, 0);
  {
    // Two different new passphrases: refused, nothing written.
    const auto before = Files(repo_ + "/keys");
    PtyRun run({"key", "passwd", "--repo", repo_, "--passphrase-file", typed}, out);
    ASSERT_TRUE(run.Expect("New passphrase for " + repo_ + ": ")) << run.screen();
    run.Type("one thing\n");
    ASSERT_TRUE(run.Expect("Repeat the new passphrase: ")) << run.screen();
    run.Type("another\n");
    EXPECT_EQ(run.Exit(), 2) << run.screen();
    EXPECT_NE(run.screen().find("differ"), std::string::npos) << run.screen();
    EXPECT_EQ(Files(repo_ + "/keys"), before);
  }
  {
    // A wrong passphrase typed: exit 11.
    PtyRun run({"key", "list", "--repo", repo_}, out);
    ASSERT_TRUE(run.Expect("Passphrase for ")) << run.screen();
    run.Type("wrong guess\n");
    EXPECT_EQ(run.Exit(), 11) << run.screen();
  }
}

}  // namespace
}  // namespace dp420
