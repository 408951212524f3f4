// The repository server (`dp420 serve`): accepts agents on TCP and runs
// every connection's handshake (conn.h ServerHandshakeSteps) on one event
// loop (epoll) with a few KiB per connection, within the limits below; only
// an authenticated connection gets a session thread, which serves list,
// verify, restore and backup requests of many agents at once.
// Each client has its own namespace of volume names (volumes.h); an
// "admin" client sees every volume. Removing a client, or changing its key
// or role, ends its live sessions within a second (revocation).
//
// Stop: setting *stop (SIGTERM in the CLI) stops accepting, lets running
// sessions finish their current request up to `drain_timeout`, then closes
// the rest; backups that did not commit are rolled back (repo.h journal).
//
// Thread safety: RunServer blocks the calling thread; Logger is thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/repo.h"
#include "engine/net/auth.h"
#include "engine/net/conn.h"

namespace dp420::net {

// One log line per event, on stderr: "TIME LEVEL event key=value ..." or, with
// json, one JSON object per line {"time":…,"level":…,"event":…, fields…}.
class Logger {
 public:
  explicit Logger(bool json) : json_(json) {}
  void Log(const char* level, const char* event, const nlohmann::ordered_json& fields);
  void Info(const char* event, const nlohmann::ordered_json& fields) { Log("info", event, fields); }
  void Warn(const char* event, const nlohmann::ordered_json& fields) { Log("warn", event, fields); }

 private:
  bool json_;
  std::mutex mu_;
};

// The server-wide defaults of the per-client limits: 256 volumes, no byte
// quota, 8 backups at once of which 2 may await their agent's resume,
// 512 MiB of stripe receive buffers, and 128 authenticated connections (an
// eighth of max_sessions, so that no client takes every session; a backup
// at the most stripes takes 65).
inline ClientLimits DefaultClientLimits() {
  ClientLimits l;
  l.max_volumes = 256;
  l.max_bytes = 0;
  l.max_backups = 8;
  l.max_waiting = 2;
  l.max_stripe_memory = uint64_t{512} << 20;
  l.max_sessions = 128;
  return l;
}

struct ServerOptions {
  std::string repo_path;
  std::string listen = "127.0.0.1:4420";  // HOST:PORT; port 0 picks a free port
  std::string clients_file;               // absolute (auth.h ClientRegistry)
  // Retention policies the server applies on a schedule (retention_schedule.h);
  // "" = none.
  std::string retention_file;
  // Stamped into the group manifests this server commits ("dp420 X.Y.Z").
  std::string tool_version = "dp420";
  bool json_log = false;
  Millis heartbeat_interval{5000};
  unsigned heartbeat_misses = 3;          // an agent is lost after this many silent intervals
  Millis resume_grace{120000};            // a lost backup waits this long for its agent
  Millis drain_timeout{30000};
  // Before authentication (docs/PROTOCOL.md "Limits before authentication").
  // A new connection over a limit closes the oldest unauthenticated one
  // (of its source address first), so a flood of idle sockets cannot keep
  // an agent out; an unauthenticated connection ends at its deadline.
  size_t max_pending = 256;             // unauthenticated connections at once
  // Of them from one IP address: an agent opens up to 64 stripes at once.
  size_t max_pending_per_source = 64;
  Millis handshake_timeout{5000};       // from accept to AUTH_OK
  // Authenticated sessions (a thread each); the next one gets ERROR kBusy.
  size_t max_sessions = 1024;
  // Limits of a client whose entry in the clients file does not set them
  // (docs/FORMAT.md): 0 means no limit.
  ClientLimits client_defaults = DefaultClientLimits();
  const std::atomic<bool>* stop = nullptr;
  // Called once listening, with the bound port (tests use port 0).
  std::function<void(uint16_t port)> on_listening;
  // Test seam, called on session threads at named points: "list", "verify",
  // "restore", "backup", "stripe" as such a request starts, "commit" before a
  // backup commits. Tests throw from it to show that an exception ends only
  // its own session.
  std::function<void(const char* point)> on_session_point;
  Millis LossTimeout() const { return heartbeat_interval * heartbeat_misses; }
};

// Who is on the other end of an authenticated connection.
struct SessionInfo {
  std::string client;
  std::string role;     // "append" or "admin"
  std::string peer;     // "ADDR:PORT"
  uint64_t session_id = 0;
  std::string key_digest;  // SHA-256 of its key: a changed key revokes the session
};

class BackupRegistry;  // engine/net/store.h
class GroupService;    // engine/net/group_serve.h

// What request handlers share.
struct ServerContext {
  const Repository& repo;
  const ServerOptions& options;
  Logger& log;
  BackupRegistry& backups;
  const std::atomic<bool>& stopping;
  // The clients file as of now (reloaded when it changed): limits, and the
  // authorization check repeated before a commit.
  std::function<std::shared_ptr<const ClientRegistry>()> clients;
  // Consistency groups: coordinators, member channels, staged members.
  GroupService* groups = nullptr;
};

// Runs `body` and returns what it returns; an exception becomes kInternal
// naming `what` (and sets *threw). Every thread of a session runs its work
// through this: an exception must end that session, never the whole server
// (an exception leaving a thread calls std::terminate).
template <typename F>
auto RunGuarded(const std::string& what, F&& body, bool* threw = nullptr) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    if (threw != nullptr) *threw = true;
    return Status::Internal(what + ": unexpected exception: " + e.what());
  } catch (...) {
    if (threw != nullptr) *threw = true;
    return Status::Internal(what + ": unexpected exception");
  }
}

// Whether `who` still holds the key and role it authenticated with (the
// clients file may have changed since): false once it was removed, or its
// key or role changed. Sessions of such a client are ended (revocation).
bool StillAuthorized(const ClientRegistry& clients, const SessionInfo& who);

Status RunServer(const ServerOptions& options);

}  // namespace dp420::net
