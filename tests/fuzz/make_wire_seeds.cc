// Writes the seed corpora of fuzz_frame, fuzz_server_payloads and
// fuzz_agent_payloads from a real repository: every frame payload encoded as
// its sender encodes it (docs/PROTOCOL.md), with the repository's own
// manifests, volume, snapshot ids, topology and table entries as the values.
//
//   make_wire_seeds REPO VOLUME OUT_DIR     (tests/fuzz/make_corpus.sh runs it)
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "engine/core/repo.h"
#include "engine/net/frame.h"
#include "engine/net/payloads.h"
#include "io/file.h"

namespace dp420::net {
namespace {

std::string g_out;

void Write(const std::string& target, const std::string& name, uint8_t selector,
           const PayloadWriter& w) {
  std::string dir = g_out + "/" + target;
  mkdir(dir.c_str(), 0755);
  std::ofstream out(dir + "/" + name, std::ios::binary);
  if (selector != 0xff) out.put(static_cast<char>(selector));
  out.write(reinterpret_cast<const char*>(w.bytes().data()), w.bytes().size());
}

// A whole frame (header + payload in the clear) for fuzz_frame.
void WriteFrame(const std::string& name, FrameType type, const PayloadWriter& w) {
  FrameHeader h = MakeHeader(type, 7, w.bytes());
  PayloadWriter f;
  f.Bytes({reinterpret_cast<const uint8_t*>(&h), sizeof(h)});
  f.Bytes(w.bytes());
  Write("fuzz_frame", name, 0xff, f);
}

// Selectors: fuzz_server_payloads.cc and fuzz_agent_payloads.cc (group + 3 * index).
uint8_t Sel(int group, int index) { return static_cast<uint8_t>(group + 3 * index); }

void ServerSeeds(const Manifest& m) {
  PayloadWriter hello;
  hello.U16(kProtocolVersion);
  hello.String(m.client.empty() ? "db1" : m.client);
  std::vector<uint8_t> ephemeral(kEphemeralBytes, 0x5a);
  hello.Bytes(ephemeral);
  Write("fuzz_server_payloads", "hello", Sel(0, 0), hello);
  WriteFrame("hello", FrameType::kHello, hello);
  PayloadWriter auth;
  auth.Bytes(std::vector<uint8_t>(32, 0xa5));
  Write("fuzz_server_payloads", "auth", Sel(0, 1), auth);
  PayloadWriter ping;
  ping.U64(1733450000000000000ull);
  Write("fuzz_server_payloads", "ping", Sel(0, 2), ping);
  WriteFrame("ping", FrameType::kPing, ping);
  PayloadWriter list;
  list.String(m.volume);
  Write("fuzz_server_payloads", "list", Sel(1, 0), list);
  WriteFrame("list", FrameType::kList, list);
  PayloadWriter verify;
  verify.String(m.volume);
  verify.String(m.snapshot_id);
  verify.U8(1);
  Write("fuzz_server_payloads", "verify", Sel(1, 1), verify);
  PayloadWriter restore;
  restore.String(m.volume);
  restore.String(m.snapshot_id);
  Write("fuzz_server_payloads", "restore", Sel(1, 2), restore);
  PayloadWriter parent_req;
  parent_req.U64(0);
  parent_req.U32(1);
  Write("fuzz_server_payloads", "parent_req", Sel(1, 3), parent_req);
  PayloadWriter commit;
  for (uint64_t v : {m.bytes_written, m.bytes_written / 2, uint64_t{0}, uint64_t{4096}}) commit.U64(v);
  Write("fuzz_server_payloads", "commit", Sel(1, 4), commit);
}

void BackupSeeds(const Manifest& m, const std::string& sealed) {
  PayloadWriter begin;
  begin.String(m.volume);
  begin.U32(m.block_size);
  begin.U64(m.volume_size);
  begin.U32(2);
  begin.String(m.source_path);
  begin.String(m.source_kind);
  begin.String(m.node_topology.dump());
  begin.String(m.tool_version);
  begin.String("");
  Write("fuzz_server_payloads", "backup_begin", Sel(2, 0), begin);
  WriteFrame("backup_begin", FrameType::kBackupBegin, begin);
  PayloadWriter join;
  join.String("0123456789abcdef0123456789abcdef");
  join.U32(1);
  Write("fuzz_server_payloads", "stripe_join", Sel(2, 1), join);
  PayloadWriter page;
  page.U64(0);
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(m.blocks_total, kPageEntries));
  page.U32(n);
  for (uint32_t i = 0; i < n; ++i) {
    page.U8(static_cast<uint8_t>(i % 3));
    page.Bytes(std::vector<uint8_t>(16, static_cast<uint8_t>(i)));
  }
  Write("fuzz_server_payloads", "page", Sel(2, 2), page);
  // The agent's side.
  PayloadWriter ready;
  ready.String("0123456789abcdef0123456789abcdef");
  ready.String(m.snapshot_id);
  ready.U32(m.block_size);
  ready.String(sealed);
  ready.Bytes(std::vector<uint8_t>(simd::kHashSecretBytes, 0x3c));
  ready.U64(1733450000000000000ull);
  Write("fuzz_agent_payloads", "backup_ready", Sel(2, 0), ready);
  PayloadWriter ack;
  ack.U64(3);
  Write("fuzz_agent_payloads", "ack", Sel(2, 1), ack);
  PayloadWriter committed;
  committed.String(sealed);
  Write("fuzz_agent_payloads", "committed", Sel(2, 2), committed);
  PayloadWriter parent_page;
  parent_page.U64(0);
  parent_page.U32(2);
  parent_page.Bytes(std::vector<uint8_t>(2 * 49, 0x11));
  Write("fuzz_agent_payloads", "parent_page", Sel(2, 3), parent_page);
}

void AgentSeeds(const Manifest& m, const std::string& sealed) {
  PayloadWriter auth_ok;
  auth_ok.Bytes(std::vector<uint8_t>(32, 0x77));
  auth_ok.U64(1733450000000000000ull);
  auth_ok.Bytes(std::vector<uint8_t>(16, 0x42));
  Write("fuzz_agent_payloads", "auth_ok", Sel(0, 0), auth_ok);
  PayloadWriter error;
  error.U16(3);
  error.String("volume '" + m.volume + "' has no snapshots");
  Write("fuzz_agent_payloads", "error", Sel(0, 1), error);
  WriteFrame("error", FrameType::kError, error);
  PayloadWriter done;
  done.String(R"({"snapshots_checked":2,"packs_checked":2,"pages_checked":2,"blocks_checked":16,)"
              R"("bytes_read":65536,"unreferenced_packs":0,"broken_snapshots":[]})");
  Write("fuzz_agent_payloads", "done", Sel(1, 0), done);
  WriteFrame("done", FrameType::kDone, done);
  PayloadWriter snapshot;
  snapshot.String(sealed);
  Write("fuzz_agent_payloads", "snapshot", Sel(1, 1), snapshot);
  WriteFrame("snapshot", FrameType::kSnapshot, snapshot);
  PayloadWriter problem;
  problem.String("packs/00000001.pack");
  problem.String("record at offset 8192 fails its SHA-256");
  problem.String(m.snapshot_id + "," + m.parent);
  Write("fuzz_agent_payloads", "problem", Sel(1, 2), problem);
  PayloadWriter page;
  page.U64(0);
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(m.blocks_total, kPageEntries));
  page.U32(n);
  for (uint32_t i = 0; i < n; ++i) {
    page.U8(i % 2);
    page.Bytes(std::vector<uint8_t>(32, static_cast<uint8_t>(i)));
  }
  Write("fuzz_agent_payloads", "restore_page", Sel(1, 3), page);
}

}  // namespace
}  // namespace dp420::net

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s REPO VOLUME OUT_DIR\n", argv[0]);
    return 2;
  }
  dp420::net::g_out = argv[3];
  auto repo = dp420::Repository::Open(argv[1]);
  if (!repo.ok()) {
    std::fprintf(stderr, "%s\n", repo.status().ToString().c_str());
    return 1;
  }
  std::vector<dp420::Manifest> manifests;
  std::vector<dp420::DamagedFile> damaged;
  if (!(*repo)->ListManifests(argv[2], &manifests, &damaged).ok() || manifests.empty()) {
    std::fprintf(stderr, "no manifests of volume %s\n", argv[2]);
    return 1;
  }
  const dp420::Manifest& m = manifests.back();
  auto sealed = dp420::io::ReadFile((*repo)->SnapshotsDir(m.volume) + "/" + m.file_name);
  if (!sealed.ok()) return 1;
  dp420::net::ServerSeeds(m);
  dp420::net::BackupSeeds(m, sealed.value());
  dp420::net::AgentSeeds(m, sealed.value());
  return 0;
}
