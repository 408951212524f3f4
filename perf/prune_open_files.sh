#!/usr/bin/env bash
# Whether prune's mark fits under an open-file limit: N backups of a 1 MiB volume (64 KiB
# rewritten before each, nothing forgotten, so every snapshot's table pages are live in a
# pack of their own), then `dp420 prune --json` under `ulimit -n LIMIT` and again under the
# shell's own limit.
#
#   perf/prune_open_files.sh [N (default 1100)] [LIMIT (default 1024)]
#
# Uses DP420_BIN or build/engine/dp420 (builds nothing); works in
# $DP420_PERF_DIR/prune-open-files (default /var/tmp/dp420-perf), removed at exit.
# Prints the number of packs and each prune's exit code, wall time, peak RSS and output.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=prune-open-files
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

n="${1:-1100}" limit="${2:-1024}"
e2e_check_range N "${n}" 1 100000
e2e_check_range LIMIT "${limit}" 64 1048576
DP420="${DP420_BIN:-$(e2e_find_cli "${ROOT}/build")}"
[[ -x "${DP420}" ]] || e2e_die "no dp420 binary (build it, or set DP420_BIN)"
readonly W="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/prune-open-files"
rm -rf "${W}"
mkdir -p "${W}/state"
e2e_add_cleanup "rm -rf '${W}'"
export DP420_STATE_DIR="${W}/state"
head -c $((1 << 20)) /dev/urandom >"${W}/volume.img"
"${DP420}" init --encryption none "${W}/repo" >/dev/null
e2e_log "${n} backups"
for ((i = 1; i <= n; i++)); do
  dd if=/dev/urandom of="${W}/volume.img" bs=64k count=1 seek=$((i % 16)) conv=notrunc status=none
  "${DP420}" backup --repo "${W}/repo" --volume v -q "${W}/volume.img" >/dev/null
done
echo "snapshots: ${n}, packs: $(find "${W}/repo/packs" -name '*.pack' | wc -l)"
prune() {  # prune LIMIT
  local rc=0
  (ulimit -n "$1" && /usr/bin/time -f "wall %e s, peak RSS %M KiB" "${DP420}" prune --repo "${W}/repo" --json) \
    >"${W}/out" 2>&1 || rc=$?
  echo "ulimit -n $1: exit ${rc}"
  sed 's/^/  /' "${W}/out"
}
prune "${limit}"
prune "$(ulimit -n)"
