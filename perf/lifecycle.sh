#!/usr/bin/env bash
# The repository's life cycle: N simulated nights of "back up a volume with some churn,
# then forget and prune", for dp420 and (when installed) restic, on the same volume in
# the same run; then a --max-unused sweep on a week-aged repository and prune's memory at
# growing repository sizes.
#
#   perf/lifecycle.sh [--quick] [--nights N (2-100)] [--restic-nights M (0-100)]
#                     [--percent P] [--keep K] [--no-sweep] [--no-memory] [--memory-volumes V]
#
# Volume: perf/run.sh's realistic 4 GiB ext4 image (--quick: 512 MiB), made by
# `perf/run.sh --dataset-only` when missing, copied to a work image.
#
#   nights   night 0: a cold full backup of the work image (the "cold full" yardstick).
#            Nights 1..N: `perf/volume.py mutate` rewrites P % (default 1) of the image's
#            non-zero 64 KiB pieces in place with random data (seed = night), then, cold:
#            `dp420 backup --time DATE` (DATE = 2026-01-01T03:00:00Z + night), then
#            `dp420 forget --keep-daily K --prune --json` (K = 7), with TZ=UTC.
#            After each night: `du -sb` of the repository, `dp420 stats --json`
#            and the unique data of the kept snapshots, counted independently of dp420:
#            non-zero 64 KiB pieces of the image (constant, mutate rewrites data in place)
#            + the pieces each kept night after the oldest kept one wrote.
#            Nights 0..M (default 12) also for restic 0.14: `restic backup --time DATE
#            --compression off` of a hard link to the image (the same DATE),
#            then `restic forget --keep-daily K --prune` (each + sync, TZ=UTC), cold. dp420 and restic
#            swap order every night.
#   sweep    a copy of dp420's repository after night 7's backup (a week of snapshots,
#            nothing forgotten yet), copied once per --max-unused value (100 50 25 10 5 0)
#            with `cp -a` + sync (cold, measured: the copy yardstick for repack throughput),
#            then, cold, `dp420 forget --keep-last 1 --prune --max-unused X --json`.
#   memory   one repository, V volumes (default 4) added one by one, each a full backup of
#            a differently mutated copy of the image; after each, cold, `dp420 prune --json`
#            (peak RSS against pack bytes).
#
# Every measured command goes through perf/measure.py (wall, CPU, peak RSS by GNU time,
# du before and after); records in $DP420_PERF_DIR/runs/lifecycle-<UTC time>/results.jsonl,
# tables by perf/lifecycle_report.py. Cold = sync + drop caches (root; else warm, said so).
# A copied dp420 repository gets its own DP420_STATE_DIR (a copy of the original's): dp420
# keeps its rollback-detection state per repository under the state directory.
# DP420_BIN=/path/to/dp420 measures that binary instead of building build/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=lifecycle
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

