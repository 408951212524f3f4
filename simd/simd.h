// simd/: pure kernels over byte spans — block hashing (keyed XXH3-128), zero
// detection (ISA-L), CRCs (ISA-L), SHA-256 (OpenSSL, SHA-NI when present).
//
// No I/O, no threads, no allocation on the hot path. Runtime CPU dispatch lives
// in simd/dispatch.cc only: it picks each kernel's variant once (CPUID) and
// fills a const table. Tests may force a level; kScalar is the oracle.
//
// Thread safety: every function is safe to call from any thread; BlockHasher
// and Sha256 objects are not shared between threads without external locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace dp420::simd {

// 128-bit hash value, as XXH128_hash_t (low64, high64).
struct Hash128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Hash128&) const = default;
  // Canonical big-endian 16 bytes (XXH128_canonicalFromHash), for storage.
  void ToBytes(uint8_t out[16]) const;
  static Hash128 FromBytes(const uint8_t in[16]);
};

// Kernel variants per level (simd/dispatch.cc holds the table):
//   Hash    kScalar: XXH3 built with XXH_VECTOR=XXH_SCALAR (the oracle);
//           kSse2: libxxhash's baseline build; kAvx2: XXH3 built with
//           XXH_VECTOR=XXH_AVX2; kAvx512: libxxhash's *_dispatch entry.
//   IsZero  kScalar: portable loop; above: ISA-L, which picks its own SSE/AVX.
//   Crc32c  kScalar: ISA-L crc32_iscsi_base; above: ISA-L crc32_iscsi, which
//           picks its own SSE4.2/PCLMUL/VPCLMUL code.
enum class Level : int { kScalar = 0, kSse2 = 1, kAvx2 = 2, kAvx512 = 3 };

// The best level this CPU supports (CPUID, once).
Level DetectedLevel();
// The level the kernels use now: DetectedLevel() unless forced.
Level ActiveLevel();
// Forces kernels to run at most at `level` (tests and benchmarks only; not
// thread-safe against concurrent kernel calls). Returns the previous level.
Level ForceLevel(Level level);
const char* LevelName(Level level);

// Secret size for keyed block hashing: at least XXH3_SECRET_SIZE_MIN (136).
inline constexpr size_t kHashSecretBytes = 192;

// Keyed XXH3-128 over a block: XXH3_128bits_withSecret(data, len, secret).
// The secret is per volume (engine/core/repo.h), so nobody without it can
// craft collisions. The copy of the secret is cleansed on destruction.
class BlockHasher {
 public:
  // `secret` must be exactly kHashSecretBytes bytes of high-entropy data.
  explicit BlockHasher(std::span<const uint8_t, kHashSecretBytes> secret);
  ~BlockHasher();
  BlockHasher(const BlockHasher&) = delete;
  BlockHasher& operator=(const BlockHasher&) = delete;
  Hash128 Hash(const uint8_t* data, size_t len) const;

 private:
  alignas(64) uint8_t secret_[kHashSecretBytes];
};

// True when all `len` bytes are zero (len 0 is zero). ISA-L isal_zero_detect
// above kScalar.
bool IsZero(const uint8_t* data, size_t len);

// Standard CRC-32C (Castagnoli, iSCSI polynomial, RFC 3720: reflected, init
// 0xFFFFFFFF, xorout 0xFFFFFFFF). Crc32c(0, "123456789", 9) == 0xE3069283.
// Chains: Crc32c(Crc32c(0, a), b) == Crc32c(0, a + b). ISA-L's crc32_iscsi
// returns the raw register instead (no inversion), so this returns
// ~crc32_iscsi(data, len, ~seed); tests/simd/crc_test.cc pins both forms.
uint32_t Crc32c(uint32_t seed, const uint8_t* data, size_t len);

inline constexpr size_t kSha256Bytes = 32;

// One-shot SHA-256. Reuses one EVP context per thread, created on the thread's
// first call.
void Sha256(const uint8_t* data, size_t len, uint8_t out[kSha256Bytes]);

// Incremental SHA-256. After Final(), call Reset() before the next Update().
// Aborts only if OpenSSL cannot allocate its context.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Reset();
  void Update(const uint8_t* data, size_t len);
  void Final(uint8_t out[kSha256Bytes]);

 private:
  void* ctx_;  // EVP_MD_CTX*
};

// Lower-case hex of `len` bytes.
std::string ToHex(const uint8_t* data, size_t len);
// Parses lower/upper-case hex of exactly `len` bytes (2 * len digits). False on
// any error, and `out` is then untouched.
bool FromHex(const std::string& hex, uint8_t* out, size_t len);

}  // namespace dp420::simd
