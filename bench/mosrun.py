#!/usr/bin/env python3
"""mosrun benchmark: what does running a program under ``mosrun`` cost?

Compiles a few small C programs (gcc) into a temporary directory, runs each natively
and under ``mosrun`` in the same invocation, alternately, several times, and prints
the cost of supervision as ratios or added time against the native baseline:

``startup``   ``mosrun /bin/true`` against ``/bin/true``: the fixed cost of an
              invocation (Python, the supervisor fork, ptrace-seize, filter, exec),
              wall time as a shell sees it, in ms.
``cpu``       a loop of pure integer arithmetic (~20 s natively, the length of the
              manual's ``mostestload -t 20`` example; ``--cpu-seconds``): wall
              time under ``mosrun`` (start-up included) over native wall time.
              Also the loop's own time (clock_gettime inside the program), which
              leaves the start-up out.
``getpid``    N x ``syscall(SYS_getpid)`` (not intercepted: the seccomp filter lets it
              run): (loop time under mosrun - native) / N, in µs per call. The
              program times its own loop, so start-up is excluded.
``open``      N x ``open("/proc/self/needmem", 0)`` under mosrun: every call stops and
              the Python supervisor answers it; against native
              ``open("/etc/hostname", O_RDONLY)`` + ``close`` per call. Also
              ``open("/etc/hostname", O_RDONLY)`` + ``close`` under mosrun: stopped
              (its flags could be a /proc/self special's) but then let through.
``memory``    VmRSS of the ``mosrun -S`` supervisor (the mosrun process itself) while
              it supervises 200 jobs (``exec sleep 30``) against 1 job:
              (RSS200 - RSS1) / 199, in KB per supervised process.

mosrun runs as on a MOSIX node: a one-node mosd is started on a loopback address
(``--mosd-ip``) and ``MOSIX_ETC`` points at its configuration, so mosrun asks the
daemon for the site policy and registers its processes there. ``--no-mosd`` measures
a machine where MOSIX is not running (mosrun then loads the plugins itself).

Each figure is the best (least disturbed) of ``--reps`` runs (for the cpu loop: of the ratios of
run pairs, judged on the median pair); the median is shown
too. Programs run in the default ``C.UTF-8`` locale. Not for CI: it takes 1-3 minutes
and wants an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from machine import busy_share, cpu_times, finish_work, say, wait_idle  # noqa: E402  (bench/machine.py)

# -- the programs ------------------------------------------------------------------------------------
SOURCES = {
    # cpu ITERATIONS: a dependent chain of multiply/xor/shift (no memory, no vectorising)
    "cpu": r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    uint64_t n = strtoull(argv[1], 0, 10), x = 88172645463325252ULL;
    double t0 = now();
    for (uint64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        x ^= x >> 29;
    }
    double t1 = now();
    printf("%.9f %llu\n", t1 - t0, (unsigned long long)x);
    return 0;
}
""",
    # getpid N: N x syscall(SYS_getpid) (glibc cannot cache it)
    "getpid": r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long n = atol(argv[1]), sum = 0;
    double t0 = now();
    for (long i = 0; i < n; i++)
        sum += syscall(SYS_getpid);
    double t1 = now();
    printf("%.9f %ld\n", t1 - t0, sum / n);
    return 0;
}
""",
    # openloop PATH N close|keep: N x open(PATH, O_RDONLY) (+ close when asked);
    # prints the loop time, then how many calls returned each kind of result
    "openloop": r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    const char *path = argv[1];
    long n = atol(argv[2]), failed = 0, first = -2, same = 0;
    int do_close = strcmp(argv[3], "close") == 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        int r = open(path, O_RDONLY);
        if (r < 0) { failed++; continue; }
        if (first == -2) first = r;
        if (r == first) same++;
        if (do_close) close(r);
    }
    double t1 = now();
    printf("%.9f failed=%ld first=%ld same=%ld\n", t1 - t0, failed, first, same);
    return 0;
}
""",
}


def compile_programs(work: Path) -> dict[str, str]:
    if shutil.which("gcc") is None:
        raise SystemExit("bench/mosrun.py needs gcc")
    out = {}
    for name, source in SOURCES.items():
        src = work / f"{name}.c"
        src.write_text(source)
        subprocess.run(["gcc", "-O2", "-o", str(work / name), str(src)], check=True)
        out[name] = str(work / name)
    return out


