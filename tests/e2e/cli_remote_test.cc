// The network commands of the CLI: client-add / client-remove, `dp420 serve`
// started and stopped like a service, and backup, snapshots, restore and verify
// with --remote against it on this host.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <fstream>
#include <regex>
#include <tuple>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"
#include "serve_util.h"

namespace dp420::e2e {
namespace {

constexpr int kExitNetwork = 8;

unsigned Mode(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? unsigned(st.st_mode & 0777) : 0u;
}

TEST(CliRemoteTest, ClientAddWritesA0600KeyAndRefusesToOverwrite) {
  TempDir dir;
  std::string clients = dir / "clients.json";
  std::string key = dir / "db1.key";
  Result r = Cli({"client-add", "--clients", clients, "--client", "db1", "--key-out", key,
                  "--json"});
  DP420_ASSERT_EXIT(r, kExitOk);
  Json j = ParseJson(r);
  EXPECT_EQ(j.at("client"), "db1");
  EXPECT_EQ(j.at("role"), "append");
  EXPECT_EQ(Mode(key), 0600u);
  EXPECT_EQ(Mode(clients), 0600u);
  std::string key_text = ReadFile(key);
  ASSERT_EQ(key_text.size(), 65u + 10u + 65u) << "the key, then 'server-id ' and the pin";
  EXPECT_TRUE(IsSha256Hex(key_text.substr(0, 64))) << "a key is 64 lower-case hex digits";
  EXPECT_EQ(key_text.substr(65, 10), "server-id ");
  EXPECT_TRUE(IsSha256Hex(key_text.substr(75, 64))) << "the server's fingerprint";
  std::string clients_text = ReadFile(clients);

  // Another client into the same key file: refused, nothing changed.
  Result again = Cli({"client-add", "--clients", clients, "--client", "db2", "--key-out", key});
  DP420_EXPECT_EXIT(again, kExitRefused);
  EXPECT_NE(again.err.find(key), std::string::npos) << again.Describe();
  EXPECT_EQ(ReadFile(key), key_text);
  EXPECT_EQ(ReadFile(clients), clients_text);
  // The same name again: refused, and no key file appears.
  Result twice = Cli({"client-add", "--clients", clients, "--client", "db1", "--key-out",
                      dir / "other.key", "--json"});
  DP420_EXPECT_EXIT(twice, kExitRefused);
  EXPECT_TRUE(ParseJson(twice).contains("error")) << twice.Describe();
  EXPECT_FALSE(Exists(dir / "other.key"));
  Result role = Cli({"client-add", "--clients", clients, "--client", "db3", "--key-out",
                     dir / "db3.key", "--role", "root"});
  DP420_EXPECT_EXIT(role, kExitUsage);

  Result removed = Cli({"client-remove", "--clients", clients, "--client", "db1", "--json"});
  DP420_EXPECT_EXIT(removed, kExitOk);
  EXPECT_EQ(ParseJson(removed).at("removed"), true);
  Result gone = Cli({"client-remove", "--clients", clients, "--client", "db1"});
  DP420_EXPECT_EXIT(gone, kExitNotFound);
  EXPECT_NE(gone.err.find("db1"), std::string::npos) << gone.Describe();
}

TEST(CliRemoteTest, ServeReportsItsPortAndStopsOnSigterm) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  Result list = Cli(Join({"snapshots", "--json"}, Remote(server, "db1", key)), env);
  DP420_EXPECT_EXIT(list, kExitOk);
  EXPECT_EQ(ParseJson(list), Json::array()) << list.Describe();

  auto start = std::chrono::steady_clock::now();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
  EXPECT_FALSE(stopped.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30)) << server.Log();
  // Nothing listens any more: a network error, exit code 8, naming the address.
  Result refused = Cli(Join({"snapshots"}, Remote(server, "db1", key)), env);
  DP420_EXPECT_EXIT(refused, kExitNetwork);
  EXPECT_NE(refused.err.find(server.address()), std::string::npos) << refused.Describe();
}

