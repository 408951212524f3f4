#include "engine/net/client.h"

namespace dp420::net {

Result<BackupResult> RemoteRepository::Backup(const BackupOptions&) {
  return Status::Internal("network backup is not available in this build");
}

}  // namespace dp420::net
