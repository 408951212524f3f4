// Upgrade: brings a format-1 repository (manifests and config sealed with a
// bare SHA-256) to the current format (seals keyed with the repository key,
// a head per volume; docs/FORMAT.md).
//
// Every manifest is checked under its old seal and its chain link before it
// is re-sealed; a fork or a broken link stops the upgrade before the config
// changes. The config is rewritten last, so an interrupted upgrade is simply
// run again. A repository this machine has already seen at the current
// format (it holds anchors for it, history.h) is refused: a config put back
// to format 1 is a downgrade, not something to upgrade.
//
// Thread safety: takes every volume's lock; run it alone.
#pragma once

#include <cstdint>
#include <string>

#include "io/status.h"

namespace dp420 {

struct UpgradeReport {
  uint32_t from_version = 0;
  uint32_t to_version = 0;
  uint64_t volumes = 0;
  uint64_t manifests_resealed = 0;
};

Result<UpgradeReport> UpgradeRepository(const std::string& path);

}  // namespace dp420