# -- running things ----------------------------------------------------------------------------------
class Runner:
    """Runs commands natively or under mosrun, timing them as a shell would (fork to
    wait): output goes to files, not pipes — the mosrun supervisor keeps a copy of
    the program's stderr until it exits, after the program."""

    def __init__(self, work: Path, mosrun: list[str], env: dict[str, str]) -> None:
        self.work, self.mosrun, self.env = work, mosrun, env
        self.out, self.err = work / "stdout", work / "stderr"

    def run(
        self, argv: list[str], under: bool, options: tuple[str, ...] = (), cpus: set[int] | None = None
    ) -> tuple[float, str]:
        """Wall time and standard output; ``cpus``: run (mosrun, supervisor and program) there only."""
        cmd = [*self.mosrun, *options, *argv] if under else argv
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.settle()
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env, preexec_fn=pin)
            code = proc.wait()
            wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit status {code}\n{self.err.read_text(errors='replace')}")
        return wall, self.out.read_text()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no process of ours is left (a supervisor outlives its program)."""
        deadline = time.monotonic() + timeout
        while ours(str(self.work)) and time.monotonic() < deadline:
            time.sleep(0.02)


def ours(marker: str) -> list[int]:
    """Processes (other than us) whose command line mentions ``marker``."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(name))
        except OSError:
            pass
    return found


def start_mosd(ip: str) -> Path:
    """A one-node MOSIX cluster (outside the work directory: its daemon is not 'ours')."""
    sys.path.insert(0, str(ROOT))
    from mosix_core.cluster import localcluster

    root = Path(tempfile.mkdtemp(prefix="bench-mosd-"))
    layout = localcluster.up(root, nodes=1, base_ip=ip)
    return layout.etc(1)


def stop_mosd(etc: Path) -> None:
    from mosix_core.daemon import server

    server.stop(etc)
    shutil.rmtree(etc.parent, ignore_errors=True)


def find_mosrun() -> list[str]:
    script = Path(sys.executable).parent / "mosrun"
    if script.exists():
        return [str(script)]
    found = shutil.which("mosrun")
    if found:
        return [found]
    return [sys.executable, "-c", "from mosix_core.cli.mosrun import main; main()"]


