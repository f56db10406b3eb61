#!/usr/bin/env python3
"""Checkpoint benchmark: how fast does the process-image engine write and restore a process?

Drives the engine directly (no mosrun): a small C program (compiled with gcc into a
temporary directory) allocates N bytes, fills every page with a pattern computed from
the word's index, prints "ready" and spins in registers. The benchmark seizes it,
stops it and writes its image (``mosix_core.image.capture.write_image`` through an
``ImageWriter``) to a tmpfs directory, raw and lz4; then restores each image
(``mosix_core.image.restore.restore``) into a fresh restore stub, lets it run, sends
it SIGUSR1 — the program re-computes its pattern over the whole buffer and prints
"OK" or where it differs — and checks the answer.

``write``     from opening the image file to the image being complete (END written,
              file closed): the process's metadata, its pages from /proc/PID/mem,
              lz4 when asked, the tmpfs write. MB/s of memory saved (page bytes).
``restore``   from opening the image file to ``restore()`` returning: reading,
              checksums, lz4, the address space rebuilt by injected calls, pages
              written into /proc/PID/mem, files, signals, registers.
``memcpy``    the baseline, in the same run: a plain copy of the same number of bytes
              between two (already touched) bytearrays by memoryview slice assignment.
              Both engine figures are also printed as a ratio to it.
``freeze-like`` for the largest size with lz4 (as a freeze file would be written):
              stop→on disk (PTRACE_INTERRUPT until the image file is complete) and
              disk→running (fork of the restore stub until PTRACE_CONT of the
              restored process).

Sizes are binary (10M = 10 MiB, 1G = 1 GiB); MB/s are 10^6 bytes per second. Each
figure is the best of ``--reps`` runs, the median beside; the target (DESIGN §5:
checkpoint write / restore ≥ 1 GB/s raw to tmpfs) is judged on the median of the raw
rows from 100 MiB up (smaller images take a fixed ~10 ms of set-up: latency, not
throughput). Exits 1 when one misses it. Not for CI: a 1 GiB run needs ~4 GiB of free memory.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import busy_share, cpu_times, finish_work, say, wait_idle  # noqa: E402  (bench/machine.py)

from mosix_core.image import capture, restore, stub  # noqa: E402
from mosix_core.image.stream import ImageReader, ImageWriter  # noqa: E402
from mosix_core.linux import inject, ptrace  # noqa: E402

TRACE_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACEEXEC | ptrace.O_EXITKILL
TARGET_MB_S = 1000.0  # DESIGN §5: >= 1 GB/s raw to tmpfs
# A throughput target: below this size a checkpoint or restore is a fixed ~10 ms of
# set-up (injected calls, the stub) more than it is bytes per second.
TARGET_FROM = 100 << 20

# The target. Its memory is an array of 64-byte records, each computed from its index r,
# rather like an array of structs: a 64-bit hash (incompressible), the index, the double
# 1.0, a counter byte, zero, 16 bits of hash, a pointer-like r*64 offset, a flags word.
# lz4 (per 4 MiB record, as the image stream compresses) makes ~2.4x of it: neither the
# 100x of a constant fill nor the 1x of random bytes.
SOURCE = r"""
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }

