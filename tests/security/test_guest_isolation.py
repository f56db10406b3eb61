"""Issue 17, items 2 and 9: guests are sealed off from each other by the kernel's own rules.

Two real users each move a process from node 1 to node 2. Each guest (the process and
the guest host that traces it) runs as a uid of its own from mosd.conf's ``guest_uids``;
a process running as one guest's uid — a guest that got round its system-call filter —
cannot write the other guest's memory, trace its host, read its host's environment,
kill it (``kill(-1, SIGKILL)``) or remove its row from mosd's process table. The range
here holds two uids: a third guest is refused with the manual's reason, and a uid is
given back (and used again) once its guest has gone.

The tests of this module share one cluster and its two guests, and run in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import attrs
import pytest

from mosix_core.cluster import localcluster
from mosix_core.linux import procfs
from tests.helpers.cluster import MANUAL_ONLY, LocalCluster, fresh_base_ip
from tests.helpers.programs import BIN
from tests.helpers.users import User, as_user, world_readable

pytestmark = pytest.mark.cluster

#: two uids only (outside the default range, so no other cluster of the machine has them)
FIRST_UID, LAST_UID = 80170, 80171
AWK = 'BEGIN { for (i = 0; ; i++) { for (j = 0; j < 200000; j++) s += j % 7; printf "%d %d\\n", i, s; fflush() } }'
#: what a guest that escaped its filter tries, as its own uid: ``ATTACK what pid``
ATTACK = r"""
import ctypes, errno, os, signal, sys
what, pid = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
try:
    if what == "mem":
        os.open(f"/proc/{pid}/mem", os.O_RDWR)
    elif what == "ptrace":
        if libc.ptrace(16, pid, 0, 0) != 0:                     # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), "ptrace")
    elif what == "environ":
        open(f"/proc/{pid}/environ", "rb").read()
    elif what == "kill-all":
        os.kill(-1, signal.SIGKILL)
    print("done")
except OSError as err:
    print("refused", errno.errorcode.get(err.errno, err.errno))
"""


def wait_until(condition, timeout: float = 60.0, what: str = "condition", also: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {also.read_text()!r}" if also else ""))
        time.sleep(0.05)
    return result


def ids(pid: int) -> tuple[set[int], set[int]]:
    """Every uid and every gid (real, effective, saved, filesystem) of ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {int(x) for x in fields["Uid"].split()}, {int(x) for x in fields["Gid"].split()}


def traced_by(host: int) -> int:
    guest = procfs.traced_child(host)
    if guest is None:
        raise AssertionError(f"no process traced by guest host {host}")
    return guest


