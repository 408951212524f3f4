# Included by CTest after gtest_discover_tests' list of net tests (net_test_TESTS): they
# change kernel network state (namespaces, veth pairs, nftables), so they run one at a time.
if(DEFINED net_test_TESTS AND NOT "${net_test_TESTS}" STREQUAL "")
  set_tests_properties(${net_test_TESTS} PROPERTIES
    LABELS "net;serial"
    RUN_SERIAL TRUE
    TIMEOUT 60)
endif()
