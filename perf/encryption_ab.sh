#!/usr/bin/env bash
# Encryption and compression against plain, and against restic, on the harness's 4 GiB
# real-file volume (perf/run.sh makes it: $DP420_PERF_DIR/volume-4G/{base,changed}.img,
# an ext4 image of real files and its 1 %-changed successor).
#
#   perf/encryption_ab.sh [--rounds N (1)] [--no-restic] [CONFIG...]
#
# CONFIG: plain (no encryption, no compression), enc (aes-256-gcm, no compression),
# enc-lz4, enc-zstd1, auto (no encryption, --compression auto), enc-auto (aes-256-gcm,
# --compression auto), enc-auto-misled (enc-auto told the device reads 0.5 GB/s with the
# test hook DP420_TEST_AUTO_DEVICE_BPS: what the step-down saves when the measurement
# misleads) (default: the first four). After each backup with auto, the
# codec it chose and why (from the manifest). For each, cold caches before every step:
# a full backup of base.img, an incremental of changed.img (same source path), and a
# restore of the incremental to a file; then the repository's bytes. Yardsticks in the
# same run: fio's cold O_DIRECT read of changed.img (1 MiB, QD 32) and the non-zero
# bytes of base.img; restic (when installed; its default compression and encryption)
# does the same three steps. Needs root (drops caches). Prints one line per step and a
# summary table; every restore is compared with the image (exit 1 on a mismatch).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
rounds=1 with_restic=1 configs=()
while (($# > 0)); do
  case "$1" in
    --rounds) [[ $# -ge 2 ]] || usage; rounds="$2"; shift ;;
    --no-restic) with_restic=0 ;;
    -h | --help) usage ;;
    plain | enc | enc-lz4 | enc-zstd1 | auto | enc-auto | enc-auto-misled) configs+=("$1") ;;
    *) e2e_die "unknown argument: $1" ;;
  esac
  shift
