#!/usr/bin/env bash
# End-to-end performance of dp420 against its yardsticks (fio, cp, xxh128sum) and against
# the tools users would pick instead (restic, borg, casync, rsync), on a realistic volume.
#
#   perf/run.sh [--quick] [--pairs N (1-20)] [--json] [--enforce]
#               [--peers | --no-peers] [--block-sizes | --no-block-sizes]
#               [--with-64g | --no-64g] [--remote | --no-remote] [--chain N (2-50)]
#               [--only PHASE,...] [--dataset-only]
#
# Full run (default): 4 GiB volume, 3 alternating pairs, peers, a 10-snapshot chain, a
# 64 GiB sparse volume, the block size sweep and the network backup over loopback (about
# 30 minutes). --quick: 512 MiB volume, 1 pair, a 4-snapshot chain and the network
# backup; peers, block sizes and the 64 GiB volume only when asked for with --peers,
# --block-sizes, --with-64g. --only runs just the phases listed (core, peers, chain, 64g,
# block-sizes, remote), e.g. `--only remote`.
#
# Volume: an ext4 image holding ~2.5 GiB of real files and ~300 MiB of random files, and a
# copy with ~1 % of its files changed (patched, deleted, added); both written densely and
# reused from $DP420_PERF_DIR (default /var/tmp/dp420-perf).
#
# Cold = `sync; echo 3 > /proc/sys/vm/drop_caches` before the step (root only; otherwise
# warm, and said so). Warm input = `sync; cat IMAGE > /dev/null` before the step.
#
#   pairs    fio O_DIRECT reads, dp420 full/incremental/restore (cold), cp --sparse=always,
#            an fio O_DIRECT write of the volume's data; xxh128sum, a 2-thread fio read from
#            the page cache and dp420 full/incremental (warm input); with peers, each peer's
#            full, incremental, restore (cold) and full, incremental (warm input). The order
#            of yardstick and subject, and of the tools, alternates from pair to pair.
#   chain    N snapshots, each change rewriting data in place (every snapshot holds the
#            same bytes, so only the chain's depth differs); 2 x pairs + 1 rounds of cold
#            restores of the 1st, the Nth and the 1st again (a restore takes seconds; more
#            rounds steady a median between two nearly equal times), then one backup of a
#            64 MiB change at fixed offsets (metadata at this volume size)
#   64g      a 64 GiB sparse volume: full, the same 64 MiB change, restore (cold)
#   sweep    16 KiB, 64 KiB, 256 KiB, 1 MiB blocks: a full backup each, then per pair fio
#            and the incremental (cold), the parent restored by an unmeasured backup
#   remote   in 2 x pairs + 1 pairs (a pair takes ~20 s; the two sides differ by a few
#            per cent, less than one pair's noise): fio of the changed image, local full +
#            incremental, and full + incremental through a `dp420 serve` on 127.0.0.1
#            whose repository is on the same file system (cold; fresh repositories and
#            parent id cache per pair);
#            the server's CPU is sampled around each remote step; the last remote
#            snapshot is checked with verify --read-data and a byte-for-byte restore
#
# Every measured command also records what the repository's disk did meanwhile
# (/proc/diskstats: requests, bytes, busy time), to show what limits a step.
#
# --dataset-only makes (or checks) the volume for the size chosen (--quick: 512 MiB) and
# exits: no binary, no measurement (perf/lifecycle.sh uses it).
# --peers installs restic, borgbackup, casync and rsync from Debian's packages when missing
# (scripts/install-peers.sh, root only).
# --json prints the summary as JSON on stdout (the tables go to stderr).
# --enforce exits 1 when a target is missed (default: report only).
# DP420_BIN=/path/to/dp420 measures that binary instead of building build/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=perf
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

quick=0 json=0 enforce=0 pairs="" chain_len="" only="" dataset_only=0
opt_peers="" opt_sweep="" opt_big="" opt_remote=""
while (($# > 0)); do
  case "$1" in
    --quick) quick=1 ;;
    --json) json=1 ;;
    --enforce) enforce=1 ;;
    --dataset-only) dataset_only=1 ;;
    --pairs) [[ $# -ge 2 ]] || usage; pairs="$2"; shift ;;
    --pairs=*) pairs="${1#--pairs=}" ;;
    --chain) [[ $# -ge 2 ]] || usage; chain_len="$2"; shift ;;
    --chain=*) chain_len="${1#--chain=}" ;;
    --peers) opt_peers=1 ;;
    --no-peers) opt_peers=0 ;;
    --block-sizes) opt_sweep=1 ;;
    --no-block-sizes) opt_sweep=0 ;;
    --with-64g) opt_big=1 ;;
    --no-64g) opt_big=0 ;;
    --remote) opt_remote=1 ;;
    --no-remote) opt_remote=0 ;;
    --only) [[ $# -ge 2 ]] || usage; only="$2"; shift ;;
    --only=*) only="${1#--only=}" ;;
    -h | --help) usage ;;
    *) e2e_log "unknown argument: $1"; usage ;;
  esac
  shift
done

if ((quick)); then
  volume_size=512M real_mib=300 random_mib=40 default_pairs=1 default_chain=4 chain_step_mib=4
  default_peers=0 default_sweep=0 default_big=0
else
  volume_size=4G real_mib=2560 random_mib=300 default_pairs=3 default_chain=10 chain_step_mib=16
  default_peers=1 default_sweep=1 default_big=1
