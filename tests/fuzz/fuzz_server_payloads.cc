// Every payload the server parses (engine/net/payloads.h): the handshake's
// HELLO and AUTH, PING and PONG, the requests LIST, VERIFY, RESTORE,
// BACKUP_BEGIN, PARENT_REQ, COMMIT, ADMIN (and its forget arguments),
// STRIPE_JOIN and a stripe's PAGE, the group channel's GROUP_JOIN and
// GROUP_MSG (which the agent parses too). The
// first byte chooses the frame, the rest is its payload. What parses must
// encode back to the same bytes.
#include <algorithm>
#include <cstring>
#include <memory>

#include "engine/core/forget.h"
#include "engine/core/text.h"
#include "engine/net/payloads.h"
#include "tests/fuzz/fuzz_util.h"

namespace dp420::net {
namespace {

bool Same(const PayloadWriter& w, Payload p) {
  return w.bytes().size() == p.size() && std::equal(p.begin(), p.end(), w.bytes().begin());
}

void Requests(uint8_t which, Payload p) {
  PayloadWriter w;
  switch (which) {
    case 0: {
      std::string volume;
      if (ParseList(p, &volume).ok()) {
        w.String(volume);
        FUZZ_CHECK(Same(w, p));
      }
      break;
    }
    case 1: {
      VerifyRequestMsg v;
      if (ParseVerifyRequest(p, &v).ok()) {
        w.String(v.volume);
        w.String(v.snapshot);
        w.U8(v.read_data ? 1 : 0);
        FUZZ_CHECK(Same(w, p));
      }
      break;
    }
    case 2: {
      std::string volume, snapshot;
      if (ParseRestoreRequest(p, &volume, &snapshot).ok()) {
        FUZZ_CHECK(volume.size() <= kRequestStringMax && snapshot.size() <= kRequestStringMax);
      }
      break;
    }
    case 3: {
      uint64_t first = 0;
      uint32_t count = 0;
      if (ParseParentReq(p, &first, &count).ok()) FUZZ_CHECK(p.size() == 12);
      break;
    }
    case 4: {
      AdminRequestMsg a;
      if (ParseAdminRequest(p, &a).ok()) {
        FUZZ_CHECK(a.op.size() <= kAdminOpMax && a.args.is_object());
        // The forget request decoder sees whatever an admin client sends.
        (void)ForgetRequestFromJson(a.args);
      }
      break;
    }
    default: {
      CommitCounters c;
      if (ParseCommit(p, &c).ok()) {
        FUZZ_CHECK(p.size() == 32 || c.point_in_time.is_object() || p.size() == 36);
      }
    }
  }
}

void Backup(uint8_t which, Payload p) {
  switch (which) {
    case 0: {
      auto b = ParseBegin(p);
      if (b.ok()) {
        FUZZ_CHECK(ValidVolumeName(b->volume));
        FUZZ_CHECK(b->stripes >= 1 && b->stripes <= kMaxStripes);
        FUZZ_CHECK(b->topology.is_object());
        (void)b->topology.dump();  // what the commit writes into the manifest
      }
      break;
    }
    case 1: {
      std::string token;
      uint32_t stripe = 0;
      if (ParseStripeJoin(p, &token, &stripe).ok()) {
        FUZZ_CHECK(token.size() <= kMaxTokenBytes);
        FUZZ_CHECK(CheckTextField("token", token, kMaxTokenBytes).ok());
      }
      break;
    }
    default: {
      auto page = std::make_unique<PageMsg>();
      ParsePage(p, 16, "PAGE", page.get());
      FUZZ_CHECK(page->entries <= page->count && page->entries <= kPageMsgEntries);
      if (page->finish.ok() && page->count <= kPageMsgEntries) {
        FUZZ_CHECK(p.size() == 12 + size_t{page->count} * 17);
      }
    }
  }
}

void Groups(uint8_t which, Payload p) {
  if (which == 0) {
    std::vector<std::string> volumes;
    if (ParseGroupJoin(p, &volumes).ok()) {
      FUZZ_CHECK(!volumes.empty() && volumes.size() <= kGroupJoinMax);
      PayloadWriter w;
      w.U32(uint32_t(volumes.size()));
      for (const auto& v : volumes) {
        FUZZ_CHECK(ValidVolumeName(v));
        w.String(v);
      }
      FUZZ_CHECK(Same(w, p));
    }
    return;
  }
  control::GroupMsg m;
  if (ParseGroupMsg(p, &m).ok()) {
    FUZZ_CHECK(m.member.find(':') != std::string::npos && m.detail.size() <= kGroupDetailMax);
    PayloadWriter w;
    WriteGroupMsg(m, &w);
    FUZZ_CHECK(Same(w, p));
  }
}

void Handshake(uint8_t which, Payload p) {
  switch (which) {
    case 0: {
      HelloMsg hello;
      if (ParseHello(p, &hello).ok()) {
        PayloadWriter w;
        w.U16(hello.version);
        w.String(hello.client);
        w.Bytes(hello.ephemeral);
        FUZZ_CHECK(Same(w, p) && hello.read_ok);
      }
      break;
    }
    case 1: {
      uint8_t proof[32];
      if (ParseAuth(p, proof).ok()) FUZZ_CHECK(p.size() == 32 && std::memcmp(proof, p.data(), 32) == 0);
      break;
    }
    case 2: {
      uint64_t t0 = 0;
      if (ParsePing(p, &t0).ok()) FUZZ_CHECK(p.size() == 8);
      break;
    }
    default: {
      uint64_t echo = 0, t1 = 0;
      if (ParsePong(p, &echo, &t1).ok()) FUZZ_CHECK(p.size() == 16);
    }
  }
}

}  // namespace
}  // namespace dp420::net

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  dp420::net::Payload p(data + 1, size - 1);
  uint8_t which = data[0];
  switch (which % 4) {
    case 0: dp420::net::Handshake(which / 4 % 4, p); break;
    case 1: dp420::net::Requests(which / 4 % 6, p); break;
    case 2: dp420::net::Backup(which / 4 % 3, p); break;
    default: dp420::net::Groups(which / 4 % 2, p);
  }
  return 0;
}
