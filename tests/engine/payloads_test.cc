// The pure payload decoders of engine/net/payloads.h: each accepts what its
// sender writes and refuses a short, overlong or out-of-range payload.
#include <gtest/gtest.h>

#include "engine/net/payloads.h"

namespace dp420::net {
namespace {

TEST(PayloadsTest, HelloRoundTripsAndFlagsAShortPayload) {
  PayloadWriter w;
  w.U16(kProtocolVersion);
  w.String("db1");
  w.Bytes(std::vector<uint8_t>(kEphemeralBytes, 7));
  HelloMsg hello;
  ASSERT_TRUE(ParseHello(w.bytes(), &hello).ok());
  EXPECT_EQ(hello.version, kProtocolVersion);
  EXPECT_EQ(hello.client, "db1");
  EXPECT_EQ(hello.ephemeral[31], 7);
  EXPECT_TRUE(hello.read_ok);
  std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 1);
  HelloMsg short_hello;
  EXPECT_EQ(ParseHello(cut, &short_hello).code(), Code::kCorruption);
  EXPECT_FALSE(short_hello.read_ok);
  // Another version with every field there: read_ok, so the caller names the version.
  PayloadWriter v3;
  v3.U16(3);
  v3.String("db1");
  v3.Bytes(std::vector<uint8_t>(kEphemeralBytes, 7));
  v3.U8(0);  // and a trailing byte
  HelloMsg other;
  EXPECT_FALSE(ParseHello(v3.bytes(), &other).ok());
  EXPECT_TRUE(other.read_ok);
  EXPECT_EQ(other.version, 3);
}

TEST(PayloadsTest, VerifyRefusesAReadDataFlagAboveOne) {
  PayloadWriter w;
  w.String("vm1");
  w.String("");
  w.U8(2);
  VerifyRequestMsg v;
  Status s = ParseVerifyRequest(w.bytes(), &v);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("read_data"), std::string::npos);
}

TEST(PayloadsTest, StripeJoinRefusesAnOverlongOrBinaryToken) {
  PayloadWriter ok;
  ok.String("abc");
  ok.U32(3);
  std::string token;
  uint32_t stripe = 0;
  ASSERT_TRUE(ParseStripeJoin(ok.bytes(), &token, &stripe).ok());
  EXPECT_EQ(token, "abc");
  EXPECT_EQ(stripe, 3u);
  PayloadWriter binary;
  binary.String(std::string("a\xff", 2));
  binary.U32(0);
  EXPECT_FALSE(ParseStripeJoin(binary.bytes(), &token, &stripe).ok());
  PayloadWriter longer;
  longer.String(std::string(65, 'a'));
  longer.U32(0);
  EXPECT_FALSE(ParseStripeJoin(longer.bytes(), &token, &stripe).ok());
}

TEST(PayloadsTest, PageReadsItsEntriesAndStopsAtTheEnd) {
  PayloadWriter w;
  w.U64(5);
  w.U32(3);
  for (int i = 0; i < 3; ++i) {
    w.U8(static_cast<uint8_t>(i));
    w.Bytes(std::vector<uint8_t>(16, static_cast<uint8_t>(i + 1)));
  }
  auto msg = std::make_unique<PageMsg>();
  ParsePage(w.bytes(), 16, "PAGE", msg.get());
  EXPECT_TRUE(msg->finish.ok());
  EXPECT_TRUE(msg->head_ok);
  EXPECT_EQ(msg->page, 5u);
  EXPECT_EQ(msg->entries, 3u);
  EXPECT_EQ(msg->kind[2], 2);
  EXPECT_EQ(msg->bytes[2][15], 3);
  std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 1);
  ParsePage(cut, 16, "PAGE", msg.get());
  EXPECT_FALSE(msg->finish.ok());
  EXPECT_EQ(msg->entries, 2u);
  // A count past a page: the entries are not read.
  PayloadWriter big;
  big.U64(0);
  big.U32(kPageMsgEntries + 1);
  ParsePage(big.bytes(), 16, "PAGE", msg.get());
  EXPECT_TRUE(msg->head_ok);
  EXPECT_EQ(msg->entries, 0u);
}

TEST(PayloadsTest, ParentPageChecksPageCountAndLength) {
  PayloadWriter w;
  w.U64(1);
  w.U32(2);
  w.Bytes(std::vector<uint8_t>(2 * 49, 0));
  uint64_t page = 0;
  uint32_t count = 0;
  EXPECT_TRUE(ParseParentPage(w.bytes(), 2, &page, &count).ok());
  EXPECT_FALSE(ParseParentPage(w.bytes(), 1, &page, &count).ok());  // page past the table
  std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 1);
  EXPECT_FALSE(ParseParentPage(cut, 2, &page, &count).ok());
}

