"""Starting programs under supervision.

``mosrun prog`` keeps its own pid for the program: the ``mosrun`` process forks a
supervisor (through an intermediate process, so the supervisor is *not* the
program's child and never shows up in its ``wait``), the supervisor seizes it,
and it then installs the seccomp filter and execs the program. The shell that
started ``mosrun`` therefore waits for the program itself: exit status, signals
and job control are the program's own. The supervisor lives until the last
MOSIX process of the invocation is gone (background children included).

``mosrun -S`` is the other way round: the ``mosrun`` process is the supervisor
and the jobs are its children (see :mod:`mosix_core.mosrun.queue`).
"""

from __future__ import annotations

import os
import resource
import signal
import struct
from collections.abc import Callable, Mapping, Sequence

from mosix_core.errors import MosixError, TraceError
from mosix_core.linux import ptrace, seccomp
from mosix_core.linux.libc import LIBC
from mosix_core.mosrun import rules

MAX_FILES = 1024
PR_SET_PTRACER = 0x59616D61

# What glibc strips from the environment of a set-user-ID program (its
# UNSECURE_ENVVARS): real mosrun is set-user-ID, so its programs never see these;
# mosenv exists to keep them.
LOADER_ENVIRONMENT = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LD_AUDIT",
        "LD_DEBUG",
        "LD_DEBUG_OUTPUT",
        "LD_DYNAMIC_WEAK",
        "LD_HWCAP_MASK",
        "LD_LIBRARY_PATH",
        "LD_ORIGIN_PATH",
        "LD_PRELOAD",
        "LD_PROFILE",
        "LD_SHOW_AUXV",
        "LD_USE_LOAD_BIAS",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_ARENA_MAX",
        "MALLOC_ARENA_TEST",
        "MALLOC_CHECK_",
        "MALLOC_MMAP_MAX_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_PERTURB_",
        "MALLOC_TCACHE_COUNT",
        "MALLOC_TCACHE_MAX",
        "MALLOC_TCACHE_UNSORTED_LIMIT",
        "MALLOC_TOP_PAD_",
        "MALLOC_TRIM_THRESHOLD_",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    }
)


def program_environment(env: Mapping[str, str], keep_loader: bool) -> dict[str, str]:
    if keep_loader:
        return dict(env)
    return {k: v for k, v in env.items() if k not in LOADER_ENVIRONMENT}


def check_descriptors() -> None:
    """mosrun(1): an open descriptor numbered 1024 or higher is refused."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    high = [fd for fd in fds if fd >= MAX_FILES]
    for fd in sorted(high):
        try:
            os.fstat(fd)  # listdir's own descriptor is gone by now
        except OSError:
            continue
        raise MosixError(f"File-descriptor #{fd} is open (only 1024 files supported under MOSIX)")


def limit_files() -> None:
    """mosrun fixes the open-files limit at 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = MAX_FILES if hard == resource.RLIM_INFINITY or hard > MAX_FILES else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(MAX_FILES, new_hard), new_hard))


def become_program(program: str, argv: Sequence[str], env: Mapping[str, str], filter_program) -> None:
    """The last steps of a traced process before it is the program: Linux defaults for
    the signals Python changed, the file limit, the filter, exec. Never returns."""
    for sig in (
        signal.SIGPIPE,
        signal.SIGXFSZ,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGCHLD,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        limit_files()
        seccomp.install(filter_program)
        os.execvpe(program, list(argv), dict(env))
    except TraceError as err:
        _die(f"mosrun: cannot supervise: {err}", 1)
    except FileNotFoundError:
        _die(
            f"mosrun: {program}: command not found"
            if "/" not in program
            else f"mosrun: {program}: No such file or directory",
            127,
        )
    except OSError as err:
        _die(f"mosrun: {program}: {err.strerror}", 126)


def become_restore_stub(env: Mapping[str, str]) -> None:
    """mosrun -R: exec the restore stub (no filter yet: the restorer installs it last).
    Never returns."""
    from mosix_core.image import stub

    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execve(stub.memfd(), ["mosrun"], dict(env))
    except OSError as err:
        _die(f"Restoration failed: {err.strerror}", 1)


def _die(message: str, status: int) -> None:
    try:
        os.write(2, (message + "\n").encode(errors="replace"))
    finally:
        os._exit(status)


def start_supervised(
    program: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    supervise: Callable[[int, int], None],
    become: Callable[[], None] | None = None,
) -> None:
    """Run ``program`` in this very process, traced by a new supervisor process.

    ``supervise(root_pid, messages_fd)`` runs in the supervisor after it has seized
    us; it must not return before the tracees are gone. ``become`` replaces the
    last step (the filter and exec of ``program``): mosrun -R execs the restore
    stub instead. Never returns here."""
    filter_program = rules.build_filter() if become is None else None
    root = os.getpid()
    to_front_r, to_front_w = os.pipe()
    to_super_r, to_super_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            if os.fork() != 0:
                os._exit(0)
            os.close(to_front_r)
            os.close(to_super_w)
            _supervisor_side(root, to_front_w, to_super_r, supervise)
        finally:
            os._exit(0)
    os.close(to_front_w)
    os.close(to_super_r)
    os.waitpid(middle, 0)
    pid_bytes = _read_exactly(to_front_r, 4)
    if len(pid_bytes) != 4:
        raise MosixError("could not start the supervisor")
    (supervisor,) = struct.unpack("=i", pid_bytes)
    LIBC.prctl(PR_SET_PTRACER, supervisor, 0, 0, 0)  # only matters under Yama
    os.write(to_super_w, b"go")
    os.close(to_super_w)
    answer = os.read(to_front_r, 4096)
    os.close(to_front_r)
    if answer != b"ok":
        raise MosixError(answer.decode(errors="replace") or "the supervisor failed to start")
    if become is not None:
        become()
    become_program(program, argv, env, filter_program)


def _supervisor_side(root: int, to_front: int, from_front: int, supervise: Callable[[int, int], None]) -> None:
    os.setsid()  # no terminal signals meant for the program
    messages = os.dup(2)
    os.set_inheritable(messages, False)
    os.write(to_front, struct.pack("=i", os.getpid()))
    if _read_exactly(from_front, 2) != b"go":
        return
    try:
        ptrace.seize(root)
    except TraceError as err:
        os.write(to_front, f"Kernel too secure to run MOSIX (by non-Super-User): {err}".encode())
        return
    os.write(to_front, b"ok")
    os.close(to_front)
    os.close(from_front)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # hold no pipe of the program's open
    os.close(null)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    supervise(root, messages)


def spawn_traced(program: str, argv: Sequence[str], env: Mapping[str, str], filter_program) -> int:
    """Fork a child of this (supervising) process that runs ``program`` traced by us."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_w)
        ok = _read_exactly(ready_r, 1) == b"1"
        os.close(ready_r)
        if not ok:
            os._exit(127)
        become_program(program, argv, env, filter_program)
    os.close(ready_r)
    try:
        ptrace.seize(pid)
        os.write(ready_w, b"1")
    except TraceError:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(ready_w)
    return pid


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data
