#include "engine/net/frame.h"

#include <cstring>

#include "simd/simd.h"

namespace dp420::net {

FrameHeader MakeHeaderWithCrc(FrameType type, uint64_t request_id, uint32_t payload_len,
                              uint32_t payload_crc32c) {
  FrameHeader h{};
  h.magic = kFrameMagic;
  h.version = kProtocolVersion;
  h.type = static_cast<uint16_t>(type);
  h.payload_len = payload_len;
  h.payload_crc32c = payload_crc32c;
  h.request_id = request_id;
  h.flags = 0;
  h.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 28);
  return h;
}

FrameHeader MakeSealedHeader(FrameType type, uint64_t request_id, uint32_t sealed_len) {
  FrameHeader h = MakeHeaderWithCrc(type, request_id, sealed_len, 0);
  h.flags = kFlagSealed;
  h.header_crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 28);
  return h;
}

FrameHeader MakeHeader(FrameType type, uint64_t request_id, std::span<const uint8_t> payload) {
  return MakeHeaderWithCrc(type, request_id, static_cast<uint32_t>(payload.size()),
                           simd::Crc32c(0, payload.data(), payload.size()));
}

Status CheckHeader(const FrameHeader& h) {
  if (h.magic != kFrameMagic) return Status::Corruption("not a dp420 frame (bad magic)");
  if (simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&h), 28) != h.header_crc32c) {
    return Status::Corruption("frame header fails its CRC-32C");
  }
  if (h.version != kProtocolVersion) {
    return Status::Version("peer speaks protocol version " + std::to_string(h.version) +
                           "; this dp420 speaks " + std::to_string(kProtocolVersion));
  }
  if (h.type == 0 || h.type > static_cast<uint16_t>(FrameType::kMaxType)) {
    return Status::Corruption("unknown frame type " + std::to_string(h.type));
  }
  if (h.payload_len > kMaxPayloadBytes) {
    return Status::Corruption("frame payload of " + std::to_string(h.payload_len) +
                              " bytes exceeds the limit of " + std::to_string(kMaxPayloadBytes));
  }
  if ((h.flags & ~kFlagSealed) != 0) return Status::Corruption("unknown frame flags");
  if (IsSealed(h) && (h.payload_len < 16 || h.payload_crc32c != 0)) {
    return Status::Corruption("sealed frame too short for its tag");
  }
  return Status::Ok();
}

Status CheckPayload(const FrameHeader& h, std::span<const uint8_t> payload) {
  if (payload.size() != h.payload_len) return Status::Corruption("frame payload length mismatch");
  if (simd::Crc32c(0, payload.data(), payload.size()) != h.payload_crc32c) {
    return Status::Corruption("frame payload fails its CRC-32C");
  }
  return Status::Ok();
}

void PayloadWriter::U16(uint16_t v) { Bytes({reinterpret_cast<const uint8_t*>(&v), 2}); }
void PayloadWriter::U32(uint32_t v) { Bytes({reinterpret_cast<const uint8_t*>(&v), 4}); }
void PayloadWriter::U64(uint64_t v) { Bytes({reinterpret_cast<const uint8_t*>(&v), 8}); }

void PayloadWriter::Bytes(std::span<const uint8_t> v) {
  bytes_.insert(bytes_.end(), v.begin(), v.end());
}

void PayloadWriter::String(const std::string& v) {
  U32(static_cast<uint32_t>(v.size()));
  Bytes({reinterpret_cast<const uint8_t*>(v.data()), v.size()});
}

bool PayloadReader::Take(size_t len) {
  if (!ok_ || bytes_.size() - pos_ < len) {
    ok_ = false;
    return false;
  }
  return true;
}

uint8_t PayloadReader::U8() {
  if (!Take(1)) return 0;
  return bytes_[pos_++];
}

uint16_t PayloadReader::U16() {
  uint16_t v = 0;
  Bytes(reinterpret_cast<uint8_t*>(&v), 2);
  return v;
}

uint32_t PayloadReader::U32() {
  uint32_t v = 0;
  Bytes(reinterpret_cast<uint8_t*>(&v), 4);
  return v;
}

uint64_t PayloadReader::U64() {
  uint64_t v = 0;
  Bytes(reinterpret_cast<uint8_t*>(&v), 8);
  return v;
}

bool PayloadReader::Bytes(uint8_t* out, size_t len) {
  if (!Take(len)) return false;
  std::memcpy(out, bytes_.data() + pos_, len);
  pos_ += len;
  return true;
}

std::string PayloadReader::String(size_t max_len) {
  uint32_t len = U32();
  if (len > max_len || !Take(len)) {
    ok_ = false;
    return {};
  }
  std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
  pos_ += len;
  return s;
}

Status PayloadReader::Finish(const std::string& what) const {
  if (!ok_) return Status::Corruption(what + ": payload too short or a field too long");
  if (pos_ != bytes_.size()) return Status::Corruption(what + ": unexpected trailing bytes");
  return Status::Ok();
}

}  // namespace dp420::net
