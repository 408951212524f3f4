// The files a test server starts from: a clients file with a fresh server
// identity and the clients a test names, each client's key file pinned to
// that identity, and the ServerOptions of a server on 127.0.0.1 with short
// heartbeats. Every server fixture of tests/net sets up through these, so a
// change of the key, identity or clients-file API is made here once.
// (netns-only tests include net_test_util.h, which needs no engine headers.)
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "engine/net/auth.h"
#include "engine/net/server.h"
#include "io/status.h"

namespace dp420::testnet {

struct TestClient {
  std::string name;
  std::string role = "append";  // or "admin"
};

// The key file of `client` in `key_dir`.
inline std::string TestKeyFile(const std::string& key_dir, const std::string& client) {
  return key_dir + "/" + client + ".key";
}

// Saves a clients file at `clients_path` registering `clients` under a fresh
// server identity, and writes each one's key file (TestKeyFile, mode 0600).
// The registry as saved (the keys and identity in it), or what failed.
inline Result<net::ClientRegistry> WriteTestClients(const std::string& clients_path,
                                                    const std::string& key_dir,
                                                    const std::vector<TestClient>& clients) {
  net::ClientRegistry registry;
  DP420_RETURN_IF_ERROR(registry.EnsureIdentity());
  const std::string pin = registry.identity()->FingerprintHex();
  for (const TestClient& c : clients) {
    DP420_ASSIGN_OR_RETURN(net::ClientKey key, registry.Add(c.name, c.role));
    DP420_RETURN_IF_ERROR(
        net::WriteKeyFile(TestKeyFile(key_dir, c.name), key.key.data(), pin));
  }
  DP420_RETURN_IF_ERROR(registry.Save(clients_path));
  return registry;
}

// A server of `repo` for the clients of `clients_path` on 127.0.0.1 (a free
// port), with a heartbeat a second and a 2 s drain: tests wait for neither.
inline net::ServerOptions TestServerOptions(const std::string& repo,
                                            const std::string& clients_path) {
  using namespace std::chrono_literals;
  net::ServerOptions o;
  o.repo_path = repo;
  o.listen = "127.0.0.1:0";
  o.clients_file = clients_path;
  o.heartbeat_interval = 1000ms;
  o.drain_timeout = 2000ms;
  return o;
}

}  // namespace dp420::testnet
