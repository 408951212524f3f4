// Wire frames and client authentication (the building blocks of the
// repository server's protocol, docs/PROTOCOL.md).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "engine/net/auth.h"
#include "engine/net/channel.h"
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
  newer.version = kProtocolVersion + 1;
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

// ---- The channel (channel.h) ----

struct SealedFrame {
  FrameHeader header;
  std::vector<uint8_t> payload;  // ciphertext, then the tag
};

SealedFrame Seal(FrameCipher& c, FrameType type, const std::vector<uint8_t>& plain) {
  SealedFrame f;
  f.header = MakeSealedHeader(type, 7, uint32_t(plain.size() + kTagBytes));
  f.payload.resize(plain.size() + kTagBytes);
  c.Begin(f.header);
  // In two pieces, as the agent seals a BLOCKS frame.
  size_t half = plain.size() / 2;
  c.Update(plain.data(), f.payload.data(), half);
  c.Update(plain.data() + half, f.payload.data() + half, plain.size() - half);
  c.Seal(f.payload.data() + plain.size());
  return f;
}

bool Open(FrameCipher& c, SealedFrame f, std::vector<uint8_t>* plain) {
  size_t len = f.payload.size() - kTagBytes;
  c.Begin(f.header);
  c.Update(f.payload.data(), f.payload.data(), len);
  bool ok = c.Open(f.payload.data() + len);
  plain->assign(f.payload.begin(), f.payload.begin() + long(len));
  return ok;
}

SessionKeys TestKeys() {
  SecretKey shared;
  uint8_t client_key[32], transcript[32];
  EXPECT_TRUE(RandomNonce(shared.data(), 32).ok());
  EXPECT_TRUE(RandomNonce(client_key, 32).ok());
  EXPECT_TRUE(RandomNonce(transcript, 32).ok());
  SessionKeys keys;
  DeriveSessionKeys(shared, client_key, transcript, &keys);
  return keys;
}

TEST(ChannelTest, SealedFramesOpenOnlyUnalteredInOrderAndInTheirDirection) {
  SessionKeys keys = TestKeys();
  EXPECT_NE(std::memcmp(keys.agent_to_server.data(), keys.server_to_agent.data(), 32), 0);
  FrameCipher send(keys.agent_to_server, ChannelDir::kAgentToServer, true);
  std::vector<uint8_t> plain(1000);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = uint8_t(i * 7);
  SealedFrame first = Seal(send, FrameType::kBlocks, plain);
  SealedFrame second = Seal(send, FrameType::kPage, plain);
  EXPECT_NE(first.payload, second.payload);  // a fresh nonce per frame
  EXPECT_EQ(std::search(first.payload.begin(), first.payload.end(), plain.begin(),
                        plain.begin() + 32),
            first.payload.end());  // nothing of the plaintext shows

  std::vector<uint8_t> out;
  {
    FrameCipher recv(keys.agent_to_server, ChannelDir::kAgentToServer, false);
    ASSERT_TRUE(Open(recv, first, &out));
    EXPECT_EQ(out, plain);
    ASSERT_TRUE(Open(recv, second, &out));
  }
  {
    // Replayed: the first frame again where the second is due.
    FrameCipher recv(keys.agent_to_server, ChannelDir::kAgentToServer, false);
    ASSERT_TRUE(Open(recv, first, &out));
    EXPECT_FALSE(Open(recv, first, &out));
  }
  {
    // Dropped: the second frame where the first is due.
    FrameCipher recv(keys.agent_to_server, ChannelDir::kAgentToServer, false);
    EXPECT_FALSE(Open(recv, second, &out));
  }
  {
    // Reflected: the same key and counter, but the other direction's nonce.
    FrameCipher recv(keys.agent_to_server, ChannelDir::kServerToAgent, false);
    EXPECT_FALSE(Open(recv, first, &out));
  }
  {
    FrameCipher recv(keys.server_to_agent, ChannelDir::kAgentToServer, false);
    EXPECT_FALSE(Open(recv, first, &out));  // another connection's keys
  }
  // Every flipped bit of the header (associated data), ciphertext or tag.
  for (size_t bit = 0; bit < (sizeof(FrameHeader) + first.payload.size()) * 8; bit += 7) {
    SealedFrame bad = first;
    size_t byte = bit / 8;
    uint8_t mask = uint8_t(1u << (bit % 8));
    if (byte < sizeof(FrameHeader)) {
      reinterpret_cast<uint8_t*>(&bad.header)[byte] ^= mask;
    } else {
      bad.payload[byte - sizeof(FrameHeader)] ^= mask;
    }
    FrameCipher recv(keys.agent_to_server, ChannelDir::kAgentToServer, false);
    EXPECT_FALSE(Open(recv, bad, &out)) << "bit " << bit;
  }
}

TEST(ChannelTest, IdentitySignsAndItsFingerprintIsStable) {
  auto id = ServerIdentity::Generate();
  ASSERT_TRUE(id.ok());
  auto again = ServerIdentity::FromSeed(id->seed().data());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->FingerprintHex(), id->FingerprintHex());
  EXPECT_EQ(id->FingerprintHex().size(), 64u);
  std::vector<uint8_t> msg = {1, 2, 3, 4};
  uint8_t sig[kSignatureBytes];
  ASSERT_TRUE(id->Sign(msg, sig).ok());
  EXPECT_TRUE(VerifySignature(id->public_key(), msg, sig));
  msg[0] ^= 1;
  EXPECT_FALSE(VerifySignature(id->public_key(), msg, sig));
  auto other = ServerIdentity::Generate();
  ASSERT_TRUE(other.ok());
  msg[0] ^= 1;
  EXPECT_FALSE(VerifySignature(other->public_key(), msg, sig));
}