// The value of `field` in /proc/PID/status ("Uid:\t65534\t65534..." gives
// "65534\t65534..."); empty when absent.
std::string StatusField(pid_t pid, const std::string& field) {
  std::string status = ReadFile("/proc/" + std::to_string(pid) + "/status");
  std::smatch m;
  std::regex line("(^|\n)" + field + ":\\s*([^\n]*)");
  return std::regex_search(status, m, line) ? m[2].str() : "";
}

// The server holds client keys and session keys: it must not be dumpable
// even when it runs as an unprivileged user, who could otherwise read its
// memory through ptrace or /proc/PID/mem, or get a core dump. The kernel
// gives the files under /proc/PID of a non-dumpable process to root, and
// refuses the process's own user what needs ptrace access (environ, mem).
TEST(CliRemoteTest, ServeAsAnUnprivilegedUserIsNotDumpable) {
  if (!IsRoot()) GTEST_SKIP() << "skipped: needs root to run the server as uid 65534";
  if (!Exists("/usr/bin/setpriv") && !Exists("/bin/setpriv")) {
    GTEST_SKIP() << "skipped: setpriv (util-linux) is not installed";
  }
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  // The server's user owns what it serves; the clients file stays 0600.
  Result owned = Sh("chown -R 65534:65534 " + ShellQuote(dir.path()) + " && chmod 0755 " +
                    ShellQuote(dir.path()) + " && chmod 0600 " + ShellQuote(dir / "clients.json"));
  DP420_ASSERT_EXIT(owned, kExitOk);
  Server server(dir, repo, "setpriv --reuid=65534 --regid=65534 --clear-groups ");
  std::string proc = "/proc/" + std::to_string(server.pid());
  EXPECT_EQ(StatusField(server.pid(), "Uid").substr(0, 5), "65534") << server.Log();
  struct stat st {};
  ASSERT_EQ(stat((proc + "/status").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u) << proc << "/status is owned by uid " << st.st_uid
                           << ": the server is dumpable";
  Result peek = Sh("setpriv --reuid=65534 --regid=65534 --clear-groups cat " + proc +
                   "/environ >/dev/null");
  EXPECT_NE(peek.exit_code, 0) << "its own user read " << proc << "/environ: " << peek.Describe();
  // It still serves: the client gets in.
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  Result list = Cli(Join({"snapshots", "--json"}, Remote(server, "db1", key)), env);
  DP420_EXPECT_EXIT(list, kExitOk) << server.Log();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// A TCP connection to `address` ("127.0.0.1:PORT") that sends nothing.
int ConnectIdle(const std::string& address) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(std::stoi(address.substr(address.rfind(':') + 1))));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    Fail("connect to " + address + ": " + std::strerror(errno));
  }
  return fd;
}

// Whether the server closed `fd` within `ms` (end of stream or reset; any
// ERROR frame before it is read past).
bool ClosedWithin(int fd, int ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(
                       deadline - std::chrono::steady_clock::now()).count());
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) <= 0) return false;
    char buf[256];
    if (recv(fd, buf, sizeof(buf), 0) <= 0) return true;
  }
}

