// Level detection and forcing: DetectedLevel agrees with CPUID, ForceLevel
// clamps to it and hands back the previous level.
#include "simd/simd.h"
#include "simd/variants.h"
#include "tests/simd/test_util.h"

namespace dp420::simd {
namespace {

TEST(DispatchTest, DetectedLevelMatchesCpuid) {
  Level want = Level::kSse2;
  if (__builtin_cpu_supports("avx2")) want = Level::kAvx2;
  if (__builtin_cpu_supports("avx512f")) want = Level::kAvx512;
  EXPECT_EQ(DetectedLevel(), want);
  EXPECT_EQ(ActiveLevel(), DetectedLevel());
}

TEST(DispatchTest, ForceLevelReturnsPreviousAndClamps) {
  const Level detected = DetectedLevel();
  EXPECT_EQ(ForceLevel(Level::kScalar), detected);
  EXPECT_EQ(ActiveLevel(), Level::kScalar);
  EXPECT_EQ(ForceLevel(Level::kAvx512), Level::kScalar);
  EXPECT_EQ(ActiveLevel(), detected);  // never above what the CPU has
  EXPECT_EQ(ForceLevel(detected), detected);
}

// Each level runs the variant named for it, so a forced level really
// exercises that variant in the other tests.
TEST(DispatchTest, LevelsSelectTheirVariants) {
  struct Row {
    Level level;
    internal::HashFn hash;
    internal::IsZeroFn is_zero;
    internal::Crc32cFn crc32c;
  };
  const Row rows[] = {
      {Level::kScalar, internal::HashScalar, internal::IsZeroScalar, internal::Crc32cScalar},
      {Level::kSse2, internal::HashSse2, internal::IsZeroIsal, internal::Crc32cIsal},
      {Level::kAvx2, internal::HashAvx2, internal::IsZeroIsal, internal::Crc32cIsal},
      {Level::kAvx512, internal::HashAvx512, internal::IsZeroIsal, internal::Crc32cIsal},
  };
  const Level previous = ActiveLevel();
  for (const Row& row : rows) {
    if (row.level > DetectedLevel()) continue;
    ForceLevel(row.level);
    EXPECT_EQ(internal::ActiveKernels().hash, row.hash) << LevelName(row.level);
    EXPECT_EQ(internal::ActiveKernels().is_zero, row.is_zero) << LevelName(row.level);
    EXPECT_EQ(internal::ActiveKernels().crc32c, row.crc32c) << LevelName(row.level);
  }
  ForceLevel(previous);
}

TEST(DispatchTest, LevelNames) {
  EXPECT_STREQ(LevelName(Level::kScalar), "scalar");
  EXPECT_STREQ(LevelName(Level::kSse2), "sse2");
  EXPECT_STREQ(LevelName(Level::kAvx2), "avx2");
  EXPECT_STREQ(LevelName(Level::kAvx512), "avx512");
}

}  // namespace
}  // namespace dp420::simd
