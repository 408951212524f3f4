#include "io/status.h"

#include <cerrno>
#include <cstring>

namespace dp420 {

namespace {
const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kIOError: return "I/O error";
    case Code::kCorruption: return "corruption";
    case Code::kNoSpace: return "no space left";
    case Code::kVersion: return "unsupported version";
    case Code::kExists: return "already exists";
    case Code::kBusy: return "busy";
    case Code::kNoMemory: return "out of memory";
    case Code::kPermission: return "permission denied";
    case Code::kCanceled: return "canceled";
    case Code::kInternal: return "internal error";
    case Code::kNetwork: return "network error";
    case Code::kClockSkew: return "clock skew";
    case Code::kBadKey: return "wrong key";
  }
  return "error";
}
}  // namespace

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::Prefix(const std::string& context) const {
  if (ok()) return *this;
  return Status(code_, context + ": " + message_);
}

Status PosixError(const std::string& context, int err) {
  std::string msg = context + ": " + std::strerror(err);
  switch (err) {
    case ENOSPC:
    case EDQUOT: return Status::NoSpace(std::move(msg));
    case ENOENT: return Status::NotFound(std::move(msg));
    case EACCES:
    case EPERM:
    case EROFS: return Status::Make(Code::kPermission, std::move(msg));
    case ENOMEM: return Status::NoMemory(std::move(msg));
    case EEXIST: return Status::Exists(std::move(msg));
    case EWOULDBLOCK: return Status::Busy(std::move(msg));
    default: return Status::IOError(std::move(msg));
  }
}

}  // namespace dp420
