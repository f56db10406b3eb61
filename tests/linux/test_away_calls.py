"""Unmodified programs using what mosix(7) says a migrated process does at home —
files and their locks, links and times, pipes, sockets, terminals, its identity,
waiting for and signalling its family — moved into a guest and run there, each call
forwarded through the call table (mosix_core/remote/calls.py): the output must be
exactly a native run's.

The guest runs in another process (the guest host, as on another node), the calls
and replies crossing a socket as frames (:func:`mosix_core.remote.link.serve` and
``forwarder``). Each program prints a first line, then waits for a file ``go``: the
home side creates it when the guest's first call arrives, so that everything after
the wait runs away (the test also checks which calls reached home)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import attrs
import pytest

from mosix_core.image import stub
from mosix_core.image.stream import ImageReader, ImageWriter
from mosix_core.linux import ptrace
from mosix_core.linux.syscall_names import NAMES, NUMBERS
from mosix_core.remote import fastpath
from mosix_core.remote.deputy import Deputy
from mosix_core.remote.frames import Channel, decode
from mosix_core.remote.guest import Guest
from mosix_core.remote.link import during_call, forwarder, serve
from mosix_core.remote.moving import arrive, leave
from tests.helpers.guest import GUEST_OPTIONS, end_link, stop_traced
from tests.helpers.programs import lines, wait_until

PYTHON = "/usr/bin/python3"
WAIT_TO_GO = """\
print("ready", flush=True)
while not os.path.exists("go"):          # the move happens meanwhile
    time.sleep(0.005)
"""


@attrs.frozen
class Away:
    status: int  # the exit status the program's parent saw (at home)
    served: list[str]  # the calls performed at home, in order
    stdout: bytes
    stderr: bytes


def run_served(script: str, work: Path, wall_offset: int | None = None, c_loop: bool = False) -> Away:
    """Run python ``script`` in ``work``, move it into a guest host after its first
    line, serve its calls at home until it ends. ``wall_offset``: the guest reads a
    home wall clock this many nanoseconds ahead of the machine's. ``c_loop``: the
    guest host serves through the C trap loop (it writes how many calls the loop
    made itself into ``work/handled``)."""
    work.mkdir()
    (work / "prog.py").write_text(script)
    out, err = work / "out.txt", work / "err.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [PYTHON, "prog.py"], cwd=work, env=_env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    pid = proc.pid
    home_end, guest_end = socket.socketpair()
    host = None
    served: list[str] = []
    try:
        # seized only now: its children's SIGCHLD would stop it meanwhile, with nobody
        # waiting for it (stop_traced lets the signals through)
        wait_until(lambda: lines(out) >= 1, what="the program's first line")
        ptrace.seize(pid, ptrace.O_TRACESYSGOOD | ptrace.O_EXITKILL)
        image = io.BytesIO()
        shell, _ = leave(pid, ImageWriter(image), stop_traced(pid), {"pid": pid})
        host = os.fork()
        if host == 0:  # pragma: no cover - the guest host
            code = 255
            try:
                home_end.close()
                guest_pid = stub.spawn_traced(GUEST_OPTIONS)
                image.seek(0)
                arrive(guest_pid, ImageReader(image, streaming=True), wall_clock=wall_offset is not None)
                guest = Guest(guest_pid, None)
                if wall_offset is not None:
                    guest.read_home_wall_clock(wall_offset)
                guest.forward = forwarder(Channel(guest_end), guest)
                code = serve_in_c(guest, guest_end, work) if c_loop else guest.run()
            finally:
                os._exit(code)
        guest_end.close()
        deputy = Deputy(pid, shell)

        def before_call(request) -> None:
            if not served:
                (work / "go").touch()
            served.append(NAMES.get(request.nr, str(request.nr)))

        serve(deputy, Channel(home_end), before_call=before_call)
        assert deputy.ended is not None and deputy.ended.kind == "exited", deputy.ended
        proc.returncode = deputy.ended.code
        _, host_status = os.waitpid(host, 0)
        host = None
        assert os.waitstatus_to_exitcode(host_status) == proc.returncode  # the guest saw the same end
    finally:
        end_link(home_end, proc, host)
    return Away(proc.returncode, served, out.read_bytes(), err.read_bytes())


def serve_in_c(guest: Guest, sock: socket.socket, work: Path) -> int:
    """What the guest host's loop does with the C trap loop: the stops, frames and
    interrupted calls it hands back are handled by the Python guest."""
    loop = fastpath.TrapLoop(guest.pid, sock.fileno(), guest.memory_fd())
    ptrace.cont(guest.pid)
    while True:
        what, status, result, frames = loop.serve(1.0)
        for frame in frames:
            during_call(decode(frame), guest)  # signals only: no control messages here
        if what == fastpath.STOP:
            ended = guest.on_stop(ptrace.decode_status(guest.pid, status))
            if ended is not None:
                (work / "handled").write_text(str(loop.handled))
                return ended
        elif what == fastpath.RESTART:
            guest.interrupted(status, result)
        elif what == fastpath.SOCKET:
            if frames:
                guest.resume()
            else:
                guest.signal(Channel(sock).receive())
        else:
            assert what == fastpath.TIMEOUT, (what, status)


def run_native(script: str, work: Path) -> subprocess.CompletedProcess:
    work.mkdir()
    (work / "prog.py").write_text(script)
    (work / "go").touch()
    return subprocess.run(
        [PYTHON, "prog.py"], cwd=work, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )


def _env() -> dict[str, str]:
    env = dict(os.environ, LANG="C.UTF-8")
    env.pop("LC_ALL", None)
    return env


def same_as_native(script: str, tmp_path: Path, calls: set[str], c_loop: bool = False) -> Away:
    """Run ``script`` away and natively: the same output and status, and ``calls``
    (at least) performed at home."""
    away = run_served(script, tmp_path / "away", c_loop=c_loop)
    native = run_native(script, tmp_path / "native")
    assert native.returncode == 0, native.stderr.decode()
    assert (away.status, away.stdout) == (0, native.stdout), away.stderr.decode()
    assert away.stderr == native.stderr == b""
    assert calls <= set(away.served), sorted(calls - set(away.served))
    return away


FILES = (
    """\
