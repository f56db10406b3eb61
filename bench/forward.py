#!/usr/bin/env python3
"""Forwarding benchmark: what do the system calls of a migrated process cost?

A real local cluster (two ``mosd`` daemons on loopback addresses, as in
bench/migration.py) is started in a temporary directory (``--dir``, /dev/shm by
default). A /usr/bin/python3 program runs three ways, alternately, ``--reps`` times:

``native``   without mosrun;
``home``     under ``mosrun`` on node 1, not migrated;
``away``     under ``mosrun`` on node 1, moved to node 2 (``mosmigrate PID 2``) while it
             waits: it loops on ``open("/proc/self/whereami")`` (whose *result* is the
             node number, 0 at home) until it is away.

It then times, with ``time.perf_counter``, ``--calls`` x ``os.getppid()`` and ``--calls``
x ``os.fstat(1)`` (µs per call); then, for each ``--chunks`` size, writes ``--bulk`` bytes
(1 GiB) to a file in its cwd with ``os.write`` calls of that size, and reads it back with
``os.read`` (MB/s each, the file's close included in the write). Away, every one of these
calls is forwarded home: the guest host on node 2 stops the call, sends it over TCP to
the home mosrun, which makes it there (a regular file's read/write itself, any other call
in the process's home half, the deputy) and answers.

Every way, the program first writes the file once untimed, and the file is given its
size (``posix_fallocate``, untimed) before each timed write: the writes then measure the
forwarding and not tmpfs's allocation of fresh pages, which on these VMs alone made a
native 1 GiB write vary from 0.6 to 3.8 GB/s between two runs, and the first size timed
slower than the next (native rows included).

Baselines in the same run: a loopback TCP round trip (64-byte ping-pong between two
processes, TCP_NODELAY, µs) and loopback TCP bandwidth (4 MiB ``sendall`` /
``recv_into``, MB/s). Targets (DESIGN §5), judged on the medians of the away runs: a
small forwarded call <= 60 µs, bulk forwarded read/write >= 40 % of loopback TCP
bandwidth. Exits 1 when one is missed.

Also the MOSIX FAQ's test of migration, its CPU loop ``awk 'BEGIN {for(i=0;i<N;i++)
for(j=0;j<10000;j++);}'`` with N sized to take ``--awk-seconds`` natively, run
``--awk-runs`` times natively, under mosrun at home, and under mosrun moved to node 2 as
soon as its row shows (wall time from start to exit; mosrun's start-up included):
the overhead of running away.

Not for CI: about 3 minutes, and 1 GiB of files in ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import parse_size, size_name  # noqa: E402
from machine import busy_share, cpu_times, finish_work, say, wait_idle  # noqa: E402
from migration import (  # noqa: E402
    PYTHON,
    Cluster,
    Failure,
    MosixProgram,
    default_base_ip,
    diagnose,
    loopback_tcp_rtt_us,
    loopback_tcp_seconds,
    use_source_tree,
)

TARGET_CALL_US = 60.0  # DESIGN §5: forwarded system call from a guest (small) <= 60 µs round trip
TARGET_BULK_SHARE = 0.40  # DESIGN §5: forwarded bulk read/write >= 40 % of loopback TCP bandwidth

PROGRAM = r"""
import ctypes, os, select, sys, time
calls, bulk, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
chunks = [int(c) for c in sys.argv[3].split(",")]
# libc's open, not os.open: os.open adds O_CLOEXEC, and at home mosrun traps only the flags
# of the MOSIX interface (0, 1, 2, with or without O_CREAT): os.open gets ENOENT there
whereami = lambda: ctypes.CDLL(None).open(b"/proc/self/whereami", os.O_RDONLY)  # the result is the answer, not a fd
if mode == "away":
    print("waiting", flush=True)
    while not whereami():
        select.select([], [], [], 0.01)
if mode != "native":
    print("where", whereami(), flush=True)
pc = time.perf_counter
getppid, fstat = os.getppid, os.fstat
for _ in range(100):
    getppid()
t0 = pc()
for _ in range(calls):
    getppid()
t1 = pc()
print("getppid_us %.3f" % (1e6 * (t1 - t0) / calls), flush=True)
for _ in range(100):
    fstat(1)
t0 = pc()
for _ in range(calls):
    fstat(1)