readonly ARGS="$*"
quick=0 nights="" restic_nights="" percent=1 keep=7 with_sweep=1 with_memory=1 mem_volumes=4
while (($# > 0)); do
  case "$1" in
    --quick) quick=1 ;;
    --nights) [[ $# -ge 2 ]] || usage; nights="$2"; shift ;;
    --restic-nights) [[ $# -ge 2 ]] || usage; restic_nights="$2"; shift ;;
    --percent) [[ $# -ge 2 ]] || usage; percent="$2"; shift ;;
    --keep) [[ $# -ge 2 ]] || usage; keep="$2"; shift ;;
    --no-sweep) with_sweep=0 ;;
    --no-memory) with_memory=0 ;;
    --memory-volumes) [[ $# -ge 2 ]] || usage; mem_volumes="$2"; shift ;;
    -h | --help) usage ;;
    *) e2e_log "unknown argument: $1"; usage ;;
  esac
  shift
done
if ((quick)); then
  nights="${nights:-10}" restic_nights="${restic_nights:-4}"
else
  nights="${nights:-30}" restic_nights="${restic_nights:-12}"
fi
e2e_check_range --nights "${nights}" 2 100
e2e_check_range --restic-nights "${restic_nights}" 0 100
e2e_check_range --keep "${keep}" 1 100
e2e_check_range --memory-volumes "${mem_volumes}" 1 16
((restic_nights <= nights)) || restic_nights="${nights}"
SWEEP_NIGHT=7
readonly SWEEP_VALUES=(100 50 25 10 5 0) PIECE_KIB=64

readonly PERF_DIR="${DP420_PERF_DIR:-/var/tmp/dp420-perf}"
readonly WORK="${PERF_DIR}/lifecycle"
RUN_DIR="${PERF_DIR}/runs/lifecycle-$(date -u +%Y%m%dT%H%M%SZ)"
readonly RUN_DIR RESULTS="${RUN_DIR}/results.jsonl"
readonly MEASURE="${ROOT}/perf/measure.py" VOLUME_PY="${ROOT}/perf/volume.py"
readonly IMG="${WORK}/volume.img" SLOTS="${WORK}/slots.json"
readonly REPO="${WORK}/repo" STATE="${WORK}/state"
readonly SWEEP_SRC="${WORK}/sweep-src" SWEEP_SRC_STATE="${WORK}/sweep-src-state"
readonly SWEEP_REPO="${WORK}/sweep-repo" SWEEP_STATE="${WORK}/sweep-state"
readonly MEM_REPO="${WORK}/mem-repo" MEM_STATE="${WORK}/mem-state" MEM_IMG="${WORK}/mem.img"
readonly R_SRC="${WORK}/restic-src" R_REPO="${WORK}/restic-repo" R_HOME="${WORK}/restic-home"

clean_work() { rm -rf "${WORK}"; }

if [[ -n "${DP420_BIN:-}" ]]; then
  DP420="${DP420_BIN}"
else
  "${ROOT}/scripts/build.sh" --target dp420_cli >&2
  DP420="$(e2e_find_cli "${ROOT}/build")"
fi
[[ -x "${DP420}" ]] || e2e_die "no dp420 binary at ${DP420}"
[[ -x /usr/bin/time ]] || e2e_die "/usr/bin/time is missing: run scripts/install-deps.sh"
with_restic=0
if ((restic_nights > 0)); then
  if command -v restic >/dev/null; then
    with_restic=1
  else
    e2e_log "restic is not installed (scripts/install-peers.sh): dp420 only"
  fi
fi

dataset_args=(--dataset-only)
((quick)) && dataset_args+=(--quick)
BASE="$("${ROOT}/perf/run.sh" "${dataset_args[@]}" | tail -1)"
[[ -f "${BASE}" ]] || e2e_die "perf/run.sh --dataset-only made no volume"

mkdir -p "${RUN_DIR}"
caches=cold
if ! e2e_drop_caches; then
  caches=warm
  e2e_log "not root: cannot drop caches, every step runs with a warm page cache"
fi
cold() { if [[ "${caches}" == cold ]]; then e2e_drop_caches; else sync; fi; }

failures=0
measure() {  # measure LABEL META_JSON [measure.py options] -- CMD...; counts failures
  local label="$1" m="$2"
  shift 2
  e2e_log "${label}"
  python3 "${MEASURE}" "${RESULTS}" "${label}" --meta "${m}" "$@" || failures=$((failures + 1))
}
out_file() { echo "${RUN_DIR}/$1-$(date +%s%N).json"; }
record() {  # record JSON: a line of its own in the results (not a measured command)
  echo "$1" >>"${RESULTS}"
}
dp() { DP420_STATE_DIR="$1" "${DP420}" "${@:2}"; }

# --- the nights ------------------------------------------------------------------------
clean_work
e2e_add_cleanup clean_work
mkdir -p "${WORK}" "${STATE}"
t_start="$(e2e_now)"
cp --sparse=never "${BASE}" "${IMG}"
dp "${STATE}" init --encryption none "${REPO}" >/dev/null
if ((with_restic)); then
  mkdir -p "${R_SRC}" "${R_HOME}"
  ln -f "${IMG}" "${R_SRC}/volume.img"
  export RESTIC_PASSWORD=perf RESTIC_REPOSITORY="${R_REPO}" XDG_CACHE_HOME="${R_HOME}"
  restic init --repository-version 2 -q >/dev/null
fi
# The pieces mutate may rewrite: every non-zero 64 KiB piece of the image.
python3 "${VOLUME_PY}" mutate "${IMG}" --percent 0 --chunk-kib "${PIECE_KIB}" --slots "${SLOTS}" --seed 0 \
  >"${RUN_DIR}/night-0-mutate.json" 2>/dev/null || true
data_pieces="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data_pieces"])' "${RUN_DIR}/night-0-mutate.json")"

# night_date NIGHT FORMAT: the night's snapshot time, 2026-01-01 03:00 UTC + NIGHT days.
night_date() { date -u -d "2026-01-01 03:00:00 UTC + $1 days" "$2"; }

