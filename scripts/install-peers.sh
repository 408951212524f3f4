#!/usr/bin/env bash
# Installs the backup tools perf/run.sh compares dp420 with, from Debian 12's packages:
# restic, borgbackup (1.2), casync and rsync.
# Idempotent: nothing is done when all are installed; `apt-get update` runs only when
# something is missing. Installing needs root; otherwise prints the command and exits 1.
#
#   scripts/install-peers.sh [--check]   # --check: exit 1 if any is missing, install nothing
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly PACKAGES=(restic borgbackup casync rsync)

log() { printf 'install-peers: %s\n' "$*" >&2; }

check_only=0
case "${1:-}" in
  "") ;;
  --check) check_only=1 ;;
  *) log "usage: $0 [--check]"; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
  log "dpkg-query not found: this script supports Debian 12 (bookworm) only"
  exit 1
fi

is_installed() {
  local status
  status="$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)"
  [[ "${status}" == "installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "${pkg}" || missing+=("${pkg}")
done

if ((${#missing[@]} == 0)); then
  log "all of ${PACKAGES[*]} already installed"
  exit 0
fi
log "missing: ${missing[*]}"
((check_only)) && exit 1
if ((EUID != 0)); then
  log "not root; run this as root:"
  printf '  sudo env DEBIAN_FRONTEND=noninteractive sh -c "apt-get update && apt-get install -y --no-install-recommends %s"\n' \
    "${missing[*]}" >&2
  exit 1
fi

apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

still_missing=()
for pkg in "${missing[@]}"; do
  is_installed "${pkg}" || still_missing+=("${pkg}")
done
if ((${#still_missing[@]} > 0)); then
  log "still missing after apt-get install: ${still_missing[*]}"
  exit 1
fi
log "installed: ${missing[*]}"
