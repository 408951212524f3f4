#include "engine/core/pack.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>

#include "io/inject.h"
#include "io/assert.h"
#include "io/random.h"
#include "simd/simd.h"

#include <xxhash.h>

namespace dp420 {

AlignedBuf AllocAligned(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, kRecordAlign, bytes) != 0) return nullptr;
  std::memset(p, 0, bytes);
  return AlignedBuf(static_cast<uint8_t*>(p));
}

namespace {

uint32_t RandomPackId() {
  uint32_t id = 0;
  while (id == 0) {
    if (!io::FillRandom(&id, sizeof(id)).ok()) id = 0;
  }
  return id;
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

}  // namespace

void StoredDigest(const uint8_t* bytes, size_t len, uint8_t out[32]) {
  XXH128_hash_t h = XXH3_128bits(bytes, len);
  std::memset(out, 0, 32);
  std::memcpy(out, &h.low64, 8);
  std::memcpy(out + 8, &h.high64, 8);
}

bool FooterValid(const PackFooter& footer) {
  if (std::memcmp(footer.magic, kFooterMagic, 8) != 0) return false;
  if (footer.version != kPackVersionRaw && footer.version != kPackVersionEncoded) return false;
  return simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&footer), 60) == footer.crc32c;
}

Result<PackWriter> PackWriter::Create(const std::string& packs_dir, const uint8_t repo_id[16],
                                      bool direct, const OnCreate& on_create,
                                      uint32_t version) {
  DP420_ASSERT(version == kPackVersionRaw || version == kPackVersionEncoded);
  for (int attempt = 0; attempt < 64; ++attempt) {
    uint32_t id = RandomPackId();
    std::string path = packs_dir + "/" + PackName(id) + ".pack";
    if (access(path.c_str(), F_OK) == 0) continue;
    DP420_RETURN_IF_ERROR(on_create(id));
    auto file = io::File::OpenWrite(path, O_CREAT | O_EXCL | O_WRONLY, direct);
    if (!file.ok()) {
      if (file.status().code() == Code::kExists) continue;
      return file.status();
    }
    PackWriter writer;
    writer.file_ = std::move(file).value();
    writer.pack_id_ = id;
    writer.version_ = version;
    AlignedBuf header_buf = AllocAligned(sizeof(PackHeader));
    if (!header_buf) return Status::NoMemory("pack header buffer");
    auto* header = reinterpret_cast<PackHeader*>(header_buf.get());
    std::memcpy(header->magic, kPackMagic, 8);
    header->version = version;
    header->pack_id = id;
    std::memcpy(header->repo_id, repo_id, 16);
    header->created_unix_ns = NowNs();
    header->crc32c = simd::Crc32c(0, header_buf.get(), sizeof(PackHeader) - 4);
    Status s = writer.file_.WriteAt(0, header_buf.get(), sizeof(PackHeader));
    if (!s.ok()) {
      writer.Abandon();
      return s;
    }
    writer.next_offset_ = sizeof(PackHeader);
    return writer;
  }
  return Status::IOError("could not find a free pack id in " + packs_dir);
}

void PackWriter::Reserve(uint32_t stored_len, ObjRef* ref, const uint8_t* stored) {
  DP420_ASSERT(next_offset_ % kRecordAlign == 0);
  ref->pack_id = pack_id_;
  ref->offset_4k = static_cast<uint32_t>(next_offset_ / kRecordAlign);
  ref->stored_len = stored_len;
  next_offset_ += RoundUp(stored_len, kRecordAlign);
  index_.push_back(*ref);
  if (version_ == kPackVersionEncoded && stored) StoredDigest(stored, stored_len, index_.back().sha256);
}

Status PackWriter::WriteRecord(const uint8_t* data, uint32_t len, ObjRef* ref) {
  Reserve(len, ref, data);
  size_t padded = RoundUp(len, kRecordAlign);
  AlignedBuf buf = AllocAligned(padded);
  if (!buf) return Status::NoMemory("pack record buffer");
  std::memcpy(buf.get(), data, len);
  return file_.WriteAt(ref->offset_bytes(), buf.get(), padded).Prefix(path());
}

Status PackWriter::WriteReserved(uint64_t offset, const uint8_t* data, size_t len) {
  DP420_ASSERT(offset >= sizeof(PackHeader) && offset + len <= next_offset_);
  return file_.WriteAt(offset, data, len).Prefix(path());
}

