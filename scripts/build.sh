#!/usr/bin/env bash
# Configures and builds dp420 with CMake.
#
#   scripts/build.sh [--debug] [--sanitize=address|undefined|address,undefined|thread]
#                    [--target NAME]...
#
# Release builds go to build/, others to build-debug/, build-asan/, build-ubsan/,
# build-asan-ubsan/, build-tsan/ (or build-debug-asan/ ...). Sanitized builds are
# RelWithDebInfo at -O1 -g1 (DP420_SANITIZE_OPT overrides; half the compile time of
# -O2 -g, with the function names and lines a report needs), with -fno-omit-frame-pointer, without
# jemalloc and without the benchmarks; undefined behaviour ends the process
# (-fno-sanitize-recover). In every build the test binaries' own code is compiled at -Og
# (DP420_TEST_OPT overrides). The ASan+UBSan build (build-asan-ubsan/) is made with clang-14
# and libFuzzer's coverage instrumentation (DP420_FUZZ=ON), so that one build serves
# the sanitized tests and the fuzz targets of tests/fuzz (scripts/fuzz.sh); the other
# builds use the default compiler.
# --target builds only the named targets (and what they need).
# Warnings are errors unless DP420_WERROR=0.
# Extra CMake cache options: DP420_CMAKE_ARGS="-DFOO=BAR ...".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}
log() { printf 'build: %s\n' "$*" >&2; }

build_type=Release
sanitize=""
targets=()
while (($# > 0)); do
  case "$1" in
    --debug) build_type=Debug ;;
    --sanitize=*) sanitize="${1#--sanitize=}" ;;
    --target) [[ $# -ge 2 ]] || usage; targets+=("$2"); shift ;;
    --target=*) targets+=("${1#--target=}") ;;
    -h | --help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
  shift
done

dir_suffix=""
[[ "${build_type}" == Debug ]] && dir_suffix="-debug"
case "${sanitize}" in
  "") ;;
  address) dir_suffix+="-asan" ;;
  undefined) dir_suffix+="-ubsan" ;;
  address,undefined | undefined,address) sanitize=address,undefined; dir_suffix+="-asan-ubsan" ;;
  thread) dir_suffix+="-tsan" ;;
  *)
    log "unknown sanitizer '${sanitize}' (use address, undefined, address,undefined or thread)"
    exit 2
    ;;
esac
# Sanitized builds keep optimisation but add debug info for readable reports.
if [[ -n "${sanitize}" && "${build_type}" == Release ]]; then
  build_type=RelWithDebInfo
fi

readonly BUILD_DIR="${ROOT}/build${dir_suffix}"
cmake_args=(-S "${ROOT}" -B "${BUILD_DIR}" "-DCMAKE_BUILD_TYPE=${build_type}"
  "-DDP420_SANITIZE=${sanitize}")
# The benchmarks measure speed, which a sanitized build does not show; they only cost
# build time there. So does optimisation past -O1, and full debug info: -g1 keeps the
# function names and lines a report's stack needs.
if [[ -n "${sanitize}" ]]; then
  cmake_args+=(-DDP420_BUILD_BENCHMARKS=OFF)
  if [[ "${build_type}" == RelWithDebInfo ]]; then
    opt="${DP420_SANITIZE_OPT:--O1 -g1} -DNDEBUG"
    cmake_args+=("-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=${opt}" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=${opt}")
  fi
fi
# The test binaries' own code (gtest, the cases, their fixtures) at -Og in every build:
# 40 % less compile time than -O3 (tests/engine/verify_test.cc: 5.0 s against 8.2 s),
# while the code they test keeps the build type's optimisation.
cmake_args+=("-DDP420_TEST_COMPILE_OPTIONS=${DP420_TEST_OPT:--Og}")
# Warnings are errors in every scripted build, so a warning never waits for CI
# to be found; DP420_WERROR=0 turns that off for an unknown compiler.
if [[ "${DP420_WERROR:-1}" != 0 ]]; then
  cmake_args+=(-DDP420_WERROR=ON)
else
  cmake_args+=(-DDP420_WERROR=OFF)
fi
if [[ -n "${DP420_CMAKE_ARGS:-}" ]]; then
  read -r -a extra <<<"${DP420_CMAKE_ARGS}"
  cmake_args+=("${extra[@]}")
fi

# ASan+UBSan: clang-14, instrumented for libFuzzer too (clang compiles it in about
# three quarters of the time GCC takes, and the fuzz targets share its objects).
if [[ "${sanitize}" == address,undefined ]]; then
  "${ROOT}/scripts/install-deps.sh" clang-14 libclang-rt-14-dev
  cmake_args+=(-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DDP420_FUZZ=ON)
  # A tree configured with another compiler is configured afresh.
  if [[ -f "${BUILD_DIR}/CMakeCache.txt" ]] &&
    ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++-14$' "${BUILD_DIR}/CMakeCache.txt"; then
    log "${BUILD_DIR} was configured with another compiler: configuring it afresh"
    rm -rf "${BUILD_DIR}"
  fi
fi

jobs="$(nproc)"
log "configuring ${build_type}${sanitize:+ with ${sanitize} sanitizer} in ${BUILD_DIR}"
cmake "${cmake_args[@]}"
build_args=(--build "${BUILD_DIR}" -j "${jobs}")
if ((${#targets[@]} > 0)); then
  build_args+=(--target "${targets[@]}")
fi
log "building${targets:+ ${targets[*]}} with ${jobs} jobs"
start_s=${SECONDS}
cmake "${build_args[@]}"
log "done in $((SECONDS - start_s)) s: ${BUILD_DIR}"