t1 = pc()
print("fstat_us %.3f" % (1e6 * (t1 - t0) / calls), flush=True)
fd = os.open("bulk.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)    # an untimed pass first
for _ in range(bulk >> 20):
    os.write(fd, bytes(1 << 20))
os.close(fd)
os.unlink("bulk.dat")
for chunk in chunks:
    block = os.urandom(chunk)
    fd = os.open("bulk.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, bulk)
    done = 0
    t0 = pc()
    while done < bulk:
        done += os.write(fd, block if bulk - done >= chunk else block[:bulk - done])
    os.close(fd)
    t1 = pc()
    fd = os.open("bulk.dat", os.O_RDONLY)
    got = 0
    t2 = pc()
    while True:
        data = os.read(fd, chunk)
        if not data:
            break
        got += len(data)
    t3 = pc()
    os.close(fd)
    os.unlink("bulk.dat")
    if got != bulk or done != bulk:
        print("bulk_error wrote %d read %d of %d" % (done, got, bulk), flush=True)
    print("write_mb_s %d %.1f" % (chunk, bulk / (t1 - t0) / 1e6), flush=True)
    print("read_mb_s %d %.1f" % (chunk, bulk / (t3 - t2) / 1e6), flush=True)
print("done", flush=True)
"""

KINDS = ("native", "home", "away")


def parse_output(text: str, kind: str) -> dict:
    figures: dict = {"write": {}, "read": {}}
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] in ("getppid_us", "fstat_us"):
            figures[f[0][:-3]] = float(f[1])
        elif f[0] in ("write_mb_s", "read_mb_s"):
            figures[f[0][:-5]][int(f[1])] = float(f[2])
        elif f[0] == "where":
            figures["where"] = int(f[1])
        elif f[0] == "bulk_error":
            raise Failure(f"{kind} run: {line}")
    if "done" not in text.split():
        raise Failure(f"{kind} run did not finish: {text[-500:]!r}")
    return figures


def run_native(work: Path, argv: list[str], timeout: float) -> dict:
    env = {**os.environ, "LANG": "C.UTF-8"}
    env.pop("LC_ALL", None)
    done = subprocess.run([PYTHON, *argv, "native"], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise Failure(f"native run: status {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse_output(done.stdout, "native")


def run_mosix(
    cluster: Cluster, work: Path, argv: list[str], kind: str, timeout: float, programs: list[MosixProgram]
) -> dict:
    prog = MosixProgram(cluster, [PYTHON, *argv, kind], work, f"calls-{kind}-{len(programs)}")
    programs.append(prog)
    try:
        prog.wait_row()
        if kind == "away":
            prog.wait_line("waiting", 30.0)
            prog.migrate("2", cluster.ip(2))
        try:
            status = prog.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"{kind} run: not done after {timeout:g} s") from None
        if status != 0:
            raise Failure(f"{kind} run: mosrun exited with status {status}")
        figures = parse_output(prog.text(), kind)
        expected = 2 if kind == "away" else 0
        if figures.get("where") != expected:
            raise Failure(f"{kind} run: /proc/self/whereami said {figures.get('where')}, expected {expected}")
        return figures
    finally:
        prog.stop()


# -- the awk loop ----------------------------------------------------------------------------------
def awk_program(outer: int) -> str:
    return f"BEGIN {{for(i=0;i<{outer};i++)for(j=0;j<10000;j++);}}"


def awk_native(outer: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["awk", awk_program(outer)], check=True, stdin=subprocess.DEVNULL, env={**os.environ, "LANG": "C.UTF-8"}
    )
    return time.perf_counter() - t0


def awk_mosix(cluster: Cluster, work: Path, outer: int, move: bool, programs: list[MosixProgram]) -> tuple[float, bool]:
    """Wall time of the awk loop under mosrun (moved to node 2 as soon as its row shows, with
    ``move``), and whether it was seen away."""
    prog = MosixProgram(cluster, ["awk", awk_program(outer)], work, f"awk-{len(programs)}")
    programs.append(prog)
    try:
        away = False
        if move:
            prog.wait_row(poll=0.005)
            done = cluster.run(1, "mosmigrate", str(prog.pid), "2")
            if done.returncode != 0:
                raise Failure(f"mosmigrate {prog.pid} 2: {done.stderr.strip()}")
            while prog.proc.poll() is None:
                try:
                    r = prog.row()
                except Exception:  # noqa: BLE001  (the row may go as the process ends)
                    r = None
                if r is not None and r["where"] == cluster.ip(2):
                    away = True
                    break
                time.sleep(0.01)
        status = prog.proc.wait(timeout=600)
        wall = time.perf_counter() - prog.started
        if status != 0:
            raise Failure(f"awk under mosrun: status {status}")
        return wall, away
    finally:
        prog.stop()


# -- the table -------------------------------------------------------------------------------------
def best_median(values: list[float], lower_better: bool) -> tuple[float, float]:
    return (min(values) if lower_better else max(values)), statistics.median(values)


def summarise(runs: dict[str, list[dict]], chunks: list[int], rtt: list[float], tcp: list[float]) -> list[dict]:
    rows = []
    rtt_median, tcp_median = statistics.median(rtt), statistics.median(tcp)
    for call in ("getppid", "fstat"):
        row = {"what": f"{call} µs/call", "unit": "us", "lower_better": True}
        for kind in KINDS:
            row[kind] = best_median([r[call] for r in runs[kind]], True)
        row["vs"] = f"x{row['away'][1] / rtt_median:.1f} TCP round trip"
        row["target"] = f"<= {TARGET_CALL_US:g} µs"
        row["pass"] = row["away"][1] <= TARGET_CALL_US
        rows.append(row)
    for op in ("write", "read"):
        for chunk in chunks:
            row = {"what": f"{op} {size_name(chunk)} calls MB/s", "unit": "MB/s", "lower_better": False}
            for kind in KINDS:
                row[kind] = best_median([r[op][chunk] for r in runs[kind]], False)
            share = row["away"][1] / tcp_median
            row["vs"] = f"{100 * share:.1f} % of TCP"
            row["target"] = f">= {100 * TARGET_BULK_SHARE:.0f} % of TCP"
            row["pass"] = share >= TARGET_BULK_SHARE
            rows.append(row)
    return rows


def fmt(pair: tuple[float, float], unit: str) -> str:
    spec = ".2f" if unit == "us" and pair[1] < 10 else (".1f" if unit == "us" else ",.0f")
    return f"{format(pair[0], spec)} ({format(pair[1], spec)})"


def print_table(
    rows: list[dict], awk: dict | None, rtt: list[float], rtt1: list[float], tcp: list[float], reps: int
) -> None:
    print(
        f"baselines: loopback TCP round trip {min(rtt):.1f} µs (median {statistics.median(rtt):.1f}; on one CPU "
        f"{min(rtt1):.1f}, median {statistics.median(rtt1):.1f}), "
        f"loopback TCP bandwidth {max(tcp):,.0f} MB/s (median {statistics.median(tcp):,.0f})"
    )
    head = (
        f"{'what (best (median) of ' + str(reps) + ')':<26} {'native':>17} {'home (mosrun)':>17} "
        f"{'away (node 2)':>19} {'away, median':>22} {'target':>18}"
    )
    print(head)
    print("-" * (len(head) + 6))
    for r in rows:
        print(
            f"{r['what']:<26} {fmt(r['native'], r['unit']):>17} {fmt(r['home'], r['unit']):>17} "
            f"{fmt(r['away'], r['unit']):>19} {r['vs']:>22} {r['target']:>18} {'pass' if r['pass'] else 'FAIL'}"
        )
    if awk:
        n, h, a = awk["native"], awk["home"], awk["away"]
        med = statistics.median
        print(
            f"{'awk loop s (FAQ)':<26} {min(n):>8.2f} ({med(n):.2f}) {min(h):>8.2f} ({med(h):.2f}) "
            f"{min(a):>10.2f} ({med(a):.2f}) {'x' + format(med(a) / med(h), '.3f') + ' home':>22} "
            f"{'x' + format(med(a) / med(n), '.3f') + ' native':>18}"
        )
        print()
        print(
            f"awk loop: awk '{awk['program']}' ({awk['runs']} runs each, ~{awk['seconds']:g} s natively), wall "
            f"time start to exit; away = moved to node 2 as soon as its row showed ({awk['seen_away']} of "
            f"{awk['runs']} seen away). Away over home: best x{min(a) / min(h):.3f}, median x{med(a) / med(h):.3f}; "
            f"away over native: median x{med(a) / med(n):.3f}; home over native: median x{med(h) / med(n):.3f}."
        )


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000, help="getppid and fstat calls timed per run")
    ap.add_argument("--bulk", default="1G", help="bytes written then read back per chunk size")
    ap.add_argument("--chunks", default="1M,4M", help="os.write / os.read sizes, comma-separated (<= 4M)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each kind, alternately (best and median)")
    ap.add_argument("--awk-runs", type=int, default=4, help="runs of the awk loop each way (0: none)")
    ap.add_argument("--awk-seconds", type=float, default=3.0, help="native length of the awk loop")
    ap.add_argument("--rtt-rounds", type=int, default=20000, help="round trips of the TCP ping-pong baseline")
    ap.add_argument("--tcp-bytes", default="1G", help="bytes of the loopback TCP bandwidth baseline")
    ap.add_argument("--base-ip", default=None, help="first loopback address of the cluster")
    ap.add_argument("--dir", default="/dev/shm", help="parent of the temporary directory (the programs' cwd)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each part, wait up to this many seconds for idle CPUs (0: don't)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (cluster, outputs)")
    args = ap.parse_args(argv)
    bulk = parse_size(args.bulk)
    chunks = [parse_size(c) for c in args.chunks.split(",") if c]
    if args.reps < 1 or args.calls < 1 or not chunks or max(chunks) > 4 << 20 or bulk < max(chunks):
        ap.error("need --reps >= 1, --calls >= 1, chunks of at most 4M and --bulk of at least the largest chunk")
    if not os.path.exists(PYTHON):
        raise SystemExit(f"needs {PYTHON}")

    use_source_tree()
    work = Path(tempfile.mkdtemp(prefix="bench-forward-", dir=args.dir))
    (work / "calls.py").write_text(PROGRAM)
    prog_argv = [str(work / "calls.py"), str(args.calls), str(bulk), ",".join(str(c) for c in chunks)]
    timeout = 120.0 + len(chunks) * bulk / 5e6  # 5 MB/s at worst
    cluster: Cluster | None = None
    programs: list[MosixProgram] = []
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    awk: dict | None = None
    started = time.perf_counter()
    cpu_before = cpu_times()
    failed = False
    try:

        def begin(text: str) -> None:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            say(text)

        begin("loopback TCP baselines ...")
        rtt = [loopback_tcp_rtt_us(args.rtt_rounds) for _ in range(3)]
        rtt1 = [loopback_tcp_rtt_us(args.rtt_rounds, one_cpu=True) for _ in range(3)]
        tcp_bytes = parse_size(args.tcp_bytes)
        tcp = [tcp_bytes / loopback_tcp_seconds(tcp_bytes) / 1e6 for _ in range(3)]
        say(
            f"  round trip {[round(x, 1) for x in rtt]} µs ({[round(x, 1) for x in rtt1]} on one CPU), "
            f"bandwidth {[round(x) for x in tcp]} MB/s"
        )
        cluster = Cluster(work / "cluster", nodes=2, base_ip=args.base_ip or default_base_ip())
        cluster.converged()
        for rep in range(args.reps):
            order = KINDS if rep % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                begin(f"calls, {kind} ({rep + 1}/{args.reps}) ...")
                if kind == "native":
                    figures = run_native(work, prog_argv, timeout)
                else:
                    figures = run_mosix(cluster, work, prog_argv, kind, timeout, programs)
                runs[kind].append(figures)
                say(
                    f"  getppid {figures['getppid']} µs, fstat {figures['fstat']} µs, write "
                    f"{figures['write']} MB/s, read {figures['read']} MB/s"
                )
        if args.awk_runs > 0:
            begin("awk loop ...")
            probe = 1000
            t = min(awk_native(probe) for _ in range(2))
            outer = max(1, round(probe * args.awk_seconds / t))
            say(f"  awk: {outer} x 10,000 iterations (~{args.awk_seconds:g} s natively)")
            awk = {
                "program": awk_program(outer),
                "runs": args.awk_runs,
                "seconds": args.awk_seconds,
                "native": [],
                "home": [],
                "away": [],
                "seen_away": 0,
            }
            for _ in range(args.awk_runs):
                awk["native"].append(awk_native(outer))
                awk["home"].append(awk_mosix(cluster, work, outer, False, programs)[0])
                wall, away = awk_mosix(cluster, work, outer, True, programs)
                awk["away"].append(wall)
                awk["seen_away"] += away
            say(
                f"  awk native {[round(x, 2) for x in awk['native']]} s, home {[round(x, 2) for x in awk['home']]} s, "
                f"away {[round(x, 2) for x in awk['away']]} s"
            )
    except Failure as err:
        failed = True
        say(f"FAILED: {err}")
        diagnose(cluster, programs[-1:])
    finally:
        for p in programs:
            p.stop()
        if cluster is not None:
            cluster.down()
        finish_work(work, args.keep)
    if failed:
        return 2
    elapsed = time.perf_counter() - started
    busy = busy_share(cpu_before, cpu_times())
    rows = summarise(runs, chunks, rtt, tcp)
    if args.json:
        print(
            json.dumps(
                {
                    "reps": args.reps,
                    "calls": args.calls,
                    "bulk": bulk,
                    "chunks": chunks,
                    "cpus": os.cpu_count(),
                    "seconds": elapsed,
                    "busy": busy,
                    "rtt_us": rtt,
                    "rtt_one_cpu_us": rtt1,
                    "tcp_mb_s": tcp,
                    "rows": rows,
                    "runs": runs,
                    "awk": awk,
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(
            f"forward benchmark: {PYTHON}, {args.calls:,} x getppid and fstat(1), {size_name(bulk)} written and "
            f"read back per chunk size, native / under mosrun at home / moved to node 2 of a 2-node loopback "
            f"cluster; best (median) of {args.reps}; {os.cpu_count()} CPUs; {elapsed:.0f} s; CPUs "
            f"{100 * busy:.0f} % busy over the run (ours included)"
        )
        print_table(rows, awk, rtt, rtt1, tcp, args.reps)
    return 1 if any(not r["pass"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
