#!/usr/bin/env python3
"""Tables of a perf/lifecycle.sh run (Markdown on stdout).

    lifecycle_report.py RESULTS.jsonl CONTEXT.json

Per night: the churn, dp420's backup and forget --prune (wall, what prune repacked, peak
RSS), the repository's size against the unique data of the kept snapshots (counted
independently of dp420, and as `dp420 stats` counts its referenced bytes), and restic's
backup and forget --prune on the same nights. Then the targets, the --max-unused sweep
and prune's peak RSS against the repository's pack bytes.
"""
import json
import statistics
import sys

MIB = 1 << 20
GIB = 1 << 30
SMALL_COPY = 64 * MIB  # a night whose prune copied less did not repack a data pack
SLOT = 4096  # prune's live bitmap: one bit per 4 KiB slot of a pack


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def find_prune(doc):
    """The prune report in dp420's --json output (forget --prune nests it under "prune")."""
    if not isinstance(doc, dict):
        return None
    if "packs_rewritten" in doc:
        return doc
    for v in doc.values():
        r = find_prune(v)
        if r:
            return r
    return None


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def med(xs):
    return statistics.median(xs) if xs else None


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    recs = load(argv[1])
    with open(argv[2]) as f:
        ctx = json.load(f)
    keep, piece = ctx["keep"], ctx["piece_bytes"]
    data_bytes = ctx["data_pieces"] * piece
    by = {}
    for r in recs:
        by[(r.get("tool"), r.get("op"), r.get("night", r.get("max_unused", r.get("volumes"))))] = r
    failed = [r["label"] for r in recs if r.get("exit_code", 0) != 0]
    nights = ctx["nights"]
    written = {n: by.get(("mutate", "mutate", n), {}).get("mutate", {}).get("bytes", 0)
               for n in range(nights + 1)}

    out = []
    p = out.append
    p(f"Run: `{ctx['command'].strip()}`, {ctx['date']}, commit {ctx['commit']}, "
      f"{ctx['dp420_version']}; {ctx.get('restic_version') or 'restic not run'}; "
      f"caches {ctx['caches']}, {ctx['cpus']} CPUs, kernel {ctx['kernel']}, "
      f"{ctx['run_seconds']:.0f} s in all.")
    p("")
    p(f"Volume: {ctx['volume_bytes'] / GIB:.2f} GiB image, {data_bytes / GIB:.2f} GiB in non-zero "
      f"{piece >> 10} KiB pieces; each night rewrites {ctx['percent']} % of them in place; "
      f"forget keeps the newest snapshot of each of the last {keep} days "
      f"(`--keep-daily {keep}`, one backup a night).")
    p("")
    if failed:
        p(f"**Failed steps:** {', '.join(failed)}")
        p("")

    full = by.get(("dp420", "full", 0))
    full_s = full["wall_s"] if full else None
    p("| night | churn MiB | dp420 backup s | forget+prune s | ÷ cold full | repacked packs / MiB copied "
      "| prune peak RSS MiB | repo GiB | unique GiB | repo ÷ unique | repo ÷ referenced "
      "| restic backup s | restic forget+prune s | restic ÷ dp420 | restic repo GiB |")
    p("|" + "---|" * 15)
    rows = []
    for n in range(nights + 1):
        b = by.get(("dp420", "full" if n == 0 else "incremental", n))
        fp = by.get(("dp420", "forget-prune", n))
        st = by.get(("dp420", "state", n))
        rb = by.get(("restic", "full" if n == 0 else "incremental", n))
        rf = by.get(("restic", "forget-prune", n))
        rs = by.get(("restic", "state", n))
        first = max(0, n - keep + 1)
        unique = data_bytes + sum(written[k] for k in range(first + 1, n + 1))
        prune = find_prune(fp.get("dp420")) if fp else None
        repo = st["repo_bytes"] if st else None
        referenced = st["stats"]["bytes_referenced"] if st else None
        row = {
            "night": n, "backup_s": b["wall_s"] if b else None,
            "fp_s": fp["wall_s"] if fp else None,
            "fp_rss": fp["max_rss_kib"] / 1024 if fp else None,
            "rewritten": prune["packs_rewritten"] if prune else 0,
            "copied": prune["bytes_copied"] if prune else 0,
            "repo": repo, "unique": unique,
            "ratio": repo / unique if repo else None,
            "ratio_ref": repo / referenced if repo and referenced else None,
            "r_backup_s": rb["wall_s"] if rb else None,
            "r_fp_s": rf["wall_s"] if rf else None,
            "r_repo": rs["repo_bytes"] if rs else None,
        }
        row["r_ratio"] = row["r_fp_s"] / row["fp_s"] if row["r_fp_s"] and row["fp_s"] else None
        row["vs_full"] = row["fp_s"] / full_s if row["fp_s"] and full_s else None
        rows.append(row)
        p(f"| {n} | {written[n] / MIB:.0f} | {fmt(row['backup_s'])} | {fmt(row['fp_s'])} "
          f"| {fmt(row['vs_full'], 3)} | "
          f"{row['rewritten']} / {row['copied'] / MIB:.1f} | {fmt(row['fp_rss'], 1)} "
          f"| {fmt(repo / GIB if repo else None, 3)} | {unique / GIB:.3f} | {fmt(row['ratio'], 3)} "
          f"| {fmt(row['ratio_ref'], 3)} | {fmt(row['r_backup_s'])} | {fmt(row['r_fp_s'])} "
          f"| {fmt(row['r_ratio'], 1)} | {fmt(row['r_repo'] / GIB if row['r_repo'] else None, 3)} |")
    p("")

    # --- targets -------------------------------------------------------------------------
    later = [r for r in rows if r["night"] >= 1 and r["ratio"]]
    ratios = [r["ratio"] for r in later]
    ratios_ref = [r["ratio_ref"] for r in later if r["ratio_ref"]]
    # "Without repack": nights whose prune copied less than SMALL_COPY (every night from the
    # first forget on rewrites a few small packs).
    plain = [r for r in rows if r["night"] >= 1 and r["fp_s"] and r["copied"] < SMALL_COPY]
    repack_nights = [r for r in rows if r["night"] >= 1 and r["fp_s"] and r["copied"] >= SMALL_COPY]
    vs_full = [r["vs_full"] for r in plain if r["vs_full"]]
    r_rows = [r for r in rows if r["r_ratio"]]
    r_ratios = [r["r_ratio"] for r in r_rows]
    p("| target | measured | met? |")
    p("|---|---|---|")
    if ratios:
        worst = max(ratios)
        p(f"| repository ≤ 1.15 × unique data of the kept snapshots (nights 1–{nights}) "
          f"| max {worst:.3f}, median {med(ratios):.3f} (÷ `stats` referenced bytes: max "
          f"{fmt(max(ratios_ref) if ratios_ref else None, 3)}, median {fmt(med(ratios_ref), 3)}) "
          f"| {'yes' if worst <= 1.15 else 'no'} |")
    if vs_full and full_s:
        worst = max(vs_full)
        over = [r["night"] for r in plain if r["vs_full"] > 0.1]
        p(f"| forget + prune without repack (< {SMALL_COPY // MIB} MiB copied) ≤ 0.1 × cold full "
          f"backup ({full_s:.2f} s), {len(plain)} nights | median {med([r['fp_s'] for r in plain]):.2f} s "
          f"= {med(vs_full):.3f} ×, max {worst:.3f} ×"
          f"{' (over 0.1 on night ' + ', '.join(map(str, over)) + ')' if over else ''} "
          f"| {'yes' if worst <= 0.1 else 'median only' if med(vs_full) <= 0.1 else 'no'} |")
    if repack_nights and full_s:
        p(f"| (nights that repacked data packs: {', '.join(str(r['night']) for r in repack_nights)}) "
          f"| {', '.join('%.1f s / %.0f MiB = %.2f ×' % (r['fp_s'], r['copied'] / MIB, r['vs_full']) for r in repack_nights)} | – |")
    if r_ratios:
        tot_r = sum(r["r_fp_s"] for r in r_rows)
        tot_d = sum(r["fp_s"] for r in r_rows)
        p(f"| restic forget --prune ≥ 10 × slower per night (nights "
          f"{r_rows[0]['night']}–{r_rows[-1]['night']}) | per night min {min(r_ratios):.1f} ×, "
          f"median {med(r_ratios):.1f} ×; in total {tot_r:.1f} s vs {tot_d:.1f} s = {tot_r / tot_d:.1f} × "
          f"| {'yes' if min(r_ratios) >= 10 else 'median only' if med(r_ratios) >= 10 else 'no'} |")

    # --- sweep -----------------------------------------------------------------------------
    sweep = sorted({r["max_unused"] for r in recs if r.get("op") == "sweep"}, reverse=True)
    repack_vs_cp = []
    if sweep:
        p("")
        p(f"Sweep: dp420's repository after night {ctx['sweep_night']}'s backup "
          f"({ctx['sweep_night'] + 1} snapshots, nothing forgotten), copied per value, then "
          f"`forget --keep-last 1 --prune --max-unused X` (cold).")
        p("")
        p("| --max-unused | wall s | packs deleted | packs rewritten | MiB copied | repo GiB after "
          "| repo ÷ referenced | repack MiB/s | cp -a + sync MiB/s | repack ÷ cp | peak RSS MiB |")
        p("|" + "---|" * 11)
        for x in sweep:
            s = by.get(("dp420", "sweep", x))
            c = by.get(("cp", "copy-repo", x))
            st = by.get(("dp420", "sweep-state", x))
            pr = find_prune(s.get("dp420")) if s else None
            if not s or not pr:
                p(f"| {x} | failed |" + " |" * 9)
                continue
            cp_rate = c["bytes"] / c["wall_s"] / MIB if c else None
            rate = pr["bytes_copied"] / s["wall_s"] / MIB if pr["bytes_copied"] else None
            rel = rate / cp_rate if rate and cp_rate and pr["bytes_copied"] >= 64 * MIB else None
            if rel:
                repack_vs_cp.append(rel)
            ref = st["stats"]["bytes_referenced"] if st else None
            p(f"| {x} % | {s['wall_s']:.2f} | {pr['packs_deleted']} | {pr['packs_rewritten']} "
              f"| {pr['bytes_copied'] / MIB:.1f} | {fmt(st['repo_bytes'] / GIB if st else None, 3)} "
              f"| {fmt(st['repo_bytes'] / ref if st and ref else None, 3)} | {fmt(rate, 0)} "
              f"| {fmt(cp_rate, 0)} | {fmt(rel, 2)} | {s['max_rss_kib'] / 1024:.1f} |")
        p("")
        if repack_vs_cp:
            p(f"Repack throughput (bytes copied ÷ the whole forget + prune's wall, mark and delete "
              f"included) ÷ `cp -a` + sync of the repository measured just before: "
              f"{min(repack_vs_cp):.2f}–{max(repack_vs_cp):.2f} × (target ≥ 0.8: "
              f"{'met' if min(repack_vs_cp) >= 0.8 else 'missed' if max(repack_vs_cp) < 0.8 else 'met only in part'}).")

    # --- memory ----------------------------------------------------------------------------
    mem = sorted((r for r in recs if r.get("op") == "memory-prune"), key=lambda r: r["volumes"])
    if mem:
        p("")
        p("Prune's peak RSS against the repository's size (`dp420 prune`, default --max-unused, "
          "after each volume's full backup):")
        p("")
        p("| volumes | snapshots | packs | pack GiB | peak RSS MiB | of it the live bitmaps (pack bytes ÷ 32768) KiB | wall s |")
        p("|---|---|---|---|---|---|---|")
        pts = []
        for r in mem:
            pr = find_prune(r.get("dp420")) or {}
            pb = pr.get("pack_bytes_before", r.get("repo_after_bytes", 0))
            pts.append((pb, r["max_rss_kib"] / 1024))
            p(f"| {r['volumes']} | {pr.get('snapshots', '–')} | {pr.get('packs_before', '–')} "
              f"| {pb / GIB:.2f} | {r['max_rss_kib'] / 1024:.1f} | {pb / (8 * SLOT) / 1024:.0f} "
              f"| {r['wall_s']:.2f} |")
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            slope = (pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) / GIB)
            p("")
            p(f"Growth: {slope:.2f} MiB of peak RSS per GiB of packs between the smallest and the "
              f"largest repository (the bitmaps alone: {GIB / (8 * SLOT) / 1024:.0f} KiB per GiB).")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
