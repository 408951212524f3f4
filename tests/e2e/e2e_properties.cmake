# Included by CTest after gtest_discover_tests' list of e2e tests (e2e_test_TESTS).
if(DEFINED e2e_test_TESTS AND NOT "${e2e_test_TESTS}" STREQUAL "")
  set_tests_properties(${e2e_test_TESTS} PROPERTIES
    LABELS "e2e;serial"
    RUN_SERIAL TRUE
    RESOURCE_LOCK loopdev)
endif()
if(DEFINED group_real_test_TESTS AND NOT "${group_real_test_TESTS}" STREQUAL "")
  set_tests_properties(${group_real_test_TESTS} PROPERTIES
    LABELS "e2e;serial;net"
    RUN_SERIAL TRUE
    RESOURCE_LOCK loopdev)
endif()