// The limits before authentication come from serve's flags: with
// --max-pending-per-source 2 the third idle socket from one address closes
// the oldest, and --handshake-timeout ends the rest.
TEST(CliRemoteTest, ServeLimitFlagsTakeEffect) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo, "", "--max-pending-per-source 2 --handshake-timeout 1.5");
  std::vector<int> fds;
  for (int i = 0; i < 3; ++i) {
    fds.push_back(ConnectIdle(server.address()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // accepted in this order
  }
  EXPECT_TRUE(ClosedWithin(fds[0], 1000)) << "the oldest over the per-source limit stayed open";
  EXPECT_FALSE(ClosedWithin(fds[1], 200)) << server.Log();
  EXPECT_FALSE(ClosedWithin(fds[2], 200)) << server.Log();
  EXPECT_TRUE(ClosedWithin(fds[1], 3000)) << "the handshake deadline did not end it";
  EXPECT_TRUE(ClosedWithin(fds[2], 3000));
  for (int fd : fds) close(fd);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  Result list = Cli(Join({"snapshots", "--json"}, Remote(server, "db1", key)), env);
  DP420_EXPECT_EXIT(list, kExitOk) << server.Log();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

TEST(CliRemoteTest, ServeLimitFlagsOutOfRangeAreUsageErrors) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  AddClient(dir, "db1");
  std::vector<std::string> serve = {"serve", "--repo", repo, "--listen", "127.0.0.1:0",
                                    "--clients", dir / "clients.json"};
  for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
           {"--max-pending", "0"}, {"--max-pending-per-source", "-1"},
           {"--handshake-timeout", "0"}, {"--max-sessions", "x"},
           {"--default-max-sessions", "-3"}}) {
    Result r = Cli(Join(serve, bad));
    DP420_EXPECT_EXIT(r, kExitUsage);
    EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.Describe();
  }
  // Each in range, but more per source than in all.
  Result r = Cli(Join(serve, {"--max-pending", "4", "--max-pending-per-source", "8"}));
  EXPECT_NE(r.exit_code, kExitOk);
  EXPECT_NE(r.err.find("max_pending_per_source (8) is above max_pending (4)"), std::string::npos)
      << r.Describe();
}

TEST(CliRemoteTest, WrongOrExposedKeysAreRefusedClearly) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  AddClient(dir, "db1");
  std::string other_key = AddClient(dir, "db2");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};

  // db1 presenting db2's key: the server does not let it in.
  Result wrong = Cli(Join({"snapshots"}, Remote(server, "db1", other_key)), env);
  EXPECT_NE(wrong.exit_code, kExitOk) << wrong.Describe();
  EXPECT_TRUE(ContainsIgnoringCase(wrong.err, "authentication failed")) << wrong.Describe();
  Result unknown = Cli(Join({"snapshots", "--json"}, Remote(server, "nobody", other_key)), env);
  EXPECT_NE(unknown.exit_code, kExitOk) << unknown.Describe();
  EXPECT_TRUE(ContainsIgnoringCase(unknown.err, "authentication failed")) << unknown.Describe();
  EXPECT_TRUE(ParseJson(unknown).contains("error")) << unknown.Describe();

  // A key file others may read is refused before anything is sent.
  std::string loose = dir / "loose.key";
  WriteFile(loose, ReadFile(other_key));
  ASSERT_EQ(chmod(loose.c_str(), 0644), 0);
  Result exposed = Cli(Join({"snapshots"}, Remote(server, "db2", loose)), env);
  EXPECT_NE(exposed.exit_code, kExitOk) << exposed.Describe();
  EXPECT_NE(exposed.err.find(loose), std::string::npos) << exposed.Describe();
  EXPECT_NE(exposed.err.find("0600"), std::string::npos) << exposed.Describe();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

TEST(CliRemoteTest, RepoAndRemoteExcludeEachOther) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  std::vector<std::string> remote = {"--remote", "127.0.0.1:9", "--client", "db1",
                                     "--key-file", key};
  std::vector<std::vector<std::string>> commands = {
      {"backup", "--volume", "v", dir / "source.img"},
      {"snapshots"},
      {"restore", "--volume", "v", dir / "target.img"},
      {"verify"}};
  for (const auto& command : commands) {
    Result both = Cli(Join(Join(command, {"--repo", repo}), remote));
    DP420_EXPECT_EXIT(both, kExitUsage);
    EXPECT_NE(both.err.find("--repo and --remote"), std::string::npos) << both.Describe();
    Result neither = Cli(command);
    DP420_EXPECT_EXIT(neither, kExitUsage);
    EXPECT_NE(neither.err.find("--remote"), std::string::npos) << neither.Describe();
  }
  Result no_client = Cli({"snapshots", "--remote", "127.0.0.1:9", "--key-file", key});
  DP420_EXPECT_EXIT(no_client, kExitUsage);
  Result local_client = Cli({"snapshots", "--repo", repo, "--client", "db1"});
  DP420_EXPECT_EXIT(local_client, kExitUsage);
  // A repository secret given with --remote would look used and is not: refused.
  WriteFile(dir / "pass", "a passphrase\n");
  for (const char* option : {"--passphrase-file", "--repo-key-file"}) {
    Result secret = Cli(Join({"snapshots", option, dir / "pass"}, remote));
    DP420_EXPECT_EXIT(secret, kExitUsage);
    EXPECT_NE(secret.err.find("--remote"), std::string::npos) << secret.Describe();
  }
}

