#!/usr/bin/env bash
# Installs missing dependencies, builds (Release, build/) and runs the tests.
#
#   scripts/test.sh [--long] [--no-sanitizers] [--no-build]
#
# Pass 1 runs the unit tests in parallel (ctest -j2). Pass 2 runs the tests labelled
# "serial" or "e2e" (loop devices, mounts, whole-disk timing) one at a time. Then the
# sanitizer passes (docs/RELIABILITY.md, "Sanitizers") and the bounded fuzz pass, on two
# trimmed builds of their own (-O1 -g1, only the targets they run; scripts/build.sh),
# made in the background at nice 19 while the plain passes run (their log:
# sanitized-builds.log in the results folder):
#   fuzz:ci          every libFuzzer target of tests/fuzz for 15 s (scripts/fuzz.sh --ci),
#                    in the ASan+UBSan build, beside the two asan-ubsan passes
#   asan-ubsan:unit  the unit tests under ASan+UBSan (build-asan-ubsan/, clang-14)
#   asan-ubsan:e2e   the e2e tests of SANITIZER_E2E below, running the sanitized dp420
#   tsan             the threaded io, engine and network tests under TSan (build-tsan/)
# A sanitizer report in any process (a test or a dp420 it ran) fails its pass; the
# reports are kept in the results folder. Suppressions: scripts/sanitizers/.
# --no-sanitizers leaves the sanitizer passes out (counted as skipped, with the reason)
# and runs the fuzz pass after the plain ones (fuzz.sh builds its targets); --sanitizers
# is accepted (the default).
# --long adds tests labelled "long" (soak, fuzz), every Google Benchmark binary in
# build/bench/ (short runs), perf/run.sh --quick, an hour per fuzz target
# (scripts/fuzz.sh --long) and clang-tidy (scripts/tidy.sh), and builds every target
# under both sanitizers and runs every test under both.
# --no-build skips dependencies and builds; a sanitizer pass whose build is missing is
# then counted as skipped, with the reason. DP420_BUILD_DIR picks another build tree,
# DP420_ASAN_BUILD_DIR and DP420_TSAN_BUILD_DIR the sanitized ones (not rebuilt).
# Ends with a summary line "summary: N passed, N failed, N skipped"; exits 1 on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly BUILD_DIR="${DP420_BUILD_DIR:-${ROOT}/build}"
readonly ASAN_DIR="${DP420_ASAN_BUILD_DIR:-${ROOT}/build-asan-ubsan}"
readonly TSAN_DIR="${DP420_TSAN_BUILD_DIR:-${ROOT}/build-tsan}"
readonly SUPPRESSIONS="${ROOT}/scripts/sanitizers"
# The targets of the ASan+UBSan build (--long builds them all): the unit test binaries
# and the e2e binary with the dp420 it runs (and tests/tools/fuse_volume).
readonly ASAN_TARGETS=(dp420_cli simd_test io_test crypto_test keystore_test key_cli_test
  codec_test engine_test engine_threads_test capi_test e2e_test fuzz_all)
# What asan-ubsan:unit leaves out (--long runs them): the binaries it does not build;
# install_consumers, which builds a program of its own against the installed (here
# sanitized) library, with no sanitizer runtime of its own (it tests the install, which
# the plain pass does); and two tests that only move more data through code the others
# run, minutes each under ASan (a chain restored at four block sizes and thread counts,
# the quick disk benchmark). The random corruption trials run 50 damaged repositories
# there instead of 200 (ASAN_CORRUPTION_TRIALS; a new seed each run).
readonly ASAN_UNIT_SKIP='(_NOT_BUILT$|^install_consumers$|^RestoreWindowTest\.ChainRestoresBitExact$|^BenchTest\.QuickRunReportsEverySectionAndLeavesSourceAndDiskAsTheyWere$)'
readonly ASAN_CORRUPTION_TRIALS=50
# The test binaries of the TSan build (--long builds them all): the threaded I/O, engine
# and network code.
readonly TSAN_TARGETS=(io_test engine_threads_test conn_test remote_test robustness_test preauth_test
  authz_test backup_net_test attack_test)
