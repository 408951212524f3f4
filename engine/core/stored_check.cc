#include "engine/core/stored_check.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "engine/core/pack.h"
#include "engine/core/record.h"
#include "engine/core/repo.h"

namespace dp420 {

namespace {

// The largest record a pack can hold: an encoded block of the largest size.
const uint32_t kMaxRecordBytes = MaxEncodedBytes(kMaxBlockSize);

std::string PackObject(uint32_t pack_id) { return "packs/" + PackName(pack_id) + ".pack"; }

class StoredChecker {
 public:
  StoredChecker(const Repository& repo, const JobControl& control)
      : repo_(repo), control_(control), buf_(AllocAligned(RoundUp(kMaxRecordBytes, kRecordAlign))) {}

  Status Run(VerifyReport* report) {
    if (!buf_) return Status::NoMemory("verify: a record buffer");
    const std::vector<uint32_t> ids = repo_.ListPackIds();
    auto last = std::chrono::steady_clock::now();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (control_.Canceled()) return Status::Canceled("verify canceled");
      DP420_RETURN_IF_ERROR(CheckPack(ids[i], report));
      ++report->packs_checked;
      auto now = std::chrono::steady_clock::now();
      if (control_.progress && now - last > std::chrono::milliseconds(200)) {
        last = now;
        control_.progress({"verify", i + 1, ids.size()});
      }
    }
    return Status::Ok();
  }

 private:
  void Problem(VerifyReport* report, uint32_t pack_id, const std::string& message) {
    report->problems.push_back({PackObject(pack_id), message, {}});
  }

  // The trailer's records sorted by offset, each inside the data area, not
  // overlapping the next, of a length a record can have; the others reported.
  std::vector<ObjRef> InBounds(uint32_t pack_id, std::vector<ObjRef> index, uint64_t data_end,
                               VerifyReport* report) {
    std::sort(index.begin(), index.end(),
              [](const ObjRef& a, const ObjRef& b) { return a.offset_4k < b.offset_4k; });
    std::vector<ObjRef> good;
    uint64_t next_free = kRecordAlign;  // after the header
    for (const ObjRef& r : index) {
      const std::string at = "record at offset " + std::to_string(r.offset_bytes());
      if (r.stored_len == 0 || r.stored_len > kMaxRecordBytes) {
        Problem(report, pack_id, at + " has an impossible length " + std::to_string(r.stored_len));
      } else if (r.offset_bytes() < next_free) {
        Problem(report, pack_id, at + " overlaps the header or the record before it");
      } else if (r.offset_bytes() + r.stored_len > data_end) {
        Problem(report, pack_id, at + " runs past the pack's data (truncated?)");
      } else {
        good.push_back(r);
        next_free = r.offset_bytes() + RoundUp(r.stored_len, kRecordAlign);
      }
    }
    return good;
  }

  Status CheckPack(uint32_t pack_id, VerifyReport* report) {
    auto reader = PackReader::Open(repo_.PackPath(pack_id), pack_id);
    if (!reader.ok()) {
      if (reader.status().code() == Code::kNotFound) return Status::Ok();  // pruned meanwhile
      Problem(report, pack_id, reader.status().message());
      return Status::Ok();
    }
    PackHeader header{};
    if (reader->ReadBytes(0, reinterpret_cast<uint8_t*>(&header), sizeof(header)).ok() &&
        std::memcmp(header.repo_id, repo_.repo_id_array().data(), sizeof(header.repo_id)) != 0) {
      Problem(report, pack_id, "the pack belongs to another repository (its header's id)");
      return Status::Ok();
    }
    auto index = reader->ReadIndex();
    if (!index.ok()) {
      Problem(report, pack_id, index.status().message());
      return Status::Ok();
    }
    const uint64_t data_end = DataEnd(*reader, *index);
    for (const ObjRef& r : InBounds(pack_id, std::move(index).value(), data_end, report)) {
      DP420_RETURN_IF_ERROR(CheckRecord(*reader, pack_id, r, report));
    }
    return Status::Ok();
  }

  // Where the trailer index begins, the end of the data area: the footer's
  // index_offset (ReadIndex checked the footer already).
  static uint64_t DataEnd(const PackReader& pack, const std::vector<ObjRef>&) {
    PackFooter footer{};
    if (pack.size_bytes() < sizeof(footer) ||
        !pack.ReadBytes(pack.size_bytes() - sizeof(footer), reinterpret_cast<uint8_t*>(&footer),
                        sizeof(footer)).ok()) {
      return 0;
    }
    return footer.index_offset;
  }

  Status CheckRecord(const PackReader& pack, uint32_t pack_id, const ObjRef& r,
                     VerifyReport* report) {
    const size_t padded = RoundUp(r.stored_len, kRecordAlign);
    Status read = pack.ReadBytes(r.offset_bytes(), buf_.get(), padded);
    if (!read.ok()) {
      Problem(report, pack_id, "record at offset " + std::to_string(r.offset_bytes()) +
                                   ": " + read.message());
      return Status::Ok();
    }
    report->bytes_read += padded;
    ++report->blocks_checked;
    Status s = pack.CheckRecord(r, buf_.get());
    if (s.ok() && !std::all_of(buf_.get() + r.stored_len, buf_.get() + padded,
                               [](uint8_t b) { return b == 0; })) {
      s = Status::Corruption("record at offset " + std::to_string(r.offset_bytes()) +
                             " has non-zero bytes in its padding");
    }
    if (!s.ok()) Problem(report, pack_id, s.message());
    return Status::Ok();
  }

  const Repository& repo_;
  const JobControl& control_;
  AlignedBuf buf_;
};

}  // namespace

Result<VerifyReport> RunStoredCheck(const std::string& path, const JobControl& control) {
  DP420_ASSIGN_OR_RETURN(std::unique_ptr<Repository> repo, Repository::OpenWithoutKey(path));
  DP420_ASSIGN_OR_RETURN(VolumeLock lock, repo->LockRepository(false));
  VerifyReport report;
  StoredChecker checker(*repo, control);
  DP420_RETURN_IF_ERROR(checker.Run(&report));
  return report;
}

}  // namespace dp420
