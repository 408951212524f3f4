#!/usr/bin/env python3
"""Runs one command and records what it cost.

    measure.py RESULTS.jsonl LABEL [--stdout FILE [--parse fio|KEY]] [--meta JSON] -- CMD...

Appends one JSON object to RESULTS.jsonl: label, argv, exit code, wall seconds, user and
system CPU seconds, peak RSS and the bytes the command (and every child it waited for)
read from and wrote to storage, as the kernel counts them for getrusage(2):
ru_inblock/ru_oublock in 512-byte units. Exits with the command's exit code.

--parse fio adds the read bandwidth, bytes and runtime from fio's JSON output (in FILE);
--parse KEY adds FILE's JSON object under KEY (dp420 --json output).

Peak RSS comes from GNU time (/usr/bin/time): a child forked from this Python process
would report at least Python's own RSS, since exec keeps the old image's high-water mark.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

GNU_TIME = "/usr/bin/time"


def parse_output(path: str, kind: str) -> dict:
    with open(path) as f:
        text = f.read()
    # fio may print notes before its JSON document.
    doc = json.loads(text[text.index("{"):])
    if kind != "fio":
        return {kind: doc}
    read = doc["jobs"][0]["read"]
    return {"fio": {"bw_bytes": read["bw_bytes"], "io_bytes": read["io_bytes"],
                    "runtime_ms": read["runtime"], "iops": read["iops"]}}


def main(argv: list) -> int:
    if "--" not in argv or len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    sep = argv.index("--")
    opts, cmd = argv[1:sep], argv[sep + 1:]
    results, label = opts[0], opts[1]
    stdout_path, parse, meta = None, None, {}
    rest = opts[2:]
    while rest:
        if rest[0] == "--stdout" and len(rest) >= 2:
            stdout_path, rest = rest[1], rest[2:]
        elif rest[0] == "--parse" and len(rest) >= 2:
            parse, rest = rest[1], rest[2:]
        elif rest[0] == "--meta" and len(rest) >= 2:
            meta, rest = json.loads(rest[1]), rest[2:]
        else:
            print(f"measure.py: unknown option {rest[0]}", file=sys.stderr)
            return 2
    out = open(stdout_path, "wb") if stdout_path else None
    rss_file = tempfile.NamedTemporaryFile("r", suffix=".rss")
    wrapped = cmd
    if os.access(GNU_TIME, os.X_OK):
        wrapped = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name] + cmd
    start = time.monotonic()
    # Without --stdout the command's output goes to stderr: stdout is for results.
    proc = subprocess.Popen(wrapped, stdout=out if out else sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if out:
        out.close()
    max_rss_kib = usage.ru_maxrss
    lines = rss_file.read().split()
    if lines and lines[-1].isdigit():
        max_rss_kib = int(lines[-1])
    rss_file.close()
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    record = {
        "label": label,
        "argv": cmd,
        "exit_code": rc,
        "wall_s": round(wall_s, 4),
        "user_s": round(usage.ru_utime, 4),
        "sys_s": round(usage.ru_stime, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
        "max_rss_kib": max_rss_kib,
        "read_bytes": usage.ru_inblock * 512,
        "written_bytes": usage.ru_oublock * 512,
    }
    record.update(meta)
    if parse and stdout_path and rc == 0:
        try:
            record.update(parse_output(stdout_path, parse))
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"measure.py: {label}: cannot parse {stdout_path}: {e}", file=sys.stderr)
            rc = rc or 1
            record["exit_code"] = rc
    with open(results, "a") as f:
        f.write(json.dumps(record) + "\n")
    if rc != 0:
        what = f"signal {signal.Signals(rc - 128).name}" if rc > 128 else f"exit {rc}"
        print(f"measure.py: {label}: {' '.join(cmd)} failed ({what})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
