"""Real unprivileged users for the security tests: made for the run, removed after.

The users are created with ``useradd`` (the tests run as root in CI) and deleted at the
end of the session, their files with them. :func:`as_user` runs a command as one of
them, with a clean environment of its own (never root's).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers.programs import BIN

#: the roles; a run's users are named ``mosec{pid}-{role}`` (several runs may share the
#: machine), and a run removes the users of runs that have ended (killed half-way)
ROLES = ("attacker", "victim")
PREFIX = "mosec"


def run_user_names() -> dict[str, str]:
    return {role: f"{PREFIX}{os.getpid()}-{role}" for role in ROLES}


def remove_stale_users() -> None:
    """The users of earlier runs whose pytest is gone."""
    for entry in pwd.getpwall():
        owner, dash, role = entry.pw_name.partition("-")
        if not (owner.startswith(PREFIX) and owner[len(PREFIX) :].isdigit() and dash and role in ROLES):
            continue
        if not Path(f"/proc/{owner[len(PREFIX) :]}").exists():
            remove_user(entry.pw_name)


@attrs.frozen
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A login-like environment: nothing of root's leaks into the user's commands."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env


def remove_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def create_user(name: str, root: Path) -> User:
    remove_user(name)
    home = root / name
    done = subprocess.run(
        [
            "useradd",
            "--no-user-group",
            "--gid",
            "users",
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/sh",
            name,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot create test user {name}: {done.stderr.strip()}")
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, home)


def _drop_to(user: User):
    def drop() -> None:
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

    return drop


def as_user(
    user: User, argv: list[str], *, env: dict[str, str] | None = None, popen: bool = False, **kwargs: Any
) -> Any:
    """Run ``argv`` as ``user`` (``subprocess.run``, or ``Popen`` with ``popen=True``).
    ``env`` adds to the user's own environment."""
    full_env = user.env(**(env or {}))
    kwargs.setdefault("cwd", str(user.home))
    if popen:
        return subprocess.Popen(argv, env=full_env, preexec_fn=_drop_to(user), **kwargs)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(argv, env=full_env, preexec_fn=_drop_to(user), **kwargs)


def world_readable(path: Path) -> Path:
    """Open ``path`` (a test's tree, e.g. a cluster's configuration) to the test users."""
    for entry in [path, *path.rglob("*")]:
        if entry.is_dir():
            entry.chmod(entry.stat().st_mode | 0o755)
        elif entry.is_file() and "secret" not in entry.name:
            entry.chmod(entry.stat().st_mode | 0o444)
    return path
