"""Home's wall clock, for a guest whose clock must be home's.

A migrated process keeps reading the time of home: its monotonic clocks by a time
namespace, its wall clock by :class:`HomeClock` — this node's clock plus the offset
of home's, measured when the process arrived. The vDSO's clock functions are made
to enter the kernel, where the guest's filter (:func:`mosix_core.remote.guest.guest_filter`
with ``wall_clock``) stops them and :meth:`HomeClock.read` answers. A wait until a
wall-clock time (an absolute ``clock_nanosleep``, a futex wait with
``FUTEX_CLOCK_REALTIME``) is until home's time: the deadline is moved to this node's
clock while the call runs and put back when it returns.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import struct
import time

from mosix_core.errors import TraceError
from mosix_core.linux import procfs, ptrace, timens, vdso
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.remote.guest_buffers import GuestMemory

FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME, FUTEX_CMD = 128, 256, 0x7F
#: futex operations whose timeout is a wall-clock time: with FUTEX_CLOCK_REALTIME
#: (WAIT_BITSET: pthread_cond_timedwait, sem_timedwait; WAIT_REQUEUE_PI; LOCK_PI2),
#: or always (LOCK_PI)
FUTEX_WALL_DEADLINES, FUTEX_LOCK_PI = frozenset({9, 11, 13}), 6
SYS_CLOCK_GETTIME, SYS_GETTIMEOFDAY, SYS_TIME = NUMBERS["clock_gettime"], NUMBERS["gettimeofday"], NUMBERS["time"]
WALL_CALLS = frozenset({SYS_CLOCK_GETTIME, SYS_GETTIMEOFDAY, SYS_TIME})
#: the wall clocks (clock_gettime's ids), each read as this node's clock plus the
#: offset of home's wall clock: REALTIME, REALTIME_COARSE, REALTIME_ALARM, TAI
WALL_CLOCKS = {0: time.CLOCK_REALTIME, 5: 5, 8: time.CLOCK_REALTIME, 11: 11}


def futex_waits_for_wall_time(args: tuple[int, ...]) -> bool:
    """Whether a futex call's timeout (its fourth argument) is a wall-clock time."""
    op = args[1] & 0xFFFFFFFF
    command = op & FUTEX_CMD
    return command == FUTEX_LOCK_PI or bool(op & FUTEX_CLOCK_REALTIME and command in FUTEX_WALL_DEADLINES)


class HomeClock:
    """The wall clock of guest ``pid`` (whose memory is ``memory``): this node's until
    :meth:`follow_home`, then home's."""

    def __init__(self, pid: int, memory: GuestMemory) -> None:
        self.pid = pid
        self.memory = memory
        self.offset: int | None = None  # home's wall clock less this node's (ns), if read from home
        # a wait's wall-clock deadline, changed to this node's clock while the call
        # runs: where it is and what it held, to put back when the call returns
        self._deadline: tuple[int, bytes] | None = None

    def follow_home(self, offset_ns: int) -> list[int]:
        """From now on the process reads home's wall clock: this node's, ``offset_ns``
        ahead. Its vDSO's clock functions are made to enter the kernel (where the
        filter stops them). Called on the stopped process; the signals that came
        meanwhile, to be delivered."""
        self.offset = offset_ns
        mapping = next((m for m in procfs.read_maps(self.pid) if m.path == "[vdso]"), None)
        if mapping is None:
            return []  # no vDSO: every call enters the kernel already
        entries = vdso.clock_entry_points(self.memory.read(mapping.start, mapping.size))
        stub_size = len(vdso.syscall_stub(0))
        deferred = []
        # the process may be inside an entry's first instructions, which are about to
        # change: let it run past them first
        for _ in range(64):
            rip = ptrace.get_regs(self.pid).rip
            if not any(0 < rip - mapping.start - at < stub_size for at in entries):
                break
            ptrace.step(self.pid)
            stop = ptrace.wait_for(self.pid)
            if stop.kind == "signal" and stop.sig != signal.SIGTRAP:
                deferred.append(stop.sig)  # held back: delivered once it is done
            elif stop.kind != "signal":
                raise TraceError(f"guest {self.pid} stopped unexpectedly in its vDSO: {stop}", errno.ESRCH)
        else:
            raise TraceError(f"guest {self.pid} does not leave its vDSO's clock functions", errno.EBUSY)
        for at, nr in entries.items():
            self.memory.write(mapping.start + at, vdso.syscall_stub(nr))
        return deferred

    def read(self, nr: int, args: tuple[int, ...]) -> int:
        """clock_gettime of a wall clock, gettimeofday or time: this node's clock plus
        home's offset (the call's result). gettimeofday's obsolete timezone reads as UTC."""
        write = self.memory.write
        try:
            if nr == SYS_CLOCK_GETTIME:
                now = time.clock_gettime_ns(WALL_CLOCKS[args[0] & 0xFFFFFFFF]) + self.offset
                if not args[1]:
                    return -errno.EFAULT
                write(args[1], struct.pack("=qq", *divmod(now, timens.NS_PER_S)))
                return 0
            now = time.clock_gettime_ns(time.CLOCK_REALTIME) + self.offset
            seconds, nanoseconds = divmod(now, timens.NS_PER_S)
            if nr == SYS_TIME:
                if args[0]:
                    write(args[0], struct.pack("=q", seconds))
                return seconds
            if args[0]:
                write(args[0], struct.pack("=qq", seconds, nanoseconds // 1000))
            if args[1]:
                write(args[1], bytes(8))  # struct timezone: minutes west, dst
            return 0
        except TraceError:
            return -errno.EFAULT

    def deadline_to_here(self, address: int) -> bool:
        """The call's timespec at ``address``, a wall-clock time of home's, holds the
        same moment on this node's clock while the call runs; the process's own is put
        back when the call returns (:meth:`put_back_deadline`), before anything else of
        the process runs (a restart after a signal keeps the kernel's copy of the
        deadline). True: done, and the process runs to the call's end; False: nothing
        to move (the caller lets it go on)."""
        if address:
            try:
                original = self.memory.read(address, 16)
                seconds, nanoseconds = struct.unpack("=qq", original)
                if 0 <= nanoseconds < timens.NS_PER_S:  # else the kernel says EINVAL, as it would
                    here = max(0, seconds * timens.NS_PER_S + nanoseconds - self.offset)
                    self.memory.write(address, struct.pack("=qq", *divmod(here, timens.NS_PER_S)))
                    self._deadline = (address, original)
                    ptrace.syscall(self.pid)  # to the call's end, to put it back
                    return True
            except (TraceError, struct.error):
                pass  # unreadable: the kernel says EFAULT, as it would
        return False

    def put_back_deadline(self) -> None:
        """At the end of a call whose deadline was moved: the timespec as it was."""
        if self._deadline is not None:
            address, original = self._deadline
            self._deadline = None
            with contextlib.suppress(TraceError):  # unmapped meanwhile: nothing to put back
                self.memory.write(address, original)