# The tests the tsan pass runs: those in which dp420's own threads meet, namely the io
# ring and the buffer pool; the engine's backup, restore, verify and commit check with
# their stripe threads; prune, whose repack checks records on a second thread; Conn,
# the handshake, the server's sessions and RemoteRepository
# over loopback; network backups (two agents at once, back to back, a server stopped);
# sessions ended from another thread (a client removed, an exception on a session, a
# flood of idle sockets). Not the single-threaded parsers and formats, which ASan+UBSan
# checks, nor the test harness's own (net_test, the tamper relay of attack_test).
readonly TSAN_TESTS='^((Ring|RingRead|RingEof|RingFault|BufferPool)Test\.|(Backup|RestoreWindow|Verify|CommitCheck|Prune)Test\.|(Conn|Handshake|Remote|BackupNet|StaleCache)Test\.|AuthzTest\.(RemovingAClientEndsItsSessionsWithinASecondAndCommitsNothing|ChangingAClientsKeyOrRoleEndsItsSessions|AGroupMessageForAnotherClientsMemberEndsTheChannel|GroupBackupsAndGroupListsNeedAnAdminClient)$|RobustnessTest\.ExceptionOnASessionEndsOnlyThatSession$|PreAuthTest\.IdleAndHalfOpenFloodNeitherCostsThreadsNorKeepsAgentsOut$)'
# Of those, what the tsan pass leaves to --long: tests that only move more data through
# the same threads (a 300 MiB sparse volume, volumes grown and shrunk, a chain restored
# at four block sizes and thread counts, hundreds of fuzzed streams, a prune over more
# packs than its open-file bound, 80 s under TSan), each minutes
# under TSan; and three network tests whose deadlines TSan's slowdown overruns (a 50 ms
# heartbeat loss timeout during a long verify, a partition's 3 s resend count, a server
# restart's 5 s handshake). All of them run in the plain passes.
readonly TSAN_SKIP='(_NOT_BUILT$|^BackupTest\.(ManySmallBlocksMultiLevelTable|GrowShrinkAndEmptyVolumes)$|^PruneTest\.MarksMorePacksThanTheOpenFileLimitLeavesRoomFor$|^RestoreWindowTest\.ChainRestoresBitExact$|^RemoteTest\.(Fuzzed.*|LongVerifyKeepsTheAgentAlive)$|^BackupNetTest\.(TwentySecondPartitionMidBackupResumes|ServerRestartMidBackupThenANewBackupSucceeds)$)'
# The e2e tests run against the ASan+UBSan dp420 in CI: one of each kind of run (full
# and incremental chains, bad input and injected faults, restore targets, crashes,
# damaged repositories, the network commands, consistency groups (server, agents and
# coordinator threads), FUSE sources). --long runs all of them.
# FuseSourceTest's two signal tests are left to --long here: once in three whole runs
# the FUSE server of SigtermOnBlockedRead... was gone ("Transport endpoint is not
# connected") before the test released its held read, with no sanitizer report; 12 runs
# of the two alone passed (docs/RELIABILITY.md, "Sanitizers"). The plain pass runs them.
readonly SANITIZER_E2E='^(ChainTest|BadInputTest|RestoreTargetTest|CrashPointTest|CliRemoteTest|GroupTest)\.|^FuseSourceTest\.(FileWith|LoopDevice)'

log() { printf 'test: %s\n' "$*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

long=0
build=1
sanitize=1
while (($# > 0)); do
  case "$1" in
    --long) long=1; sanitize=1 ;;
    --sanitizers) sanitize=1 ;;
    --no-sanitizers) sanitize=0 ;;
    --no-build) build=0 ;;
    -h | --help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done

start_s=${SECONDS}
if ((build)); then
  "${ROOT}/scripts/install-deps.sh"
  "${ROOT}/scripts/build.sh"
fi
[[ -f "${BUILD_DIR}/CTestTestfile.cmake" ]] || { log "no test tree in ${BUILD_DIR}: build first"; exit 1; }

readonly RESULTS_DIR="${BUILD_DIR}/test-results"
rm -rf "${RESULTS_DIR}"
mkdir -p "${RESULTS_DIR}"

