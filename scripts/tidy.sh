#!/usr/bin/env bash
# Runs clang-tidy-14 (the checks of .clang-tidy) over the project's own code:
# every .cc of engine/, io/ and simd/, with the flags of build/compile_commands.json.
#
#   scripts/tidy.sh [FILE...]
#
# Configures build/ when it has no compile_commands.json (DP420_BUILD_DIR picks
# another tree), without precompiled headers. Ends with "tidy: N files, N
# findings"; exits 1 on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly BUILD_DIR="${DP420_BUILD_DIR:-${ROOT}/build}"

log() { printf 'tidy: %s\n' "$*" >&2; }

"${ROOT}/scripts/install-deps.sh" clang-tidy-14
if [[ ! -f "${BUILD_DIR}/compile_commands.json" ]]; then
  log "configuring ${BUILD_DIR} for its compile_commands.json"
  cmake -S "${ROOT}" -B "${BUILD_DIR}" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON >/dev/null
fi

files=("$@")
if ((${#files[@]} == 0)); then
  mapfile -t files < <(cd "${ROOT}" && find engine io simd -name '*.cc' | sort)
fi

start_s=${SECONDS}
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
out="${tmp}/out"
# clang-tidy reads the sources as written: a tree built with precompiled headers
# (GCC's .gch, which clang refuses as "not a valid precompiled PCH file") has the
# -include of its precompiled header taken out of a copy of its compile_commands.json.
sed -E 's# -Winvalid-pch##g; s# -include [^ "]*/cmake_pch\.hxx##g' \
  "${BUILD_DIR}/compile_commands.json" >"${tmp}/compile_commands.json"
# One clang-tidy per core; each prints its findings, which are counted below.
printf '%s\n' "${files[@]}" |
  (cd "${ROOT}" && xargs -P "$(nproc)" -n 4 clang-tidy-14 -p "${tmp}" --quiet) \
    >"${out}" 2>&1 || true
# A finding in a header is reported by every file that includes it: counted once.
{ grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error):' "${out}" || true; } | sort -u >"${out}.found"
findings="$(wc -l <"${out}.found")"
cat "${out}.found" >&2
if grep -qE 'error: (unable to|no such file)|Error while processing' "${out}"; then
  grep -E 'error: (unable to|no such file)|Error while processing' "${out}" >&2
  findings=$((findings + 1))
fi
log "done in $((SECONDS - start_s)) s"
echo "tidy: ${#files[@]} files, ${findings} findings"
((findings == 0))