Status PackWriter::Finish() {
  DP420_ASSERT(file_.fd() >= 0);
  uint64_t index_offset = next_offset_;
  size_t index_bytes = index_.size() * sizeof(ObjRef);
  size_t total = RoundUp(index_bytes + sizeof(PackFooter), kRecordAlign);
  AlignedBuf buf = AllocAligned(total);
  if (!buf) return Status::NoMemory("pack trailer buffer");
  if (index_bytes) std::memcpy(buf.get(), index_.data(), index_bytes);
  auto* footer = reinterpret_cast<PackFooter*>(buf.get() + total - sizeof(PackFooter));
  std::memcpy(footer->magic, kFooterMagic, 8);
  footer->version = version_;
  footer->pack_id = pack_id_;
  footer->index_offset = index_offset;
  footer->record_count = static_cast<uint32_t>(index_.size());
  footer->index_crc32c = simd::Crc32c(0, buf.get(), index_bytes);
  footer->data_end = index_offset;
  footer->crc32c = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(footer), 60);
  DP420_RETURN_IF_ERROR(file_.WriteAt(index_offset, buf.get(), total).Prefix(path()));
  DP420_RETURN_IF_ERROR(file_.Sync().Prefix(path()));
  final_size_ = index_offset + total;
  file_.Close();
  return Status::Ok();
}

void PackWriter::Abandon() {
  if (file_.fd() < 0 && file_.path().empty()) return;
  std::string path = file_.path();
  file_.Close();
  if (!path.empty()) io::sys::Unlink(path.c_str());
}

Result<PackReader> PackReader::Open(const std::string& path, uint32_t expected_id) {
  DP420_ASSIGN_OR_RETURN(io::File file, io::File::OpenRead(path, false));
  PackHeader header;
  if (file.info().size_bytes < sizeof(PackHeader) + sizeof(PackFooter)) {
    return Status::Corruption(path + ": truncated pack (" +
                              std::to_string(file.info().size_bytes) + " bytes)");
  }
  DP420_RETURN_IF_ERROR(file.ReadAt(0, &header, sizeof(header)));
  uint32_t crc = simd::Crc32c(0, reinterpret_cast<const uint8_t*>(&header), sizeof(header) - 4);
  if (std::memcmp(header.magic, kPackMagic, 8) != 0 || crc != header.crc32c) {
    return Status::Corruption(path + ": pack header is damaged");
  }
  if (header.version > kPackFormatVersion || header.version == 0) {
    return Status::Version(path + ": pack format version " + std::to_string(header.version) +
                           " is newer than this dp420 supports (" +
                           std::to_string(kPackFormatVersion) + ")");
  }
  if (header.pack_id != expected_id) {
    return Status::Corruption(path + ": pack header names pack " + PackName(header.pack_id));
  }
  PackReader reader;
  reader.file_ = std::move(file);
  reader.pack_id_ = expected_id;
  reader.version_ = header.version;
  return reader;
}

Result<std::vector<ObjRef>> PackReader::ReadIndex() const {
  uint64_t size = file_.info().size_bytes;
  PackFooter footer;
  if (size % kRecordAlign != 0) {
    return Status::Corruption(path() + ": truncated pack (size " + std::to_string(size) +
                              " is not a multiple of 4096)");
  }
  DP420_RETURN_IF_ERROR(file_.ReadAt(size - sizeof(footer), &footer, sizeof(footer)));
  if (!FooterValid(footer) || footer.version != version_ || footer.pack_id != pack_id_ || footer.index_offset > size ||
      footer.index_offset % kRecordAlign != 0 || footer.data_end != footer.index_offset) {
    return Status::Corruption(path() + ": pack footer is missing or damaged (truncated?)");
  }
  uint64_t index_bytes = uint64_t{footer.record_count} * sizeof(ObjRef);
  if (footer.index_offset + index_bytes + sizeof(footer) > size) {
    return Status::Corruption(path() + ": pack index runs past the end of the file");
  }
  std::vector<ObjRef> index(footer.record_count);
  DP420_RETURN_IF_ERROR(file_.ReadAt(footer.index_offset, index.data(), index_bytes));
  if (simd::Crc32c(0, reinterpret_cast<const uint8_t*>(index.data()), index_bytes) !=
      footer.index_crc32c) {
    return Status::Corruption(path() + ": pack index fails its CRC-32C");
  }
  // The zero padding between the index and the footer (< 4 KiB): checked so
  // that no byte of a pack can change unseen.
  uint64_t pad_from = footer.index_offset + index_bytes;
  std::vector<uint8_t> pad(size - sizeof(footer) - pad_from);
  if (!pad.empty()) DP420_RETURN_IF_ERROR(file_.ReadAt(pad_from, pad.data(), pad.size()));
  if (!std::all_of(pad.begin(), pad.end(), [](uint8_t b) { return b == 0; })) {
    return Status::Corruption(path() + ": pack trailer has non-zero bytes in its padding");
  }
  return index;
}

