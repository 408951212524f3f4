// Unit tests of the on-disk pieces: table geometry, sealed JSON, packs,
// manifests, the repository's refusals.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "engine/core/manifest.h"
#include "engine/core/pack.h"
#include "engine/core/repo.h"
#include "engine/core/table.h"
#include "io/file.h"
#include "simd/simd.h"
#include "tests/engine/engine_test_util.h"

namespace dp420 {
namespace {

using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

TEST(TableShapeTest, LevelsAndPageCounts) {
  EXPECT_EQ(TableShape::For(0).levels, 1u);
  EXPECT_EQ(TableShape::For(256).levels, 1u);
  EXPECT_EQ(TableShape::For(257).levels, 2u);
  EXPECT_EQ(TableShape::For(65536).levels, 2u);
  EXPECT_EQ(TableShape::For(65537).levels, 3u);
  TableShape s = TableShape::For(1000);
  EXPECT_EQ(s.PagesAt(0), 4u);
  EXPECT_EQ(s.PagesAt(1), 1u);
  EXPECT_EQ(PageEntryCount(s, 0, 3), 1000u - 768u);
  EXPECT_EQ(PageEntryCount(s, 1, 0), 4u);
  EXPECT_EQ(PageEntryCount(s, 0, 4), 0u);
}

SealKey TestKey(uint8_t fill) {
  std::vector<uint8_t> bytes(192, fill);
  return SealKey::Derive(bytes.data(), bytes.size());
}

TEST(SealedJsonTest, RoundTripAndTamperDetected) {
  SealKey key = TestKey(1);
  Json doc = {{"a", 1}, {"b", "x"}};
  std::string seal;
  std::string text = SealJson(doc, key, &seal);
  EXPECT_EQ(text.substr(text.find('\n') + 1, 12), "hmac-sha256 ");
  std::string seal2;
  auto back = UnsealJson(text, "f", &key, &seal2);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back.value(), doc);
  EXPECT_EQ(seal, seal2);
  std::string tampered = text;
  tampered[6] ^= 1;
  auto bad = UnsealJson(tampered, "snapshots/v/x.manifest", &key);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kCorruption);
  EXPECT_NE(bad.status().message().find("snapshots/v/x.manifest"), std::string::npos);
  EXPECT_FALSE(UnsealJson("garbage", "f", &key).ok());
}

// Whoever edits a repository without its key cannot seal what it wrote: not
// under another key, and not with the bare SHA-256 of format 1.
TEST(SealedJsonTest, ForgedSealsAreRefused) {
  SealKey key = TestKey(1);
  Json doc = {{"sequence", 9}};
  auto other = UnsealJson(SealJson(doc, TestKey(2)), "m", &key);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("seal mismatch"), std::string::npos);
  auto plain = UnsealJson(SealJsonPlain(doc), "m", &key);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.status().message().find("bare SHA-256"), std::string::npos);
  // The plain seal still catches damage where it is used (the clients file).
  std::string text = SealJsonPlain(doc);
  EXPECT_TRUE(UnsealJsonPlain(text, "c").ok());
  text[3] ^= 1;
  EXPECT_FALSE(UnsealJsonPlain(text, "c").ok());
  // A reader without the key (an agent) reads the seal it cannot check.
  std::string seal, read;
  std::string keyed = SealJson(doc, key, &seal);
  ASSERT_TRUE(UnsealJson(keyed, "m", nullptr, &read).ok());
  EXPECT_EQ(read, seal);
}

// A manifest of a 301-block volume whose fields are all valid.
Manifest SampleManifest() {
  Manifest m;
  m.repo_id = std::string(32, 'a');
  m.snapshot_id = "0123456789abcdef";
  m.volume = "vm-1";
  m.sequence = 7;
  m.block_size = 65536;
  m.volume_size = 65536 * 300 + 5;
  m.blocks_total = 301;
  m.table_levels = 2;
  m.table_root.pack_id = 0x1234;
  m.table_root.flags = kObjTableInner;
  m.checksum_sha256 = std::string(64, 'f');
  return m;
}

