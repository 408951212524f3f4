#!/usr/bin/env bash
# Demonstrates dp420 end to end on a realistic volume:
#   a 1 GiB ext4 image of real files (made without root by mkfs.ext4 -d), an encrypted
#   repository (the default; its passphrase in a file of the work dir), a full backup,
#   a change of ~1 % of its files, an incremental backup, a restore of the latest snapshot
#   compared bit for bit with the source, e2fsck of the restored image, verify --read-data,
#   and a summary table.
# Work dir: $DP420_DEMO_DIR (default /var/tmp/dp420-demo); rerunning starts afresh there.
# DP420_BIN=/path/to/dp420 uses that binary instead of building build/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=demo
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

readonly DEMO_DIR="${DP420_DEMO_DIR:-/var/tmp/dp420-demo}"
readonly VOLUME_SIZE=1G
readonly REAL_MIB="${DP420_DEMO_REAL_MIB:-300}"
readonly RANDOM_MIB="${DP420_DEMO_RANDOM_MIB:-32}"
readonly CHANGE_PERCENT=1

case "${DEMO_DIR}" in
  "" | / | /tmp | /var/tmp | "${HOME:-/root}") e2e_die "refusing to use ${DEMO_DIR:-<empty>} as the demo dir" ;;
esac

e2e_log "step 1/9: dependencies"
"${ROOT}/scripts/install-deps.sh"
if [[ -n "${DP420_BIN:-}" ]]; then
  e2e_log "step 2/9: using DP420_BIN=${DP420_BIN}"
  readonly DP420="${DP420_BIN}"
else
  e2e_log "step 2/9: Release build of the dp420 CLI"
  "${ROOT}/scripts/build.sh" --target dp420_cli
  DP420="$(e2e_find_cli "${ROOT}/build")"
  readonly DP420
fi
[[ -x "${DP420}" ]] || e2e_die "the build did not produce ${DP420}"