# One line per pass: name passed failed skipped seconds.
summary=()
any_failure=0

# The sanitized builds run in the background, at the lowest priority (nice 19), while the
# plain passes run: those wait on disks, loop devices, sockets and timeouts much of the
# time, and the builds use the cores they leave idle instead of adding their whole time
# to the suite's. At nice 19 a build takes a core from a test only when the test leaves
# it. The ASan+UBSan build (clang, with the fuzz targets) comes first: the fuzz pass and
# the asan-ubsan passes run on it while the TSan build goes on. Each build writes its
# exit code to a file of its own when it ends (BUILD_STATUS_DIR).
readonly BUILD_STATUS_DIR="${RESULTS_DIR}/sanitized-builds"
build_sanitized() {
  if [[ -z "${DP420_ASAN_BUILD_DIR:-}" ]]; then
    local asan_build=(--sanitize=address,undefined) rc=0
    if ((!long)); then
      for target in "${ASAN_TARGETS[@]}"; do asan_build+=(--target "${target}"); done
    fi
    nice -n 19 "${ROOT}/scripts/build.sh" "${asan_build[@]}" || rc=$?
    echo "${rc}" >"${BUILD_STATUS_DIR}/asan"
  fi
  if [[ -z "${DP420_TSAN_BUILD_DIR:-}" ]]; then
    local tsan_build=(--sanitize=thread) rc=0
    if ((!long)); then
      for target in "${TSAN_TARGETS[@]}"; do tsan_build+=(--target "${target}"); done
    fi
    nice -n 19 "${ROOT}/scripts/build.sh" "${tsan_build[@]}" || rc=$?
    echo "${rc}" >"${BUILD_STATUS_DIR}/tsan"
  fi
}
sanitized_build_pid=0
readonly SANITIZED_BUILD_LOG="${RESULTS_DIR}/sanitized-builds.log"
if ((build && sanitize)); then
  log "sanitized builds started in the background (log: ${SANITIZED_BUILD_LOG})"
  mkdir -p "${BUILD_STATUS_DIR}"
  build_sanitized >"${SANITIZED_BUILD_LOG}" 2>&1 &
  sanitized_build_pid=$!
fi

# await_build KIND (asan, tsan): waits for that background build; false when it failed
# (counted in the summary) or the background job ended without building it.
await_build() {
  local kind="$1" wait_start=${SECONDS} rc
  ((sanitized_build_pid)) || return 0
  [[ "${kind}" == asan && -n "${DP420_ASAN_BUILD_DIR:-}" ]] && return 0
  [[ "${kind}" == tsan && -n "${DP420_TSAN_BUILD_DIR:-}" ]] && return 0
  while [[ ! -f "${BUILD_STATUS_DIR}/${kind}" ]] && kill -0 "${sanitized_build_pid}" 2>/dev/null; do
    sleep 1
  done
  rc="$(cat "${BUILD_STATUS_DIR}/${kind}" 2>/dev/null || echo 1)"
  if [[ "${rc}" == 0 ]]; then
    log "${kind} build done; waited $((SECONDS - wait_start)) s for it"
    return 0
  fi
  log "the ${kind} build failed (${SANITIZED_BUILD_LOG}):"
  tail -n 40 "${SANITIZED_BUILD_LOG}" >&2
  any_failure=1
  summary+=("build:${kind} 0 1 0 $((SECONDS - wait_start))")
  return 1
}

# junit_counts FILE: prints "passed failed skipped" from ctest's JUnit output.
junit_counts() {
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0")
    sys.exit(0)
suite = root if root.tag == "testsuite" else root.find("testsuite")
get = lambda k: int(suite.get(k, "0"))
skipped = get("skipped") + get("disabled")
failed = get("failures") + get("errors")
print(get("tests") - failed - skipped, failed, skipped)
PY
}

