"""Users by uid (one lookup, the same fallback everywhere)."""

from __future__ import annotations

import pwd


def user_name(uid: int) -> str:
    """The login name of ``uid``; the number itself when the user database has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
