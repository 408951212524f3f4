#!/usr/bin/env bash
# Installs the backup tools perf/run.sh compares dp420 with, from Debian 12's packages:
# restic, borgbackup (1.2), casync and rsync. Same rules as install-deps.sh: only what is
# missing, root to install (otherwise prints the command and exits 1).
#
#   scripts/install-peers.sh [--check]   # --check: exit 1 if any is missing, install nothing
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" "$@" restic borgbackup casync rsync
