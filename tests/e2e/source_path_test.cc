// Sources whose file names are not UTF-8: a Linux path may hold any bytes but
// NUL, and the manifest is JSON. The CLI backs such a source up, lists it and
// restores it bit-exact; the manifest records the name escaped as
// docs/FORMAT.md (`source.path`) describes. Before the escaping, the backup
// failed with "internal error" (the manifest's JSON dump threw).
// The same over the network: cli_remote_test.cc. With --json, a repository
// path that is not UTF-8 is printed with U+FFFD in its place; before, the
// command's own JSON dump threw and the command aborted (exit code 134).

#include <gtest/gtest.h>

#include <string>

#include "e2e_util.h"

namespace dp420::e2e {
namespace {

TEST(SourcePathTest, NameNotUtf8BacksUpAndRestoresBitExact) {
  TempDir dir;
  std::string repo = InitRepo(dir);
  // 0xff 0xfe are never UTF-8; the backslash shows that escapes stay reversible.
  std::string source = dir / "vol-\xff\xfe-a\\b.img";
  WritePatternFile(source, (2ull << 20) + 1234, 7, 4);

  Result backup = Cli({"backup", "--repo", repo, "--volume", "v", "--json", source});
  DP420_ASSERT_EXIT(backup, kExitOk);
  Json b = ParseJson(backup);
  EXPECT_EQ(b.at("checksum_sha256"), VolumeChecksum(source, b.at("block_size").get<uint64_t>()));

  Result list = Cli({"snapshots", "--repo", repo, "--volume", "v", "--json"});
  DP420_ASSERT_EXIT(list, kExitOk);
  Json snaps = ParseJson(list);
  ASSERT_EQ(snaps.size(), 1u) << snaps.dump();
  const std::string escaped = dir.path() + "/vol-\\xff\\xfe-a\\\\b.img";
  EXPECT_EQ(snaps[0].at("source").at("path"), escaped) << snaps.dump();
  EXPECT_EQ(snaps[0].at("node_topology").at("device"), escaped) << snaps.dump();

  std::string target = dir / "restored.img";
  Result restore = Cli({"restore", "--repo", repo, "--volume", "v", "--json", target});
  DP420_ASSERT_EXIT(restore, kExitOk);
  EXPECT_EQ(Sha256File(target), Sha256File(source)) << "restored bytes differ";
  Result verify = Cli({"verify", "--repo", repo, "--read-data", "--json"});
  DP420_EXPECT_EXIT(verify, kExitOk);
}

TEST(SourcePathTest, RepositoryPathNotUtf8PrintsItsJsonDocument) {
  TempDir dir;
  Result init = Cli({"init", "--json", "--encryption", "none", dir / "repo-\xff"});
  DP420_ASSERT_EXIT(init, kExitOk);
  EXPECT_EQ(ParseJson(init).at("repository"), dir.path() + "/repo-\xef\xbf\xbd");

  Result missing = Cli({"snapshots", "--json", "--repo", dir / "missing-\xff"});
  DP420_ASSERT_EXIT(missing, kExitNotFound);
  Json error = ParseJson(missing).at("error");
  EXPECT_EQ(error.at("exit_code"), kExitNotFound) << error.dump();
  EXPECT_NE(error.at("message").get<std::string>().find("missing-\xef\xbf\xbd"),
            std::string::npos)
      << error.dump();
}

}  // namespace
}  // namespace dp420::e2e
