// The target of a restore, and the rules that keep a restore from harming
// anything it was not meant to write (docs/ARCHITECTURE.md, "Restore target"):
//
//  - Only a regular file (missing, empty, or non-empty with `force`) or a
//    block device (with `force`) is written. A directory, character device,
//    FIFO, socket or other special file is refused (kInvalidArgument) and left
//    untouched: nothing opens, replaces or renames it.
//  - A symbolic link is never replaced and never written through silently:
//    without `force` it is refused (kExists); with `force` it is resolved
//    explicitly and the file or device it points to is the target, under the
//    same rules (the link itself stays as it was).
//  - A file is written where it has no name: an O_TMPFILE in the target's
//    directory, linked in as TARGET by Commit() only after every check. A
//    process killed before that leaves nothing behind. Replacing an existing
//    file, and file systems without O_TMPFILE, need a name for a moment:
//    TARGET.dp420-partial.<16 hex digits>, created with O_EXCL, marked with
//    the extended attribute user.dp420.partial (holding that name) and
//    flock()ed while in use. Restore only ever deletes a partial file it
//    created in this run, or a stale one it can prove was a dp420 restore's:
//    that name pattern, the marker naming it, a regular file of this user
//    with one link, and no restore holding its lock.
//
// Thread safety: the descriptors and ZeroRange() may be used from several
// threads at once; Open(), Commit() and the destructor run alone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "io/file.h"
#include "io/status.h"

namespace dp420 {

// What a named partial file's name holds after TARGET's own name.
inline constexpr char kPartialInfix[] = ".dp420-partial.";
// The extended attribute that marks a named partial file as dp420's own.
inline constexpr char kPartialXattr[] = "user.dp420.partial";

class RestoreTarget {
 public:
  // Checks and opens `path` (absolute) for a volume of `volume_size` bytes.
  // Errors name `path` and what it is: kInvalidArgument for a kind of file
  // that is never a target, a dangling symbolic link, or a block device
  // smaller than the volume; kExists for a non-empty file, a block device or
  // a symbolic link without `force`; the system's error otherwise. Removes
  // stale partial files of earlier restores of the same file (see above).
  static Result<std::unique_ptr<RestoreTarget>> Open(const std::string& path,
                                                     uint64_t volume_size, bool force);
  ~RestoreTarget();  // not committed: nothing named TARGET appears or changes
  RestoreTarget(const RestoreTarget&) = delete;
  RestoreTarget& operator=(const RestoreTarget&) = delete;

  const std::string& path() const { return path_; }  // TARGET, as given
  // The file or device written: `path`, or what its symbolic link points to.
  const std::string& resolved_path() const { return resolved_; }
  bool block_device() const { return block_device_; }
  // Whether the file being written has no name until Commit() (O_TMPFILE).
  bool unnamed() const { return unnamed_; }
  int direct_fd() const { return direct_.fd(); }  // O_DIRECT when possible (else buffered)
  int buffered_fd() const { return buffered_.fd(); }
  // Offset/length alignment direct_fd needs (1 when not direct). Memory
  // handed to direct_fd must be aligned too (page-aligned buffers are).
  uint32_t align() const { return align_; }
  // Makes [offset, offset+len) read as zeros (nothing for a fresh sparse file:
  // it is a hole already). On a block device: FALLOC_FL_ZERO_RANGE, or zeros
  // written when the device refuses it.
  Status ZeroRange(uint64_t offset, uint64_t len);
  // fdatasync; for a file, checks that it holds exactly volume_size bytes and
  // that TARGET is still what Open() found (missing, or the same file), then
  // gives it TARGET's name (linkat, or rename of the partial file) and fsyncs
  // the directory. On failure TARGET is left as it was.
  Status Commit();

 private:
  RestoreTarget() = default;
  Status Classify(bool force, struct stat* st, bool* exists);
  Status OpenBlockDevice(const struct stat& st);
  Status OpenFile(const struct stat* existing);
  Status CreatePartial(int* fd);
  Status LinkPartial();
  Status CheckTargetUnchanged() const;
  void RemoveStalePartials() const;
  void RemoveIfStale(const std::string& name) const;
  std::string Shown() const;

  std::string path_;
  std::string resolved_;
  uint64_t volume_size_ = 0;
  bool block_device_ = false;
  io::File direct_;
  io::File buffered_;
  uint32_t align_ = 1;
  // File targets only:
  int dir_fd_ = -1;           // the directory the file is written in
  std::string name_;          // TARGET's (resolved) name in it
  bool unnamed_ = false;      // O_TMPFILE: no name until Commit()
  std::string partial_name_;  // a named partial file this run created, until renamed
  bool existed_ = false;      // TARGET existed at Open(): with this device and inode
  dev_t existing_dev_ = 0;
  ino_t existing_ino_ = 0;
};

}  // namespace dp420