import errno, fcntl, os, stat, struct, sys, time
"""
    + WAIT_TO_GO
    + """\
def attempt(what, f, *args):
    try:
        f(*args)
        print(what, "ok")
    except OSError as e:
        print(what, errno.errorcode[e.errno])

os.mkdir("w")
os.chdir("w")
fd = os.open("data", os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, bytes(range(100)))
flags = fcntl.fcntl(fd, fcntl.F_GETFL)
print("F_GETFL", flags & os.O_ACCMODE == os.O_RDWR, bool(flags & os.O_NONBLOCK))
fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK | os.O_APPEND)
print("F_SETFL", bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND))
print("F_GETFD", fcntl.fcntl(fd, fcntl.F_GETFD))
fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
print("F_SETFD", fcntl.fcntl(fd, fcntl.F_GETFD), os.get_inheritable(fd))
os.set_inheritable(fd, True)                            # ioctl FIONCLEX
print("FIONCLEX", os.get_inheritable(fd))
high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 40)
print("F_DUPFD_CLOEXEC", high >= 40, os.path.samestat(os.fstat(high), os.fstat(fd)))
os.close(high)
# locks: an open file description's lock is in the way of another's, even in one process
other = os.open("data", os.O_RDWR)
FLOCK = "hhqqi4x"
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 10, 20, 0))
got = struct.unpack(FLOCK, fcntl.fcntl(other, fcntl.F_OFD_GETLK, struct.pack(FLOCK, fcntl.F_RDLCK, 0, 0, 0, 0)))
print("F_OFD_GETLK", got)
attempt("F_SETLK in the way", fcntl.fcntl, other, fcntl.F_SETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 0, 50, 0))
fcntl.fcntl(other, fcntl.F_SETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 50, 10, 0))
got = struct.unpack(FLOCK, fcntl.fcntl(other, fcntl.F_GETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 50, 1, 0)))
print("F_GETLK own", got)
fcntl.lockf(other, fcntl.LOCK_UN)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
attempt("flock in the way", fcntl.flock, other, fcntl.LOCK_SH | fcntl.LOCK_NB)
fcntl.flock(fd, fcntl.LOCK_UN)
attempt("flock free", fcntl.flock, other, fcntl.LOCK_SH | fcntl.LOCK_NB)
attempt("bad fcntl command", fcntl.fcntl, fd, 1023, 0)
os.close(other)
# links, owners, times, space
os.link("data", "hard")
os.symlink("data", "soft")
print("links", os.stat("data").st_nlink, os.readlink("soft"), stat.S_ISLNK(os.lstat("soft").st_mode))
os.chown("data", os.getuid(), os.getgid())
os.lchown("soft", os.getuid(), os.getgid())
os.chown(fd, os.getuid(), os.getgid())
os.chown("hard", -1, -1, dir_fd=os.open(".", os.O_RDONLY))
attempt("chown missing", os.chown, "missing", os.getuid(), os.getgid())
os.utime("data", (1000000000, 1000000001))
print("utime", os.stat("data").st_mtime, os.stat("data").st_atime)
os.utime("hard", ns=(5, 2000000000123456789))
print("utime ns", os.stat("data").st_mtime_ns)
os.utime(fd, (7, 8))
print("futimens", os.stat("data").st_mtime)
os.utime("soft", (9, 10), follow_symlinks=False)
print("lutimes", os.lstat("soft").st_mtime, os.stat("soft").st_mtime)
os.utime("data")
print("utime now", abs(os.stat("data").st_mtime - time.time()) < 60)
vfs, fvfs = os.statvfs("."), os.fstatvfs(fd)
print("statvfs", vfs.f_bsize == fvfs.f_bsize > 0, vfs.f_namemax, vfs.f_fsid == fvfs.f_fsid, vfs.f_blocks > 0)
os.posix_fallocate(fd, 0, 8192)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
print("fallocate", os.fstat(fd).st_size)
os.mkfifo("fifo", 0o600)
print("mkfifo", stat.S_ISFIFO(os.stat("fifo").st_mode))
os.chmod("fifo", 0o640, dir_fd=os.open(".", os.O_RDONLY))
print("fchmodat", oct(os.stat("fifo").st_mode & 0o777))
os.rename("fifo", "fifo2", src_dir_fd=os.open(".", os.O_RDONLY), dst_dir_fd=os.open(".", os.O_RDONLY))
print("renameat", sorted(os.listdir(".")))
# bytes between descriptors, with and without an offset of the caller's
out = os.open("copy", os.O_WRONLY | os.O_CREAT, 0o644)
print("sendfile", os.sendfile(out, fd, 10, 20), os.lseek(fd, 0, os.SEEK_CUR))
os.lseek(fd, 0, os.SEEK_SET)
print("sendfile at the offset", os.sendfile(out, fd, None, 5), os.lseek(fd, 0, os.SEEK_CUR))
print("copy_file_range", os.copy_file_range(fd, out, 10, 90, 25))
os.close(out)
with open("copy", "rb") as f:
    print("copied", f.read().hex())
