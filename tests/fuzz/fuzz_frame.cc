// Frame headers and payload checks (engine/net/frame.h): CheckHeader and
// CheckPayload on the first 32 bytes and the rest, StatusFromError and
// ExpectFrame on the rest as an ERROR payload, and the PayloadReader's
// getters driven by the input. A header MakeHeader builds always passes.
#include <algorithm>
#include <cstring>
#include <memory>

#include "engine/net/conn.h"
#include "engine/net/frame.h"
#include "tests/fuzz/fuzz_util.h"

namespace dp420::net {
namespace {

// Reads the payload as a sequence of fields the first bytes choose.
void DriveReader(std::span<const uint8_t> ops, std::span<const uint8_t> payload) {
  PayloadReader r(payload);
  uint8_t buf[64];
  for (uint8_t op : ops.first(std::min<size_t>(ops.size(), 16))) {
    switch (op % 6) {
      case 0: r.U8(); break;
      case 1: r.U16(); break;
      case 2: r.U32(); break;
      case 3: r.U64(); break;
      case 4: r.Bytes(buf, op % sizeof(buf)); break;
      default: {
        std::string s = r.String(op * 4u);
        FUZZ_CHECK(s.size() <= op * 4u);
      }
    }
  }
  if (r.done()) FUZZ_CHECK(r.Finish("x").ok());
}

}  // namespace
}  // namespace dp420::net

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dp420::net;
  Frame f{};
  if (size >= sizeof(FrameHeader)) {
    std::memcpy(&f.header, data, sizeof(FrameHeader));
    std::span<const uint8_t> payload(data + sizeof(FrameHeader), size - sizeof(FrameHeader));
    if (CheckHeader(f.header).ok() && !IsSealed(f.header) && payload.size() == f.header.payload_len) {
      (void)CheckPayload(f.header, payload);
    }
  }
  f.payload.assign(data, data + size);
  (void)StatusFromError(f, "peer");
  (void)ExpectFrame(f, FrameType::kDone, "peer");
  auto type = static_cast<FrameType>(1 + (size % uint16_t(FrameType::kMaxType)));
  FrameHeader made = MakeHeader(type, size, f.payload);
  FUZZ_CHECK(CheckHeader(made).ok() == (size <= kMaxPayloadBytes));
  FUZZ_CHECK(CheckPayload(made, f.payload).ok());
  size_t split = size > 0 ? data[0] % (size + 1) : 0;
  DriveReader({data, split}, {data + split, size - split});
  return 0;
}