mkdir -p "${DEMO_DIR}"
readonly STAGING="${DEMO_DIR}/staging"
readonly IMAGE="${DEMO_DIR}/volume.img"
readonly REPO="${DEMO_DIR}/repo"
readonly RESTORED="${DEMO_DIR}/restored.img"
rm -rf "${STAGING}" "${REPO}" "${IMAGE}" "${RESTORED}" "${DEMO_DIR}"/*.json "${DEMO_DIR}"/*.txt
# Every command below opens the repository with this passphrase (never on a command line).
export DP420_PASSPHRASE_FILE="${DEMO_DIR}/passphrase"
(umask 077 && head -c 24 /dev/urandom | base64 >"${DP420_PASSPHRASE_FILE}")

e2e_log "step 3/9: ${VOLUME_SIZE} ext4 volume with ~${REAL_MIB} MiB of real files and ${RANDOM_MIB} MiB of random files"
t0="$(e2e_now)"
e2e_stage "${STAGING}" "${REAL_MIB}" "${RANDOM_MIB}" "/usr/share/doc,/usr/lib/x86_64-linux-gnu,/usr/share,/usr/lib"
e2e_make_image "${STAGING}" "${IMAGE}" "${VOLUME_SIZE}"
e2e_log "volume ready in $(e2e_elapsed "${t0}" "$(e2e_now)") s: ${IMAGE}"
# Without root the staging tree is the only way to know the image's files (debugfs mode).
if e2e_can_loop; then rm -rf "${STAGING}"; fi

e2e_log "step 4/9: dp420 init (encrypted, passphrase in ${DP420_PASSPHRASE_FILE}) and full backup"
"${DP420}" init "${REPO}"
"${DP420}" backup --repo "${REPO}" --volume demo --json "${IMAGE}" >"${DEMO_DIR}/backup-full.json"
cat "${DEMO_DIR}/backup-full.json" >&2

e2e_log "step 5/9: change ~${CHANGE_PERCENT} % of the files"
e2e_mutate_image "${IMAGE}" "${STAGING}" "${CHANGE_PERCENT}" 42

e2e_log "step 6/9: incremental backup"
"${DP420}" backup --repo "${REPO}" --volume demo --json "${IMAGE}" >"${DEMO_DIR}/backup-incr.json"
cat "${DEMO_DIR}/backup-incr.json" >&2

e2e_log "step 7/9: restore of the latest snapshot"
t0="$(e2e_now)"
"${DP420}" restore --repo "${REPO}" --volume demo --snapshot latest "${RESTORED}"
restore_s="$(e2e_elapsed "${t0}" "$(e2e_now)")"

e2e_log "step 8/9: compare, checksum, e2fsck"
failures=0
if cmp "${IMAGE}" "${RESTORED}"; then cmp_result=identical; else cmp_result=DIFFERENT; failures=$((failures + 1)); fi
source_sha="$(e2e_sha256 "${IMAGE}")"
restored_sha="$(e2e_sha256 "${RESTORED}")"
[[ "${source_sha}" == "${restored_sha}" ]] || failures=$((failures + 1))
block_size="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["block_size"])' "${DEMO_DIR}/backup-incr.json")"
manifest_checksum="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["checksum_sha256"])' "${DEMO_DIR}/backup-incr.json")"
independent_checksum="$(python3 "${ROOT}/scripts/volume-checksum.py" "${IMAGE}" "${block_size}")"
if [[ "${manifest_checksum}" == "${independent_checksum}" ]]; then checksum_result=match; else checksum_result=MISMATCH; failures=$((failures + 1)); fi
if e2fsck -fn "${RESTORED}" >"${DEMO_DIR}/e2fsck.txt" 2>&1; then fsck_result=clean; else fsck_result="FAILED (see ${DEMO_DIR}/e2fsck.txt)"; failures=$((failures + 1)); fi

e2e_log "step 9/9: verify --read-data"
t0="$(e2e_now)"
verify_rc=0
"${DP420}" verify --repo "${REPO}" --read-data >"${DEMO_DIR}/verify.txt" 2>&1 || verify_rc=$?
verify_s="$(e2e_elapsed "${t0}" "$(e2e_now)")"
if ((verify_rc == 0)); then verify_result=ok; else verify_result="FAILED, exit ${verify_rc} (see ${DEMO_DIR}/verify.txt)"; failures=$((failures + 1)); fi

python3 - "${DEMO_DIR}/backup-full.json" "${DEMO_DIR}/backup-incr.json" "${restore_s}" \
  "${cmp_result}" "${restored_sha}" "${checksum_result}" "${fsck_result}" "${verify_result}" \
  "${verify_s}" <<'PY'
import json, sys
full, incr = (json.load(open(p)) for p in sys.argv[1:3])
restore_s, cmp_result, restored_sha, checksum, fsck, verify, verify_s = sys.argv[3:10]
print()
print(f"{'backup':<12} {'bytes read':>14} {'blocks changed':>19} {'bytes written':>14} {'seconds':>8} {'MB/s':>8}")
for name, r in (("full", full), ("incremental", incr)):
    secs = float(r["seconds"])
    mbs = f"{r['bytes_read'] / secs / 1e6:.0f}" if secs > 0 else "-"
    changed = f"{r['blocks_changed']}/{r['blocks_total']}"
    print(f"{name:<12} {r['bytes_read']:>14,} {changed:>19} {r['bytes_written']:>14,} {secs:>8.2f} {mbs:>8}")
print()
rows = [
    ("restore of the latest snapshot",
     f"{float(restore_s):.2f} s ({incr['volume_size'] / max(float(restore_s), 1e-9) / 1e6:.0f} MB/s)"),
    ("restored image vs source", f"{cmp_result} (sha256 {restored_sha[:16]}...)"),
    ("manifest checksum_sha256", f"{checksum} (scripts/volume-checksum.py)"),
    ("e2fsck -fn of the restored image", fsck),
    ("verify --read-data", f"{verify} in {float(verify_s):.2f} s"),
]
for label, value in rows:
    print(f"{label:<34} {value}")
PY

if ((failures > 0)); then
  e2e_log "${failures} check(s) failed"
  exit 1
fi
e2e_log "all checks passed; files in ${DEMO_DIR}"