fi
pairs="${pairs:-${default_pairs}}"
chain_len="${chain_len:-${default_chain}}"
# Each pair runs ~1 min (quick) to several (full); the chain keeps every snapshot.
e2e_check_range --pairs "${pairs}" 1 20
e2e_check_range --chain "${chain_len}" 2 50
with_peers="${opt_peers:-${default_peers}}"
with_sweep="${opt_sweep:-${default_sweep}}"
with_big="${opt_big:-${default_big}}"
with_remote="${opt_remote:-1}"
with_core=1 with_chain=1
if [[ -n "${only}" ]]; then
  with_core=0 with_peers=0 with_chain=0 with_big=0 with_sweep=0 with_remote=0
  IFS=, read -ra only_list <<<"${only}"
  for phase in "${only_list[@]}"; do
    case "${phase}" in
      core) with_core=1 ;;
      peers) with_peers=1 ;;
      chain) with_chain=1 ;;
      64g) with_big=1 ;;
      block-sizes) with_sweep=1 ;;
      remote) with_remote=1 ;;
      *) e2e_die "--only: unknown phase '${phase}' (core, peers, chain, 64g, block-sizes, remote)" ;;
    esac
  done
fi
((dataset_only)) && with_peers=0
readonly CHANGE_PERCENT=1
readonly DATASET_VERSION=1
readonly PEERS=(restic borg casync rsync)
readonly BLOCK_SIZES=(16384 65536 262144 1048576)
# The same absolute change for the metadata comparison: 64 MiB in 256 KiB pieces at
# 1 MiB-aligned offsets below 4 GiB (below the volume's end for --quick).
readonly CHANGE_MIB=64 CHANGE_PIECE_KIB=256 CHANGE_SEED=4242
readonly BIG_SIZE=64G BIG_DATA_MIB=384 BIG_SEED=64 BIG_MIN_FREE=$((2 << 30))

readonly PERF_DIR="${DP420_PERF_DIR:-/var/tmp/dp420-perf}"
readonly DATA_DIR="${PERF_DIR}/volume-${volume_size}"
readonly BASE="${DATA_DIR}/base.img"
readonly CHANGED="${DATA_DIR}/changed.img"
readonly STAMP="${DATA_DIR}/dataset.json"
readonly BIG_DIR="${PERF_DIR}/volume-${BIG_SIZE}-sparse"
readonly BIG_BASE="${BIG_DIR}/base.img"
readonly BIG_STAMP="${BIG_DIR}/dataset.json"
# Work files, all removed at exit (the volumes above are the reusable dataset cache).
readonly REPO="${PERF_DIR}/repo"
readonly RESTORED="${PERF_DIR}/restored.img"
readonly YARDSTICK_COPY="${PERF_DIR}/yardstick.img"
readonly PEER_SRC="${PERF_DIR}/peer-src"
readonly PEER_REPO="${PERF_DIR}/peer-repo"
readonly PEER_HOME="${PERF_DIR}/peer-home"
readonly PEER_RESTORE="${PERF_DIR}/peer-restore"
readonly CHAIN_DIR="${PERF_DIR}/chain"
readonly BIG_WORK="${PERF_DIR}/big"
readonly SWEEP_REPO="${PERF_DIR}/sweep-repo"
readonly FIO_WRITE_FILE="${PERF_DIR}/fio-write.tmp"
readonly REMOTE_DIR="${PERF_DIR}/remote"
RUN_DIR="${PERF_DIR}/runs/$(date -u +%Y%m%dT%H%M%SZ)"
readonly RUN_DIR
readonly RESULTS="${RUN_DIR}/results.jsonl"
readonly NOTES="${RUN_DIR}/notes.jsonl"
readonly MEASURE="${ROOT}/perf/measure.py"
readonly VOLUME_PY="${ROOT}/perf/volume.py"

clean_work() {
  rm -rf "${REPO}" "${RESTORED}" "${YARDSTICK_COPY}" "${PEER_SRC}" "${PEER_REPO}" "${PEER_HOME}" \
    "${PEER_RESTORE}" "${CHAIN_DIR}" "${BIG_WORK}" "${SWEEP_REPO}" "${SWEEP_REPO}"-* "${FIO_WRITE_FILE}" \
    "${REMOTE_DIR}"
}

# --- the binaries -------------------------------------------------------------
if ((dataset_only)); then
  DP420=":"  # no binary needed: only the volume is made
elif [[ -n "${DP420_BIN:-}" ]]; then
  DP420="${DP420_BIN}"
else
  "${ROOT}/scripts/build.sh" --target dp420_cli >&2
  DP420="$(e2e_find_cli "${ROOT}/build")"
fi
((dataset_only)) || [[ -x "${DP420}" ]] || e2e_die "no dp420 binary at ${DP420}"
for tool in fio xxh128sum /usr/bin/time; do
  command -v "${tool}" >/dev/null || e2e_die "${tool} is missing: run scripts/install-deps.sh"
done

mkdir -p "${RUN_DIR}"
: >"${NOTES}"
note() {  # note KEY VALUE...: a fact for the report (skips, checks, versions)
  local key="$1"
  shift
  python3 -c 'import json, sys; print(json.dumps({"key": sys.argv[1], "value": " ".join(sys.argv[2:])}))' \
    "${key}" "$@" >>"${NOTES}"
}