attempt("setxattr", os.setxattr, "data", "user.mosix", b"home")
try:
    print("getxattr", os.getxattr("data", "user.mosix"), os.listxattr("data"))
except OSError as e:
    print("getxattr", errno.errorcode[e.errno])
os.sync()
os.fsync(fd)
print("identity", os.getgroups(), os.getresuid(), os.getresgid())
nice = os.getpriority(os.PRIO_PROCESS, 0)
os.setpriority(os.PRIO_PROCESS, 0, nice)
print("priority", nice == os.getpriority(os.PRIO_PROCESS, os.getpid()))
r, w = os.pipe()
print("pipe", os.write(w, b"through"), os.read(r, 100), fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) > 0)
"""
)


@pytest.mark.parametrize("c_loop", [False, True], ids=["python", "c-loop"])
def test_files_links_locks_and_times(tmp_path, c_loop):
    away = same_as_native(
        FILES,
        tmp_path,
        c_loop=c_loop,
        calls={
            "fcntl",
            "ioctl",
            "flock",
            "link",
            "symlink",
            "chown",
            "lchown",
            "fchown",
            "fchownat",
            "utimensat",
            "statfs",
            "fstatfs",
            "fallocate",
            "fadvise64",
            "mknodat",
            "fchmodat",
            "renameat",
            "sendfile",
            "copy_file_range",
            "sync",
            "getresuid",
            "getresgid",
            "getgroups",
            "getpriority",
            "setpriority",
        },
    )
    assert away.stdout.count(b"\n") > 30

    def made(top: Path) -> dict:
        return {
            path.name: (
                path.lstat().st_mode,
                path.lstat().st_nlink,
                path.read_bytes() if path.is_file() and not path.is_symlink() else None,
            )
            for path in (top / "w").iterdir()
        }

    assert made(tmp_path / "away") == made(tmp_path / "native")  # the same files, made at home
    if c_loop:
        assert int((tmp_path / "away" / "handled").read_text()) > 30  # the simple calls never left C


FAMILY = (
    """\
