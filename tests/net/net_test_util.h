// gtest glue for the network harness (netns.h, delay_proxy.h): skip a test, with the
// reason printed, where network namespaces or nftables cannot be used (not root, tools
// missing, `ip netns add` refused), as liburing's tests exit with T_EXIT_SKIP.
//
// Thread safety: as gtest; use the macros in a test body.

#ifndef DP420_TESTS_NET_NET_TEST_UTIL_H_
#define DP420_TESTS_NET_NET_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <string>

#include "netns.h"

// GTEST_SKIP()s the current test unless network namespaces, veth pairs and tc work here.
#define DP420_SKIP_WITHOUT_NETNS()                                                  \
  do {                                                                              \
    const std::string skip_reason_ = ::dp420::testnet::NetNsUnavailableReason();    \
    if (!skip_reason_.empty()) GTEST_SKIP() << "skipped: " << skip_reason_;         \
  } while (0)

// As DP420_SKIP_WITHOUT_NETNS, and also needs nftables.
#define DP420_SKIP_WITHOUT_NFT()                                                    \
  do {                                                                              \
    const std::string skip_reason_ = ::dp420::testnet::NftUnavailableReason();      \
    if (!skip_reason_.empty()) GTEST_SKIP() << "skipped: " << skip_reason_;         \
  } while (0)

#endif  // DP420_TESTS_NET_NET_TEST_UTIL_H_