peers_reason=""
if ((with_peers)); then
  if ! "${ROOT}/scripts/install-peers.sh" --check 2>/dev/null; then
    if e2e_is_root; then
      "${ROOT}/scripts/install-peers.sh" >&2 || peers_reason="scripts/install-peers.sh failed"
    else
      peers_reason="restic/borgbackup/casync/rsync missing and not root to install them (scripts/install-peers.sh)"
    fi
  fi
  if [[ -n "${peers_reason}" ]]; then
    e2e_log "peers skipped: ${peers_reason}"
    note peers_skipped "${peers_reason}"
    with_peers=0
  else
    note version_restic "$(restic version | head -1)"
    note version_borg "$(borg --version | head -1)"
    note version_casync "$(casync --version | head -1)"
    note version_rsync "$(rsync --version | head -1 | tr -s ' ')"
  fi
fi
if ! ((dataset_only)); then
  note version_dp420 "$("${DP420}" --version 2>&1 | head -1) (${DP420})"
  note version_fio "$(fio --version)"
  note version_xxh128sum "$(xxh128sum --version 2>&1 | head -1)"
fi

# --- the volumes ----------------------------------------------------------------
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
stamp_key() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$1" 2>/dev/null || true; }
if [[ -f "${STAMP}" && -f "${BASE}" && -f "${CHANGED}" && "$(stamp_key "${STAMP}")" == "${dataset_key}" ]]; then
  e2e_log "reusing the volume in ${DATA_DIR}"
else
  make_dataset
fi
e2e_log "volume: $(cat "${STAMP}")"
if ((dataset_only)); then
  rmdir "${RUN_DIR}" 2>/dev/null || rm -rf "${RUN_DIR}"
  printf '%s\n' "${BASE}"
  exit 0
fi
VOLUME_BYTES="$(stat -c %s "${BASE}")"
readonly VOLUME_BYTES
CHANGE_SPAN=$((VOLUME_BYTES < (4 << 30) ? VOLUME_BYTES : (4 << 30)))
readonly CHANGE_SPAN
# The volume's non-zero data (what a full backup stores), in whole MiB: the fio write's size.
DATA_MIB="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d["volume_size"] * (1 - d["zero_4k_blocks_pct"] / 100)) >> 20)' "${STAMP}")"
readonly DATA_MIB

# The block device under the repositories, for the device statistics of every step.
DISK=""
if dev="$(stat -c '%Hd:%Ld' "${PERF_DIR}" 2>/dev/null)" && [[ -e "/sys/dev/block/${dev}" ]]; then
  DISK="$(basename "$(readlink -f "/sys/dev/block/${dev}")")"
  grep -qw "${DISK}" /proc/diskstats || DISK=""
fi
note disk "${DISK:-unknown}"

free_bytes() { df -B1 --output=avail "$1" | tail -1 | tr -d ' '; }
need_space() {  # need_space BYTES WHAT: false (after a note) when the disk lacks BYTES
  local avail
  avail="$(free_bytes "${PERF_DIR}")"
  if ((avail < $1)); then
    e2e_log "$2 skipped: $((avail >> 20)) MiB free in ${PERF_DIR}, needs $(($1 >> 20)) MiB"
    note "skipped_$2" "$((avail >> 20)) MiB free in ${PERF_DIR} (df), needs $(($1 >> 20)) MiB"
    return 1
  fi
}

# --- measuring -------------------------------------------------------------------
caches=cold
if ! e2e_drop_caches; then
  caches=warm
  e2e_log "not root: cannot drop caches, every step runs with a warm page cache"
fi
cold() { if [[ "${caches}" == cold ]]; then e2e_drop_caches; else sync; fi; }
warm() { sync; cat "$1" >/dev/null; }