import errno, os, signal, subprocess, sys, threading, time
import resource                  # os.wait4 imports it: here, not by mapping a library away
done, running, waited, doomed = (subprocess.Popen(argv, stdin=subprocess.PIPE) for argv in (
    ["/bin/sh", "-c", "exit 7"], ["/bin/cat"], ["/bin/sh", "-c", "exit 3"], ["/bin/sleep", "60"]))
got = []
signal.signal(signal.SIGUSR1, lambda sig, frame: got.append("usr1"))
signal.signal(signal.SIGUSR2, lambda sig, frame: got.append("usr2"))
"""
    + WAIT_TO_GO
    + """\
print("nohang", os.waitpid(running.pid, os.WNOHANG))
print("nohang rusage", os.wait4(running.pid, os.WNOHANG)[:2])
print("nohang waitid", os.waitid(os.P_PID, running.pid, os.WEXITED | os.WNOHANG))
pid, status, usage = os.wait4(done.pid, 0)
print("wait4", pid == done.pid, os.waitstatus_to_exitcode(status), usage.ru_utime >= 0)
info = os.waitid(os.P_PID, waited.pid, os.WEXITED)
print("waitid", info.si_pid == waited.pid, info.si_code == os.CLD_EXITED, info.si_status, info.si_uid == os.getuid())
running.stdin.close()
print("waitpid", running.wait())
os.kill(doomed.pid, signal.SIGTERM)
print("kill child", doomed.wait())
for child in (done, waited):
    child.stdin.close()
try:
    os.waitpid(-1, 0)
except ChildProcessError as e:
    print("no more children", errno.errorcode[e.errno])
print("family", os.getpgid(0) == os.getpgrp(), os.getsid(0) == os.getsid(os.getpid()))
signal.raise_signal(signal.SIGUSR1)
os.getppid()
os.kill(os.getpid(), signal.SIGUSR2)
os.getppid()
signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
os.getppid()
print("signals", got)
"""
)


@pytest.mark.parametrize("c_loop", [False, True], ids=["python", "c-loop"])
def test_waits_and_signals_in_its_family(tmp_path, c_loop):
    same_as_native(FAMILY, tmp_path, {"wait4", "waitid", "kill", "tgkill"}, c_loop=c_loop)


SELF_SIGNAL = (
    """\
import os, signal, time
signal.signal(signal.SIGUSR1, lambda sig, frame: print("handler", flush=True))
"""
    + WAIT_TO_GO
    + """\
signal.raise_signal(signal.SIGUSR1)
print("after raise", flush=True)
os.kill(os.getpid(), signal.SIGUSR1)
print("after kill", flush=True)
"""
)


@pytest.mark.parametrize("c_loop", [False, True], ids=["python", "c-loop"])
def test_a_signal_to_itself_is_delivered_before_the_call_returns(tmp_path, c_loop):
    """(With the C loop, kill is one of its calls: the signal frame that comes before
    the reply must be delivered before the guest goes on.)"""
    same_as_native(SELF_SIGNAL, tmp_path, {"tgkill", "kill"}, c_loop=c_loop)


LARGE_BUFFERS = (
    """\
import ctypes, errno, hashlib, mmap, os, random, time
"""
    + WAIT_TO_GO
    + """\
