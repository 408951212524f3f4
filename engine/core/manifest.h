// Manifests and other sealed JSON files (config).
//
// A sealed file is two lines: a JSON document on one line, then
// "sha256 <hex>" where <hex> is the SHA-256 of the first line's bytes
// including its newline. The seal is checked on every read; a manifest's
// seal is also its identity in the snapshot hash chain (a child records its
// parent's seal as parent_manifest_sha256).
//
// Thread safety: plain data and pure functions.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/format.h"
#include "engine/core/text.h"  // EscapeBytes: how source_path is written
#include "io/status.h"

namespace dp420 {

using Json = nlohmann::ordered_json;

// Serializes `doc` as a sealed file. `seal_hex` (optional) receives the seal.
std::string SealJson(const Json& doc, std::string* seal_hex = nullptr);
// Parses a sealed file; kCorruption naming `what` when the seal or JSON is bad.
Result<Json> UnsealJson(const std::string& text, const std::string& what,
                        std::string* seal_hex = nullptr);

Json ObjRefToJson(const ObjRef& ref);
Result<ObjRef> ObjRefFromJson(const Json& j);

// The manifest of one snapshot. Field meanings: docs/FORMAT.md.
struct Manifest {
  uint32_t format_version = kFormatVersion;
  std::string repo_id;             // hex
  std::string snapshot_id;         // 16 hex digits
  std::string volume;
  std::string parent;              // empty for a full backup
  std::string parent_manifest_sha256;  // hex seal of the parent's manifest
  uint64_t sequence = 0;           // 1, 2, ... per volume
  std::string created;             // UTC, RFC 3339 with microseconds
  uint64_t created_unix_ns = 0;
  uint32_t block_size = 0;
  uint64_t volume_size = 0;
  uint64_t blocks_total = 0;
  uint64_t blocks_changed = 0;     // differ from the parent (all non-zero for a full)
  uint64_t blocks_zero = 0;
  uint64_t blocks_stored = 0;      // written by this snapshot
  uint64_t bytes_written = 0;      // data + table pages written by this snapshot
  uint64_t bytes_read = 0;
  double seconds = 0;
  uint32_t table_levels = 1;
  ObjRef table_root{};
  std::string checksum_sha256;     // hex; see docs/FORMAT.md
  std::string source_path;         // absolute, EscapeBytes'd: any bytes as UTF-8
  std::string source_kind;         // "file" or "block-device"
  Json node_topology = Json::object();
  std::string tool_version;
  std::string client;              // the server client that owns the volume ("" local)

  // Derived when read:
  std::string seal;                // SHA-256 of this manifest's JSON line
  std::string file_name;           // "SEQ-ID.manifest"

  Json ToJson() const;
  static Result<Manifest> FromJson(const Json& j, const std::string& what);
  // A sealed manifest file's text: unsealed, parsed, with seal and file_name set;
  // kCorruption naming `what` when anything is wrong.
  static Result<Manifest> Parse(const std::string& sealed, const std::string& what);
  std::string FileName() const;    // "%010llu-<id>.manifest"
  uint32_t BlockLen(uint64_t block) const { return dp420::BlockLen(volume_size, block_size, block); }
};

// True for names of 1..64 chars of [A-Za-z0-9._-] not starting with '.'.
bool ValidVolumeName(const std::string& name);

}  // namespace dp420