TEST(CliRemoteTest, AKeyIsNeverTakenFromTheCommandLine) {
  TempDir dir;
  std::string key = AddClient(dir, "db1");
  std::string hex = ReadFile(key).substr(0, 64);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"snapshots", "--remote", "127.0.0.1:9", "--client", "db1",
                                 "--key", hex},
        std::vector<std::string>{"snapshots", "--remote", "127.0.0.1:9", "--client", "db1",
                                 "--key=" + hex}}) {
    Result r = Cli(args);
    DP420_EXPECT_EXIT(r, kExitUsage);
    EXPECT_TRUE(ContainsIgnoringCase(r.err, "never accepted on the command line"))
        << r.Describe();
  }
  // Without --key-file or DP420_KEY_FILE there is no way to give one.
  Result none = Cli({"snapshots", "--remote", "127.0.0.1:9", "--client", "db1"},
                    {{"DP420_KEY_FILE", ""}});
  DP420_EXPECT_EXIT(none, kExitUsage);
  EXPECT_NE(none.err.find("--key-file"), std::string::npos) << none.Describe();
  // --key-file takes a path: the digits of a key name no file.
  Result digits = Cli({"snapshots", "--remote", "127.0.0.1:9", "--client", "db1", "--key-file",
                       hex});
  DP420_EXPECT_EXIT(digits, kExitNotFound);
}

