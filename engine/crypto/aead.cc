#include "engine/crypto/aead.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "io/assert.h"
#include "io/random.h"

namespace dp420::crypto {

namespace {

// AES-256-GCM, fetched once (a fetch searches the providers under a lock).
// EVP_CIPHER objects may be shared by threads; contexts may not.
const EVP_CIPHER* Aes256Gcm() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

// A GCM context holding `key` (or no key yet when null); null on failure.
CipherCtx NewGcmContext(const uint8_t* key) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || Aes256Gcm() == nullptr) return nullptr;
  if (EVP_CipherInit_ex(ctx.get(), Aes256Gcm(), nullptr, key, nullptr, 1) != 1) return nullptr;
  return ctx;
}

// True when `out` is `in` or does not overlap it (GCM may run in place, but
// not shifted).
bool SafeOverlap(const uint8_t* in, const uint8_t* out, size_t len) {
  if (in == out || len == 0) return true;
  return out + len <= in || in + len <= out;
}

// Encrypts or decrypts `len` bytes in pieces of at most 1 GiB (EVP takes int
// lengths). GCM is a stream mode: every piece comes out whole.
bool Crypt(EVP_CIPHER_CTX* ctx, const uint8_t* in, uint8_t* out, size_t len) {
  while (len > 0) {
    const int piece = static_cast<int>(std::min<size_t>(len, size_t{1} << 30));
    int done = 0;
    if (EVP_CipherUpdate(ctx, out, &done, in, piece) != 1 || done != piece) return false;
    in += piece;
    out += piece;
    len -= static_cast<size_t>(piece);
  }
  return true;
}

// One GCM operation with the key `ctx` holds: seals (writes `tag`) or opens
// (checks `tag`). False when OpenSSL fails or, opening, the tag differs.
bool GcmRun(EVP_CIPHER_CTX* ctx, bool encrypt, const uint8_t* nonce,
            std::span<const uint8_t> aad, const uint8_t* in, uint8_t* out, size_t len,
            uint8_t* tag) {
  if (EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, nonce, encrypt ? 1 : 0) != 1) {
    return false;
  }
  int n = 0;
  if (!aad.empty() &&
      EVP_CipherUpdate(ctx, nullptr, &n, aad.data(), static_cast<int>(aad.size())) != 1) {
    return false;
  }
  if (!Crypt(ctx, in, out, len)) return false;
  if (encrypt) {
    return EVP_CipherFinal_ex(ctx, nullptr, &n) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kGcmTagBytes, tag) == 1;
  }
  return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kGcmTagBytes, tag) == 1 &&
         EVP_CipherFinal_ex(ctx, nullptr, &n) == 1;
}

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// "data block record (65536 bytes, key 812)"
std::string DescribeRecord(const RecordId& id) {
  return std::string(ObjectKindName(id.kind)) + " record (" + std::to_string(id.raw_len) +
         " bytes, key " + std::to_string(id.key_id) + ")";
}

// "manifest file 'vol1/0000000003-...'"
std::string DescribeFile(FileKind kind, std::string_view identity) {
  return std::string(FileKindName(kind)) + " file '" + std::string(identity) + "'";
}

// The largest identity of a small file.
constexpr size_t kMaxIdentityBytes = 4096;

Status DeriveFileKey(const SecretKey& object_key, const RepoId& repo_id, FileKind kind,
                     std::span<const uint8_t, kFileSaltBytes> salt, SecretKey* out) {
  uint8_t context[1 + kRepoIdBytes + kFileSaltBytes];
  context[0] = static_cast<uint8_t>(kind);
  std::memcpy(context + 1, repo_id.data(), kRepoIdBytes);
  std::memcpy(context + 1 + kRepoIdBytes, salt.data(), kFileSaltBytes);
  return DeriveKey(object_key.span(), kFileKeyLabel, context, out->span());
}

// repo_id || kind || identity length (u32 LE) || identity
std::string FileAad(const RepoId& repo_id, FileKind kind, std::string_view identity) {
  std::string aad(kRepoIdBytes + 1 + 4, '\0');
  auto* p = reinterpret_cast<uint8_t*>(aad.data());
  std::memcpy(p, repo_id.data(), kRepoIdBytes);
  p[kRepoIdBytes] = static_cast<uint8_t>(kind);
  PutU32(p + kRepoIdBytes + 1, static_cast<uint32_t>(identity.size()));
  aad.append(identity);
  return aad;
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

constexpr uint8_t kZeroNonce[kGcmNonceBytes] = {};

}  // namespace

