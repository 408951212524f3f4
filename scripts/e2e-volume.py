#!/usr/bin/env python3
"""Builds and changes realistic test volumes for the demo, perf/ and tests/e2e.

    e2e-volume.py stage DEST --real-mib N [--random-mib M] [--roots DIR,DIR...]
        Copies real files (regular files and symlinks) from ROOTS into DEST/real/ until
        about N MiB are staged, then writes M MiB of random files into DEST/random/.
        DEST is then fed to `mkfs.ext4 -d DEST`.

    e2e-volume.py mutate TREE [--percent P] [--seed S] [--add-file-mib N] [--debugfs-image IMG]
        Changes about P % of TREE's files, deterministically for a given file list and
        seed: patches bytes in place, appends, deletes, and adds new files, in turn;
        --add-file-mib also adds one random file of N MiB at TREE's top.
        TREE is a mounted file system, or (with --debugfs-image) a staging tree that
        mirrors IMG's root: the same changes are then replayed onto IMG through
        `debugfs -w`, which needs no root and no mount.
"""
import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

MIB = 1 << 20
DEFAULT_ROOTS = [
    "/usr/share/doc",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/share",
    "/usr/lib",
    "/usr/bin",
    "/usr/include",
]
# debugfs splits commands on blanks; keep to names it takes without quoting.
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9._+@,=-]+$")


def log(msg: str) -> None:
    print(f"e2e-volume: {msg}", file=sys.stderr)


class Stager:
    def __init__(self, dest: str, budget_bytes: int):
        self.dest = dest
        self.budget_bytes = budget_bytes
        self.copied_bytes = 0
        self.files = 0
        self.links = 0
        self.seen = set()  # (st_dev, st_ino) already copied, roots may overlap

    def full(self) -> bool:
        return self.budget_bytes - self.copied_bytes < 64 * 1024

    def copy_file(self, src: str, dst: str) -> None:
        try:
            st = os.lstat(src)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen or st.st_size > self.budget_bytes - self.copied_bytes:
            return
        try:
            shutil.copyfile(src, dst, follow_symlinks=False)
        except OSError:
            return  # unreadable or vanished: not needed for a realistic volume
        os.chmod(dst, (st.st_mode & 0o777) | 0o600)
        self.seen.add(key)
        self.copied_bytes += st.st_size
        self.files += 1

    def copy_link(self, src: str, dst: str) -> None:
        try:
            os.symlink(os.readlink(src), dst)
            self.links += 1
        except OSError:
            pass

    def stage_root(self, root: str, pass_no: int) -> None:
        base = os.path.join(self.dest, "real", f"pass{pass_no}", root.strip("/"))
        for dirpath, dirnames, filenames in os.walk(root):
            if self.full():
                return
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            out_dir = os.path.normpath(os.path.join(base, rel))
            os.makedirs(out_dir, exist_ok=True)
            for name in list(dirnames):
                if os.path.islink(os.path.join(dirpath, name)):
                    self.copy_link(os.path.join(dirpath, name), os.path.join(out_dir, name))
                    dirnames.remove(name)
            for name in sorted(filenames):
                if self.full():
                    return
                src = os.path.join(dirpath, name)
                dst = os.path.join(out_dir, name)
                if os.path.islink(src):
                    self.copy_link(src, dst)
                elif os.path.isfile(src):
                    self.copy_file(src, dst)


def write_random_files(dest: str, total_bytes: int, seed: int) -> int:
    rng = random.Random(seed)
    out_dir = os.path.join(dest, "random")
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    index = 0
    while written < total_bytes:
        size = min(total_bytes - written, rng.randint(256 * 1024, 16 * MIB))
        with open(os.path.join(out_dir, f"rand-{index:03d}.bin"), "wb") as f:
            left = size
            while left > 0:
                n = min(left, MIB)
                f.write(os.urandom(n))
                left -= n
        written += size
        index += 1
    return index


def cmd_stage(args) -> int:
    if os.path.exists(args.dest) and os.listdir(args.dest):
        log(f"{args.dest} exists and is not empty; remove it first")
        return 1
    os.makedirs(args.dest, exist_ok=True)
    roots = [r for r in args.roots.split(",") if r]
    stager = Stager(args.dest, args.real_mib * MIB)
    # Roots smaller than the budget are copied again under pass2/, pass3/ (by inode
    # the same files, so the dedup set is reset per pass).
    for pass_no in range(1, 6):
        stager.seen.clear()
        before = stager.copied_bytes
        for root in roots:
            if stager.full():
                break
            if os.path.isdir(root):
                stager.stage_root(root, pass_no)
        if stager.full() or stager.copied_bytes == before:
            break
    count = write_random_files(args.dest, args.random_mib * MIB, args.seed)
    log(f"staged {stager.files} files ({stager.copied_bytes / MIB:.1f} MiB) and "
        f"{stager.links} symlinks from {', '.join(roots)}; "
        f"{count} random files ({args.random_mib} MiB) in {args.dest}")
    if stager.copied_bytes < args.real_mib * MIB * 0.9:
        log(f"warning: only {stager.copied_bytes / MIB:.1f} of {args.real_mib} MiB "
            "real files found")
    return 0


def list_files(tree: str) -> list:
    files = []
    for dirpath, dirnames, filenames in os.walk(tree):
        rel_dir = os.path.relpath(dirpath, tree)
        if rel_dir == ".":
            rel_dir = ""
            if "lost+found" in dirnames:
                dirnames.remove("lost+found")
        dirnames.sort()
        if rel_dir and not all(SAFE_COMPONENT.match(c) for c in rel_dir.split(os.sep)):
            continue
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if SAFE_COMPONENT.match(name) and os.path.isfile(path) and not os.path.islink(path):
                files.append(os.path.join(rel_dir, name))
    return files


