// Micro-benchmarks of engine/crypto/ on one thread:
//
//   Seal/SIZE, Open/SIZE     RecordSealer::SealRecord / OpenRecord of 4 KiB, 64 KiB and
//                            1 MiB records under one record key (cached), warm buffers,
//                            a random nonce per seal; bytes/s of plaintext
//   Seal/4KiB/new-key        the same with a key id the sealer has not seen on every
//                            record: the record key's derivation and key schedule included
//   DeriveRecordKey          one record key (HKDF-SHA-256)
//   SealFile/4KiB            a 4 KiB manifest sealed as a small file (salt, key, GCM)
//   UnwrapPassphrase/default a passphrase key slot opened at the default scrypt
//                            parameters (N = 2^17, r = 8, p = 1: 128 MiB)
//   UnwrapKeyFile            a key-file slot opened
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/crypto/aead.h"
#include "engine/crypto/keys.h"
#include "engine/crypto/keyslot.h"

namespace dp420::crypto {
namespace {

constexpr size_t kRecordSizes[] = {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20};

const RepoId kRepo = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

std::vector<uint8_t> Random(size_t len) {
  std::vector<uint8_t> out(len + 8);
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  bench::FillPseudoRandom(&state, out.data(), out.size());
  out.resize(len);
  return out;
}

const SecretKey& ObjectKey() {
  static const SecretKey key = [] {
    SecretKey k;
    const std::vector<uint8_t> bytes = Random(32);
    std::copy(bytes.begin(), bytes.end(), k.data());
    return k;
  }();
  return key;
}

RecordId IdFor(size_t len, uint16_t key_id) {
  RecordId id;
  id.key_id = key_id;
  id.kind = ObjectKind::kDataBlock;
  id.raw_len = static_cast<uint32_t>(len);
  id.plain_len_bytes = static_cast<uint32_t>(len);
  return id;
}

std::string SizeName(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return std::to_string(bytes >> 20) + "MiB";
  return std::to_string(bytes >> 10) + "KiB";
}

void BM_Seal(benchmark::State& state, size_t len, bool new_key) {
  RecordSealer sealer(ObjectKey(), kRepo);
  const std::vector<uint8_t> plain = Random(len);
  std::vector<uint8_t> out(len + kRecordOverheadBytes);
  RecordId id = IdFor(len, 1);
  for (auto _ : state) {
    if (new_key) id.key_id = static_cast<uint16_t>(id.key_id % 65535 + 1);
    Status s = sealer.SealRecord(id, plain, out);
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(len));
}

void BM_Open(benchmark::State& state, size_t len) {
  RecordSealer sealer(ObjectKey(), kRepo);
  const std::vector<uint8_t> plain = Random(len);
  std::vector<uint8_t> sealed(len + kRecordOverheadBytes);
  std::vector<uint8_t> out(len);
  const RecordId id = IdFor(len, 1);
  if (!sealer.SealRecord(id, plain, sealed).ok()) state.SkipWithError("seal failed");
  for (auto _ : state) {
    Status s = sealer.OpenRecord(id, sealed, out);
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(len));
}

void BM_DeriveRecordKey(benchmark::State& state) {
  SecretKey key;
  uint16_t key_id = 0;
  for (auto _ : state) {
    key_id = static_cast<uint16_t>(key_id % 65535 + 1);
    Status s = DeriveRecordKey(ObjectKey(), kRepo, key_id, &key);
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(key.data());
  }
}

void BM_SealFile(benchmark::State& state) {
  const std::vector<uint8_t> bytes = Random(4096);
  const std::string plain(bytes.begin(), bytes.end());
  for (auto _ : state) {
    auto sealed = SealFile(ObjectKey(), kRepo, FileKind::kManifest, "vol/0000000001-0", plain);
    if (!sealed.ok()) state.SkipWithError(sealed.status().ToString().c_str());
    benchmark::DoNotOptimize(sealed->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 4096);
}

MasterKey BenchMaster() {
  const std::vector<uint8_t> bytes = Random(32);
  return MasterKey::FromBytes(std::span<const uint8_t, 32>(bytes.data(), 32));
}

void BM_UnwrapPassphrase(benchmark::State& state) {
  auto slot = WrapWithPassphrase(BenchMaster(), kRepo, 1, "bench passphrase", kDefaultScrypt);
  if (!slot.ok()) {
    state.SkipWithError(slot.status().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    auto master = UnwrapWithPassphrase(*slot, kRepo, "bench passphrase");
    if (!master.ok()) state.SkipWithError(master.status().ToString().c_str());
  }
  state.SetLabel("N=2^17 r=8 p=1, " +
                 std::to_string(ScryptMemoryBytes(kDefaultScrypt) >> 20) + " MiB");
}

void BM_UnwrapKeyFile(benchmark::State& state) {
  auto slot = WrapWithKeyFile(BenchMaster(), kRepo, 1, ObjectKey());
  if (!slot.ok()) {
    state.SkipWithError(slot.status().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    auto master = UnwrapWithKeyFile(*slot, kRepo, ObjectKey());
    if (!master.ok()) state.SkipWithError(master.status().ToString().c_str());
  }
}

void RegisterAll() {
  for (size_t len : kRecordSizes) {
    benchmark::RegisterBenchmark(("Seal/" + SizeName(len)).c_str(), BM_Seal, len, false);
  }
  for (size_t len : kRecordSizes) {
    benchmark::RegisterBenchmark(("Open/" + SizeName(len)).c_str(), BM_Open, len);
  }
  benchmark::RegisterBenchmark("Seal/4KiB/new-key", BM_Seal, size_t{4096}, true);
  benchmark::RegisterBenchmark("DeriveRecordKey", BM_DeriveRecordKey);
  benchmark::RegisterBenchmark("SealFile/4KiB", BM_SealFile);
  benchmark::RegisterBenchmark("UnwrapPassphrase/default", BM_UnwrapPassphrase)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(5);
  benchmark::RegisterBenchmark("UnwrapKeyFile", BM_UnwrapKeyFile);
}

}  // namespace
}  // namespace dp420::crypto

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  dp420::crypto::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