failures=0
meta() {  # meta KEY=VALUE...: a JSON object (digits stay numbers)
  python3 -c '
import json, sys
out = {}
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    out[k] = int(v) if v.isdigit() else v
print(json.dumps(out))' "$@"
}
measure() {  # measure META_JSON [measure.py options] -- CMD...; never fails, counts failures
  local m="$1" label
  shift
  label="$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(":".join(str(d[k]) for k in ("phase","tool","op","mode","block_size","pair") if k in d))' "${m}")"
  e2e_log "${label}"
  local disk_args=()
  [[ -n "${DISK}" ]] && disk_args=(--disk "${DISK}")
  python3 "${MEASURE}" "${RESULTS}" "${label}" --meta "${m}" "${disk_args[@]}" "$@" || failures=$((failures + 1))
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2" 2>/dev/null || true; }

fio_read() {  # fio_read META IMAGE
  local out
  out="${RUN_DIR}/fio-$(date +%s%N).json"
  cold
  measure "$1" --stdout "${out}" --parse fio -- \
    fio --ioengine=io_uring --direct=1 --rw=read --bs=1M --iodepth=32 --readonly \
    --filename="$2" --name=read --output-format=json
}
dp420_backup() {  # dp420_backup META REPO IMAGE [backup options]: stdout JSON kept
  local m="$1" repo="$2" image="$3" out
  out="${RUN_DIR}/dp420-$(date +%s%N).json"
  shift 3
  measure "${m}" --stdout "${out}" --parse dp420 --du "${repo}" -- \
    "${DP420}" backup --repo "${repo}" --volume perf --json "$@" "${image}"
  LAST_JSON="${out}"
}
dp420_restore() {  # dp420_restore META REPO SNAPSHOT TARGET: restore + sync
  local out
  out="${RUN_DIR}/dp420-$(date +%s%N).json"
  # shellcheck disable=SC2016 # the inner bash expands $1..$4
  measure "$1" --stdout "${out}" --parse dp420 -- bash -c \
    '"$1" restore --repo "$2" --volume perf --snapshot "$3" --json "$4" && sync' _ \
    "${DP420}" "$2" "$3" "$4"
}
check_same() {  # check_same WHAT A B: records whether A and B hold the same bytes
  if [[ -f "$2" && -f "$3" ]] && python3 "${VOLUME_PY}" cmp "$2" "$3"; then
    note "check_$1" ok
  else
    e2e_log "$1: $2 differs from $3"
    note "check_$1" "DIFFERS"
    failures=$((failures + 1))
  fi
}

# --- pairs: dp420 against fio, cp and xxh128sum ---------------------------------------
core_pair() {
  local p="$1" first
  first=$(($1 % 2))
  local fio_base fio_changed full incr cpy restore
  fio_base="$(meta phase=core tool=fio op=read-base mode=cold pair="${p}")"
  fio_changed="$(meta phase=core tool=fio op=read-changed mode=cold pair="${p}")"
  full="$(meta phase=core tool=dp420 op=full mode=cold pair="${p}")"
  incr="$(meta phase=core tool=dp420 op=incremental mode=cold pair="${p}")"
  cpy="$(meta phase=core tool=cp op=copy-base mode=cold pair="${p}")"
  restore="$(meta phase=core tool=dp420 op=restore mode=cold pair="${p}")"
  rm -rf "${REPO}" "${RESTORED}" "${YARDSTICK_COPY}"
  "${DP420}" init --encryption none "${REPO}" >/dev/null
  do_full() { cold; dp420_backup "${full}" "${REPO}" "${BASE}"; }
  do_incr() { cold; dp420_backup "${incr}" "${REPO}" "${CHANGED}"; }
  do_cp() {
    cold
    # shellcheck disable=SC2016
    measure "${cpy}" -- bash -c 'cp --sparse=always "$1" "$2" && sync' _ "${BASE}" "${YARDSTICK_COPY}"
    rm -f "${YARDSTICK_COPY}"
  }
  do_fio_write() {  # what the disk writes: the full backup's amount of data, O_DIRECT
    local out="${RUN_DIR}/fio-write-${p}.json"
    cold
    measure "$(meta phase=core tool=fio op=write-data mode=cold pair="${p}")" --stdout "${out}" --parse fio -- \
      fio --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=32 --size="${DATA_MIB}M" \
      --end_fsync=1 --filename="${FIO_WRITE_FILE}" --name=write --output-format=json
    rm -f "${FIO_WRITE_FILE}"
  }
  do_restore() { cold; dp420_restore "${restore}" "${REPO}" latest "${RESTORED}"; }
  if ((first)); then
    fio_read "${fio_base}" "${BASE}"; do_full
    fio_read "${fio_changed}" "${CHANGED}"; do_incr
    do_cp; do_fio_write; do_restore
  else
    do_full; fio_read "${fio_base}" "${BASE}"
    do_incr; fio_read "${fio_changed}" "${CHANGED}"
    do_restore; do_fio_write; do_cp
  fi
  check_same "dp420_restore_pair${p}" "${CHANGED}" "${RESTORED}"
  rm -rf "${REPO}" "${RESTORED}"

  # Warm input: the image is in the page cache.
  "${DP420}" init --encryption none "${REPO}" >/dev/null
  do_xxh() {
    warm "${CHANGED}"
    measure "$(meta phase=core tool=xxh128sum op=hash-changed mode=warm pair="${p}")" -- \
      xxh128sum "${CHANGED}"
  }
  do_fio_cached() {  # what reading the cached image costs: 2 threads, read(2), 1 MiB
    local out="${RUN_DIR}/fio-cached-${p}.json" half=$((VOLUME_BYTES / 2))
    warm "${CHANGED}"
    measure "$(meta phase=core tool=fio op=read-cached mode=warm pair="${p}")" --stdout "${out}" --parse fio -- \
      fio --ioengine=psync --direct=0 --invalidate=0 --rw=read --bs=1M --numjobs=2 --size="${half}" \
      --offset_increment="${half}" --group_reporting --readonly --filename="${CHANGED}" --name=cached \
      --output-format=json
  }
  do_warm_backups() {
    warm "${BASE}"
    dp420_backup "$(meta phase=core tool=dp420 op=full mode=warm pair="${p}")" "${REPO}" "${BASE}"
    warm "${CHANGED}"
    dp420_backup "$(meta phase=core tool=dp420 op=incremental mode=warm pair="${p}")" "${REPO}" "${CHANGED}"
  }
  if ((first)); then do_xxh; do_fio_cached; do_warm_backups; else do_warm_backups; do_fio_cached; do_xxh; fi
  rm -rf "${REPO}"
}

# --- pairs: the peers -------------------------------------------------------------------
# Each peer backs up PEER_SRC/volume.img, a hard link to the base or the changed image, so
# that it sees one file changing under one name, as a nightly backup would.
link_source() { mkdir -p "${PEER_SRC}"; ln -f "$1" "${PEER_SRC}/volume.img"; }
peer_reset() {
  rm -rf "${PEER_REPO}" "${PEER_HOME}" "${PEER_RESTORE}"
  mkdir -p "${PEER_HOME}" "${PEER_RESTORE}"
}
export RESTIC_PASSWORD=perf RESTIC_REPOSITORY="${PEER_REPO}" RESTIC_CACHE_DIR="${PEER_HOME}/restic"
export BORG_PASSPHRASE="" BORG_BASE_DIR="${PEER_HOME}/borg" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
  BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
peer_init() {
  case "$1" in
    restic) restic init --repository-version 2 -q >&2 ;;
    borg) borg init -e none "${PEER_REPO}" >&2 ;;
    casync) mkdir -p "${PEER_REPO}/store" ;;
    rsync) mkdir -p "${PEER_REPO}" ;;
  esac
}
# The exact commands (also printed into the report). NAME is the archive/index name.
peer_backup_cmd() {  # peer_backup_cmd TOOL NAME
  case "$1" in
    restic) echo "restic backup --compression off -q ${PEER_SRC}/volume.img" ;;
    borg) echo "cd ${PEER_SRC} && borg create --chunker-params fixed,4194304 --compression none ${PEER_REPO}::$2 volume.img" ;;
    casync) echo "casync make --store=${PEER_REPO}/store ${PEER_REPO}/$2.caibx ${PEER_SRC}/volume.img" ;;
    rsync) echo "rsync --inplace --no-whole-file ${PEER_SRC}/volume.img ${PEER_REPO}/" ;;
  esac
}
peer_restore_cmd() {  # peer_restore_cmd TOOL NAME: restores into PEER_RESTORE
  case "$1" in
    restic) echo "restic restore latest --target ${PEER_RESTORE} -q" ;;
    borg) echo "cd ${PEER_RESTORE} && borg extract --sparse ${PEER_REPO}::$2" ;;
    casync) echo "casync extract --store=${PEER_REPO}/store ${PEER_REPO}/$2.caibx ${PEER_RESTORE}/volume.img" ;;
    rsync) echo "rsync --inplace --no-whole-file ${PEER_REPO}/volume.img ${PEER_RESTORE}/" ;;
  esac
}
peer_restored_file() {
  case "$1" in
    restic) echo "${PEER_RESTORE}${PEER_SRC}/volume.img" ;;
    *) echo "${PEER_RESTORE}/volume.img" ;;
  esac
}
peer_pair() {  # peer_pair TOOL PAIR
  local tool="$1" p="$2"
  peer_reset
  peer_init "${tool}"
  link_source "${BASE}"
  cold
  measure "$(meta phase=peers tool="${tool}" op=full mode=cold pair="${p}")" --du "${PEER_REPO}" -- \
    bash -c "$(peer_backup_cmd "${tool}" full) && sync"
  link_source "${CHANGED}"
  cold
  measure "$(meta phase=peers tool="${tool}" op=incremental mode=cold pair="${p}")" --du "${PEER_REPO}" -- \
    bash -c "$(peer_backup_cmd "${tool}" incremental) && sync"
  cold
  measure "$(meta phase=peers tool="${tool}" op=restore mode=cold pair="${p}")" -- \
    bash -c "$(peer_restore_cmd "${tool}" incremental) && sync"
  if ((p == 1)); then
    check_same "${tool}_restore" "${CHANGED}" "$(peer_restored_file "${tool}")"
  fi
  peer_reset
  peer_init "${tool}"
  link_source "${BASE}"
  warm "${BASE}"
  measure "$(meta phase=peers tool="${tool}" op=full mode=warm pair="${p}")" --du "${PEER_REPO}" -- \
    bash -c "$(peer_backup_cmd "${tool}" full) && sync"
  link_source "${CHANGED}"
  warm "${CHANGED}"
  measure "$(meta phase=peers tool="${tool}" op=incremental mode=warm pair="${p}")" --du "${PEER_REPO}" -- \
    bash -c "$(peer_backup_cmd "${tool}" incremental) && sync"
  rm -rf "${PEER_REPO}" "${PEER_HOME}" "${PEER_RESTORE}" "${PEER_SRC}"
}