TEST(PayloadsTest, BeginRefusesStripesOutOfRangeAndANonObjectTopology) {
  auto begin = [](uint32_t stripes, const std::string& topology) {
    PayloadWriter w;
    w.String("vm1");
    w.U32(65536);
    w.U64(1 << 20);
    w.U32(stripes);
    w.String("/dev/sda");
    w.String("block-device");
    w.String(topology);
    w.String("0.1.0");
    w.String("");
    return ParseBegin(w.bytes());
  };
  ASSERT_TRUE(begin(2, "{}").ok());
  EXPECT_EQ(begin(2, "{}")->volume, "vm1");
  EXPECT_FALSE(begin(0, "{}").ok());
  EXPECT_FALSE(begin(kMaxStripes + 1, "{}").ok());
  EXPECT_FALSE(begin(2, "[]").ok());
  EXPECT_FALSE(begin(2, std::string(20, '[') + std::string(20, ']')).ok());
}

TEST(PayloadsTest, BeginCarriesAGroupAndEpochOnlyWhenBothAreValid) {
  auto begin = [](const std::string* group, uint64_t epoch) {
    PayloadWriter w;
    w.String("vm1");
    w.U32(65536);
    w.U64(1 << 20);
    w.U32(1);
    w.String("/dev/sda");
    w.String("block-device");
    w.String("{}");
    w.String("0.1.0");
    w.String("");
    if (group) {
      w.String(*group);
      w.U64(epoch);
    }
    return ParseBegin(w.bytes());
  };
  ASSERT_TRUE(begin(nullptr, 0).ok());
  EXPECT_TRUE(begin(nullptr, 0)->group.empty());
  std::string db = "db";
  ASSERT_TRUE(begin(&db, 7).ok());
  EXPECT_EQ(begin(&db, 7)->group, "db");
  EXPECT_EQ(begin(&db, 7)->group_epoch, 7u);
  EXPECT_FALSE(begin(&db, 0).ok());  // epoch 0 is never issued
  std::string dot = ".x", slash = "a/b";
  EXPECT_FALSE(begin(&dot, 1).ok());
  EXPECT_FALSE(begin(&slash, 1).ok());
}

TEST(PayloadsTest, GroupMessagesRoundTripAndRefuseWhatIsNotOne) {
  control::GroupMsg m = control::GroupMsg::Make(control::GroupMsgKind::kDurable, "db", 42,
                                                "node1:disk", "ab12");
  m.probe = 3;
  m.wall_ns = -5;  // a clock before 1970 is carried as it is
  PayloadWriter w;
  WriteGroupMsg(m, &w);
  control::GroupMsg back;
  ASSERT_TRUE(ParseGroupMsg(w.bytes(), &back).ok());
  EXPECT_EQ(back.kind, m.kind);
  EXPECT_EQ(back.group, "db");
  EXPECT_EQ(back.epoch, 42u);
  EXPECT_EQ(back.member, "node1:disk");
  EXPECT_EQ(back.probe, 3u);
  EXPECT_EQ(back.wall_ns, -5);
  EXPECT_EQ(back.detail, "ab12");
  auto refused = [](control::GroupMsg bad) {
    PayloadWriter w;
    WriteGroupMsg(bad, &w);
    control::GroupMsg out;
    return !ParseGroupMsg(w.bytes(), &out).ok();
  };
  control::GroupMsg bad = m;
  bad.kind = static_cast<control::GroupMsgKind>(0);
  EXPECT_TRUE(refused(bad));
  bad = m;
  bad.kind = static_cast<control::GroupMsgKind>(11);
  EXPECT_TRUE(refused(bad));
  bad = m;
  bad.member = "node1";  // not CLIENT:VOLUME
  EXPECT_TRUE(refused(bad));
  bad = m;
  bad.member = ":disk";
  EXPECT_TRUE(refused(bad));
  bad = m;
  bad.group = "";
  EXPECT_TRUE(refused(bad));
  bad = m;
  bad.detail = std::string("\xff\xfe");  // not UTF-8: never logged as it is
  EXPECT_TRUE(refused(bad));
  std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 1);
  control::GroupMsg out;
  EXPECT_FALSE(ParseGroupMsg(cut, &out).ok());
}

TEST(PayloadsTest, GroupJoinNamesOneToSixtyFourDistinctValidVolumes) {
  auto join = [](const std::vector<std::string>& volumes) {
    PayloadWriter w;
    w.U32(uint32_t(volumes.size()));
    for (const auto& v : volumes) w.String(v);
    std::vector<std::string> out;
    return ParseGroupJoin(w.bytes(), &out).ok();
  };
  EXPECT_TRUE(join({"disk", "db"}));
  EXPECT_FALSE(join({}));
  EXPECT_FALSE(join({"disk", "disk"}));
  EXPECT_FALSE(join({"a/b"}));
  std::vector<std::string> many;
  for (int i = 0; i < 65; ++i) many.push_back("v" + std::to_string(i));
  EXPECT_FALSE(join(many));
  many.pop_back();
  EXPECT_TRUE(join(many));
}

TEST(PayloadsTest, ProblemSplitsItsSnapshotList) {
  PayloadWriter w;
  w.String("packs/00000001.pack");
  w.String("bad");
  w.String("a,,b,");
  VerifyProblem p;
  ASSERT_TRUE(ParseProblem(w.bytes(), &p).ok());
  EXPECT_EQ(p.snapshots, (std::vector<std::string>{"a", "b"}));
}

}  // namespace
}  // namespace dp420::net