TEST(CliRemoteTest, BackupRestoreRoundTripOverTheNetwork) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo);
  // The key comes from the environment here, as a service unit would pass it.
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}, {"DP420_KEY_FILE", key}};
  std::vector<std::string> remote = {"--remote", server.address(), "--client", "db1"};
  std::string source = dir / "source.img";
  WritePatternFile(source, (3ull << 20) + 5000, 11, 5);

  Result backup = Cli(Join({"backup", "--volume", "vol1", "--json", source}, remote), env);
  if (backup.exit_code != kExitOk &&
      backup.err.find("not available in this build") != std::string::npos) {
    Result stopped = server.Stop();
    DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
    GTEST_SKIP() << "skipped: network backup not built yet";
  }
  DP420_ASSERT_EXIT(backup, kExitOk) << server.Log();
  Json b = ParseJson(backup);
  for (const auto& field : BackupJsonFields()) {
    EXPECT_TRUE(b.contains(field)) << field << " missing: " << b.dump();
  }
  for (const char* field : {"bytes_sent", "bytes_sent_zerocopy", "bytes_zerocopy_copied",
                            "bytes_resent", "reconnects"}) {
    EXPECT_TRUE(b.contains(field)) << field << " missing: " << b.dump();
  }
  EXPECT_EQ(b.at("volume_size").get<uint64_t>(), FileSize(source));
  EXPECT_GT(b.at("bytes_sent").get<uint64_t>(), 0u);
  EXPECT_LE(b.at("bytes_zerocopy_copied").get<uint64_t>(),
            b.at("bytes_sent_zerocopy").get<uint64_t>());
  EXPECT_EQ(b.at("reconnects").get<uint64_t>(), 0u);
  EXPECT_EQ(b.at("checksum_sha256"), VolumeChecksum(source, b.at("block_size").get<uint64_t>()));

  Result list = Cli(Join({"snapshots", "--volume", "vol1", "--json"}, remote), env);
  DP420_ASSERT_EXIT(list, kExitOk);
  Json snaps = ParseJson(list);
  ASSERT_EQ(snaps.size(), 1u) << snaps.dump();
  EXPECT_EQ(snaps[0].at("snapshot_id"), b.at("snapshot_id"));
  // How the source was read reaches the manifest the server wrote (this file is on
  // ext4: read live) and --json says whether it changed meanwhile.
  EXPECT_EQ(snaps[0]["node_topology"]["members"][0]["point_in_time"]["consistency"], "live")
      << snaps[0].dump();
  EXPECT_EQ(b["point_in_time"]["source_changed"], false) << b.dump();
  // What the agent learned after the read (here: the source did not change) reached
  // the manifest with COMMIT, not only the record it sent when it began.
  EXPECT_EQ(snaps[0]["node_topology"]["members"][0]["point_in_time"]["source_changed"], false)
      << snaps[0].dump();

  std::string target = dir / "restored.img";
  Result restore = Cli(Join({"restore", "--volume", "vol1", "--json", target}, remote), env);
  DP420_ASSERT_EXIT(restore, kExitOk) << server.Log();
  EXPECT_EQ(Sha256File(target), Sha256File(source)) << "restored bytes differ";

  Result verify = Cli(Join({"verify", "--read-data", "--json"}, remote), env);
  DP420_EXPECT_EXIT(verify, kExitOk) << server.Log();
  EXPECT_EQ(ParseJson(verify).at("ok"), true) << verify.Describe();
  // The repository on the server holds the snapshot, like a local backup's.
  EXPECT_EQ(SnapshotIds(repo), std::vector<std::string>{b.at("snapshot_id").get<std::string>()});
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// A source whose name is not UTF-8 (0xff 0xfe): the agent sends the escaped
// name (docs/FORMAT.md, `source.path`), the server accepts it, and the
// snapshot lists and restores like any other.
TEST(CliRemoteTest, SourceNameNotUtf8BacksUpOverTheNetwork) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  std::vector<std::string> remote = Remote(server, "db1", key);
  std::string source = dir / "vol-\xff\xfe.img";
  WritePatternFile(source, (2ull << 20) + 4321, 13, 4);

  Result backup = Cli(Join({"backup", "--volume", "v", "--json", source}, remote), env);
  DP420_ASSERT_EXIT(backup, kExitOk) << server.Log();
  Result list = Cli(Join({"snapshots", "--volume", "v", "--json"}, remote), env);
  DP420_ASSERT_EXIT(list, kExitOk) << server.Log();
  Json snaps = ParseJson(list);
  ASSERT_EQ(snaps.size(), 1u) << snaps.dump();
  EXPECT_EQ(snaps[0].at("source").at("path"), dir.path() + "/vol-\\xff\\xfe.img")
      << snaps.dump();

  std::string target = dir / "restored.img";
  Result restore = Cli(Join({"restore", "--volume", "v", "--json", target}, remote), env);
  DP420_ASSERT_EXIT(restore, kExitOk) << server.Log();
  EXPECT_EQ(Sha256File(target), Sha256File(source)) << "restored bytes differ";
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// The point in time ends before the commit over the network as locally: a post hook
// that fails fails the backup, and the server has committed nothing.
TEST(CliRemoteTest, FailingPostHookCommitsNothingOnTheServer) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  std::string source = dir / "v.img";
  WritePatternFile(source, 2 << 20, 17);
  std::string ran = dir / "post-ran";
  Result backup = Cli(Join({"backup", "--volume", "v", source, "--snapshot-source", "hook",
                            "--pre-hook", "true", "--post-hook",
                            "touch " + ShellQuote(ran) + "; exit 4"},
                           Remote(server, "db1", key)),
                      env);
  DP420_EXPECT_EXIT(backup, 1) << server.Log();
  EXPECT_TRUE(Mentions(backup, "exited with status 4")) << backup.Describe();
  EXPECT_TRUE(Exists(ran));
  EXPECT_EQ(SnapshotIds(repo), std::vector<std::string>{}) << server.Log();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// Restore over the network keeps the local target rules (RestoreTarget): a
