#!/usr/bin/env python3
"""Runs one command and records what it cost.

    measure.py RESULTS.jsonl LABEL [--stdout FILE [--parse fio|KEY]] [--meta JSON] [--du PATH]
               [--disk NAME] [--server-pid PID] -- CMD...

Appends one JSON object to RESULTS.jsonl: label, argv, exit code, wall seconds, user and
system CPU seconds, peak RSS and the bytes the command (and every child it waited for)
read from and wrote to storage, as the kernel counts them for getrusage(2):
ru_inblock/ru_oublock in 512-byte units. Exits with the command's exit code.

--parse fio adds the bandwidth, bytes and runtime of fio's reads (or, for a write job, its
writes) from fio's JSON output (in FILE);
--parse KEY adds FILE's JSON object under KEY (dp420 --json output).
--du PATH adds `du -sb PATH` before and after the command (repo_before_bytes,
repo_after_bytes, repo_growth_bytes; a missing PATH counts 0), measured outside the timing.
--disk NAME adds what the block device NAME (as in /proc/diskstats) did meanwhile: read and
write requests and bytes, and the milliseconds it had I/O in flight (dev_busy_ms). The
device is shared: these count every process's I/O, which is the point when asking whether
the disk was the limit.
--server-pid PID adds what another, already running process (the `dp420 serve` a remote
backup talks to) spent meanwhile, from /proc/PID/stat and /proc/PID/io: server_user_s,
server_sys_s, server_cpu_s (every thread, clock-tick resolution), server_read_bytes and
server_written_bytes (storage I/O), and afterwards its peak RSS (server_max_rss_kib, VmHWM):
during the step when the peak could be reset before it (`5` written to /proc/PID/clear_refs;
server_rss_scope "step"), else over the process's life so far (server_rss_scope "lifetime").
A PID that is gone by the end records server_alive false and fails the step.

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
    job = doc["jobs"][0]
    rw = "read" if job["read"]["io_bytes"] > 0 else "write"
    side = job[rw]
    return {"fio": {"rw": rw, "bw_bytes": side["bw_bytes"], "io_bytes": side["io_bytes"],
                    "runtime_ms": side["runtime"], "iops": side["iops"]}}


def du_bytes(path: str) -> int:
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def diskstats(name: str):
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if len(x) >= 14 and x[2] == name:
                return {"reads": int(x[3]), "read_bytes": int(x[5]) * 512, "writes": int(x[7]),
                        "write_bytes": int(x[9]) * 512, "busy_ms": int(x[12])}
    return None


def proc_usage(pid: int):
    """utime and stime in seconds and storage bytes of a running process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name, which may hold spaces: state is field 3.
            x = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out = {"user_s": int(x[11]) / tick, "sys_s": int(x[12]) / tick}
        with open(f"/proc/{pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        out.update({"read_bytes": int(io["read_bytes"]), "written_bytes": int(io["write_bytes"])})
        return out
    except (OSError, IndexError, KeyError, ValueError):
        return None


def peak_rss_kib(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def server_delta(pid: int, before, after) -> dict:
    if not before or not after:
        return {"server_pid": pid, "server_alive": False}
    d = {k: after[k] - before[k] for k in before}
    return {"server_pid": pid, "server_alive": True,
            "server_user_s": round(d["user_s"], 4), "server_sys_s": round(d["sys_s"], 4),
            "server_cpu_s": round(d["user_s"] + d["sys_s"], 4),
            "server_read_bytes": d["read_bytes"], "server_written_bytes": d["written_bytes"],
            "server_max_rss_kib": peak_rss_kib(pid)}


def main(argv: list) -> int:
    if "--" not in argv or len(argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    sep = argv.index("--")
    opts, cmd = argv[1:sep], argv[sep + 1:]
    results, label = opts[0], opts[1]
    stdout_path, parse, meta, du_path, disk, server = None, None, {}, None, None, None
    rest = opts[2:]
    while rest:
        if rest[0] == "--stdout" and len(rest) >= 2:
            stdout_path, rest = rest[1], rest[2:]
        elif rest[0] == "--parse" and len(rest) >= 2:
            parse, rest = rest[1], rest[2:]
        elif rest[0] == "--meta" and len(rest) >= 2:
            meta, rest = json.loads(rest[1]), rest[2:]
        elif rest[0] == "--du" and len(rest) >= 2:
            du_path, rest = rest[1], rest[2:]
        elif rest[0] == "--disk" and len(rest) >= 2:
            disk, rest = rest[1], rest[2:]
        elif rest[0] == "--server-pid" and len(rest) >= 2 and rest[1].isdigit():
            server, rest = int(rest[1]), rest[2:]
        else:
            print(f"measure.py: unknown option {rest[0]}", file=sys.stderr)
            return 2
    repo_before = du_bytes(du_path) if du_path else None
    out = open(stdout_path, "wb") if stdout_path else None
    rss_file = tempfile.NamedTemporaryFile("r", suffix=".rss")
    wrapped = cmd
    if os.access(GNU_TIME, os.X_OK):
        wrapped = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name] + cmd
    disk_before = diskstats(disk) if disk else None
    server_rss_scope = ("step" if reset_peak_rss(server) else "lifetime") if server else None
    server_before = proc_usage(server) if server else None
    start = time.monotonic()
    # Without --stdout the command's output goes to stderr: stdout is for results.
    proc = subprocess.Popen(wrapped, stdout=out if out else sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.monotonic() - start
    server_after = proc_usage(server) if server else None
    disk_after = diskstats(disk) if disk_before else None
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
    if disk_before and disk_after:
        record.update({f"dev_{k}": disk_after[k] - disk_before[k] for k in disk_before})
    if server:
        record.update(server_delta(server, server_before, server_after))
        record["server_rss_scope"] = server_rss_scope
        if not record["server_alive"]:
            print(f"measure.py: {label}: process {server} is gone", file=sys.stderr)
            rc = rc or 1
            record["exit_code"] = rc
    if du_path:
        repo_after = du_bytes(du_path)
        record.update({"repo_before_bytes": repo_before, "repo_after_bytes": repo_after,
                       "repo_growth_bytes": repo_after - repo_before})
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
