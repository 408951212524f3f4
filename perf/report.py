#!/usr/bin/env python3
"""Summarises perf/run.sh measurements.

    report.py RESULTS.jsonl CONTEXT.json [--json] [--enforce]

RESULTS.jsonl holds one measure.py record per command (label, pair, wall_s, cpu_s, ...);
dp420 backups also carry their --json output under "dp420". Per operation the table shows
medians over the pairs; ratios are the medians of per-pair ratios, since a shared machine
drifts between pairs but much less within one.

Ratio to yardstick (wall / yardstick wall, same pair): the incremental backup against
fio's O_DIRECT read of the changed image (fio's own runtime); the full backup and the
restore against `cp --sparse=always` of the volume + sync. Backups also get ratio_fio,
against fio's read of the same image, as in MEASURED.md's table of peers.
Target: the incremental backup's throughput at least TARGET x fio's (ratio <= 1/TARGET).
With --enforce the exit code is 1 when a target is missed.
"""
import json
import statistics
import sys

GIB = 1 << 30

# label, row name, yardstick label, fio read of the same image
ROWS = [
    ("fio-base", "fio read, base image", None, None),
    ("full", "dp420 full backup", "cp", "fio-base"),
    ("fio-changed", "fio read, changed image", None, None),
    ("incremental", "dp420 incremental backup", "fio-changed", "fio-changed"),
    ("cp", "cp --sparse=always + sync", None, None),
    ("restore", "dp420 restore + sync", "cp", None),
]


def load(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def yardstick_s(rec: dict) -> float:
    """fio's own runtime for fio records, the wall time for everything else."""
    fio = rec.get("fio")
    if fio and fio.get("bw_bytes"):
        return fio["io_bytes"] / fio["bw_bytes"]
    return rec["wall_s"]


def pair_ratios(recs: dict, yard_recs: dict) -> list:
    """wall / yardstick time for every pair where both succeeded."""
    out = []
    for pair, rec in recs.items():
        yard = yard_recs.get(pair)
        if rec["exit_code"] == 0 and yard and yard["exit_code"] == 0:
            out.append(rec["wall_s"] / yardstick_s(yard))
    return out


def summarise(records: list, ctx: dict) -> dict:
    by_label = {}
    for rec in records:
        by_label.setdefault(rec["label"], {})[rec.get("pair", 0)] = rec
    target = float(ctx["incremental_target"])
    volume_gib = ctx["volume_size"] / GIB
    rows = []
    for label, name, yard_label, fio_label in ROWS:
        recs = by_label.get(label, {})
        if not recs:
            continue
        ok = [r for r in recs.values() if r["exit_code"] == 0]
        med = lambda key: statistics.median(r[key] for r in ok) if ok else None
        row = {"label": label, "operation": name, "runs": len(recs),
               "failed_runs": len(recs) - len(ok)}
        if ok:
            row.update({
                "wall_s": med("wall_s"),
                "cpu_s": med("cpu_s"),
                "cpu_s_per_gib": med("cpu_s") / volume_gib,
                "max_rss_kib": max(r["max_rss_kib"] for r in ok),
                "written_bytes": med("written_bytes"),
            })
            if label.startswith("fio"):
                row["throughput_bytes_s"] = statistics.median(
                    r["fio"]["bw_bytes"] for r in ok if r.get("fio"))
            else:
                row["throughput_bytes_s"] = ctx["volume_size"] / row["wall_s"]
            reported = [r["dp420"]["bytes_written"] for r in ok if r.get("dp420")]
            if reported:
                row["dp420_bytes_written"] = statistics.median(reported)
        ratios = pair_ratios(recs, by_label.get(yard_label, {}))
        if ratios:
            row["ratio"] = statistics.median(ratios)
            row["yardstick"] = yard_label
        fio_ratios = pair_ratios(recs, by_label.get(fio_label, {}))
        if fio_ratios:
            row["ratio_fio"] = statistics.median(fio_ratios)
        if label == "incremental":
            row["target"] = f"throughput >= {target:g} x fio (ratio <= {1 / target:.2f})"
            row["pass"] = bool(ratios) and not row["failed_runs"] and row["ratio"] <= 1 / target
        elif label in ("full", "restore"):
            row["pass"] = not row["failed_runs"]
        if label == "restore" and "restore_bit_exact" in ctx:
            row["pass"] = row.get("pass", True) and ctx["restore_bit_exact"]
        rows.append(row)
    return {"context": ctx, "rows": rows}


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def print_table(summary: dict, out) -> None:
    ctx = summary["context"]
    print(f"\nvolume {fmt_bytes(ctx['volume_size'])} ({ctx.get('volume_note', '')}), "
          f"{ctx['pairs']} pair(s), caches {ctx['caches']}, medians", file=out)
    ds = ctx.get("dataset", {})
    changed = [f"{k.split('_')[-1]} {v} %" for k, v in ds.items()
               if k.startswith("changed_blocks_pct_")]
    if changed:
        print(f"blocks that differ between the base and the changed image: {', '.join(changed)}; "
              f"all-zero 4 KiB blocks: {ds.get('zero_4k_blocks_pct', '?')} %", file=out)
    head = (f"{'operation':<27} {'wall s':>7} {'CPU s':>7} {'CPU-s/GiB':>9} {'peak RSS':>10} "
            f"{'written':>10} {'GB/s':>6} {'yardstick':>11} {'ratio':>6} {'vs fio':>6}  "
            f"{'target':<40} {'result'}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in summary["rows"]:
        if "wall_s" not in r:
            print(f"{r['operation']:<27} all {r['runs']} run(s) failed", file=out)
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        ratio_fio = f"{r['ratio_fio']:.2f}" if "ratio_fio" in r else "-"
        yard = r.get("yardstick", "-")
        result = "-" if "pass" not in r else ("pass" if r["pass"] else "FAIL")
        print(f"{r['operation']:<27} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} "
              f"{r['cpu_s_per_gib']:>9.2f} "
              f"{fmt_bytes(r['max_rss_kib'] * 1024):>10} {fmt_bytes(r['written_bytes']):>10} "
              f"{r['throughput_bytes_s'] / 1e9:>6.2f} {yard:>11} {ratio:>6} {ratio_fio:>6}  "
              f"{r.get('target', '-'):<40} {result}",
              file=out)
    print("ratio: wall / the yardstick's wall in the same pair (fio: its own runtime); "
          "vs fio: wall / fio read of the same image; GB/s: volume bytes / wall; "
          "written: bytes the kernel counted as written by the command", file=out)


def main(argv: list) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[1]) as f:
        ctx = json.load(f)
    summary = summarise(load(args[0]), ctx)
    if "--json" in argv:
        print_table(summary, sys.stderr)
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary, sys.stdout)
    failed = [r for r in summary["rows"] if r.get("pass") is False]
    return 1 if failed and "--enforce" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