def alternate(reps: int, native: Callable[[], float], under: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run the two alternately (so drift hits both alike); the values each returns."""
    a, b = [], []
    for k in range(reps):
        first, second = (native, under) if k % 2 == 0 else (under, native)
        x, y = first(), second()
        (a, b)[k % 2].append(x)
        (b, a)[k % 2].append(y)
    return a, b


def loop_seconds(output: str) -> float:
    return float(output.split()[0])


# -- results -------------------------------------------------------------------------------------------
class Row:
    def __init__(
        self,
        name: str,
        unit: str,
        measured: list[float],
        baseline: list[float],
        kind: str,
        target: float | None,
        note: str = "",
        scale: float = 1.0,
        paired: bool = False,
    ) -> None:
        """``kind``: "ratio" (measured / baseline) or "added" ((measured - baseline) * ``scale``).
        Figures are taken from the best (lowest) run of each, or with ``figure(pick)``.

        ``paired``: measured[i] and baseline[i] ran back to back, so each pair gives a
        ratio of its own; the figures are picked from those ratios and the target is
        judged on their median. On a VM whose speed drifts by a few per cent from
        minute to minute, this is what tells a 1 % cost from the drift."""
        self.name, self.unit, self.kind, self.target, self.note = name, unit, kind, target, note
        self.measured, self.baseline, self.scale, self.paired = measured, baseline, scale, paired

    @property
    def best(self) -> float:
        return min(self.measured)

    @property
    def base(self) -> float:
        return min(self.baseline)

    def figure(self, pick: Callable[[list[float]], float] = min) -> float:
        if self.paired:
            return pick(
                [m / b if self.kind == "ratio" else (m - b) * self.scale for m, b in zip(self.measured, self.baseline)]
            )
        m, b = pick(self.measured), pick(self.baseline)
        return m / b if self.kind == "ratio" else (m - b) * self.scale

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return (self.figure(statistics.median) if self.paired else self.figure()) <= self.target

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "unit": self.unit,
            "kind": self.kind,
            "measured": self.measured,
            "baseline": self.baseline,
            "best": self.best,
            "base": self.base,
            "figure": self.figure(),
            "figure_median": self.figure(statistics.median),
            "target": self.target,
            "pass": self.passed,
            "paired": self.paired,
            "note": self.note,
        }


def fmt(x: float, unit: str) -> str:
    if unit == "s":
        return f"{x:.3f} s"
    if unit == "ms":
        return f"{x:.1f} ms"
    if unit == "us":
        return f"{x:.3f} µs"
    if unit == "KB":
        return f"{x:,.0f} KB"
    return f"{x:g} {unit}"


def print_table(rows: list[Row]) -> None:
    head = f"{'name':<32} {'measured':>12} {'baseline':>12} {'ratio/added':>16} {'(median)':>12} {'target':>16} {'':>4}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.kind == "ratio":
            fig, med = f"x{r.figure():.3f}", f"x{r.figure(statistics.median):.3f}"
            tgt = r.target and f"<= x{r.target:g}"
        else:
            per = {"us": "µs/call", "KB": "KB/proc"}.get(r.unit, r.unit)
            spec = "+.3f" if r.unit == "us" else "+,.1f"
            fig = f"{r.figure():{spec}} {per}"
            med = f"{r.figure(statistics.median):{spec}}"
            tgt = r.target and (f"<= {r.target:g} {per}")
        verdict = {True: "pass", False: "FAIL", None: ""}[r.passed]
        print(
            f"{r.name:<32} {fmt(r.best, r.unit):>12} {fmt(r.base, r.unit):>12} {fig:>16} {med:>12} "
            f"{tgt or '-':>16} {verdict:>4}"
        )
    notes = [r for r in rows if r.note]
    if notes:
        print()
        for r in notes:
            print(f"{r.name}: {r.note}")


# -- the measurements ------------------------------------------------------------------------------------
def bench_startup(run: Runner, reps: int) -> list[Row]:
    argv = ["/bin/true", str(run.work)]  # the argument only marks the process as ours
    native, under = alternate(reps, lambda: run.run(argv, False)[0], lambda: run.run(argv, True)[0])
    ms = lambda xs: [1000 * x for x in xs]  # noqa: E731
    return [
        Row(
            "start-up (/bin/true)",
            "ms",
            ms(under),
            ms(native),
            "added",
            None,
            "mosrun /bin/true against /bin/true, wall time fork-to-wait",
        )
    ]


def bench_cpu(run: Runner, exe: str, reps: int, seconds: float) -> list[Row]:
    probe = 200_000_000
    t = loop_seconds(run.run([exe, str(probe)], False)[1])
    n = int(probe * seconds / t)
    say(f"  cpu loop: {n:,} iterations (~{seconds:g} s natively)")
    walls: dict[bool, list[float]] = {False: [], True: []}
    loops: dict[bool, list[float]] = {False: [], True: []}

    def one(under: bool) -> float:
        wall, out = run.run([exe, str(n)], under)
        walls[under].append(wall)
        loops[under].append(loop_seconds(out))
        return wall

    alternate(reps, lambda: one(False), lambda: one(True))
    return [
        Row(
            "cpu loop, wall (+start-up)",
            "s",
            walls[True],
            walls[False],
            "ratio",
            1.01,
            "paired: each mosrun run over the native run next to it; best pair, median pair (judged)",
            paired=True,
        ),
        Row(
            "cpu loop, in program",
            "s",
            loops[True],
            loops[False],
            "ratio",
            None,
            "the loop's own clock_gettime time: start-up excluded; paired",
            paired=True,
        ),
    ]


def bench_getpid(run: Runner, exe: str, reps: int, calls: int) -> list[Row]:
    native, under = alternate(
        reps,
        lambda: loop_seconds(run.run([exe, str(calls)], False)[1]),
        lambda: loop_seconds(run.run([exe, str(calls)], True)[1]),
    )
    return [
        Row(
            f"getpid x{calls:,} (not trapped)",
            "us",
            [1e6 * x / calls for x in under],
            [1e6 * x / calls for x in native],
            "added",
            0.1,
            "syscall(SYS_getpid) in a loop timed by the program; figure = added µs per call",
        )
    ]


def bench_open(run: Runner, exe: str, reps: int, calls: int) -> list[Row]:
    needmem = 123

    def timed(argv: list[str], under: bool, options=(), cpus=None) -> tuple[float, str]:
        out = run.run(argv, under, options, cpus)[1]
        return loop_seconds(out), out.split(None, 1)[1].strip()

    def special(cpus=None) -> float:
        t, info = timed([exe, "/proc/self/needmem", str(calls), "keep"], True, (f"-m{needmem}",), cpus)
        expect = f"failed=0 first={needmem} same={calls}"
        if info != expect:
            raise SystemExit(f"open(/proc/self/needmem) under mosrun -m{needmem}: {info}, expected {expect}")
        return t

    def hostname(under: bool, cpus=None) -> float:
        t, info = timed([exe, "/etc/hostname", str(calls), "close"], under, (), cpus)
        if not info.startswith("failed=0 ") or not info.endswith(f"same={calls}"):
            raise SystemExit(f"open(/etc/hostname) {'under mosrun' if under else 'natively'}: {info}")
        return t

    native, trapped = alternate(reps, lambda: hostname(False), special)
    _, passed = alternate(reps, lambda: hostname(False), lambda: hostname(True))
    us = lambda xs: [1e6 * x / calls for x in xs]  # noqa: E731
    rows = [
        Row(
            f"open needmem x{calls:,} (trapped)",
            "us",
            us(trapped),
            us(native),
            "ratio",
            None,
            'open("/proc/self/needmem", 0) answered by the supervisor, µs/call; baseline native '
            'open("/etc/hostname", O_RDONLY)+close',
        ),
        Row(
            "open hostname (trapped, let by)",
            "us",
            us(passed),
            us(native),
            "ratio",
            None,
            'open("/etc/hostname", O_RDONLY)+close under mosrun: stops, then runs',
        ),
    ]
    one = {min(os.sched_getaffinity(0))}
    if len(os.sched_getaffinity(0)) > 1:
        # The supervisor and the program hand every trapped call to each other: when both
        # share one CPU, no wake-up of an idle CPU is paid (on a VM, an idle vCPU is slow to wake).
        native1, trapped1 = alternate(reps, lambda: hostname(False, one), lambda: special(one))
        _, passed1 = alternate(reps, lambda: hostname(False, one), lambda: hostname(True, one))
        rows += [
            Row(
                "open needmem, one CPU",
                "us",
                us(trapped1),
                us(native1),
                "ratio",
                None,
                "as above, mosrun, supervisor and program all on one CPU (sched_setaffinity)",
            ),
            Row("open hostname, one CPU", "us", us(passed1), us(native1), "ratio", None, "as above, on one CPU"),
        ]
    return rows


# -- supervisor memory ------------------------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        return kids
    except OSError:
        pass
    for name in os.listdir("/proc"):  # no /proc/.../children: scan for the parent pid
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def queue_rss(run: Runner, jobs: int, timeout: float = 120.0) -> tuple[int, int, float]:
    """(VmRSS, VmHWM) in KB of ``mosrun -S{jobs}`` once all its jobs sleep, and the
    seconds it took them to start. Kills the whole queue afterwards."""
    cmds = run.work / f"cmds{jobs}"
    cmds.write_text("exec sleep 30\n" * jobs)
    run.settle()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*run.mosrun, f"-S{jobs}", str(cmds)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=run.env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"mosrun -S{jobs} ended early (status {proc.returncode})")
            sleeping = [k for k in children_of(proc.pid) if comm(k) == "sleep"]
            if len(sleeping) >= jobs:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"mosrun -S{jobs}: only {len(sleeping)} jobs running after {timeout:g} s")
            time.sleep(0.05)
        started = time.perf_counter() - t0
        time.sleep(1.0)  # let the supervisor finish answering their exec stops
        return status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM"), started
    finally:
        kill_queue(proc)


def kill_queue(proc: subprocess.Popen) -> None:
    """Everything in the queue's process group (mosrun, bash, sleep), then make sure."""
    for _ in range(50):
        members = in_group(proc.pid)
        if not members and proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    left = in_group(proc.pid)
    if left:
        say(f"warning: processes {left} of the mosrun -S queue are still there")


def bench_memory(run: Runner, reps: int, jobs: int) -> list[Row]:
    one, many, hwm_many, starts = [], [], [], []
    for _ in range(reps):
        rss1, _, _ = queue_rss(run, 1)
        rssn, hwmn, started = queue_rss(run, jobs)
        one.append(float(rss1))
        many.append(float(rssn))
        hwm_many.append(hwmn)
        starts.append(started)
    say(
        f"  memory: RSS1 {[int(x) for x in one]} KB, RSS{jobs} {[int(x) for x in many]} KB, "
        f"HWM{jobs} {hwm_many} KB; {jobs} jobs started in {[round(s, 2) for s in starts]} s"
    )
    per = 1.0 / (jobs - 1)
    return [
        Row(
            f"supervisor RSS, {jobs} vs 1 job",
            "KB",
            many,
            one,
            "added",
            1024.0,
            f"mosrun -S{jobs} (the supervisor) with {jobs} x 'exec sleep 30' against -S1 with one; "
            f"figure = (RSS{jobs} - RSS1)/{jobs - 1}; RSS1 {statistics.median(one):,.0f} KB, "
            f"RSS{jobs} {statistics.median(many):,.0f} KB (medians)",
            scale=per,
        )
    ]


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- main -------------------------------------------------------------------------------------------------
PARTS = ("startup", "cpu", "getpid", "open", "memory")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--reps", type=int, default=5, help="runs of each measurement (best and median reported)")
    ap.add_argument("--startup-reps", type=int, default=10)
    ap.add_argument("--memory-reps", type=int, default=3)
    ap.add_argument("--cpu-seconds", type=float, default=20.0, help="native length of the cpu loop")
    ap.add_argument("--no-mosd", action="store_true", help="do not start a mosd: MOSIX not running here")
    ap.add_argument("--mosd-ip", default="127.0.77.1", help="loopback address of the benchmark's mosd")
    ap.add_argument("--getpid-calls", type=int, default=5_000_000)
    ap.add_argument("--open-calls", type=int, default=20_000)
    ap.add_argument("--jobs", type=int, default=200, help="jobs of the mosrun -S memory measurement")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for idle CPUs (0: don't)",
    )
    ap.add_argument("--mosrun", default=None, help="the mosrun command (default: the one next to python)")
    ap.add_argument(
        "--bytecode",
        choices=["cache", "as-is"],
        default="cache",
        help="cache: mosrun's Python keeps compiled bytecode (in the temporary directory, "
        "through PYTHONPYCACHEPREFIX), as an installed mosrun would; as-is: the "
        "environment's own setting (PYTHONDONTWRITEBYTECODE compiles afresh every start)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (programs, outputs)")
    args = ap.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}")

    mosrun = args.mosrun.split() if args.mosrun else find_mosrun()
    env = dict(os.environ, LANG="C.UTF-8")
    env.pop("LC_ALL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    work = Path(tempfile.mkdtemp(prefix="bench-mosrun-"))
    if args.bytecode == "cache":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    mosd_etc = None if args.no_mosd else start_mosd(args.mosd_ip)
    if mosd_etc is not None:
        env["MOSIX_ETC"] = str(mosd_etc)
    load_before = loadavg()
    cpu_before = cpu_times()
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        exes = compile_programs(work)
        run = Runner(work, mosrun, env)
        run.run(["/bin/true", str(work)], True)  # warm caches (and fail early)

        def begin(text: str) -> None:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            say(text)

        if "startup" in parts:
            begin("start-up ...")
            rows += bench_startup(run, args.startup_reps)
        if "cpu" in parts:
            begin("cpu loop ...")
            rows += bench_cpu(run, exes["cpu"], args.reps, args.cpu_seconds)
        if "getpid" in parts:
            begin("getpid ...")
            rows += bench_getpid(run, exes["getpid"], args.reps, args.getpid_calls)
        if "open" in parts:
            begin("open ...")
            rows += bench_open(run, exes["openloop"], args.reps, args.open_calls)
        if "memory" in parts:
            begin("supervisor memory ...")
            rows += bench_memory(run, args.memory_reps, args.jobs)
    finally:
        left = ours(str(work))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if mosd_etc is not None:
            stop_mosd(mosd_etc)
        finish_work(work, args.keep)
    elapsed = time.perf_counter() - started
    busy = busy_share(cpu_before, cpu_times())
    load = f"load average {load_before:.2f} before, {loadavg():.2f} after; CPUs {100 * busy:.0f} % busy"

    if args.json:
        print(
            json.dumps(
                {
                    "mosrun": mosrun,
                    "mosd": mosd_etc is not None,
                    "reps": args.reps,
                    "cpus": os.cpu_count(),
                    "seconds": elapsed,
                    "bytecode": args.bytecode,
                    "load_before": load_before,
                    "busy": busy,
                    "rows": [r.as_dict() for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(
            f"mosrun benchmark: {' '.join(mosrun)}; {os.cpu_count()} CPUs; best of {args.reps} "
            f"(start-up {args.startup_reps}, memory {args.memory_reps}) alternate runs, median beside; "
            f"LANG=C.UTF-8; bytecode {args.bytecode}; {'with' if mosd_etc else 'without'} mosd; "
            f"{elapsed:.0f} s; {load}"
        )
        print_table(rows)
    failed = [r for r in rows if r.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