data = random.Random(5).randbytes(3 << 20)
fd = os.open("data", os.O_RDWR | os.O_CREAT, 0o644)
print("write", os.write(fd, data), os.lseek(fd, 0, os.SEEK_CUR))
print("pwrite", os.pwrite(fd, data[:1 << 20], 100001), os.lseek(fd, 0, os.SEEK_CUR))
os.lseek(fd, 7, os.SEEK_SET)
got = os.read(fd, 4 << 20)
print("read", len(got), hashlib.sha256(got).hexdigest(), os.lseek(fd, 0, os.SEEK_CUR))
print("pread", hashlib.sha256(os.pread(fd, 2 << 20, 999)).hexdigest())
into = bytearray(3 << 20)
os.lseek(fd, 0, os.SEEK_SET)
print("readinto", os.readv(fd, [into]), hashlib.sha256(into).hexdigest())
r, w = os.pipe()
print("pipe", os.write(w, data[:60000]), os.read(r, 1 << 20) == data[:60000])
# a buffer whose last page is unmapped: the kernel writes the part it can read (or
# fails with EFAULT), never more
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
size = 1 << 20
at = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
ctypes.memmove(at, data, size)
libc.munmap(ctypes.c_void_p(at + size - 4096), 4096)
holed = os.open("holed", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
done = libc.write(holed, ctypes.c_void_p(at), ctypes.c_size_t(size))
print("holed", done == -1 and ctypes.get_errno() == errno.EFAULT or 0 < done < size,
      os.fstat(holed).st_size == max(done, 0), os.pread(holed, size, 0) == data[:max(done, 0)])
print("read into a holed buffer", libc.read(fd, ctypes.c_void_p(at + size - 8192), ctypes.c_size_t(8192)) < 8192)
"""
)


@pytest.mark.parametrize("c_loop", [False, True], ids=["python", "c-loop"])
def test_large_buffers_go_whole_and_in_order(tmp_path, c_loop):
    """Megabytes each way: with the C loop, a buffer larger than its piece is sent as
    it is read from the guest, and written into it as it comes."""
    same_as_native(LARGE_BUFFERS, tmp_path, {"write", "pwrite64", "read", "pread64"}, c_loop=c_loop)
    assert (tmp_path / "away" / "data").read_bytes() == (tmp_path / "native" / "data").read_bytes()
    if c_loop:
        assert int((tmp_path / "away" / "handled").read_text()) >= 5


def test_the_c_trap_loop_is_built():
    """scripts/install.sh builds it; without it every guest runs the Python loop alone."""
    assert fastpath.AVAILABLE
    shapes = fastpath.shapes()
    assert shapes[NUMBERS["read"]][0] == fastpath.SHAPE_OUT and shapes[NUMBERS["write"]][0] == fastpath.SHAPE_IN
    assert shapes[NUMBERS["newfstatat"]] == (fastpath.SHAPE_OUT, 4, 2, fastpath.FIXED, 144, 0, 1)  # glibc's fstat
    assert shapes[NUMBERS["ioctl"]][0] == shapes[NUMBERS["mmap"]][0] == shapes[NUMBERS["execve"]][0] == 0


SOCKETS = (
    """\
import errno, os, select, socket, struct, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
"""
    + WAIT_TO_GO
    + """\
client = socket.socket()
client.connect(listener.getsockname())
server, peer = listener.accept()
print("accept", peer == client.getsockname(), server.getpeername() == client.getsockname(),
      server.getsockname() == listener.getsockname() == client.getpeername())
client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("nodelay", client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
print("type", client.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)
client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
print("linger", struct.unpack("ii", client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)),
      len(client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 64)))
client.sendall(b"hello from away")
print("select", select.select([server], [], [], 5)[0] == [server])
print("recv", server.recv(100))
big = bytes(range(250)) * 240                           # what the socket buffers hold
server.sendall(big)
got = b""
while len(got) < len(big):
    got += client.recv(65536)
print("big", got == big)
client.settimeout(0.05)                                 # FIONBIO, then poll()
try:
    client.recv(10)
except TimeoutError:
    print("timed out")
client.setblocking(True)
poller = select.poll()
poller.register(server, select.POLLIN)
client.shutdown(socket.SHUT_WR)
print("poll", poller.poll(5000) == [(server.fileno(), select.POLLIN)])
print("shutdown", server.recv(10))
ep = select.epoll()
ep.register(client, select.EPOLLOUT)
print("epoll", ep.poll(5) == [(client.fileno(), select.EPOLLOUT)])
ep.close()
for s in (client, server):
    s.close()