def running_as_guest_uids() -> list[int]:
    """Processes of the range's uids (a run before this one leaves none for long)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ids(int(name))[0] & {FIRST_UID, LAST_UID} and alive(int(name)):
                    found.append(int(name))
            except (OSError, KeyError):
                continue
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@attrs.define
class Guest:
    user: User
    proc: subprocess.Popen  # mosrun at home (node 1)
    pid: int  # the process at home
    out: Path
    host: int = 0  # its guest host on node 2
    process: int = 0  # the guest process itself on node 2

    def lines(self) -> int:
        return self.out.read_bytes().count(b"\n") if self.out.exists() else 0


@attrs.define
class Setup:
    cluster: LocalCluster
    guests: dict[str, Guest]

    def rows(self, k: int) -> list[dict]:
        return self.cluster.client(k).call("processes")["processes"]

    def start(self, user: User, name: str) -> Guest:
        out = user.home / f"{name}.out"
        with open(out, "wb") as stdout, open(user.home / f"{name}.err", "wb") as stderr:
            # LANG=C: a locale's archive is mapped shared, which MOSIX does not support
            proc = as_user(
                user,
                [str(BIN / "mosrun"), "awk", AWK],
                env={"MOSIX_ETC": str(self.cluster.etc(1)), "LANG": "C.UTF-8"},
                popen=True,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        row = wait_until(
            lambda: next(
                (
                    r
                    for r in self.rows(1)
                    if r["uid"] == user.uid
                    and not r.get("home")
                    and r["pid"] not in [g.pid for g in self.guests.values()]
                ),
                None,
            ),
            what=f"{user.name}'s process at home",
            also=user.home / f"{name}.err",
        )
        guest = Guest(user, proc, row["pid"], out)
        wait_until(lambda: guest.lines() >= 3, what="output at home")
        return guest

    def migrate(self, guest: Guest) -> subprocess.CompletedProcess:
        return as_user(
            guest.user, [str(BIN / "mosmigrate"), str(guest.pid), "2"], env={"MOSIX_ETC": str(self.cluster.etc(1))}
        )

    def arrive(self, guest: Guest) -> None:
        done = self.migrate(guest)
        assert done.returncode == 0, done.stderr
        row = wait_until(
            lambda: next((r for r in self.rows(2) if r.get("origpid") == guest.pid), None), what="the guest on node 2"
        )
        guest.host = row["pid"]
        guest.process = wait_until(lambda: _traced(guest.host), what="the guest process")
        before = guest.lines()
        wait_until(lambda: guest.lines() > before + 3, what="progress away")

    def attack(self, attacker: Guest, what: str, pid: int) -> str:
        """``what`` against ``pid``, as attacker's guest uid (as the guest itself would)."""
        uid = ids(attacker.process)[0].pop()

        def become() -> None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", ATTACK, what, str(pid)],
            preexec_fn=become,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def ask_mosd(self, attacker: Guest, request: dict) -> dict:
        """One raw request line on node 2's control socket, as attacker's guest uid."""
        uid = ids(attacker.process)[0].pop()
        path = str(self.cluster.etc(2) / "var" / "mosd.sock")
        program = (
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
            "s.sendall(sys.argv[2].encode() + b'\\n')\nprint(s.makefile().readline())"
        )

        def become() -> None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", program, path, json.dumps(request)],
            preexec_fn=become,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _traced(host: int) -> int | None:
    try:
        return traced_by(host)
    except AssertionError:
        return None


@pytest.fixture(scope="module")
def setup(tmp_path_factory, test_users):
    root = tmp_path_factory.mktemp("isolation")
    wait_until(lambda: not running_as_guest_uids(), what="the guests of an earlier run to end")
    layout = localcluster.up(
        root,
        nodes=2,
        base_ip=str(fresh_base_ip()),
        interval=0.2,
        extra_conf=f"guest_uids = {FIRST_UID}-{LAST_UID}\n" + MANUAL_ONLY,
    )
    cluster = LocalCluster(root, layout)
    world_readable(root)
    state = Setup(cluster, {})
    try:
        cluster.converged()
        for name, user in (("attacker", test_users["attacker"]), ("victim", test_users["victim"])):
            state.guests[name] = state.start(user, name)
            state.arrive(state.guests[name])
        yield state
    finally:
        for guest in state.guests.values():
            if guest.proc.poll() is None:
                guest.proc.kill()
                guest.proc.wait()
        cluster.down()
        wait_until(lambda: not running_as_guest_uids(), what="the guests to end with their homes")


def test_each_guest_runs_as_a_uid_of_its_own_from_the_range(setup):
    seen = []
    for guest in setup.guests.values():
        for pid in (guest.host, guest.process):
            uids, gids = ids(pid)
            assert len(uids) == 1 and uids == gids, (pid, uids, gids)
            seen.append(uids.pop())
        assert seen[-1] == seen[-2]  # the host is its guest's uid
        assert FIRST_UID <= seen[-1] <= LAST_UID
    assert seen[0] != seen[2]
    rows = {r["origpid"]: r["uid"] for r in setup.rows(2) if r.get("home")}
    assert rows == {g.pid: ids(g.host)[0].pop() for g in setup.guests.values()}


