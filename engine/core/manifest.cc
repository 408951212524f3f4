#include "engine/core/manifest.h"

#include <cctype>
#include <cstdio>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "engine/core/job.h"
#include "engine/crypto/aead.h"
#include "io/assert.h"
#include "simd/simd.h"

namespace dp420 {

namespace {

constexpr char kKeyedTag[] = "hmac-sha256 ";
constexpr char kPlainTag[] = "sha256 ";

std::string Sha256Hex(const std::string& bytes) {
  uint8_t digest[32];
  simd::Sha256(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), digest);
  return simd::ToHex(digest, 32);
}

// Splits a sealed file into its JSON line (with newline) and its seal line's
// hex after `tag`; false when the shape is wrong.
bool SplitSealed(const std::string& text, const char* tag, std::string* line, std::string* hex) {
  size_t nl = text.find('\n');
  if (nl == std::string::npos) return false;
  std::string rest = text.substr(nl + 1);
  size_t tag_len = std::strlen(tag);
  if (rest.size() != tag_len + 65 || rest.compare(0, tag_len, tag) != 0 || rest.back() != '\n') {
    return false;
  }
  *line = text.substr(0, nl + 1);
  *hex = rest.substr(tag_len, 64);
  return true;
}

Result<Json> ParseLine(const std::string& line, const std::string& what) {
  Json j = Json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Corruption(what + ": not valid JSON");
  return j;
}

bool EqualHex(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

SealKey SealKey::Derive(const uint8_t* repo_key, size_t len) {
  static constexpr char kLabel[] = "dp420 seals v1";
  SealKey k;
  unsigned out_len = 0;
  uint8_t* r = HMAC(EVP_sha256(), repo_key, static_cast<int>(len),
                    reinterpret_cast<const uint8_t*>(kLabel), sizeof(kLabel) - 1,
                    k.key_.data(), &out_len);
  DP420_ASSERT(r != nullptr && out_len == kBytes);
  return k;
}

SealKey::~SealKey() { OPENSSL_cleanse(key_.data(), key_.size()); }

std::string SealKey::Mac(const std::string& bytes) const {
  uint8_t mac[32];
  unsigned len = 0;
  uint8_t* r = HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
                    reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), mac, &len);
  DP420_ASSERT(r != nullptr && len == 32);
  return simd::ToHex(mac, 32);
}

void SealKey::SetCipher(const crypto::SecretKey& object_key, const crypto::RepoId& repo_id) {
  auto cipher = std::make_shared<Cipher>();
  cipher->object_key = object_key;
  cipher->repo_id = repo_id;
  cipher_ = std::move(cipher);
}

