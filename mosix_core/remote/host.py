"""The guest host: one migrated process on the node it moved to.

``mosd`` starts it (``python -m mosix_core.remote.host``) for each accepted
migration, handing over the connection the image arrives on and a uid of the
guest's own (no other guest runs as it), in a scrubbed environment; it drops to that
uid before anything of the process exists here, and once the guest's stub exists it
becomes undumpable (the guest cannot reach into it). It then:

0. compares clocks with home (:mod:`~mosix_core.remote.clocks`) while still root,
   and puts the guest-to-be in a time namespace that shows home's monotonic and
   boot-time clocks; the wall clock is home's too when the nodes differ by more
   than ``wall_clock_tolerance_ms`` (unless ``mosrun -t``);
1. restores the arriving image into a fresh stub (:func:`moving.arrive`) and
   answers ``restored`` — or ``failed`` with the reason, and exits;
2. on ``go`` lets the guest run, tracing it (:class:`~mosix_core.remote.guest.Guest`):
   its forwarded calls go home over the same connection; signal frames from home
   are delivered; the process's exit (at home) ends the host;
3. on ``home`` stops the guest at a clean point and sends its image back (or on:
   when the process moves to another node, home passes the image through to it,
   and says with ``compress`` how that link wants it); once home says ``arrived`` the guest is
   removed, and on ``stay`` it runs on here as if nothing happened.
   :data:`SEND_HOME` (SIGURG) from this node's mosd means the same as ``home``
   from home: ``mosmigrate {pid} out`` and ``mosctl expel`` (a signal whose default
   action is to be ignored, so one that comes before the guest runs is lost, not
   fatal: mosd sends it again until the guest has gone).

A signal's default action killing the guest here is reported (``killed``) so the
process dies of it at home too. The connection breaking while the guest runs does
not end it: the guest stays stopped where it is (a call that was waiting for home
stays in the call) and the host waits, for the grace period home gave with ``go``,
on an abstract Unix socket named by the guest's token, where this node's mosd hands
over the connection home makes again (peer op ``reattach``). The two ends then
compare counts — the replies the guest had, the requests home had — so the call that
was waiting is sent again only if home never had it, and its reply, if lost, is sent
again by home: no call is lost or made twice. Past the grace period the guest is
killed (home recovers the process from its checkpoint, or tells the user "Lost
communication with {computer}").
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import time

from mosix_core.errors import MosixError, ProtocolError, TraceError
from mosix_core.image import stub
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import cpus, inject, ptrace, timens
from mosix_core.linux.libc import LIBC, fail
from mosix_core.remote import SEND_HOME, clocks, fastpath
from mosix_core.remote.frames import Channel, decode, encode_control
from mosix_core.remote.guest import Guest
from mosix_core.remote.link import (
    REATTACH_HANDSHAKE,
    Tally,
    accept_home,
    during_call,
    forwarder,
    keep_alive,
    listen_for_home,
)
from mosix_core.remote.moving import arrive, send_image

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
GUEST_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACESECCOMP | ptrace.O_EXITKILL
#: how often the guest's CPU time is reported home (seconds)
TIMES_EVERY = 1.0


class HomeGone(MosixError):
    """The connection to the process's home closed or went wrong."""


class HomeLost(HomeGone):
    """Home did not make the link again within the grace period: it is given up."""


