// Consistency groups on the repository server (docs/PROTOCOL.md "Groups"):
// the coordinators (engine/control/group.h) of `dp420 group-backup`, the
// member channels of `dp420 agent`s, and the repository's side of the
// protocol (engine/core/group_repo.h): epochs, the member snapshots staged
// under them, and the commit that publishes a whole group.
//
//   GROUP_JOIN   an agent's control connection becomes the channel of its
//                members "CLIENT:VOLUME" (its own client's volumes only);
//                GROUP_MSG frames then go both ways on it.
//   GROUP_BACKUP an admin asks for one group backup: a coordinator runs it
//                on the admin's session (kept alive), and DONE reports it.
//   BACKUP_BEGIN with a group and epoch (store.cc): a member's data, staged
//                under the epoch; its session (builder and volume lock) is
//                held here until the group's outcome.
//
// Thread safety: every method may be called from any session thread; one
// mutex guards the coordinators, channels and staged members, and the state
// machines run under it.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "engine/control/group.h"
#include "engine/core/group_repo.h"
#include "engine/net/request.h"
#include "engine/net/server.h"

namespace dp420::net {

// A member snapshot staged on this server, held until its group's outcome.
struct StagedMember {
  // After the group manifest is durable: the member's snapshot published.
  std::function<Status()> publish;
  // Its backup session (builder and volume lock). Dropped without a publish,
  // what it staged is rolled back.
  std::shared_ptr<void> hold;
};

// The group timeouts a GROUP_BACKUP may set, in ms (0: the default).
struct GroupBackupRequest {
  std::string group;
  std::vector<std::string> members;  // "CLIENT:VOLUME", sorted, unique
  control::GroupTimeouts timeouts;
};
// GROUP_BACKUP's JSON: {"group", "members": [...], "prepare_ms", "cut_ms",
// "heartbeat_ms", "max_skew_ms"}; kInvalidArgument naming what is wrong.
Result<GroupBackupRequest> ParseGroupBackupRequest(const Json& args);

class EndedEpochBudget;  // group_serve.cc

class GroupService {
 public:
  GroupService(const Repository& repo, Logger& log, std::string tool_version);
  ~GroupService();
  GroupService(const GroupService&) = delete;
  GroupService& operator=(const GroupService&) = delete;

  // GROUP_JOIN: serves `rq`'s connection as the channel of its members until
  // it closes or goes silent (the loss timeout).
  Status ServeMembers(Request& rq);
  // GROUP_BACKUP (admins only): one group backup to its end; DONE with the
  // summary (also when it aborted: "outcome" says).
  Status RunGroupBackup(Request& rq, const Json& args);

  // store.cc: whether a member backup may stage under (group, epoch): a
  // coordinator of this server runs that epoch, and `member` is one of it.
  Status CheckStaging(const std::string& group, uint64_t epoch, const std::string& member);
  // Holds a staged member until the outcome. When the epoch ended meanwhile
  // (aborted), the member is dropped at once.
  void AddStaged(const std::string& group, uint64_t epoch, const std::string& member,
                 StagedMember staged);
  // Server stop: every coordinator aborts.
  void StopAll();

 private:
  class Store;
  class Transport;
  struct Outbox;
  struct Channel {
    std::shared_ptr<Outbox> out;  // drained by the channel's session thread
  };
  using Key = std::tuple<std::string, uint64_t, std::string>;  // group, epoch, member
  Result<std::set<std::string>> JoinMembers(Request& rq);
  Status OnChannelFrame(Request& rq, const std::set<std::string>& mine,
                        EndedEpochBudget& budget);
  Status CheckMembers(const GroupBackupRequest& req) const;
  nlohmann::ordered_json Summary(const control::GroupCoordinator& c) const;
  Result<nlohmann::ordered_json> RunCoordinator(Request& rq, const GroupBackupRequest& req,
                                                const std::atomic<bool>& cancel);

  const Repository& repo_;
  Logger& log_;
  std::string tool_version_;
  std::mutex mu_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Transport> transport_;
  control::GroupRouter router_;
  std::map<std::string, control::GroupCoordinator*> running_;  // by group: one at a time
  std::map<std::string, Channel> channels_;                     // by member
  std::map<Key, StagedMember> staged_;
  std::map<std::pair<std::string, uint64_t>, GroupManifest> committed_;  // until reported
  bool stopping_ = false;
};

// The repository volume of member "CLIENT:VOLUME" (engine/net/volumes.h), as
// a backup by CLIENT of VOLUME resolves it; "" when the name is not one.
std::string MemberVolume(const Repository& repo, const std::string& member);

}  // namespace dp420::net