# datagrams, with their sender
a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("127.0.0.1", 0))
b.bind(("127.0.0.1", 0))
b.sendto(b"datagram", a.getsockname())
data, sender = a.recvfrom(100)
print("recvfrom", data, sender == b.getsockname())
buf = bytearray(4)
print("recvfrom_into", b.sendto(b"truncated", a.getsockname()), a.recvfrom_into(buf)[0], buf)
# a unix stream socket bound to a path, an unnamed client, a pair
unix = socket.socket(socket.AF_UNIX)
unix.bind("sock")
unix.listen()
c = socket.socket(socket.AF_UNIX)
c.connect("sock")
s, addr = unix.accept()
print("unix", repr(addr), s.getsockname(), c.getpeername(), repr(c.getsockname()))
x, y = socket.socketpair()
x.sendall(b"pair")
print("socketpair", y.recv(10), x.family == socket.AF_UNIX)
closed = socket.socket()
closed.bind(("127.0.0.1", 0))                           # bound, not listening
try:
    socket.socket().connect(closed.getsockname())
except OSError as e:
    print("connect", errno.errorcode[e.errno])
"""
)


def test_sockets_made_and_used_away(tmp_path):
    same_as_native(
        SOCKETS,
        tmp_path,
        {
            "socket",
            "connect",
            "accept4",
            "getsockname",
            "getpeername",
            "setsockopt",
            "getsockopt",
            "sendto",
            "recvfrom",
            "pselect6",
            "poll",
            "shutdown",
            "epoll_create1",
            "epoll_ctl",
            "epoll_wait",
            "bind",
            "listen",
            "socketpair",
            "ioctl",
        },
    )


TERMINAL = (
    """\
import errno, fcntl, os, struct, termios, time
"""
    + WAIT_TO_GO
    + """\
def ioctl(name, fd, request, arg=0):
    try:
        got = fcntl.ioctl(fd, request, arg)
        print(name, got if isinstance(got, int) else struct.unpack("i", got)[0])
    except OSError as e:
        print(name, errno.errorcode[e.errno])

master, slave = os.openpty()                              # /dev/ptmx, TIOCGPTN, TIOCSPTLCK, TIOCGPTPEER
attrs = termios.tcgetattr(slave)
attrs[3] &= ~(termios.ECHO | termios.ICANON)
termios.tcsetattr(slave, termios.TCSANOW, attrs)
print("echo off", termios.tcgetattr(slave)[3] & termios.ECHO)
os.write(master, b"typed")
time.sleep(0.1)                                           # the line discipline takes it in
ioctl("FIONREAD", slave, termios.FIONREAD, b"\\0" * 4)
termios.tcflush(slave, termios.TCIFLUSH)
ioctl("FIONREAD flushed", slave, termios.FIONREAD, b"\\0" * 4)
termios.tcflow(slave, termios.TCOOFF)
termios.tcflow(slave, termios.TCOON)
termios.tcdrain(slave)
termios.tcsendbreak(slave, 0)
ioctl("TIOCOUTQ", slave, termios.TIOCOUTQ, b"\\0" * 4)
ioctl("TIOCEXCL", slave, termios.TIOCEXCL)
ioctl("TIOCNXCL", slave, termios.TIOCNXCL)
ioctl("TIOCGSID", slave, 0x5429, b"\\0" * 4)            # not its terminal
ioctl("TIOCSCTTY", slave, termios.TIOCSCTTY)
ioctl("TIOCNOTTY", slave, termios.TIOCNOTTY)
ioctl("FIOASYNC", slave, termios.FIOASYNC, struct.pack("i", 0))
ioctl("FIONBIO", master, termios.FIONBIO, struct.pack("i", 1))
try:
    os.read(master, 10)
except BlockingIOError:
    print("nonblocking master")