const char* ObjectKindName(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::kDataBlock: return "data block";
    case ObjectKind::kLeafPage: return "leaf table page";
    case ObjectKind::kInnerPage: return "inner table page";
    case ObjectKind::kManifest: return "manifest";
  }
  return "unknown object";
}

const char* FileKindName(FileKind kind) {
  switch (kind) {
    case FileKind::kConfig: return "config";
    case FileKind::kManifest: return "manifest";
    case FileKind::kHead: return "head";
    case FileKind::kLink: return "link";
    case FileKind::kGroup: return "group";
  }
  return "unknown";
}

// ---- AES-256-GCM, one shot ----

Status AesGcmSeal(std::span<const uint8_t, kAesKeyBytes> key,
                  std::span<const uint8_t, kGcmNonceBytes> nonce, std::span<const uint8_t> aad,
                  std::span<const uint8_t> plain, std::span<uint8_t> out,
                  std::span<uint8_t, kGcmTagBytes> tag) {
  DP420_ASSERT(out.size() == plain.size());
  DP420_ASSERT(SafeOverlap(plain.data(), out.data(), plain.size()));
  CipherCtx ctx = NewGcmContext(key.data());
  if (!ctx || !GcmRun(ctx.get(), true, nonce.data(), aad, plain.data(), out.data(),
                      plain.size(), tag.data())) {
    return Status::Internal("OpenSSL failed: AES-256-GCM encryption");
  }
  return Status::Ok();
}

bool AesGcmOpen(std::span<const uint8_t, kAesKeyBytes> key,
                std::span<const uint8_t, kGcmNonceBytes> nonce, std::span<const uint8_t> aad,
                std::span<const uint8_t> cipher, std::span<uint8_t> out,
                std::span<const uint8_t, kGcmTagBytes> tag) {
  DP420_ASSERT(out.size() == cipher.size());
  DP420_ASSERT(SafeOverlap(cipher.data(), out.data(), cipher.size()));
  uint8_t tag_copy[kGcmTagBytes];  // OpenSSL takes the tag as non-const
  std::memcpy(tag_copy, tag.data(), kGcmTagBytes);
  CipherCtx ctx = NewGcmContext(key.data());
  const bool ok = ctx && GcmRun(ctx.get(), false, nonce.data(), aad, cipher.data(), out.data(),
                                cipher.size(), tag_copy);
  if (!ok && !out.empty()) std::memset(out.data(), 0, out.size());
  return ok;
}

// ---- Pack records ----

Status DeriveRecordKey(const SecretKey& object_key, const RepoId& repo_id, uint16_t key_id,
                       SecretKey* out) {
  DP420_ASSERT(key_id != 0);
  uint8_t context[kRepoIdBytes + 2];
  std::memcpy(context, repo_id.data(), kRepoIdBytes);
  context[kRepoIdBytes] = static_cast<uint8_t>(key_id);
  context[kRepoIdBytes + 1] = static_cast<uint8_t>(key_id >> 8);
  return DeriveKey(object_key.span(), kRecordKeyLabel, context, out->span());
}

Result<uint16_t> RandomKeyId() {
  for (;;) {
    uint8_t bytes[2];
    DP420_RETURN_IF_ERROR(io::FillRandom(bytes, sizeof(bytes)));
    uint16_t id = static_cast<uint16_t>(bytes[0] | (bytes[1] << 8));
    if (id != 0) return id;
  }
}

void RecordAad(const RepoId& repo_id, const RecordId& id,
               std::span<uint8_t, kRecordAadBytes> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kRecordAadBytes);
  std::memcpy(p, repo_id.data(), kRepoIdBytes);
  p[16] = static_cast<uint8_t>(id.kind);
  p[17] = id.codec;
  p[18] = static_cast<uint8_t>(id.key_id);
  p[19] = static_cast<uint8_t>(id.key_id >> 8);
  PutU32(p + 20, id.raw_len);
  PutU32(p + 24, id.plain_len_bytes);
  std::memcpy(p + 32, id.sha256.data(), kSha256Bytes);
}

