#!/usr/bin/env python3
"""Migration benchmark: how long does moving a large process to another node and back take?

A real local cluster (``mosix_core.cluster.localcluster``: three ``mosd`` daemons on loopback
addresses 127.X.Y.1 to .3) is started in a temporary directory. A /usr/bin/python3
program is started under ``mosrun`` on node 1 (its home). It fills a bytearray of N
bytes with one MiB of random bytes repeated (lz4 finds nothing to shrink in it: its
window is 64 KiB), then loops: a byte of the buffer touched, ``time.time()`` printed
and flushed to a file, ``select.select([], [], [], 0.01)`` (``time.sleep`` is refused
under mosrun). It is then moved with ``mosmigrate PID 2``, ``mosmigrate PID 3`` (on from
node 2: the image passes through node 1's mosrun, never restored there) and ``mosmigrate
PID home``, ``--repeat`` times each way:

``end-to-end``  from running ``mosmigrate`` (the CLI, its Python start-up included) until
                the process's row on node 1 (``processes``, polled every 5-20 ms) shows
                node 2's address (out) or ``here`` (home). MB/s = N / that time.
``stopped``     the largest gap between two consecutive timestamps the program printed
                around the move: how long it did not run (the loop itself prints every
                ~10 ms, included).

Both ways are measured raw (the nodes proximate: mosix.map's third field ``p``, what
``moscluster`` writes) and lz4-compressed (the ``p`` removed from every node's
mosix.map and the daemons told to reload it, as ``mossetpe`` does).

Baseline in the same run: loopback TCP bandwidth (two processes, 127.0.0.1, 4 MiB
``sendall`` / ``recv_into``), and every rate is printed as a ratio to it. A second baseline:
the first touch of N bytes of new memory, 3 s after memory was last freed — the
least a target pays for the memory it receives. On a VM whose balloon driver reports
free pages to the host (this one), freed memory goes back to the host within ~2 s
and costs a host fault per page when touched again: 1 GiB then takes 0.7-3 s.

A move out of a process of 64 MiB or more is pre-copied: its memory goes while it
runs, and it stops only for what it wrote meanwhile; "stopped" shows that, and
``stop->row`` is then no transfer time (its MB/s means nothing). The targets
(DESIGN §5) are judged on the median of the 1 GiB raw rows: >= 1 GB/s end to end and
the process stopped <= 1 s; the benchmark exits 1 when one is missed. After each mode the
program re-computes the CRC-32 of its whole buffer (SIGUSR1) and the benchmark checks it
against the one it printed at the start.

Not for CI: 1 GiB needs ~3 GiB of free memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import ROOT, parse_size, size_name  # noqa: E402
from machine import busy_share, cpu_times, finish_work, say, wait_idle  # noqa: E402

sys.path.insert(0, str(ROOT))
from mosix_core.cluster import localcluster  # noqa: E402
from tests.helpers.cluster import LocalCluster  # noqa: E402

TARGET_MB_S = 1000.0  # DESIGN §5: migration of a 1 GiB process over loopback >= 1 GB/s end to end (raw)
TARGET_STOPPED = 1.0  # DESIGN §5: process stopped during migration <= 1 s for 1 GiB
TARGET_SIZE = 1 << 30
PYTHON = "/usr/bin/python3"  # the program's interpreter (not the venv's)

PROGRAM = r"""
import os, select, signal, sys, time, zlib
size = int(sys.argv[1])
block = os.urandom(1 << 20)
buf = bytearray(size)
view = memoryview(buf)
for off in range(0, size, len(block)):
    n = min(len(block), size - off)
    view[off:off + n] = block[:n]
del view
asked = False
def on_usr1(sig, frame):
    global asked
    asked = True
signal.signal(signal.SIGUSR1, on_usr1)
print("ready", size, zlib.crc32(buf), flush=True)
i = 0
while True:
    i += 1
    k = (i * 4099) % size
    buf[k] = buf[k]                     # tiny work, touching the buffer
    if asked:
        asked = False
        print("crc", zlib.crc32(buf), flush=True)
    print("t %.6f" % time.time(), flush=True)
    select.select([], [], [], 0.01)
"""


def use_source_tree() -> None:
    """The daemons, tools, mosrun and guest hosts we start import mosix_core from this tree
    (PYTHONPATH), as this process does — not from an installed copy that may be older."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