TEST(ManifestTest, JsonRoundTripAndNewerVersionRefused) {
  const Manifest m = SampleManifest();
  auto back = Manifest::FromJson(m.ToJson(), "m");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->FileName(), "0000000007-0123456789abcdef.manifest");
  EXPECT_EQ(back->table_root.pack_id, 0x1234u);
  Json newer = m.ToJson();
  newer["format_version"] = 999;
  EXPECT_EQ(Manifest::FromJson(newer, "m").status().code(), Code::kVersion);
  Json inconsistent = m.ToJson();
  inconsistent["blocks_total"] = 5;
  EXPECT_EQ(Manifest::FromJson(inconsistent, "m").status().code(), Code::kCorruption);
}

// What `--compression auto` chose (auto_compression.h) survives a round trip; a
// manifest of an older dp420 has none of it; a malformed choice is refused, a
// malformed measurement ignored.
TEST(ManifestTest, CompressionChoiceRoundTripAndMalformedRefused) {
  Manifest m = SampleManifest();
  m.compression = "zstd:1";
  m.compression_auto = true;
  m.compression_measured = Json{{"reason", "why"}, {"device_read_bytes_per_s", 1e9}};
  Json j = m.ToJson();
  EXPECT_EQ(j["compression"], "zstd:1");
  auto back = Manifest::FromJson(j, "m");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->compression, "zstd:1");
  EXPECT_TRUE(back->compression_auto);
  EXPECT_EQ(back->compression_measured, m.compression_measured);
  j.erase("compression");
  j.erase("compression_auto");
  j.erase("compression_measured");
  back = Manifest::FromJson(j, "m");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->compression, "");
  EXPECT_FALSE(back->compression_auto);
  EXPECT_FALSE(back->ToJson().contains("compression"));
  for (const Json& bad : {Json{{"compression_auto", "yes"}}, Json{{"compression", 3}}}) {
    Json k = m.ToJson();
    k.update(bad);
    EXPECT_EQ(Manifest::FromJson(k, "m").status().code(), Code::kCorruption) << bad.dump();
  }
  // What auto measured only informs: one that is not an object is dropped, and the
  // snapshot still reads.
  Json k = m.ToJson();
  k["compression_measured"] = "fast";
  back = Manifest::FromJson(k, "m");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->compression_measured.empty());
}

TEST(VolumeNameTest, Validation) {
  EXPECT_TRUE(ValidVolumeName("vm1.disk_0-a"));
  EXPECT_FALSE(ValidVolumeName(""));
  EXPECT_FALSE(ValidVolumeName(".hidden"));
  EXPECT_FALSE(ValidVolumeName("a/b"));
  EXPECT_FALSE(ValidVolumeName("../x"));
  EXPECT_FALSE(ValidVolumeName(std::string(65, 'a')));
}

TEST(PackTest, WriteReadIndexAndDetectDamage) {
  TempDir dir;
  uint8_t repo_id[16] = {1, 2, 3};
  std::vector<uint32_t> created;
  auto w = PackWriter::Create(
      dir.path(), repo_id, true,
      [&](uint32_t id) {
        created.push_back(id);
        return Status::Ok();
      },
      kPackVersionRaw);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<uint8_t> a(10000, 0xab), b(4096, 0xcd);
  ObjRef ra{}, rb{};
  simd::Sha256(a.data(), a.size(), ra.sha256);
  simd::Sha256(b.data(), b.size(), rb.sha256);
  ASSERT_TRUE(w->WriteRecord(a.data(), uint32_t(a.size()), &ra).ok());
  ASSERT_TRUE(w->WriteRecord(b.data(), uint32_t(b.size()), &rb).ok());
  EXPECT_EQ(ra.offset_4k, 1u);
  EXPECT_EQ(rb.offset_4k, 4u);  // 10000 bytes padded to 3 pages
  uint32_t id = w->pack_id();
  ASSERT_EQ(created, std::vector<uint32_t>{id});
  ASSERT_TRUE(w->Finish().ok());
  std::string path = dir.path() + "/" + PackName(id) + ".pack";
  EXPECT_EQ(w->final_size() % 4096, 0u);

  auto r = PackReader::Open(path, id);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto index = r->ReadIndex();
  ASSERT_TRUE(index.ok());
  ASSERT_EQ(index->size(), 2u);
  EXPECT_EQ(std::memcmp((*index)[1].sha256, rb.sha256, 32), 0);
  std::vector<uint8_t> buf(12288);
  EXPECT_EQ(r->version(), kPackVersionRaw);
  EXPECT_TRUE(r->ReadStored(ra, buf.data()).ok());
  EXPECT_TRUE(r->CheckRecord((*index)[0], buf.data()).ok());
  EXPECT_FALSE(PackReader::Open(path, id + 1).ok());  // header names another pack

  // A flipped byte in a record, then a truncated trailer.
  auto bytes = ReadAll(path);
  bytes[4096 + 5] ^= 1;
  WriteAll(path, bytes);
  auto r2 = PackReader::Open(path, id);
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE(r2->ReadStored(ra, buf.data()).ok());
  Status s = r2->CheckRecord((*index)[0], buf.data());
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("offset 4096"), std::string::npos);
  ASSERT_EQ(truncate(path.c_str(), off_t(bytes.size() - 4096)), 0);
  auto r3 = PackReader::Open(path, id);
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(r3->ReadIndex().status().code(), Code::kCorruption);
}

