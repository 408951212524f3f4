#!/usr/bin/env bash
# End-to-end performance of dp420 against the device (fio) and cp, on a realistic volume.
#
#   perf/run.sh [--quick] [--json] [--pairs N] [--enforce]
#
# Volume: an ext4 image of 4 GiB (--quick: 512 MiB) holding ~2.5 GiB of real files and
# ~300 MiB of random files, and a copy with ~1 % of its files changed (patched, deleted,
# added). Both images are written densely (every zero byte on disk, as on a real device)
# and reused from $DP420_PERF_DIR (default /var/tmp/dp420-perf) when present.
#
# Each pair, with cold caches before every step (root: drop_caches; otherwise warm, and
# said so): fio O_DIRECT read of the base image, dp420 full backup of it, fio read of the
# changed image, dp420 incremental backup of it, cp --sparse=always of the base image into
# the repository's file system + sync, dp420 restore of the latest snapshot + sync.
# Default 3 pairs (--quick: 1); the table shows medians.
#
# --json prints the summary as JSON on stdout (the table goes to stderr).
# --enforce exits 1 when a target is missed (default: report only).
# DP420_BIN=/path/to/dp420 measures that binary instead of building build/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=perf
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

quick=0
json=0
enforce=0
pairs=""
while (($# > 0)); do
  case "$1" in
    --quick) quick=1 ;;
    --json) json=1 ;;
    --enforce) enforce=1 ;;
    --pairs) [[ $# -ge 2 ]] || usage; pairs="$2"; shift ;;
    --pairs=*) pairs="${1#--pairs=}" ;;
    -h | --help) usage ;;
    *) e2e_log "unknown argument: $1"; usage ;;
  esac
  shift
done

if ((quick)); then
  volume_size=512M real_mib=300 random_mib=40 default_pairs=1
else
  volume_size=4G real_mib=2560 random_mib=300 default_pairs=3
fi
pairs="${pairs:-${default_pairs}}"
[[ "${pairs}" =~ ^[1-9][0-9]*$ ]] || e2e_die "--pairs needs a positive integer, got '${pairs}'"
readonly CHANGE_PERCENT=1
readonly INCREMENTAL_TARGET=0.8
readonly DATASET_VERSION=1

readonly PERF_DIR="${DP420_PERF_DIR:-/var/tmp/dp420-perf}"
readonly DATA_DIR="${PERF_DIR}/volume-${volume_size}"
readonly BASE="${DATA_DIR}/base.img"
readonly CHANGED="${DATA_DIR}/changed.img"
readonly STAMP="${DATA_DIR}/dataset.json"
readonly REPO="${PERF_DIR}/repo"
readonly RESTORED="${PERF_DIR}/restored.img"
readonly YARDSTICK_COPY="${PERF_DIR}/yardstick.img"
RUN_DIR="${PERF_DIR}/runs/$(date -u +%Y%m%dT%H%M%SZ)"
readonly RUN_DIR
readonly RESULTS="${RUN_DIR}/results.jsonl"
readonly MEASURE="${ROOT}/perf/measure.py"

# --- the binary ---------------------------------------------------------------
if [[ -n "${DP420_BIN:-}" ]]; then
  DP420="${DP420_BIN}"
else
  "${ROOT}/scripts/build.sh" --target dp420_cli >&2
  DP420="$(e2e_find_cli "${ROOT}/build")"
fi
[[ -x "${DP420}" ]] || e2e_die "no dp420 binary at ${DP420}"
command -v fio >/dev/null || e2e_die "fio is missing: run scripts/install-deps.sh"

