// Status and Result<T>: the error currency of dp420's C++ layers (io/, engine/).
//
// A Status is either OK or a code plus a human-readable message that names
// what was wrong (a path, an offset, an object). No exception crosses a library
// boundary; functions that can fail return Status or Result<T>.
//
// Thread safety: values; safe to copy and move between threads.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace dp420 {

enum class Code : int {
  kOk = 0,
  kInvalidArgument = 1,  // bad input from the caller or user
  kNotFound = 2,         // a path, volume or snapshot that does not exist
  kIOError = 3,          // the operating system refused a read or write
  kCorruption = 4,       // stored data fails its checksum or structure checks
  kNoSpace = 5,          // ENOSPC / EDQUOT
  kVersion = 6,          // a format version newer than this build understands
  kExists = 7,           // refusing to overwrite something
  kBusy = 8,             // a lock is held by another process
  kNoMemory = 9,         // ENOMEM, including RLIMIT_MEMLOCK for registered buffers
  kPermission = 10,      // EACCES / EPERM
  kCanceled = 11,        // the caller asked to stop
  kInternal = 12,        // a bug: an invariant did not hold
  kNetwork = 13,         // a peer unreachable, lost, or speaking the protocol wrong
  kClockSkew = 14,       // this clock and the server's differ beyond the allowed skew
  kBadKey = 15,          // a passphrase or key file that opens none of the repository's key slots
};
// The highest code: a code read from outside (a peer's ERROR frame, a report) is
// one from kInvalidArgument to this.
inline constexpr Code kLastCode = Code::kBadKey;

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Make(Code code, std::string msg) { return Status(code, std::move(msg)); }
  static Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status NoSpace(std::string m) { return Status(Code::kNoSpace, std::move(m)); }
  static Status Version(std::string m) { return Status(Code::kVersion, std::move(m)); }
  static Status Exists(std::string m) { return Status(Code::kExists, std::move(m)); }
  static Status Busy(std::string m) { return Status(Code::kBusy, std::move(m)); }
  static Status NoMemory(std::string m) { return Status(Code::kNoMemory, std::move(m)); }
  static Status Canceled(std::string m) { return Status(Code::kCanceled, std::move(m)); }
  static Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }
  static Status Network(std::string m) { return Status(Code::kNetwork, std::move(m)); }
  static Status ClockSkew(std::string m) { return Status(Code::kClockSkew, std::move(m)); }
  static Status BadKey(std::string m) { return Status(Code::kBadKey, std::move(m)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;  // "IO error: <message>" or "OK"

  // Returns a copy whose message is "<context>: <message>".
  Status Prefix(const std::string& context) const;

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

// Maps an errno value to a Status: ENOSPC/EDQUOT -> kNoSpace, ENOENT -> kNotFound,
// EACCES/EPERM/EROFS -> kPermission, ENOMEM -> kNoMemory, EEXIST -> kExists, others kIOError.
// The message is "<context>: <strerror(err)>".
Status PosixError(const std::string& context, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}                    // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}             // NOLINT: must not be OK
  bool ok() const { return v_.index() == 0; }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<1>(v_);
  }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace dp420

// Propagates a non-OK Status from an expression.
#define DP420_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::dp420::Status dp420_status_ = (expr);    \
    if (!dp420_status_.ok()) return dp420_status_; \
  } while (0)

#define DP420_CONCAT_INNER(a, b) a##b
#define DP420_CONCAT(a, b) DP420_CONCAT_INNER(a, b)
// Declares `lhs` from a Result<T> expression or returns its Status.
// NOLINTBEGIN(bugprone-macro-parentheses): `lhs` is a declaration ("Manifest m").
#define DP420_ASSIGN_OR_RETURN(lhs, expr)                         \
  auto DP420_CONCAT(dp420_result_, __LINE__) = (expr);            \
  if (!DP420_CONCAT(dp420_result_, __LINE__).ok())                \
    return DP420_CONCAT(dp420_result_, __LINE__).status();        \
  lhs = std::move(DP420_CONCAT(dp420_result_, __LINE__)).value()
// NOLINTEND(bugprone-macro-parentheses)