Status PackReader::CheckRecord(const ObjRef& ref, const uint8_t* bytes) const {
  uint8_t digest[32];
  if (version_ == kPackVersionEncoded) {
    StoredDigest(bytes, ref.stored_len, digest);
  } else {
    simd::Sha256(bytes, ref.stored_len, digest);
  }
  if (std::memcmp(digest, ref.sha256, 32) != 0) {
    return Status::Corruption(path() + ": record at offset " + std::to_string(ref.offset_bytes()) +
                              (version_ == kPackVersionEncoded ? " fails its stored digest"
                                                               : " fails its SHA-256"));
  }
  return Status::Ok();
}

Status PackReader::ReadStored(const ObjRef& ref, uint8_t* buf) const {
  uint64_t offset = ref.offset_bytes();
  if (offset + ref.stored_len > size_bytes()) {
    return Status::Corruption(path() + ": record at offset " + std::to_string(offset) +
                              " runs past the end of the pack (truncated?)");
  }
  return file_.ReadAt(offset, buf, ref.stored_len);
}

uint64_t RunBytes(const ObjRef* refs, size_t count) {
  const ObjRef& last = refs[count - 1];
  return last.offset_bytes() + RoundUp(last.stored_len, kRecordAlign) - refs[0].offset_bytes();
}

bool Adjacent(const ObjRef& ref, const ObjRef& next) {
  return next.offset_bytes() == ref.offset_bytes() + RoundUp(ref.stored_len, kRecordAlign);
}

void PackReader::OpenDirect() {
  auto direct = io::File::OpenRead(path(), true);
  if (direct.ok() && direct->direct()) direct_ = std::move(direct).value();
}

Result<PackReader::RunRead> PackReader::PlanRunRead(const ObjRef* refs, size_t count,
                                                    const uint8_t* buf) const {
  DP420_ASSERT(count > 0);
  for (size_t i = 1; i < count; ++i) DP420_ASSERT(Adjacent(refs[i - 1], refs[i]));
  uint64_t start = refs[0].offset_bytes();
  uint64_t end = refs[count - 1].offset_bytes() + refs[count - 1].stored_len;
  if (end > size_bytes()) {
    return Status::Corruption(path() + ": record at offset " +
                              std::to_string(refs[count - 1].offset_bytes()) +
                              " runs past the end of the pack (truncated?)");
  }
  uint64_t padded_end = start + RunBytes(refs, count);
  if (direct_.direct() && padded_end <= size_bytes() &&
      reinterpret_cast<uintptr_t>(buf) % kRecordAlign == 0) {
    return RunRead{direct_.fd(), start, padded_end - start};
  }
  return RunRead{file_.fd(), start, end - start};
}

void PackReader::ZeroPadding(const ObjRef* refs, size_t count, uint8_t* buf) {
  for (size_t i = 0; i < count; ++i) {
    uint8_t* bytes = buf + (refs[i].offset_bytes() - refs[0].offset_bytes());
    std::memset(bytes + refs[i].stored_len, 0,
                RoundUp(refs[i].stored_len, kRecordAlign) - refs[i].stored_len);
  }
}

Status PackReader::ReadRunBytes(const ObjRef* refs, size_t count, uint8_t* buf) const {
  DP420_ASSIGN_OR_RETURN(RunRead read, PlanRunRead(refs, count, buf));
  const io::File& file = read.fd == direct_.fd() ? direct_ : file_;
  DP420_RETURN_IF_ERROR(file.ReadAt(read.offset, buf, read.len));
  ZeroPadding(refs, count, buf);
  return Status::Ok();
}

}  // namespace dp420