os.write(slave, b"out\\n")
time.sleep(0.05)
print("master reads", os.read(master, 100))
print("winsize", struct.unpack("4H", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\\0" * 8)))
"""
)


def test_a_terminal_made_and_used_away(tmp_path):
    same_as_native(TERMINAL, tmp_path, {"ioctl", "openat"})


VECTORS = (
    """\
import os, time
"""
    + WAIT_TO_GO
    + """\
r, w = os.pipe()
print("writev", os.writev(w, [b"one ", b"", b"two ", b"three"]), flush=True)
a, b = bytearray(5), bytearray(20)
print("readv", os.readv(r, [a, b]), bytes(a), bytes(b).rstrip(b"\\0"), flush=True)
fd = os.open("vectors.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
print("pwritev", os.pwritev(fd, [b"abc", b"defgh"], 10), os.fstat(fd).st_size, flush=True)
c, d = bytearray(4), bytearray(4)
print("preadv", os.preadv(fd, [c, d], 11), bytes(c), bytes(d), flush=True)
big = [bytes([k]) * (1 << 20) for k in range(6)]              # 6 MiB: more than one forwarded call
print("writev big", os.writev(fd, big), os.fstat(fd).st_size, flush=True)
print("readv bad fd", end=" ", flush=True)
try:
    os.readv(99, [bytearray(1)])
except OSError as err:
    print(err.errno, flush=True)
"""
)


def test_vectored_reads_and_writes_are_one_call_home_each(tmp_path):
    away = same_as_native(VECTORS, tmp_path, {"write", "read", "pwrite64", "pread64"})
    assert "writev" not in away.served and "readv" not in away.served


MESSAGES = (
    """\
import errno, os, socket, time
"""
    + WAIT_TO_GO
    + """\
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
print("sendmsg", a.sendmsg([b"one ", b"", b"two"]), flush=True)
print("recvmsg", b.recvmsg(100), flush=True)
a.sendmsg([b"scattered"])
left, right = bytearray(4), bytearray(10)
print("recvmsg_into", b.recvmsg_into([left, right]), bytes(left), bytes(right).rstrip(b"\\\\0"), flush=True)
try:
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, (1).to_bytes(4, "little"))])
    print("ancillary sent", flush=True)