# -- a local cluster, as tests.helpers.cluster.LocalCluster without pytest -----------------------------
def default_base_ip() -> str:
    """A /24 of our own: the tests take 127.(10-209).(1-250).1, the mosrun benchmark 127.0.77.1."""
    return f"127.{10 + os.getpid() % 200}.{251 + os.getpid() % 4}.1"


def tool_argv(tool: str) -> list[str]:
    """A mos* command as a user runs it: the console script next to this Python, else the module."""
    script = Path(sys.executable).parent / tool
    return [str(script)] if script.exists() else [sys.executable, "-m", f"mosix_core.cli.{tool}"]


class Cluster(LocalCluster):
    """A running local cluster in ``root`` (stopped by :meth:`down`)."""

    def __init__(self, root: Path, nodes: int, base_ip: str, interval: float = 0.2, memory_mb: int = 8192) -> None:
        # the benchmark moves its processes itself: the balancer would move them too
        super().__init__(
            root,
            localcluster.up(
                root,
                nodes=nodes,
                base_ip=base_ip,
                interval=interval,
                memory_mb=memory_mb,
                extra_conf="automatic_migration = no\n",
            ),
        )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    poll: float = 0.02,
    quiet: tuple[type[BaseException], ...] = (),
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
            if result:
                return result
        except quiet:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class Failure(Exception):
    """A measurement that could not be made (the diagnosis is printed)."""


# -- a program under mosrun on node 1 ---------------------------------------------------------------
class MosixProgram:
    """``mosrun ARGV`` started on node ``home`` of ``cluster``, stdout and stderr to files in ``work``."""

    def __init__(
        self, cluster: Cluster, argv: list[str], work: Path, name: str, home: int = 1, out_name: str | None = None
    ) -> None:
        self.cluster, self.home = cluster, home
        self.out = work / (out_name or f"{name}.out")
        self.err = work / f"{name}.err"
        env = {
            **cluster.env(home),
            "LANG": "C.UTF-8",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        env.pop("LC_ALL", None)
        self.env = env
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                [*tool_argv("mosrun"), *argv],
                env=env,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.pid: int | None = None

    def row(self) -> dict | None:
        """Our process's row on the home node (rows with no ``home`` are local processes)."""
        rows = [p for p in self.cluster.client(self.home).call("processes")["processes"] if not p.get("home")]
        if self.pid is not None:
            rows = [p for p in rows if p["pid"] == self.pid]
        return rows[0] if rows else None

    def wait_row(self, timeout: float = 30.0, poll: float = 0.02) -> dict:
        def found() -> dict | None:
            if self.proc.poll() is not None:
                raise Failure(f"mosrun ended (status {self.proc.returncode}) before its process showed")
            return self.row()

        r = wait_for(found, timeout, "the process's row", poll=poll)
        self.pid = r["pid"]
        return r

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait_line(self, prefix: str, timeout: float, after: int = 0) -> str:
        """The first output line starting with ``prefix`` (among lines ``after`` on)."""

        def found() -> str | None:
            for line in self.text().splitlines()[after:]:
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                raise Failure(f"mosrun ended (status {self.proc.returncode}) before printing {prefix!r}")
            return None

        return wait_for(found, timeout, f"the line {prefix!r}", poll=0.01)

    def migrate(self, to: str, expect: str, timeout: float = 120.0) -> dict:
        """``mosmigrate PID to``, then poll the row until its ``where`` is ``expect``.
        Wall times (time.time) of the command's start, its return and the row showing it."""
        t_cmd = time.time()
        done = self.cluster.run(self.home, "mosmigrate", str(self.pid), to)
        t_ret = time.time()
        if done.returncode != 0:
            raise Failure(f"mosmigrate {self.pid} {to}: {done.stderr.strip() or done.stdout.strip()}")
        deadline = time.monotonic() + timeout
        seen = set()
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"mosrun ended (status {self.proc.returncode}) during mosmigrate {to}")
            r = self.row()
            t = time.time()
            if r is not None:
                seen.add(r["where"])
                if r["where"] == expect:
                    return {"t_cmd": t_cmd, "t_ret": t_ret, "t_row": t, "nmigs": r["nmigs"]}
                if r["where"] == "here" and expect != "here" and self.refused(t_cmd):
                    raise Failure(f"migration to {to} failed: {self.refused(t_cmd)}")
            if time.monotonic() > deadline:
                raise Failure(
                    f"mosmigrate {self.pid} {to}: WHERE not {expect} after {timeout:g} s (seen {sorted(seen)})"
                )
            time.sleep(0.005 if t - t_cmd < 0.5 else 0.02)

    def refused(self, since: float) -> str:
        """A 'failed migrating' message mosrun printed (its stderr), if any."""
        lines = [line for line in self.err.read_text(errors="replace").splitlines() if "failed migrating" in line]
        return lines[-1] if lines else ""

    def stop(self) -> None:
        """Kill the program (at home or away) and its mosrun."""
        for pid in filter(None, [self.pid]):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            say(f"warning: mosrun {self.proc.pid} would not end")


