#!/usr/bin/env bash
# Consistency groups, measured: how long the members hold their sources, how long
# from PREPARE to every member cut, and what a group backup costs against its
# slowest member backed up alone.
#
#   perf/group.sh [--groups N (default 100)] [--size-mib M (default 128)]
#                 [--methods reflink,fsfreeze] [--pairs P (default 5)] [--json]
#
# Needs root (loop devices, mkfs, mount, fsfreeze) and the dp420 under test in
# $DP420_BIN (default build/engine/dp420). Everything lives in $DP420_PERF_DIR
# (default /var/tmp/dp420-perf)/group and is removed afterwards.
#
# Setup: a `dp420 serve` on 127.0.0.1 with its repository on the root file system,
# three clients and an admin, and three `dp420 agent`s, one volume each:
#   reflink   a file of M MiB on a loop-mounted XFS (reflink=1): the agent holds it
#             with a pre hook (`true`, standing for an application's quiesce: a
#             member must hold) and clones it at the cut (snapshot-source=reflink);
#   fsfreeze  a loop device over a file of M MiB on that XFS, holding an ext4 that
#             is mounted: the agent freezes it at PREPARE and, since the loop device
#             is over a whole file on XFS, clones that file at the cut and thaws
#             (snapshot-source=fsfreeze, freeze-mount=its mount point).
# Per method: N group backups, each after 1 MiB of each volume was rewritten.
#   hold     per member and group, the hold each member's manifest records
#            (point_in_time.hold_ms: PREPARE received to the point in time taken; for
#            fsfreeze the time the file system was frozen): p50, p99, max
#   cut      prepare_ms (PREPARE sent to every member holding) and cut_ms (to every
#            member cut), as the server reports them: p50, p99, max
#   ratio    P rounds: a group backup's total time (group-backup's wall clock)
#            against the slowest of the three members backed up alone, one after
#            the other, with `dp420 backup --remote`, and against the three backed up
#            alone at once (the same load on this machine without the group's
#            coordination); the same change before each; the median ratios.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${DP420_BIN:-$ROOT/build/engine/dp420}"
BASE="${DP420_PERF_DIR:-/var/tmp/dp420-perf}/group"
groups=100 size_mib=128 methods="reflink,fsfreeze" pairs=5 json=0
while (($# > 0)); do
  case "$1" in
    --groups) groups="$2"; shift ;;
    --size-mib) size_mib="$2"; shift ;;
    --methods) methods="$2"; shift ;;
    --pairs) pairs="$2"; shift ;;
    --json) json=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "group.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $EUID -eq 0 ]] || { echo "group.sh: needs root (loop devices, mounts, fsfreeze)" >&2; exit 2; }
[[ -x "$BIN" ]] || { echo "group.sh: no dp420 at $BIN (set DP420_BIN)" >&2; exit 2; }
command -v mkfs.xfs > /dev/null || { echo "group.sh: needs xfsprogs (mkfs.xfs)" >&2; exit 2; }

log() { printf 'group.sh: %s\n' "$*" >&2; }
pids=() loops=() mounts=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  # Innermost first (loops[i] holds mounts[i]'s file system); a detached loop
  # device lets go of its file on the XFS a moment later: unmounts are retried.
  local i try
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    for try in $(seq 40); do umount "${mounts[i]}" 2> /dev/null && break; sleep 0.25; done
    losetup -d "${loops[i]}" 2> /dev/null || true
  done
  rm -rf "$BASE"
}
trap cleanup EXIT

rm -rf "$BASE"
mkdir -p "$BASE/xfs"
truncate -s $((size_mib * 3 * 2 + 512))M "$BASE/xfs.img"
xl=$(losetup --find --show "$BASE/xfs.img"); loops+=("$xl")
mkfs.xfs -q -m reflink=1 "$xl"
mount "$xl" "$BASE/xfs"; mounts+=("$BASE/xfs")

"$BIN" init "$BASE/repo" --encryption none > /dev/null
clients="$BASE/clients.json"
for c in node1 node2 node3; do
  "$BIN" client-add --clients "$clients" --client "$c" --key-out "$BASE/$c.key" > /dev/null