static inline uint64_t mix(uint64_t x) {            /* splitmix64 */
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static inline uint64_t word(uint64_t k) {            /* the k-th 64-bit word of the buffer */
    uint64_t r = k >> 3;
    switch (k & 7) {
    case 0: return mix(r);
    case 1: return r;
    case 2: return 0x3FF0000000000000ULL;          /* 1.0 */
    case 3: return r & 0xff;
    case 4: return 0;
    case 5: return mix(r) >> 48;
    case 6: return 0x7f0000000000ULL + r * 64;
    default: return 0x0000000100000000ULL;
    }
}

int main(int argc, char **argv) {
    size_t n = strtoull(argv[1], 0, 10) / 8;
    uint64_t *buf = malloc(n * 8);
    if (!buf) { printf("malloc failed\n"); fflush(stdout); return 1; }
    for (size_t k = 0; k < n; k++)
        buf[k] = word(k);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    uint64_t x = 88172645463325252ULL, loops = 0;
    for (;;) {
        for (int i = 0; i < 1000000; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            __asm__ volatile("" : "+r"(x));
        }
        loops++;
        if (asked) {
            asked = 0;
            size_t k;
            for (k = 0; k < n && buf[k] == word(k); k++)
                ;
            if (k == n)
                printf("OK %zu bytes\n", n * 8);
            else
                printf("BAD word %zu: %#llx, expected %#llx\n", k, (unsigned long long)buf[k],
                       (unsigned long long)word(k));
            fflush(stdout);
        }
    }
}
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_name(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def compile_target(work: Path) -> str:
    if shutil.which("gcc") is None:
        raise SystemExit("bench/checkpoint.py needs gcc")
    src = work / "target.c"
    src.write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-o", str(work / "target"), str(src)], check=True)
    return str(work / "target")


# -- the baseline --------------------------------------------------------------------------------------
def memcpy_seconds(size: int, reps: int) -> list[float]:
    """A plain copy of ``size`` bytes between two touched buffers, ``reps`` times."""
    src = bytearray(b"\x5a") * size
    dst = bytearray(size)
    dst[:] = src  # fault the destination in
    s, d = memoryview(src), memoryview(dst)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        d[:] = s
        times.append(time.perf_counter() - t0)
    del s, d, src, dst
    return times


# -- processes -------------------------------------------------------------------------------------------
def reap(pid: int) -> None:
    """Kill traced child ``pid`` and wait until it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    ptrace.wait_gone(pid)


def wait_line(path: Path, offset: int, prefixes: tuple[str, ...], timeout: float, pid: int) -> str:
    """The first line of ``path`` after ``offset`` that starts with one of ``prefixes``."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith(prefixes):
                    return line
        got, status = os.waitpid(pid, os.WNOHANG | ptrace.WALL)
        if got:
            raise SystemExit(
                f"process {pid} ended ({ptrace.decode_status(got, status)}) before printing {'/'.join(prefixes)}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"process {pid}: no {'/'.join(prefixes)} in {path} after {timeout:g} s")
        time.sleep(0.005)


class Target:
    """The C program, running with ``size`` bytes filled, seized by us."""

    def __init__(self, exe: str, size: int, work: Path) -> None:
        self.out = work / f"target-{size}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, str(size)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.proc.pid
        wait_line(self.out, 0, ("ready", "malloc failed"), 300.0, self.pid)
        if "ready" not in self.out.read_text():
            self.kill()
            raise SystemExit(f"the target could not allocate {size_name(size)}")
        self.ready_len = self.out.stat().st_size
        ptrace.seize(self.pid, TRACE_OPTIONS)

    def checkpoint(self, path: Path, compress: bool, profile: cProfile.Profile | None = None) -> dict:
        """Stop, write the image, let it run again; the timings."""
        if path.exists():
            path.unlink()
        t_stop = time.perf_counter()
        ptrace.interrupt(self.pid)
        stop = ptrace.wait_for(self.pid)
        if stop.kind != "event":
            raise SystemExit(f"target {self.pid}: unexpected stop {stop}")
        regs = inject.copy_registers(ptrace.get_regs(self.pid))
        if profile:
            profile.enable()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            writer = ImageWriter(f, compress=compress)
            stats, deferred = capture.write_image(self.pid, writer, identity={"pid": self.pid}, regs=regs)
            writer.close()
        t1 = time.perf_counter()
        if profile:
            profile.disable()
        if deferred:
            raise SystemExit(f"target {self.pid}: signals {deferred} arrived during the checkpoint")
        ptrace.cont(self.pid)
        return {
            "write": t1 - t0,
            "stop_to_disk": t1 - t_stop,
            "page_bytes": stats.page_bytes,
            "image_bytes": path.stat().st_size,
        }

    def kill(self) -> None:
        reap(self.pid)
        self.proc.returncode = -signal.SIGKILL  # reaped above, not by Popen


def restore_once(image: Path, out: Path, ready_len: int, profile: cProfile.Profile | None = None) -> dict:
    """Restore ``image`` into a new stub, run it, ask it to verify its memory; the timings."""
    os.truncate(out, ready_len)  # the restored program writes after "ready"
    t_fork = time.perf_counter()
    child = stub.spawn_traced(TRACE_OPTIONS)  # stopped at its execve's exit
    try:
        if profile:
            profile.enable()
        t0 = time.perf_counter()
        with open(image, "rb") as f:
            restored = restore.restore(child, ImageReader(f, streaming=True), restore.RestoreOptions())
        t1 = time.perf_counter()
        if profile:
            profile.disable()
        ptrace.cont(child)
        t2 = time.perf_counter()
        # does it run, and is its memory what it was? (the SIGUSR1 handler came with the image)
        os.kill(child, signal.SIGUSR1)
        stop = ptrace.wait_for(child)
        if stop.kind != "signal" or stop.sig != signal.SIGUSR1:
            raise SystemExit(f"restored process {child}: unexpected stop {stop}")
        ptrace.cont(child, signal.SIGUSR1)
        line = wait_line(out, ready_len, ("OK", "BAD"), 120.0, child)
        if not line.startswith("OK"):
            raise SystemExit(f"restored process {child}: {line}")
        return {"restore": t1 - t0, "disk_to_running": t2 - t_fork, "page_bytes": restored.page_bytes, "verified": line}
    finally:
        reap(child)


# -- one size ------------------------------------------------------------------------------------------------
def bench_size(exe: str, size: int, modes: list[str], reps: int, work: Path, images: Path, profile: bool) -> dict:
    result: dict = {"size": size, "memcpy": memcpy_seconds(size, max(reps, 3)), "modes": {}}
    say(f"  memcpy {size_name(size)}: best {size / min(result['memcpy']) / 1e6:,.0f} MB/s")
    target = Target(exe, size, work)
    paths = {}
    profiles: dict[str, cProfile.Profile] = {}
    try:
        for mode in modes:
            paths[mode] = images / f"{size}.{mode}"
            runs = []
            for k in range(reps):
                prof = cProfile.Profile() if profile and k == reps - 1 else None
                runs.append(target.checkpoint(paths[mode], mode == "lz4", prof))
                if prof:
                    profiles[f"write {mode}"] = prof
            result["modes"][mode] = {"checkpoint": runs}
            say(
                f"  {size_name(size)} {mode}: write {[round(x['write'], 3) for x in runs]} s, "
                f"{runs[-1]['page_bytes']:,} page bytes, image {runs[-1]['image_bytes']:,} bytes"
            )
    finally:
        target.kill()
    try:
        for mode in modes:
            runs = []
            for k in range(reps):
                prof = cProfile.Profile() if profile and k == reps - 1 else None
                runs.append(restore_once(paths[mode], target.out, target.ready_len, prof))
                if prof:
                    profiles[f"restore {mode}"] = prof
            result["modes"][mode]["restore"] = runs
            say(
                f"  {size_name(size)} {mode}: restore {[round(x['restore'], 3) for x in runs]} s; "
                f"{runs[-1]['verified']}"
            )
    finally:
        for path in paths.values():
            if path.exists():
                path.unlink()
    for name, prof in profiles.items():
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        say(f"\n-- profile: {name} {size_name(size)} (by own time) --\n{text.getvalue()}")
    return result


# -- results -----------------------------------------------------------------------------------------------
def mb_s(size: int, seconds: list[float]) -> tuple[float, float]:
    """(best, median) MB/s."""
    return size / min(seconds) / 1e6, size / statistics.median(seconds) / 1e6


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for res in results:
        size = res["size"]
        copy_best, copy_med = mb_s(size, res["memcpy"])
        rows.append({"size": size, "what": "memcpy", "best": copy_best, "median": copy_med})
        for mode, runs in res["modes"].items():
            pages = runs["checkpoint"][-1]["page_bytes"]
            image = runs["checkpoint"][-1]["image_bytes"]
            for what, key in (("write", "checkpoint"), ("restore", "restore")):
                best, med = mb_s(pages, [r[what] for r in runs[key]])
                target = TARGET_MB_S if mode == "raw" and size >= TARGET_FROM else None
                rows.append(
                    {
                        "size": size,
                        "what": f"{what} {mode}",
                        "best": best,
                        "median": med,
                        "ratio": best / copy_best,
                        "ratio_median": med / copy_med,
                        "seconds": min(r[what] for r in runs[key]),
                        "page_bytes": pages,
                        "image_bytes": image,
                        "target": target,
                        "pass": None if target is None else med >= target,
                    }
                )
    return rows


def freeze_like(results: list[dict]) -> dict | None:
    """stop→on disk and disk→running for the largest size measured with lz4."""
    with_lz4 = [r for r in results if "lz4" in r["modes"]]
    if not with_lz4:
        return None
    res = max(with_lz4, key=lambda r: r["size"])
    runs = res["modes"]["lz4"]
    down = [r["stop_to_disk"] for r in runs["checkpoint"]]
    up = [r["disk_to_running"] for r in runs["restore"]]
    return {"size": res["size"], "stop_to_disk": down, "disk_to_running": up}


def print_table(rows: list[dict], freeze: dict | None) -> None:
    head = (
        f"{'size':<8} {'what':<12} {'MB/s':>9} {'(median)':>9} {'x memcpy':>9} {'(median)':>9} "
        f"{'seconds':>8} {'image':>12} {'target':>12} {'':>4}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["what"] == "memcpy":
            print(f"{size_name(r['size']):<8} {'memcpy':<12} {r['best']:>9,.0f} {r['median']:>9,.0f}")
            continue
        image = r["image_bytes"] / 1e6
        shrink = r["page_bytes"] / r["image_bytes"]
        verdict = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        target = f">= {r['target']:,.0f} MB/s" if r["target"] else "-"
        print(
            f"{size_name(r['size']):<8} {r['what']:<12} {r['best']:>9,.0f} {r['median']:>9,.0f} "
            f"{'x' + format(r['ratio'], '.3f'):>9} {'x' + format(r['ratio_median'], '.3f'):>9} "
            f"{r['seconds']:>8.3f} {f'{image:,.0f} MB /{shrink:.1f}':>12} {target:>12} {verdict:>4}"
        )
    if freeze:
        down, up = freeze["stop_to_disk"], freeze["disk_to_running"]
        print()
        print(
            f"freeze-like (lz4) {size_name(freeze['size'])}: stop→on disk {min(down):.3f} s "
            f"(median {statistics.median(down):.3f}), disk→running {min(up):.3f} s "
            f"(median {statistics.median(up):.3f})"
        )


# -- the image directory ----------------------------------------------------------------------------------
def make_image_dir(parent: Path) -> tuple[Path, bool]:
    """A fresh directory under ``parent`` (created if missing); whether ``parent`` was created."""
    created = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=parent)), created


def filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it)."""
    path, best = path.resolve(), ("", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1]
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best[0]):
            best = (point, fields[2])
    return best[1]


# -- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,100M,1G", help="process sizes, comma-separated (K/M/G binary)")
    ap.add_argument("--compress", choices=["both", "raw", "lz4"], default="both")
    ap.add_argument(
        "--dir", default="/dev/shm/mosix-bench", help="where images are written (a tmpfs; created and removed)"
    )
    ap.add_argument("--reps", type=int, default=3, help="checkpoints and restores of each (best and median)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each size, wait up to this many seconds for idle CPUs (0: don't)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="cProfile the last write and restore of each size and mode (slows them)"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (program, outputs)")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    modes = ["raw", "lz4"] if args.compress == "both" else [args.compress]
    if args.reps < 1 or not sizes or min(sizes) < 4096:
        ap.error("need --reps >= 1 and sizes of at least 4K")

    work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    parent = Path(args.dir)
    images, created = make_image_dir(parent)
    fstype = filesystem(parent)
    results = []
    started = time.perf_counter()
    cpu_before = cpu_times()
    try:
        exe = compile_target(work)
        for size in sizes:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            say(f"{size_name(size)} ...")
            results.append(bench_size(exe, size, modes, args.reps, work, images, args.profile))
    finally:
        shutil.rmtree(images, ignore_errors=True)
        if created:
            try:
                parent.rmdir()
            except OSError:
                pass
        finish_work(work, args.keep)
    elapsed = time.perf_counter() - started
    busy = busy_share(cpu_before, cpu_times())
    rows = summarise(results)
    freeze = freeze_like(results)
    if args.json:
        print(
            json.dumps(
                {
                    "dir": str(parent),
                    "fstype": fstype,
                    "reps": args.reps,
                    "cpus": os.cpu_count(),
                    "seconds": elapsed,
                    "busy": busy,
                    "rows": rows,
                    "freeze_like": freeze,
                    "raw": results,
                },
                indent=2,
            )
        )
    else:
        print(
            f"checkpoint benchmark: images in {parent} ({fstype}); {os.cpu_count()} CPUs; best of "
            f"{args.reps}, median beside; MB/s of process memory (page bytes), 10^6 B/s; image = MB "
            f"on disk / compression; {elapsed:.0f} s; CPUs {100 * busy:.0f} % busy over the run (ours "
            f"included)"
        )
        print_table(rows, freeze)
    return 1 if any(r.get("pass") is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