def test_a_guest_host_has_nothing_of_mosds_environment(setup):
    for guest in setup.guests.values():
        environ = Path(f"/proc/{guest.host}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0] for entry in environ if entry}
        assert names <= {b"PATH", b"LANG", b"PYTHONPATH"}, names
        assert b"HOME=/root" not in environ and b"MOSIX_ETC" not in names


@pytest.mark.parametrize("what, whose", [("mem", "process"), ("ptrace", "host"), ("environ", "host")])
def test_a_guest_cannot_reach_into_another(setup, what, whose):
    attacker, victim = setup.guests["attacker"], setup.guests["victim"]
    target = getattr(victim, whose)
    assert setup.attack(attacker, what, target).startswith("refused")
    assert alive(victim.host) and alive(victim.process)


def test_a_guest_cannot_reach_into_its_own_host(setup):
    """The host is undumpable once its guest exists: the same uid gets nothing of it."""
    attacker = setup.guests["attacker"]
    for what in ("mem", "ptrace", "environ"):
        assert setup.attack(attacker, what, attacker.host).startswith("refused"), what
    assert alive(attacker.host)


def test_a_guest_cannot_change_mosds_process_table(setup):
    attacker, victim = setup.guests["attacker"], setup.guests["victim"]
    for pid in (victim.host, attacker.host):
        for request in (
            {"op": "unregister", "pid": pid},
            {"op": "update", "pid": pid, "command": "x"},
            {"op": "register", "pid": pid},
        ):
            reply = setup.ask_mosd(attacker, request)
            assert reply["ok"] is False and "Permission denied" in reply["error"], (request, reply)
    assert setup.ask_mosd(attacker, {"op": "ping"})["ok"] is True  # reading is everyone's
    rows = {r["pid"]: r for r in setup.rows(2) if r.get("home")}
    assert set(rows) == {victim.host, attacker.host}
    assert rows[victim.host]["command"] != "x"


def test_a_guest_beyond_the_range_is_refused_with_the_manuals_reason(setup):
    victim = setup.guests["victim"]
    third = setup.guests["third"] = setup.start(victim.user, "third")
    done = setup.migrate(third)
    message = f"failed migrating to {setup.cluster.ip(2)}: other node refused"
    wait_until(
        lambda: message in done.stderr.decode() + (victim.user.home / "third.err").read_text(),
        timeout=30,
        what="the refusal",
    )
    before = third.lines()
    wait_until(lambda: third.lines() > before + 3, what="progress at home")
    assert next(r for r in setup.rows(1) if r["pid"] == third.pid)["where"] == "here"
    assert len([r for r in setup.rows(2) if r.get("home")]) == 2


def test_kill_all_as_one_guest_leaves_the_others(setup):
    attacker, victim = setup.guests["attacker"], setup.guests["victim"]
    assert setup.attack(attacker, "kill-all", 0) == "done"
    wait_until(lambda: not alive(attacker.host), what="the attacker's own guest to die")
    time.sleep(0.5)
    assert alive(victim.host) and alive(victim.process)
    before = victim.lines()
    wait_until(lambda: victim.lines() > before + 3, what="the victim's progress")
    assert victim.proc.poll() is None


def test_a_uid_is_given_back_and_used_again(setup):
    attacker, victim = setup.guests["attacker"], setup.guests["victim"]
    if attacker.proc.poll() is None:  # run alone: end the attacker's guest here
        attacker.proc.kill()
    attacker.proc.wait(timeout=30)
    wait_until(lambda: not alive(attacker.host), what="the attacker's guest host to end")
    freed = {FIRST_UID, LAST_UID} - ids(victim.host)[0]
    third = setup.guests.get("third") or setup.start(victim.user, "third")
    setup.guests["third"] = third

    def moved() -> bool:
        # giving back takes a moment (what ran as the uid is killed first): until then, refused
        setup.migrate(third)
        try:
            wait_until(lambda: any(r.get("origpid") == third.pid for r in setup.rows(2)), timeout=10)
            return True
        except AssertionError:
            return False

    wait_until(moved, timeout=60, what="the third guest in")
    host = next(r for r in setup.rows(2) if r.get("origpid") == third.pid)["pid"]
    process = wait_until(lambda: _traced(host), what="the third guest process")
    assert ids(host)[0] == ids(process)[0] == freed