// FIFO and a socket are refused and untouched, a symbolic link needs --force,
// a user's file named like the old partial file survives, and a restore
// killed mid-write leaves nothing behind.
TEST(CliRemoteTest, RestoreTargetRulesHoldOverTheNetwork) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  std::vector<std::string> remote = Remote(server, "db1", key);
  std::string source = dir / "vol.img";
  WritePatternFile(source, (4ull << 20) + 4321, 17, 3);
  DP420_ASSERT_EXIT(Cli(Join({"backup", "--volume", "v", source}, remote), env), kExitOk)
      << server.Log();
  std::string targets = dir / "targets";
  std::filesystem::create_directories(targets);
  auto restore = [&](const std::string& target, bool force, Env extra = {}) {
    std::vector<std::string> args = Join({"restore", "--volume", "v", target}, remote);
    if (force) args.push_back("--force");
    extra.insert(extra.end(), env.begin(), env.end());
    return Cli(args, extra);
  };

  std::string fifo = targets + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0640), 0);
  struct stat before {};
  ASSERT_EQ(lstat(fifo.c_str(), &before), 0);
  Result to_fifo = restore(fifo, true);
  DP420_EXPECT_EXIT(to_fifo, kExitUsage);
  EXPECT_NE(to_fifo.err.find("a FIFO"), std::string::npos) << to_fifo.Describe();
  struct stat after {};
  ASSERT_EQ(lstat(fifo.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_TRUE(S_ISFIFO(after.st_mode));

  std::string real = targets + "/real.img";
  WriteFile(real, "mine\n");
  std::string link = targets + "/link.img";
  std::filesystem::create_symlink(real, link);
  DP420_EXPECT_EXIT(restore(link, false), kExitRefused);
  EXPECT_EQ(ReadFile(real), "mine\n");
  EXPECT_TRUE(std::filesystem::is_symlink(link));

  std::string target = targets + "/r.img";
  WriteFile(target + ".dp420-partial", "mine too\n");
  Result killed = restore(target, false, {{"DP420_TEST_CRASH", "restore-writing"}});
  EXPECT_EQ(killed.term_signal, SIGKILL) << killed.Describe();
  EXPECT_FALSE(Exists(target));
  Result ok = restore(target, false);
  DP420_ASSERT_EXIT(ok, kExitOk) << server.Log();
  EXPECT_EQ(Sha256File(target), Sha256File(source));
  EXPECT_EQ(ReadFile(target + ".dp420-partial"), "mine too\n");
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(targets)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"fifo", "link.img", "r.img", "r.img.dp420-partial",
                                             "real.img"}));
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// A client over its quota: the backup fails with exit code 10 naming the
// quota, nothing is committed; `client-set` lifts the limit on the running
// server, and `snapshots` shows the volume as CLIENT/VOLUME, remotely and on
// the repository itself.
TEST(CliRemoteTest, QuotaExceededExits10AndClientSetLiftsIt) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  std::string clients = dir / "clients.json";
  Result set = Cli({"client-set", "--clients", clients, "--client", "db1", "--max-bytes", "1M"});
  DP420_ASSERT_EXIT(set, kExitOk);
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  std::vector<std::string> remote = Remote(server, "db1", key);
  std::string source = dir / "source.img";
  WritePatternFile(source, 4ull << 20, 17);

  Result over = Cli(Join({"backup", "--volume", "pg", source}, remote), env);
  DP420_EXPECT_EXIT(over, kExitNoSpace) << server.Log();
  EXPECT_NE(over.err.find("quota"), std::string::npos) << over.Describe();
  EXPECT_TRUE(SnapshotIds(repo).empty());

  Result lift = Cli({"client-set", "--clients", clients, "--client", "db1", "--max-bytes", "0"});
  DP420_ASSERT_EXIT(lift, kExitOk);
  Result backup = Cli(Join({"backup", "--volume", "pg", source}, remote), env);
  DP420_ASSERT_EXIT(backup, kExitOk) << server.Log();
  Result list = Cli(Join({"snapshots", "--volume", "pg"}, remote), env);
  DP420_ASSERT_EXIT(list, kExitOk);
  EXPECT_NE(list.out.find("db1/pg"), std::string::npos) << list.Describe();
  Result local = Cli({"snapshots", "--repo", repo, "--volume", "db1/pg"});
  DP420_ASSERT_EXIT(local, kExitOk);
  EXPECT_NE(local.out.find("db1/pg"), std::string::npos) << local.Describe();
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk) << server.Log();
}

