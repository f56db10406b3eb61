"""A MOSIX cluster on one machine whose nodes share nothing but the filesystem.

:mod:`mosix_core.cluster.localcluster` runs N mosds as plain processes on 127.x.y.k: they
share the machine's network stack, process table and mounts. Here each node k is a
small "machine" of its own, made of Linux namespaces:

* **PID** (and IPC, UTS): node k's first process, ``init``, is pid 1 of a PID
  namespace of its own (``unshare --pid --fork --mount-proc``, with a private
  ``/proc``). Everything started on node k — its mosd, the guest hosts mosd starts,
  mosrun and its processes — lives there and sees only node k's pids. ``init``
  reaps orphans (mosd itself, once the ``mosd`` command that started it exits);
  killing it kills every process of the node, which is how the cluster is taken
  down.
* **network**: a network namespace with only ``lo`` and ``eth0``, one end of a veth
  pair whose other end is a port of the bridge ``br0`` in a *switch* namespace of
  the cluster's own. Node k is ``10.S.T.k/24``. The machine's own (root) network
  namespace is never touched: no bridge, veth or address of a test appears there,
  so no subnet can clash with the machine's, and nothing is left behind when the
  namespaces' last processes end (``ip netns list`` stays empty: they are never
  named).
* **time**: node k's monotonic and boot-time clocks are ``(k - 1) *`` :data:`CLOCK_STEP`
  seconds ahead of the machine's, as on machines that booted at different times
  (the wall clock cannot be namespaced: it is the machine's on every node).
* **mounts**: a mount namespace where ``/tmp``, ``/run`` and ``/dev/shm`` are fresh
  tmpfs's of the node's own and the node's ``etc/var`` (mosd's control socket, pid
  file and log: :mod:`mosix_core.paths`) is a tmpfs too. What stays shared is what
  a real cluster shares: ``/usr``, the venv, home directories — and the ``shared``
  directories given to :func:`up` (the test's files, the configuration trees),
  bound back at their own paths inside the private ``/tmp``.

Commands run "on node k" through ``nsenter`` into ``init``'s namespaces
(:meth:`NamespaceCluster.spawn`, :meth:`~NamespaceCluster.run`); nsenter's exit
status is the command's (a command killed by a signal kills nsenter with it). The
test process itself reaches node k's files — the control socket included — through
``/proc/{init}/root``, i.e. through node k's own mount namespace
(:meth:`~NamespaceCluster.node_path`, :meth:`~NamespaceCluster.client`); pids that
node k's mosd reports are node k's, so signals go through node k too
(:meth:`~NamespaceCluster.kill`).

Needs root, ``unshare``/``nsenter`` (util-linux) and ``ip`` (iproute2) with veth
and bridge support: :func:`unavailable` says why not, when not.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.helpers.cluster import MANUAL_ONLY, LocalCluster

#: the inits run ``python -m tests.helpers.nscluster`` from here (the harness is not installed)
REPOSITORY = Path(__file__).resolve().parents[2]

PRIVATE_DIRS = ("/tmp", "/run", "/dev/shm")
NAMESPACES = ("--pid", "--mount", "--net", "--uts", "--ipc", "--time")
NSENTER_FLAGS = ("-p", "-m", "-n", "-u", "-i", "-T")
KINDS = ("pid", "mnt", "net", "uts", "ipc", "time")
#: node k's monotonic and boot-time clocks read (k - 1) times this many seconds more
#: than the machine's, as if the nodes had booted a day or so apart
CLOCK_STEP = 100_000
BRIDGE = "br0"
_clusters = itertools.count(1)
_MS_BIND, _MS_REC = 4096, 16384
_PR_SET_PDEATHSIG = 1


def fresh_subnet() -> str:
    """``10.S.T`` for a new cluster: S from our pid, T from a counter. Each cluster has
    a switch of its own, so two clusters (or the machine) could not clash anyway; a
    distinct subnet just keeps logs unambiguous."""
    return f"10.{200 + os.getpid() % 50}.{next(_clusters) % 250 + 1}"


def unavailable() -> str | None:
    """Why namespace clusters cannot run here, or None when they can."""
    for tool, package in (("unshare", "util-linux"), ("nsenter", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing (Debian package {package})"
    if os.geteuid() != 0:
        return "creating network, mount and PID namespaces needs root"
    probe = subprocess.run(
        [
            "unshare",
            *NAMESPACES,
            "--fork",
            "--mount-proc",
            "--",
            "sh",
            "-c",
            f"ip link add nsprobe0 type veth peer name nsprobe1 && ip link add {BRIDGE} type bridge",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create namespaces with a veth pair and a bridge: {probe.stderr.strip() or probe.returncode}"
    return None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the process that started it dies (a test
    runner killed hard must not leave namespaces running)."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _ns_id(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
                except (OSError, IndexError, ValueError):
                    pass
        return found


class Node:
    """One namespaced node: its ``unshare`` process and its init (pid 1 inside)."""

    def __init__(self, k: int, unshare: subprocess.Popen, init: int) -> None:
        self.k, self.unshare, self.init = k, unshare, init

    def alive(self) -> bool:
        return self.unshare.poll() is None and Path(f"/proc/{self.init}").exists()


def _start_init(argv: list[str], log: Path, what: str, timeout: float = 30.0) -> subprocess.Popen:
    """Start an init under ``unshare`` and wait for its "ready" line."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=_die_with_parent,
            cwd=REPOSITORY,
        )
    assert proc.stdout is not None
    line = b""
    if select.select([proc.stdout], [], [], timeout)[0]:
        line = proc.stdout.readline()
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not start: {log.read_text(errors='replace').strip()[-2000:]}")
    return proc


