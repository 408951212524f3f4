#include "engine/core/table.h"

#include <algorithm>

#include "io/assert.h"
#include "simd/simd.h"

namespace dp420 {

uint32_t PageEntryCount(const TableShape& shape, uint32_t level, uint64_t index) {
  uint64_t units = level == 0 ? shape.blocks : shape.PagesAt(level - 1);
  uint64_t first = index * kPageEntries;
  if (first >= units) return 0;
  uint64_t n = units - first;
  return static_cast<uint32_t>(n < kPageEntries ? n : kPageEntries);
}

Result<const PackReader*> PackCache::Get(uint32_t pack_id) {
  auto it = packs_.find(pack_id);
  if (it != packs_.end()) {
    it->second.last_use = ++uses_;
    return it->second.reader.get();
  }
  if (packs_.size() >= kMaxOpen) {
    auto oldest = std::min_element(packs_.begin(), packs_.end(), [](const auto& a, const auto& b) {
      return a.second.last_use < b.second.last_use;
    });
    packs_.erase(oldest);
  }
  auto reader = PackReader::Open(repo_.PackPath(pack_id), pack_id);
  if (!reader.ok()) {
    if (reader.status().code() == Code::kNotFound) {
      return Status::Corruption("packs/" + PackName(pack_id) + ".pack is missing");
    }
    return reader.status();
  }
  Open& open = packs_[pack_id];
  open.reader = std::make_unique<PackReader>(std::move(reader).value());
  open.last_use = ++uses_;
  return open.reader.get();
}

Status PackCache::ReadObject(const ObjRef& ref, std::span<uint8_t> raw) {
  ObjRef at = ref;
  DP420_RETURN_IF_ERROR(relocator_.Resolve(&at));
  return ReadResolved(at, raw);
}

Status PackCache::ReadResolved(const ObjRef& at, std::span<uint8_t> raw) {
  DP420_ASSIGN_OR_RETURN(const PackReader* pack, Get(at.pack_id));
  if (!codec_) {
    DP420_ASSIGN_OR_RETURN(codec_, repo_.NewRecordCodec());
  }
  auto where = [&] { return pack->path() + ": record at offset " + std::to_string(at.offset_bytes()); };
  if (!StoredLengthFits(at, static_cast<uint32_t>(raw.size()))) {
    return Status::Corruption(where() + ": stored length " + std::to_string(at.stored_len) +
                              " does not fit the object's " + std::to_string(raw.size()) +
                              " bytes");
  }
  // A raw record is read straight into `raw`; an encoded one next to it.
  uint8_t* stored = raw.data();
  if (at.flags & kObjEncodingFlags) {
    stored_.resize(at.stored_len);
    stored = stored_.data();
  }
  DP420_RETURN_IF_ERROR(pack->ReadStored(at, stored));
  Status s = codec_->Decode(at, stored, raw);
  return s.ok() ? s : s.Prefix(where());
}

TableReader::TableReader(const Repository& repo, const Manifest& manifest)
    : packs_(repo), shape_(TableShape::For(manifest.blocks_total)), root_(manifest.table_root) {
  cache_.resize(shape_.levels);
}

Status TableReader::ReadPage(const ObjRef& ref, uint32_t count, std::vector<Entry>* out) {
  uint32_t want = count * sizeof(Entry);
  std::string where = "table page in packs/" + PackName(ref.pack_id) + ".pack at offset " +
                      std::to_string(ref.offset_bytes());
  if (!(ref.flags & (kObjTableLeaf | kObjTableInner))) {
    return Status::Corruption(where + ": wrong kind");
  }
  out->resize(count);
  uint8_t* bytes = reinterpret_cast<uint8_t*>(out->data());
  if (count == 0) {
    if (ref.pack_id != 0) return Status::Corruption(where + ": an empty page must not be stored");
    uint8_t digest[32];
    simd::Sha256(bytes, 0, digest);
    if (std::memcmp(digest, ref.sha256, 32) != 0) return Status::Corruption(where + ": bad digest");
    return Status::Ok();
  }
  return packs_.ReadObject(ref, {bytes, want});
}

Result<const std::vector<Entry>*> TableReader::Page(uint32_t level, uint64_t index) {
  Cached& c = cache_[level];
  if (c.valid && c.index == index) return &c.entries;
  DP420_ASSIGN_OR_RETURN(ObjRef ref, PageRef(level, index));
  c.valid = false;
  DP420_RETURN_IF_ERROR(ReadPage(ref, PageEntryCount(shape_, level, index), &c.entries));
  c.valid = true;
  c.index = index;
  return &c.entries;
}

Result<ObjRef> TableReader::PageRef(uint32_t level, uint64_t index) {
  if (level + 1 == shape_.levels) {
    if (index != 0) return Status::Internal("root index out of range");
    return root_;
  }
  if (index >= shape_.PagesAt(level)) return Status::Internal("page index out of range");
  DP420_ASSIGN_OR_RETURN(const std::vector<Entry>* parent, Page(level + 1, index / kPageEntries));
  return (*parent)[index % kPageEntries].ref;
}

Result<const Entry*> TableReader::Leaf(uint64_t page, uint32_t* count) {
  DP420_ASSIGN_OR_RETURN(const std::vector<Entry>* entries, Page(0, page));
  *count = static_cast<uint32_t>(entries->size());
  return entries->data();
}

TableBuilder::TableBuilder(const TableShape& shape, TableReader* parent, WritePage write_page)
    : shape_(shape), parent_(parent), write_page_(std::move(write_page)) {
  pending_.resize(shape_.levels);
  next_index_.assign(shape_.levels, 0);
}

Status TableBuilder::AddLeaf(const Entry* entries, uint32_t count) {
  return AddPage(0, entries, count);
}

Status TableBuilder::AddPage(uint32_t level, const Entry* entries, uint32_t count) {
  uint64_t index = next_index_[level]++;
  DP420_ASSERT(index < shape_.PagesAt(level));
  DP420_ASSERT(count == PageEntryCount(shape_, level, index));
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(entries);
  uint32_t len = count * sizeof(Entry);
  ObjRef ref{};
  simd::Sha256(bytes, len, ref.sha256);
  std::string key(reinterpret_cast<char*>(ref.sha256), 32);
  bool reused = false;
  if (auto it = written_.find(key); it != written_.end()) {
    ref = it->second;
    reused = true;
  } else if (parent_ && level < parent_->shape().levels &&
             index < parent_->shape().PagesAt(level)) {
    auto old = parent_->PageRef(level, index);
    if (old.ok() && std::memcmp(old->sha256, ref.sha256, 32) == 0) {
      ref = old.value();
      reused = true;
    }
  }
  if (reused) {
    ++pages_reused_;
  } else {
    ref.flags = level == 0 ? kObjTableLeaf : kObjTableInner;
    if (count == 0) {
      ref.pack_id = 0;  // the empty page of an empty volume is not stored
    } else {
      DP420_RETURN_IF_ERROR(write_page_(bytes, len, &ref));
    }
    ++pages_written_;
    if (written_.size() < 4096) written_.emplace(key, ref);
  }
  if (level + 1 == shape_.levels) {
    root_ = ref;
    return Status::Ok();
  }
  Entry child{};
  std::memcpy(child.id, ref.sha256, 16);
  child.ref = ref;
  auto& pend = pending_[level + 1];
  pend.push_back(child);
  uint32_t want = PageEntryCount(shape_, level + 1, next_index_[level + 1]);
  if (pend.size() == want) {
    std::vector<Entry> page;
    page.swap(pend);
    return AddPage(level + 1, page.data(), static_cast<uint32_t>(page.size()));
  }
  return Status::Ok();
}

Result<ObjRef> TableBuilder::Finish() {
  if (!root_) return Status::Internal("table incomplete: not every leaf page was added");
  return *root_;
}

}  // namespace dp420
