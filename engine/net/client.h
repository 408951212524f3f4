// RemoteRepository: the agent's view of a repository served by `dp420 serve`
// (docs/PROTOCOL.md). It authenticates with the client's key, measures the
// clock offset against the server, and runs the same operations as a local
// Repository: list snapshots, verify, restore and backup.
//
// Thread safety: one thread per object (a backup starts its own threads).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/backup.h"
#include "engine/core/manifest.h"
#include "engine/core/restore.h"
#include "engine/core/verify.h"
#include "engine/net/conn.h"
#include "io/file.h"

namespace dp420::net {

struct RemoteOptions {
  std::string address;    // HOST:PORT, or several "A,B,..." (paths to one server, tried in turn)
  std::string client;     // client name registered on the server
  std::string key_file;   // the client's key (mode 0600)
  Millis connect_timeout{10000};
  Millis heartbeat_interval{5000};
  unsigned heartbeat_misses = 3;     // the peer is lost after this many silent intervals
  Millis retry_for{60000};           // reconnect attempts after a loss, at most this long
  Millis max_clock_skew{500};        // backup refuses to start beyond this offset
  std::string cache_dir;             // parent block-id cache; "" = DefaultCacheDir()
  JobControl control;                // progress and cancellation of the operations
  // The peer is declared lost after heartbeat_interval * heartbeat_misses of silence.
  Millis LossTimeout() const { return heartbeat_interval * heartbeat_misses; }
};

// "A,B,..." as its addresses (one for a plain "HOST:PORT").
std::vector<std::string> SplitAddresses(const std::string& addresses);

// $DP420_CACHE_DIR, else /var/cache/dp420 for root, else
// $XDG_CACHE_HOME/dp420, else $HOME/.cache/dp420.
std::string DefaultCacheDir();

class RemoteRepository {
 public:
  // Reads the key, connects, authenticates and measures the clock offset.
  static Result<std::unique_ptr<RemoteRepository>> Connect(const RemoteOptions& options);
  ~RemoteRepository();

  const RemoteOptions& options() const { return options_; }
  const ClockOffset& clock() const { return clock_; }
  // The server's repository id (hex), learned at connect.
  const std::string& repo_id() const { return repo_id_; }

  // Manifests of `volume` ("" = every volume this client may see), oldest first.
  // Manifests the server found damaged go to `damaged` when given, else the
  // first one fails the call (kCorruption), as Repository::ListManifests.
  Status ListManifests(const std::string& volume, std::vector<Manifest>* out,
                       std::vector<DamagedFile>* damaged = nullptr);
  // Verify runs on the server (on the client's volumes only); the report
  // comes back with its problems.
  Result<VerifyReport> Verify(const VerifyOptions& options);
  // Every block checked against its SHA-256 and the volume checksum before
  // the target is committed (RestoreTarget).
  Result<RestoreResult> Restore(const RestoreOptions& options);
  // engine/net/agent_backup.cc.
  Result<BackupResult> Backup(const BackupOptions& options);
  // An operation of the repository's life cycle run by the server (ADMIN:
  // "forget", "protect", "unprotect"; admins only) and its JSON report.
  Result<Json> Admin(const std::string& op, const Json& args, const JobControl& job);

  // A fresh authenticated connection (for stripes and reconnects).
  Result<std::unique_ptr<Conn>> OpenConnection() const;
  Conn& control() { return *control_; }
  // Replaces a lost control connection (with backoff, up to retry_for). After
  // a failed call (a lost server, an ERROR, a cancellation) the control
  // connection is dropped; the next call reconnects.
  Status ReconnectControl();

 private:
  friend class AgentAttempt;  // one remote backup try (agent_backup.cc)
  RemoteRepository() = default;
  // One try of Backup(); `session_lost` when the server forgot the backup.
  Result<BackupResult> BackupAttempt(const BackupOptions& options, bool* session_lost,
                                     uint64_t* bytes_sent, uint64_t* reconnects);
  // The control connection, reconnected when a previous call dropped it.
  Status EnsureControl();
  Result<io::File> OpenParentCache(const Manifest& parent, const std::string& cache_path,
                                   Millis timeout);
  // Verify's check of this host's anchors (VOLUME.seen, id_cache.h): a
  // volume whose newest snapshot on the server is older than what this host
  // committed there is a problem of the report.
  Status CheckAnchors(const VerifyOptions& options, VerifyReport* report);
  uint64_t NextRequestId() { return next_request_id_++; }
  RemoteOptions options_;
  uint64_t next_request_id_ = 1;
  uint8_t key_[kKeyBytes] = {};
  uint8_t server_id_[kFingerprintBytes] = {};  // the pinned server identity
  std::unique_ptr<Conn> control_;
  // The path (of options_.address) that connected last; a failed one gives
  // way to the next (OpenConnection may run on stripe threads).
  mutable std::atomic<size_t> path_{0};
  ClockOffset clock_;
  std::string repo_id_;
};

}  // namespace dp420::net