class NamespaceCluster(LocalCluster):
    """N mosd nodes, each in PID, mount, network, UTS and IPC namespaces of its own,
    joined by a bridge (see the module's docstring). Build one with :func:`up`. What
    it does not redefine (the views, waiting, convergence) is LocalCluster's."""

    def __init__(self, root: Path, layout: Any, subnet: str, shared: Iterable[Path]) -> None:
        super().__init__(root, layout)
        self.subnet = subnet
        self.shared = [Path(p) for p in shared]
        self.switch: subprocess.Popen | None = None
        self.members: dict[int, Node] = {}
        self.spawned: list[subprocess.Popen] = []
        self.namespaces: set[str] = set()  # every namespace made, as /proc/*/ns/* name them

    # -- what LocalCluster offers -----------------------------------------------------------------
    def nsenter(self, k: int, cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """The argv prefix that runs a command on node k, in ``cwd`` as node k sees it
        (by default our cwd's path when node k has it, "/" otherwise). nsenter opens
        ``--wd`` before it enters the mount namespace: given as such, the directory
        would be the machine's, not the node's."""
        if cwd is None:
            cwd = os.getcwd() if self.node_path(k, os.getcwd()).is_dir() else "/"
        return [
            "nsenter",
            "-t",
            str(self.init(k)),
            *NSENTER_FLAGS,
            f"--wd={self.node_path(k, os.path.abspath(cwd))}",
            "--",
        ]

    def spawn(self, k: int, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` on node k (``env`` defaults to :meth:`env`; ``cwd`` is the
        node's). The Popen is nsenter's: its pid is the machine's, its status the
        command's. Every process still running is killed at :meth:`down`."""
        cwd = popen_kwargs.pop("cwd", None)
        popen_kwargs.setdefault("env", self.env(k))
        proc = subprocess.Popen(self.nsenter(k, cwd) + list(argv), **popen_kwargs)
        self.spawned.append(proc)
        return proc

    def exec(
        self,
        k: int,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Any = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on node k to its end (output captured, as text)."""
        return subprocess.run(
            self.nsenter(k, cwd) + list(argv),
            env=env or self.env(k),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def run(self, k: int, tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a ``mos*`` tool on node k, as its user would."""
        return self.exec(k, [sys.executable, "-m", f"mosix_core.cli.{tool}", *args], **kwargs)

    def client(self, k: int):
        """A control-socket client of node k's mosd (its socket is in node k's private
        tmpfs: reached through node k's mount namespace)."""
        from mosix_core.daemon.client import Client

        return Client(self.node_path(k, self.etc(k)))

    def stop(self, k: int) -> None:
        done = self.run(k, "mosd", "--stop")
        if done.returncode != 0:
            raise RuntimeError(f"node {k}: mosd --stop failed: {done.stderr.strip()}")

    def start(self, k: int) -> None:
        done = self.run(k, "mosd", "--etc", str(self.etc(k)), cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"node {k}: mosd did not start: {done.stderr.strip()}")

    def running(self, k: int) -> bool:
        from mosix_core.daemon.client import Client
        from mosix_core.errors import MosixError

        try:
            Client(self.node_path(k, self.etc(k)), timeout=2.0).call("ping")
            return True
        except MosixError:
            return False

    def logs(self) -> dict[int, Path]:
        """Each node's mosd log: in its private tmpfs while it runs, copied next to its
        configuration (``etc/mosd.log``) by :meth:`down`."""
        return {
            k: (
                self.node_path(k, self.etc(k) / "var" / "mosd.log")
                if k in self.members and self.members[k].alive()
                else self.etc(k) / "mosd.log"
            )
            for k in range(1, self.nodes + 1)
        }

    # -- what only namespaces have ----------------------------------------------------------------
    def init(self, k: int) -> int:
        """Node k's init: pid 1 of its PID namespace (this is the machine's pid for it)."""
        if k not in self.members:
            raise KeyError(f"no node {k}")
        return self.members[k].init

    def node_path(self, k: int, path: str | os.PathLike[str]) -> Path:
        """``path`` as node k sees it (through its mount namespace), from here."""
        return Path(f"/proc/{self.init(k)}/root") / Path(path).relative_to("/")

    def pids(self, k: int) -> set[int]:
        """Every pid node k's processes can see (its own /proc)."""
        return {int(n) for n in os.listdir(self.node_path(k, "/proc")) if n.isdigit()}

    def pid_map(self, k: int) -> dict[int, int]:
        """Node k's processes: {their pid on node k: their pid on the machine}."""
        ns, found = _ns_id(self.init(k), "pid"), {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if _ns_id(name, "pid") != ns:
                        continue
                    status = Path(f"/proc/{name}/status").read_text()
                    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
                    found[int(nspid[-1])] = int(name)
                except (OSError, StopIteration, ValueError):
                    continue  # gone meanwhile
        return found

    def machine_pid(self, k: int, pid: int) -> int | None:
        """The machine's pid of node k's process ``pid`` (None if there is none)."""
        return self.pid_map(k).get(pid)

    def kill(self, k: int, pid: int, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to ``pid`` as node k numbers it, from node k."""
        done = self.exec(k, ["kill", f"-{int(sig)}", str(pid)])
        if done.returncode != 0:
            raise ProcessLookupError(f"node {k}: kill -{int(sig)} {pid}: {done.stderr.strip()}")

    # -- building and taking down -----------------------------------------------------------------
    def _init_argv(self, mode: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "tests.helpers.nscluster", mode, *args]

    def _start_switch(self) -> None:
        self.switch = _start_init(
            ["unshare", "--net", "--", *self._init_argv("switch")], self.root / "switch.log", "the switch namespace"
        )
        if _ns_id(self.switch.pid, "net") == _ns_id("self", "net"):  # never touch the machine's
            raise RuntimeError("the switch is not in a network namespace of its own")
        self.namespaces.add(_ns_id(self.switch.pid, "net"))

    def _start_node(self, k: int) -> None:
        args = ["--hostname", f"mosix-node{k}", "--tmpfs", str(self.etc(k) / "var")]
        for path in self.shared:
            args += ["--shared", str(path)]
        offset = str((k - 1) * CLOCK_STEP)
        proc = _start_init(
            [
                "unshare",
                *NAMESPACES,
                "--monotonic",
                offset,
                "--boottime",
                offset,
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                *self._init_argv("node", *args),
            ],
            self.root / f"node{k}-init.log",
            f"node {k}'s namespaces",
        )
        init = _children(proc.pid)
        if len(init) != 1:
            proc.kill()
            raise RuntimeError(f"node {k}: cannot find init under unshare {proc.pid} ({init})")
        self.members[k] = Node(k, proc, init[0])
        for kind in KINDS:
            self.namespaces.add(_ns_id(init[0], kind))
        if self.namespaces & {_ns_id("self", kind) for kind in KINDS}:
            raise RuntimeError(f"node {k} shares a namespace with the machine")

    def _cable(self) -> None:
        """A veth pair per node: ``nK`` on the switch's bridge, ``eth0`` in node K."""
        assert self.switch is not None
        batch = "".join(
            f"link add n{k} type veth peer name eth0 netns {node.init}\n"
            f"link set n{k} master {BRIDGE}\nlink set n{k} up\n"
            for k, node in self.members.items()
        )
        done = subprocess.run(
            ["nsenter", "-t", str(self.switch.pid), "-n", "ip", "-batch", "-"],
            input=batch,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cabling the switch failed: {done.stderr.strip()}")
        for k, node in self.members.items():
            done = subprocess.run(
                ["nsenter", "-t", str(node.init), "-n", "ip", "-batch", "-"],
                input=f"addr add {self.ip(k)}/24 dev eth0\nlink set eth0 up\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:
                raise RuntimeError(f"node {k}: configuring eth0 failed: {done.stderr.strip()}")

    def _start_daemons(self) -> None:
        starting = {
            k: subprocess.Popen(
                self.nsenter(k, "/") + [sys.executable, "-m", "mosix_core.cli.mosd", "--etc", str(self.etc(k))],
                env=self.env(k),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in self.members
        }
        failed = []
        for k, proc in starting.items():
            out, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                failed.append(f"node {k}: {err.strip() or out.strip()}")
        if failed:
            raise RuntimeError("mosd did not start:\n" + "\n".join(failed))

    def down(self) -> None:
        """Kill every process of every node (their inits: the kernel ends the rest of
        each PID namespace) and the switch; the namespaces, veths and bridge go with
        their last process. Each node's mosd log is kept as ``etc/mosd.log`` first."""
        for k, node in self.members.items():
            if node.alive():
                try:
                    shutil.copyfile(self.node_path(k, self.etc(k) / "var" / "mosd.log"), self.etc(k) / "mosd.log")
                except OSError:
                    pass
        for node in self.members.values():
            try:
                os.kill(node.init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.members.values():  # unshare reaps its init, then ends
            try:
                node.unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.unshare.kill()
                node.unshare.wait(timeout=10)
        for proc in self.spawned:  # nsenters: their commands died with the nodes
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        if self.switch is not None:
            self.switch.kill()
            self.switch.wait(timeout=30)
        deadline = time.monotonic() + 10
        while left := self.leftovers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes outlived the cluster's namespaces: {sorted(left)}")
            time.sleep(0.02)

    def leftovers(self) -> set[int]:
        """The machine's pids of every process still in one of the cluster's namespaces."""
        left = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                for kind in KINDS:
                    try:
                        if _ns_id(name, kind) in self.namespaces:
                            left.add(int(name))
                            break
                    except OSError:
                        break
        return left


def _software() -> list[Path]:
    """Where this software and its interpreter live: every node has them, as every
    node of a real cluster has MOSIX installed (a clone under /tmp, as CI's may be,
    would otherwise vanish under a node's private /tmp)."""
    places = {Path(sys.prefix).resolve(), Path(sys.executable).resolve().parent, Path(__file__).resolve().parents[1]}
    return sorted(places)


def up(
    root: Path,
    nodes: int = 3,
    speeds: list[int] | None = None,
    subnet: str | None = None,
    interval: float = 0.2,
    cpus: int = 1,
    memory_mb: int = 4096,
    shared: Iterable[Path] = (),
    extra_conf: str = "",
    secret: str | None = None,
    balancing: bool = False,
) -> NamespaceCluster:
    """Build and start an N-node namespaced cluster under ``root`` (configuration
    trees, init logs). ``shared``: directories (under /tmp, typically) that stay the
    same on every node — ``root`` always does. On any failure everything built so
    far is taken down."""
    from ipaddress import IPv4Address

    from mosix_core.cluster import localcluster

    if not 1 <= nodes <= 250:
        raise ValueError("nodes must be between 1 and 250")
    speeds = list(speeds or []) + [10000] * (nodes - len(speeds or []))
    subnet = subnet or fresh_subnet()
    default_udp, default_tcp = localcluster.default_ports()
    layout = localcluster.ClusterLayout(
        root=root,
        nodes=nodes,
        base_ip=IPv4Address(f"{subnet}.1"),
        speeds=tuple(speeds),
        cpus=cpus,
        memory_mb=memory_mb,
        interval=interval,
        udp_port=default_udp,
        tcp_port=default_tcp,
    )
    localcluster.write_layout(layout, secret=secret, extra_conf=extra_conf + ("" if balancing else MANUAL_ONLY))
    cluster = NamespaceCluster(root, layout, subnet, [root, *shared, *_software()])
    try:
        cluster._start_switch()
        for k in range(1, nodes + 1):
            cluster._start_node(k)
        cluster._cable()
        cluster._start_daemons()
    except BaseException:
        cluster.down()
        raise
    return cluster


# -- the inits (run under unshare: python -m tests.helpers.nscluster switch|node ...) ---------------
def _mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if (
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _is_under(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _private_mounts(tmpfs: list[str], shared: list[str]) -> None:
    """Fresh tmpfs's on PRIVATE_DIRS (each shared directory under one bound back at its
    own path), then on each of ``tmpfs``."""
    shared = [os.path.realpath(p) for p in shared]
    shared = sorted({s for s in shared if not any(o != s and _is_under(s, o) for o in shared)})
    for directory in PRIVATE_DIRS:
        if not os.path.isdir(directory) or any(_is_under(directory, s) for s in shared):
            continue  # it is (inside) something shared
        keep = [(s, os.open(s, os.O_PATH | os.O_DIRECTORY)) for s in shared if _is_under(s, directory)]
        _mount("tmpfs", directory, "tmpfs", 0, "mode=1777" if directory != "/run" else "mode=755")
        for path, fd in keep:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
    for directory in tmpfs:
        os.makedirs(directory, exist_ok=True)
        _mount("tmpfs", directory, "tmpfs", 0, "mode=755")


def _serve_as_init() -> None:
    """Say ready, then reap orphans until SIGTERM (pid 1 of a PID namespace)."""
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        got = signal.sigtimedwait({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}, 1.0)
        if got is not None and got.si_signo != signal.SIGCHLD:
            sys.exit(0)


def _init_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="tests.helpers.nscluster")
    parser.add_argument("mode", choices=["switch", "node"])
    parser.add_argument("--hostname")
    parser.add_argument("--tmpfs", action="append", default=[])
    parser.add_argument("--shared", action="append", default=[])
    args = parser.parse_args(argv)
    if args.mode == "switch":
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    else:
        if os.getpid() != 1:
            raise SystemExit("the node init must be pid 1 of a new PID namespace")
        _private_mounts(args.tmpfs, args.shared)
        if args.hostname:
            socket.sethostname(args.hostname)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _serve_as_init()


if __name__ == "__main__":
    _init_main(sys.argv[1:])