# run_ctest NAME CTEST_ARGS...: one ctest pass in CTEST_DIR (default BUILD_DIR),
# counted in the summary.
run_ctest() {
  local name="$1"
  shift
  local junit="${RESULTS_DIR}/${name//:/-}.xml" pass_start=${SECONDS} rc=0
  local dir="${CTEST_DIR:-${BUILD_DIR}}"
  log "pass '${name}': ctest --test-dir ${dir} $*"
  ctest --test-dir "${dir}" --output-on-failure --no-tests=ignore \
    --output-junit "${junit}" "$@" || rc=$?
  local passed failed skipped
  read -r passed failed skipped < <(junit_counts "${junit}")
  if ((rc != 0 && failed == 0)); then
    failed=1  # ctest itself failed (e.g. a test binary could not be listed)
  fi
  ((failed == 0)) || any_failure=1
  summary+=("${name} ${passed} ${failed} ${skipped} $((SECONDS - pass_start))")
}

# count_one NAME RC START: the summary line of a check counted as one test that exited
# with RC, started at SECONDS=START.
count_one() {
  local name="$1" rc="$2" one_start="$3"
  if ((rc == 0)); then
    summary+=("${name} 1 0 0 $((SECONDS - one_start))")
  else
    log "${name} failed (exit ${rc})"
    any_failure=1
    summary+=("${name} 0 1 0 $((SECONDS - one_start))")
  fi
}

# run_one NAME CMD...: a non-ctest check (benchmark, perf), counted as one test.
run_one() {
  local name="$1"
  shift
  local one_start=${SECONDS} rc=0
  log "running ${name}: $*"
  "$@" || rc=$?
  count_one "${name}" "${rc}" "${one_start}"
}