// A pack of version 2 (format 3): the trailer holds each record's stored
// bytes' XXH3-128 (not the raw SHA-256 the reference keeps, which in an
// encrypted repository would tell what a block holds), and CheckRecord checks
// a record against it without any key.
TEST(PackTest, VersionTwoTrailerHoldsStoredDigestsAndCatchesDamage) {
  TempDir dir;
  uint8_t repo_id[16] = {4, 5, 6};
  auto w = PackWriter::Create(dir.path(), repo_id, false, [](uint32_t) { return Status::Ok(); },
                              kPackVersionEncoded);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<uint8_t> a(6000, 0x5a), b(4096, 0xa5);
  ObjRef ra{}, rb{};
  simd::Sha256(a.data(), a.size(), ra.sha256);
  simd::Sha256(b.data(), b.size(), rb.sha256);
  ra.flags = kObjLz4;
  ASSERT_TRUE(w->WriteRecord(a.data(), uint32_t(a.size()), &ra).ok());
  ASSERT_TRUE(w->WriteRecord(b.data(), uint32_t(b.size()), &rb).ok());
  uint32_t id = w->pack_id();
  ASSERT_TRUE(w->Finish().ok());
  std::string path = dir.path() + "/" + PackName(id) + ".pack";
  auto r = PackReader::Open(path, id);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->version(), kPackVersionEncoded);
  auto index = r->ReadIndex();
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  ASSERT_EQ(index->size(), 2u);
  uint8_t expect[32];
  StoredDigest(a.data(), a.size(), expect);
  EXPECT_EQ(std::memcmp((*index)[0].sha256, expect, 32), 0);
  EXPECT_NE(std::memcmp((*index)[0].sha256, ra.sha256, 32), 0);  // the raw SHA-256 stays out
  EXPECT_EQ((*index)[0].flags, kObjLz4);
  std::vector<uint8_t> buf(8192);
  ASSERT_TRUE(r->ReadStored((*index)[0], buf.data()).ok());
  EXPECT_TRUE(r->CheckRecord((*index)[0], buf.data()).ok());
  buf[100] ^= 0x10;
  Status s = r->CheckRecord((*index)[0], buf.data());
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("stored digest"), std::string::npos) << s.message();
}

