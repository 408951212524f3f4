// Node topology recorded in every manifest: which node and device a snapshot
// was taken from, and (for consistency groups, later) every member.
//
// Thread safety: pure function of the machine's state.
#pragma once

#include <string>

#include "engine/core/manifest.h"

namespace dp420::control {

// {"node_id": /etc/machine-id, "host": hostname, "device": source,
//  "members": [{"node_id", "host", "volume", "device"}]}, every string
// escaped into UTF-8 with EscapeBytes (engine/core/text.h).
Json LocalTopology(const std::string& volume, const std::string& source_path);

// Records how this node's volume was read (engine/control/pit.h) in its
// member entry of `topology` (made by LocalTopology).
void SetPointInTime(Json* topology, const Json& record);

// Makes `path` absolute against the working directory and removes "." and
// ".." components and duplicate slashes (without resolving symlinks).
std::string AbsolutePath(const std::string& path);

}  // namespace dp420::control