# sanitizer_pass NAME KIND DIR CTEST_ARGS...: run_ctest in the sanitized build DIR with
# KIND's options (asan: ASan+UBSan, tsan); every report goes to a file of its own, and
# any report fails the pass.
sanitizer_pass() {
  local name="$1" kind="$2" dir="$3"
  shift 3
  if [[ ! -f "${dir}/CTestTestfile.cmake" ]]; then
    log "pass '${name}' skipped: no sanitized build in ${dir} (scripts/build.sh --sanitize=...)"
    summary+=("${name} 0 0 1 0")
    return
  fi
  local reports="${RESULTS_DIR}/${name//:/-}-reports"
  mkdir -p "${reports}"
  chmod 1777 "${reports}"  # also for the tests' processes that run as another user
  # handle_sigbus=0: dp420 handles SIGBUS itself (io/guarded_map.cc: a source file that
  # shrinks under its mapping) and passes on the faults that are not its own; the
  # sanitizer's handler would turn those into its own report and exit code instead of
  # the signal (GuardedMapDeathTest).
  local common="halt_on_error=1:exitcode=86:handle_sigbus=0:log_path=${reports}/report"
  if [[ "${kind}" == asan ]]; then
    ASAN_OPTIONS="${common}:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:suppressions=${SUPPRESSIONS}/asan.supp" \
      LSAN_OPTIONS="suppressions=${SUPPRESSIONS}/lsan.supp" \
      UBSAN_OPTIONS="${common}:print_stacktrace=1:suppressions=${SUPPRESSIONS}/ubsan.supp" \
      CTEST_DIR="${dir}" run_ctest "${name}" "$@"
  else
    TSAN_OPTIONS="${common}:second_deadlock_stack=1:suppressions=${SUPPRESSIONS}/tsan.supp" \
      CTEST_DIR="${dir}" run_ctest "${name}" "$@"
  fi
  shopt -s nullglob
  local found=("${reports}"/report*)
  shopt -u nullglob
  if ((${#found[@]} > 0)); then
    log "pass '${name}': ${#found[@]} sanitizer report(s) in ${reports}:"
    cat "${found[@]}" >&2
    any_failure=1
    summary+=("${name}:reports 0 ${#found[@]} 0 0")
  fi
}

run_ctest unit -j2 -LE '^(serial|e2e|long)$'
run_ctest serial -j1 -L '^(serial|e2e)$' -LE '^long$'

if ((!sanitize)); then
  # The fuzz targets only: fuzz.sh builds them in the ASan+UBSan tree.
  if ((build)); then
    run_one "fuzz:ci" "${ROOT}/scripts/fuzz.sh" --ci
  else
    run_one "fuzz:ci" "${ROOT}/scripts/fuzz.sh" --ci --no-build
  fi
  log "sanitizer passes not run (--no-sanitizers)"
  for pass in asan-ubsan:unit asan-ubsan:e2e tsan; do summary+=("${pass} 0 0 1 0"); done
else
  if await_build asan; then
    # The fuzz targets run for a fixed time each, one at a time, beside the asan-ubsan
    # passes (whose e2e tests wait on the disk and loop devices much of the time): the
    # suite does not wait for them on their own. Their log: fuzz-ci.log.
    fuzz_start=${SECONDS} fuzz_pid=0
    if [[ -x "${ASAN_DIR}/tests/fuzz/fuzz_manifest" ]]; then
      DP420_FUZZ_JOBS=1 "${ROOT}/scripts/fuzz.sh" --ci --no-build >"${RESULTS_DIR}/fuzz-ci.log" 2>&1 &
      fuzz_pid=$!
    else
      log "pass 'fuzz:ci' skipped: no fuzz targets in ${ASAN_DIR} (scripts/fuzz.sh builds them)"
      summary+=("fuzz:ci 0 0 1 0")
    fi
    if ((long)); then
      sanitizer_pass asan-ubsan:unit asan "${ASAN_DIR}" -j2 -LE '^(serial|e2e)$'
      sanitizer_pass asan-ubsan:serial asan "${ASAN_DIR}" -j1 -L '^(serial|e2e)$'
    else
      DP420_CORRUPTION_TRIALS="${ASAN_CORRUPTION_TRIALS}" \
        sanitizer_pass asan-ubsan:unit asan "${ASAN_DIR}" -j2 -LE '^(serial|e2e|long)$' \
        -E "${ASAN_UNIT_SKIP}"
      sanitizer_pass asan-ubsan:e2e asan "${ASAN_DIR}" -j1 -L '^e2e$' -LE '^long$' -R "${SANITIZER_E2E}"
    fi
    if ((fuzz_pid)); then
      fuzz_rc=0
      wait "${fuzz_pid}" || fuzz_rc=$?
      grep '^fuzz: ' "${RESULTS_DIR}/fuzz-ci.log" >&2 || true
      count_one fuzz:ci "${fuzz_rc}" "${fuzz_start}"
    fi
  fi
  if await_build tsan; then
    if ((long)); then
      sanitizer_pass tsan tsan "${TSAN_DIR}" -j1
    else
      sanitizer_pass tsan tsan "${TSAN_DIR}" -j2 -LE '^long$' -R "${TSAN_TESTS}" -E "${TSAN_SKIP}"
    fi
  fi
  if ((sanitized_build_pid)); then wait "${sanitized_build_pid}" || true; fi
  grep '^build: ' "${SANITIZED_BUILD_LOG}" >&2 2>/dev/null || true
fi

if ((long)); then
  run_ctest long -j1 -L '^long$'
  shopt -s nullglob
  for bench in "${BUILD_DIR}"/bench/dp420_bench*; do
    [[ -f "${bench}" && -x "${bench}" ]] || continue
    run_one "bench:$(basename "${bench}")" "${bench}" --benchmark_min_time=0.05
  done
  shopt -u nullglob
  run_one "perf:quick" "${ROOT}/perf/run.sh" --quick
  run_one "fuzz:long" "${ROOT}/scripts/fuzz.sh" --long --no-build
  run_one "tidy" "${ROOT}/scripts/tidy.sh"
fi

total_passed=0 total_failed=0 total_skipped=0
printf '\n%-28s %7s %7s %8s %8s\n' "test pass" passed failed skipped seconds
for line in "${summary[@]}"; do
  read -r name passed failed skipped secs <<<"${line}"
  printf '%-28s %7d %7d %8d %8d\n' "${name}" "${passed}" "${failed}" "${skipped}" "${secs}"
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
  total_skipped=$((total_skipped + skipped))
done
printf 'total time %d s; JUnit results in %s\n' "$((SECONDS - start_s))" "${RESULTS_DIR}"
if ((total_passed + total_failed == 0)); then
  log "no test ran"
  any_failure=1
fi
echo "summary: ${total_passed} passed, ${total_failed} failed, ${total_skipped} skipped"
exit "${any_failure}"
