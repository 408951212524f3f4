#!/usr/bin/env python3
"""Summarises perf/run.sh measurements: the main table, the targets, peers, block sizes,
the network backup.

    report.py RESULTS.jsonl CONTEXT.json [--json] [--markdown] [--enforce]

RESULTS.jsonl holds one measure.py record per command, each with its phase, tool, op,
mode (cold / warm input) and pair; dp420 records carry dp420's --json output under
"dp420", fio records fio's bandwidth under "fio", repository-writing records the
repository's size before and after (du -sb), remote backups the server's CPU and I/O
meanwhile (server_*, sampled from /proc/PID by measure.py --server-pid).

Figures are medians over the pairs; peak RSS is the maximum. A ratio is the median of
per-pair ratios (subject and yardstick measured in the same pair, in alternating order),
since a shared machine drifts between pairs much more than within one. fio's time is
its own runtime (without process start); every other time is the command's wall time.
Metadata of a dp420 backup = bytes_written - blocks_stored x block_size (its --json).

--markdown prints the tables as Markdown (for docs/PERFORMANCE.md); --json prints the
summary as JSON on stdout and the tables on stderr. --enforce: exit 1 on a missed target.
"""
import json
import statistics
import sys

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_BLOCK = 64 << 10

# The targets (issue "Performance: ... proven side by side").
INCR_MAX_VS_FIO = 1.05       # cold incremental wall <= 1.05 x fio read of the changed image
FULL_MIN_VS_CP = 0.9         # full backup throughput >= 0.9 x cp --sparse=always
RESTORE_MIN_VS_CP = 0.9      # restore throughput >= 0.9 x the same copy
CHAIN_MAX = 1.0              # restore of the Nth snapshot no slower than of the 1st, within
                             # the noise of restoring the 1st against itself in the same run
WARM_MIN_VS_XXH = 1.5        # warm incremental throughput >= 1.5 x xxh128sum (cached)
INCR_MAX_CPU_PER_GIB = 0.25  # cold incremental CPU-s/GiB
RSS_MAX_KIB = 128 << 10      # peak RSS, 4 GiB and 64 GiB volumes
META_MAX_RATIO = 2.0         # metadata of the same change, 64 GiB vs 4 GiB volume
PEER_WARM_INCR_MIN = 5.0     # warm incremental >= 5 x faster than the fastest peer
PEER_WARM_FULL_MIN = 2.0     # warm full >= 2 x faster
PEER_CPU_FRACTION = 0.25     # incremental CPU-s/GiB <= 1/4 of the most frugal peer's
REMOTE_INCR_MIN_VS_LOCAL = 0.9  # remote incremental throughput >= 0.9 x the local one
REMOTE_FULL_MIN_VS_LOCAL = 0.85  # remote full throughput >= 0.85 x the local one
# The phase (perf/run.sh --only) whose records a target needs; peers-* need "peers".
TARGET_PHASE = {"incr-vs-fio": "core", "full-vs-cp": "core", "restore-vs-cp": "core",
                "chain-restore": "chain", "warm-incr-vs-xxh": "core", "incr-cpu": "core",
                "rss-4g": "core", "rss-64g": "64g", "metadata-64g-vs-4g": "64g",
                "remote-incr-vs-local": "remote", "remote-full-vs-local": "remote"}

# Peers whose repository growth counts for the growth target: versioned, uncompressed.
PEER_NOTES = {
    "restic": "--compression off, repository v2",
    "borg": "fixed 4 MiB chunks, --compression none",
    "casync": "zstd chunks (casync cannot store them uncompressed)",
    "rsync": "one in-place mirror, no history",
}
GROWTH_PEERS = ("restic", "borg")
PEER_OPS = [("full", "cold"), ("incremental", "cold"), ("restore", "cold"),
            ("full", "warm"), ("incremental", "warm")]


