// The server side of a network backup: receives the blocks and leaf-page
// verdicts an agent sends on its stripe connections, verifies every block
// (SHA-256 and keyed id recomputed), appends them to packs with io_uring
// from registered buffers, and commits the snapshot with the same order as
// a local backup (engine/core/snapshot.h). docs/PROTOCOL.md, "Backup".
//
// Thread safety: BackupRegistry is thread-safe; each handler runs on its
// connection's thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/net/conn.h"
#include "engine/net/server.h"

namespace dp420::net {

class BackupSession;

// Backups in progress on this server, by token, so that an agent that lost
// its connections can rejoin and resume; and what each client's backups
// hold (backup slots, stripe buffers, bytes not committed yet), against its
// limits (auth.h ClientLimits).
class BackupRegistry {
 public:
  ~BackupRegistry();
  void Add(const std::string& token, std::shared_ptr<BackupSession> session);
  std::shared_ptr<BackupSession> Find(const std::string& token);
  // The session backing up repository volume `volume`, if any.
  std::shared_ptr<BackupSession> FindVolume(const std::string& volume);
  // Ends a session; a non-OK `why` is reported to its agent first.
  void Remove(const std::string& token, const Status& why = Status::Ok());
  // Aborts every session (server stopping): their packs are rolled back.
  void AbortAll();
  // Aborts (reporting `why`) every session whose client `revoked` names;
  // returns how many.
  size_t AbortIf(const std::function<bool(const SessionInfo&)>& revoked, const Status& why);
  // Aborts every session awaiting its lost agent (server stopping: no agent
  // can come back, so a drain must not wait for them); returns how many.
  size_t AbortWaiting();

  // A backup slot for `client`, of at most `bound` at once: when they are
  // all taken, its oldest backup awaiting its agent is rolled back to make
  // room; kBusy when every one is running. Released by ReleaseSlot.
  Status TakeSlot(const std::string& client, uint64_t bound);
  void ReleaseSlot(const std::string& client);
  // Rolls back `client`'s oldest backups awaiting their agent until at most
  // `bound` wait.
  void TrimWaiting(const std::string& client, uint64_t bound);
  // Reserves receive buffers of `each` bytes for a stripe: `want` when they
  // fit in `bound` bytes for the client, else as many as fit, at least
  // `least`; 0 when not even those fit.
  unsigned ReserveBuffers(const std::string& client, uint64_t each, unsigned want,
                          unsigned least, uint64_t bound);
  void ReleaseBuffers(const std::string& client, uint64_t bytes);
  // Counts `bytes` against `client`'s quota: false (nothing counted) when
  // `committed` (its snapshots' bytes) plus every byte its backups received
  // but did not commit yet would exceed `bound`.
  bool Charge(const std::string& client, uint64_t bytes, uint64_t committed, uint64_t bound);
  void Uncharge(const std::string& client, uint64_t bytes);

 private:
  std::shared_ptr<BackupSession> OldestWaiting(const std::string& client);
  struct Usage {
    uint64_t slots = 0;
    uint64_t buffer_bytes = 0;
    uint64_t charged = 0;
  };
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<BackupSession>> sessions_;
  std::map<std::string, Usage> usage_;  // by client
};

// A control connection whose first request is BACKUP_BEGIN: runs the backup
// to its commit (or its failure) and returns when the connection closes.
Status HandleBackup(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& begin);
// A data connection whose first request is STRIPE_JOIN.
Status HandleStripe(ServerContext& ctx, Conn& conn, const SessionInfo& who, const Frame& join);

}  // namespace dp420::net
