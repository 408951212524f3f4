#!/usr/bin/env python3
"""Recomputes a volume's checksum_sha256 independently of dp420.

    volume-checksum.py SOURCE BLOCK_SIZE

checksum_sha256 = SHA-256( SHA-256(block_0) || SHA-256(block_1) || ... )

where block_i is the i-th consecutive BLOCK_SIZE-byte block of the volume (the last
block may be shorter) and || joins the raw 32-byte digests. An empty volume's checksum
is SHA-256 of the empty string. SOURCE may be a file or a block device. The volume is
streamed: memory use does not grow with its size. Prints the hex digest.
"""
import hashlib
import os
import sys

CHUNK_BYTES = 4 << 20


def volume_checksum(path: str, block_size: int) -> str:
    outer = hashlib.sha256()
    # Read whole multiples of block_size so that only the volume's last block is short.
    chunk_bytes = max(block_size, CHUNK_BYTES // block_size * block_size)
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    pending = 0  # bytes of a partially filled chunk (short reads)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view[pending:])
            if n is None:
                continue
            eof = n == 0
            pending += n
            whole = pending // block_size * block_size
            if eof:
                whole = pending
            for off in range(0, whole, block_size):
                end = min(off + block_size, whole)
                outer.update(hashlib.sha256(view[off:end]).digest())
            if eof:
                break
            # Keep a trailing partial block for the next read.
            rest = pending - whole
            if rest:
                buf[:rest] = buf[whole:pending]
            pending = rest
    return outer.hexdigest()


def main(argv: list) -> int:
    if len(argv) != 3:
        print(f"usage: {os.path.basename(argv[0])} SOURCE BLOCK_SIZE", file=sys.stderr)
        return 2
    try:
        block_size = int(argv[2], 0)
    except ValueError:
        print(f"volume-checksum: BLOCK_SIZE must be an integer, got '{argv[2]}'", file=sys.stderr)
        return 2
    if block_size <= 0:
        print(f"volume-checksum: BLOCK_SIZE must be positive, got {block_size}", file=sys.stderr)
        return 2
    try:
        print(volume_checksum(argv[1], block_size))
    except OSError as e:
        print(f"volume-checksum: {argv[1]}: {e.strerror or e}", file=sys.stderr)
        return 4 if isinstance(e, FileNotFoundError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
