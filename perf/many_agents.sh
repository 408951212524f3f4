#!/usr/bin/env bash
# Many agents backing up to one `dp420 serve` at once, over loopback: the aggregate
# throughput against one agent alone (the yardstick, measured in the same run), and
# the server's memory (VmRSS sampled every 100 ms, and VmHWM) and threads.
#
#   perf/many_agents.sh [--agents N] [--size MIB] [--threads T]
#
# Defaults: 16 agents, 256 MiB of random data each (sources written once under
# $DP420_PERF_DIR/agents, default /var/tmp/dp420-perf/agents, then read from the page
# cache: this measures the server and the channel, not the disk), 1 thread per agent.
# Steps: one agent's full backup alone (agent 0, the yardstick); the N other agents' full
# backups at once; 1 % of each source rewritten; the N agents' incrementals at once;
# agent 0's incremental alone. Every agent is its own client (client-add), with its own
# key, volume and source.
# DP420_BIN=/path/to/dp420 measures that binary instead of building build/.
# Prints one JSON object per step on stdout and a summary on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
E2E_LOG_TAG=agents
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

agents=16 size_mib=256 threads=1
while (($# > 0)); do
  case "$1" in
    --agents) agents="$2"; shift ;;
    --size) size_mib="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
    *) e2e_die "unknown argument: $1" ;;
  esac
  shift
done
# One agent process per --agents, each with --threads stripes (the server
# takes at most 64 per backup); --size MiB of source per agent.
e2e_check_range --agents "${agents}" 1 256
e2e_check_range --size "${size_mib}" 1 65536
e2e_check_range --threads "${threads}" 1 64

DP420="${DP420_BIN:-}"
if [[ -z "${DP420}" ]]; then
  "${ROOT}/scripts/build.sh" --target dp420_cli >&2  # the target dp420 is the shared library
  DP420="$(e2e_find_cli "${ROOT}/build")"
fi
[[ -x "${DP420}" ]] || e2e_die "no dp420 binary at ${DP420}"

readonly WORK="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/agents"
readonly SRC="${WORK}/src-${size_mib}m" REPO="${WORK}/repo" KEYS="${WORK}/keys"
readonly CACHE="${WORK}/cache" LOGS="${WORK}/logs"
SERVER_PID="" SAMPLER_PID=""
cleanup() {
  [[ -n "${SAMPLER_PID}" ]] && kill "${SAMPLER_PID}" 2>/dev/null || true
  if [[ -n "${SERVER_PID}" ]]; then
    kill -TERM "${SERVER_PID}" 2>/dev/null || true
    wait "${SERVER_PID}" 2>/dev/null || true
  fi
  rm -rf "${REPO}" "${KEYS}" "${CACHE}"
}
trap cleanup EXIT

mkdir -p "${SRC}" "${LOGS}"
rm -rf "${REPO}" "${KEYS}" "${CACHE}" "${WORK}/clients.json"
mkdir -p "${KEYS}" "${CACHE}"
for ((i = 0; i <= agents; i++)); do
  f="${SRC}/v${i}.img"
  if [[ ! -f "${f}" ]] || (($(stat -c %s "${f}") != size_mib << 20)); then
    e2e_log "writing ${f} (${size_mib} MiB of random data)"
    head -c "$((size_mib << 20))" /dev/urandom >"${f}"
  fi
