#include "engine/net/id_cache.h"

#include <cstdio>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/net/volumes.h"
#include "io/inject.h"
#include "io/file.h"
#include "simd/simd.h"

namespace dp420::net {
namespace {

constexpr char kCacheMagic[8] = {'D', 'P', '4', '2', '0', 'I', 'D', 'C'};

// What the snapshot this agent made must hold, from its new cache (every
// block's id, digest and zero flag, as read) and the parent's: counted as the
// server counts them (store.cc OnPage). A zero block where the parent had
// data counts as changed; whether the parent had data there is the server's
// knowledge, so blocks_changed is known within a range.
struct Tally {
  uint64_t changed_min = 0, changed_max = 0, zero = 0, stored = 0;
  std::string checksum_sha256;
};

Status Count(int new_fd, int parent_fd, uint64_t parent_blocks, uint64_t blocks, Tally* out) {
  simd::Sha256Stream volume_sha;
  std::vector<uint8_t> now(kPageEntries * kCacheRecord), before(kPageEntries * kCacheRecord);
  std::vector<uint8_t> digests(kPageEntries * 32);
  for (uint64_t first = 0; first < blocks; first += kPageEntries) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kPageEntries, blocks - first));
    if (Status s = ReadCacheRecords(new_fd, first, n, now.data()); !s.ok()) {
      return s.Prefix("the new cache");
    }
    uint32_t pn = 0;
    if (parent_fd >= 0 && first < parent_blocks) {
      pn = static_cast<uint32_t>(std::min<uint64_t>(n, parent_blocks - first));
      if (Status s = ReadCacheRecords(parent_fd, first, pn, before.data()); !s.ok()) {
        return s.Prefix("the parent's cache");
      }
    }
    for (uint32_t i = 0; i < n; ++i) {
      const uint8_t* r = &now[i * kCacheRecord];
      const uint8_t* old = i < pn ? &before[i * kCacheRecord] : nullptr;
      std::memcpy(&digests[i * 32], r + 16, 32);
      bool zero = r[48] != 0;
      out->zero += zero;
      if (old && std::memcmp(old, r, 16) == 0 && old[48] == r[48]) continue;  // unchanged
      if (zero) {
        out->changed_max += (old != nullptr);
        continue;
      }
      ++out->changed_min;
      ++out->changed_max;
      ++out->stored;
    }
    volume_sha.Update(digests.data(), size_t{n} * 32);
  }
  uint8_t digest[32];
  volume_sha.Final(digest);
  out->checksum_sha256 = simd::ToHex(digest, 32);
  return Status::Ok();
}

}  // namespace

void PutCacheRecord(const Entry& e, uint8_t* raw) {
  std::memcpy(raw, e.id, 16);
  std::memcpy(raw + 16, e.ref.sha256, 32);
  raw[48] = (e.ref.flags & kObjZero) ? 1 : 0;
}

Entry GetCacheRecord(const uint8_t* raw) {
  Entry e{};
  std::memcpy(e.id, raw, 16);
  std::memcpy(e.ref.sha256, raw + 16, 32);
  e.ref.flags = raw[48] == kCacheZero ? kObjZero : 0;
  // Lost on the server: an id no block has, so the block is sent again.
  if (raw[48] == kCacheLost) {
    for (uint8_t& b : e.id) b = static_cast<uint8_t>(~b);
  }
  return e;
}

CacheHeader MakeCacheHeader(const Manifest& m) {
  CacheHeader h{};
  std::memcpy(h.magic, kCacheMagic, 8);
  h.version = 2;
  h.block_size = m.block_size;
  h.blocks = m.blocks_total;
  if (m.seal.size() == 64) (void)simd::FromHex(m.seal, h.seal, 32);
  return h;
}

// pread of exactly `len` bytes, retrying EINTR, EAGAIN and short counts;
// the bytes read (fewer only at end of file or on an error).
static ssize_t PreadFull(int fd, void* buf, size_t len, off_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = io::sys::Pread(fd, static_cast<uint8_t*>(buf) + done, len - done,
                               offset + off_t(done));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += size_t(n);
  }
  return ssize_t(done);
}

bool CacheValid(int fd, const Manifest& m) {
  CacheHeader h{};
  if (PreadFull(fd, &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h))) return false;
  CacheHeader want = MakeCacheHeader(m);
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  return std::memcmp(&h, &want, sizeof(h)) == 0 &&
         static_cast<uint64_t>(st.st_size) == kCacheHeader + m.blocks_total * kCacheRecord;
}