done
e2e_check_range --rounds "${rounds}" 1 20
((EUID == 0)) || e2e_die "needs root to drop the page cache before each step"
((${#configs[@]} > 0)) || configs=(plain enc enc-lz4 enc-zstd1)
command -v restic >/dev/null || with_restic=0
D="${DP420_BIN:-$(e2e_find_cli "${ROOT}/build")}"
readonly DATA="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/volume-4G"
[[ -f "${DATA}/base.img" && -f "${DATA}/changed.img" ]] ||
  e2e_die "no ${DATA}/{base,changed}.img: run perf/run.sh once (it makes them)"
readonly W="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/encryption-ab"
rm -rf "${W}"
mkdir -p "${W}/src"
e2e_add_cleanup "rm -rf '${W}'"
export DP420_STATE_DIR="${W}/state"

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$(now)"; }
# timed LABEL COMMAND...: cold caches, then the command and a sync; prints "LABEL SECONDS"
# and the command's CPU seconds (user + system).
timed() {
  local label="$1" t cpu
  shift
  cold
  t="$(now)"
  /usr/bin/time -f '%U %S' -o "${W}/cpu" "$@" >/dev/null
  sync
  cpu="$(awk '{ print $1 + $2 }' "${W}/cpu")"
  echo "${label} $(since "${t}") cpu ${cpu}"
}

# auto_choice LABEL REPO [KEY OPTIONS...]: the codec `auto` chose for the latest snapshot, and why.
auto_choice() {
  local label="$1" repo="$2"
  shift 2
  "${D}" snapshots --repo "${repo}" "$@" --volume v --json | python3 -c '
import json, sys
m = json.load(sys.stdin)[-1]
c = m.get("compression_measured", {})
print(sys.argv[1], "auto_chose", m.get("compression"), "|", c.get("reason"),
      "| stepped_down_to", c.get("stepped_down_to", "-"), "| device", c.get("device_read"),
      "| hash_bytes_per_s", c.get("hash_bytes_per_s"), "| codecs",
      [(x["codec"], x["compress_bytes_per_s"], x["stored_fraction"]) for x in c.get("codecs", [])])
' "${label}"
}

nonzero="$(python3 - "${DATA}/base.img" <<'PY'
import sys
zero = bytes(4096)
n = 0
with open(sys.argv[1], "rb", buffering=0) as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        for i in range(0, len(b), 4096):
            if b[i:i + 4096] != zero:
                n += len(b[i:i + 4096])
print(n)
PY
)"
echo "nonzero_bytes ${nonzero}"
sha_changed="$(sha256sum "${DATA}/changed.img" | cut -d' ' -f1)"
echo "${D}: $("${D}" --version)"
echo "cpu: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(nproc) CPUs"

failures=0
for round in $(seq 1 "${rounds}"); do
  cold
  fio_out="$(fio --name=cold --filename="${DATA}/changed.img" --rw=read --bs=1M --iodepth=32 \
    --ioengine=io_uring --direct=1 --output-format=json 2>/dev/null)"
  python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); r=j["jobs"][0]["read"]; print("round '"${round}"' fio_cold_read", round(r["runtime"]/1000, 3), round(r["bw_bytes"]/1e6), "MB/s")' <<<"${fio_out}"
  for c in "${configs[@]}"; do
    repo="${W}/repo-${c}" key="${W}/${c}.key"
    rm -rf "${repo}" "${key}" "${DP420_STATE_DIR}"
    comp=off enc=(--encryption none) open=() hook=()
    case "${c}" in
      enc) enc=(--encryption aes-256-gcm --repo-key-file "${key}") open=(--repo-key-file "${key}") ;;
      enc-lz4) enc=(--encryption aes-256-gcm --repo-key-file "${key}") open=(--repo-key-file "${key}") comp=lz4 ;;
      enc-zstd1) enc=(--encryption aes-256-gcm --repo-key-file "${key}") open=(--repo-key-file "${key}") comp=zstd:1 ;;
      auto) comp=auto ;;
      enc-auto) enc=(--encryption aes-256-gcm --repo-key-file "${key}") open=(--repo-key-file "${key}") comp=auto ;;
      enc-auto-misled) enc=(--encryption aes-256-gcm --repo-key-file "${key}") open=(--repo-key-file "${key}") comp=auto
        hook=(DP420_TEST_AUTO_DEVICE_BPS=5e8) ;;
    esac
    "${D}" init "${repo}" "${enc[@]}" >/dev/null
    ln -f "${DATA}/base.img" "${W}/src/volume.img"
    timed "round ${round} ${c} full" env "${hook[@]}" "${D}" backup --repo "${repo}" "${open[@]}" --volume v \
      --compression "${comp}" -q "${W}/src/volume.img"
    [[ "${comp}" != auto ]] || auto_choice "round ${round} ${c} full" "${repo}" "${open[@]}"
    ln -f "${DATA}/changed.img" "${W}/src/volume.img"
    timed "round ${round} ${c} incremental" env "${hook[@]}" "${D}" backup --repo "${repo}" "${open[@]}" --volume v \
      --compression "${comp}" -q "${W}/src/volume.img"
    [[ "${comp}" != auto ]] || auto_choice "round ${round} ${c} incremental" "${repo}" "${open[@]}"
    rm -f "${W}/restored.img"
    timed "round ${round} ${c} restore" "${D}" restore --repo "${repo}" "${open[@]}" --volume v \
      -q "${W}/restored.img"
    if [[ "$(sha256sum "${W}/restored.img" | cut -d' ' -f1)" != "${sha_changed}" ]]; then
      echo "round ${round} ${c} RESTORE MISMATCH"
      failures=$((failures + 1))
    fi
    echo "round ${round} ${c} repo_bytes $(du -sb "${repo}" | cut -f1)"
    rm -rf "${repo}" "${W}/restored.img"
  done
  if ((with_restic)); then
    export RESTIC_PASSWORD=perf RESTIC_REPOSITORY="${W}/restic" RESTIC_CACHE_DIR="${W}/restic-cache"
    rm -rf "${RESTIC_REPOSITORY}" "${RESTIC_CACHE_DIR}" "${W}/restic-restore"
    restic init --repository-version 2 -q >/dev/null
    ln -f "${DATA}/base.img" "${W}/src/volume.img"
    timed "round ${round} restic full" restic backup -q --host perf "${W}/src"
    ln -f "${DATA}/changed.img" "${W}/src/volume.img"
    timed "round ${round} restic incremental" restic backup -q --host perf "${W}/src"
    timed "round ${round} restic restore" restic restore latest -q --target "${W}/restic-restore"
    if [[ "$(sha256sum "${W}/restic-restore${W}/src/volume.img" | cut -d' ' -f1)" != "${sha_changed}" ]]; then
      echo "round ${round} restic RESTORE MISMATCH"
    fi
    echo "round ${round} restic repo_bytes $(du -sb "${RESTIC_REPOSITORY}" | cut -f1)"
    rm -rf "${RESTIC_REPOSITORY}" "${RESTIC_CACHE_DIR}" "${W}/restic-restore"
  fi
done
exit $((failures > 0))