def diagnose(cluster: Cluster | None, programs: list[MosixProgram], lines: int = 25) -> None:
    """What mosrun said (its MOSRUN: lines) and the end of every mosd log."""
    for p in programs:
        try:
            err = p.err.read_text(errors="replace").strip()
        except OSError:
            continue
        if err:
            say(f"--- stderr of mosrun ({p.err.name}) ---")
            say("\n".join(err.splitlines()[-lines:]))
    if cluster is not None:
        for _k, log in cluster.logs().items():
            try:
                text = log.read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            say(f"--- {log} (last {lines} lines) ---")
            say("\n".join(text[-lines:]))


# -- the baseline -------------------------------------------------------------------------------------
def loopback_tcp_seconds(total: int, chunk: int = 4 << 20) -> float:
    """Seconds to move ``total`` bytes over one loopback TCP connection (127.0.0.1) from a child
    process (``sendall`` of ``chunk``-byte buffers) into this one (``recv_into``)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the sender
        code = 0
        try:
            server.close()
            data = os.urandom(chunk)
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.recv(1)  # "go"
                left = total
                while left > 0:
                    piece = data if left >= chunk else data[:left]
                    s.sendall(piece)
                    left -= len(piece)
                s.shutdown(socket.SHUT_WR)
                s.recv(1)
        except BaseException:
            code = 1
        os._exit(code)
    try:
        conn, _ = server.accept()
        buf = bytearray(chunk)
        view = memoryview(buf)
        got = 0
        t0 = time.perf_counter()
        conn.sendall(b"g")
        while got < total:
            n = conn.recv_into(view)
            if n == 0:
                break
            got += n
        t1 = time.perf_counter()
        conn.close()
        if got != total:
            raise SystemExit(f"loopback TCP baseline: {got:,} bytes of {total:,} arrived")
        return t1 - t0
    finally:
        server.close()
        os.waitpid(pid, 0)


def fresh_memory_seconds(size: int, rest: float = 3.0) -> float:
    """How long touching ``size`` bytes of new memory takes (each page written once),
    ``rest`` seconds after memory was last freed. Whatever receives a moved process
    pays this for its memory. On this VM (virtio-balloon free page reporting) freed
    memory goes back to the host after ~2 s and comes back slowly."""
    import mmap

    time.sleep(rest)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        started = time.perf_counter()
        memory[::4096] = b"\1" * len(range(0, size, 4096))
        return time.perf_counter() - started
    finally:
        memory.close()


def loopback_tcp_rtt_us(rounds: int, size: int = 64, one_cpu: bool = False) -> float:
    """µs per round trip of a ``size``-byte message over loopback TCP (TCP_NODELAY), ping-pong
    between this process and a child, ``rounds`` times; with ``one_cpu``, both on one CPU (on
    this VM, waking an idle vCPU for every hand-over costs more than the hand-over)."""
    allowed = os.sched_getaffinity(0)
    if one_cpu:
        os.sched_setaffinity(0, {min(allowed)})  # the child inherits it
    try:
        return _ping_pong(rounds, size)
    finally:
        os.sched_setaffinity(0, allowed)


def _ping_pong(rounds: int, size: int) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the echo
        code = 0
        try:
            server.close()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    data = s.recv(size)
                    if not data:
                        break
                    s.sendall(data)
        except BaseException:
            code = 1
        os._exit(code)
    try:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * size

        def ping(n: int) -> None:
            for _ in range(n):
                conn.sendall(msg)
                got = 0
                while got < size:
                    got += len(conn.recv(size - got))

        ping(min(1000, rounds))  # warm
        t0 = time.perf_counter()
        ping(rounds)
        t1 = time.perf_counter()
        conn.close()
        return 1e6 * (t1 - t0) / rounds
    finally:
        server.close()
        os.waitpid(pid, 0)


# -- the measurements ---------------------------------------------------------------------------------
def stamps(text: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if line.startswith("t "):
            try:
                out.append(float(line[2:]))
            except ValueError:
                pass
    return out


def stopped_gap(prog: MosixProgram, t_cmd: float, t_row: float, timeout: float = 30.0) -> tuple[float, float]:
    """The largest gap between consecutive timestamps around a move (after the command started,
    ending after the row showed the move): (the last before it, the first after it)."""
    wait_for(lambda: any(t > t_row for t in stamps(prog.text())), timeout, "output after the move", poll=0.01)
    times = stamps(prog.text())
    gaps = [(b - a, a, b) for a, b in zip(times, times[1:]) if b > t_cmd and a < t_row]
    if not gaps:
        raise Failure("no output around the move")
    _, a, b = max(gaps)
    return a, b


def one_move(prog: MosixProgram, to: str, expect: str) -> dict:
    t = prog.migrate(to, expect)
    a, b = stopped_gap(prog, t["t_cmd"], t["t_row"])
    return {
        "end_to_end": t["t_row"] - t["t_cmd"],
        "command": t["t_ret"] - t["t_cmd"],
        "stop_to_row": t["t_row"] - a,
        "stopped": b - a,
        "nmigs": t["nmigs"],
    }


def check_memory(prog: MosixProgram, expected: str, timeout: float) -> None:
    """SIGUSR1: the program prints the CRC-32 of its whole buffer; it must be the first one."""
    before = len(prog.text().splitlines())
    os.kill(prog.pid, signal.SIGUSR1)
    line = prog.wait_line("crc", timeout, after=before)
    if line.split()[1] != expected:
        raise Failure(f"the buffer changed: CRC-32 {line.split()[1]}, {expected} at the start")


def bench_mode(
    cluster: Cluster, work: Path, size: int, mode: str, repeat: int, wait: float, programs: list[MosixProgram]
) -> dict:
    """``repeat`` moves out and home of a fresh program holding ``size`` bytes; the timings, or
    the failure (with what mosrun and the daemons said printed) in ``error``."""
    cluster.set_proximate(mode == "raw")
    script = work / "holder.py"
    script.write_text(PROGRAM)
    prog = MosixProgram(cluster, [PYTHON, str(script), str(size)], work, f"holder-{size}-{mode}")
    programs.append(prog)
    out: list[dict] = []
    on: list[dict] = []
    home: list[dict] = []
    try:
        prog.wait_row()
        ready = prog.wait_line("ready", 120.0 + size / 50e6)
        crc = ready.split()[2]
        prog.wait_line("t ", 10.0)
        if wait > 0:
            wait_idle(wait)
        for _ in range(repeat):
            time.sleep(0.3)
            out.append(one_move(prog, "2", cluster.ip(2)))
            time.sleep(0.3)
            on.append(one_move(prog, "3", cluster.ip(3)))
            time.sleep(0.3)
            home.append(one_move(prog, "home", "here"))
        check_memory(prog, crc, 60.0 + size / 100e6)
        error = None
    except Failure as err:
        error = str(err)
        say(
            f"  {size_name(size)} {mode}: FAILED after {len(out)} move(s) out, {len(on)} on and {len(home)} home: "
            f"{error}"
        )
        diagnose(cluster, [prog])
    finally:
        prog.stop()
    for way, runs in (("out", out), ("on", on), ("home", home)):
        if runs:
            say(
                f"  {size_name(size)} {mode} {way}: end-to-end {[round(r['end_to_end'], 3) for r in runs]} s, "
                f"stopped {[round(r['stopped'], 3) for r in runs]} s, stop->row "
                f"{[round(r['stop_to_row'], 3) for r in runs]} s (mosmigrate itself "
                f"{[round(r['command'], 3) for r in runs]} s)"
            )
    return {"out": out, "on": on, "home": home, "error": error}


def summarise(results: list[dict], tcp_mb_s: list[float]) -> list[dict]:
    rows = []
    tcp_best, tcp_median = max(tcp_mb_s), statistics.median(tcp_mb_s)
    for res in results:
        size, mode = res["size"], res["mode"]
        for way in ("out", "on", "home"):
            runs = res[way]
            judged = mode == "raw" and size == TARGET_SIZE and way != "on"
            if not runs:
                rows.append(
                    {
                        "size": size,
                        "mode": mode,
                        "way": way,
                        "error": res["error"] or "not measured",
                        "pass_rate": False if judged else None,
                        "pass_stopped": False if judged else None,
                    }
                )
                continue
            e2e = [r["end_to_end"] for r in runs]
            stop = [r["stopped"] for r in runs]
            proper = [r["stop_to_row"] for r in runs]
            mb_s = [size / t / 1e6 for t in e2e]
            proper_mb_s = [size / t / 1e6 for t in proper]
            rows.append(
                {
                    "size": size,
                    "mode": mode,
                    "way": way,
                    "runs": len(runs),
                    "error": res["error"],
                    "e2e": min(e2e),
                    "e2e_median": statistics.median(e2e),
                    "mb_s": max(mb_s),
                    "mb_s_median": statistics.median(mb_s),
                    "ratio": max(mb_s) / tcp_best,
                    "ratio_median": statistics.median(mb_s) / tcp_median,
                    "stopped": min(stop),
                    "stopped_median": statistics.median(stop),
                    "stop_to_row": min(proper),
                    "stop_to_row_median": statistics.median(proper),
                    "proper_mb_s": max(proper_mb_s),
                    "proper_mb_s_median": statistics.median(proper_mb_s),
                    "proper_ratio_median": statistics.median(proper_mb_s) / tcp_median,
                    "command_median": statistics.median(r["command"] for r in runs),
                    "pass_rate": (statistics.median(mb_s) >= TARGET_MB_S) if judged else None,
                    "pass_stopped": (statistics.median(stop) <= TARGET_STOPPED) if judged else None,
                }
            )
    return rows


def print_table(rows: list[dict], tcp_mb_s: list[float]) -> None:
    print(f"baseline: loopback TCP {max(tcp_mb_s):,.0f} MB/s (median {statistics.median(tcp_mb_s):,.0f})")
    head = (
        f"{'size':<8} {'mode':<4} {'way':<4} {'end-to-end s':>12} {'(median)':>8} {'MB/s':>6} "
        f"{'(median)':>8} {'x TCP':>7} {'(median)':>8} {'stopped s':>9} {'(median)':>8} "
        f"{'stop->row s':>11} {'MB/s':>6} {'x TCP':>7}  target"
    )
    print(head)
    print("-" * (len(head) + 20))
    for r in rows:
        if "e2e" not in r:
            print(
                f"{size_name(r['size']):<8} {r['mode']:<4} {r['way']:<4} FAILED: {r['error']}"
                + ("  (target: FAIL)" if r["pass_rate"] is False else "")
            )
            continue
        verdicts = []
        if r["pass_rate"] is not None:
            verdicts.append(f">= 1,000 MB/s {'pass' if r['pass_rate'] else 'FAIL'}")
            verdicts.append(f"stopped <= 1 s {'pass' if r['pass_stopped'] else 'FAIL'}")
        print(
            f"{size_name(r['size']):<8} {r['mode']:<4} {r['way']:<4} {r['e2e']:>12.3f} {r['e2e_median']:>8.3f} "
            f"{r['mb_s']:>6,.0f} {r['mb_s_median']:>8,.0f} {'x' + format(r['ratio'], '.3f'):>7} "
            f"{'x' + format(r['ratio_median'], '.3f'):>8} {r['stopped']:>9.3f} {r['stopped_median']:>8.3f} "
            f"{r['stop_to_row_median']:>11.3f} {r['proper_mb_s_median']:>6,.0f} "
            f"{'x' + format(r['proper_ratio_median'], '.3f'):>7}  {', '.join(verdicts) or '-'}"
        )
        if r["error"]:
            print(f"{'':<18} then FAILED: {r['error']}")
    print()
    commands = [r["command_median"] for r in rows if "command_median" in r]
    print(
        "end-to-end: from running mosmigrate to the row showing the move (MB/s = size / it; x TCP = over loopback "
        "TCP); the mosmigrate command itself took "
        + (f"{min(commands):.2f}-{max(commands):.2f} s (medians)" if commands else "-")
        + " of it. stopped: the longest gap in the program's output (it prints every ~10 ms). stop->row: from "
        "the program's last line before the gap to the row showing the move (medians; MB/s = size / it). "
        "Targets (DESIGN §5) on the 1 GiB raw medians."
    )


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,100M,1G", help="process sizes, comma-separated (K/M/G binary)")
    ap.add_argument(
        "--compress",
        choices=["both", "raw", "lz4"],
        default="both",
        help="raw: proximate nodes; lz4: the 'p' taken out of mosix.map",
    )
    ap.add_argument("--repeat", type=int, default=3, help="moves each way per size and mode (best and median)")
    ap.add_argument("--tcp-bytes", default="1G", help="bytes of the loopback TCP baseline")
    ap.add_argument("--base-ip", default=None, help="first loopback address of the cluster (default 127.X.25[1-4].1)")
    ap.add_argument("--dir", default=None, help="parent of the temporary directory (default: the system's)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each size and mode, wait up to this many seconds for idle CPUs (0: don't)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (cluster, outputs)")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    modes = ["raw", "lz4"] if args.compress == "both" else [args.compress]
    if args.repeat < 1 or not sizes or min(sizes) < 4096:
        ap.error("need --repeat >= 1 and sizes of at least 4K")
    if not os.path.exists(PYTHON):
        raise SystemExit(f"needs {PYTHON}")

    use_source_tree()
    work = Path(tempfile.mkdtemp(prefix="bench-migration-", dir=args.dir))
    cluster: Cluster | None = None
    programs: list[MosixProgram] = []
    results: list[dict] = []
    started = time.perf_counter()
    cpu_before = cpu_times()
    failed = False
    try:
        say("loopback TCP baseline ...")
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)
        tcp_bytes = parse_size(args.tcp_bytes)
        tcp = [tcp_bytes / loopback_tcp_seconds(tcp_bytes) / 1e6 for _ in range(max(args.repeat, 3))]
        say(f"  loopback TCP: {[round(x) for x in tcp]} MB/s")
        fresh = [max(sizes) / fresh_memory_seconds(max(sizes)) / 1e6 for _ in range(max(args.repeat, 3))]
        say(f"  first touch of {size_name(max(sizes))} of fresh memory: {[round(x) for x in fresh]} MB/s")
        cluster = Cluster(
            work / "cluster",
            nodes=3,
            base_ip=args.base_ip or default_base_ip(),
            memory_mb=max(8192, 4 * max(sizes) >> 20),
        )
        cluster.converged()
        for size in sizes:
            for mode in modes:
                say(f"{size_name(size)} {mode} ...")
                results.append(
                    {
                        "size": size,
                        "mode": mode,
                        **bench_mode(cluster, work, size, mode, args.repeat, args.wait_idle, programs),
                    }
                )
    except Failure as err:
        failed = True
        say(f"FAILED: {err}")
        diagnose(cluster, programs)
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
    rows = summarise(results, tcp)
    if args.json:
        print(
            json.dumps(
                {
                    "repeat": args.repeat,
                    "cpus": os.cpu_count(),
                    "seconds": elapsed,
                    "busy": busy,
                    "tcp_mb_s": tcp,
                    "fresh_memory_mb_s": fresh,
                    "rows": rows,
                    "raw": results,
                },
                indent=2,
            )
        )
    else:
        print(
            f"migration benchmark: 3 mosd nodes on loopback; {PYTHON} holding N bytes (1 MiB random, repeated) "
            f"moved node 1 -> node 2 ('out'), on to node 3 ('on': the image passes through node 1) and home ('home') with mosmigrate; best of {args.repeat}, median "
            f"beside; MB/s = N / end-to-end, 10^6 B/s; raw = proximate nodes, lz4 = not proximate; "
            f"{os.cpu_count()} CPUs; {elapsed:.0f} s; CPUs {100 * busy:.0f} % busy over the run (ours included)"
        )
        print_table(rows, tcp)
        print(
            f"baseline: first touch of {size_name(max(sizes))} of fresh memory, 3 s after memory was freed "
            f"{max(fresh):,.0f} MB/s (median {statistics.median(fresh):,.0f}): the target's share of a move "
            f"that no sender can avoid"
        )
    return 1 if any(r["pass_rate"] is False or r["pass_stopped"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