namespace {

constexpr char kSealedFormat[] = "dp420-sealed";

// The file kind of a sealed document, by its "format".
crypto::FileKind FileKindOf(const std::string& format) {
  if (format == "dp420-manifest") return crypto::FileKind::kManifest;
  if (format == "dp420-head") return crypto::FileKind::kHead;
  if (format == "dp420-link") return crypto::FileKind::kLink;
  if (format == "dp420-group" || format == "dp420-group-epoch") return crypto::FileKind::kGroup;
  return crypto::FileKind::kConfig;
}

Result<crypto::FileKind> FileKindNamed(const std::string& name) {
  for (crypto::FileKind kind : {crypto::FileKind::kConfig, crypto::FileKind::kManifest,
                                crypto::FileKind::kHead, crypto::FileKind::kLink,
                                crypto::FileKind::kGroup}) {
    if (name == crypto::FileKindName(kind)) return kind;
  }
  return Status::Corruption("unknown kind '" + name + "'");
}

std::string Base64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> Unbase64(const std::string& text) {
  if (text.size() % 4 != 0 || text.size() > (size_t{96} << 20)) {
    return Status::Corruption("bad base64 length");
  }
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return Status::Corruption("bad base64");
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text.size() >= 2 && text[text.size() - 2] == '=' ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

// The line an encrypted repository's key seals for `doc`.
std::string EncryptedLine(const Json& doc, const SealKey::Cipher& cipher) {
  const crypto::FileKind kind =
      FileKindOf(doc.is_object() && doc.contains("format") && doc["format"].is_string()
                     ? doc["format"].get<std::string>()
                     : "");
  auto sealed = crypto::SealFile(cipher.object_key, cipher.repo_id, kind, "", doc.dump());
  // Only an OpenSSL failure (out of memory) fails here; a document is never
  // written in the clear instead.
  DP420_ASSERT(sealed.ok());
  Json outer = {{"format", kSealedFormat},
                {"kind", crypto::FileKindName(kind)},
                {"data", Base64(sealed.value())}};
  return outer.dump() + "\n";
}

// The document inside an encrypted line `j`.
Result<Json> DecryptLine(const Json& j, const SealKey::Cipher& cipher, const std::string& what) {
  if (!j.contains("kind") || !j["kind"].is_string() || !j.contains("data") ||
      !j["data"].is_string() || j.size() != 3) {
    return Status::Corruption(what + ": malformed encrypted document");
  }
  auto kind = FileKindNamed(j["kind"].get<std::string>());
  if (!kind.ok()) return kind.status().Prefix(what);
  auto bytes = Unbase64(j["data"].get<std::string>());
  if (!bytes.ok()) return bytes.status().Prefix(what);
  auto plain = crypto::OpenFile(cipher.object_key, cipher.repo_id, *kind, "", *bytes);
  if (!plain.ok()) return Status::Corruption(what + ": " + plain.status().message());
  Json inner = Json::parse(*plain, nullptr, false);
  if (inner.is_discarded() || !inner.is_object()) {
    return Status::Corruption(what + ": not valid JSON inside");
  }
  return inner;
}

}  // namespace

std::string SealJson(const Json& doc, const SealKey& key, std::string* seal_hex) {
  std::string line = key.cipher() ? EncryptedLine(doc, *key.cipher()) : doc.dump() + "\n";
  std::string hex = key.Mac(line);
  if (seal_hex) *seal_hex = hex;
  return line + kKeyedTag + hex + "\n";
}

Result<Json> UnsealJson(const std::string& text, const std::string& what, const SealKey* key,
                        std::string* seal_hex) {
  std::string line, hex;
  if (!SplitSealed(text, kKeyedTag, &line, &hex)) {
    if (SplitSealed(text, kPlainTag, &line, &hex)) {
      return Status::Corruption(what + ": sealed with a bare SHA-256, not the repository key "
                                "(a version-1 file, or one forged without the key)");
    }
    return Status::Corruption(what + ": not a sealed file");
  }
  if (key && !EqualHex(hex, key->Mac(line))) {
    return Status::Corruption(what + ": seal mismatch (the file was edited, damaged or forged)");
  }
  DP420_ASSIGN_OR_RETURN(Json j, ParseLine(line, what));
  const bool encrypted = j.contains("format") && j["format"] == kSealedFormat;
  if (encrypted && !(key && key->cipher())) {
    return Status::Corruption(what + ": encrypted, and this reader holds no key to open it");
  }
  if (!encrypted && key && key->cipher()) {
    return Status::Corruption(what + ": not encrypted in an encrypted repository");
  }
  if (encrypted) {
    DP420_ASSIGN_OR_RETURN(j, DecryptLine(j, *key->cipher(), what));
  }
  if (seal_hex) *seal_hex = hex;
  return j;
}

std::string SealJsonPlain(const Json& doc, std::string* seal_hex) {
  std::string line = doc.dump() + "\n";
  std::string hex = Sha256Hex(line);
  if (seal_hex) *seal_hex = hex;
  return line + kPlainTag + hex + "\n";
}

Result<Json> UnsealJsonPlain(const std::string& text, const std::string& what,
                             std::string* seal_hex) {
  std::string line, hex;
  if (!SplitSealed(text, kPlainTag, &line, &hex)) {
    return Status::Corruption(what + ": not a sealed file");
  }
  if (!EqualHex(hex, Sha256Hex(line))) {
    return Status::Corruption(what + ": checksum mismatch (the file was edited or damaged)");
  }
  DP420_ASSIGN_OR_RETURN(Json j, ParseLine(line, what));
  if (seal_hex) *seal_hex = hex;
  return j;
}

Json ObjRefToJson(const ObjRef& ref) {
  return Json{{"sha256", simd::ToHex(ref.sha256, 32)},
              {"pack", PackName(ref.pack_id)},
              {"offset_4k", ref.offset_4k},
              {"stored_len", ref.stored_len},
              {"flags", ref.flags},
              {"key_id", ref.key_id}};
}

uint64_t JsonUnsigned(const Json& v, uint64_t max) {
  // A document built in memory holds non-negative numbers as signed integers.
  bool whole = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
  if (!whole || v.get<uint64_t>() > max) {
    throw std::out_of_range("not an integer from 0 to " + std::to_string(max) + ": " +
                            v.dump().substr(0, 64));
  }
  return v.get<uint64_t>();
}

Result<ObjRef> ObjRefFromJson(const Json& j) {
  ObjRef ref{};
  try {
    if (!simd::FromHex(j.at("sha256").get<std::string>(), ref.sha256, 32)) {
      return Status::Corruption("bad sha256 in object reference");
    }
    const std::string pack = j.at("pack").get<std::string>();
    ref.pack_id = static_cast<uint32_t>(std::stoul(pack, nullptr, 16));
    if (PackName(ref.pack_id) != pack) {
      return Status::Corruption("bad pack name in object reference");
    }
    ref.offset_4k = JsonUint<uint32_t>(j.at("offset_4k"));
    ref.stored_len = JsonUint<uint32_t>(j.at("stored_len"));
    ref.flags = JsonUint<uint16_t>(j.at("flags"));
    ref.key_id = JsonUint<uint16_t>(j.at("key_id"));
  } catch (const std::exception& e) {
    return Status::Corruption(std::string("bad object reference: ") + e.what());
  }
  return ref;
}

Json Manifest::ToJson() const {
  Json j;
  j["format"] = "dp420-manifest";
  j["format_version"] = format_version;
  j["repo_id"] = repo_id;
  j["snapshot_id"] = snapshot_id;
  j["volume"] = volume;
  j["parent"] = parent.empty() ? Json(nullptr) : Json(parent);
  j["parent_manifest_sha256"] =
      parent_manifest_sha256.empty() ? Json(nullptr) : Json(parent_manifest_sha256);
  j["sequence"] = sequence;
  j["created"] = created;
  j["created_unix_ns"] = created_unix_ns;
  j["block_size"] = block_size;
  j["volume_size"] = volume_size;
  j["blocks_total"] = blocks_total;
  j["blocks_changed"] = blocks_changed;
  j["blocks_zero"] = blocks_zero;
  j["blocks_stored"] = blocks_stored;
  j["bytes_written"] = bytes_written;
  j["bytes_read"] = bytes_read;
  j["seconds"] = seconds;
  j["table"] = Json{{"levels", table_levels}, {"root", ObjRefToJson(table_root)}};
  j["checksum_sha256"] = checksum_sha256;
  j["checksum_algorithm"] = "sha256-of-block-sha256";
  j["source"] = Json{{"path", source_path}, {"kind", source_kind}};
  j["node_topology"] = node_topology;
  j["tool_version"] = tool_version;
  if (!client.empty()) j["client"] = client;
  if (!compression.empty()) j["compression"] = compression;
  if (compression_auto) {
    j["compression_auto"] = true;
    j["compression_measured"] = compression_measured;
  }
  return j;
}

Result<Manifest> Manifest::FromJson(const Json& j, const std::string& what) {
  Manifest m;
  try {
    if (j.at("format").get<std::string>() != "dp420-manifest") {
      return Status::Corruption(what + ": not a dp420 manifest");
    }
    m.format_version = JsonUint<uint32_t>(j.at("format_version"));
    if (m.format_version > kFormatVersion) {
      return Status::Version(what + ": manifest format version " +
                             std::to_string(m.format_version) +
                             " is newer than this dp420 supports (" +
                             std::to_string(kFormatVersion) + ")");
    }
    m.repo_id = j.at("repo_id").get<std::string>();
    m.snapshot_id = j.at("snapshot_id").get<std::string>();
    m.volume = j.at("volume").get<std::string>();
    if (!j.at("parent").is_null()) m.parent = j.at("parent").get<std::string>();
    if (!j.at("parent_manifest_sha256").is_null()) {
      m.parent_manifest_sha256 = j.at("parent_manifest_sha256").get<std::string>();
    }
    m.sequence = JsonUint<uint64_t>(j.at("sequence"));
    m.created = j.at("created").get<std::string>();
    m.created_unix_ns = JsonUint<uint64_t>(j.at("created_unix_ns"));
    m.block_size = JsonUint<uint32_t>(j.at("block_size"));
    m.volume_size = JsonUint<uint64_t>(j.at("volume_size"));
    m.blocks_total = JsonUint<uint64_t>(j.at("blocks_total"));
    m.blocks_changed = JsonUint<uint64_t>(j.at("blocks_changed"));
    m.blocks_zero = JsonUint<uint64_t>(j.at("blocks_zero"));
    m.blocks_stored = JsonUint<uint64_t>(j.at("blocks_stored"));
    m.bytes_written = JsonUint<uint64_t>(j.at("bytes_written"));
    m.bytes_read = j.contains("bytes_read") ? JsonUint<uint64_t>(j.at("bytes_read")) : 0;
    m.seconds = j.value("seconds", 0.0);
    m.table_levels = JsonUint<uint32_t>(j.at("table").at("levels"));
    auto root = ObjRefFromJson(j.at("table").at("root"));
    if (!root.ok()) return root.status().Prefix(what);
    m.table_root = root.value();
    m.checksum_sha256 = j.at("checksum_sha256").get<std::string>();
    m.source_path = j.at("source").at("path").get<std::string>();
    m.source_kind = j.at("source").at("kind").get<std::string>();
    m.node_topology = j.at("node_topology");
    m.tool_version = j.value("tool_version", "");
    m.client = j.value("client", "");
    m.compression = j.value("compression", "");
    m.compression_auto = j.value("compression_auto", false);
    // What auto measured only informs: readers ignore it (docs/FORMAT.md), and
    // take nothing of it but an object.
    if (auto it = j.find("compression_measured"); it != j.end() && it->is_object()) {
      m.compression_measured = *it;
    }
  } catch (const std::exception& e) {
    return Status::Corruption(what + ": missing or malformed field (" + e.what() + ")");
  }
  bool power_of_two = m.block_size != 0 && (m.block_size & (m.block_size - 1)) == 0;
  if (!power_of_two || m.block_size < kMinBlockSize || m.block_size > kMaxBlockSize) {
    return Status::Corruption(what + ": block_size " + std::to_string(m.block_size) +
                              " is not a power of two from 4096 to 4194304");
  }
  if (m.blocks_total != DivCeil(m.volume_size, m.block_size)) {
    return Status::Corruption(what + ": block_size/volume_size/blocks_total disagree");
  }
  if (TableShape::For(m.blocks_total).levels != m.table_levels) {
    return Status::Corruption(what + ": table levels disagree with blocks_total");
  }
  m.chain_parent = m.parent;
  m.chain_parent_seal = m.parent_manifest_sha256;
  return m;
}

std::string Manifest::FileName() const {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%010llu-", static_cast<unsigned long long>(sequence));
  return buf + snapshot_id + ".manifest";
}

Result<Manifest> Manifest::Parse(const std::string& sealed, const std::string& what,
                                 const SealKey* key) {
  std::string seal;
  DP420_ASSIGN_OR_RETURN(Json j, UnsealJson(sealed, what, key, &seal));
  DP420_ASSIGN_OR_RETURN(Manifest m, FromJson(j, what));
  m.seal = std::move(seal);
  m.file_name = m.FileName();
  return m;
}

bool ParseManifestName(const std::string& name, uint64_t* sequence, std::string* id) {
  static const std::string kSuffix = ".manifest";
  size_t dash = name.find('-');
  if (dash == 0 || dash == std::string::npos || name.size() <= dash + 1 + kSuffix.size()) {
    return false;
  }
  if (name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) return false;
  if (dash > 19) return false;  // more digits than a uint64_t holds
  for (size_t i = 0; i < dash; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return false;
  }
  *sequence = std::stoull(name.substr(0, dash));
  *id = name.substr(dash + 1, name.size() - dash - 1 - kSuffix.size());
  return true;
}

bool ValidVolumeName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace dp420
