"""mosrun, mosenv and mosnative: run programs as MOSIX processes (mosrun(1)).

The command line is MOSIX's own (``-m500``, ``-3``, ``-S20``…), parsed by
:mod:`mosix_core.mosrun.options`; typer only serves ``--help``. Inside a program
that already runs under mosrun, ``mosrun``/``mosenv``/``mosnative`` do not start
a second supervisor: they tell the one supervising them (by opening
``/proc/self/mosrun``, which exists only under mosrun) what the next exec should
be, and exec it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from mosix_core import paths
from mosix_core.errors import MosixError
from mosix_core.mosrun import options as mosopts
from mosix_core.mosrun import options_wire

PROG = "mosrun"

HELP = """\
Usage: mosrun [location options] [program options] program [args]...
       mosrun -S{maxjobs} [location options] [program options] commands-file[,failed-file]
       mosrun -R{filename} [-O{fd=filename}[,{fd2=fn2}]]... [location options]
       mosrun -I{filename}
       mosenv {same arguments as mosrun}
       mosnative program [args]...

Run a program as a MOSIX process: it runs natively, with the calls MOSIX must
see supervised, and obeys the LIMITATIONS of mosrun(1).

Location options:
  -b               start on the best available node
  -r{host} -{a.b.c.d} -{n}   start on the given host, IP address or node number
  -h               start on the home node
  -L / -l          no automatic migration / allow it
  -G / -g          may / may not be frozen automatically
  -F               run even if the requested node is unavailable
  -A{minutes}      automatic checkpoint every so many minutes
  -N{max}          at most this many checkpoint files, then recycle
Program options:
  -m{mb}           the memory the program needs (0-262143 MB)
  -e               unsupported system calls fail with ENOSYS (read-only MAP_SHARED
                   becomes MAP_PRIVATE) instead of killing the program
  -w               as -e, and print a message on standard error each time
  -u               cancel -e/-w: unsupported features kill the program
  -C{filename}     base name of checkpoint files
  -z               the program's arguments begin at argument #0
  -c / -n          do not / do count system calls in migration decisions
  -d{0-10000}      decay rate of process statistics (default 9976)
  -t / -T          take the time of day from the hosting node / from home
  -X{/directory}   a private temporary directory (up to 10)
  -S{maxjobs}      run the lines of a commands-file, up to maxjobs at once (1-30000)