# --- chain: restore of the Nth snapshot against the 1st; metadata of a fixed change -------
chain_phase() {
  local img="${CHAIN_DIR}/volume.img" repo="${CHAIN_DIR}/repo" i p first_id="" last_id=""
  rm -rf "${CHAIN_DIR}"
  mkdir -p "${CHAIN_DIR}"
  cp --sparse=never "${BASE}" "${img}"
  "${DP420}" init --encryption none "${repo}" >/dev/null
  for ((i = 1; i <= chain_len; i++)); do
    if ((i > 1)); then
      python3 "${VOLUME_PY}" patch "${img}" --mib "${chain_step_mib}" --chunk-kib 64 \
        --span "${VOLUME_BYTES}" --seed $((100 + i)) --over-data
    fi
    cold
    dp420_backup "$(meta phase=chain tool=dp420 op=chain-backup mode=cold seq="${i}" pair=1)" "${repo}" "${img}"
    if ((i == 1)); then first_id="$(json_field "${LAST_JSON}" snapshot_id)"; fi
    last_id="$(json_field "${LAST_JSON}" snapshot_id)"
  done
  if [[ -z "${first_id}" || -z "${last_id}" ]]; then
    e2e_log "chain: a backup failed, no restores"
    return 0
  fi
  # Rounds of three cold restores: the 1st snapshot, the Nth, the 1st again. The Nth is
  # judged against the mean of the two around it (drift cancels), and the 1st against
  # itself gives the noise of one comparison, measured in the same run.
  local r1="${CHAIN_DIR}/restored-first.img" rn="${CHAIN_DIR}/restored-last.img"
  for ((p = 1; p <= 2 * pairs + 1; p++)); do
    rm -f "${r1}" "${rn}"
    cold
    dp420_restore "$(meta phase=chain tool=dp420 op=restore-first mode=cold pair="${p}")" "${repo}" "${first_id}" "${r1}"
    if ((p == 1)); then check_same chain_restore_first "${BASE}" "${r1}"; fi
    rm -f "${r1}"
    cold
    dp420_restore "$(meta phase=chain tool=dp420 op=restore-last mode=cold pair="${p}")" "${repo}" "${last_id}" "${rn}"
    if ((p == 1)); then check_same chain_restore_last "${img}" "${rn}"; fi
    rm -f "${rn}"
    cold
    dp420_restore "$(meta phase=chain tool=dp420 op=restore-first-again mode=cold pair="${p}")" "${repo}" "${first_id}" "${r1}"
    rm -f "${r1}"
  done
  python3 "${VOLUME_PY}" patch "${img}" --mib "${CHANGE_MIB}" --chunk-kib "${CHANGE_PIECE_KIB}" \
    --span "${CHANGE_SPAN}" --seed "${CHANGE_SEED}"
  cold
  dp420_backup "$(meta phase=chain tool=dp420 op=change-64m mode=cold pair=1)" "${repo}" "${img}"
  rm -rf "${CHAIN_DIR}"
}