TEST(ChannelTest, KeyExchangeAgreesAndRefusesALowOrderPoint) {
  auto a = Ephemeral::Generate();
  auto b = Ephemeral::Generate();
  ASSERT_TRUE(a.ok() && b.ok());
  SecretKey ab, ba;
  ASSERT_TRUE(a->Agree(b->public_key(), &ab).ok());
  ASSERT_TRUE(b->Agree(a->public_key(), &ba).ok());
  EXPECT_EQ(std::memcmp(ab.data(), ba.data(), 32), 0);
  uint8_t zero[kEphemeralBytes] = {};  // a low-order point: the shared secret would be 0
  EXPECT_EQ(a->Agree(zero, &ab).code(), Code::kPermission);
}

TEST(AuthTest, ProofsBindKeyTranscriptAndSide) {
  uint8_t key[kKeyBytes], other[kKeyBytes], t1[32], t2[32];
  ASSERT_TRUE(RandomNonce(key, sizeof(key)).ok());
  ASSERT_TRUE(RandomNonce(other, sizeof(other)).ok());
  ASSERT_TRUE(RandomNonce(t1, sizeof(t1)).ok());
  ASSERT_TRUE(RandomNonce(t2, sizeof(t2)).ok());
  uint8_t a[kProofBytes], b[kProofBytes];
  ComputeProof(key, ProofSide::kClient, t1, a);
  ComputeProof(key, ProofSide::kClient, t1, b);
  EXPECT_TRUE(ProofsEqual(a, b));
  ComputeProof(other, ProofSide::kClient, t1, b);
  EXPECT_FALSE(ProofsEqual(a, b));
  ComputeProof(key, ProofSide::kServer, t1, b);
  EXPECT_FALSE(ProofsEqual(a, b));
  ComputeProof(key, ProofSide::kClient, t2, b);
  EXPECT_FALSE(ProofsEqual(a, b));
}

TEST(AuthTest, ProofKnownAnswer) {
  // HMAC-SHA-256(key, "dp420-auth-v2" || 'C' || transcript hash), computed
  // independently (Python's hmac module) for this key and transcript.
  uint8_t key[kKeyBytes] = {};
  std::memset(key, 0x0b, 20);
  uint8_t transcript[32];
  for (int i = 0; i < 32; ++i) transcript[i] = uint8_t(i);
  uint8_t proof[kProofBytes];
  ComputeProof(key, ProofSide::kClient, transcript, proof);
  EXPECT_EQ(simd::ToHex(proof, kProofBytes), "9a03f856da5243b6405d22efa93dc3d912278076f48b737fbd74750ca058600c");
}

// The VmFlags of the mapping of this process that holds `p` (/proc/self/smaps);
// "" when none does.
std::string VmFlagsAt(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 17) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// A client's key, loaded from the clients file or copied, lives on a page
// that core dumps leave out (the "dd" flag of MADV_DONTDUMP).
TEST(AuthTest, ClientKeysAreNeverDumped) {
  TempDir dir;
  std::string clients = dir.path() + "/clients.json";
  ClientRegistry reg;
  ASSERT_TRUE(reg.Add("db1", "append").ok());
  ASSERT_TRUE(reg.Save(clients).ok());
  auto loaded = ClientRegistry::Load(clients);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const ClientKey* key = loaded->Find("db1");
  ASSERT_NE(key, nullptr);
  ClientKey copy = *key;
  for (const ClientKey* k : {key, static_cast<const ClientKey*>(&copy)}) {
    std::string flags = VmFlagsAt(k->key.data());
    ASSERT_FALSE(flags.empty()) << "no mapping holds the key";
    EXPECT_NE((flags + " ").find(" dd "), std::string::npos) << flags;
  }
  EXPECT_NE(copy.key.data(), key->key.data()) << "a copy has its own page";
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
  EXPECT_EQ(std::memcmp(loaded->Find("db1")->key.data(), db1->key.data(), kKeyBytes), 0);
  EXPECT_EQ(loaded->Find("ops")->role, "admin");
  ASSERT_TRUE(loaded->Remove("ops").ok());
  EXPECT_EQ(loaded->Remove("ops").code(), Code::kNotFound);

  std::string keyfile = dir.path() + "/db1.key";
  const std::string pin(64, 'a');
  ASSERT_TRUE(WriteKeyFile(keyfile, db1->key.data(), pin).ok());
  EXPECT_EQ(WriteKeyFile(keyfile, db1->key.data(), pin).code(), Code::kExists);
  uint8_t back[kKeyBytes], server_id[kFingerprintBytes];
  ASSERT_TRUE(ReadKeyFile(keyfile, back, server_id).ok());
  EXPECT_EQ(std::memcmp(back, db1->key.data(), kKeyBytes), 0);
  EXPECT_EQ(simd::ToHex(server_id, kFingerprintBytes), pin);
  // A key file that pins no server (as written before identities) is refused
  // with the way to add the pin.
  std::string unpinned = dir.path() + "/unpinned.key";
  std::string line = simd::ToHex(db1->key.data(), kKeyBytes) + "\n";
  dp420::testing::WriteAll(unpinned, std::vector<uint8_t>(line.begin(), line.end()));
  chmod(unpinned.c_str(), 0600);
  Status no_pin = ReadKeyFile(unpinned, back, server_id);
  EXPECT_EQ(no_pin.code(), Code::kInvalidArgument);
  EXPECT_NE(no_pin.message().find("server-id"), std::string::npos);
  chmod(keyfile.c_str(), 0644);
  Status open_key = ReadKeyFile(keyfile, back, server_id);
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