dp420_night() {  # dp420_night NIGHT
  local n="$1" out op=incremental
  ((n == 0)) && op=full
  out="$(out_file dp420-backup)"
  cold
  measure "dp420:${op}:night${n}" "{\"tool\":\"dp420\",\"op\":\"${op}\",\"night\":${n}}" \
    --stdout "${out}" --parse dp420 --du "${REPO}" -- \
    env DP420_STATE_DIR="${STATE}" "${DP420}" backup --repo "${REPO}" --volume vol --json \
    --time "$(night_date "${n}" '+%Y-%m-%dT%H:%M:%SZ')" "${IMG}"
  if ((n == SWEEP_NIGHT && with_sweep)); then
    # A week of snapshots, nothing forgotten yet: the sweep's starting point.
    cp -a "${REPO}" "${SWEEP_SRC}"
    cp -a "${STATE}" "${SWEEP_SRC_STATE}"
  fi
  if ((n > 0)); then
    out="$(out_file dp420-forget)"
    cold
    measure "dp420:forget-prune:night${n}" "{\"tool\":\"dp420\",\"op\":\"forget-prune\",\"night\":${n}}" \
      --stdout "${out}" --parse dp420 --du "${REPO}" -- \
      env TZ=UTC DP420_STATE_DIR="${STATE}" "${DP420}" forget --repo "${REPO}" --volume vol \
      --keep-daily "${keep}" --prune --json
  fi
  out="$(out_file dp420-stats)"
  if dp "${STATE}" stats --repo "${REPO}" --json >"${out}"; then
    python3 - "${out}" "${n}" "$(du -sb "${REPO}" | cut -f1)" >>"${RESULTS}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"label": f"dp420:state:night{sys.argv[2]}", "tool": "dp420", "op": "state",
                  "night": int(sys.argv[2]), "repo_bytes": int(sys.argv[3]), "stats": s}))
PY
  else
    failures=$((failures + 1))
  fi
}
restic_night() {  # restic_night NIGHT
  local n="$1" date op=incremental
  ((n == 0)) && op=full
  date="$(night_date "${n}" '+%Y-%m-%d %H:%M:%S')"
  cold
  # shellcheck disable=SC2016 # the inner bash expands $1 and $2
  measure "restic:${op}:night${n}" "{\"tool\":\"restic\",\"op\":\"${op}\",\"night\":${n}}" \
    --du "${R_REPO}" -- env TZ=UTC bash -c 'restic backup -q --compression off --host perf --time "$1" "$2" && sync' _ \
    "${date}" "${R_SRC}"
  if ((n > 0)); then
    cold
    # shellcheck disable=SC2016 # the inner bash expands $1 and $2
    measure "restic:forget-prune:night${n}" "{\"tool\":\"restic\",\"op\":\"forget-prune\",\"night\":${n}}" \
      --du "${R_REPO}" -- env TZ=UTC bash -c 'restic forget -q --keep-daily "$1" --prune && sync' _ "${keep}"
  fi
  record "{\"label\":\"restic:state:night${n}\",\"tool\":\"restic\",\"op\":\"state\",\"night\":${n},\"repo_bytes\":$(du -sb "${R_REPO}" | cut -f1)}"
}

for ((n = 0; n <= nights; n++)); do
  if ((n > 0)); then
    python3 "${VOLUME_PY}" mutate "${IMG}" --percent "${percent}" --chunk-kib "${PIECE_KIB}" \
      --slots "${SLOTS}" --seed "${n}" >"${RUN_DIR}/night-${n}-mutate.json"
  fi
  mut="$(cat "${RUN_DIR}/night-${n}-mutate.json")"
  record "{\"label\":\"mutate:night${n}\",\"tool\":\"mutate\",\"op\":\"mutate\",\"night\":${n},\"mutate\":${mut}}"
  if ((with_restic && n <= restic_nights && n % 2)); then restic_night "${n}"; fi
  dp420_night "${n}"
  if ((with_restic && n <= restic_nights && !(n % 2))); then restic_night "${n}"; fi
done
if ((with_restic)); then
  rm -rf "${R_REPO}" "${R_HOME}" "${R_SRC}"
  unset RESTIC_PASSWORD RESTIC_REPOSITORY XDG_CACHE_HOME
fi
rm -rf "${REPO}" "${STATE}"

