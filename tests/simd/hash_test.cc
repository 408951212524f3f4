// BlockHasher (keyed XXH3-128) and Hash128: upstream known answers at every
// level, agreement with libxxhash, and every variant against the scalar
// oracle over every length 0..4096 and alignment 0..63.
#include <xxhash.h>

#include <array>
#include <cstdint>
#include <vector>

#include "simd/simd.h"
#include "simd/variants.h"
#include "tests/simd/test_util.h"

namespace dp420::simd {
namespace {

using testing::AlignedBuffer;
using testing::RandomSecret;

// xxHash's sanity buffer (cli/xsum_sanity_check.c, XSUM_fillTestBuffer).
std::vector<uint8_t> SanityBuffer() {
  std::vector<uint8_t> buf(2367);
  uint64_t byte_gen = 2654435761U;
  for (uint8_t& b : buf) {
    b = static_cast<uint8_t>(byte_gen >> 56);
    byte_gen *= 11400714785074694797ULL;
  }
  return buf;
}

// XXH3_kSecret from xxhash.h: XXH3_128bits(data, len) is
// XXH3_128bits_withSecret(data, len, kSecret, 192), and 192 == kHashSecretBytes.
constexpr std::array<uint8_t, kHashSecretBytes> kDefaultSecret = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

struct Vector {
  size_t len;
  Hash128 hash;
};

// XSUM_XXH128_testdata, seed 0: lengths cover every XXH3 code path, including
// the long (vectorized) one from 241 bytes up.
constexpr Vector kDefaultSecretVectors[] = {
    {0, {0x6001C324468D497FULL, 0x99AA06D3014798D8ULL}},
    {1, {0xC44BDFF4074EECDBULL, 0xA6CD5E9392000F6AULL}},
    {6, {0x3E7039BDDA43CFC6ULL, 0x082AFE0B8162D12AULL}},
    {12, {0x061A192713F69AD9ULL, 0x6E3EFD8FC7802B18ULL}},
    {24, {0x1E7044D28B1B901DULL, 0x0CE966E4678D3761ULL}},
    {48, {0xF942219AED80F67BULL, 0xA002AC4E5478227EULL}},
    {81, {0x5E8BAFB9F95FB803ULL, 0x4952F58181AB0042ULL}},
    {222, {0xF1AEBD597CEC6B3AULL, 0x337E09641B948717ULL}},
    {403, {0xCDEB804D65C6DEA4ULL, 0x1B6DE21E332DD73DULL}},
    {512, {0x617E49599013CB6BULL, 0x18D2D110DCC9BCA1ULL}},
    {2048, {0xDD59E2C3A5F038E0ULL, 0xF736557FD47073A5ULL}},
    {2240, {0x6E73A90539CF2948ULL, 0xCCB134FBFA7CE49DULL}},
    {2367, {0xCB37AEB9E5D361EDULL, 0xE89C0F6FF369B427ULL}},
};

// XSUM_XXH128_withSecret_testdata: secret = sanity buffer + 7, 147 bytes.
constexpr Vector kCustomSecretVectors[] = {
    {0, {0x005923CCEECBE8AEULL, 0x5F70F4EA232F1D38ULL}},
    {1, {0x8A52451418B2DA4DULL, 0x3A66AF5A9819198EULL}},
    {6, {0x0B61C8ACA7D4778FULL, 0x376BD91B6432F36DULL}},
    {12, {0xAF82F6EBA263D7D8ULL, 0x90A3C2D839F57D0FULL}},
};

Hash128 FromPair(internal::HashPair pair) { return Hash128{.lo = pair.lo, .hi = pair.hi}; }

class HashTest : public testing::LevelTest {};

TEST_P(HashTest, UpstreamVectorsWithDefaultSecret) {
  const std::vector<uint8_t> buf = SanityBuffer();
  const BlockHasher hasher(kDefaultSecret);
  for (const Vector& v : kDefaultSecretVectors) {
    EXPECT_EQ(hasher.Hash(buf.data(), v.len), v.hash) << "len " << v.len;
  }
}

TEST_P(HashTest, UpstreamVectorsWithCustomSecret) {
  const std::vector<uint8_t> buf = SanityBuffer();
  const internal::HashFn hash = internal::ActiveKernels().hash;
  for (const Vector& v : kCustomSecretVectors) {
    EXPECT_EQ(FromPair(hash(buf.data(), v.len, buf.data() + 7, 147)), v.hash) << "len " << v.len;
  }
}

TEST_P(HashTest, MatchesLibxxhash) {
  const auto secret = RandomSecret(1);
  const BlockHasher hasher(secret);
  std::vector<uint8_t> data(1 << 20);
  testing::FillRandom(data.data(), data.size(), 2);
  for (size_t len : {0, 1, 17, 240, 241, 1024, 4096, 65536, 65537, 1 << 20}) {
    const XXH128_hash_t want = XXH3_128bits_withSecret(data.data(), len, secret.data(), 192);
    EXPECT_EQ(hasher.Hash(data.data(), len), (Hash128{want.low64, want.high64})) << len;
  }
}

TEST_P(HashTest, SecretChangesHash) {
  std::vector<uint8_t> data(4096, 0x5A);
  for (size_t len : {0, 8, 100, 4096}) {
    EXPECT_NE(BlockHasher(RandomSecret(3)).Hash(data.data(), len),
              BlockHasher(RandomSecret(4)).Hash(data.data(), len));
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, HashTest, ::testing::ValuesIn(testing::kAllLevels),
                         testing::LevelParamName);

class HashVariantTest : public testing::LevelTest {};

TEST_P(HashVariantTest, EveryLengthAndAlignmentMatchesScalar) {
  const auto secret = RandomSecret(5);
  const BlockHasher hasher(secret);
  AlignedBuffer buf(testing::kSweepMaxLen + testing::kSweepAlignments);
  testing::FillRandom(buf.data(), testing::kSweepMaxLen + testing::kSweepAlignments, 6);
  for (size_t align = 0; align < testing::kSweepAlignments; ++align) {
    const uint8_t* data = buf.data() + align;
    for (size_t len = 0; len <= testing::kSweepMaxLen; ++len) {
      const Hash128 want = FromPair(internal::HashScalar(data, len, secret.data(), 192));
      ASSERT_EQ(hasher.Hash(data, len), want) << "align " << align << " len " << len;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, HashVariantTest, ::testing::ValuesIn(testing::kVectorLevels),
                         testing::LevelParamName);

TEST(Hash128Test, BytesAreXxh128Canonical) {
  const Hash128 h{.lo = 0x0123456789ABCDEFULL, .hi = 0xFEDCBA9876543210ULL};
  uint8_t bytes[16];
  h.ToBytes(bytes);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH128_hash_t{h.lo, h.hi});
  EXPECT_EQ(ToHex(bytes, 16), ToHex(canonical.digest, 16));
  EXPECT_EQ(ToHex(bytes, 16), "fedcba98765432100123456789abcdef");
  EXPECT_EQ(Hash128::FromBytes(bytes), h);
}

TEST(Hash128Test, RoundTripsRandomValues) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000; ++i) {
    const Hash128 h{.lo = rng(), .hi = rng()};
    uint8_t bytes[16];
    h.ToBytes(bytes);
    ASSERT_EQ(Hash128::FromBytes(bytes), h);
  }
}

}  // namespace
}  // namespace dp420::simd
