"""What the security tests share: real unprivileged users (see :mod:`tests.helpers.users`).

Every attack in ``tests/security/`` is made by an ordinary local user (or a stranger on
the network) against real daemons and real supervisors; ``attacker`` and ``victim`` are
two such users, created for the session and removed after it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.users import User, create_user, remove_stale_users, remove_user, run_user_names


@pytest.fixture(scope="session")
def test_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, User]]:
    """The run's users, by role."""
    if os.geteuid() != 0:
        pytest.skip("the security tests create users: run them as root (CI does)")
    base = tmp_path_factory.getbasetemp()
    # pytest's own directories are root's (0700): let the users pass through them to
    # the trees the tests give them (each test's own files keep their own modes). Only
    # pytest's own: a --basetemp's parent may be /tmp itself, whose mode is not ours.
    for directory in (base.parent, base):
        if directory == base or directory.name.startswith("pytest-of-"):
            directory.chmod(0o711)
    root = Path(tmp_path_factory.mktemp("homes"))
    root.chmod(0o755)
    remove_stale_users()
    names = run_user_names()
    users = {role: create_user(name, root) for role, name in names.items()}
    try:
        yield users
    finally:
        for name in names.values():
            remove_user(name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def attacker(test_users: dict[str, User]) -> User:
    return test_users["attacker"]


@pytest.fixture
def victim(test_users: dict[str, User]) -> User:
    return test_users["victim"]
