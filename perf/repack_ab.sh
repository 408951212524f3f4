#!/usr/bin/env bash
# Repack throughput against the disk's copy speed, in alternating rounds: a repository
# holding a full backup of a random volume (64 KiB blocks) and an incremental that
# rewrote PERCENT of its blocks, the full forgotten; then each round, cold caches before
# every step: `dp420 prune --max-unused 0` of a fresh copy of it for each binary given,
# `cp -a` of its packs + sync, and an O_DIRECT copy of each pack (dd, 8 MiB transfers)
# + sync. Repack MB/s = bytes copied ÷ the prune's wall (mark, copy, read-back and
# deletes included); a yardstick's MB/s = pack bytes ÷ its wall.
#
#   perf/repack_ab.sh [--rounds N (3)] [--size-mib M (2048)] [--percent P (10)] [BIN...]
#
# BIN: dp420 binaries to compare (default DP420_BIN or build/engine/dp420). Needs root
# (drops caches). Works in $DP420_PERF_DIR/repack-ab (default /var/tmp/dp420-perf),
# removed at exit. Every prune's result is verified; exits 1 when one fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
rounds=3 size_mib=2048 percent=10 bins=()
while (($# > 0)); do
  case "$1" in
    --rounds) [[ $# -ge 2 ]] || usage; rounds="$2"; shift ;;
    --size-mib) [[ $# -ge 2 ]] || usage; size_mib="$2"; shift ;;
    --percent) [[ $# -ge 2 ]] || usage; percent="$2"; shift ;;
    -h | --help) usage ;;
    -*) e2e_die "unknown option: $1" ;;
    *) bins+=("$1") ;;
  esac
  shift
done
e2e_check_range --rounds "${rounds}" 1 100
e2e_check_range --size-mib "${size_mib}" 64 65536
e2e_check_range --percent "${percent}" 1 100
((EUID == 0)) || e2e_die "needs root to drop the page cache before each step"
((${#bins[@]} > 0)) || bins=("${DP420_BIN:-$(e2e_find_cli "${ROOT}/build")}")
for b in "${bins[@]}"; do [[ -x "${b}" ]] || e2e_die "not an executable: ${b}"; done
readonly W="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/repack-ab"
rm -rf "${W}"
mkdir -p "${W}"
e2e_add_cleanup "rm -rf '${W}'"
D="${bins[0]}"

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mbps() { python3 -c "import sys; print(round(int(sys.argv[1]) / 1e6 / float(sys.argv[2])))" "$1" "$2"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$(now)"; }

# The baseline: full, rewrite, incremental, forget the full (nothing pruned yet).
export DP420_STATE_DIR="${W}/state.base"
head -c $((size_mib << 20)) /dev/urandom >"${W}/vol.img"
"${D}" init --encryption none "${W}/base" >/dev/null
"${D}" backup --repo "${W}/base" --volume v -q "${W}/vol.img" >/dev/null
python3 - "${W}/vol.img" "${percent}" <<'PY'
import os, random, sys
path, pct = sys.argv[1], int(sys.argv[2])
blocks = os.path.getsize(path) // 65536
rng = random.Random(1)
with open(path, "r+b") as f:
    for b in rng.sample(range(blocks), blocks * pct // 100):
        f.seek(b * 65536)
        f.write(os.urandom(65536))
PY
"${D}" backup --repo "${W}/base" --volume v -q "${W}/vol.img" >/dev/null
first="$("${D}" snapshots --repo "${W}/base" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); s=j if isinstance(j, list) else j["snapshots"]; print(s[0]["snapshot_id"])')"
"${D}" forget --repo "${W}/base" --volume v --snapshot "${first}" -q >/dev/null
pack_bytes="$(du -sb "${W}/base/packs" | cut -f1)"
echo "baseline: ${size_mib} MiB volume, ${percent} % rewritten, first snapshot forgotten; ${pack_bytes} pack bytes"

prune_round() {  # prune_round BIN
  rm -rf "${W}/t" "${W}/tstate"
  cp -a "${W}/base" "${W}/t"
  cp -a "${W}/state.base" "${W}/tstate"
  cold
  DP420_STATE_DIR="${W}/tstate" /usr/bin/time -f '%e %U %S %M' -o "${W}/time" \
    "$1" prune --repo "${W}/t" --max-unused 0 --json >"${W}/prune.json"
  local e u s m copied
  read -r e u s m <"${W}/time"
  copied="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_copied"])' "${W}/prune.json")"
  DP420_STATE_DIR="${W}/tstate" "$1" verify --repo "${W}/t" -q >/dev/null || e2e_die "verify failed after $1's prune"
  echo "prune $1: wall ${e} s, user ${u} s, sys ${s} s, peak RSS $((m >> 10)) MiB, ${copied} bytes copied, $(mbps "${copied}" "${e}") MB/s"
}
cp_round() {
  rm -rf "${W}/y"
  cold
  local t0
  t0="$(now)"
  cp -a "${W}/base/packs" "${W}/y" && sync
  local e
  e="$(since "${t0}")"
  echo "cp -a + sync: wall ${e} s, $(mbps "${pack_bytes}" "${e}") MB/s"
  rm -rf "${W}/y"
}
dd_round() {
  rm -rf "${W}/y"
  mkdir "${W}/y"
  cold
  local t0 f e
  t0="$(now)"
  for f in "${W}"/base/packs/*.pack; do
    dd if="${f}" of="${W}/y/$(basename "${f}")" bs=8M iflag=direct oflag=direct status=none
  done
  sync
  e="$(since "${t0}")"
  echo "dd O_DIRECT + sync: wall ${e} s, $(mbps "${pack_bytes}" "${e}") MB/s"
  rm -rf "${W}/y"
}
for ((r = 1; r <= rounds; r++)); do
  echo "round ${r}"
  for b in "${bins[@]}"; do prune_round "${b}"; done
  cp_round
  dd_round
done
