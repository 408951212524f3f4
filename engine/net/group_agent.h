// `dp420 agent`: a long-running member of consistency groups on one node
// (engine/control/group.h, docs/PROTOCOL.md "Groups"). It connects to the
// repository server as its client, joins with its volumes (GROUP_JOIN), and
// answers the coordinator of every group backup that names one of them:
//
//   PREPARE  the volume's point in time begins (engine/control/pit.h: pre
//            hook, freeze) and holds, at most --max-freeze; QUIET
//   CUT      the point in time is taken (the copy, or the read under the
//            freeze) and the hold ends; CUT_DONE
//            then the volume is backed up over new connections, staged
//            under the group's epoch; DURABLE with its manifest's seal
//   ABORT    the hold ends, the transfer stops; nothing is published
//   COMMITTED this host's anchor of the volume moves to the new snapshot
//
// The newest epoch each volume has seen is kept in the state folder (one
// file per volume, durable before the agent acts on it), so an agent that
// restarts refuses (FENCED) a coordinator older than one it answered. A
// lost connection is made again with backoff; the group state lives on.
// SIGKILL of the agent while it holds: the freeze watchdog thaws at the
// deadline (pit.h), the post hook does not run.
//
// Thread safety: RunAgent blocks the calling thread.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "engine/control/pit.h"
#include "engine/net/client.h"

namespace dp420::net {

struct AgentVolume {
  std::string name;    // the volume, as this client names it
  std::string source;  // absolute: a file or block device
  control::PitOptions pit;
  uint32_t block_size = 0;
  unsigned threads = 0;
};

// "NAME=SOURCE[,KEY=VALUE]...": snapshot-source=auto|reflink|fsfreeze|hook|none,
// freeze-mount=DIR, max-freeze=MS, pre-hook=CMD, post-hook=CMD,
// hook-timeout=MS, block-size=BYTES, threads=N (a command holding a comma
// goes in a script). kInvalidArgument naming what is wrong, also for a volume
// that would hold nothing (no freeze-mount, no pre-hook): a member holds its
// source while the others do.
Result<AgentVolume> ParseAgentVolume(const std::string& spec);

struct AgentOptions {
  RemoteOptions remote;               // address, client, key file; control.cancel stops it
  std::vector<AgentVolume> volumes;   // 1..64, distinct names
  std::string state_dir;              // "": DefaultCacheDir()/agent-CLIENT
  std::string tool_version = "dp420"; // stamped into the member manifests
  // Called with "connected", "lost: WHY", and one line per group event
  // ("prepare GROUP EPOCH VOLUME", "committed ...", "aborted ...: WHY").
  std::function<void(const std::string&)> on_event;
};

// Runs until options.remote.control.cancel is set (OK then). Errors only for
// what retrying cannot mend: bad options, a key file that does not read, a
// state folder that cannot be written, a server that refuses the client.
Status RunAgent(const AgentOptions& options);

}  // namespace dp420::net
