# shellcheck shell=bash
# Shell helpers shared by scripts/demo.sh, perf/*.sh and tests/e2e: realistic ext4
# volumes made from real files, changed through a loop mount (root) or debugfs (not root),
# with every mount undone by an EXIT trap. Source it; it sets that trap.

E2E_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# mkfs.ext4, e2fsck, debugfs and losetup live in /usr/sbin, outside a normal user's PATH.
case ":${PATH}:" in *:/usr/sbin:*) ;; *) PATH="${PATH}:/usr/sbin:/sbin" ;; esac
export PATH
E2E_CLEANUPS=()

e2e_log() { printf '%s: %s\n' "${E2E_LOG_TAG:-e2e}" "$*" >&2; }
e2e_die() { e2e_log "error: $*"; exit 1; }
# e2e_check_range OPTION VALUE MIN MAX: exits 2 (usage) naming the option
# unless VALUE is a whole number from MIN to MAX.
e2e_check_range() {
  if [[ ! "$2" =~ ^[0-9]{1,9}$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    e2e_log "$1 is '$2'; allowed a whole number from $3 to $4"
    exit 2
  fi
}

# Runs the registered cleanups, newest first; failures do not stop the others.
e2e_run_cleanups() {
  local i
  for ((i = ${#E2E_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${E2E_CLEANUPS[i]}" || true
  done
  E2E_CLEANUPS=()
}
e2e_add_cleanup() { E2E_CLEANUPS+=("$1"); }
e2e_pop_cleanup() { unset 'E2E_CLEANUPS[${#E2E_CLEANUPS[@]}-1]'; }
trap 'e2e_run_cleanups' EXIT
trap 'e2e_log "interrupted"; exit 130' INT TERM HUP

e2e_is_root() { ((EUID == 0)); }

# e2e_alive PID: true while PID runs (a zombie does not count).
e2e_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# e2e_start_server DP420 REPO CLIENTS LOG [SERVE OPTION...]: starts `DP420 serve` in the
# background on 127.0.0.1 (a free port), its stderr in LOG, and waits up to 10 s for its
# "listening" line. Sets E2E_SERVER_PID and E2E_SERVER_PORT. When it does not start: says
# why (LOG's last lines), stops it and returns 1 with E2E_SERVER_PID empty.
e2e_start_server() {
  local dp420="$1" repo="$2" clients="$3" log="$4" i
  shift 4
  E2E_SERVER_PORT=""
  : >"${log}"  # exists before the first look, whichever process runs first
  "${dp420}" serve --repo "${repo}" --listen 127.0.0.1:0 --clients "${clients}" "$@" \
    >/dev/null 2>"${log}" &
  E2E_SERVER_PID=$!
  for ((i = 0; i < 100; i++)); do
    E2E_SERVER_PORT="$(sed -n 's/^dp420 serve: listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "${log}")"
    [[ -n "${E2E_SERVER_PORT}" ]] && return 0
    e2e_alive "${E2E_SERVER_PID}" || break
    sleep 0.1
  done
  e2e_log "dp420 serve did not start: $(tail -3 "${log}")"
  kill -TERM "${E2E_SERVER_PID}" 2>/dev/null || true
  wait "${E2E_SERVER_PID}" 2>/dev/null || true
  E2E_SERVER_PID=""
  return 1
}

# True when loop devices can be used: root, /dev/loop-control and a free device.
e2e_can_loop() {
  e2e_is_root && [[ -e /dev/loop-control ]] && losetup -f >/dev/null 2>&1
}

# e2e_stage DIR REAL_MIB RANDOM_MIB [ROOTS]: real files plus random files in DIR.
e2e_stage() {
  local dir="$1" real_mib="$2" random_mib="$3" roots="${4:-}"
  rm -rf "${dir}"
  local args=(stage "${dir}" --real-mib "${real_mib}" --random-mib "${random_mib}")
  [[ -n "${roots}" ]] && args+=(--roots "${roots}")
  python3 "${E2E_SCRIPTS_DIR}/e2e-volume.py" "${args[@]}"
}

# e2e_make_image STAGING IMAGE SIZE: an ext4 image of SIZE (e.g. 1G) holding STAGING's
# files, made without root. Inode tables and journal are initialised now so that a later
# mount does not rewrite them in the background (which would look like a huge change).
e2e_make_image() {
  local staging="$1" image="$2" size="$3"
  rm -f "${image}"
  mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 -d "${staging}" "${image}" "${size}"
}

# e2e_mount_loop IMAGE MNT: mounts IMAGE on MNT through a loop device; the EXIT trap
# unmounts it if the caller does not (e2e_umount).
e2e_mount_loop() {
  local image="$1" mnt="$2"
  mkdir -p "${mnt}"
  mount -o loop "${image}" "${mnt}"
  e2e_add_cleanup "umount '${mnt}' 2>/dev/null || umount -l '${mnt}' 2>/dev/null"
}
e2e_umount() {
  local mnt="$1"
  sync
  umount "${mnt}"
  e2e_pop_cleanup
}

# e2e_mutate_image IMAGE STAGING PERCENT SEED: changes about PERCENT % of the image's
# files (patch, append, delete, add). As root through a loop mount; otherwise through
# `debugfs -w` replaying the same kind of changes made to STAGING (which must mirror the
# image's files, and is changed too). Prints how it was done.
e2e_mutate_image() {
  local image="$1" staging="$2" percent="$3" seed="$4"
  local tool="${E2E_SCRIPTS_DIR}/e2e-volume.py"
  if e2e_can_loop; then
    local mnt
    mnt="$(mktemp -d "${TMPDIR:-/tmp}/dp420-mnt.XXXXXX")"
    e2e_add_cleanup "rmdir '${mnt}' 2>/dev/null"
    e2e_mount_loop "${image}" "${mnt}"
    python3 "${tool}" mutate "${mnt}" --percent "${percent}" --seed "${seed}"
    e2e_umount "${mnt}"
    rmdir "${mnt}"
    e2e_pop_cleanup
    e2e_log "changed ${image} through a loop mount"
  else
    local why="not root"
    e2e_is_root && why="no free loop device"
    e2e_log "loop mount skipped (${why}); changing ${image} with debugfs -w instead"
    [[ -d "${staging}" ]] || e2e_die "debugfs mode needs the staging tree ${staging}"
    python3 "${tool}" mutate "${staging}" --percent "${percent}" --seed "${seed}" \
      --debugfs-image "${image}"
  fi
}

# e2e_find_cli BUILD_DIR: prints the path of the built dp420 CLI (CMake target dp420_cli).
e2e_find_cli() {
  local build_dir="$1" candidate
  for candidate in "${build_dir}/engine/cli/dp420" "${build_dir}/engine/dp420"; do
    if [[ -f "${candidate}" && -x "${candidate}" ]]; then
      echo "${candidate}"
      return 0
    fi
  done
  candidate="$(find "${build_dir}" -type f -name dp420 -perm -u+x -print -quit 2>/dev/null || true)"
  [[ -n "${candidate}" ]] || e2e_die "no dp420 CLI under ${build_dir}: build it with scripts/build.sh"
  echo "${candidate}"
}

# e2e_drop_caches: writes dirty data back and empties the page cache (root only).
# Returns 1 (after saying so) when it cannot.
e2e_drop_caches() {
  sync
  if e2e_is_root && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
    return 0
  fi
  return 1
}

# e2e_sha256 FILE: hex SHA-256 of a file or device (OpenSSL through Python's hashlib,
# several times faster here than coreutils' sha256sum).
e2e_sha256() {
  python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb", buffering=0) as f:
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
print(h.hexdigest())
PY
}

# e2e_now: seconds since the epoch with nanoseconds, for wall-clock timing.
e2e_now() { date +%s.%N; }
e2e_elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }
