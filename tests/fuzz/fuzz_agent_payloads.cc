// Every payload the agent parses (engine/net/payloads.h, conn.h): the
// handshake's AUTH_OK, ERROR, PING and PONG, the answers DONE (JSON),
// SNAPSHOT and COMMITTED (sealed manifests), PROBLEM, RESTORE_PAGE, and a
// backup's BACKUP_READY (with its parent manifest), STRIPE_READY, ACK and
// PARENT_PAGE. The first byte chooses the frame, the rest is its payload.
#include <algorithm>
#include <cstring>
#include <memory>

#include "engine/net/conn.h"
#include "engine/net/payloads.h"
#include "tests/fuzz/fuzz_util.h"

namespace dp420::net {
namespace {

void Answers(uint8_t which, Payload p) {
  std::string text;
  switch (which) {
    case 0:
      // DONE: JSON, parsed as the agent parses it.
      if (ParseText(p, kMaxPayloadBytes, "DONE", &text).ok()) {
        (void)Json::parse(text, nullptr, false);
      }
      break;
    case 1:
      if (ParseText(p, kMaxPayloadBytes, "SNAPSHOT", &text).ok()) {
        (void)Manifest::Parse(text, "manifest from the server", nullptr);
      }
      break;
    case 2: {
      VerifyProblem problem;
      if (ParseProblem(p, &problem).ok()) {
        for (const auto& s : problem.snapshots) FUZZ_CHECK(!s.empty() && s.find(',') == s.npos);
      }
      break;
    }
    default: {
      auto page = std::make_unique<PageMsg>();
      ParsePage(p, 32, "RESTORE_PAGE", page.get());
      FUZZ_CHECK(page->entries <= page->count && page->entries <= kPageMsgEntries);
      if (page->finish.ok() && page->count <= kPageMsgEntries) {
        FUZZ_CHECK(p.size() == 12 + size_t{page->count} * 33);
      }
    }
  }
}

void Backup(uint8_t which, Payload p) {
  switch (which) {
    case 0: {
      BackupReadyMsg ready;
      if (ParseBackupReady(p, &ready).ok() && !ready.parent_text.empty()) {
        (void)Manifest::Parse(ready.parent_text, "parent manifest", nullptr);
      }
      break;
    }
    case 1: {
      uint64_t v = 0;
      if (ParseU64(p, "ACK", &v).ok()) FUZZ_CHECK(p.size() == 8);
      break;
    }
    case 2: {
      std::string text;
      if (ParseText(p, 1 << 20, "COMMITTED", &text).ok()) {
        (void)Manifest::Parse(text, "committed manifest", nullptr);
      }
      break;
    }
    default: {
      uint64_t page = 0;
      uint32_t count = 0;
      uint64_t pages = p.size() > 0 ? p[0] : 0;
      if (ParseParentPage(p, pages, &page, &count).ok()) {
        FUZZ_CHECK(page < pages && count <= 256 && p.size() == 12 + count * 49u);
      }
    }
  }
}

void Handshake(uint8_t which, Payload p) {
  Frame f{};
  f.payload.assign(p.begin(), p.end());
  switch (which) {
    case 0: {
      AuthOkMsg ok;
      if (ParseAuthOk(p, &ok).ok()) FUZZ_CHECK(p.size() == 56);
      break;
    }
    case 1: {
      uint16_t code = 0;
      std::string message;
      if (ParseError(p, &code, &message).ok()) FUZZ_CHECK(message.size() <= kErrorMessageMax);
      f.header.type = uint16_t(FrameType::kError);
      FUZZ_CHECK(!StatusFromError(f, "server").ok());  // an ERROR is never success
      break;
    }
    default: {
      uint64_t t0 = 0;
      (void)ParsePing(p, &t0);
    }
  }
}

}  // namespace
}  // namespace dp420::net

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  dp420::net::Payload p(data + 1, size - 1);
  uint8_t which = data[0];
  switch (which % 3) {
    case 0: dp420::net::Handshake(which / 3 % 3, p); break;
    case 1: dp420::net::Answers(which / 3 % 4, p); break;
    default: dp420::net::Backup(which / 3 % 4, p);
  }
  return 0;
}