done
"$BIN" client-add --clients "$clients" --client ops --key-out "$BASE/ops.key" --role admin > /dev/null
"$BIN" serve --repo "$BASE/repo" --listen 127.0.0.1:0 --clients "$clients" 2> "$BASE/serve.log" &
pids+=($!)
for _ in $(seq 100); do
  addr=$(sed -n 's/^dp420 serve: listening on \(.*\)$/\1/p' "$BASE/serve.log")
  [[ -n "$addr" ]] && break
  sleep 0.1
done
[[ -n "$addr" ]] || { cat "$BASE/serve.log" >&2; exit 1; }

# Rewrites 1 MiB at a random MiB of volume $1 (a file or a mounted file system's file).
change() {
  local target="$1" at=$((RANDOM % (size_mib - 1)))
  dd if=/dev/urandom of="$target" bs=1M count=1 seek="$at" conv=notrunc,fsync status=none
}

# Sets up the three volumes of method $1; prints "SOURCE CHANGE-TARGET OPTIONS" per node.
volumes() {
  local method="$1" i
  for i in 1 2 3; do
    local f="$BASE/xfs/$method-$i.img"
    if [[ "$method" == reflink ]]; then
      dd if=/dev/urandom of="$f" bs=1M count="$size_mib" status=none
      echo "$f $f snapshot-source=reflink,pre-hook=true"
    else
      truncate -s "${size_mib}M" "$f"
      local l; l=$(losetup --find --show "$f"); loops+=("$l")
      mkfs.ext4 -q "$l"
      mkdir -p "$BASE/m$i"; mount "$l" "$BASE/m$i"; mounts+=("$BASE/m$i")
      dd if=/dev/urandom of="$BASE/m$i/data" bs=1M count=$((size_mib / 2)) status=none
      sync
      echo "$l $BASE/m$i/data snapshot-source=fsfreeze,freeze-mount=$BASE/m$i"
    fi
  done
}

remote() { echo --remote "$addr" --client "$1" --key-file "$BASE/$1.key"; }

run_method() {
  local method="$1" i
  local out="$BASE/$method.jsonl"
  # In this shell (not a subshell): the loops and mounts it makes are cleaned up.
  volumes "$method" > "$BASE/$method.volumes"
  mapfile -t vols < "$BASE/$method.volumes"
  local agent_pids=()
  for i in 1 2 3; do
    read -r src target opts <<< "${vols[i-1]}"
    DP420_CACHE_DIR="$BASE/cache-$method-$i" "$BIN" agent $(remote "node$i") \
      --state-dir "$BASE/state-$method-$i" --volume "$method=$src,$opts" \
      2> "$BASE/agent-$method-$i.log" &
    pids+=($!); agent_pids+=($!)
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do grep -q connected "$BASE/agent-$method-$i.log" && break; sleep 0.1; done
  done
  local members=(--member "node1:$method" --member "node2:$method" --member "node3:$method")
  log "$method: $groups group backups of 3 x $size_mib MiB"
  : > "$out"
  for ((g = 1; g <= groups; g++)); do
    for i in 1 2 3; do read -r src target opts <<< "${vols[i-1]}"; change "$target"; done
    "$BIN" group-backup $(remote ops) --group "g-$method" "${members[@]}" --json >> "$out"
  done
  log "$method: $pairs pairs of a group backup and its members alone"
  local pairs_out="$BASE/$method-pairs.txt"
  : > "$pairs_out"
  for ((p = 1; p <= pairs; p++)); do
    for i in 1 2 3; do read -r src target opts <<< "${vols[i-1]}"; change "$target"; done
    local t0 t1 group_s solo_max=0
    t0=$(date +%s.%N)
    "$BIN" group-backup $(remote ops) --group "g-$method" "${members[@]}" --json > /dev/null
    t1=$(date +%s.%N); group_s=$(echo "$t1 - $t0" | bc -l)
    for i in 1 2 3; do
      read -r src target opts <<< "${vols[i-1]}"; change "$target"
      t0=$(date +%s.%N)
      # shellcheck disable=SC2046
      DP420_CACHE_DIR="$BASE/cache-$method-$i" "$BIN" backup $(remote "node$i") \
        --volume "$method" $(solo_flags "$opts") "$src" --json > /dev/null
      t1=$(date +%s.%N)
      solo_max=$(echo "s=$t1 - $t0; if (s > $solo_max) s else $solo_max" | bc -l)
    done
    # The same three backups alone but at once: the load of the group's
    # transfers on this one machine, without the group's coordination.
    for i in 1 2 3; do read -r src target opts <<< "${vols[i-1]}"; change "$target"; done
    t0=$(date +%s.%N)
    local at_once=()
    for i in 1 2 3; do
      read -r src target opts <<< "${vols[i-1]}"
      # shellcheck disable=SC2046
      DP420_CACHE_DIR="$BASE/cache-$method-$i" "$BIN" backup $(remote "node$i") \
        --volume "$method" $(solo_flags "$opts") "$src" --json > /dev/null &
      at_once+=($!)
    done
    for p2 in "${at_once[@]}"; do wait "$p2"; done
    t1=$(date +%s.%N)
    echo "$group_s $solo_max $(echo "$t1 - $t0" | bc -l)" >> "$pairs_out"
  done
  for i in 1 2 3; do
    DP420_CACHE_DIR="$BASE/cache-$method-$i" "$BIN" snapshots $(remote "node$i") --volume "$method" --json \
      > "$BASE/$method-snapshots-$i.json"
  done
  for p in "${agent_pids[@]}"; do kill -TERM "$p"; wait "$p" 2> /dev/null || true; done
}

