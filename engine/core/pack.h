// Packs: append-only files of 4 KiB-aligned records (blocks and table pages)
// with a trailer index. See format.h for the layout and docs/FORMAT.md.
//
// PackWriter creates a pack under a fresh random id (O_EXCL, so concurrent
// writers never collide), hands out record offsets, and on Finish() writes
// the trailer index and footer and makes the file durable. Record bytes are
// written either through WriteRecord() (synchronous) or by the caller through
// its own io_uring against fd() at the offset Reserve() returned.
//
// PackReader opens a closed pack, checks its header and footer, and reads
// records, checking each against its SHA-256.
//
// Thread safety: one thread per writer/reader object.
#pragma once

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/format.h"
#include "io/file.h"
#include "io/status.h"

namespace dp420 {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
// A zeroed buffer aligned to kRecordAlign (what O_DIRECT transfers need);
// nullptr when memory runs out.
using AlignedBuf = std::unique_ptr<uint8_t, FreeDeleter>;
AlignedBuf AllocAligned(size_t bytes);

class PackWriter {
 public:
  // Called with the new pack id before the file is created (journaling).
  using OnCreate = std::function<Status(uint32_t pack_id)>;

  // Creates packs_dir/XXXXXXXX.pack with its header. `direct`: try O_DIRECT.
  // `version`: kPackVersionRaw (a format-2 repository) or kPackVersionEncoded.
  static Result<PackWriter> Create(const std::string& packs_dir, const uint8_t repo_id[16],
                                   bool direct, const OnCreate& on_create,
                                   uint32_t version = kPackFormatVersion);

  uint32_t pack_id() const { return pack_id_; }
  int fd() const { return file_.fd(); }
  bool direct() const { return file_.direct(); }
  const std::string& path() const { return file_.path(); }
  uint64_t size_bytes() const { return next_offset_; }
  // The file's size once Finish() succeeded (header, records, trailer).
  uint64_t final_size() const { return final_size_; }
  bool Full(uint64_t more_bytes) const { return next_offset_ + more_bytes > kPackMaxBytes; }

  // Allocates room for a record of `stored_len` bytes; fills ref->pack_id,
  // offset_4k and stored_len and records it in the trailer index. In a pack of
  // version 2 the trailer's digest is the XXH3-128 of `stored` (the bytes that
  // will be written there) when given, else ref->sha256 as the caller set it
  // (a record copied with its trailer entry); in a pack of version 1 it is
  // ref->sha256 (the raw SHA-256).
  void Reserve(uint32_t stored_len, ObjRef* ref, const uint8_t* stored = nullptr);
  // The trailer entry of the record Reserve() placed last (its digest).
  const ObjRef& last_reserved() const { return index_.back(); }
  // Reserve() + a synchronous write of `data` (padded to 4 KiB).
  Status WriteRecord(const uint8_t* data, uint32_t len, ObjRef* ref);
  // A synchronous write of `len` bytes at `offset`, all of them reserved
  // (records laid out as Reserve() placed them, padding included; aligned
  // to 4 KiB when direct()).
  Status WriteReserved(uint64_t offset, const uint8_t* data, size_t len);
  // Writes the trailer index and footer, fdatasyncs and closes. The caller
  // must have completed every write it issued against fd().
  Status Finish();
  // Closes and deletes an unfinished pack (error paths).
  void Abandon();

 private:
  io::File file_;
  uint32_t pack_id_ = 0;
  uint32_t version_ = kPackFormatVersion;
  uint64_t next_offset_ = 0;
  uint64_t final_size_ = 0;
  std::vector<ObjRef> index_;
};

class PackReader {
 public:
  // Opens `path` and checks the header; errors name the file.
  static Result<PackReader> Open(const std::string& path, uint32_t expected_id);

  // Reads the footer and trailer index (kCorruption when truncated/damaged).
  Result<std::vector<ObjRef>> ReadIndex() const;
  // Reads the stored bytes of record `ref` (ref.stored_len of them) into `buf`;
  // nothing is checked. kCorruption when the record runs past the end.
  Status ReadStored(const ObjRef& ref, uint8_t* buf) const;
  // Reads `count` records that lie back to back in the pack (each at the
  // 4 KiB boundary after the one before) with one read into `buf`, record i
  // at buf + refs[i].offset_bytes() - refs[0].offset_bytes(), and zeroes the
  // padding after each (read from the device after OpenDirect() when `buf`
  // is 4 KiB-aligned). Nothing is checked: the caller runs CheckRecord on
  // each (e.g. on another thread). `buf` holds at least RunBytes(refs, count).
  Status ReadRunBytes(const ObjRef* refs, size_t count, uint8_t* buf) const;
  // ReadRunBytes' read, for a caller that issues it itself (through
  // io_uring): the descriptor (OpenDirect()'s when `buf` is 4 KiB-aligned and
  // the last record's padding lies inside the pack), offset and length.
  // kCorruption when the run lies past the end of the pack.
  struct RunRead {
    int fd;
    uint64_t offset;
    uint64_t len;
  };
  Result<RunRead> PlanRunRead(const ObjRef* refs, size_t count, const uint8_t* buf) const;
  // Zeroes the padding after each record of a run read into `buf`.
  static void ZeroPadding(const ObjRef* refs, size_t count, uint8_t* buf);
  // Checks `bytes` (ref.stored_len of them) against the trailer entry `ref`
  // (its SHA-256 in a pack of version 1, the stored bytes' XXH3-128 in version
  // 2); kCorruption names the pack and the offset. Thread-safe.
  Status CheckRecord(const ObjRef& ref, const uint8_t* bytes) const;
  // The header's version: kPackVersionRaw or kPackVersionEncoded.
  uint32_t version() const { return version_; }
  // Reads `len` bytes at `offset` as they are (nothing checked).
  Status ReadBytes(uint64_t offset, uint8_t* buf, size_t len) const {
    return file_.ReadAt(offset, buf, len);
  }
  // Opens a second, O_DIRECT descriptor of the pack (when its file system
  // allows it; else nothing changes) for ReadRunBytes and PlanRunRead into
  // 4 KiB-aligned buffers: a copy that reads a pack once bypasses the page
  // cache.
  void OpenDirect();
  bool direct() const { return direct_.direct(); }
  uint64_t size_bytes() const { return file_.info().size_bytes; }
  const std::string& path() const { return file_.path(); }
  int fd() const { return file_.fd(); }

 private:
  io::File file_;
  io::File direct_;  // OpenDirect()'s, when open
  uint32_t pack_id_ = 0;
  uint32_t version_ = kPackVersionRaw;
};

// The trailer digest of `len` stored bytes in a pack of version 2: XXH3-128
// (unkeyed, little-endian low half first) in the first 16 bytes, 16 zero bytes.
void StoredDigest(const uint8_t* bytes, size_t len, uint8_t out[32]);

// The bytes from the first record's start to the 4 KiB boundary after the
// last record of a back-to-back run (PackReader::ReadRunBytes).
uint64_t RunBytes(const ObjRef* refs, size_t count);
// Whether `next` starts at the 4 KiB boundary after `ref`.
bool Adjacent(const ObjRef& ref, const ObjRef& next);

// Checks a footer's magic, version and CRC.
bool FooterValid(const PackFooter& footer);

}  // namespace dp420
