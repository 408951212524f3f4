// ADMIN requests of `dp420 serve`: the repository's life cycle (forget,
// protect, unprotect, prune, stats) run on the server for an admin client. An append
// client is refused: a stolen backup key can add snapshots, never remove
// them (docs/SECURITY.md).
//
// Thread safety: runs on the session thread of its request.
#pragma once

#include "engine/net/request.h"

namespace dp420::net {

// Answers one ADMIN request (DONE with the operation's JSON report).
Status HandleAdmin(Request& rq);

}  // namespace dp420::net