RecordSealer::RecordSealer(const SecretKey& object_key, const RepoId& repo_id)
    : object_key_(object_key), repo_id_(repo_id) {
  ctx_ = NewGcmContext(nullptr).release();
  DP420_ASSERT(ctx_ != nullptr);
}

RecordSealer::~RecordSealer() { EVP_CIPHER_CTX_free(ctx_); }

size_t RecordSealer::Victim() const {
  size_t pick = 0;
  for (size_t i = 0; i < kCachedKeys; ++i) {
    if (!cache_[i].valid) return i;
    if (cache_[i].last_use < cache_[pick].last_use) pick = i;
  }
  return pick;
}

Status RecordSealer::SelectKey(uint16_t key_id) {
  ++uses_;
  if (current_ < kCachedKeys && cache_[current_].key_id == key_id) {
    cache_[current_].last_use = uses_;
    return Status::Ok();
  }
  size_t pick = kCachedKeys;
  for (size_t i = 0; i < kCachedKeys && pick == kCachedKeys; ++i) {
    if (cache_[i].valid && cache_[i].key_id == key_id) pick = i;
  }
  if (pick == kCachedKeys) {  // derive it into a free entry, else the least recently used
    pick = Victim();
    CachedKey& entry = cache_[pick];
    entry.valid = false;
    if (current_ == pick) current_ = kCachedKeys;
    DP420_RETURN_IF_ERROR(DeriveRecordKey(object_key_, repo_id_, key_id, &entry.key));
    ++derived_;
    entry.valid = true;
    entry.key_id = key_id;
  }
  cache_[pick].last_use = uses_;
  if (EVP_CipherInit_ex(ctx_, nullptr, nullptr, cache_[pick].key.data(), nullptr, -1) != 1) {
    current_ = kCachedKeys;
    return Status::Internal("OpenSSL failed: AES-256-GCM record key " + std::to_string(key_id));
  }
  current_ = pick;
  return Status::Ok();
}

Status RecordSealer::SealRecord(const RecordId& id, std::span<const uint8_t> plain,
                                std::span<uint8_t> out) {
  DP420_ASSERT(id.key_id != 0);
  DP420_ASSERT(plain.size() == id.plain_len_bytes);
  DP420_ASSERT(id.plain_len_bytes <= kMaxRecordPlainBytes);
  DP420_ASSERT(out.size() == plain.size() + kRecordOverheadBytes);
  uint8_t* cipher = out.data() + kGcmNonceBytes;
  DP420_ASSERT(SafeOverlap(plain.data(), cipher, plain.size()));
  DP420_ASSERT(cipher == plain.data() || out.data() + out.size() <= plain.data() ||
               plain.data() + plain.size() <= out.data());
  DP420_RETURN_IF_ERROR(SelectKey(id.key_id));
  uint8_t aad[kRecordAadBytes];
  uint8_t nonce[kGcmNonceBytes];
  RecordAad(repo_id_, id, aad);
  if (RAND_bytes(nonce, sizeof(nonce)) != 1) {
    return Status::Internal("OpenSSL failed: no random nonce for a " + DescribeRecord(id));
  }
  if (!GcmRun(ctx_, true, nonce, aad, plain.data(), cipher, plain.size(),
              cipher + plain.size())) {
    return Status::Internal("OpenSSL failed: AES-256-GCM seal of a " + DescribeRecord(id));
  }
  std::memcpy(out.data(), nonce, kGcmNonceBytes);
  return Status::Ok();
}