except OSError as err:
    print("ancillary", errno.errorcode[err.errno], flush=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.bind(("127.0.0.1", 0))
print("sendmsg to", out.sendmsg([b"da", b"tagram"], [], 0, udp.getsockname()), flush=True)
data, ancillary, flags, address = udp.recvmsg(64)
print("recvmsg from", data, ancillary, flags, address == out.getsockname(), flush=True)
"""
)


def test_socket_messages_without_ancillary_data(tmp_path):
    """Descriptors cannot be passed from another node: that sendmsg fails (EOPNOTSUPP)
    where a native run sends one; all else is the same."""
    away = run_served(MESSAGES, tmp_path / "away")
    native = run_native(MESSAGES, tmp_path / "native")
    assert away.status == native.returncode == 0, away.stderr.decode()
    assert away.stdout == native.stdout.replace(b"ancillary sent\n", b"ancillary ENOTSUP\n")
    assert {"sendto", "recvfrom"} <= set(away.served) and not {"sendmsg", "recvmsg"} & set(away.served)


CLOCKS = (
    """\
import ctypes, os, time
"""
    + WAIT_TO_GO
    + """\
libc = ctypes.CDLL(None)
libc.time.restype = ctypes.c_long
timeval, timezone = (ctypes.c_long * 2)(), (ctypes.c_int * 2)(7, 7)
libc.gettimeofday(timeval, timezone)
print("wall", int(time.time()), time.clock_gettime_ns(time.CLOCK_REALTIME) // 10**9, libc.time(None), timeval[0],
      time.clock_gettime_ns(5) // 10**9, flush=True)
print("tai", time.clock_gettime_ns(time.CLOCK_TAI) // 10**9, "timezone", list(timezone), flush=True)
print("monotonic", int(time.monotonic()), int(time.clock_gettime(time.CLOCK_BOOTTIME)), flush=True)
print("cpu", time.process_time() < 60, flush=True)
"""
)


def test_a_guest_reads_homes_wall_clock_through_its_vdso(tmp_path):
    """Home's wall clock 1000 s ahead: every way a program reads it (the vDSO's
    clock_gettime, gettimeofday and time, coarse and TAI) answers home's time, in the
    guest itself (no call goes home); the monotonic and CPU clocks stay native."""
    offset = 1000
    before = time.time(), time.clock_gettime(time.CLOCK_TAI)
    away = run_served(CLOCKS, tmp_path / "away", wall_offset=offset * 10**9)
    after = time.time(), time.clock_gettime(time.CLOCK_TAI), time.monotonic()
    assert away.status == 0, away.stderr.decode()
    out = {line.split()[0]: line.split()[1:] for line in away.stdout.decode().splitlines()}
    for value in map(int, out["wall"]):
        assert before[0] + offset - 1 <= value <= after[0] + offset
    assert before[1] + offset - 1 <= int(out["tai"][0]) <= after[1] + offset
    assert out["tai"][2:] == ["[0,", "0]"]  # gettimeofday's timezone: UTC
    assert after[2] - 30 <= int(out["monotonic"][0]) <= after[2]
    assert out["cpu"] == ["True"]
    assert not {"clock_gettime", "gettimeofday", "time"} & set(away.served)


WALL_DEADLINES = (
    """\
import ctypes, errno, os, signal, time
"""
    + WAIT_TO_GO
    + """\
libc = ctypes.CDLL(None, use_errno=True)
SYS_FUTEX, FUTEX_WAIT_BITSET, FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 202, 9, 128, 256
word, deadline = ctypes.c_int(0), (ctypes.c_long * 2)()


def until(seconds_from_now):
    deadline[0], deadline[1] = divmod(time.time_ns() + int(seconds_from_now * 1e9), 10**9)
    return tuple(deadline)


def wait(op=FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME):
    result = libc.syscall(SYS_FUTEX, ctypes.byref(word), op, 0, deadline, None, -1)
    return "ok" if result == 0 else errno.errorcode[ctypes.get_errno()]


# a futex wait until a wall-clock time (pthread_cond_timedwait's): it ends then, by
# the clock the process reads, and leaves its timespec as it was
start, given = time.monotonic(), until(0.3)
print("futex", wait(), 0.25 <= time.monotonic() - start < 30, tuple(deadline) == given, flush=True)
# interrupted by a handled signal, then made again with the same deadline
signal.signal(signal.SIGALRM, lambda *_: None)
signal.setitimer(signal.ITIMER_REAL, 0.1)
start, given = time.monotonic(), until(0.4)
first = wait()
print("interrupted", first, tuple(deadline) == given, flush=True)
print("again", wait(), 0.35 <= time.monotonic() - start < 30, tuple(deadline) == given, flush=True)
# a deadline already past; a deadline on the monotonic clock (no FUTEX_CLOCK_REALTIME)
until(-5)
print("past", wait(), flush=True)
start = time.monotonic()
deadline[0], deadline[1] = divmod(time.monotonic_ns() + 200000000, 10**9)
print("monotonic", wait(FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG), 0.15 <= time.monotonic() - start < 30, flush=True)
# glibc's sem_timedwait waits the same way
sem = ctypes.create_string_buffer(32)
libc.sem_init(sem, 0, 0)
start, given = time.monotonic(), until(0.2)
print("sem_timedwait", libc.sem_timedwait(sem, deadline), errno.errorcode[ctypes.get_errno()],
      0.15 <= time.monotonic() - start < 30, tuple(deadline) == given, flush=True)
"""
)


def test_a_wait_until_a_wall_clock_time_is_a_wait_until_homes_time(tmp_path):
    """Home's wall clock 1000 s behind: a private futex waited on until a wall-clock
    time (pthread_cond_timedwait, sem_timedwait) ends at that time of home's clock
    (here it would wait 1000 s longer), and the process's timespec is left as it was,
    interrupted or not. A deadline in the past times out at once, as it would."""
    native = run_native(WALL_DEADLINES, tmp_path / "native")
    assert native.returncode == 0, native.stderr.decode()
    assert native.stdout.splitlines()[1:] == [
        b"futex ETIMEDOUT True True",
        b"interrupted EINTR True",
        b"again ETIMEDOUT True True",
        b"past ETIMEDOUT",
        b"monotonic ETIMEDOUT True",
        b"sem_timedwait -1 ETIMEDOUT True True",
    ]
    for offset in (-1000, 1000):
        away = run_served(WALL_DEADLINES, tmp_path / f"away{offset}", wall_offset=offset * 10**9)
        assert (away.status, away.stdout) == (0, native.stdout), away.stderr.decode()
        assert "futex" not in away.served
