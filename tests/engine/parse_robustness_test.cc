// Parsers of untrusted bytes never crash and always name what was wrong:
// manifests (sealed or re-sealed after random edits), pack footers.
#include <gtest/gtest.h>

#include <random>

#include "engine/core/history.h"
#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/net/auth.h"

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

// Found by fuzz_manifest: an integer field holding 1.8e50 reached nlohmann's
// get<uint64_t>(), a floating-point conversion out of range (undefined
// behaviour); 4096.5 was truncated and -1 wrapped, both accepted.
TEST(ParseRobustnessTest, IntegerFieldsRefuseFloatsNegativesAndOverflow) {
  const Json good = SampleManifest().ToJson();
  ASSERT_TRUE(Manifest::FromJson(good, "m").ok());
  const std::vector<std::vector<std::string>> fields = {
      {"format_version"}, {"sequence"},      {"created_unix_ns"}, {"block_size"},
      {"volume_size"},    {"blocks_total"},  {"blocks_changed"},  {"blocks_zero"},
      {"blocks_stored"},  {"bytes_written"}, {"bytes_read"},      {"table", "levels"},
      {"table", "root", "offset_4k"},        {"table", "root", "stored_len"},
      {"table", "root", "flags"},            {"table", "root", "key_id"}};
  const Json bad_values[] = {1.79622e+50, 4096.5, -1, 65536.0};
  for (const auto& path : fields) {
    for (const Json& bad : bad_values) {
      Json j = good;
      Json* at = &j;
      for (const auto& key : path) at = &(*at)[key];
      *at = bad;
      auto m = Manifest::FromJson(j, "m");
      ASSERT_FALSE(m.ok()) << path.back() << " = " << bad.dump();
      EXPECT_EQ(m.status().code(), Code::kCorruption);
    }
  }
  Json signed_ok = good;  // built in memory: a signed integer, accepted when not negative
  signed_ok["sequence"] = int64_t{3};
  EXPECT_TRUE(Manifest::FromJson(signed_ok, "m").ok());
  Json narrow = good;
  narrow["table"]["root"]["flags"] = 65536;  // past uint16_t: was truncated to 0
  EXPECT_FALSE(Manifest::FromJson(narrow, "m").ok());
}

// Found while fixing the above: DivCeil wrapped for a volume_size near 2^64,
// so blocks_total 0 agreed with it.
TEST(ParseRobustnessTest, VolumeSizeNearTwoToThe64IsNotZeroBlocks) {
  EXPECT_EQ(DivCeil(UINT64_MAX, 4096), uint64_t{1} << 52);
  Json j = SampleManifest().ToJson();
  j["volume_size"] = UINT64_MAX;
  j["blocks_total"] = 0;
  j["table"]["levels"] = 1;
  EXPECT_FALSE(Manifest::FromJson(j, "m").ok());
}

TEST(ParseRobustnessTest, PackNamesMustBeEightHexDigits) {
  Json j = SampleManifest().ToJson();
  for (const char* bad : {"100000007", "7", "-7", "0000007x", "0x000007"}) {
    j["table"]["root"]["pack"] = bad;
    EXPECT_FALSE(Manifest::FromJson(j, "m").ok()) << bad;
  }
  j["table"]["root"]["pack"] = "00000007";
  EXPECT_TRUE(Manifest::FromJson(j, "m").ok());
}

// Heads and the clients file read their integers the same way.
TEST(ParseRobustnessTest, HeadAndClientsFileRefuseFloatingPointIntegers) {
  Json head = {{"format", "dp420-head"},      {"format_version", 2},
               {"repo_id", std::string(32, 'a')}, {"volume", "vm1"},
               {"generation", 1e300},          {"sequence", 1},
               {"snapshot_id", nullptr},       {"manifest_seal", nullptr}};
  SealKey key = TestKey();
  auto h = ParseHead(SealJson(head, key), std::string(32, 'a'), "vm1", "HEAD", &key);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Code::kCorruption);
  head["generation"] = 2;
  EXPECT_TRUE(ParseHead(SealJson(head, key), std::string(32, 'a'), "vm1", "HEAD", &key).ok());
  Json clients = {{"format", "dp420-clients"}, {"format_version", 1e300},
                  {"clients", Json::array()}};
  auto reg = net::ClientRegistry::Parse(SealJsonPlain(clients), "/clients");
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), Code::kCorruption);
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