Status RecordSealer::OpenRecord(const RecordId& id, std::span<const uint8_t> sealed,
                                std::span<uint8_t> plain) {
  DP420_ASSERT(plain.size() == id.plain_len_bytes);
  auto fail = [&](const std::string& why) {
    if (!plain.empty()) std::memset(plain.data(), 0, plain.size());
    return Status::Corruption("the " + DescribeRecord(id) + ": " + why);
  };
  if (id.plain_len_bytes > kMaxRecordPlainBytes) return fail("longer than a pack can hold");
  if (id.key_id == 0) return fail("key id 0 names no key");
  if (sealed.size() != size_t{id.plain_len_bytes} + kRecordOverheadBytes) {
    return fail("stored length " + std::to_string(sealed.size()) +
                " is not the plaintext's plus the nonce and tag (authentication failed)");
  }
  const uint8_t* cipher = sealed.data() + kGcmNonceBytes;
  DP420_ASSERT(SafeOverlap(cipher, plain.data(), plain.size()));
  DP420_RETURN_IF_ERROR(SelectKey(id.key_id));
  uint8_t aad[kRecordAadBytes];
  uint8_t nonce[kGcmNonceBytes];
  uint8_t tag[kGcmTagBytes];
  RecordAad(repo_id_, id, aad);
  std::memcpy(nonce, sealed.data(), kGcmNonceBytes);              // before an in-place open
  std::memcpy(tag, cipher + plain.size(), kGcmTagBytes);
  if (!GcmRun(ctx_, false, nonce, aad, cipher, plain.data(), plain.size(), tag)) {
    return fail("authentication failed (wrong key, another repository's record, or altered or "
                "swapped)");
  }
  return Status::Ok();
}

// ---- Small files ----

Result<std::string> SealFile(const SecretKey& object_key, const RepoId& repo_id, FileKind kind,
                             std::string_view identity, std::string_view plain) {
  if (plain.size() > kMaxFilePlainBytes) {
    return Status::InvalidArgument(DescribeFile(kind, identity) + " is too large to seal (" +
                                   std::to_string(plain.size()) + " bytes)");
  }
  if (identity.size() > kMaxIdentityBytes) {
    return Status::InvalidArgument("the identity of a sealed file is too long");
  }
  std::string sealed(kFileSaltBytes + plain.size() + kGcmTagBytes, '\0');
  auto* out = reinterpret_cast<uint8_t*>(sealed.data());
  DP420_RETURN_IF_ERROR(io::FillRandom(out, kFileSaltBytes));
  SecretKey key;
  DP420_RETURN_IF_ERROR(DeriveFileKey(object_key, repo_id, kind,
                                      std::span<const uint8_t, kFileSaltBytes>(out, kFileSaltBytes),
                                      &key));
  const std::string aad = FileAad(repo_id, kind, identity);
  DP420_RETURN_IF_ERROR(AesGcmSeal(
      key.span(), kZeroNonce, Bytes(aad), Bytes(plain),
      std::span<uint8_t>(out + kFileSaltBytes, plain.size()),
      std::span<uint8_t, kGcmTagBytes>(out + kFileSaltBytes + plain.size(), kGcmTagBytes)));
  return sealed;
}

Result<std::string> OpenFile(const SecretKey& object_key, const RepoId& repo_id, FileKind kind,
                             std::string_view identity, std::string_view sealed) {
  const std::string what = DescribeFile(kind, identity);
  if (sealed.size() < kFileOverheadBytes) {
    return Status::Corruption(what + ": " + std::to_string(sealed.size()) +
                              " bytes, shorter than its salt and tag (authentication failed)");
  }
  if (sealed.size() - kFileOverheadBytes > kMaxFilePlainBytes) {
    return Status::Corruption(what + ": " + std::to_string(sealed.size()) +
                              " bytes, larger than any sealed file");
  }
  if (identity.size() > kMaxIdentityBytes) {
    return Status::InvalidArgument("the identity of a sealed file is too long");
  }
  const auto* in = reinterpret_cast<const uint8_t*>(sealed.data());
  const size_t len = sealed.size() - kFileOverheadBytes;
  SecretKey key;
  DP420_RETURN_IF_ERROR(DeriveFileKey(object_key, repo_id, kind,
                                      std::span<const uint8_t, kFileSaltBytes>(in, kFileSaltBytes),
                                      &key));
  const std::string aad = FileAad(repo_id, kind, identity);
  std::string plain(len, '\0');
  if (!AesGcmOpen(key.span(), kZeroNonce, Bytes(aad),
                  std::span<const uint8_t>(in + kFileSaltBytes, len),
                  std::span<uint8_t>(reinterpret_cast<uint8_t*>(plain.data()), len),
                  std::span<const uint8_t, kGcmTagBytes>(in + kFileSaltBytes + len,
                                                         kGcmTagBytes))) {
    return Status::Corruption(what + ": authentication failed (wrong key, another repository's "
                              "or another file's, or altered)");
  }
  return plain;
}

}  // namespace dp420::crypto