done
cat "${SRC}"/*.img >/dev/null  # every source in the page cache

"${DP420}" init --encryption none "${REPO}" >/dev/null
for ((i = 0; i <= agents; i++)); do
  "${DP420}" client-add --clients "${WORK}/clients.json" --client "agent${i}" \
    --key-out "${KEYS}/agent${i}.key" >/dev/null 2>&1 ||
    e2e_die "client-add agent${i} failed"
done
chmod 600 "${WORK}/clients.json"

e2e_start_server "${DP420}" "${REPO}" "${WORK}/clients.json" "${LOGS}/serve.log" || exit 1
SERVER_PID="${E2E_SERVER_PID}" port="${E2E_SERVER_PORT}"

status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/${SERVER_PID}/status"; }
rss_idle_kib="$(status_kib VmRSS)"
threads_idle="$(status_kib Threads)"

# Samples the server's VmRSS and thread count every 100 ms into FILE until killed.
sample() {
  while kill -0 "${SERVER_PID}" 2>/dev/null; do
    echo "$(status_kib VmRSS) $(status_kib Threads)" >>"$1"
    sleep 0.1
  done
}

backup() {  # backup I: agent I's backup, its JSON in LOGS
  DP420_CACHE_DIR="${CACHE}" "${DP420}" backup --remote "127.0.0.1:${port}" \
    --client "agent$1" --key-file "${KEYS}/agent$1.key" --volume "v$1" --threads "${threads}" \
    --json "${SRC}/v$1.img" >"${LOGS}/backup-$1.json" 2>"${LOGS}/backup-$1.err"
}

# step NAME FIRST LAST: agents FIRST..LAST at once; prints the step's JSON.
step() {
  local name="$1" first="$2" last="$3" samples="${LOGS}/samples-$1" start end i failed=0
  rm -f "${samples}"
  sample "${samples}" &
  SAMPLER_PID=$!
  start="$(date +%s.%N)"
  local pids=()
  for ((i = first; i <= last; i++)); do backup "${i}" & pids+=($!); done
  for i in "${pids[@]}"; do wait "${i}" || failed=$((failed + 1)); done
  end="$(date +%s.%N)"
  kill "${SAMPLER_PID}" 2>/dev/null || true
  wait "${SAMPLER_PID}" 2>/dev/null || true
  SAMPLER_PID=""
  ((failed == 0)) || e2e_die "${name}: ${failed} backups failed (see ${LOGS}/backup-*.err)"
  python3 - "${name}" "${first}" "${last}" "${start}" "${end}" "${samples}" "${LOGS}" "${size_mib}" <<'PY'
import json, sys
name, first, last, start, end, samples, logs, size_mib = sys.argv[1:]
first, last, size_mib = int(first), int(last), int(size_mib)
seconds = float(end) - float(start)
n = last - first + 1
rss, threads = [], []
for line in open(samples):
    parts = line.split()
    if len(parts) == 2:
        rss.append(int(parts[0])); threads.append(int(parts[1]))
sent = 0
for i in range(first, last + 1):
    r = json.load(open(f"{logs}/backup-{i}.json"))
    sent += r.get("bytes_sent", 0)
print(json.dumps({"step": name, "agents": n, "seconds": round(seconds, 3),
                  "volume_gib_per_s": round(n * size_mib / 1024 / seconds, 3),
                  "bytes_sent": sent,
                  "server_rss_peak_mib": round(max(rss) / 1024, 1) if rss else None,
                  "server_threads_peak": max(threads) if threads else None}))
PY
}

{
  step alone-full 0 0
  step all-full 1 "${agents}"
} | tee "${LOGS}/steps.jsonl"
for ((i = 0; i <= agents; i++)); do  # 1 %: 64 KiB pieces every 6.4 MiB
  python3 - "${SRC}/v${i}.img" <<'PY'
import os, sys
path = sys.argv[1]
size = os.path.getsize(path)
with open(path, "r+b") as f:
    for off in range(0, size, 100 * 65536):
        f.seek(off); f.write(os.urandom(65536))
PY
done
{
  step all-incremental 1 "${agents}"
  step alone-incremental 0 0
} | tee -a "${LOGS}/steps.jsonl"

hwm="$(status_kib VmHWM)"
python3 - "${LOGS}/steps.jsonl" "${rss_idle_kib}" "${threads_idle}" "${hwm}" <<'PY' >&2
import json, sys
steps = {s["step"]: s for s in map(json.loads, open(sys.argv[1]))}
idle_rss, idle_threads, hwm = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"server idle: RSS {idle_rss / 1024:.1f} MiB, {idle_threads} threads; VmHWM {hwm / 1024:.1f} MiB")
for s in steps.values():
    print(f"{s['step']:>18}: {s['agents']:2d} agents, {s['seconds']:7.2f} s, "
          f"{s['volume_gib_per_s']:6.2f} GiB/s of volume, server RSS peak "
          f"{s['server_rss_peak_mib']} MiB, {s['server_threads_peak']} threads")
for kind in ("full", "incremental"):
    alone, many = steps[f"alone-{kind}"], steps[f"all-{kind}"]
    print(f"{kind}: {many['agents']} agents at once move "
          f"{many['volume_gib_per_s'] / alone['volume_gib_per_s']:.2f}x the volume per second "
          f"of one agent alone")
PY
