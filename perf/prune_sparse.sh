#!/usr/bin/env bash
# Prune's peak memory on a large sparse volume's repository: a 64 GiB sparse volume (384 MiB
# of random data in 1 MiB pieces, perf/volume.py make-sparse), backed up nightly for N
# nights (1 % of its data rewritten in 64 KiB pieces each night; on nights 10 and 20, 64
# MiB of new data written into its holes as well), with `dp420 forget --keep-daily 7
# --prune` after every backup; then `dp420 prune --max-unused 0` (everything unused
# repacked, the most a prune can copy). Peak RSS and wall of each from /usr/bin/time.
#
#   perf/prune_sparse.sh [--nights N (default 30)] [--size-gib G (default 64)]
#                        [--data-mib M (default 384)]
#
# Uses DP420_BIN or build/engine/dp420 (builds nothing); works in
# $DP420_PERF_DIR/prune-sparse (default /var/tmp/dp420-perf), removed at exit. Prints one
# line a night and the largest peak RSS; exits 1 when a command fails or the last
# snapshot does not restore bit-exact.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=prune-sparse
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
nights=30 size_gib=64 data_mib=384
while (($# > 0)); do
  case "$1" in
    --nights) [[ $# -ge 2 ]] || usage; nights="$2"; shift ;;
    --size-gib) [[ $# -ge 2 ]] || usage; size_gib="$2"; shift ;;
    --data-mib) [[ $# -ge 2 ]] || usage; data_mib="$2"; shift ;;
    -h | --help) usage ;;
    *) e2e_die "unknown argument: $1" ;;
  esac
  shift
done
e2e_check_range --nights "${nights}" 1 1000
e2e_check_range --size-gib "${size_gib}" 1 16384
e2e_check_range --data-mib "${data_mib}" 1 $((size_gib << 9))
size=$((size_gib << 30))
DP420="${DP420_BIN:-$(e2e_find_cli "${ROOT}/build")}"
[[ -x "${DP420}" ]] || e2e_die "no dp420 binary (build it, or set DP420_BIN)"
readonly VOLUME_PY="${ROOT}/perf/volume.py"
readonly W="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/prune-sparse"
rm -rf "${W}"
mkdir -p "${W}/state"
e2e_add_cleanup "rm -rf '${W}'"
export DP420_STATE_DIR="${W}/state" TZ=UTC
IMG="${W}/volume.img" REPO="${W}/repo"

python3 "${VOLUME_PY}" make-sparse "${IMG}" --size "${size}" --data-mib "${data_mib}" --seed 1
python3 "${VOLUME_PY}" mutate "${IMG}" --percent 0 --chunk-kib 64 --slots "${W}/slots" --seed 0 >/dev/null
"${DP420}" init --encryption none "${REPO}" >/dev/null

# timed LOG CMD...: runs CMD with its stdout in LOG.out; "wall rss_kib" in LOG.time.
timed() {
  local log="$1"
  shift
  /usr/bin/time -f '%e %M' -o "${log}.time" "$@" >"${log}.out"
}
# field FILE KEY: KEY of the JSON object in FILE (in its "prune" object when there is one).
field() {
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); j=j.get("prune", j); print(j[sys.argv[2]])' "$1" "$2"
}

printf '%-6s %-10s %-16s %-14s %-8s %-10s %-12s\n' night backup_s forget_prune_s peak_rss_mib packs_rw mib_copied repo_mib
max_rss=0
for ((n = 0; n <= nights; n++)); do
  if ((n > 0)); then
    python3 "${VOLUME_PY}" mutate "${IMG}" --percent 1 --chunk-kib 64 --slots "${W}/slots" --seed "${n}" >/dev/null
  fi
  if ((n == 10 || n == 20)); then
    python3 "${VOLUME_PY}" patch "${IMG}" --mib 64 --chunk-kib 1024 --span "${size}" --seed $((1000 + n)) >/dev/null
    rm -f "${W}/slots"  # new data pieces: the next mutate lists them again
  fi
  when="$(date -u -d "2026-01-01 03:00:00 UTC + ${n} days" '+%Y-%m-%dT%H:%M:%SZ')"
  timed "${W}/backup" "${DP420}" backup --repo "${REPO}" --volume vol --json --time "${when}" "${IMG}"
  read -r b_wall _ <"${W}/backup.time"
  f_wall=- rss=- rw=- copied=-
  if ((n > 0)); then
    timed "${W}/forget" "${DP420}" forget --repo "${REPO}" --volume vol --keep-daily 7 --prune --json
    read -r f_wall rss <"${W}/forget.time"
    rw="$(field "${W}/forget.out" packs_rewritten)"
    copied="$(($(field "${W}/forget.out" bytes_copied) >> 20))"
    ((rss > max_rss)) && max_rss="${rss}"
    rss="$((rss >> 10))"
  fi
  printf '%-6s %-10s %-16s %-14s %-8s %-10s %-12s\n' "${n}" "${b_wall}" "${f_wall}" "${rss}" "${rw}" \
    "${copied}" "$(($(du -sb "${REPO}" | cut -f1) >> 20))"
done

timed "${W}/prune0" "${DP420}" prune --repo "${REPO}" --max-unused 0 --json
read -r p_wall p_rss <"${W}/prune0.time"
((p_rss > max_rss)) && max_rss="${p_rss}"
echo "prune --max-unused 0: ${p_wall} s, peak RSS $((p_rss >> 10)) MiB, $(field "${W}/prune0.out" packs_rewritten) packs rewritten, $(($(field "${W}/prune0.out" bytes_copied) >> 20)) MiB copied, repository $(($(du -sb "${REPO}" | cut -f1) >> 20)) MiB"
"${DP420}" verify --repo "${REPO}" --volume vol --read-data -q >/dev/null
"${DP420}" restore --repo "${REPO}" --volume vol --snapshot latest "${W}/restored.img" -q >/dev/null
python3 "${VOLUME_PY}" cmp "${IMG}" "${W}/restored.img" || e2e_die "the last snapshot does not restore bit-exact"
echo "snapshots kept: $("${DP420}" snapshots --repo "${REPO}" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(len(j if isinstance(j, list) else j["snapshots"]))')"
echo "largest peak RSS of a prune: $((max_rss >> 10)) MiB (budget 128 MiB)"