# The solo backup's point-in-time flags for a member's --volume options.
solo_flags() {
  local opts="$1" out=() kv
  IFS=',' read -ra kvs <<< "$opts"
  for kv in "${kvs[@]}"; do out+=("--${kv%%=*}" "${kv#*=}"); done
  echo "${out[@]}"
}

IFS=',' read -ra method_list <<< "$methods"
for m in "${method_list[@]}"; do run_method "$m"; done

python3 - "$BASE" "$json" "${method_list[@]}" << 'EOF'
import json, sys, statistics
base, as_json, methods = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
def pct(v, p):
    v = sorted(v); k = (len(v) - 1) * p / 100; f = int(k); c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)
report = {}
for m in methods:
    runs = [json.loads(l) for l in open(f"{base}/{m}.jsonl") if l.strip()]
    ok = [r for r in runs if r.get("outcome") == "committed"]
    # The holds of the members of the N measured groups (not of the pairs' backups).
    ids = {mem["snapshot_id"] for r in ok for mem in r["members"]}
    holds = []
    for i in (1, 2, 3):
        for s in json.load(open(f"{base}/{m}-snapshots-{i}.json")):
            pit = s["node_topology"]["members"][0].get("point_in_time", {})
            if "hold_ms" in pit and s["snapshot_id"] in ids:
                holds.append(pit["hold_ms"])
    pairs = [tuple(map(float, l.split())) for l in open(f"{base}/{m}-pairs.txt") if l.strip()]
    stat = lambda v: {"p50": round(pct(v, 50), 2), "p99": round(pct(v, 99), 2), "max": round(max(v), 2), "n": len(v)} if v else None
    report[m] = {
        "groups": len(runs), "committed": len(ok),
        "hold_ms": stat(holds),
        "prepare_ms": stat([r["prepare_ms"] for r in ok]),
        "cut_ms": stat([r["cut_ms"] for r in ok]),
        "total_ms": stat([r["total_ms"] for r in ok]),
        "group_over_slowest_solo": round(statistics.median(p[0] / p[1] for p in pairs), 3) if pairs else None,
        "group_over_solos_at_once": round(statistics.median(p[0] / p[2] for p in pairs), 3) if pairs else None,
        "pairs": pairs,
    }
if as_json:
    print(json.dumps(report))
else:
    for m, r in report.items():
        print(f"{m}: {r['committed']}/{r['groups']} committed")
        for k in ("hold_ms", "prepare_ms", "cut_ms", "total_ms"):
            s = r[k]
            if s: print(f"  {k:11s} p50 {s['p50']:8.2f}  p99 {s['p99']:8.2f}  max {s['max']:8.2f}  (n={s['n']})")
        print(f"  group / slowest member alone (median of {len(r['pairs'])} pairs): {r['group_over_slowest_solo']}")
        print(f"  group / the three alone at once:              {r['group_over_solos_at_once']}")
        for p in r["pairs"]:
            print(f"    group {p[0]:.3f} s, slowest alone {p[1]:.3f} s, three at once {p[2]:.3f} s")
EOF
