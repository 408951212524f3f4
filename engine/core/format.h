// On-disk format of a dp420 repository (version 2). docs/FORMAT.md describes
// every file byte by byte; this header is the source of truth for layouts.
//
// All integers are little-endian. Structures here are the exact bytes on disk
// (static_assert'ed sizes); the build is little-endian only (asserted).
//
//   REPO/config                 JSON line + "hmac-sha256 <hex>" line (format stamp)
//   REPO/keys/hash.key          192-byte secret for the keyed XXH3-128 block hash
//   REPO/packs/XXXXXXXX.pack    data and table pages; immutable once closed
//   REPO/snapshots/VOL/SEQ-ID.manifest   JSON line + "hmac-sha256 <hex>" line
//   REPO/snapshots/VOL/HEAD     the volume's newest snapshot and generation (sealed)
//   REPO/locks/VOL.lock         flock()ed by the one writer of a volume
//   REPO/relocated/XXXXXXXX     where repacked pack XXXXXXXX's records are now (relocate.h)
//   REPO/tmp/                   journals of unfinished backups, temp files
//
// Thread safety: plain data.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace dp420 {

static_assert(std::endian::native == std::endian::little, "dp420 formats are little-endian");

// Version of the sealed JSON documents (manifests, heads, links). Version 2
// seals them with a keyed MAC and adds the volume heads; version 1
// repositories are upgraded in place by `dp420 upgrade`.
inline constexpr uint32_t kFormatVersion = 2;
// Version of a repository (its config): 2 stores every record as its raw
// bytes in packs of version 1; 3 stores records encoded (compressed when it
// pays, sealed when the repository is encrypted: ObjFlags) in packs of
// version 2, whose trailer index holds digests of the stored bytes. This
// build writes format 3 into new repositories and keeps writing format 2 into
// a format-2 repository (`dp420 upgrade` brings it to 3).
inline constexpr uint32_t kRepoFormatVersion = 3;
inline constexpr uint32_t kPackVersionRaw = 1;      // records stored raw; trailer: raw SHA-256
inline constexpr uint32_t kPackVersionEncoded = 2;  // records encoded; trailer: stored XXH3-128
inline constexpr uint32_t kPackFormatVersion = kPackVersionEncoded;  // the newest
inline constexpr uint32_t kRecordAlign = 4096;  // every pack record starts on 4 KiB
inline constexpr uint32_t kPageEntries = 256;   // entries per table page
inline constexpr uint64_t kPackMaxBytes = 1ull << 30;  // a pack is closed past 1 GiB

// Object flags (ObjRef::flags).
enum ObjFlags : uint16_t {
  kObjZero = 1u << 0,       // an all-zero block: not stored, restored as a hole
  kObjTableLeaf = 1u << 1,  // a table page of block entries
  kObjTableInner = 1u << 2, // a table page of child page entries
  kObjZstd = 1u << 8,       // record compressed with zstd (format 3)
  kObjAesGcm = 1u << 9,     // record sealed with AES-256-GCM under record key key_id (format 3)
  kObjLz4 = 1u << 10,       // record compressed with LZ4 (format 3)
};
inline constexpr uint16_t kObjEncodingFlags = kObjZstd | kObjAesGcm | kObjLz4;

// Where an object lives and what it must hash to. 48 bytes.
struct ObjRef {
  uint8_t sha256[32];    // SHA-256 of the object's raw (uncompressed, plain) bytes
  uint32_t pack_id;      // 0 when not stored (kObjZero)
  uint32_t offset_4k;    // record offset in the pack, in 4 KiB units
  uint32_t stored_len;   // bytes stored in the pack (the raw length unless encoded)
  uint16_t flags;        // ObjFlags
  uint16_t key_id;       // the record key of a sealed record (kObjAesGcm); else 0
  uint64_t offset_bytes() const { return uint64_t{offset_4k} * kRecordAlign; }
  bool stored() const { return pack_id != 0; }
};
static_assert(sizeof(ObjRef) == 48);

// One table entry. 64 bytes. In a leaf page: `id` is the keyed XXH3-128 of the
// block (canonical bytes) and `ref` locates the block. In an inner page: `id`
// is the first 16 bytes of the child page's SHA-256 and `ref` locates it.
struct Entry {
  uint8_t id[16];
  ObjRef ref;
};
static_assert(sizeof(Entry) == 64);
inline constexpr size_t kPageBytes = kPageEntries * sizeof(Entry);  // 16 KiB

// Pack file header: the first 4096 bytes of every pack.
struct PackHeader {
  char magic[8];          // "DP420PK\0"
  uint32_t version;       // kFormatVersion
  uint32_t pack_id;       // equals the file name
  uint8_t repo_id[16];    // the repository this pack belongs to
  uint64_t created_unix_ns;
  uint8_t reserved[4052];
  uint32_t crc32c;        // CRC-32C of the preceding 4092 bytes
};
static_assert(sizeof(PackHeader) == 4096);

// Pack footer: the last 64 bytes of a closed pack. The trailer index
// (record_count ObjRefs, pack_id filled in) starts at index_offset, which is
// 4 KiB aligned; zero padding follows it up to the footer.
struct PackFooter {
  char magic[8];          // "DP420PF\0"
  uint32_t version;
  uint32_t pack_id;
  uint64_t index_offset;  // byte offset of the trailer index
  uint32_t record_count;
  uint32_t index_crc32c;  // CRC-32C of the index bytes
  uint64_t data_end;      // end of the last record (== index_offset)
  uint8_t reserved[16];
  uint32_t unused;
  uint32_t crc32c;        // CRC-32C of the preceding 60 bytes
};
static_assert(sizeof(PackFooter) == 64);

inline constexpr char kPackMagic[8] = {'D', 'P', '4', '2', '0', 'P', 'K', '\0'};
inline constexpr char kFooterMagic[8] = {'D', 'P', '4', '2', '0', 'P', 'F', '\0'};

inline uint64_t RoundUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }
// Without overflow: a near 2^64 must not wrap to a small count.
inline uint64_t DivCeil(uint64_t a, uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }
// Bytes of block `block` of a volume: block_size, less for a short last block.
inline uint32_t BlockLen(uint64_t volume_size, uint32_t block_size, uint64_t block) {
  uint64_t left = volume_size - block * block_size;
  return static_cast<uint32_t>(left < block_size ? left : block_size);
}

// "1a2b3c4d" for pack id 0x1a2b3c4d, and the path "packs/1a2b3c4d.pack".
std::string PackName(uint32_t pack_id);

// Table geometry: how many pages each level of a tree over `blocks` blocks has.
// Level 0 holds leaves. levels() >= 1; the top level has exactly one page.
struct TableShape {
  uint64_t blocks = 0;
  uint32_t levels = 1;
  uint64_t PagesAt(uint32_t level) const;  // DivCeil(blocks, 256^(level+1)), at least 1
  static TableShape For(uint64_t blocks);
};

}  // namespace dp420