Status ReadCacheRecords(int fd, uint64_t first, uint32_t n, uint8_t* raw) {
  size_t want = size_t{n} * kCacheRecord;
  ssize_t got = PreadFull(fd, raw, want, static_cast<off_t>(kCacheHeader + first * kCacheRecord));
  std::string what = "reading records " + std::to_string(first) + ".." +
                     std::to_string(first + n - 1) + " of the block id cache";
  if (got < 0) return PosixError(what, errno);
  if (got != static_cast<ssize_t>(want)) return Status::Corruption(what + ": the file ends early");
  return Status::Ok();
}

// The committed manifest must describe what this agent read and sent: a
// server (or anyone between) that committed something else is caught here,
// end to end, whatever the channel said.
Status CheckCommitted(const Manifest& c, const SentSnapshot& sent, int new_fd, int parent_fd,
                      uint64_t parent_blocks) {
  Tally want;
  DP420_RETURN_IF_ERROR(Count(new_fd, parent_fd, parent_blocks, sent.blocks, &want));
  auto check = [&](const char* field, const std::string& got,
                   const std::string& expected) -> Status {
    if (got == expected) return Status::Ok();
    return Status::Corruption("the server committed snapshot " + c.snapshot_id + " with " +
                              field + " " + (got.empty() ? "(none)" : got) +
                              ", but this agent read and sent " +
                              (expected.empty() ? "(none)" : expected) +
                              ": the snapshot does not hold what was read; do not rely on it");
  };
  auto num = [](uint64_t v) { return std::to_string(v); };
  DP420_RETURN_IF_ERROR(check("client", c.client, sent.client));
  if (c.volume != NamespacedVolume(sent.client, sent.volume)) {
    DP420_RETURN_IF_ERROR(check("volume", c.volume, sent.volume));
  }
  DP420_RETURN_IF_ERROR(check("snapshot_id", c.snapshot_id, sent.snapshot_id));
  DP420_RETURN_IF_ERROR(check("parent", c.parent, sent.parent));
  DP420_RETURN_IF_ERROR(check("block_size", num(c.block_size), num(sent.block_size)));
  DP420_RETURN_IF_ERROR(check("volume_size", num(c.volume_size), num(sent.volume_size)));
  DP420_RETURN_IF_ERROR(check("blocks_total", num(c.blocks_total), num(sent.blocks)));
  DP420_RETURN_IF_ERROR(check("blocks_zero", num(c.blocks_zero), num(want.zero)));
  DP420_RETURN_IF_ERROR(check("blocks_stored", num(c.blocks_stored), num(want.stored)));
  if (c.blocks_changed < want.changed_min || c.blocks_changed > want.changed_max) {
    DP420_RETURN_IF_ERROR(check("blocks_changed", num(c.blocks_changed),
                                num(want.changed_min) + ".." + num(want.changed_max)));
  }
  return check("checksum_sha256", c.checksum_sha256, want.checksum_sha256);
}

std::string IdCachePath(const std::string& cache_dir, const std::string& repo_id,
                        const std::string& volume) {
  return cache_dir + "/" + repo_id + "/" + volume + ".ids";
}

// What this agent last committed to `volume` ("SEQUENCE SNAPSHOT_ID"): its
// anchor against a server whose history went back (docs/SECURITY.md).
std::string SeenPath(const std::string& ids_path) {
  return ids_path.substr(0, ids_path.size() - 4) + ".seen";
}

// Refuses a parent older than what this agent committed before, or another
// snapshot in its place: the server (or its repository) was rolled back.
Status CheckNotRolledBack(const std::string& seen_path, const Manifest* newest) {
  auto text = io::ReadFile(seen_path);
  if (!text.ok()) return Status::Ok();  // never committed here (or a new cache dir)
  unsigned long long seq = 0;
  char id[32] = {};
  // %llu saturates an overflowing number: every server's history then reads
  // as gone back, and the backup is refused (the safe side).
  // NOLINTNEXTLINE(cert-err34-c)
  if (std::sscanf(text->c_str(), "%llu %31s", &seq, id) != 2) return Status::Ok();
  uint64_t offered = newest ? newest->sequence : 0;
  bool older = offered < seq;
  bool replaced = offered == seq && newest && newest->snapshot_id != id;
  if (!older && !replaced) return Status::Ok();
  return Status::Corruption(
      "the server's history of this volume went back: this agent committed snapshot " +
      std::string(id) + " (sequence " + std::to_string(seq) + "), the server now offers " +
      (newest ? newest->snapshot_id + " (sequence " + std::to_string(offered) + ")"
              : std::string("no snapshot")) +
      ". If the server's repository was restored from an older copy on purpose, remove " +
      seen_path);
}

}  // namespace dp420::net