# --- a 64 GiB sparse volume -----------------------------------------------------------
big_key="v1 size=${BIG_SIZE} data=${BIG_DATA_MIB} seed=${BIG_SEED}"
big_phase() {
  need_space "${BIG_MIN_FREE}" 64g || return 0
  if [[ -f "${BIG_BASE}" && "$(stamp_key "${BIG_STAMP}")" == "${big_key}" ]]; then
    e2e_log "reusing the sparse ${BIG_SIZE} volume in ${BIG_DIR} ($(du -h "${BIG_BASE}" | cut -f1) on disk)"
  else
    e2e_log "creating the sparse ${BIG_SIZE} volume in ${BIG_DIR}"
    rm -rf "${BIG_DIR}"
    mkdir -p "${BIG_DIR}"
    python3 "${VOLUME_PY}" make-sparse "${BIG_BASE}" --size "${BIG_SIZE}" --data-mib "${BIG_DATA_MIB}" \
      --seed "${BIG_SEED}"
    printf '{"key": "%s", "volume_size": %s}\n' "${big_key}" "$(stat -c %s "${BIG_BASE}")" >"${BIG_STAMP}"
  fi
  note big_volume "$(stat -c %s "${BIG_BASE}") bytes, $(du -B1 "${BIG_BASE}" | cut -f1) allocated"
  rm -rf "${BIG_WORK}"
  mkdir -p "${BIG_WORK}"
  local changed="${BIG_WORK}/changed.img" repo="${BIG_WORK}/repo" restored="${BIG_WORK}/restored.img"
  cp --sparse=always "${BIG_BASE}" "${changed}"
  python3 "${VOLUME_PY}" patch "${changed}" --mib "${CHANGE_MIB}" --chunk-kib "${CHANGE_PIECE_KIB}" \
    --span "${CHANGE_SPAN}" --seed "${CHANGE_SEED}"
  "${DP420}" init --encryption none "${repo}" >/dev/null
  cold
  dp420_backup "$(meta phase=big tool=dp420 op=full mode=cold pair=1)" "${repo}" "${BIG_BASE}"
  cold
  dp420_backup "$(meta phase=big tool=dp420 op=change-64m mode=cold pair=1)" "${repo}" "${changed}"
  cold
  dp420_restore "$(meta phase=big tool=dp420 op=restore mode=cold pair=1)" "${repo}" latest "${restored}"
  check_same big_restore "${changed}" "${restored}"
  rm -rf "${BIG_WORK}"
}

