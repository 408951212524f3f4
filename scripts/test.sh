#!/usr/bin/env bash
# Installs missing dependencies, builds (Release, build/) and runs the tests.
#
#   scripts/test.sh [--long] [--no-build]
#
# Pass 1 runs the unit tests in parallel (ctest -j2). Pass 2 runs the tests labelled
# "serial" or "e2e" (loop devices, mounts, whole-disk timing) one at a time.
# Then the libFuzzer targets run bounded (scripts/fuzz.sh --ci, its own clang build in
# build-fuzz/).
# --long adds tests labelled "long" (soak, fuzz), every Google Benchmark binary in
# build/bench/ (short runs), perf/run.sh --quick, an hour per fuzz target
# (scripts/fuzz.sh --long) and clang-tidy (scripts/tidy.sh).
# --no-build skips dependencies and build. DP420_BUILD_DIR picks another build tree.
# Ends with a summary line "summary: N passed, N failed, N skipped"; exits 1 on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly BUILD_DIR="${DP420_BUILD_DIR:-${ROOT}/build}"

log() { printf 'test: %s\n' "$*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

long=0
build=1
while (($# > 0)); do
  case "$1" in
    --long) long=1 ;;
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

# run_ctest NAME CTEST_ARGS...: one ctest pass, counted in the summary.
run_ctest() {
  local name="$1"
  shift
  local junit="${RESULTS_DIR}/${name}.xml" pass_start=${SECONDS} rc=0
  log "pass '${name}': ctest $*"
  ctest --test-dir "${BUILD_DIR}" --output-on-failure --no-tests=ignore \
    --output-junit "${junit}" "$@" || rc=$?
  local passed failed skipped
  read -r passed failed skipped < <(junit_counts "${junit}")
  if ((rc != 0 && failed == 0)); then
    failed=1  # ctest itself failed (e.g. a test binary could not be listed)
  fi
  ((failed == 0)) || any_failure=1
  summary+=("${name} ${passed} ${failed} ${skipped} $((SECONDS - pass_start))")
}

# run_one NAME CMD...: a non-ctest check (benchmark, perf), counted as one test.
run_one() {
  local name="$1"
  shift
  local one_start=${SECONDS} rc=0
  log "running ${name}: $*"
  "$@" || rc=$?
  if ((rc == 0)); then
    summary+=("${name} 1 0 0 $((SECONDS - one_start))")
  else
    log "${name} failed (exit ${rc})"
    any_failure=1
    summary+=("${name} 0 1 0 $((SECONDS - one_start))")
  fi
}

run_ctest unit -j2 -LE '^(serial|e2e|long)$'
run_ctest serial -j1 -L '^(serial|e2e)$' -LE '^long$'
run_one "fuzz:ci" "${ROOT}/scripts/fuzz.sh" --ci

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