// Forget and protect over the network: an append client's key can add
// snapshots, never remove or protect them (refused, nothing changed); an
// admin client forgets and protects any client's volume by CLIENT/VOLUME,
// the chain stays clean, the owner's next backup builds on its newest, and
// the server's log names what was forgotten.
TEST(CliRemoteTest, ForgetAndProtectNeedAnAdminClient) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string db1_key = AddClient(dir, "db1");
  std::string ops_key = AddClient(dir, "ops", "admin");
  Server server(dir, repo);
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  Env ops_env = {{"DP420_CACHE_DIR", dir / "ops-cache"}};
  auto db1 = Remote(server, "db1", db1_key);
  auto ops = Remote(server, "ops", ops_key);
  std::string source = dir / "source.img";
  WritePatternFile(source, 1 << 20, 21);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    OverwriteRange(source, uint64_t(i) * 65536, 4096, 200 + i);
    Result b = Cli(Join({"backup", "--volume", "pg", "--json", source}, db1), env);
    DP420_ASSERT_EXIT(b, kExitOk) << server.Log();
    ids.push_back(ParseJson(b).at("snapshot_id").get<std::string>());
  }
  auto listed = [&] {
    Result l = Cli(Join({"snapshots", "--volume", "pg", "--json"}, db1), env);
    std::vector<std::string> out;
    for (const auto& s : ParseJson(l)) out.push_back(s.at("snapshot_id").get<std::string>());
    return out;
  };

  Result refused = Cli(Join({"forget", "--volume", "pg", "--keep-last", "1"}, db1), env);
  DP420_EXPECT_EXIT(refused, kExitFailed);
  EXPECT_NE(refused.err.find("needs an admin client"), std::string::npos) << refused.Describe();
  Result refused_protect =
      Cli(Join({"protect", "--volume", "pg", "--snapshot", ids[1]}, db1), env);
  DP420_EXPECT_EXIT(refused_protect, kExitFailed);
  EXPECT_EQ(listed(), ids);
  for (const char* op : {"prune", "stats"}) {
    Result no = Cli(Join({op}, db1), env);
    DP420_EXPECT_EXIT(no, kExitFailed);
    EXPECT_NE(no.err.find("needs an admin client"), std::string::npos) << no.Describe();
  }

  Result protect = Cli(Join({"protect", "--volume", "db1/pg", "--snapshot", ids[1].substr(0, 6),
                             "--json"}, ops), ops_env);
  DP420_ASSERT_EXIT(protect, kExitOk) << server.Log();
  EXPECT_EQ(ParseJson(protect).at("snapshot_id"), ids[1]);
  Result forget = Cli(Join({"forget", "--volume", "db1/pg", "--keep-last", "1", "--json"}, ops),
                      ops_env);
  DP420_ASSERT_EXIT(forget, kExitOk) << server.Log();
  Json f = ParseJson(forget);
  EXPECT_EQ(f.at("forgotten"), 2) << f.dump();
  EXPECT_EQ(f.at("snapshots").at(0).at("volume"), "db1/pg") << f.dump();
  EXPECT_EQ(listed(), (std::vector<std::string>{ids[1], ids[3]}));
  Result prune = Cli(Join({"prune", "--json"}, ops), ops_env);
  DP420_ASSERT_EXIT(prune, kExitOk) << server.Log();
  Json p = ParseJson(prune);
  EXPECT_GT(p.at("packs_deleted").get<uint64_t>() + p.at("packs_rewritten").get<uint64_t>(), 0u)
      << p.dump();
  Result stats = Cli(Join({"stats", "--volume", "db1/pg", "--json"}, ops), ops_env);
  DP420_ASSERT_EXIT(stats, kExitOk) << server.Log();
  EXPECT_EQ(ParseJson(stats).at("snapshots").size(), 2u) << stats.out;
  Json st = ParseJson(stats);
  EXPECT_EQ(st.at("bytes_reclaimable").get<uint64_t>(),
            st.at("pack_bytes").get<uint64_t>() - st.at("bytes_referenced").get<uint64_t>())
      << stats.out;
  Result verify = Cli(Join({"verify", "--read-data"}, ops), ops_env);
  DP420_EXPECT_EXIT(verify, kExitOk) << server.Log();
  Result next = Cli(Join({"backup", "--volume", "pg", "--json", source}, db1), env);
  DP420_ASSERT_EXIT(next, kExitOk) << server.Log();
  EXPECT_EQ(ParseJson(next).at("parent"), ids[3]);
  std::string target = dir / "restored.img";
  DP420_EXPECT_EXIT(Cli(Join({"restore", "--volume", "pg", "--snapshot", ids[1], target}, db1), env),
                    kExitOk);
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk);
  EXPECT_NE(server.Log().find("forgot"), std::string::npos) << server.Log();
  EXPECT_NE(server.Log().find(ids[0]), std::string::npos) << server.Log();
}

