// What the C API's source files share: the handles' definitions and the
// helpers that turn engine results into the API's codes and messages.
//
// Thread safety: as dp420.h says of the handles.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <string>

#include "dp420/dp420.h"
#include "engine/core/job.h"
#include "engine/core/keystore.h"
#include "engine/core/repo.h"
#include "engine/net/client.h"
#include "io/status.h"

struct dp420_ctx {
  std::string errmsg;
  dp420_progress_fn progress = nullptr;
  void* progress_user = nullptr;
  std::atomic<bool> cancel{false};
  // The cancel flag of the remote repository the running operation uses (its
  // RemoteOptions.control points there), or null. dp420_cancel sets both.
  std::atomic<std::atomic<bool>*> linked_cancel{nullptr};
  // What opens an encrypted repository (dp420_ctx_set_passphrase_file, ...).
  dp420::KeySource key_source;
  // dp420_backup_result_t.compression_measured of the last backup.
  std::string compression_measured;
  // dp420_backup_result_t.warning of the last backup.
  std::string backup_warning;
};

// Exactly one of `repo` (local) and `remote` is set.
struct dp420_repo {
  std::unique_ptr<dp420::Repository> repo;
  std::unique_ptr<dp420::net::RemoteRepository> remote;
  // A remote handle outlives the context it was connected with, so its
  // RemoteOptions.control points here, and each operation links its context.
  std::atomic<bool> cancel{false};
  dp420_ctx* active = nullptr;  // the context of the running operation
};

namespace dp420capi {

// Records `s` as the context's message; returns the negated DP420_E* code.
int Fail(dp420_ctx_t* ctx, const dp420::Status& s);
int Ok(dp420_ctx_t* ctx);
// The job control of an operation on `ctx`: its cancel flag and progress.
dp420::JobControl Control(dp420_ctx_t* ctx);
// The options of dp420_remote_opts_t, checked, the key file read and checked
// (never kept); control left for the caller.
dp420::Result<dp420::net::RemoteOptions> ReadRemoteOpts(const dp420_remote_opts_t& opts);
// Copies `src` into the fixed-size field `dst` of `cap` bytes, NUL-terminated.
void CopyId(char* dst, size_t cap, const std::string& src);
bool Missing(const char* s);
// A remote client's volume named "CLIENT/VOLUME" in a local repository is
// the repository volume engine/net/volumes.h maps it to.
std::string LocalVolumeName(const std::string& volume);
// A malloc'ed copy of `text` for the caller to dp420_free; null when out of memory.
char* CopyOut(const std::string& text);

// For the running operation on a remote handle: routes the handle's progress
// callback and cancel flag to `ctx`; undone when it goes out of scope.
class RemoteLink {
 public:
  RemoteLink(dp420_ctx_t* ctx, dp420_repo_t* repo) : ctx_(ctx) {
    if (!repo || !repo->remote) return;
    repo_ = repo;
    repo_->cancel.store(false);
    repo_->active = ctx;
    ctx_->linked_cancel.store(&repo_->cancel);
  }
  ~RemoteLink() {
    if (!repo_) return;
    ctx_->linked_cancel.store(nullptr);
    repo_->active = nullptr;
  }
  RemoteLink(const RemoteLink&) = delete;
  RemoteLink& operator=(const RemoteLink&) = delete;

 private:
  dp420_ctx_t* ctx_;
  dp420_repo_t* repo_ = nullptr;
};

// Runs `fn` and turns anything it throws into DP420_EINTERNAL / ENOMEM.
template <typename Fn>
inline int Guard(dp420_ctx_t* ctx, Fn&& fn) {
  if (!ctx) return -DP420_EINVAL;
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Fail(ctx, dp420::Status::NoMemory("out of memory"));
  } catch (const std::exception& e) {
    return Fail(ctx, dp420::Status::Internal(e.what()));
  } catch (...) {
    return Fail(ctx, dp420::Status::Internal("unknown exception"));
  }
}

}  // namespace dp420capi
