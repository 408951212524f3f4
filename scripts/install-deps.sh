#!/usr/bin/env bash
# Installs the Debian 12 packages dp420 needs to build, test, demo and measure.
# Only missing packages are installed; `apt-get update` runs only when something is missing.
# Not root and something missing: prints the exact command to run and exits 1.
#
#   scripts/install-deps.sh [--check] [PACKAGE...]
# PACKAGE...: install these instead of the project's list (scripts/install-peers.sh).
# --check: exit 1 when any is missing, install nothing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

DEFAULT_PACKAGES=(
  build-essential cmake pkg-config
  liburing-dev libisal-dev libxxhash-dev libjemalloc-dev libssl-dev libzstd-dev liblz4-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
  e2fsprogs util-linux mount diffutils coreutils fio xxhash python3 time
  iproute2 nftables fuse3 libfuse3-dev xfsprogs btrfs-progs
)

log() { printf 'install-deps: %s\n' "$*" >&2; }

check_only=0
PACKAGES=()
for arg in "$@"; do
  case "${arg}" in
    --check) check_only=1 ;;
    -*) log "usage: $0 [--check] [PACKAGE...]"; exit 2 ;;
    *) PACKAGES+=("${arg}") ;;
  esac
done
((${#PACKAGES[@]} > 0)) || PACKAGES=("${DEFAULT_PACKAGES[@]}")

is_installed() {
  local status
  status="$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)"
  [[ "${status}" == "installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  log "dpkg-query not found: this script supports Debian 12 (bookworm) only"
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "${pkg}" || missing+=("${pkg}")
done

if ((${#missing[@]} == 0)); then
  log "all ${#PACKAGES[@]} packages already installed"
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