// `serve --retention FILE`: the server applies the first matching rule of
// each volume at start and on its schedule, logs every snapshot it forgot,
// and leaves volumes no rule keeps short alone; a retention file another
// user could write, or one with a rule that would forget everything, stops
// serve from starting.
TEST(CliRemoteTest, ServeAppliesItsRetentionFileOnSchedule) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  std::string key = AddClient(dir, "db1");
  std::string policy = dir / "retention.json";
  auto write_policy = [&](const std::string& text, unsigned mode) {
    std::ofstream(policy, std::ios::trunc) << text;
    ASSERT_EQ(chmod(policy.c_str(), mode), 0);
  };
  const std::string good =
      R"({"format":"dp420-retention","format_version":1,"every_seconds":1,"rules":[)"
      R"({"client":"db1","volume":"pg","keep_last":2},{"client":"*","volume":"*","keep_last":-1}]})";
  for (auto [text, mode, why] :
       {std::tuple<std::string, unsigned, std::string>{good, 0666u, "writable by group or others"},
        {R"({"format":"dp420-retention","format_version":1,"rules":[{"client":"*","volume":"*"}]})",
         0600u, "rule 1: no keep rule"}}) {
    write_policy(text, mode);
    Result refused = Cli({"serve", "--repo", repo, "--listen", "127.0.0.1:0", "--clients",
                          dir / "clients.json", "--retention", policy});
    EXPECT_NE(refused.exit_code, kExitOk) << refused.Describe();
    EXPECT_NE(refused.err.find(why), std::string::npos) << refused.Describe();
  }
  write_policy(good, 0600);
  Server server(dir, repo, "", "--retention " + ShellQuote(policy));
  Env env = {{"DP420_CACHE_DIR", dir / "cache"}};
  auto db1 = Remote(server, "db1", key);
  std::string source = dir / "source.img";
  WritePatternFile(source, 1 << 20, 31);
  std::vector<std::string> ids;
  for (const char* volume : {"pg", "pg", "pg", "pg", "etc", "etc", "etc"}) {
    OverwriteRange(source, ids.size() * 65536, 4096, 300 + ids.size());
    Result b = Cli(Join({"backup", "--volume", volume, "--json", source}, db1), env);
    DP420_ASSERT_EXIT(b, kExitOk) << server.Log();
    ids.push_back(ParseJson(b).at("snapshot_id").get<std::string>());
  }
  auto count = [&](const char* volume) {
    Result l = Cli(Join({"snapshots", "--volume", volume, "--json"}, db1), env);
    return l.exit_code == kExitOk ? ParseJson(l).size() : size_t(0);
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (count("pg") != 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(count("pg"), 2u) << server.Log();
  EXPECT_EQ(count("etc"), 3u) << server.Log();
  DP420_EXPECT_EXIT(Cli(Join({"verify", "--read-data"}, db1), env), kExitOk);
  Result stopped = server.Stop();
  DP420_EXPECT_EXIT(stopped, kExitOk);
  std::string log = server.Log();
  for (int i : {0, 1}) {
    EXPECT_NE(log.find("retention_forgot client=db1 volume=db1/pg snapshot=" + ids[i]),
              std::string::npos) << log;
  }
  EXPECT_EQ(log.find(ids[2] + " sequence"), std::string::npos) << log;
}

}  // namespace
}  // namespace dp420::e2e
