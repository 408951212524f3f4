// Per-client volume namespaces of the repository server (docs/FORMAT.md,
// "Volumes of remote clients"). Client C's volume V is stored under the
// repository volume name
//
//   esc(C) "_." V        where esc doubles every '_' of C
//
// e.g. client "db1" volume "pg" -> "db1_.pg", client "a_b" volume "x" ->
// "a__b_.x". The mapping is reversible: the first '_' of the name that is
// not doubled must be followed by '.', and what follows is V. The result is
// a valid repository volume name (1-64 of [A-Za-z0-9._-]), so a client's
// volume names are limited to 64 - len(esc(C)) - 2 characters.
//
// Volumes written before namespacing ("legacy": a plain name whose manifests
// name their client in Manifest::client) stay usable by that client under
// their plain name, and by admins; they are never handed to another client.
//
// Thread safety: pure functions over a Repository (whose reads are safe).
#pragma once

#include <set>
#include <string>
#include <vector>

#include "engine/core/repo.h"
#include "io/status.h"

namespace dp420::net {

struct SessionInfo;

// esc(client) + "_." + volume; "" when the result would not be a valid
// repository volume name (too long or invalid parts).
std::string NamespacedVolume(const std::string& client, const std::string& volume);
// The inverse: true with *client and *volume when `repo_volume` has the form.
bool SplitNamespacedVolume(const std::string& repo_volume, std::string* client,
                           std::string* volume);
// A name a client may send: a volume name, or "CLIENT/VOLUME" (admins).
bool ValidRequestVolumeName(const std::string& name);

// A volume as a request names it, resolved for one client.
struct ResolvedVolume {
  std::string repo;    // the repository volume name
  std::string shown;   // the name the client gave
  std::string owner;   // the client owning it
  bool exists = false; // it has manifests (valid or damaged)
};

// Resolves `requested` for `who` (docs/PROTOCOL.md, "Authorization"):
//  - "C/V": admins only (another client gets the answer of a missing volume);
//  - the repository name of a namespaced volume: the client's own (admins:
//    anyone's), as manifests name it;
//  - V: the client's namespaced volume if it exists, else a legacy volume V
//    it owns (admins: any legacy volume V), else its new namespaced volume.
// An append client gets the same answer for a foreign volume as for a
// missing one. kPermission only for a namespaced volume holding another
// client's snapshots (written before namespacing) or only damaged ones.
// For a backup (`for_backup`), an admin's plain name resolves like an
// append client's: a backup never writes into another client's volume.
Result<ResolvedVolume> ResolveVolume(const Repository& repo, const SessionInfo& who,
                                     const std::string& requested, bool for_backup = false);

// The repository volumes `who` may see (admins: every one), each with the
// name it knows it by.
struct VisibleVolume {
  std::string repo;
  std::string shown;
};
Status VisibleVolumes(const Repository& repo, const SessionInfo& who,
                      std::vector<VisibleVolume>* out);

// The name an admin sees for a repository volume: "C/V" when namespaced,
// else the plain name.
std::string QualifiedName(const std::string& repo_volume);

// Whether a manifest of repository volume `stored`, sent by the server,
// answers `client`'s request for `requested`: the name itself (a legacy
// volume), the client's namespaced volume, or for "C/V" C's volume V.
bool AnswersRequest(const std::string& stored, const std::string& requested,
                    const std::string& client);

}  // namespace dp420::net
