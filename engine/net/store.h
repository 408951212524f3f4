// The server side of a network backup: receives the blocks and leaf-page
// verdicts an agent sends on its stripe connections, verifies every block
// (SHA-256 and keyed id recomputed), appends them to packs with io_uring
// from registered buffers, and commits the snapshot with the same order as
// a local backup (engine/core/snapshot.h). docs/PROTOCOL.md, "Backup".
//
// Thread safety: BackupRegistry is thread-safe; each handler runs on its
// connection's thread.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/net/conn.h"
#include "engine/net/server.h"

namespace dp420::net {

class BackupSession;

// Backups in progress on this server, by token, so that an agent that lost
// its connections can rejoin and resume.
class BackupRegistry {
 public:
  ~BackupRegistry();
  void Add(const std::string& token, std::shared_ptr<BackupSession> session);
  std::shared_ptr<BackupSession> Find(const std::string& token);
  // The session backing up `volume`, if any.
  std::shared_ptr<BackupSession> FindVolume(const std::string& volume);
  // Ends a session; a non-OK `why` is reported to its agent first.
  void Remove(const std::string& token, const Status& why = Status::Ok());
  // Aborts every session (server stopping): their packs are rolled back.
  void AbortAll();

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<BackupSession>> sessions_;
};

// A control connection whose first request is BACKUP_BEGIN: runs the backup
// to its commit (or its failure) and returns when the connection closes.
Status HandleBackup(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& begin);
// A data connection whose first request is STRIPE_JOIN.
Status HandleStripe(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& join);

}  // namespace dp420::net