# --- block size sweep -------------------------------------------------------------------
# One repository per block size holding a full backup of the base; each pair then measures
# the incremental of the changed image against it, and an unmeasured backup of the base
# (the same blocks changed back) restores the parent. So no measured step follows the
# 3 GiB write of a full backup, which slows the next reads of this shared disk.
sweep_phase() {
  local n=${#BLOCK_SIZES[@]} k p bs m_fio m_incr
  for bs in "${BLOCK_SIZES[@]}"; do
    rm -rf "${SWEEP_REPO}-${bs}"
    "${DP420}" init --encryption none "${SWEEP_REPO}-${bs}" >/dev/null
    cold
    dp420_backup "$(meta phase=sweep tool=dp420 op=full mode=cold block_size="${bs}" pair=1)" \
      "${SWEEP_REPO}-${bs}" "${BASE}" --block-size "${bs}"
  done
  for ((p = 1; p <= pairs; p++)); do
    for ((k = 0; k < n; k++)); do
      bs="${BLOCK_SIZES[$(((k + p - 1) % n))]}"
      m_fio="$(meta phase=sweep tool=fio op=read-changed mode=cold block_size="${bs}" pair="${p}")"
      m_incr="$(meta phase=sweep tool=dp420 op=incremental mode=cold block_size="${bs}" pair="${p}")"
      if (((k + p) % 2)); then
        fio_read "${m_fio}" "${CHANGED}"
        cold; dp420_backup "${m_incr}" "${SWEEP_REPO}-${bs}" "${CHANGED}" --block-size "${bs}"
      else
        cold; dp420_backup "${m_incr}" "${SWEEP_REPO}-${bs}" "${CHANGED}" --block-size "${bs}"
        fio_read "${m_fio}" "${CHANGED}"
      fi
      "${DP420}" backup --repo "${SWEEP_REPO}-${bs}" --volume perf --block-size "${bs}" -q "${BASE}" >&2 ||
        failures=$((failures + 1))
    done
  done
  for bs in "${BLOCK_SIZES[@]}"; do rm -rf "${SWEEP_REPO}-${bs}"; done
}

# --- remote: backup over loopback, against the local path -------------------------------
# A `dp420 serve` on 127.0.0.1 (a free port) serves a repository on the same file system as
# the local one. Each pair starts from empty repositories on both sides and an empty parent
# id cache (DP420_CACHE_DIR, under REMOTE_DIR), so each remote full has no parent and each
# remote incremental finds the cache its full left, as a nightly agent would.
readonly REMOTE_CLIENT=perf
readonly REMOTE_SERVER_REPO="${REMOTE_DIR}/server-repo" REMOTE_LOCAL_REPO="${REMOTE_DIR}/local-repo"
readonly REMOTE_KEY="${REMOTE_DIR}/${REMOTE_CLIENT}.key" REMOTE_CACHE="${REMOTE_DIR}/cache"
SERVER_PID="" SERVER_PORT="" REMOTE_LAST_JSON=""
start_server() {  # start_server REPO LOG: sets SERVER_PID and SERVER_PORT, false on failure
  e2e_start_server "${DP420}" "$1" "${REMOTE_DIR}/clients.json" "$2" || return 1
  SERVER_PID="${E2E_SERVER_PID}" SERVER_PORT="${E2E_SERVER_PORT}"
}
stop_server() {  # SIGTERM; SIGKILL after 40 s (a server drains running requests for 30 s)
  local pid="${SERVER_PID}" i
  [[ -n "${pid}" ]] || return 0
  SERVER_PID="" SERVER_PORT=""
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 400; i++)); do e2e_alive "${pid}" || break; sleep 0.1; done
  if e2e_alive "${pid}"; then
    e2e_log "remote: dp420 serve (pid ${pid}) still runs 40 s after SIGTERM; killing it"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  wait "${pid}" 2>/dev/null || true
}
dp420_remote_backup() {  # dp420_remote_backup META IMAGE: also the server's CPU and I/O
  local out
  out="${RUN_DIR}/dp420-$(date +%s%N).json"
  measure "$1" --stdout "${out}" --parse dp420 --du "${REMOTE_SERVER_REPO}" --server-pid "${SERVER_PID}" -- \
    env DP420_CACHE_DIR="${REMOTE_CACHE}" "${DP420}" backup --remote "127.0.0.1:${SERVER_PORT}" \
    --client "${REMOTE_CLIENT}" --key-file "${REMOTE_KEY}" --volume perf --json "$2"
  REMOTE_LAST_JSON="${out}"
}
remote_pair() {  # remote_pair PAIR: false when the server cannot start
  local p="$1"
  stop_server
  rm -rf "${REMOTE_SERVER_REPO}" "${REMOTE_LOCAL_REPO}" "${REMOTE_CACHE}"
  "${DP420}" init --encryption none "${REMOTE_SERVER_REPO}" >/dev/null
  "${DP420}" init --encryption none "${REMOTE_LOCAL_REPO}" >/dev/null
  start_server "${REMOTE_SERVER_REPO}" "${RUN_DIR}/serve-${p}.log" || return 1
  do_local() {
    cold
    dp420_backup "$(meta phase=remote tool=dp420 op=full mode=cold pair="${p}")" "${REMOTE_LOCAL_REPO}" "${BASE}"
    cold
    dp420_backup "$(meta phase=remote tool=dp420 op=incremental mode=cold pair="${p}")" \
      "${REMOTE_LOCAL_REPO}" "${CHANGED}"
    rm -rf "${REMOTE_LOCAL_REPO}"
  }
  do_remote() {
    cold
    dp420_remote_backup "$(meta phase=remote tool=dp420-remote op=full mode=cold pair="${p}")" "${BASE}"
    cold
    dp420_remote_backup "$(meta phase=remote tool=dp420-remote op=incremental mode=cold pair="${p}")" "${CHANGED}"
  }
  local m_fio
  m_fio="$(meta phase=remote tool=fio op=read-changed mode=cold pair="${p}")"
  if ((p % 2)); then
    fio_read "${m_fio}" "${CHANGED}"; do_local; do_remote
  else
    do_remote; do_local; fio_read "${m_fio}" "${CHANGED}"
  fi
}
remote_check() {  # the last remote snapshot: verify --read-data, restore compared to the image
  local id restored="${REMOTE_DIR}/restored.img"
  id="$(json_field "${REMOTE_LAST_JSON}" snapshot_id)"
  if [[ -z "${id}" ]]; then
    e2e_log "remote: the last remote backup failed, nothing to check"
    note check_remote_verify "no snapshot (the backup failed)"
    failures=$((failures + 1))
    return 0
  fi
  # Read directly, the server's repository holds the volume in its client's namespace.
  if "${DP420}" verify --repo "${REMOTE_SERVER_REPO}" --volume "${REMOTE_CLIENT}/perf" --snapshot "${id}" --read-data --json \
    >"${RUN_DIR}/remote-verify.json"; then
    note check_remote_verify ok
  else
    note check_remote_verify "FAILED (${RUN_DIR}/remote-verify.json)"
    failures=$((failures + 1))
  fi
  if "${DP420}" restore --repo "${REMOTE_SERVER_REPO}" --volume "${REMOTE_CLIENT}/perf" --snapshot "${id}" -q "${restored}" >&2; then
    check_same remote_restore "${CHANGED}" "${restored}"
  else
    note check_remote_restore "FAILED (dp420 restore)"
    failures=$((failures + 1))
  fi
  rm -f "${restored}"
}
remote_phase() {
  local p
  rm -rf "${REMOTE_DIR}"
  mkdir -p "${REMOTE_DIR}"
  "${DP420}" client-add --clients "${REMOTE_DIR}/clients.json" --client "${REMOTE_CLIENT}" \
    --key-out "${REMOTE_KEY}" -q >&2
  for ((p = 1; p <= 2 * pairs + 1; p++)); do
    if ! remote_pair "${p}"; then
      note check_remote_server "dp420 serve did not start (${RUN_DIR}/serve-${p}.log)"
      failures=$((failures + 1))
      break
    fi
  done
  # The server stops first: the checks read its repository directly.
  stop_server
  if [[ -n "${REMOTE_LAST_JSON}" ]]; then remote_check; fi
  rm -rf "${REMOTE_DIR}"
}