# --- the volume ---------------------------------------------------------------
dataset_key="v${DATASET_VERSION} size=${volume_size} real=${real_mib} random=${random_mib} change=${CHANGE_PERCENT}"
make_dataset() {
  e2e_log "creating the ${volume_size} volume in ${DATA_DIR} (once; later runs reuse it)"
  rm -rf "${DATA_DIR}"
  mkdir -p "${DATA_DIR}"
  local staging="${DATA_DIR}/staging" t0
  t0="$(e2e_now)"
  e2e_stage "${staging}" "${real_mib}" "${random_mib}"
  e2e_log "staged in $(e2e_elapsed "${t0}" "$(e2e_now)") s"
  t0="$(e2e_now)"
  e2e_make_image "${staging}" "${DATA_DIR}/sparse.img" "${volume_size}"
  e2e_log "mkfs.ext4 -d in $(e2e_elapsed "${t0}" "$(e2e_now)") s"
  # Dense copies: a hole would be read at memory speed, a real device's zeros are not.
  cp --sparse=never "${DATA_DIR}/sparse.img" "${BASE}"
  rm -f "${DATA_DIR}/sparse.img"
  cp --sparse=never "${BASE}" "${CHANGED}"
  e2e_mutate_image "${CHANGED}" "${staging}" "${CHANGE_PERCENT}" 7
  rm -rf "${staging}"
  python3 - "${BASE}" "${CHANGED}" "${dataset_key}" >"${STAMP}.tmp" <<'PY'
import json, sys
base, changed, key = sys.argv[1:4]
stats = {}
sizes = [4 << 10, 64 << 10, 1 << 20, 4 << 20]
diff = {s: 0 for s in sizes}
zero4k = 0
total = 0
ZERO4K = bytes(4096)
with open(base, "rb") as a, open(changed, "rb") as b:
    while True:
        x = a.read(4 << 20)
        y = b.read(4 << 20)
        if not x and not y:
            break
        for s in sizes:
            for off in range(0, max(len(x), len(y)), s):
                if x[off:off + s] != y[off:off + s]:
                    diff[s] += 1
        zero4k += sum(1 for off in range(0, len(x), 4096) if x[off:off + 4096] == ZERO4K)
        total += len(x)
stats = {f"changed_blocks_pct_{s >> 10}k": round(100.0 * diff[s] / -(-total // s), 2) for s in sizes}
stats["zero_4k_blocks_pct"] = round(100.0 * zero4k / (total // 4096), 2)
json.dump({"key": key, "volume_size": total, **stats}, sys.stdout)
PY
  mv "${STAMP}.tmp" "${STAMP}"
}
if [[ -f "${STAMP}" && -f "${BASE}" && -f "${CHANGED}" ]] &&
  [[ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "${STAMP}")" == "${dataset_key}" ]]; then
  e2e_log "reusing the volume in ${DATA_DIR}"
else
  make_dataset
fi
e2e_log "volume: $(cat "${STAMP}")"

# --- the runs -----------------------------------------------------------------
mkdir -p "${RUN_DIR}"
caches=cold
if ! e2e_drop_caches; then
  caches=warm
  e2e_log "not root: cannot drop caches, every step runs with a warm page cache"
fi
cold() { if [[ "${caches}" == cold ]]; then e2e_drop_caches; else sync; fi; }

measure() {  # measure LABEL PAIR [measure.py options] -- CMD...
  local label="$1" pair="$2"
  shift 2
  e2e_log "pair ${pair}: ${label}"
  python3 "${MEASURE}" "${RESULTS}" "${label}" --meta "{\"pair\": ${pair}}" "$@"
}
fio_read() {  # fio_read LABEL PAIR IMAGE
  cold
  measure "$1" "$2" --stdout "${RUN_DIR}/$1-$2.fio.json" --parse fio -- \
    fio --ioengine=io_uring --direct=1 --rw=read --bs=1M --iodepth=32 --readonly \
    --filename="$3" --name=read --output-format=json
}

failures=0
for ((pair = 1; pair <= pairs; pair++)); do
  rm -rf "${REPO}" "${RESTORED}" "${YARDSTICK_COPY}"
  "${DP420}" init "${REPO}" >/dev/null
  fio_read fio-base "${pair}" "${BASE}" || failures=$((failures + 1))
  cold
  measure full "${pair}" --stdout "${RUN_DIR}/full-${pair}.json" --parse dp420 -- \
    "${DP420}" backup --repo "${REPO}" --volume perf --json "${BASE}" || failures=$((failures + 1))
  fio_read fio-changed "${pair}" "${CHANGED}" || failures=$((failures + 1))
  cold
  measure incremental "${pair}" --stdout "${RUN_DIR}/incremental-${pair}.json" --parse dp420 -- \
    "${DP420}" backup --repo "${REPO}" --volume perf --json "${CHANGED}" || failures=$((failures + 1))
  cold
  # shellcheck disable=SC2016 # the inner bash expands $1..$3
  measure cp "${pair}" -- bash -c 'cp --sparse=always "$1" "$2" && sync' _ "${BASE}" "${YARDSTICK_COPY}" ||
    failures=$((failures + 1))
  rm -f "${YARDSTICK_COPY}"
  cold
  # shellcheck disable=SC2016
  measure restore "${pair}" -- bash -c '"$1" restore --repo "$2" --volume perf --snapshot latest "$3" && sync' \
    _ "${DP420}" "${REPO}" "${RESTORED}" || failures=$((failures + 1))
done

restore_bit_exact=false
if [[ -f "${RESTORED}" ]] && cmp -s "${CHANGED}" "${RESTORED}"; then
  restore_bit_exact=true
else
  e2e_log "the restored image differs from ${CHANGED}"
  failures=$((failures + 1))
fi
repo_bytes="$(du -sb "${REPO}" 2>/dev/null | cut -f1 || echo 0)"
rm -rf "${RESTORED}" "${REPO}"

python3 - "${STAMP}" "${RUN_DIR}/context.json" <<PY
import json, os, platform, sys
stamp = json.load(open(sys.argv[1]))
ctx = {
    "volume_size": stamp["volume_size"],
    "volume_note": "{real_mib} MiB real + {random_mib} MiB random files, ~{CHANGE_PERCENT} % changed".format(
        real_mib=${real_mib}, random_mib=${random_mib}, CHANGE_PERCENT=${CHANGE_PERCENT}),
    "dataset": stamp,
    "pairs": ${pairs},
    "caches": "${caches}",
    "incremental_target": ${INCREMENTAL_TARGET},
    "restore_bit_exact": ${restore_bit_exact^},
    "repository_bytes": ${repo_bytes:-0},
    "dp420": os.path.realpath("${DP420}"),
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
}
json.dump(ctx, open(sys.argv[2], "w"), indent=2)
PY

report_args=("${RESULTS}" "${RUN_DIR}/context.json")
((json)) && report_args+=(--json)
((enforce)) && report_args+=(--enforce)
report_rc=0
python3 "${ROOT}/perf/report.py" "${report_args[@]}" | tee "${RUN_DIR}/summary.$( ((json)) && echo json || echo txt)" ||
  report_rc=$?
e2e_log "measurements in ${RUN_DIR}"
if ((failures > 0)); then
  e2e_log "${failures} step(s) failed"
  exit 1
fi
exit "${report_rc}"
