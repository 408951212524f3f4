#!/usr/bin/env python3
"""Synthetic volumes and changes for perf/run.sh.

    volume.py make-sparse IMAGE --size BYTES --data-mib N --seed S
        A sparse file of BYTES holding N MiB of random data in 1 MiB pieces at scattered,
        1 MiB-aligned offsets (deterministic for a seed); the rest are holes.

    volume.py patch IMAGE --mib M --chunk-kib K --span BYTES --seed S [--over-data]
        Overwrites M MiB of IMAGE with random data, in pieces of K KiB at distinct
        offsets below SPAN, each a multiple of max(K KiB, 1 MiB) when SPAN allows, else
        of K KiB. The same arguments write the same bytes at the same offsets into any
        image at least SPAN long: "the same absolute change" for two volume sizes.
        --over-data: only offsets whose K KiB already hold a non-zero byte, so the change
        rewrites data in place (as a database or VM image changes) and the image holds
        as many non-zero blocks of K KiB or more afterwards as before.

    volume.py mutate IMAGE --percent P --chunk-kib K --seed S [--slots FILE]
        One night of churn: rewrites P % of IMAGE's non-zero K KiB pieces (K KiB-aligned)
        with random data, in place, at distinct offsets chosen by the seed (capped at the
        pieces that hold data, so it always fits). Pieces that held data still do, so the
        image's count of non-zero K KiB pieces never changes. Prints one JSON line:
        pieces, bytes written, data_pieces (non-zero pieces), piece size. --slots FILE
        caches the list of non-zero pieces (valid while every mutate uses the same K).

    volume.py cmp IMAGE_A IMAGE_B
        Exit 0 when both files have the same size and bytes. Reads only the ranges where
        either file has data (SEEK_DATA/SEEK_HOLE): outside them both read as zeros, so a
        64 GiB sparse pair compares in the time of its data.
"""
import argparse
import json
import os
import random
import sys

MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def write_pieces(path: str, offsets: list, piece: int, rng: random.Random) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in offsets:
            data = rng.randbytes(piece)
            done = 0
            while done < piece:
                done += os.pwrite(fd, data[done:], off + done)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_sparse(args) -> int:
    size = parse_size(args.size)
    slots = size // MIB
    if args.data_mib > slots:
        print("volume.py: more data than the volume holds", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    offsets = sorted(rng.sample(range(slots), args.data_mib))
    tmp = args.image + ".tmp"
    with open(tmp, "wb") as f:
        f.truncate(size)
    write_pieces(tmp, [o * MIB for o in offsets], MIB, rng)
    os.rename(tmp, args.image)
    return 0


def data_slots(path: str, slots: range, align: int, piece: int) -> list:
    """The slots whose piece (at slot * align) holds a non-zero byte."""
    zero = bytes(piece)
    fd = os.open(path, os.O_RDONLY)
    try:
        return [s for s in slots if os.pread(fd, piece, s * align) != zero]
    finally:
        os.close(fd)


def patch(args) -> int:
    piece = args.chunk_kib << 10
    span = parse_size(args.span)
    count = (args.mib * MIB) // piece
    align = max(piece, MIB)
    if span // align < count:
        align = piece
    slots = range(span // align)
    if os.path.getsize(args.image) < span:
        print(f"volume.py: {args.image} is shorter than the span {span}", file=sys.stderr)
        return 2
    if args.over_data:
        slots = data_slots(args.image, slots, align, piece)
    if len(slots) < count:
        where = "pieces holding data" if args.over_data else f"{span} bytes"
        print(f"volume.py: {args.mib} MiB in {args.chunk_kib} KiB pieces do not fit in {where}",
              file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    offsets = sorted(rng.sample(slots, count))
    write_pieces(args.image, [o * align for o in offsets], piece, rng)
    return 0


def mutate(args) -> int:
    piece = args.chunk_kib << 10
    size = os.path.getsize(args.image)
    slots = None
    if args.slots and os.path.exists(args.slots):
        with open(args.slots) as f:
            cached = json.load(f)
        if cached.get("piece") == piece and cached.get("size") == size:
            slots = cached["slots"]
    if slots is None:
        slots = data_slots(args.image, range(size // piece), piece, piece)
        if args.slots:
            with open(args.slots + ".tmp", "w") as f:
                json.dump({"piece": piece, "size": size, "slots": slots}, f)
            os.rename(args.slots + ".tmp", args.slots)
    count = min(len(slots), round(len(slots) * args.percent / 100))
    if args.percent > 0:
        count = min(len(slots), max(1, count))
    rng = random.Random(args.seed)
    offsets = sorted(rng.sample(slots, count))
    write_pieces(args.image, [o * piece for o in offsets], piece, rng)
    print(json.dumps({"pieces": count, "bytes": count * piece, "data_pieces": len(slots),
                      "piece_bytes": piece, "seed": args.seed}))
    return 0


def data_ranges(fd: int, size: int) -> list:
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def compare(args) -> int:
    fa = os.open(args.a, os.O_RDONLY)
    fb = os.open(args.b, os.O_RDONLY)
    try:
        size = os.fstat(fa).st_size
        if os.fstat(fb).st_size != size:
            print(f"volume.py: sizes differ: {args.a} {size}, {args.b} {os.fstat(fb).st_size}",
                  file=sys.stderr)
            return 1
        ranges = sorted(data_ranges(fa, size) + data_ranges(fb, size))
        merged = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        step = 8 * MIB
        for start, end in merged:
            for off in range(start, end, step):
                n = min(step, end - off)
                if os.pread(fa, n, off) != os.pread(fb, n, off):
                    print(f"volume.py: {args.a} and {args.b} differ in [{off}, {off + n})",
                          file=sys.stderr)
                    return 1
        return 0
    finally:
        os.close(fa)
        os.close(fb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make-sparse")
    s.add_argument("image")
    s.add_argument("--size", required=True)
    s.add_argument("--data-mib", type=int, required=True)
    s.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("patch")
    s.add_argument("image")
    s.add_argument("--mib", type=int, required=True)
    s.add_argument("--chunk-kib", type=int, default=256)
    s.add_argument("--span", required=True)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--over-data", action="store_true")
    s = sub.add_parser("mutate")
    s.add_argument("image")
    s.add_argument("--percent", type=float, required=True)
    s.add_argument("--chunk-kib", type=int, default=64)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--slots")
    s = sub.add_parser("cmp")
    s.add_argument("a")
    s.add_argument("b")
    args = p.parse_args()
    return {"make-sparse": make_sparse, "patch": patch, "mutate": mutate,
            "cmp": compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
