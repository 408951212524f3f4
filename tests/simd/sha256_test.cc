// Sha256 and Sha256Stream: FIPS 180-2 known answers, chunked streaming against
// one-shot, reuse after Reset, and the per-thread one-shot context.
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "simd/simd.h"
#include "tests/simd/test_util.h"

namespace dp420::simd {
namespace {

std::string OneShotHex(const std::string& text) {
  uint8_t digest[kSha256Bytes];
  Sha256(reinterpret_cast<const uint8_t*>(text.data()), text.size(), digest);
  return ToHex(digest, kSha256Bytes);
}

std::string StreamHex(Sha256Stream& stream, const uint8_t* data, size_t len, size_t chunk) {
  stream.Reset();
  for (size_t off = 0; off < len; off += chunk) {
    stream.Update(data + off, std::min(chunk, len - off));
  }
  uint8_t digest[kSha256Bytes];
  stream.Final(digest);
  return ToHex(digest, kSha256Bytes);
}

TEST(Sha256Test, KnownAnswers) {
  EXPECT_EQ(OneShotHex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(OneShotHex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(OneShotHex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, MillionAsStreamed) {
  const std::vector<uint8_t> a(1000, 'a');
  Sha256Stream stream;
  for (int i = 0; i < 1000; ++i) stream.Update(a.data(), a.size());
  uint8_t digest[kSha256Bytes];
  stream.Final(digest);
  EXPECT_EQ(ToHex(digest, kSha256Bytes),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, ChunkedStreamMatchesOneShot) {
  std::vector<uint8_t> data(100000);
  testing::FillRandom(data.data(), data.size(), 31);
  uint8_t digest[kSha256Bytes];
  Sha256(data.data(), data.size(), digest);
  const std::string want = ToHex(digest, kSha256Bytes);
  Sha256Stream stream;
  for (size_t chunk : {1, 7, 55, 56, 63, 64, 65, 4096, 65536, 100000, 200000}) {
    EXPECT_EQ(StreamHex(stream, data.data(), data.size(), chunk), want) << "chunk " << chunk;
  }
}

TEST(Sha256Test, EmptyUpdatesAreNoOps) {
  Sha256Stream stream;
  stream.Update(nullptr, 0);
  stream.Update(reinterpret_cast<const uint8_t*>("abc"), 3);
  stream.Update(nullptr, 0);
  uint8_t digest[kSha256Bytes];
  stream.Final(digest);
  EXPECT_EQ(ToHex(digest, kSha256Bytes), OneShotHex("abc"));
}

TEST(Sha256Test, ResetDiscardsPartialInput) {
  Sha256Stream stream;
  stream.Update(reinterpret_cast<const uint8_t*>("garbage"), 7);
  stream.Reset();
  stream.Update(reinterpret_cast<const uint8_t*>("abc"), 3);
  uint8_t digest[kSha256Bytes];
  stream.Final(digest);
  EXPECT_EQ(ToHex(digest, kSha256Bytes), OneShotHex("abc"));
}

TEST(Sha256Test, OneShotFromSeveralThreads) {
  const std::string want = OneShotHex("abc");
  std::vector<std::string> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&got, t] {
      for (int i = 0; i < 100; ++i) got[t] = OneShotHex("abc");
    });
  }
  for (std::thread& th : threads) th.join();
  for (const std::string& g : got) EXPECT_EQ(g, want);
}

}  // namespace
}  // namespace dp420::simd