class GuestHost:
    def __init__(
        self, sock: socket.socket, *, compress: bool, wall_clock_tolerance_ns: int = 0, forward_spin: float = 0.0
    ) -> None:
        self.sock = sock
        self.forward_spin = forward_spin  # seconds a reply is waited for spinning (the C loop)
        self.channel = Channel(sock)
        self.compress = compress
        self.wall_clock_tolerance_ns = wall_clock_tolerance_ns
        self.clocks = clocks.ClockOffsets()
        # home's word on the next image: lz4 or not, as the link to the node it goes
        # to (home, or the next node the image passes home for) wants it
        self.next_compress: bool | None = None
        self.guest: Guest | None = None
        self.controls: list[dict] = []  # control messages that came during a call
        self._next_times = 0.0
        self._all_cpus: set[int] = set()
        self._reported_utime: float | None = None
        # the link home made again after a cut (see _wait_for_home): the guest's secret
        # with home, how long it may take, where mosd hands the new connection over
        self.tally = Tally()
        self.token: str | None = None
        self.grace = 0.0
        self.listener: socket.socket | None = None
        self._c_doubt = False  # the C loop's call was cut: Python makes it again
        self._selector: selectors.BaseSelector | None = None

    # -- arriving ----------------------------------------------------------------------------
    def compare_clocks(self) -> None:
        """Measure home's clocks against ours; the guest-to-be's time namespace then
        shows home's monotonic and boot-time clocks (this needs root: call before
        giving it up, and before the guest's stub exists)."""
        self.clocks = clocks.measure_guest_side(self._send, self._control)
        if self.clocks.local_time or os.geteuid() != 0:
            return
        try:
            timens.children_shifted_by({name: self.clocks.of(name) for name in timens.SHIFTED})
        except TraceError as err:
            print(f"guest host: the guest keeps this node's monotonic clock: {err}", file=sys.stderr)

    @property
    def wall_clock_from_home(self) -> bool:
        return not self.clocks.local_time and abs(self.clocks.of("realtime")) > self.wall_clock_tolerance_ns

    def receive(self) -> bool:
        """Restore the arriving process; True once home said ``go``."""
        pid = stub.spawn_traced(GUEST_OPTIONS)
        guest = Guest(pid, None)
        try:
            restored = arrive(
                pid, ImageReader(self.sock.makefile("rb"), streaming=True), wall_clock=self.wall_clock_from_home
            )
            deferred = list(restored.deferred)
            if self.wall_clock_from_home:
                deferred += guest.read_home_wall_clock(self.clocks.of("realtime"))
        except (MosixError, OSError) as err:
            self._remove(pid)
            print(f"guest host: the process could not be restored here: {err}", file=sys.stderr)
            self._send({"op": "failed", "reason": str(err)})
            return False
        self._send({"op": "restored"})
        answer = self._control()
        if answer.get("op") != "go":
            self._remove(pid)
            return False
        self.guest = guest
        token, grace = answer.get("token"), answer.get("grace")
        if isinstance(token, str) and token and isinstance(grace, (int, float)) and grace > 0:
            try:
                self.listener = listen_for_home(token)
                self.token, self.grace = token, float(grace)
            except OSError as err:
                print(f"guest host: a cut link home will end the process: {err}", file=sys.stderr)
        self.guest.forward = forwarder(
            self.channel,
            self.guest,
            self._control_during_call,
            tally=self.tally,
            on_lost=self._link_broke if self.token else None,
        )
        for sig in deferred + list(answer.get("signals", [])):
            self.guest.signal(sig)
        return True

    # -- running -------------------------------------------------------------------------------
    def serve(self) -> int:
        """Run the guest until it ends at home or leaves; the host's exit status."""
        guest = self.guest
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # the wake-up fd ends the select below, and the loop's top obeys self.controls
        signal.signal(SEND_HOME, self._asked_home)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        self._selector = selector
        try:
            self._all_cpus = cpus.allowed()
            cpu = cpus.current()  # tracer and guest on one CPU
            cpus.pin(0, cpu)
            cpus.pin(guest.pid, cpu)
        except TraceError:
            pass
        loop = self._trap_loop(wake_r)
        ptrace.cont(guest.pid)
        try:
            while True:
                try:
                    if self._c_doubt:
                        # the call the C loop had sent when the link broke: made again
                        # in Python, which sends it only if home never had it
                        self._c_doubt, self.tally.in_doubt = False, True
                        if self._on_guest_stop(ptrace.Stop(guest.pid, "event", event=ptrace.EVENT_SECCOMP)):
                            return 0
                    while self.controls:
                        if self._obey(self.controls.pop(0)):
                            return 0
                    if self._drain():
                        return 0
                    self._report_times()
                    if loop is not None and not (guest.stepping or guest.leaving or self.controls):
                        if self._serve_in_c(loop):
                            return 0
                        _empty(wake_r)  # the signals it saw have been handled by now
                        continue
                    for key, _ in selector.select(timeout=TIMES_EVERY):
                        if key.fileobj is self.sock:
                            self._take(self._receive())
                        else:
                            _empty(wake_r)
                except (HomeGone, ProtocolError, OSError) as err:
                    if guest.exit_status is not None or isinstance(err, HomeLost) or not self.token:
                        raise
                    self._link_broke(err, False)
        except (HomeGone, ProtocolError, OSError) as err:
            self._remove(guest.pid)
            if guest.exit_status is not None:
                return 0  # it ended at home; home hung up first
            print(f"guest host: the link home ended: {err}", file=sys.stderr)
            return 1
        finally:
            if self.listener is not None:
                self.listener.close()

    def _trap_loop(self, wake_fd: int) -> fastpath.TrapLoop | None:
        """The C loop for the guest's simple calls, if it is built."""
        if not fastpath.AVAILABLE:
            return None
        try:
            return fastpath.TrapLoop(
                self.guest.pid, self.sock.fileno(), self.guest.memory_fd(), wake_fd, spin=self.forward_spin
            )
        except (TraceError, OSError) as err:
            print(f"guest host: the C trap loop cannot serve: {err}", file=sys.stderr)
            return None

    def _serve_in_c(self, loop: fastpath.TrapLoop) -> bool:
        """Let the C loop serve the guest until something needs Python, and do that;
        True once the guest has ended."""
        guest = self.guest
        before = loop.handled
        what, status, result, frames = loop.serve(TIMES_EVERY)
        guest.forwarded += loop.handled - before
        self.tally.replies += loop.handled - before + (what == fastpath.RESTART)  # home's answers taken in C
        for frame in frames:  # came while a call waited for its reply
            during_call(decode(frame), guest, self._control_during_call)
        if what == fastpath.STOP:
            return self._on_guest_stop(ptrace.decode_status(guest.pid, status))
        if what == fastpath.RESTART:
            guest.interrupted(status, result)
        elif what == fastpath.SOCKET:
            if frames:
                guest.resume()  # its call is done; the frames first
            else:
                self._take(self._receive())
        elif what == fastpath.ERROR:
            if status == errno.ECHILD:
                return True
            if status != errno.ESRCH:  # a guest killed meanwhile shows at its next wait
                self._c_doubt = True  # stopped in the call it was making
                raise HomeGone(os.strerror(status))
        return False

    def _link_broke(self, err: BaseException, in_call: bool) -> None:
        """The link home broke: the guest stays stopped (frozen where it is, its memory
        kept) until home makes the link again through this node's mosd, within the
        grace period home gave; then it goes on as if nothing happened. Raises
        :class:`HomeLost` when the grace period ends first."""
        if not in_call and not self._c_doubt:
            try:
                ptrace.interrupt(self.guest.pid)  # its stop is handled once home is back
            except TraceError:
                pass
        deadline = time.monotonic() + self.grace
        print(
            f"guest host: the link home broke ({err}); the guest waits up to {self.grace:g} s for home", file=sys.stderr
        )
        while True:
            sock = accept_home(self.listener, deadline)
            if sock is None:
                raise HomeLost(f"{err}; home did not come back within {self.grace:g} s")
            try:
                # onto the same descriptor: the C loop, the channel and the guest's
                # forwarder all go on with it
                os.dup2(sock.fileno(), self.sock.fileno())
            finally:
                sock.close()
            if self._selector is not None:  # epoll forgot the descriptor's old connection
                self._selector.unregister(self.sock)
                self._selector.register(self.sock, selectors.EVENT_READ)
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                keep_alive(self.sock)
                self.sock.settimeout(REATTACH_HANDSHAKE)
                self._send({"op": "reattached", "replies": self.tally.replies})
                answer = self._control()
                self.sock.settimeout(None)
            except (HomeGone, OSError) as again:
                err = again
                continue
            if answer.get("op") == "resumed" and isinstance(answer.get("requests"), int):
                self.tally.home_requests = answer["requests"]
                print("guest host: home is back; the guest goes on", file=sys.stderr)
                return

    def _take(self, message) -> None:
        """A frame from home while no call runs: a signal or a control message."""
        if isinstance(message, int):
            self.guest.signal(message)
        elif isinstance(message, dict):
            self._note(message)
        else:
            raise ProtocolError("a call or reply from home while no call was running")

    def _report_times(self) -> None:
        """The guest's user CPU time here, for mostimeof at home (when it changed)."""
        now = time.monotonic()
        if now < self._next_times:
            return
        self._next_times = now + TIMES_EVERY
        utime = self.guest.utime()
        if utime is not None and utime != self._reported_utime:
            self._reported_utime = utime
            self._send({"op": "times", "utime": utime})

    def _control_during_call(self, message: dict) -> None:
        """Home's word while a call of the guest runs there: kept for after it; asked
        home, the guest's next call is made at home (home ends a call that blocks)."""
        self._note(message)
        if message.get("op") == "home":
            self.guest.leaving = True

    def _note(self, message: dict) -> None:
        """Keep home's control message for the loop's top."""
        if message.get("op") == "home" and isinstance(message.get("compress"), bool):
            self.next_compress = message["compress"]
        self.controls.append(message)

    def _asked_home(self, *_) -> None:
        """SEND_HOME from mosd: as if home had said ``home`` (once, however often asked)."""
        if {"op": "home"} not in self.controls:
            self.controls.append({"op": "home"})

    def _drain(self) -> bool:
        """Handle the guest's stops; True once it has ended."""
        while True:
            try:
                pid, status = os.waitpid(self.guest.pid, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if self._on_guest_stop(ptrace.decode_status(pid, status)):
                return True

    def _on_guest_stop(self, stop: ptrace.Stop) -> bool:
        """One stop of the guest; True once it has ended (or gone home)."""
        try:
            if self.guest.on_stop(stop) is not None:
                if self.guest.killed_by is not None:
                    # the process dies at home of the same signal (its parent sees it)
                    self._send({"op": "killed", "signal": self.guest.killed_by})
                    self._control()  # home's "gone", once it has died there
                return True
        except TraceError as err:
            if err.errno != errno.ESRCH:
                print(f"guest host: tracing the guest failed: {err}", file=sys.stderr)
            return True
        if stop.kind == "event" and stop.event == ptrace.EVENT_STOP and stop.group_stop:
            # stopped (^Z...): the process stops at home too, for its parent to see
            self._send({"op": "stopped", "signal": self.guest.stopped_by or stop.sig})
            self.guest.stopped_by = None
        if self.guest.wants_home is not None:
            self.controls = [c for c in self.controls if c.get("op") != "home"]  # this is it
            if self._go_home():
                return True
        return False

    def _obey(self, message: dict) -> bool:
        """A control message from home; True when the guest is gone from here."""
        if message.get("op") == "home":
            return self._go_home()
        return False

    # -- leaving ---------------------------------------------------------------------------------
    def _go_home(self) -> bool:
        guest = self.guest
        pid = guest.pid
        guest.stepping = True
        try:
            ptrace.interrupt(pid)
        except TraceError:
            return True  # it has just died here (expelled as it ended)
        while True:
            stop = ptrace.wait_for(pid)
            if stop.kind in ("exited", "killed"):
                return True
            clean = (stop.kind == "event" and stop.event == ptrace.EVENT_STOP and not stop.group_stop) or (
                stop.kind == "syscall" and ptrace.syscall_stop_op(pid) == ptrace.INFO_EXIT
            )
            if clean:
                guest.put_back_deadline()  # the image holds the process's own timespec
                break
            if guest.on_stop(stop) is not None:
                return True
        guest.stepping = False
        regs = inject.copy_registers(ptrace.get_regs(pid))
        try:
            self._send({"op": "image", "for": guest.wants_home})
            out = self.sock.makefile("wb")
            try:
                if self._all_cpus:
                    cpus.pin(0, self._all_cpus)  # the image's threads may use every CPU
            except TraceError:
                pass
            compress = self.compress if self.next_compress is None else self.next_compress
            self.next_compress = None
            deferred = send_image(pid, ImageWriter(out, compress=compress), regs, {})
            out.flush()
            self._send({"op": "sent", "signals": deferred, "utime": guest.utime()})
            answer = self._control()
        except (HomeGone, ProtocolError, OSError):
            # the link broke under the move: the guest is as it was (home asks again
            # once the link is whole, or takes it if it had it all)
            inject.put_back(pid, regs)
            ptrace.cont(pid)
            raise
        if answer.get("op") == "arrived":
            self._remove(pid)
            return True
        inject.put_back(pid, regs)  # home could not take it: on it goes here
        if guest.wants_home is not None:
            guest.stay_instead()
        ptrace.cont(pid)
        for sig in deferred:
            guest.signal(sig)
        return False

    # -- the connection --------------------------------------------------------------------------
    def _send(self, message: dict) -> None:
        try:
            self.channel.send(encode_control(message))
        except OSError as err:
            raise HomeGone(str(err)) from None

    def _receive(self):
        try:
            return self.channel.receive()
        except ProtocolError as err:
            raise HomeGone(str(err)) from None

    def _control(self) -> dict:
        """The next control message (signals meanwhile go to the guest, if any)."""
        while True:
            message = self._receive()
            if isinstance(message, dict):
                return message
            if isinstance(message, int) and self.guest is not None:
                self.guest.signal(message)
            elif not isinstance(message, int):
                raise HomeGone("a call or reply where a control message was due")

    @staticmethod
    def _remove(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _empty(fd: int) -> None:
    """Read a non-blocking wake-up pipe empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def become_guest_identity(uid: int, gid: int) -> None:
    """Give up root for good, for the guest's own uid (mosd gives each guest one): nothing
    of the guest ever runs with the host's rights, nor with another guest's."""
    if os.geteuid() != 0:
        return  # already unprivileged (tests as a user)
    if uid == 0 or gid == 0:
        raise OSError(errno.EPERM, "a guest may not run as root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise OSError(errno.EPERM, f"could not become uid {uid}, gid {gid}")
    # a setuid program the guest might exec here gains nothing
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    # changing identity made us undumpable, and the stub we fork would inherit that:
    # then not even its parent could trace it (see keep_the_guest_out for after)
    _prctl(PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE")


def keep_the_guest_out() -> None:
    """Once the guest's stub exists (dumpable, which its tracer needs to read and write
    its memory), the host becomes undumpable: the guest, of the same uid, then cannot
    trace it, read its memory or environment or take its descriptors (pidfd_getfd),
    and /proc shows the host's files as root's. Tracing the guest only needs the guest
    dumpable, not the tracer."""
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")


def _prctl(option: int, value: int, name: str) -> None:
    if LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise fail(f"prctl({name})")


def guest_host_options(args: dict) -> list[str]:
    """The command-line options for the arguments mosd gives a guest host (what it
    sends a spare one): uid, gid, compress, wall_clock_tolerance_ms, forward_spin_us."""
    options = [
        "--uid",
        str(int(args["uid"])),
        "--gid",
        str(int(args["gid"])),
        "--wall-clock-tolerance-ms",
        repr(float(args["wall_clock_tolerance_ms"])),
        "--forward-spin-us",
        repr(float(args["forward_spin_us"])),
    ]
    return options + (["--compress"] if args["compress"] else [])


def _work_for_spare(parser: argparse.ArgumentParser, control_fd: int) -> argparse.Namespace | None:
    """A spare guest host waits here, loaded, for mosd to send a connection and the
    arguments it would otherwise have been started with."""
    control = socket.socket(fileno=control_fd)
    try:
        message, fds, _, _ = socket.recv_fds(control, 4096, 1)
    except OSError:
        return None
    finally:
        control.close()
    if not message or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    try:
        options = guest_host_options(json.loads(message))
    except (ValueError, KeyError, TypeError) as err:
        os.close(fds[0])
        print(f"guest host: mosd sent a spare a bad job: {err}", file=sys.stderr)
        return None
    return parser.parse_args(["--fd", str(fds[0]), *options])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mosix-guest-host")
    parser.add_argument("--fd", type=int)
    parser.add_argument("--spare", type=int, help="wait on this socket for --fd and the rest (from mosd)")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--wall-clock-tolerance-ms", type=float, default=0.0)
    parser.add_argument("--forward-spin-us", type=float, default=0.0)
    args = parser.parse_args(argv)
    # what the image engine imports only when first needed must be loaded while we can
    # still read the interpreter's library (it may live where nobody may look: /root)
    importlib.import_module("concurrent.futures.thread")
    importlib.import_module("lz4.block")
    if args.spare is not None:
        args = _work_for_spare(parser, args.spare)
        if args is None:
            return 0  # mosd ended, or closed its end
    if args.fd is None or args.uid is None or args.gid is None:
        parser.error("--fd, --uid and --gid are needed (or --spare)")
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keep_alive(sock)
    host = GuestHost(
        sock,
        compress=args.compress,
        wall_clock_tolerance_ns=int(args.wall_clock_tolerance_ms * 1_000_000),
        forward_spin=args.forward_spin_us / 1e6,
    )
    try:
        host.compare_clocks()
        become_guest_identity(args.uid, args.gid)
        if not host.receive():
            return 1
        keep_the_guest_out()
    except (HomeGone, ProtocolError, OSError, TraceError) as err:
        print(f"guest host: home went away during the move: {err}", file=sys.stderr)
        return 1
    return host.serve()


if __name__ == "__main__":
    sys.exit(main())
