#!/usr/bin/env bash
# What unauthenticated connections cost `dp420 serve`: its RSS and thread count before and
# after 1,000 idle sockets are opened to it on loopback, a remote backup of a 1 GiB file
# unloaded, then under that flood (the ratio of the two), and the RSS while 200 sockets
# hold a HELLO header that declares a 4 MiB payload.
#
#   perf/idle_sockets.sh [--sockets N] [--size-mib N] [--rounds N]
#
# The flood (python3) opens N idle TCP connections (default 1000) from 20 loopback source
# addresses (127.0.1.1-20) and sends nothing; connections the server closes (over its
# limits, or at the handshake deadline) are reopened once a second, so the server meets
# N idle sockets for the whole backup. The backups are full backups of the same random
# file into fresh volumes (no parent cache), warm input, `rounds` of each alternating
# (default 2). Prints one summary table.
#
# DP420_BIN=/path/to/dp420 measures that binary (default build/engine/dp420; nothing is
# built). DP420_PERF_DIR holds the work files (default /var/tmp/dp420-perf), removed at exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=idle_sockets
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"
DP420="${DP420_BIN:-${ROOT}/build/engine/dp420}"
sockets=1000 size_mib=1024 rounds=2
while (($# > 0)); do
  case "$1" in
    --sockets) sockets="$2"; shift ;;
    --size-mib) size_mib="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "usage: perf/idle_sockets.sh [--sockets N] [--size-mib N] [--rounds N]" >&2; exit 2 ;;
  esac
  shift
