#!/usr/bin/env python3
"""Freeze benchmark: how long do freezing and unfreezing a large process take?

The same target program as bench/checkpoint.py (it fills N bytes with a pattern,
then spins; SIGUSR1 makes it verify the whole buffer and print "OK"), frozen and
unfrozen by the supervisor's own code (:class:`mosix_core.mosrun.freezing.Freezer`:
the process's ``FREEZE_DIR``, an lz4 image created and unlinked there, the memory
released, the process left a shell), then verified.

``freeze``    PTRACE_INTERRUPT until the image is on disk and the memory released
              (the process's RSS is printed after).
``unfreeze``  PTRACE_INTERRUPT of the shell until the process runs again.
``baselines`` measured in the same run, on the same sizes: a plain memory copy, and
              writing then reading back the same number of bytes to a file in the
              same directory (what the disk does without us). Each figure is also
              printed as a ratio to them.

Not for CI: 1 GiB needs ~3 GiB of free memory and as much disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint import ROOT, Target, compile_target, memcpy_seconds, parse_size, size_name, wait_line  # noqa: E402
from machine import say, wait_idle  # noqa: E402

sys.path.insert(0, str(ROOT))
from mosix_core.image import freeze as engine  # noqa: E402
from mosix_core.linux import inject, ptrace  # noqa: E402
from mosix_core.mosrun.freezing import Freezer  # noqa: E402


def stopped(pid: int) -> None:
    ptrace.interrupt(pid)
    stop = ptrace.wait_for(pid)
    if stop.kind != "event":
        raise SystemExit(f"target {pid}: unexpected stop {stop}")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def file_round_trip(directory: Path, size: int) -> tuple[float, float]:
    """(write + fsync-free close, read back) seconds of ``size`` bytes in ``directory``."""
    block = os.urandom(1 << 20) * 4
    path = directory / "baseline"
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
    t1 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(len(block)):
            pass
    t2 = time.perf_counter()
    path.unlink()
    return t1 - t0, t2 - t1


def one_round(target: Target, freezer: Freezer, serial: int) -> dict:
    pid = target.pid
    t0 = time.perf_counter()
    stopped(pid)
    regs = inject.copy_registers(ptrace.get_regs(pid))
    frozen = freezer.freeze(pid, "M", serial, regs)
    t1 = time.perf_counter()
    frozen_rss = rss_kb(pid)
    engine.wait_in_shell(pid, frozen.shell)
    ptrace.cont(pid)
    t2 = time.perf_counter()
    stopped(pid)
    deferred = freezer.thaw(pid, frozen)
    ptrace.cont(pid)
    t3 = time.perf_counter()
    frozen.discard()
    if deferred:
        raise SystemExit(f"signals {deferred} arrived while unfreezing")
    answer_at = target.out.stat().st_size
    os.kill(pid, signal.SIGUSR1)
    stop = ptrace.wait_for(pid)
    if stop.kind != "signal" or stop.sig != signal.SIGUSR1:
        raise SystemExit(f"unfrozen process {pid}: unexpected stop {stop}")
    ptrace.cont(pid, signal.SIGUSR1)
    line = wait_line(target.out, answer_at, ("OK", "BAD"), 120.0, pid)
    if not line.startswith("OK"):
        raise SystemExit(f"unfrozen process: {line}")
    return {
        "freeze": t1 - t0,
        "unfreeze": t3 - t2,
        "frozen_rss_kb": frozen_rss,
        "page_bytes": frozen.page_bytes,
        "image_bytes": frozen.image_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G", help="process sizes, comma-separated (K/M/G binary)")
    ap.add_argument(
        "--dir",
        default="/var/tmp/mosix-bench-freeze",
        help="the freezing directory (created and removed; a disk, as freezing directories are)",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=30.0)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="bench-freeze-"))
    freeze_dir = Path(args.dir)
    freeze_dir.mkdir(parents=True, exist_ok=True)
    os.environ["FREEZE_DIR"] = str(freeze_dir)  # the target inherits it
    freezer = Freezer(None)
    rows = []
    try:
        exe = compile_target(work)
        for size in sizes:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            copy = min(memcpy_seconds(size, 3))
            disk_write, disk_read = min(file_round_trip(freeze_dir, size) for _ in range(2))
            target = Target(exe, size, work)
            try:
                runs = [one_round(target, freezer, k) for k in range(args.reps)]
            finally:
                target.kill()
            say(f"{size_name(size)}: {[(round(r['freeze'], 3), round(r['unfreeze'], 3)) for r in runs]}")
            rows.append((size, copy, disk_write, disk_read, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(freeze_dir, ignore_errors=True)
    print(
        f"freeze benchmark: freezing directory {freeze_dir}; best of {args.reps}, median beside; "
        f"baselines in the same run: memcpy, and a plain file write / read of the same size there"
    )
    for size, copy, disk_write, disk_read, runs in rows:
        freeze_s = [r["freeze"] for r in runs]
        thaw_s = [r["unfreeze"] for r in runs]
        last = runs[-1]
        print(
            f"{size_name(size)}: image {last['image_bytes'] / 1e6:,.0f} MB for {last['page_bytes'] / 1e6:,.0f} MB "
            f"of memory; RSS while frozen {last['frozen_rss_kb']} kB"
        )
        print(
            f"  freeze   {min(freeze_s):.3f} s (median {statistics.median(freeze_s):.3f}) = "
            f"{min(freeze_s) / copy:.1f}x the memcpy time ({copy:.3f} s), {min(freeze_s) / disk_write:.2f}x "
            f"the plain write ({disk_write:.3f} s)"
        )
        print(
            f"  unfreeze {min(thaw_s):.3f} s (median {statistics.median(thaw_s):.3f}) = "
            f"{min(thaw_s) / copy:.1f}x the memcpy time, {min(thaw_s) / disk_read:.2f}x the plain read "
            f"({disk_read:.3f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