// Three records back to back, read with one ReadRunBytes: the padding after
// each zeroed whatever the file held there, each passing CheckRecord; a
// flipped byte in the middle one fails it, named by its offset.
TEST(PackTest, ReadRunChecksBackToBackRecordsAndZeroesTheirPadding) {
  TempDir dir;
  uint8_t repo_id[16] = {4, 5, 6};
  // Version 1: CheckRecord checks the refs' own SHA-256 (their trailer entries).
  auto w = PackWriter::Create(dir.path(), repo_id, false, [](uint32_t) { return Status::Ok(); },
                              kPackVersionRaw);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<std::vector<uint8_t>> records = {std::vector<uint8_t>(10000, 0x11),
                                               std::vector<uint8_t>(4096, 0x22),
                                               std::vector<uint8_t>(5000, 0x33)};
  std::vector<ObjRef> refs(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    simd::Sha256(records[i].data(), records[i].size(), refs[i].sha256);
    ASSERT_TRUE(w->WriteRecord(records[i].data(), uint32_t(records[i].size()), &refs[i]).ok());
  }
  uint32_t id = w->pack_id();
  ASSERT_TRUE(w->Finish().ok());
  EXPECT_TRUE(Adjacent(refs[0], refs[1]));
  EXPECT_TRUE(Adjacent(refs[1], refs[2]));
  EXPECT_FALSE(Adjacent(refs[0], refs[2]));
  EXPECT_EQ(RunBytes(refs.data(), 3), 3 * 4096u + 4096u + 2 * 4096u);
  std::string path = dir.path() + "/" + PackName(id) + ".pack";
  auto bytes = ReadAll(path);
  bytes[4096 + 10000] = 0x7f;          // padding after the first record
  bytes[6 * 4096 + 5000 + 1] = 0x7f;   // padding after the last
  WriteAll(path, bytes);

  auto r = PackReader::Open(path, id);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<uint8_t> buf(RunBytes(refs.data(), 3), 0xee);
  ASSERT_TRUE(r->ReadRunBytes(refs.data(), 3, buf.data()).ok());
  EXPECT_TRUE(r->CheckRecord(refs[0], buf.data()).ok());
  EXPECT_TRUE(r->CheckRecord(refs[1], buf.data() + 3 * 4096).ok());
  EXPECT_TRUE(r->CheckRecord(refs[2], buf.data() + 4 * 4096).ok());
  std::vector<uint8_t> expect(buf.size(), 0);
  std::copy(records[0].begin(), records[0].end(), expect.begin());
  std::copy(records[1].begin(), records[1].end(), expect.begin() + 3 * 4096);
  std::copy(records[2].begin(), records[2].end(), expect.begin() + 4 * 4096);
  EXPECT_TRUE(buf == expect);

  bytes[4 * 4096 + 7] ^= 1;  // the middle record
  WriteAll(path, bytes);
  auto r2 = PackReader::Open(path, id);
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE(r2->ReadRunBytes(refs.data(), 3, buf.data()).ok());
  EXPECT_TRUE(r2->CheckRecord(refs[0], buf.data()).ok());
  Status s = r2->CheckRecord(refs[1], buf.data() + 3 * 4096);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("offset 16384"), std::string::npos) << s.message();
}

TEST(RepositoryTest, InitRefusesNonEmptyAndOpenRefusesNonRepo) {
  TempDir dir;
  WriteAll(dir.path() + "/file", {1, 2, 3});
  EXPECT_EQ(Repository::Init(dir.path()).code(), Code::kExists);
  auto open = Repository::Open(dir.path());
  EXPECT_EQ(open.status().code(), Code::kNotFound);
  EXPECT_NE(open.status().message().find("not a dp420 repository"), std::string::npos);
  std::string repo = dir.path() + "/repo";
  ASSERT_TRUE(Repository::Init(repo).ok());
  struct stat st;
  ASSERT_EQ(stat((repo + "/keys/hash.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(repo.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // A damaged key is caught at open, not silently used.
  auto key = ReadAll(repo + "/keys/hash.key");
  key[0] ^= 1;
  WriteAll(repo + "/keys/hash.key", key);
  EXPECT_EQ(Repository::Open(repo).status().code(), Code::kCorruption);
}

TEST(RepositoryTest, VolumeLockExcludesSecondWriter) {
  TempDir dir;
  std::string path = dir.path() + "/repo";
  ASSERT_TRUE(Repository::Init(path).ok());
  auto repo = Repository::Open(path);
  ASSERT_TRUE(repo.ok());
  auto first = (*repo)->LockVolume("v");
  ASSERT_TRUE(first.ok());
  // flock locks belong to open file descriptions: a second open conflicts.
  auto second = (*repo)->LockVolume("v");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kBusy);
  EXPECT_TRUE((*repo)->LockVolume("other").ok());
}

}  // namespace
}  // namespace dp420
