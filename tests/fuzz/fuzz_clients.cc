// The server's clients file: ClientRegistry::Parse (engine/net/auth.h).
#include "engine/net/auth.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto reg = dp420::net::ClientRegistry::Parse(text, "/clients");
  if (!reg.ok()) return 0;
  for (const auto& c : reg->clients()) {
    FUZZ_CHECK(dp420::net::ValidClientName(c.name));
    FUZZ_CHECK(c.role == "append" || c.role == "admin");
    FUZZ_CHECK(reg->Find(c.name) == &c);  // names are unique
  }
  return 0;
}
