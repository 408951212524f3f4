// Wire frames and client authentication (the building blocks of the
// repository server's protocol, docs/PROTOCOL.md).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <random>

#include "engine/net/auth.h"
#include "engine/net/frame.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"

namespace dp420::net {
namespace {

using dp420::testing::TempDir;

std::vector<uint8_t> Encode(FrameType type, const std::vector<uint8_t>& payload) {
  FrameHeader h = MakeHeader(type, 42, payload);
  std::vector<uint8_t> out(sizeof(h));
  std::memcpy(out.data(), &h, sizeof(h));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Status Decode(const std::vector<uint8_t>& wire) {
  if (wire.size() < sizeof(FrameHeader)) return Status::Corruption("short");
  FrameHeader h;
  std::memcpy(&h, wire.data(), sizeof(h));
  DP420_RETURN_IF_ERROR(CheckHeader(h));
  return CheckPayload(h, {wire.data() + sizeof(h), wire.size() - sizeof(h)});
}

TEST(FrameTest, RoundTripAndEveryFlippedBitIsCaught) {
  PayloadWriter w;
  w.U16(7);
  w.String("db1");
  w.U64(1234567890123ull);
  auto wire = Encode(FrameType::kHello, w.bytes());
  ASSERT_TRUE(Decode(wire).ok());
  for (size_t bit = 0; bit < wire.size() * 8; ++bit) {
    auto bad = wire;
    bad[bit / 8] ^= uint8_t(1u << (bit % 8));
    EXPECT_FALSE(Decode(bad).ok()) << "bit " << bit;
  }
  PayloadReader r({wire.data() + sizeof(FrameHeader), wire.size() - sizeof(FrameHeader)});
  EXPECT_EQ(r.U16(), 7);
  EXPECT_EQ(r.String(64), "db1");
  EXPECT_EQ(r.U64(), 1234567890123ull);
  EXPECT_TRUE(r.Finish("hello").ok());
}

TEST(FrameTest, OversizedUnknownAndForeignFramesRefusedWithReason) {
  FrameHeader unknown = MakeHeader(static_cast<FrameType>(99), 0, {});
  Status s = CheckHeader(unknown);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("unknown frame type 99"), std::string::npos);

  // A correct header CRC over an oversized length: refused for its size,
  // before anything is allocated for the payload.
  FrameHeader big = MakeHeader(FrameType::kPing, 0, {});
  big.payload_len = kMaxPayloadBytes + 1;
  big.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&big), 28);
  s = CheckHeader(big);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("exceeds the limit"), std::string::npos);

  FrameHeader newer = MakeHeader(FrameType::kPing, 0, {});
  newer.version = 2;
  newer.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&newer), 28);
  EXPECT_EQ(CheckHeader(newer).code(), Code::kVersion);

  std::vector<uint8_t> http(sizeof(FrameHeader), ' ');
  std::memcpy(http.data(), "GET / HTTP/1.1\r\n", 16);
  FrameHeader foreign;
  std::memcpy(&foreign, http.data(), sizeof(foreign));
  EXPECT_NE(CheckHeader(foreign).message().find("bad magic"), std::string::npos);
}

TEST(FrameTest, RandomGarbageNeverPassesAndReaderNeverOverruns) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> wire(sizeof(FrameHeader) + rng() % 64);
    for (auto& b : wire) b = uint8_t(rng());
    EXPECT_FALSE(Decode(wire).ok());
    // The reader never reads past the end, honours each field's maximum, and
    // after the first overrun returns zero/empty and stays failed.
    PayloadReader r(wire);
    std::string s = r.String(16);
    EXPECT_LE(s.size(), 16u);
    uint64_t v = r.U64();
    if (!r.ok()) {
      EXPECT_EQ(v, 0u);
      EXPECT_TRUE(r.String(1 << 20).empty());
      EXPECT_FALSE(r.ok());
      EXPECT_FALSE(r.Finish("x").ok());
    }
  }
}