def load(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Runs:
    def __init__(self, records: list):
        self.by_key = {}
        for rec in records:
            key = (rec.get("phase"), rec.get("tool"), rec.get("op"), rec.get("mode"),
                   rec.get("block_size"))
            self.by_key.setdefault(key, {})[rec.get("pair", 0)] = rec
        self.records = records

    def get(self, phase, tool, op, mode="cold", block_size=None) -> dict:
        return self.by_key.get((phase, tool, op, mode, block_size), {})


def ok(rec) -> bool:
    return bool(rec) and rec.get("exit_code") == 0


def good(recs: dict) -> list:
    return [r for r in recs.values() if ok(r)]


def yard_s(rec: dict) -> float:
    """fio's own runtime for fio records, the wall time for everything else."""
    fio = rec.get("fio")
    if fio and fio.get("bw_bytes"):
        return fio["io_bytes"] / fio["bw_bytes"]
    return rec["wall_s"]


def pair_ratios(num: dict, den: dict, fn=None, fd=None) -> list:
    """fn(num) / fd(den) for each pair that has both, in pair order."""
    fn = fn or (lambda r: r["wall_s"])
    fd = fd or yard_s
    return [fn(r) / fd(den[p]) for p, r in sorted(num.items())
            if ok(r) and ok(den.get(p)) and fd(den[p]) > 0]


def chain_rounds(runs) -> tuple:
    """Per round: the Nth snapshot's restore wall over the mean of the 1st's before and
    after it, and the 1st's after over before (A/A). Rounds without the second restore of
    the 1st compare with the one before."""
    first = runs.get("chain", "dp420", "restore-first")
    last = runs.get("chain", "dp420", "restore-last")
    again = runs.get("chain", "dp420", "restore-first-again")
    ratios, aa = [], []
    for p, r in sorted(last.items()):
        a, b = first.get(p), again.get(p)
        if not ok(r) or not ok(a) or a["wall_s"] <= 0:
            continue
        if ok(b) and b["wall_s"] > 0:
            ratios.append(r["wall_s"] / ((a["wall_s"] + b["wall_s"]) / 2))
            aa.append(b["wall_s"] / a["wall_s"])
        else:
            ratios.append(r["wall_s"] / a["wall_s"])
    return ratios, aa


def pair_ratio(num: dict, den: dict, fn=None, fd=None):
    """Median over pairs of fn(num) / fd(den); None when no pair has both."""
    vals = pair_ratios(num, den, fn, fd)
    return statistics.median(vals) if vals else None


def metadata(rec: dict):
    d = rec.get("dp420") or {}
    if "blocks_stored" not in d or "block_size" not in d:
        return None
    return d["bytes_written"] - d["blocks_stored"] * d["block_size"]


def stats(recs: dict, volume_bytes: int) -> dict:
    ok_recs = good(recs)
    out = {"runs": len(recs), "failed_runs": len(recs) - len(ok_recs)}
    if not ok_recs:
        return out
    med = lambda f: statistics.median(f(r) for r in ok_recs)
    out.update({
        "wall_s": med(lambda r: r["wall_s"]),
        "cpu_s": med(lambda r: r["cpu_s"]),
        "max_rss_kib": max(r["max_rss_kib"] for r in ok_recs),
        "written_bytes": med(lambda r: r["written_bytes"]),
    })
    out["cpu_s_per_gib"] = out["cpu_s"] / (volume_bytes / GIB)
    out["cores"] = out["cpu_s"] / out["wall_s"] if out["wall_s"] > 0 else None
    if all(r.get("fio") for r in ok_recs):
        out["wall_s"] = med(yard_s)
        out["throughput_bytes_s"] = med(lambda r: r["fio"]["bw_bytes"])
    else:
        out["throughput_bytes_s"] = volume_bytes / out["wall_s"]
    if all("repo_after_bytes" in r for r in ok_recs):
        out["repo_after_bytes"] = med(lambda r: r["repo_after_bytes"])
        out["repo_growth_bytes"] = med(lambda r: r["repo_growth_bytes"])
    if all("dev_busy_ms" in r for r in ok_recs):
        out["disk_busy"] = med(lambda r: r["dev_busy_ms"] / (1000 * r["wall_s"]) if r["wall_s"] else 0)
        for k in ("dev_reads", "dev_read_bytes", "dev_writes", "dev_write_bytes"):
            out[k] = med(lambda r: r[k])
    dp = [r["dp420"] for r in ok_recs if r.get("dp420")]
    if dp and all("bytes_written" in d for d in dp):
        out["dp420_bytes_written"] = statistics.median(d["bytes_written"] for d in dp)
    metas = [metadata(r) for r in ok_recs if metadata(r) is not None]
    if metas:
        out["metadata_bytes"] = statistics.median(metas)
        out["blocks_stored"] = statistics.median(r["dp420"]["blocks_stored"] for r in ok_recs)
    return out


REMOTE_COUNTERS = ("bytes_sent", "bytes_sent_zerocopy", "bytes_zerocopy_copied", "bytes_resent",
                   "reconnects")


def remote_stats(recs: dict, volume_bytes: int) -> dict:
    """stats() plus the server's side and the agent's network counters (--json)."""
    out = stats(recs, volume_bytes)
    ok_recs = good(recs)
    if not ok_recs:
        return out
    med = lambda f: statistics.median(f(r) for r in ok_recs)
    if all("server_cpu_s" in r for r in ok_recs):
        out["server_cpu_s"] = med(lambda r: r["server_cpu_s"])
        out["server_user_s"] = med(lambda r: r["server_user_s"])
        out["server_sys_s"] = med(lambda r: r["server_sys_s"])
        out["server_cpu_s_per_gib"] = out["server_cpu_s"] / (volume_bytes / GIB)
        out["server_written_bytes"] = med(lambda r: r["server_written_bytes"])
        out["server_max_rss_kib"] = max(r.get("server_max_rss_kib") or 0 for r in ok_recs)
        # The peak of the step itself, unless it could not be reset before it.
        out["server_rss_lifetime"] = any(r.get("server_rss_scope") != "step" for r in ok_recs)
        out["cores_both"] = med(lambda r: (r["cpu_s"] + r["server_cpu_s"]) / r["wall_s"]
                                if r["wall_s"] > 0 else 0)
    out["user_s"] = med(lambda r: r["user_s"])
    out["sys_s"] = med(lambda r: r["sys_s"])
    dp = [r["dp420"] for r in ok_recs if r.get("dp420")]
    for k in REMOTE_COUNTERS:
        if dp and all(k in d for d in dp):
            out[k] = statistics.median(d[k] for d in dp)
    if out.get("bytes_sent") and "server_cpu_s" in out:
        out["server_cpu_s_per_gib_received"] = out["server_cpu_s"] / (out["bytes_sent"] / GIB)
    return out


def fastest_peer_ratio(runs: Runs, peers: list, op: str, mode: str):
    """Median over pairs of (fastest peer's wall) / (dp420's wall), and the peer names."""
    dp = runs.get("core", "dp420", op, mode)
    vals, names = [], []
    for p, rec in dp.items():
        if not ok(rec):
            continue
        walls = [(runs.get("peers", t, op, mode).get(p), t) for t in peers]
        walls = [(r["wall_s"], t) for r, t in walls if ok(r)]
        if len(walls) < len(peers) or not walls:
            continue
        w, t = min(walls)
        vals.append(w / rec["wall_s"])
        names.append(t)
    if not vals:
        return None, None
    return statistics.median(vals), max(set(names), key=names.count)


def summarise(records: list, ctx: dict) -> dict:
    runs = Runs(records)
    vol = ctx["volume_size"]
    peers = ctx.get("peers") or []
    notes = ctx.get("notes", {})
    chain_n = ctx.get("chain_length", 10)

    def st(phase, tool, op, mode="cold", bs=None, volume=vol):
        return stats(runs.get(phase, tool, op, mode, bs), volume)

    core = lambda tool, op, mode="cold": runs.get("core", tool, op, mode)
    chain_ratios, chain_aa = chain_rounds(runs)
    # The noise of one comparison: how far the 1st snapshot's restore lands from itself.
    chain_noise = statistics.median(abs(v - 1) for v in chain_aa) if chain_aa else 0.0
    chain_max = CHAIN_MAX + chain_noise
    ratios = {
        "incr_vs_fio": pair_ratio(core("dp420", "incremental"), core("fio", "read-changed")),
        "full_vs_fio": pair_ratio(core("dp420", "full"), core("fio", "read-base")),
        "full_vs_cp": pair_ratio(core("dp420", "full"), core("cp", "copy-base")),
        "restore_vs_cp": pair_ratio(core("dp420", "restore"), core("cp", "copy-base")),
        "warm_incr_vs_xxh": pair_ratio(core("dp420", "incremental", "warm"),
                                       core("xxh128sum", "hash-changed", "warm")),
        "warm_full_vs_xxh": pair_ratio(core("dp420", "full", "warm"),
                                       core("xxh128sum", "hash-changed", "warm")),
        "chain": statistics.median(chain_ratios) if chain_ratios else None,
        "chain_self": statistics.median(chain_aa) if chain_aa else None,
        "chain_noise": chain_noise if chain_aa else None,
    }
    peer_ratio = {}
    if peers:
        for op, mode in PEER_OPS:
            peer_ratio[(op, mode)] = fastest_peer_ratio(runs, peers, op, mode)

    # --- the main table ---
    big_vol = None
    big_recs = runs.get("big", "dp420", "full")
    for r in good(big_recs):
        big_vol = r["dp420"]["volume_size"]
    rows = []

    def row(name, s, yardstick=None, ratio=None, target=None, result=None, repo="growth"):
        r = {"operation": name, **s}
        if repo == "size" and "repo_after_bytes" in s:
            r["repo"] = ("size", s["repo_after_bytes"])
        elif "repo_growth_bytes" in s:
            r["repo"] = ("growth", s["repo_growth_bytes"])
        if yardstick:
            r["yardstick"] = yardstick
        if ratio is not None:
            r["ratio"] = ratio
        if target:
            r["target"] = target
        if result is not None:
            r["result"] = result
        rows.append(r)

    def verdict(value, ok_fn):
        return None if value is None else ("pass" if ok_fn(value) else "FAIL")

    inv = lambda x: None if not x else 1 / x
    row("fio read, base image (cold)", st("core", "fio", "read-base"))
    row("fio read, changed image (cold)", st("core", "fio", "read-changed"))
    row("cp --sparse=always + sync (cold)", st("core", "cp", "copy-base"))
    row(f"fio write, {fmt_bytes(ctx.get('data_mib', 0) * MIB)} O_DIRECT + fsync (cold)",
        st("core", "fio", "write-data"))
    row("xxh128sum, changed image (warm input)", st("core", "xxh128sum", "hash-changed", "warm"))
    row("fio read(2) of the cached changed image, 2 threads (warm)", st("core", "fio", "read-cached", "warm"))
    row("dp420 full backup (cold)", st("core", "dp420", "full"), "cp (speed)", inv(ratios["full_vs_cp"]),
        f"throughput >= {FULL_MIN_VS_CP} x cp", verdict(inv(ratios["full_vs_cp"]), lambda v: v >= FULL_MIN_VS_CP),
        repo="size")
    row("dp420 incremental backup (cold)", st("core", "dp420", "incremental"), "fio changed (wall)",
        ratios["incr_vs_fio"], f"wall <= {INCR_MAX_VS_FIO} x fio",
        verdict(ratios["incr_vs_fio"], lambda v: v <= INCR_MAX_VS_FIO))
    row("dp420 restore + sync (cold)", st("core", "dp420", "restore"), "cp (speed)", inv(ratios["restore_vs_cp"]),
        f"throughput >= {RESTORE_MIN_VS_CP} x cp",
        verdict(inv(ratios["restore_vs_cp"]), lambda v: v >= RESTORE_MIN_VS_CP))
    if peers:
        v, who = peer_ratio[("full", "warm")]
        row("dp420 full backup (warm input)", st("core", "dp420", "full", "warm"),
            f"fastest peer, {who} (speed)" if who else "fastest peer (speed)", v,
            f"speed >= {PEER_WARM_FULL_MIN:g} x fastest peer",
            verdict(v, lambda x: x >= PEER_WARM_FULL_MIN), repo="size")
    else:
        row("dp420 full backup (warm input)", st("core", "dp420", "full", "warm"), repo="size")
    row("dp420 incremental backup (warm input)", st("core", "dp420", "incremental", "warm"),
        "xxh128sum (speed)", inv(ratios["warm_incr_vs_xxh"]), f"throughput >= {WARM_MIN_VS_XXH} x xxh128sum",
        verdict(inv(ratios["warm_incr_vs_xxh"]), lambda v: v >= WARM_MIN_VS_XXH))
    chain_backups = runs.get("chain", "dp420", "chain-backup")
    later_recs = [r for r in chain_backups.values() if ok(r) and r.get("seq", 1) > 1]
    if later_recs:
        s = stats({i: r for i, r in enumerate(later_recs)}, vol)
        row(f"dp420 chain backups 2..{chain_n}, {ctx.get('chain_step_mib', '?')} MiB changed each (cold)", s)
    row("dp420 restore of snapshot 1 + sync (cold)", st("chain", "dp420", "restore-first"))
    row(f"dp420 restore of snapshot {chain_n} + sync (cold)", st("chain", "dp420", "restore-last"),
        "snapshot 1, before and after (wall)", ratios["chain"],
        f"wall <= {chain_max:.2f} x snapshot 1 (1 + A/A noise)",
        verdict(ratios["chain"], lambda v: v <= chain_max))
    if chain_aa:
        row("dp420 restore of snapshot 1 again + sync (cold)", st("chain", "dp420", "restore-first-again"),
            "snapshot 1 (wall)", statistics.median(chain_aa))
    meta4 = st("chain", "dp420", "change-64m")
    row(f"dp420 incremental, 64 MiB change, {fmt_bytes(vol)} volume (cold)", meta4)
    meta_ratio = None
    if big_vol:
        row(f"dp420 full backup, {fmt_bytes(big_vol)} sparse volume (cold)",
            st("big", "dp420", "full", volume=big_vol), repo="size")
        meta64 = st("big", "dp420", "change-64m", volume=big_vol)
        if meta4.get("metadata_bytes") and meta64.get("metadata_bytes") is not None:
            meta_ratio = meta64["metadata_bytes"] / meta4["metadata_bytes"]
        row(f"dp420 incremental, 64 MiB change, {fmt_bytes(big_vol)} sparse volume (cold)", meta64,
            f"{fmt_bytes(vol)} volume (metadata)", meta_ratio, f"metadata <= {META_MAX_RATIO:g} x",
            verdict(meta_ratio, lambda v: v <= META_MAX_RATIO))
        row(f"dp420 restore, {fmt_bytes(big_vol)} sparse volume + sync (cold)",
            st("big", "dp420", "restore", volume=big_vol))

    # --- peers ---
    peer_rows = []
    if peers:
        fio_of = {"full": core("fio", "read-base"), "incremental": core("fio", "read-changed")}
        for tool in ["dp420"] + peers:
            phase = "core" if tool == "dp420" else "peers"
            for op, mode in PEER_OPS:
                recs = runs.get(phase, tool, op, mode)
                if not recs:
                    continue
                s = stats(recs, vol)
                r = {"tool": tool, "op": op, "mode": mode, **s}
                if op in fio_of:
                    r["vs_fio"] = pair_ratio(recs, fio_of[op])
                else:
                    r["vs_cp"] = pair_ratio(recs, core("cp", "copy-base"))
                if tool != "dp420":
                    r["dp420_speedup"] = pair_ratio(recs, core("dp420", op, mode),
                                                    fd=lambda x: x["wall_s"])
                peer_rows.append(r)

    # --- block sizes ---
    sweep = []
    for bs in ctx.get("block_sizes") or []:
        incr = runs.get("sweep", "dp420", "incremental", "cold", bs)
        if not incr:
            continue
        s = stats(incr, vol)
        full = stats(runs.get("sweep", "dp420", "full", "cold", bs), vol)
        sweep.append({
            "block_size": bs, **s,
            "vs_fio": pair_ratio(incr, runs.get("sweep", "fio", "read-changed", "cold", bs)),
            "full_wall_s": full.get("wall_s"), "full_cpu_s_per_gib": full.get("cpu_s_per_gib"),
            "max_rss_kib": max(s.get("max_rss_kib", 0), full.get("max_rss_kib", 0)),
            "full_repo_bytes": full.get("repo_after_bytes"),
            "full_metadata_bytes": full.get("metadata_bytes"),
        })
    recommendation = recommend(sweep)

    # --- network backup over loopback: the same pairs run local and remote ---
    rem = lambda tool, op: runs.get("remote", tool, op)
    fio_r = rem("fio", "read-changed")
    remote_rows = []
    remote_ratio = {}
    if fio_r or rem("dp420-remote", "full") or rem("dp420-remote", "incremental"):
        remote_rows.append({"operation": "fio read, changed image (cold)", **stats(fio_r, vol)})
        for op in ("full", "incremental"):
            local, remote = rem("dp420", op), rem("dp420-remote", op)
            remote_ratio[op] = pair_ratio(local, remote, fd=lambda r: r["wall_s"])
            remote_rows.append({"operation": f"dp420 local {op} (cold)", **remote_stats(local, vol),
                                "vs_fio": pair_ratio(local, fio_r)})
            remote_rows.append({"operation": f"dp420 remote {op}, loopback (cold)",
                                **remote_stats(remote, vol), "vs_fio": pair_ratio(remote, fio_r),
                                "vs_local": remote_ratio[op],
                                "vs_local_pairs": pair_ratios(local, remote, fd=lambda r: r["wall_s"])})

    # --- targets ---
    targets = []

    def target(tid, text, measured, threshold, passed, evidence=""):
        res = "skipped" if passed is None else ("pass" if passed else "FAIL")
        targets.append({"id": tid, "target": text, "measured": measured, "threshold": threshold,
                        "result": res, "evidence": evidence})

    def fmt_x(v, nd=2):
        return "-" if v is None else f"{v:.{nd}f} x"

    s_incr = st("core", "dp420", "incremental")
    s_fio = st("core", "fio", "read-changed")
    s_full = st("core", "dp420", "full")
    s_cp = st("core", "cp", "copy-base")
    s_rest = st("core", "dp420", "restore")
    s_wincr = st("core", "dp420", "incremental", "warm")
    s_wfull = st("core", "dp420", "full", "warm")
    s_xxh = st("core", "xxh128sum", "hash-changed", "warm")
    r = ratios["incr_vs_fio"]
    target("incr-vs-fio", "cold incremental wall <= 1.05 x fio read of the changed image",
           fmt_x(r), f"<= {INCR_MAX_VS_FIO} x", None if r is None else r <= INCR_MAX_VS_FIO,
           evidence_io(s_incr, s_fio))
    r = inv(ratios["full_vs_cp"])
    target("full-vs-cp", "full backup throughput >= 0.9 x cp --sparse=always (+ sync)",
           fmt_x(r), f">= {FULL_MIN_VS_CP} x", None if r is None else r >= FULL_MIN_VS_CP,
           evidence_io(s_full, s_cp))
    r = inv(ratios["restore_vs_cp"])
    target("restore-vs-cp", "restore throughput >= 0.9 x the same sparse copy",
           fmt_x(r), f">= {RESTORE_MIN_VS_CP} x", None if r is None else r >= RESTORE_MIN_VS_CP,
           evidence_io(s_rest, s_cp))
    r = ratios["chain"]
    target("chain-restore", f"restore of snapshot {chain_n} no slower than of snapshot 1 "
           "(the same bytes; within the noise of snapshot 1 against itself)",
           fmt_x(r), f"<= {chain_max:.2f} x", None if r is None else r <= chain_max,
           evidence_io(st("chain", "dp420", "restore-last"), st("chain", "dp420", "restore-first"), True)
           + (f"; rounds {', '.join(f'{v:.2f}' for v in chain_ratios)}" if chain_ratios else "")
           + (f"; snapshot 1 against itself {', '.join(f'{v:.2f}' for v in chain_aa)}"
              f" (noise {chain_noise:.3f})" if chain_aa else ""))
    r = inv(ratios["warm_incr_vs_xxh"])
    target("warm-incr-vs-xxh", "warm incremental throughput >= 1.5 x xxh128sum of the cached file",
           fmt_x(r), f">= {WARM_MIN_VS_XXH} x", None if r is None else r >= WARM_MIN_VS_XXH,
           evidence_io(s_wincr, s_xxh) + cached_evidence(st("core", "fio", "read-cached", "warm"), vol))
    v = s_incr.get("cpu_s_per_gib")
    target("incr-cpu", "cold incremental <= 0.25 CPU-s/GiB",
           "-" if v is None else f"{v:.3f}", f"<= {INCR_MAX_CPU_PER_GIB}",
           None if v is None else v <= INCR_MAX_CPU_PER_GIB,
           "" if v is None else f"user+sys {s_incr['cpu_s']:.2f} s for {fmt_bytes(vol)}")
    rss4 = [x for x in runs.records if x.get("tool") == "dp420" and x.get("phase") in ("core", "chain")
            and ok(x)]
    m = max((x["max_rss_kib"] for x in rss4), default=None)
    worst = max(rss4, key=lambda x: x["max_rss_kib"], default=None)
    target("rss-4g", f"peak RSS <= 128 MiB, {fmt_bytes(vol)} volume (every dp420 run)",
           "-" if m is None else fmt_bytes(m * 1024), "<= 128 MiB",
           None if m is None else m <= RSS_MAX_KIB,
           "" if worst is None else f"largest: {worst['op']} ({worst['mode']})")
    rss64 = [x for x in runs.records if x.get("phase") == "big" and ok(x)]
    m = max((x["max_rss_kib"] for x in rss64), default=None)
    worst = max(rss64, key=lambda x: x["max_rss_kib"], default=None)
    target("rss-64g", "peak RSS <= 128 MiB, 64 GiB sparse volume (full, incremental, restore)",
           "-" if m is None else fmt_bytes(m * 1024), "<= 128 MiB",
           None if m is None else m <= RSS_MAX_KIB,
           notes.get("skipped_64g", "") if worst is None else f"largest: {worst['op']}")
    big_meta = st("big", "dp420", "change-64m", volume=big_vol or vol) if big_vol else {}
    target("metadata-64g-vs-4g",
           f"metadata of the same 64 MiB change, 64 GiB vs {fmt_bytes(vol)} volume, within 2 x",
           fmt_x(meta_ratio), f"<= {META_MAX_RATIO:g} x",
           None if meta_ratio is None else meta_ratio <= META_MAX_RATIO,
           "" if meta_ratio is None else
           f"{fmt_bytes(big_meta['metadata_bytes'])} vs {fmt_bytes(meta4['metadata_bytes'])}")
    r = remote_ratio.get("incremental")
    s_ri = remote_stats(rem("dp420-remote", "incremental"), vol)
    s_li = remote_stats(rem("dp420", "incremental"), vol)
    target("remote-incr-vs-local", "remote incremental (loopback) throughput >= 0.9 x the local incremental",
           fmt_x(r), f">= {REMOTE_INCR_MIN_VS_LOCAL} x",
           None if r is None else r >= REMOTE_INCR_MIN_VS_LOCAL,
           notes.get("skipped_remote", "remote phase not run") if r is None else remote_evidence(s_ri, s_li))
    r = remote_ratio.get("full")
    s_rf = remote_stats(rem("dp420-remote", "full"), vol)
    s_lf = remote_stats(rem("dp420", "full"), vol)
    target("remote-full-vs-local", "remote full (loopback) throughput >= 0.85 x the local full",
           fmt_x(r), f">= {REMOTE_FULL_MIN_VS_LOCAL} x",
           None if r is None else r >= REMOTE_FULL_MIN_VS_LOCAL,
           notes.get("skipped_remote", "remote phase not run") if r is None else remote_evidence(s_rf, s_lf))
    skipped_why = notes.get("peers_skipped", "peers not run (--quick without --peers, or --no-peers)")

    s_fw = st("core", "fio", "write-data")
    write_note = "" if "wall_s" not in s_fw else (
        f"; dp420 {describe(st('core', 'dp420', 'full', 'warm'))}{io_detail(st('core', 'dp420', 'full', 'warm'))}; "
        f"fio writing the same {fmt_bytes(ctx.get('data_mib', 0) * MIB)}: {describe(s_fw)}")

    def peer_target(tid, text, op, mode, minimum, strict=False, extra=""):
        v, who = peer_ratio.get((op, mode), (None, None))
        passed = None if v is None else (v > minimum if strict else v >= minimum)
        threshold = f"> {minimum:g} x" if strict else f">= {minimum:g} x"
        target(tid, text, "-" if v is None else f"{v:.2f} x (fastest: {who})", threshold, passed,
               skipped_why if v is None else peer_evidence(runs, peers, op, mode, vol) + extra)
    peer_target("peers-warm-incr", "warm incremental >= 5 x faster than the fastest peer",
                "incremental", "warm", PEER_WARM_INCR_MIN)
    peer_target("peers-warm-full", "warm full >= 2 x faster than the fastest peer",
                "full", "warm", PEER_WARM_FULL_MIN, extra=write_note)
    peer_target("peers-cold-incr", "cold incremental faster than every peer", "incremental", "cold", 1.0, True)
    peer_target("peers-cold-full", "cold full faster than every peer", "full", "cold", 1.0, True)
    peer_target("peers-cold-restore", "cold restore faster than every peer", "restore", "cold", 1.0, True)
    frugal = None
    if peers:
        cands = [(stats(runs.get("peers", t, "incremental"), vol).get("cpu_s_per_gib"), t) for t in peers]
        cands = [c for c in cands if c[0] is not None]
        frugal = min(cands) if cands else None
    v = s_incr.get("cpu_s_per_gib")
    target("peers-incr-cpu", "incremental CPU-s/GiB <= 1/4 of the most frugal peer's",
           "-" if v is None or not frugal else f"{v:.3f} vs {frugal[0]:.3f} ({frugal[1]})",
           "<= 0.25 x", None if v is None or not frugal else v <= PEER_CPU_FRACTION * frugal[0],
           skipped_why if not frugal else f"ratio {v / frugal[0]:.3f}")
    growth = None
    if peers:
        cands = [(stats(runs.get("peers", t, "incremental"), vol).get("repo_growth_bytes"), t)
                 for t in peers if t in GROWTH_PEERS]
        cands = [c for c in cands if c[0] is not None]
        growth = min(cands) if cands else None
    g = s_incr.get("repo_growth_bytes")
    target("peers-growth", "repository growth per incremental <= the smallest peer's (no compression)",
           "-" if g is None or not growth else f"{fmt_bytes(g)} vs {fmt_bytes(growth[0])} ({growth[1]})",
           "<= 1 x", None if g is None or not growth else g <= growth[0],
           skipped_why if not growth else "peers without compression: " + ", ".join(GROWTH_PEERS)
           + "; casync (zstd only) and rsync (no history) are shown but not counted")

    return {"context": ctx, "ratios": ratios, "rows": rows, "targets": targets,
            "peers": peer_rows, "block_sizes": sweep, "block_size_recommendation": recommendation,
            "remote": remote_rows}


def describe(s: dict) -> str:
    out = f"{s['wall_s']:.2f} s, {s['cpu_s']:.2f} CPU-s ({s['cores']:.2f} cores)"
    if "disk_busy" in s:
        out += f", disk busy {100 * s['disk_busy']:.0f} %"
    return out


def io_detail(s: dict) -> str:
    if "dev_reads" not in s:
        return ""
    parts = []
    if s["dev_reads"]:
        parts.append(f"{s['dev_reads']:.0f} reads of {s['dev_read_bytes'] / s['dev_reads'] / 1024:.0f} KiB")
    if s["dev_writes"]:
        parts.append(f"{s['dev_writes']:.0f} writes of {s['dev_write_bytes'] / s['dev_writes'] / 1024:.0f} KiB")
    return " (" + ", ".join(parts) + ")" if parts else ""


def evidence_io(s: dict, yard: dict, detail: bool = False) -> str:
    if "wall_s" not in s or "wall_s" not in yard:
        return ""
    if detail:
        return f"{describe(s)}{io_detail(s)} vs {describe(yard)}{io_detail(yard)}"
    return f"{describe(s)} vs {describe(yard)}"


def remote_evidence(remote: dict, local: dict) -> str:
    if "wall_s" not in remote or "wall_s" not in local:
        return ""
    out = f"remote {describe(remote)}"
    if "server_cpu_s" in remote:
        out += (f", server {remote['server_cpu_s']:.2f} CPU-s ({remote['cores_both']:.2f} cores "
                f"with the agent)")
    if remote.get("bytes_sent_zerocopy") is not None:
        out += (f", sent {fmt_bytes(remote.get('bytes_sent'))}, zero-copy "
                f"{fmt_bytes(remote['bytes_sent_zerocopy'])} of which the kernel copied "
                f"{fmt_bytes(remote.get('bytes_zerocopy_copied'))}")
    return out + f" vs local {describe(local)}"


def cached_evidence(s: dict, vol: int) -> str:
    if "throughput_bytes_s" not in s:
        return ""
    return (f"; reading the cached image alone, 2 threads: {s['wall_s']:.2f} s "
            f"({s['throughput_bytes_s'] / 1e9:.1f} GB/s, fio's runtime)")


def peer_evidence(runs: Runs, peers: list, op: str, mode: str, vol: int) -> str:
    parts = []
    for tool in ["dp420"] + peers:
        s = stats(runs.get("core" if tool == "dp420" else "peers", tool, op, mode), vol)
        if "wall_s" in s:
            parts.append(f"{tool} {s['wall_s']:.2f} s")
    return ", ".join(parts)


def recommend(sweep: list) -> dict:
    """Smallest incremental (bytes written) among block sizes that keep up with the disk
    (wall <= 1.05 x fio) within the CPU budget; the default is supported when it is that
    size or writes at most 10 % more."""
    if not sweep:
        return {}
    eligible = [s for s in sweep if s.get("vs_fio") is not None and s["vs_fio"] <= INCR_MAX_VS_FIO
                and s.get("cpu_s_per_gib", 9) <= INCR_MAX_CPU_PER_GIB and "dp420_bytes_written" in s]
    why = "keeps up with the disk (<= 1.05 x fio) and the CPU budget, fewest bytes per incremental"
    if not eligible:
        eligible = [s for s in sweep if "dp420_bytes_written" in s]
        why = "no size met the disk-speed and CPU targets; fewest bytes per incremental"
    if not eligible:
        return {}
    best = min(eligible, key=lambda s: s["dp420_bytes_written"])
    default = next((s for s in sweep if s["block_size"] == DEFAULT_BLOCK), None)
    supported = (default is not None and default in eligible
                 and default["dp420_bytes_written"] <= 1.10 * best["dp420_bytes_written"])
    out = {"block_size": best["block_size"], "why": why, "default": DEFAULT_BLOCK,
           "default_supported": supported}
    if default is not None and best is not default and default.get("dp420_bytes_written"):
        rel = lambda k: (best.get(k) / default[k]) if best.get(k) is not None and default.get(k) else None
        out["versus_default"] = {"written": rel("dp420_bytes_written"), "metadata": rel("metadata_bytes"),
                                 "peak_rss": rel("max_rss_kib"), "full_metadata": rel("full_metadata_bytes"),
                                 "incr_wall": rel("wall_s")}
    return out


# --- output -------------------------------------------------------------------------
def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    neg = n < 0
    n = abs(n)
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{'-' if neg else ''}{n / size:.1f} {unit}"
    return f"{'-' if neg else ''}{int(n)} B"


def f2(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(head: list, rows: list, markdown: bool, out) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |", file=out)
        print("|" + "|".join("---" for _ in head) + "|", file=out)
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |", file=out)
        return
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(
        (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head), file=out)
    print("-" * len(line(head)), file=out)
    for r in rows:
        print(line(r), file=out)


def repo_cell(r: dict) -> str:
    if "repo" not in r:
        return "-"
    kind, n = r["repo"]
    return fmt_bytes(n) if kind == "size" else f"+{fmt_bytes(n)}"


def print_all(summary: dict, out, markdown: bool = False) -> None:
    ctx = summary["context"]
    title = (lambda t: print(f"\n**{t}**\n", file=out)) if markdown else (lambda t: print(f"\n{t}", file=out))
    print(f"\nvolume {fmt_bytes(ctx['volume_size'])} ({ctx.get('volume_note', '')}), "
          f"{ctx['pairs']} pair(s)"
          + (f" (chain restores: {ctx['chain_pairs']} rounds, network: {ctx['remote_pairs']} pairs)"
             if "remote_pairs" in ctx else "")
          + f", caches {ctx['caches']}, medians", file=out)
    ds = ctx.get("dataset", {})
    changed = [f"{k.split('_')[-1]} {v} %" for k, v in ds.items() if k.startswith("changed_blocks_pct_")]
    if changed:
        print(f"blocks that differ between the base and the changed image: {', '.join(changed)}; "
              f"all-zero 4 KiB blocks: {ds.get('zero_4k_blocks_pct', '?')} %", file=out)

    head = ["operation", "wall s", "CPU s", "CPU-s/GiB", "cores", "disk busy", "peak RSS", "written",
            "repo size/growth", "GB/s", "yardstick", "ratio", "target", "result"]
    rows = []
    for r in summary["rows"]:
        if not r.get("runs"):
            continue  # a phase that did not run
        if "wall_s" not in r:
            rows.append([r["operation"], "failed"] + ["-"] * (len(head) - 2))
            continue
        busy = "-" if r.get("disk_busy") is None else f"{100 * r['disk_busy']:.0f} %"
        rows.append([r["operation"], f2(r["wall_s"]), f2(r["cpu_s"]), f2(r["cpu_s_per_gib"], 3),
                     f2(r.get("cores")), busy, fmt_bytes(r["max_rss_kib"] * 1024), fmt_bytes(r["written_bytes"]),
                     repo_cell(r), f2(r["throughput_bytes_s"] / 1e9), r.get("yardstick", "-"),
                     f2(r.get("ratio")), r.get("target", "-"), r.get("result", "-")])
    if rows:
        title("Operations")
        table(head, rows, markdown, out)
    if rows and not markdown:
        print("ratio, per the yardstick column: (speed) = dp420's throughput / the yardstick's, "
              "(wall) = dp420's wall / the yardstick's, (metadata) = metadata / the smaller volume's; "
              "medians of per-pair ratios. fio rows: fio's own runtime. cores: CPU s / wall s. "
              "disk busy: share of the wall time the repository's disk had I/O in flight (any process). "
              "written: bytes the kernel counted as written by the command. repo: du -sb after a "
              "full, growth for an incremental.", file=out)

    if summary.get("remote"):
        print_remote(summary["remote"], title, markdown, out)

    title("Targets")
    head = ["target", "measured", "threshold", "result", "evidence"]
    # With --only, the targets of the phases that did not run are left out (not failed).
    phases = ctx.get("phases")
    shown = [t for t in summary["targets"] if phases is None or t["result"] != "skipped"
             or TARGET_PHASE.get(t["id"], t["id"].split("-")[0]) in phases]
    table(head, [[t["target"], t["measured"], t["threshold"], t["result"], t["evidence"]]
                 for t in shown], markdown, out)

    if summary["peers"]:
        title("Peers (same volume, same pairs)")
        head = ["tool", "operation", "input", "wall s", "CPU s", "CPU-s/GiB", "cores", "peak RSS", "written",
                "repo size/growth", "vs fio", "vs cp", "dp420 faster by"]
        rows = []
        for r in summary["peers"]:
            if "wall_s" not in r:
                rows.append([r["tool"], r["op"], r["mode"], "failed"] + ["-"] * 9)
                continue
            repo = "-"
            if "repo_after_bytes" in r:
                repo = fmt_bytes(r["repo_after_bytes"]) if r["op"] == "full" else f"+{fmt_bytes(r['repo_growth_bytes'])}"
            rows.append([r["tool"], r["op"], r["mode"], f2(r["wall_s"]), f2(r["cpu_s"]),
                         f2(r["cpu_s_per_gib"], 3), f2(r.get("cores")), fmt_bytes(r["max_rss_kib"] * 1024),
                         fmt_bytes(r["written_bytes"]), repo, f2(r.get("vs_fio")), f2(r.get("vs_cp")),
                         "-" if r.get("dp420_speedup") is None else f"{r['dp420_speedup']:.2f} x"])
        table(head, rows, markdown, out)
        if not markdown:
            print("vs fio: wall / fio read of the same image; vs cp: wall / cp --sparse=always + sync; "
                  "dp420 faster by: the peer's wall / dp420's in the same pair. Settings: "
                  + "; ".join(f"{t}: {n}" for t, n in PEER_NOTES.items() if t in ctx.get("peers", [])),
                  file=out)

    if summary["block_sizes"]:
        title("Block sizes (the same change, cold)")
        head = ["block size", "incr wall s", "vs fio", "incr CPU-s/GiB", "peak RSS", "blocks stored",
                "written per incr", "data", "metadata", "repo growth", "full wall s", "full repo",
                "full metadata"]
        rows = []
        for s in summary["block_sizes"]:
            if "wall_s" not in s:
                rows.append([fmt_bytes(s["block_size"]), "failed"] + ["-"] * 11)
                continue
            data = s["blocks_stored"] * s["block_size"] if "blocks_stored" in s else None
            rows.append([fmt_bytes(s["block_size"]), f2(s["wall_s"]), f2(s.get("vs_fio")),
                         f2(s["cpu_s_per_gib"], 3), fmt_bytes(s["max_rss_kib"] * 1024),
                         f"{int(s.get('blocks_stored', 0))}", fmt_bytes(s.get("dp420_bytes_written")),
                         fmt_bytes(data), fmt_bytes(s.get("metadata_bytes")),
                         f"+{fmt_bytes(s.get('repo_growth_bytes'))}", f2(s.get("full_wall_s")),
                         fmt_bytes(s.get("full_repo_bytes")), fmt_bytes(s.get("full_metadata_bytes"))])
        table(head, rows, markdown, out)
        rec = summary["block_size_recommendation"]
        if rec:
            print(f"\nrecommended block size: {fmt_bytes(rec['block_size'])} ({rec['why']}); "
                  f"the default {fmt_bytes(rec['default'])} is "
                  f"{'supported' if rec['default_supported'] else 'NOT supported'} by these data", file=out)
            vs = rec.get("versus_default")
            if vs:
                parts = [f"{name} x {vs[k]:.2f}" for k, name in
                         (("written", "bytes written"), ("incr_wall", "incremental wall"),
                          ("metadata", "metadata per incremental"), ("full_metadata", "metadata per full"),
                          ("peak_rss", "peak RSS")) if vs.get(k) is not None]
                print(f"{fmt_bytes(rec['block_size'])} against {fmt_bytes(rec['default'])}: "
                      + ", ".join(parts), file=out)
    notes = ctx.get("notes", {})
    checks = [f"{k[6:]}: {v}" for k, v in notes.items() if k.startswith("check_")]
    if checks and not markdown:
        print("\nbyte-for-byte checks: " + ", ".join(checks), file=out)
    skips = [f"{k[8:]}: {v}" for k, v in notes.items() if k.startswith("skipped_")]
    if "peers_skipped" in notes:
        skips.append(f"peers: {notes['peers_skipped']}")
    if skips and not markdown:
        print("skipped: " + "; ".join(skips), file=out)


def print_remote(remote_rows: list, title, markdown: bool, out) -> None:
    title("Network backup (dp420 serve on 127.0.0.1, same file system, cold)")
    head = ["operation", "wall s", "GB/s", "vs fio (wall)", "vs local (speed)", "agent CPU s",
            "agent CPU-s/GiB", "server CPU s", "server CPU-s/GiB", "cores (both)", "disk busy",
            "agent peak RSS", "server peak RSS", "sent", "zero-copy sent", "zc copied",
            "repo size/growth"]
    rows = []
    for r in remote_rows:
        if "wall_s" not in r:
            rows.append([r["operation"], "failed" if r.get("runs") else "-"] + ["-"] * (len(head) - 2))
            continue
        remote = "bytes_sent" in r
        busy = "-" if r.get("disk_busy") is None else f"{100 * r['disk_busy']:.0f} %"
        repo = "-"
        if "repo_after_bytes" in r:
            repo = fmt_bytes(r["repo_after_bytes"]) if " full" in r["operation"] else \
                f"+{fmt_bytes(r['repo_growth_bytes'])}"
        rows.append([r["operation"], f2(r["wall_s"]), f2(r["throughput_bytes_s"] / 1e9), f2(r.get("vs_fio")),
                     f2(r.get("vs_local")), f2(r["cpu_s"]), f2(r["cpu_s_per_gib"], 3),
                     f2(r.get("server_cpu_s")), f2(r.get("server_cpu_s_per_gib"), 3),
                     f2(r.get("cores_both", r.get("cores"))), busy, fmt_bytes(r["max_rss_kib"] * 1024),
                     (fmt_bytes(r["server_max_rss_kib"] * 1024)
                      + (" (lifetime)" if r.get("server_rss_lifetime") else ""))
                     if r.get("server_max_rss_kib") else "-",
                     fmt_bytes(r["bytes_sent"]) if remote else "-",
                     fmt_bytes(r.get("bytes_sent_zerocopy")) if remote else "-",
                     fmt_bytes(r.get("bytes_zerocopy_copied")) if remote else "-", repo])
    table(head, rows, markdown, out)
    if not markdown:
        print("vs fio: wall / fio's runtime reading the changed image (the same size as the base); "
              "vs local: the local backup's wall / the remote one's in the same pair (median); "
              "CPU-s/GiB per GiB of volume; server: dp420 serve's user + system CPU during the step "
              "(/proc/PID/stat); cores (both): agent + server CPU s / wall s; sent: bytes on the wire; "
              "zero-copy sent: block bytes sent with send_zc; zc copied: of those, bytes the kernel "
              "copied anyway (all of them on loopback).", file=out)
        for r in remote_rows:
            if r.get("vs_local_pairs"):
                print(f"{r['operation']}: vs local per pair "
                      + ", ".join(f"{v:.2f}" for v in r["vs_local_pairs"])
                      + (f"; server {r['server_cpu_s_per_gib_received']:.3f} CPU-s per GiB received"
                         if r.get("server_cpu_s_per_gib_received") else ""), file=out)


def main(argv: list) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[1]) as f:
        ctx = json.load(f)
    summary = summarise(load(args[0]), ctx)
    markdown = "--markdown" in argv
    if "--json" in argv:
        print_all(summary, sys.stderr, markdown)
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_all(summary, sys.stdout, markdown)
    missed = [t for t in summary["targets"] if t["result"] == "FAIL"]
    return 1 if missed and "--enforce" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