# --- the --max-unused sweep ------------------------------------------------------------
if ((with_sweep)) && [[ -d "${SWEEP_SRC}" ]]; then
  for x in "${SWEEP_VALUES[@]}"; do
    rm -rf "${SWEEP_REPO}" "${SWEEP_STATE}"
    cold
    # shellcheck disable=SC2016 # the inner bash expands $1 and $2
    measure "cp:copy-repo:sweep${x}" "{\"tool\":\"cp\",\"op\":\"copy-repo\",\"max_unused\":${x},\"bytes\":$(du -sb "${SWEEP_SRC}" | cut -f1)}" \
      -- bash -c 'cp -a "$1" "$2" && sync' _ "${SWEEP_SRC}" "${SWEEP_REPO}"
    cp -a "${SWEEP_SRC_STATE}" "${SWEEP_STATE}"
    out="$(out_file sweep)"
    cold
    measure "dp420:sweep:max-unused${x}" "{\"tool\":\"dp420\",\"op\":\"sweep\",\"max_unused\":${x}}" \
      --stdout "${out}" --parse dp420 --du "${SWEEP_REPO}" -- \
      env DP420_STATE_DIR="${SWEEP_STATE}" "${DP420}" forget --repo "${SWEEP_REPO}" --volume vol --keep-last 1 \
      --prune --max-unused "${x}" --json
    out="$(out_file sweep-stats)"
    if dp "${SWEEP_STATE}" stats --repo "${SWEEP_REPO}" --json >"${out}"; then
      record "{\"label\":\"dp420:sweep-state:${x}\",\"tool\":\"dp420\",\"op\":\"sweep-state\",\"max_unused\":${x},\"repo_bytes\":$(du -sb "${SWEEP_REPO}" | cut -f1),\"stats\":$(cat "${out}")}"
    fi
  done
  rm -rf "${SWEEP_REPO}" "${SWEEP_STATE}" "${SWEEP_SRC}" "${SWEEP_SRC_STATE}"
fi

# --- prune's memory against repository size ----------------------------------------------
if ((with_memory)); then
  mkdir -p "${MEM_STATE}"
  dp "${MEM_STATE}" init --encryption none "${MEM_REPO}" >/dev/null
  cp --sparse=never "${BASE}" "${MEM_IMG}"
  for ((v = 1; v <= mem_volumes; v++)); do
    # A different image per volume (10 % of its pieces rewritten): little to share.
    python3 "${VOLUME_PY}" mutate "${MEM_IMG}" --percent 10 --chunk-kib "${PIECE_KIB}" --slots "${SLOTS}" \
      --seed $((1000 + v)) >/dev/null
    dp "${MEM_STATE}" backup --repo "${MEM_REPO}" --volume "vol${v}" -q "${MEM_IMG}" >&2 || failures=$((failures + 1))
    out="$(out_file mem-prune)"
    cold
    measure "dp420:memory-prune:volumes${v}" "{\"tool\":\"dp420\",\"op\":\"memory-prune\",\"volumes\":${v}}" \
      --stdout "${out}" --parse dp420 --du "${MEM_REPO}" -- \
      env DP420_STATE_DIR="${MEM_STATE}" "${DP420}" prune --repo "${MEM_REPO}" --json
  done
  rm -rf "${MEM_REPO}" "${MEM_STATE}" "${MEM_IMG}"
fi

python3 - "${RUN_DIR}/context.json" <<PY
import json, os, platform, subprocess, sys
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd="${ROOT}").stdout.strip()
    except OSError:
        return ""
ctx = {
    "command": "perf/lifecycle.sh ${ARGS}",
    "date": run("date", "-u", "+%Y-%m-%d %H:%M UTC"),
    "commit": run("git", "rev-parse", "--short", "HEAD"),
    "dp420": os.path.realpath("${DP420}"),
    "dp420_version": run("${DP420}", "--version"),
    "restic_version": run("restic", "version") if ${with_restic} else "",
    "volume": "${BASE}", "volume_bytes": os.path.getsize("${BASE}"),
    "piece_bytes": ${PIECE_KIB} * 1024, "data_pieces": ${data_pieces},
    "nights": ${nights}, "restic_nights": ${restic_nights} if ${with_restic} else 0,
    "percent": ${percent}, "keep": ${keep}, "sweep_night": ${SWEEP_NIGHT},
    "caches": "${caches}", "kernel": platform.release(), "cpus": os.cpu_count(),
    "run_seconds": round(float(run("date", "+%s.%N")) - ${t_start}, 1),
    "run_dir": "${RUN_DIR}",
}
json.dump(ctx, open(sys.argv[1], "w"), indent=2)
PY
python3 "${ROOT}/perf/lifecycle_report.py" "${RESULTS}" "${RUN_DIR}/context.json" | tee "${RUN_DIR}/summary.md"
e2e_log "measurements in ${RUN_DIR}"
if ((failures > 0)); then
  e2e_log "${failures} step(s) failed"
  exit 1
fi