class Mutator:
    """Applies changes to a tree and records them as debugfs commands."""

    def __init__(self, tree: str, rng: random.Random):
        self.tree = tree
        self.rng = rng
        self.commands = []
        self.counts = {"patched": 0, "appended": 0, "deleted": 0, "added": 0}
        self.bytes_written = 0

    def _replace_in_image(self, rel: str, existed: bool) -> None:
        parent, name = os.path.split(rel)
        self.commands.append(f"cd /{parent}")
        if existed:
            self.commands.append(f"rm {name}")
        self.commands.append(f"write {os.path.join(self.tree, rel)} {name}")

    def patch(self, rel: str) -> None:
        path = os.path.join(self.tree, rel)
        size = os.path.getsize(path)
        if size == 0:
            self.append(rel)
            return
        length = min(size, self.rng.randint(1, 64 * 1024))
        offset = self.rng.randint(0, size - length)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(self.rng.randbytes(length))
        self.bytes_written += length
        self.counts["patched"] += 1
        self._replace_in_image(rel, True)

    def append(self, rel: str) -> None:
        length = self.rng.randint(1, 256 * 1024)
        with open(os.path.join(self.tree, rel), "ab") as f:
            f.write(self.rng.randbytes(length))
        self.bytes_written += length
        self.counts["appended"] += 1
        self._replace_in_image(rel, True)

    def delete(self, rel: str) -> None:
        os.unlink(os.path.join(self.tree, rel))
        parent, name = os.path.split(rel)
        self.commands += [f"cd /{parent}", f"rm {name}"]
        self.counts["deleted"] += 1

    def add(self, rel: str, tag: str) -> None:
        parent = os.path.dirname(rel)
        new_rel = os.path.join(parent, f"added-{tag}.bin")
        if os.path.exists(os.path.join(self.tree, new_rel)):
            self.patch(new_rel)
            return
        length = self.rng.randint(4 * 1024, 1024 * 1024)
        with open(os.path.join(self.tree, new_rel), "wb") as f:
            f.write(self.rng.randbytes(length))
        self.bytes_written += length
        self.counts["added"] += 1
        self._replace_in_image(new_rel, False)


def run_debugfs(image: str, commands: list) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
        f.write("\n".join(commands + ["cd /"]) + "\n")
        script = f.name
    try:
        proc = subprocess.run(["debugfs", "-w", "-f", script, image],
                              capture_output=True, text=True, check=False)
    finally:
        os.unlink(script)
    # debugfs exits 0 even when a request fails; its errors go to stderr.
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise RuntimeError(f"debugfs -w {image} failed (exit {proc.returncode}): "
                           + "; ".join(errors[:5]))


def cmd_mutate(args) -> int:
    files = list_files(args.tree)
    if not files:
        log(f"no files to change in {args.tree}")
        return 1
    rng = random.Random(args.seed)
    count = min(len(files), max(args.min_files, round(len(files) * args.percent / 100)))
    chosen = rng.sample(files, count)
    mutator = Mutator(args.tree, rng)
    for k, rel in enumerate(chosen):
        kind = k % 4
        if kind == 0:
            mutator.patch(rel)
        elif kind == 1:
            mutator.append(rel)
        elif kind == 2:
            mutator.delete(rel)
        else:
            mutator.add(rel, f"{args.seed}-{k}")
    if args.add_file_mib > 0:
        bulk = f"bulk-{args.seed}.bin"
        if os.path.exists(os.path.join(args.tree, bulk)):
            bulk = f"bulk-{args.seed}-{rng.randrange(1 << 30)}.bin"
        with open(os.path.join(args.tree, bulk), "wb") as f:
            for _ in range(args.add_file_mib):
                f.write(rng.randbytes(MIB))
        mutator.bytes_written += args.add_file_mib * MIB
        mutator.counts["added"] += 1
        mutator._replace_in_image(bulk, False)
    if args.debugfs_image:
        run_debugfs(args.debugfs_image, mutator.commands)
    c = mutator.counts
    where = f"{args.debugfs_image} (via debugfs)" if args.debugfs_image else args.tree
    log(f"changed {count} of {len(files)} files in {where}: {c['patched']} patched, "
        f"{c['appended']} appended, {c['deleted']} deleted, {c['added']} added; "
        f"{mutator.bytes_written / MIB:.2f} MiB of new bytes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="stage real and random files for mkfs.ext4 -d")
    stage.add_argument("dest")
    stage.add_argument("--real-mib", type=int, required=True)
    stage.add_argument("--random-mib", type=int, default=0)
    stage.add_argument("--roots", default=",".join(DEFAULT_ROOTS))
    stage.add_argument("--seed", type=int, default=1)
    mutate = sub.add_parser("mutate", help="change about P %% of the files of a tree")
    mutate.add_argument("tree")
    mutate.add_argument("--percent", type=float, default=1.0)
    mutate.add_argument("--seed", type=int, default=1)
    mutate.add_argument("--min-files", type=int, default=4)
    mutate.add_argument("--add-file-mib", type=int, default=0)
    mutate.add_argument("--debugfs-image", default="")
    args = parser.parse_args()
    try:
        return cmd_stage(args) if args.command == "stage" else cmd_mutate(args)
    except (OSError, RuntimeError) as e:
        log(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
