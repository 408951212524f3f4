#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) in the ASan+UBSan build (build-asan-ubsan/,
# clang-14, scripts/build.sh --sanitize=address,undefined; DP420_ASAN_BUILD_DIR picks
# another), and runs each from its seed corpus (tests/fuzz/corpus/TARGET/).
#
#   scripts/fuzz.sh [--ci | --long] [--no-build] [TARGET...]
#
# --ci (the default): a bounded run, DP420_FUZZ_SECONDS (default 15) per target.
# --long: DP420_FUZZ_SECONDS (default 3600) per target.
# Targets run DP420_FUZZ_JOBS (default: the number of cores) at a time.
# TARGET: fuzz_manifest, fuzz_frame, ... (default: every target).
# New inputs that reach new code go to BUILD/corpus/TARGET/ (the checked-in
# seeds are never modified); a crash, leak or UB report stops the target, keeps
# the input as BUILD/artifacts/TARGET/crash-* and fails the script.
# Ends with "fuzz: N targets passed, N failed"; exits 1 on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly BUILD_DIR="${DP420_ASAN_BUILD_DIR:-${ROOT}/build-asan-ubsan}"
readonly SEEDS="${ROOT}/tests/fuzz/corpus"
readonly DICTS="${ROOT}/tests/fuzz/dict"

log() { printf 'fuzz: %s\n' "$*" >&2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

mode=ci
build=1
targets=()
while (($# > 0)); do
  case "$1" in
    --ci) mode=ci ;;
    --long) mode=long ;;
    --no-build) build=0 ;;
    -h | --help) usage ;;
    fuzz_*) targets+=("$1") ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done
if ((${#targets[@]} == 0)); then
  for dir in "${SEEDS}"/*/; do targets+=("$(basename "${dir}")"); done
fi
if [[ "${mode}" == long ]]; then
  seconds="${DP420_FUZZ_SECONDS:-3600}"
else
  seconds="${DP420_FUZZ_SECONDS:-15}"
fi

start_s=${SECONDS}
if ((build)) && [[ -n "${DP420_ASAN_BUILD_DIR:-}" ]]; then
  log "DP420_ASAN_BUILD_DIR is set: its targets are used as they are (not rebuilt)"
elif ((build)); then
  target_args=()
  for target in "${targets[@]}"; do target_args+=(--target "${target}"); done
  "${ROOT}/scripts/build.sh" --sanitize=address,undefined "${target_args[@]}"
  log "build done in $((SECONDS - start_s)) s"
fi

# Leaks are reported; a failed allocation beyond -rss_limit_mb is a finding too.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# run_target TARGET: one bounded libFuzzer run; its log and exit code in
# BUILD/artifacts/TARGET/.
run_target() {
  local target="$1" bin="${BUILD_DIR}/tests/fuzz/$1"
  local work="${BUILD_DIR}/corpus/${target}" artifacts="${BUILD_DIR}/artifacts/${target}"
  mkdir -p "${work}" "${artifacts}"
  rm -f "${artifacts}/rc"
  if [[ ! -x "${bin}" || ! -d "${SEEDS}/${target}" ]]; then
    echo "no binary at ${bin} or no seeds in ${SEEDS}/${target}" >"${artifacts}/log"
    echo 1 >"${artifacts}/rc"
    return
  fi
  local args=(-max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="${artifacts}/")
  [[ -f "${DICTS}/${target}.dict" ]] && args+=(-dict="${DICTS}/${target}.dict")
  local rc=0
  "${bin}" "${args[@]}" "${work}" "${SEEDS}/${target}" >"${artifacts}/log" 2>&1 || rc=$?
  echo "${rc}" >"${artifacts}/rc"
}

# One target per core at a time: libFuzzer runs on one thread.
parallel="${DP420_FUZZ_JOBS:-$(nproc)}"
log "running ${#targets[@]} targets, ${seconds} s each, ${parallel} at a time"
for target in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
  run_target "${target}" &
done
wait

passed=0 failed=0
for target in "${targets[@]}"; do
  artifacts="${BUILD_DIR}/artifacts/${target}"
  rc="$(cat "${artifacts}/rc" 2>/dev/null || echo 1)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${artifacts}/log" | tail -1)"
  if [[ "${rc}" == 0 ]]; then
    passed=$((passed + 1))
    log "${target}: ${runs:-?} runs, passed"
  else
    failed=$((failed + 1))
    log "${target} FAILED (exit ${rc}); log and input in ${artifacts}/"
    grep -E 'ERROR|runtime error|property failed|SUMMARY|Test unit written' "${artifacts}/log" >&2 || tail -20 "${artifacts}/log" >&2
  fi
done
log "total $((SECONDS - start_s)) s"
echo "fuzz: ${passed} targets passed, ${failed} failed"
((failed == 0))
