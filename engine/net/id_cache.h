// The agent's block id cache, <cache_dir>/<repo_id>/<volume>.ids: what the
// agent knows of the last snapshot it made of a volume (every block's keyed
// id, SHA-256 and zero flag), so an incremental needs nothing from the server
// but the parent's seal, and so the agent can hold the snapshot the server
// commits against what it read itself (CheckCommitted).
//
// Layout: a 64-byte header (magic "DP420IDC", u32 version 2, u32 block_size,
// u64 blocks, the snapshot manifest's seal as 32 bytes, 8 reserved), then 49
// bytes per block: id[16], sha256[32], u8 zero (1 for an all-zero block) —
// the record PARENT_PAGE carries. A cache of another version or another seal
// is not used (the agent fetches the parent's records again).
//
// Thread safety: pure functions over file descriptors (pread/pwrite).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/core/manifest.h"
#include "engine/core/table.h"
#include "io/status.h"

namespace dp420::net {

inline constexpr size_t kCacheHeader = 64;
inline constexpr size_t kCacheRecord = 49;
// A record's last byte: 0 a stored block, 1 an all-zero block, 2 a block
// whose copy the server lost (a missing pack, or damage verify found): never
// "unchanged", so the agent sends it again (PARENT_PAGE, docs/PROTOCOL.md).
inline constexpr uint8_t kCacheStored = 0;
inline constexpr uint8_t kCacheZero = 1;
inline constexpr uint8_t kCacheLost = 2;
// The server's refusal of "unchanged" for such a block says this; the agent
// then fetches the parent's table again, which marks those blocks lost.
inline constexpr char kParentCopyLost[] = "its copy in the parent snapshot is lost";

struct CacheHeader {
  char magic[8];
  uint32_t version;
  uint32_t block_size;
  uint64_t blocks;
  uint8_t seal[32];
  uint8_t reserved[8];
};
static_assert(sizeof(CacheHeader) == kCacheHeader);

// The header of the cache of snapshot `m`.
CacheHeader MakeCacheHeader(const Manifest& m);
// True when the cache behind `fd` is the (complete) cache of `m`.
bool CacheValid(int fd, const Manifest& m);

void PutCacheRecord(const Entry& e, uint8_t* raw);
Entry GetCacheRecord(const uint8_t* raw);
// Reads the `n` records of blocks first.. into `raw` (n * kCacheRecord bytes).
// A failed read is kIOError naming its errno; a file that ends early, kCorruption.
Status ReadCacheRecords(int fd, uint64_t first, uint32_t n, uint8_t* raw);

// What the agent knows of the snapshot it sent, to hold the commit against.
struct SentSnapshot {
  std::string client;       // this agent's client name
  std::string volume;       // as this agent named it
  std::string snapshot_id;  // from BACKUP_READY
  std::string parent;       // "" for a full backup
  uint32_t block_size = 0;
  uint64_t volume_size = 0;
  uint64_t blocks = 0;
};

// kCorruption naming the first field of `committed` that differs from what
// the agent read and sent: owner and volume (the client's own, plain or in
// its namespace: volumes.h), snapshot id, parent, geometry, blocks_zero,
// blocks_stored, blocks_changed (counted as the server counts them) and
// checksum_sha256 over the digests in the new cache `new_fd`, against the
// parent's cache `parent_fd` (-1 for a full backup). The digests of unchanged
// blocks come from the parent's cache: the agent's own reads when it made the
// parent, else the server's PARENT_PAGE records. A cache that cannot be read
// is not a difference: kIOError (or kCorruption for a cache that ends early),
// naming which cache.
Status CheckCommitted(const Manifest& committed, const SentSnapshot& sent, int new_fd,
                      int parent_fd, uint64_t parent_blocks);

// <cache_dir>/<repo_id>/<volume>.ids
std::string IdCachePath(const std::string& cache_dir, const std::string& repo_id,
                        const std::string& volume);

// Beside the cache at `ids_path` (…/VOLUME.ids), VOLUME.seen: "SEQUENCE
// SNAPSHOT_ID" of the newest snapshot this agent committed to the volume, its
// anchor against a server whose history went back (docs/SECURITY.md).
std::string SeenPath(const std::string& ids_path);
// kCorruption, naming the .seen file that accepts it, when `newest` (null:
// the server has no snapshot) is older than what this agent committed, or
// another snapshot in its place; Ok when nothing was recorded.
Status CheckNotRolledBack(const std::string& seen_path, const Manifest* newest);

}  // namespace dp420::net
