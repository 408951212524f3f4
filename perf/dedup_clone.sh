#!/usr/bin/env bash
# Dedup across volumes, the clone scenario, on the harness's 4 GiB real-file volume
# (perf/run.sh makes it: $DP420_PERF_DIR/volume-4G/{base,changed}.img, an ext4 image
# of real files and its 1 %-changed successor). base.img plays the template, backed
# up as volume "tmpl"; changed.img plays a VM cloned from it and changed by 1 %,
# backed up as a new volume (a full backup: no parent) with the dedup index ("clone")
# and, in the same run and repository, without it (--no-dedup, "yardstick").
#
#   perf/dedup_clone.sh [--rounds N (1)] [--check]
#
# Per round, cold caches before each backup: the template, then the clone with and
# without the index in alternating order. Prints each backup's seconds, CPU seconds
# (user + system) and peak RSS (/usr/bin/time -v) and the repository's growth, then
# the growth ratio (growth / clone size) and the speed ratio (yardstick seconds /
# clone seconds). --check
# restores the clone and compares it with changed.img. Needs root (drops caches).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
rounds=1 check=0
while (($# > 0)); do
  case "$1" in
    --rounds) [[ $# -ge 2 ]] || usage; rounds="$2"; shift ;;
    --check) check=1 ;;
    -h | --help) usage ;;
    *) e2e_die "unknown argument: $1" ;;
  esac
  shift
done
e2e_check_range --rounds "${rounds}" 1 20
((EUID == 0)) || e2e_die "needs root to drop the page cache before each backup"
[[ -x /usr/bin/time ]] || e2e_die "needs /usr/bin/time (GNU time) for the peak RSS"
D="${DP420_BIN:-$(e2e_find_cli "${ROOT}/build")}"
readonly DATA="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/volume-4G"
[[ -f "${DATA}/base.img" && -f "${DATA}/changed.img" ]] ||
  e2e_die "no ${DATA}/{base,changed}.img: run perf/run.sh once (it makes them)"
readonly W="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/dedup-clone"
rm -rf "${W}"
mkdir -p "${W}"
e2e_add_cleanup "rm -rf '${W}'"
export DP420_STATE_DIR="${W}/state"
readonly SIZE="$(stat -c %s "${DATA}/changed.img")"

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
repo_bytes() { du -sb --apparent-size "$1" | cut -f1; }
# backup LABEL REPO VOLUME SOURCE [ARGS...]: cold caches, then the backup under
# /usr/bin/time -v; prints "LABEL seconds=S rss_kib=K growth=B dedup=N".
backup() {
  local label="$1" repo="$2" volume="$3" source="$4" before after
  shift 4
  before="$(repo_bytes "${repo}")"
  cold
  /usr/bin/time -v -o "${W}/time.txt" "${D}" backup --repo "${repo}" --volume "${volume}" \
    --json "$@" "${source}" >"${W}/out.json"
  after="$(repo_bytes "${repo}")"
  python3 - "${label}" "${W}/out.json" "${W}/time.txt" "$((after - before))" <<'EOF'
import json, re, sys
label, out, timing, growth = sys.argv[1], json.load(open(sys.argv[2])), open(sys.argv[3]).read(), sys.argv[4]
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1)
cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", timing).group(1)) for k in ("User", "System"))
print(f"{label} seconds={out['seconds']:.3f} rss_kib={rss} growth={growth} cpu={cpu:.2f} "
      f"dedup={out.get('blocks_deduplicated', 0)} stored={out['blocks_stored']}")
EOF
}

for ((r = 1; r <= rounds; r++)); do
  repo="${W}/repo-${r}"
  "${D}" init "${repo}" --encryption none >/dev/null
  backup "round ${r} template" "${repo}" tmpl "${DATA}/base.img"
  if ((r % 2 == 1)); then
    backup "round ${r} clone" "${repo}" clone "${DATA}/changed.img"
    backup "round ${r} yardstick" "${repo}" plain "${DATA}/changed.img" --no-dedup
  else
    backup "round ${r} yardstick" "${repo}" plain "${DATA}/changed.img" --no-dedup
    backup "round ${r} clone" "${repo}" clone "${DATA}/changed.img"
  fi
  if ((check)); then
    "${D}" restore --repo "${repo}" --volume clone "${W}/restored.img" >/dev/null
    cmp "${W}/restored.img" "${DATA}/changed.img" || e2e_die "the clone did not restore bit-exact"
    rm -f "${W}/restored.img"
    echo "round ${r} clone restored bit-exact"
  fi
  rm -rf "${repo}"
done | tee "${W}/lines.txt"

python3 - "${W}/lines.txt" "${SIZE}" <<'EOF'
import re, sys
lines, size = open(sys.argv[1]).read().splitlines(), int(sys.argv[2])
rows = {}
for line in lines:
    m = re.match(r"round (\d+) (\w+) seconds=(\S+) rss_kib=(\d+) growth=(\d+) cpu=(\S+)", line)
    if m:
        rows.setdefault(int(m[1]), {})[m[2]] = (float(m[3]), int(m[4]), int(m[5]), float(m[6]))
print("round  clone s  yardstick s  speed ratio  clone CPU s  yardstick CPU s"
      "  clone growth %  yardstick growth %  clone RSS MiB")
for r, v in sorted(rows.items()):
    c, y = v["clone"], v["yardstick"]
    print(f"{r:5}  {c[0]:7.2f}  {y[0]:11.2f}  {y[0] / c[0]:11.2f}  {c[3]:11.2f}  {y[3]:15.2f}"
          f"  {100 * c[2] / size:14.2f}  {100 * y[2] / size:18.2f}  {c[1] / 1024:13.1f}")
EOF