# --- the run ----------------------------------------------------------------------------
clean_work
e2e_add_cleanup clean_work
e2e_add_cleanup stop_server  # runs before clean_work (newest first)
t_start="$(e2e_now)"
core_ok=${with_core}
if ((core_ok)) && ! need_space $((3 * VOLUME_BYTES)) core; then core_ok=0; fi
if ((with_peers)) && ! need_space $((3 * VOLUME_BYTES)) peers; then with_peers=0; fi
for ((p = 1; p <= pairs; p++)); do
  order=()
  if ((with_peers)); then
    for ((k = 0; k < ${#PEERS[@]}; k++)); do order+=("${PEERS[$(((k + p - 1) % ${#PEERS[@]}))]}"); done
  fi
  if ((core_ok && p % 2)); then core_pair "${p}"; fi
  for tool in "${order[@]}"; do peer_pair "${tool}" "${p}"; done
  if ((core_ok && !(p % 2))); then core_pair "${p}"; fi
done
if ((with_remote)); then
  if need_space $((3 * VOLUME_BYTES)) remote; then remote_phase; fi
else
  note skipped_remote "not asked for (--no-remote, or --only without remote)"
fi
if ((with_chain)) && need_space $((4 * VOLUME_BYTES)) chain; then chain_phase; fi
if ((with_big)); then big_phase; else note skipped_64g "not asked for (--quick without --with-64g, --no-64g, or --only without 64g)"; fi
if ((with_sweep)) && need_space $((9 * VOLUME_BYTES / 2)) block_sizes; then sweep_phase; fi
clean_work
note run_seconds "$(e2e_elapsed "${t_start}" "$(e2e_now)")"

peer_cmds="{}"
if ((with_peers)); then
  peer_cmds="$(
    for tool in "${PEERS[@]}"; do
      printf '%s\t%s\t%s\n' "${tool}" "$(peer_backup_cmd "${tool}" NAME)" "$(peer_restore_cmd "${tool}" NAME)"
    done | python3 -c '
import json, sys
out = {}
for line in sys.stdin:
    tool, backup, restore = line.rstrip("\n").split("\t")
    out[tool] = {"backup": backup + " && sync", "restore": restore + " && sync"}
print(json.dumps(out))'
  )"
fi
python3 - "${STAMP}" "${RUN_DIR}/context.json" "${NOTES}" "${peer_cmds}" <<PY
import json, os, platform, sys
stamp = json.load(open(sys.argv[1]))
notes = {}
for line in open(sys.argv[3]):
    if line.strip():
        d = json.loads(line)
        notes[d["key"]] = d["value"]
ctx = {
    "volume_size": stamp["volume_size"],
    "volume_note": "{real_mib} MiB real + {random_mib} MiB random files, ~{pct} % changed".format(
        real_mib=${real_mib}, random_mib=${random_mib}, pct=${CHANGE_PERCENT}),
    "dataset": stamp,
    "pairs": ${pairs},
    "quick": bool(${quick}),
    "caches": "${caches}",
    "chain_length": ${chain_len},
    "chain_pairs": $((2 * pairs + 1)),
    "remote_pairs": $((2 * pairs + 1)),
    "chain_step_mib": ${chain_step_mib},
    "data_mib": ${DATA_MIB},
    "change": "${CHANGE_MIB} MiB in ${CHANGE_PIECE_KIB} KiB pieces at 1 MiB-aligned offsets below ${CHANGE_SPAN} (seed ${CHANGE_SEED})",
    "big_volume": "${BIG_SIZE} sparse, ${BIG_DATA_MIB} MiB of random data in 1 MiB pieces",
    "peers": ${with_peers} and "${PEERS[*]}".split() or [],
    "peer_commands": json.loads(sys.argv[4]),
    "block_sizes": [int(x) for x in "${BLOCK_SIZES[*]}".split()] if ${with_sweep} else [],
    "remote": bool(${with_remote}),
    "phases": [name for name, on in (("core", ${with_core}), ("peers", ${with_peers}),
               ("chain", ${with_chain}), ("64g", ${with_big}), ("block-sizes", ${with_sweep}),
               ("remote", ${with_remote})) if on],
    "notes": notes,
    "dp420": os.path.realpath("${DP420}"),
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "run_dir": "${RUN_DIR}",
}
json.dump(ctx, open(sys.argv[2], "w"), indent=2)
PY

report_args=("${RESULTS}" "${RUN_DIR}/context.json")
((json)) && report_args+=(--json)
((enforce)) && report_args+=(--enforce)
report_rc=0
python3 "${ROOT}/perf/report.py" "${report_args[@]}" | tee "${RUN_DIR}/summary.$( ((json)) && echo json || echo txt)" ||
  report_rc=$?
if ((json)); then
  python3 "${ROOT}/perf/report.py" "${RESULTS}" "${RUN_DIR}/context.json" >"${RUN_DIR}/summary.txt" 2>/dev/null || true
fi
e2e_log "measurements in ${RUN_DIR}"
if ((failures > 0)); then
  e2e_log "${failures} step(s) failed"
  exit 1
fi
exit "${report_rc}"