TEST(AuthTest, ProofsBindKeyNameNoncesAndSide) {
  uint8_t key[kKeyBytes], other[kKeyBytes], cn[kNonceBytes], sn[kNonceBytes];
  ASSERT_TRUE(RandomNonce(key, sizeof(key)).ok());
  ASSERT_TRUE(RandomNonce(other, sizeof(other)).ok());
  ASSERT_TRUE(RandomNonce(cn, sizeof(cn)).ok());
  ASSERT_TRUE(RandomNonce(sn, sizeof(sn)).ok());
  uint8_t a[kProofBytes], b[kProofBytes];
  ComputeProof(key, ProofSide::kClient, "db1", cn, sn, a);
  ComputeProof(key, ProofSide::kClient, "db1", cn, sn, b);
  EXPECT_TRUE(ProofsEqual(a, b));
  ComputeProof(other, ProofSide::kClient, "db1", cn, sn, b);
  EXPECT_FALSE(ProofsEqual(a, b));
  ComputeProof(key, ProofSide::kServer, "db1", cn, sn, b);
  EXPECT_FALSE(ProofsEqual(a, b));
  ComputeProof(key, ProofSide::kClient, "db2", cn, sn, b);
  EXPECT_FALSE(ProofsEqual(a, b));
  ComputeProof(key, ProofSide::kClient, "db1", sn, cn, b);
  EXPECT_FALSE(ProofsEqual(a, b));
}

TEST(AuthTest, ProofKnownAnswer) {
  // HMAC-SHA-256 over the message docs/PROTOCOL.md specifies, computed
  // independently (Python's hmac module) for this key, name and nonces.
  uint8_t key[kKeyBytes] = {};
  std::memset(key, 0x0b, 20);
  uint8_t cn[kNonceBytes], sn[kNonceBytes];
  for (int i = 0; i < 32; ++i) {
    cn[i] = uint8_t(i);
    sn[i] = uint8_t(32 + i);
  }
  uint8_t proof[kProofBytes];
  ComputeProof(key, ProofSide::kClient, "db1", cn, sn, proof);
  EXPECT_EQ(simd::ToHex(proof, kProofBytes),
            "4807c08d637806d4334953168a369aef02959367ef7cc7961e77d683752986ee");
}

TEST(AuthTest, RegistryAndKeyFiles) {
  TempDir dir;
  std::string clients = dir.path() + "/clients.json";
  EXPECT_EQ(ClientRegistry::Load("relative/clients.json").status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(ClientRegistry::Load(clients).status().code(), Code::kNotFound);
  ClientRegistry reg;
  auto db1 = reg.Add("db1", "append");
  ASSERT_TRUE(db1.ok());
  EXPECT_EQ(reg.Add("db1", "append").status().code(), Code::kExists);
  EXPECT_EQ(reg.Add("../x", "append").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(reg.Add("ops", "root").status().code(), Code::kInvalidArgument);
  ASSERT_TRUE(reg.Add("ops", "admin").ok());
  ASSERT_TRUE(reg.Save(clients).ok());
  struct stat st;
  ASSERT_EQ(stat(clients.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto loaded = ClientRegistry::Load(clients);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_NE(loaded->Find("db1"), nullptr);
  EXPECT_EQ(std::memcmp(loaded->Find("db1")->key, db1->key, kKeyBytes), 0);
  EXPECT_EQ(loaded->Find("ops")->role, "admin");
  ASSERT_TRUE(loaded->Remove("ops").ok());
  EXPECT_EQ(loaded->Remove("ops").code(), Code::kNotFound);

  std::string keyfile = dir.path() + "/db1.key";
  ASSERT_TRUE(WriteKeyFile(keyfile, db1->key).ok());
  EXPECT_EQ(WriteKeyFile(keyfile, db1->key).code(), Code::kExists);
  uint8_t back[kKeyBytes];
  ASSERT_TRUE(ReadKeyFile(keyfile, back).ok());
  EXPECT_EQ(std::memcmp(back, db1->key, kKeyBytes), 0);
  chmod(keyfile.c_str(), 0644);
  Status open_key = ReadKeyFile(keyfile, back);
  EXPECT_EQ(open_key.code(), Code::kPermission);
  EXPECT_NE(open_key.message().find("644"), std::string::npos);

  // An edited clients file is refused, naming the file.
  auto text = dp420::testing::ReadAll(clients);
  text[20] ^= 1;
  dp420::testing::WriteAll(clients, text);
  Status damaged = ClientRegistry::Load(clients).status();
  EXPECT_EQ(damaged.code(), Code::kCorruption);
  EXPECT_NE(damaged.message().find(clients), std::string::npos);
}

}  // namespace
}  // namespace dp420::net
