// Parsers of untrusted bytes never crash and always name what was wrong:
// manifests (sealed or re-sealed after random edits), pack footers.
#include <gtest/gtest.h>

#include <random>

#include "engine/core/manifest.h"
#include "engine/core/pack.h"

namespace dp420 {
namespace {

Manifest SampleManifest() {
  Manifest m;
  m.repo_id = std::string(32, 'a');
  m.snapshot_id = "0123456789abcdef";
  m.volume = "vm1";
  m.sequence = 3;
  m.block_size = 65536;
  m.volume_size = 65536ull * 1000;
  m.blocks_total = 1000;
  m.table_levels = 2;
  m.table_root.pack_id = 7;
  m.table_root.flags = kObjTableInner;
  m.checksum_sha256 = std::string(64, 'e');
  return m;
}

SealKey TestKey() {
  std::vector<uint8_t> bytes(192, 7);
  return SealKey::Derive(bytes.data(), bytes.size());
}

TEST(ParseRobustnessTest, EveryTruncationAndByteFlipOfASealedManifestIsRefused) {
  SealKey key = TestKey();
  std::string text = SealJson(SampleManifest().ToJson(), key);
  std::mt19937_64 rng(7);
  for (size_t cut = 0; cut < text.size(); ++cut) {
    EXPECT_FALSE(UnsealJson(text.substr(0, cut), "m", &key).ok()) << cut;
  }
  for (int i = 0; i < 5000; ++i) {
    std::string bad = text;
    bad[rng() % bad.size()] ^= uint8_t(1 + rng() % 255);
    auto j = UnsealJson(bad, "m", &key);
    EXPECT_FALSE(j.ok());
    EXPECT_EQ(j.status().code(), Code::kCorruption);
  }
}

// A hostile writer can re-seal whatever it edits: the fields must still be
// checked (types, consistency), never trusted into a crash.
TEST(ParseRobustnessTest, ResealedRandomEditsParseOrFailCleanly) {
  Json good = SampleManifest().ToJson();
  std::mt19937_64 rng(11);
  std::vector<std::string> keys;
  for (auto it = good.begin(); it != good.end(); ++it) keys.push_back(it.key());
  const Json kValues[] = {nullptr, -1, 0, 1, 4294967296ull, "x", Json::array(), Json::object(),
                          3.5, true, std::string(1000, 'z'), 65536, 1u << 30};
  int parsed = 0;
  SealKey key = TestKey();
  for (int i = 0; i < 20000; ++i) {
    Json doc = good;
    int edits = 1 + int(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const std::string& key = keys[rng() % keys.size()];
      if (rng() % 5 == 0) {
        doc.erase(key);
      } else {
        doc[key] = kValues[rng() % std::size(kValues)];
      }
    }
    auto j = UnsealJson(SealJson(doc, key), "m", &key);
    ASSERT_TRUE(j.ok());
    auto m = Manifest::FromJson(j.value(), "snapshots/vm1/x.manifest");
    if (m.ok()) {
      ++parsed;
      EXPECT_EQ(m->blocks_total, DivCeil(m->volume_size, m->block_size));
      EXPECT_GE(m->block_size, 4096u);
      EXPECT_LE(m->block_size, 4u << 20);
    } else {
      EXPECT_NE(m.status().message().find("snapshots/vm1/x.manifest"), std::string::npos);
    }
  }
  EXPECT_LT(parsed, 20000);
}

TEST(ParseRobustnessTest, RandomFootersAreRejected) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100000; ++i) {
    PackFooter f;
    auto* bytes = reinterpret_cast<uint8_t*>(&f);
    for (size_t b = 0; b < sizeof(f); ++b) bytes[b] = uint8_t(rng());
    if (i % 2) std::memcpy(f.magic, kFooterMagic, 8);
    EXPECT_FALSE(FooterValid(f));
  }
}

}  // namespace
}  // namespace dp420