Available now: the program runs under supervision, at home or (-r{host} -{n}
-{a.b.c.d} -b, with -F to fall back home) on another node it migrates to at its
start, and mosmigrate moves it while it runs; the unsupported-feature
rules, -m -e -w -u -z -S, recursive mosrun, mosenv, mosnative, the /proc/self
programming interface, and checkpoints (-C -N -A, -R -O -I, mosmigrate checkpoint,
chkstop, chkexit) work as the manual says, and so do -t -T (a process away reads
home's clocks unless -t); -L -l -g -G -c -n -d are kept and readable by the
program through /proc/self.
Waiting for later features (accepted and checked now, with a notice when used):
  private temporary files: -X
"""

SYS_OPENAT = 257
AT_FDCWD = -100
O_CREAT = 0x40


def _say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


# -- talking to an enclosing supervisor ------------------------------------------------------------------
def tell_supervisor(request: dict) -> bool:
    """True if a supervisor took the request; False if we do not run under mosrun."""
    if not _traced():
        return False
    import json

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    data = ctypes.create_string_buffer(json.dumps(request).encode())
    result = libc.syscall(
        ctypes.c_long(SYS_OPENAT),
        ctypes.c_long(AT_FDCWD),
        b"/proc/self/mosrun",
        ctypes.c_long(1 | O_CREAT),
        ctypes.cast(data, ctypes.c_void_p),
    )
    if result >= 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:  # Linux's own answer: no supervisor here
        return False
    raise MosixError(f"the supervisor refused: {os.strerror(err)}")


def _traced() -> bool:
    """Whether anything traces us (a supervisor would): the common case, an outermost
    mosrun, is settled without a system call the supervisor would have to look at."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return line.split()[1] != b"0"
    except OSError:
        pass
    return True


# -- the plain functions ------------------------------------------------------------------------------------
def program_words(opts: mosopts.MosrunOptions, words: Sequence[str]) -> tuple[str, list[str]]:
    """(file to exec, argv) — with -z the arguments start at argument #0."""
    if opts.argv0_included:
        return words[0], list(words[1:]) or [words[0]]
    return words[0], list(words)


def apply_site_policy(opts: mosopts.MosrunOptions, words: list[str], etc: Path):
    """The site's mosrun policy, applied in this process (where no mosd runs)."""
    import attrs

    from mosix_core.config import load_config_if_present
    from mosix_core.contract.plugins import apply_policies, plugin_manager_for
    from mosix_core.users import user_name

    uid = os.getuid()
    config = load_config_if_present(etc)
    pm = plugin_manager_for(config.daemon if config is not None else None, etc)
    request = options_wire.to_request(opts, words, uid=uid, user=user_name(uid), etc=str(etc))
    strict = config.daemon.strict_limitations if config is not None else False
    request = apply_policies(pm, "mosix_check_mosrun", attrs.evolve(request, strict_limitations=strict))
    return options_wire.from_request(request)


def ask_daemon_for_policy(session, opts: mosopts.MosrunOptions, words: list[str]):
    """The site's mosrun policy, applied by the node's mosd (its hooks are loaded
    already). None if the daemon went away meanwhile: then it is applied here."""
    from mosix_core.daemon.protocol import CheckMosrunRequest
    from mosix_core.errors import DaemonUnavailable, Refused

    try:
        reply = session.ask(CheckMosrunRequest(request=options_wire.policy_fields(opts, words)))
    except DaemonUnavailable:
        return None
    except Refused:
        raise  # the policy's own message
    except MosixError as err:
        raise MosixError(f"the site's mosrun policy could not be applied: {err}") from None
    try:
        return options_wire.from_fields(reply.request)
    except (KeyError, TypeError, AttributeError):
        raise MosixError("the site's mosrun policy could not be applied: mosd's answer is malformed") from None


def open_session(etc: Path):
    """A session with the node's mosd (kept by the supervisor), or None without one."""
    from mosix_core.daemon.client import Session

    session = Session(etc)
    return session if session.try_open() else None


def notices(opts: mosopts.MosrunOptions) -> list[str]:
    """Say which requested behaviour cannot take effect (never ignore silently)."""
    out = []
    if opts.checkpoint_file is not None or opts.checkpoint_interval:
        from mosix_core.image.naming import NO_WRITE_ACCESS, CheckpointNaming, can_write_in

        naming = CheckpointNaming.for_process(os.getpid(), opts.checkpoint_file)
        if not can_write_in(naming.directory(os.getcwd())):
            out.append(NO_WRITE_ACCESS)
    if opts.private_dirs:
        out.append("note: -X takes effect with private temporary files; files there stay at home")
    return out


def mosrun(argv: Sequence[str], *, keep_loader: bool = False, etc: Path | None = None) -> int:
    """Everything ``mosrun``/``mosenv`` does; returns an exit status if it does not exec."""
    from mosix_core.mosrun import launch

    opts, words = mosopts.parse(argv)
    if opts.inspect is not None:
        from mosix_core.mosrun.recover import inspect

        sys.stdout.write(inspect(opts.inspect))
        return 0
    etc = paths.etc_dir(etc)
    env = launch.program_environment(os.environ, keep_loader)
    nested = {"options": options_wire.to_json(opts)}
    if opts.queue_jobs is not None:
        if tell_supervisor({**nested, "now": True}):
            return run_nested_queue(opts, words[0], env)
    elif opts.recover is None:
        program, args = program_words(opts, words)
        if tell_supervisor({**nested, "program": program}):
            _exec(program, args, env)
    launch.check_descriptors()
    session = open_session(etc)
    checked = ask_daemon_for_policy(session, opts, list(words)) if session is not None else None
    if checked is None:
        session = None
        opts, words = apply_site_policy(opts, list(words), etc)
    else:
        opts, words = checked
    if session is None:
        from mosix_core.mosrun.placement import without_daemon

        said, may_run = without_daemon(opts, etc)
        for text in said:
            if text.startswith("MOSRUN:"):
                print(text, file=sys.stderr)
            else:
                _say(text)
        if not may_run:
            return 1
    for text in notices(opts):
        _say(text)
    if opts.recover is not None:
        from mosix_core.mosrun.recover import recover_program

        recover_program(opts, env, etc, session)
    if opts.queue_jobs is not None:
        from mosix_core.mosrun.top import run_queue

        return run_queue(opts, words[0], env, etc, session)
    program, args = program_words(opts, words)
    import shutil

    from mosix_core.mosrun.supervisor import elf_class

    path = shutil.which(program, path=env.get("PATH")) if "/" not in program else program
    if path is not None and elf_class(path) == 1:
        print(f"MOSRUN: {program} is a 32-bit program - will run in native Linux mode", file=sys.stderr)
        _exec(program, args, env)
    from mosix_core.mosrun.top import run_program

    run_program(opts, program, args, env, etc, session)
    return 0  # not reached: run_program execs


def mosnative(argv: Sequence[str]) -> int:
    if not argv:
        raise MosixError("usage: mosnative program [args]...")
    tell_supervisor({"native": True, "program": argv[0]})
    _exec(argv[0], list(argv), dict(os.environ))
    return 0


def _exec(program: str, args: list[str], env: dict) -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(program, args, env)
    except FileNotFoundError:
        _say(f"{program}: command not found" if "/" not in program else f"{program}: No such file or directory")
        raise SystemExit(127) from None
    except OSError as err:
        _say(f"{program}: {err.strerror}")
        raise SystemExit(126) from None


def run_nested_queue(opts: mosopts.MosrunOptions, spec: str, env: dict) -> int:
    """``mosrun -S`` inside a MOSIX process: the jobs are our children, so they are
    MOSIX processes of the enclosing supervisor already; we only feed the queue."""
    import subprocess

    from mosix_core.mosrun.queue import CommandQueue, Progress

    commands, failed = mosopts.parse_queue_spec(spec)
    queue = CommandQueue(commands, failed, opts.queue_jobs, say=lambda t: print(t, file=sys.stderr))
    progress = Progress(2)
    children: dict[int, subprocess.Popen] = {}
    while queue.more:
        while (job := queue.next_job()) is not None:
            child = subprocess.Popen([b"bash", b"-c", job.raw], env=env)
            job.pid = child.pid
            children[child.pid] = child
            queue.started(job)
        if not queue.running:
            continue
        pid, status = os.wait()
        if pid in children:
            children.pop(pid)
            queue.finished(pid, os.waitstatus_to_exitcode(status) == 0)
            progress.show(queue)
    progress.end()
    return queue.close()


# -- entry points ---------------------------------------------------------------------------------------
def _guarded(fn, *args, **kwargs) -> int:
    try:
        return fn(*args, **kwargs)
    except MosixError as err:  # UsageError included
        _say(str(err))
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None, *, keep_loader: bool = False) -> None:
    global PROG
    args = list(sys.argv[1:] if argv is None else argv)
    PROG = "mosenv" if keep_loader else "mosrun"
    if args[:1] == ["--help"] or not args:
        print(HELP.replace("mosrun [", f"{PROG} [", 1) if keep_loader else HELP, end="")
        raise SystemExit(0 if args else 1)
    raise SystemExit(_guarded(mosrun, args, keep_loader=keep_loader))


def mosenv_main() -> None:
    main(keep_loader=True)


def mosnative_main() -> None:
    global PROG
    PROG = "mosnative"
    args = sys.argv[1:]
    if args[:1] == ["--help"]:
        print(
            "Usage: mosnative program [args]...\n\nRun a program outside MOSIX (as a native Linux "
            "process) from within a MOSIX program."
        )
        raise SystemExit(0)
    raise SystemExit(_guarded(mosnative, args))


if __name__ == "__main__":
    main()
