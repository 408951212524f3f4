// Records of format 3 as a hostile repository may present them:
// RecordCodec::Decode of any stored bytes under any reference (flags, stored
// length, key id, SHA-256) and raw length, with and without encryption. It must
// return an error or exactly the raw bytes the reference names, never crash,
// assert or write outside the raw buffer.
//
// Input: byte 0 = which codec (bit 0: sealed), bytes 1-2 = flags, 3-4 = key id,
// 5-7 = raw length (1 .. 256 KiB), 8-39 = SHA-256, the rest = stored bytes.
#include <cstring>
#include <memory>
#include <vector>

#include "engine/core/record.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const dp420::crypto::RepoId kRepo = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

dp420::RecordCodec* Codec(bool sealed) {
  static dp420::crypto::SecretKey key;
  static std::unique_ptr<dp420::RecordCodec> plain =
      std::move(dp420::RecordCodec::Create(nullptr, kRepo, {})).value();
  static std::unique_ptr<dp420::RecordCodec> enc =
      std::move(dp420::RecordCodec::Create(&key, kRepo, {})).value();
  return sealed ? enc.get() : plain.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 40) return 0;
  dp420::ObjRef ref{};
  std::memcpy(&ref.flags, data + 1, 2);
  std::memcpy(&ref.key_id, data + 3, 2);
  uint32_t raw_len = (uint32_t{data[5]} | uint32_t{data[6]} << 8 | uint32_t{data[7]} << 16) %
                         (256u << 10) + 1;
  std::memcpy(ref.sha256, data + 8, 32);
  const uint8_t* stored = data + 40;
  ref.stored_len = static_cast<uint32_t>(size - 40);
  ref.pack_id = 1;
  ref.offset_4k = 1;
  // As every reader does before it decodes: a stored length the object's
  // encoding cannot take is refused first.
  if (!dp420::StoredLengthFits(ref, raw_len)) return 0;
  std::vector<uint8_t> raw(raw_len, 0xee);
  (void)Codec(data[0] & 1)->Decode(ref, stored, raw);
  return 0;
}
