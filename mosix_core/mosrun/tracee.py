"""A process the supervisor traces, as per-process state in named parts and per-thread
state apart.

What the kernel keeps per thread — registers, the signal mask, the stops it reports —
is the :class:`Thread`'s; everything else is the process's (:class:`Tracee`): its
MOSIX parameters, its program, its checkpoints, its freezing, its stay away and the move
under way. MOSIX refuses threads, so a tracee has one thread today, whose tid is the
pid; the split is there so that a later step can trace several.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from mosix_core.errors import MosixError
from mosix_core.linux import procfs
from mosix_core.mosrun import checkpoints, freezing, migration, procself
from mosix_core.mosrun import options as mosopts
from mosix_core.mosrun.move import Move, MoveRequest

NOTHING_PENDING = object()  # /proc/self/mosrun: how a recursive mosrun talks to us
PENDING = object()  # a call of the program answered later (its /proc/self/migrate)


def initial_state(opts: mosopts.MosrunOptions) -> procself.MosixState:
    """A new MOSIX process's run-time parameters, from mosrun's options."""
    return procself.MosixState(
        lock=int(opts.lock),
        freezable=int(opts.freezable),
        unsupportok={"kill": 0, "silent": 1, "warn": 2}[opts.unsupported],
        needmem=opts.memory_mb or 0,
        cpujob=int(opts.cpujob),
        decayrate=opts.decay,
        local_time=int(opts.local_time),
        checkpoint_file=opts.checkpoint_file,
        checkpoint_limit=opts.checkpoint_limit or 0,
        checkpoint_interval=opts.checkpoint_interval or 0,
        strict=int(opts.strict_limitations),
    )


def options_of(state: procself.MosixState) -> mosopts.MosrunOptions:
    """The inheritable options a process has now (for a recursive mosrun)."""
    return mosopts.MosrunOptions(
        lock=bool(state.lock),
        freezable=bool(state.freezable),
        unsupported=("kill", "silent", "warn")[state.unsupportok],
        memory_mb=state.needmem or None,
        cpujob=bool(state.cpujob),
        decay=state.decayrate,
        local_time=bool(state.local_time),
        strict_limitations=bool(state.strict),
    )


def flag_summary(state: procself.MosixState) -> str:
    """The short option string mosps shows."""
    flags = []
    if state.needmem:
        flags.append(f"-m{state.needmem}")
    flags += [("", "-e", "-w")[state.unsupportok]] if state.unsupportok else []
    flags += ["-L"] if state.lock else []
    flags += ["-g"] if not state.freezable else []
    flags += ["-c"] if state.cpujob else []
    return " ".join(flags)


def row_fields(state: procself.MosixState) -> dict:
    """The process-table fields mosd keeps from the process's parameters: what mosps shows,
    what automatic freezing and the balancer go by."""
    return {
        "options": flag_summary(state),
        "freezable": bool(state.freezable),
        "locked": bool(state.lock),
        "cpujob": bool(state.cpujob),
        "decayrate": state.decayrate,
        "needmem": state.needmem,
        "cleared": state.statistics_cleared,
    }


@attrs.define(eq=False)
class Thread:
    """What the kernel keeps per thread. Registers and the signal mask are read from
    the kernel when they are needed (never cached here); what a stop means is decided
    per thread too."""

    tid: int
    allow_sigstop: bool = False  # chkstop: this once, the SIGSTOP delivered is meant


@attrs.define(eq=False)
class Program:
    """The program the process runs, until its next exec."""

    command: str = ""
    mosix_tool: bool = False  # our own mosrun/mosenv/mosnative (see Supervisor._exec)
    # the state to take at the next exec (None: become native), as a recursive
    # mosrun/mosnative asked; NOTHING_PENDING when nothing was asked
    pending_exec: object = attrs.field(factory=lambda: NOTHING_PENDING)
    # read-only MAP_SHARED file mappings it has as MAP_PRIVATE ones, [start, end): adding
    # PROT_WRITE there is unsupported (rules.MapPrivately)
    converted: list[tuple[int, int]] = attrs.field(factory=list)


@attrs.define(eq=False)
class Freezing:
    """Its freezing (mosix_core.mosrun.freeze_control)."""

    frozen: freezing.Frozen | None = None
    wanted: str | None = None  # "A"/"P"/"M": freeze at the next stop; "-": unfreeze
    count: int = 0  # how many times it was frozen (names its image)
    told_no_space: bool = False  # said once: the policy retries every few seconds


@attrs.define(eq=False)
class Tracee:
    """One traced process (see the module's docstring)."""

    pid: int
    state: procself.MosixState | None  # None: not a MOSIX process (mosnative, 32-bit)
    parent: int | None = None
    job: object = None  # the -S queue job this process is the root of
    virtual_pid: int | None = None  # restored: the pid the program knows itself by
    program: Program = attrs.field(factory=Program)
    thread: Thread = attrs.field(default=attrs.Factory(lambda self: Thread(self.pid), takes_self=True))
    plan: checkpoints.CheckpointPlan | None = None  # its checkpoints
    freezing: Freezing = attrs.field(factory=Freezing)
    away: migration.Away | None = None  # running on another node
    move: Move | None = None  # the move under way (mosix_core.mosrun.move)
    # the move its next exec makes: mosrun -r/-{n}/-b (where the program starts), or back
    # where the process was when it came home to exec
    start_at: MoveRequest | None = None
    remote_utime: float = 0.0  # user CPU seconds of its stays away that ended

    @property
    def native(self) -> bool:
        return self.state is None

    @property
    def own_pid(self) -> int:
        return self.virtual_pid or self.pid

    @property
    def command(self) -> str:
        return self.program.command


def configuration(etc):
    """The node's MOSIX configuration; None where there is none (or it does not load)."""
    from mosix_core.config import load_config_if_present

    try:
        return load_config_if_present(etc)
    except MosixError:
        return None


# -- the program a process runs ---------------------------------------------------------------
def command_line(pid: int) -> str:
    line = procfs.command_line(pid)
    return "?" if line is None else line


MOSIX_TOOLS = frozenset({"mosrun", "mosenv", "mosnative"})


def is_mosix_tool(command: str) -> bool:
    words = command.split()[:2]
    return any(os.path.basename(word) in MOSIX_TOOLS for word in words)


def program_name(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "program"


def elf_class(path: str) -> int | None:
    """1 for a 32-bit ELF file, 2 for 64-bit, None if it is not ELF (a script...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        return None
    if head[:4] != b"\x7fELF":
        return None
    return head[4]


def is_32bit(pid: int) -> bool:
    return elf_class(f"/proc/{pid}/exe") == 1


def node_in_cluster(etc) -> Callable[[int], bool]:
    """``in_cluster`` for the node whose configuration is in ``etc``: a node number or
    host-order IP. The configuration is read when a program first asks (rarely), not
    while the program waits to start."""
    loaded: list = []

    def check(value: int) -> bool:
        if not loaded:
            loaded.append(configuration(etc))
        config = loaded[0]
        if config is None:
            return False
        from ipaddress import IPv4Address

        try:
            if value <= 65535:
                ip = config.resolve_node(str(value))
            else:
                ip = IPv4Address(value)
            return bool(config.cluster.contains(ip))
        except (MosixError, ValueError):
            return False

    return check
