#include "engine/net/store.h"

namespace dp420::net {

BackupRegistry::~BackupRegistry() = default;
void BackupRegistry::Add(const std::string&, std::shared_ptr<BackupSession>) {}
std::shared_ptr<BackupSession> BackupRegistry::Find(const std::string&) { return nullptr; }
void BackupRegistry::Remove(const std::string&) {}
void BackupRegistry::AbortAll() {}

Status HandleBackup(ServerContext&, Conn&, const SessionInfo&, const Frame&) {
  return Status::Internal("network backup is not available in this build");
}
Status HandleStripe(ServerContext&, Conn&, const SessionInfo&, const Frame&) {
  return Status::Internal("network backup is not available in this build");
}

}  // namespace dp420::net