done
# Sockets are file descriptors of this shell's children (ulimit -n bounds them).
check_range() {
  if [[ ! "$2" =~ ^[0-9]{1,9}$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    echo "idle_sockets: $1 is '$2'; allowed a whole number from $3 to $4" >&2
    exit 2
  fi
}
check_range --sockets "${sockets}" 1 60000
check_range --size-mib "${size_mib}" 1 65536
check_range --rounds "${rounds}" 1 100
[[ -x "${DP420}" ]] || { echo "idle_sockets: no dp420 at ${DP420} (build it, or set DP420_BIN)" >&2; exit 1; }

WORK="$(mktemp -d "${DP420_PERF_DIR:-/var/tmp/dp420-perf}/idle-sockets.XXXXXX" 2>/dev/null ||
  mktemp -d /var/tmp/idle-sockets.XXXXXX)"
SERVER_PID="" FLOOD_PID=""
cleanup() {
  local pid
  for pid in "${FLOOD_PID}" "${SERVER_PID}"; do
    if [[ -n "${pid}" ]]; then
      kill "${pid}" 2>/dev/null || true
      wait "${pid}" 2>/dev/null || true
    fi
  done
  rm -rf "${WORK}"
}
trap cleanup EXIT
log() { printf 'idle_sockets: %s\n' "$*" >&2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # the flood's sockets and the server's

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
threads() { ls "/proc/$1/task" | wc -l; }
now_ns() { date +%s%N; }

"${DP420}" init --encryption none "${WORK}/repo" >/dev/null
"${DP420}" client-add --clients "${WORK}/clients.json" --client perf --key-out "${WORK}/perf.key" -q >&2
log "writing a ${size_mib} MiB random file"
head -c "$((size_mib << 20))" /dev/urandom >"${WORK}/vol.img"
cat "${WORK}/vol.img" >/dev/null

e2e_start_server "${DP420}" "${WORK}/repo" "${WORK}/clients.json" "${WORK}/serve.log" || exit 1
SERVER_PID="${E2E_SERVER_PID}" port="${E2E_SERVER_PORT}"

backup_seconds() {  # backup_seconds VOLUME: one full remote backup, its wall time or FAILED
  local start end
  start="$(now_ns)"
  if ! DP420_CACHE_DIR="${WORK}/cache-$1" "${DP420}" backup --remote "127.0.0.1:${port}" \
    --client perf --key-file "${WORK}/perf.key" --volume "$1" --json "${WORK}/vol.img" \
    >"${WORK}/backup-$1.json" 2>"${WORK}/backup-$1.err"; then
    log "backup of $1 failed: $(tail -1 "${WORK}/backup-$1.err")"
    echo FAILED
    return 0
  fi
  end="$(now_ns)"
  awk -v a="${start}" -v b="${end}" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'
}

flood_start() {
  python3 - "${port}" "${sockets}" "${WORK}/flood.ready" >/dev/null <<'EOF' &
import selectors, socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sel = selectors.DefaultSelector()
def open_one(i):
    s = socket.socket()
    s.bind((f"127.0.1.{1 + i % 20}", 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
for i in range(count):
    open_one(i)
open(ready, "w").close()
while True:
    closed = []
    for key, _ in sel.select(timeout=1.0):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:
            closed.append(key)
    for key in closed:
        sel.unregister(key.fileobj)
        key.fileobj.close()
    time.sleep(1.0)  # reopen what the server closed, once a second
    for key in closed:
        open_one(key.data)
EOF
  FLOOD_PID=$!
  for ((i = 0; i < 300; i++)); do [[ -e "${WORK}/flood.ready" ]] && return 0; sleep 0.1; done
  log "the flood did not open its sockets"; exit 1
}

huge_headers() {  # huge_headers N: N sockets each send a HELLO header declaring 4 MiB, held 2 s
  python3 - "${port}" "$1" <<'EOF'
import socket, struct, sys, time
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
port, count = int(sys.argv[1]), int(sys.argv[2])
# magic, version 2, HELLO, payload_len 4 MiB, payload crc, request id, flags
head = struct.pack("<IHHIIQI", 0x57345044, 2, 1, 4 << 20, 0, 0, 0)
header = head + struct.pack("<I", crc32c(head))
socks = []
for i in range(count):
    s = socket.socket()
    s.bind((f"127.0.3.{1 + i % 250}", 0))
    s.connect(("127.0.0.1", port))
    s.sendall(header)
    socks.append(s)
time.sleep(2)
EOF
}

sleep 0.5
rss0="$(rss_kib "${SERVER_PID}")" thr0="$(threads "${SERVER_PID}")"
declare -a plain=() flooded=()
for ((r = 1; r <= rounds; r++)); do
  plain+=("$(backup_seconds "plain${r}")")
done
rss1="$(rss_kib "${SERVER_PID}")" thr1="$(threads "${SERVER_PID}")"
flood_start
sleep 1
rss2="$(rss_kib "${SERVER_PID}")" thr2="$(threads "${SERVER_PID}")"
for ((r = 1; r <= rounds; r++)); do
  flooded+=("$(backup_seconds "flood${r}")")
done
rss3="$(rss_kib "${SERVER_PID}")" thr3="$(threads "${SERVER_PID}")"
kill "${FLOOD_PID}" 2>/dev/null || true
wait "${FLOOD_PID}" 2>/dev/null || true
FLOOD_PID=""
sleep 1
rss4="$(rss_kib "${SERVER_PID}")" thr4="$(threads "${SERVER_PID}")"
huge_headers 200 &
huge_pid=$!
sleep 1.5  # the headers are in, the sockets still open
rss5="$(rss_kib "${SERVER_PID}")" thr5="$(threads "${SERVER_PID}")"
wait "${huge_pid}" || log "the huge-header step failed"
median() {  # FAILED when any run failed
  printf '%s\n' "$@" | sort -n |
    awk '/FAILED/ { f = 1 } { v[NR] = $1 } END { if (f) print "FAILED"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
m_plain="$(median "${plain[@]}")" m_flood="$(median "${flooded[@]}")"

row() { awk -v n="$1" -v r="$2" -v t="$3" 'BEGIN { printf "%-44s %10.1f %8d\n", n, r / 1024, t }'; }
printf '\n%-44s %10s %8s\n' "dp420 serve (${DP420})" "RSS MiB" threads
row "idle, just started" "${rss0}" "${thr0}"
row "after the unloaded backups" "${rss1}" "${thr1}"
row "${sockets} idle sockets open" "${rss2}" "${thr2}"
row "after the backups under the flood" "${rss3}" "${thr3}"
row "flood closed" "${rss4}" "${thr4}"
row "200 HELLO headers declaring 4 MiB, held" "${rss5}" "${thr5}"
printf '\nfull remote backup of %d MiB (s): unloaded %s (median %s), under the flood %s (median %s)\n' \
  "${size_mib}" "${plain[*]}" "${m_plain}" "${flooded[*]}" "${m_flood}"
if [[ "${m_flood}" == FAILED || "${m_plain}" == FAILED ]]; then
  echo "ratio flooded / unloaded: none (a backup failed)"
else
  awk -v a="${m_flood}" -v b="${m_plain}" 'BEGIN { printf "ratio flooded / unloaded: %.2f\n", a / b }'
fi
printf 'warnings logged by serve (rate-limited): %s\n' "$(grep -c ' warn ' "${WORK}/serve.log" || true)"
