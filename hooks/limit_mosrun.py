"""Example site policy: limit what users can run with mosrun (manual §4.6 and §6.5).

Load it by naming this directory in ``/etc/mosix/mosd.conf``::

    hooks_dir = /usr/share/mosix/hooks     # or wherever this file lives

For ordinary users (root is exempt) it
* forces ``mosrun -b`` (the best node) whatever location they asked for,
* makes ``-m{mb}`` mandatory, so the cluster can protect its memory,
* appends every invocation to a log file (``MOSRUN_POLICY_LOG``, default
  ``/var/log/mosix/mosrun.log``).

Copy and edit it: a site hook is plain Python, registered on the same hook bus as
the built-in features and called before them.
"""

from __future__ import annotations

import os
import time

import attrs

from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import MosrunRequest
from mosix_core.errors import PolicyRefused

FORCE_BEST_NODE = True
REQUIRE_MEMORY = True
LOG_FILE = os.environ.get("MOSRUN_POLICY_LOG", "/var/log/mosix/mosrun.log")


def _log(request: MosrunRequest, verdict: str) -> None:
    try:
        os.makedirs(os.path.dirname(LOG_FILE), exist_ok=True)
        with open(LOG_FILE, "a") as f:
            f.write(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} uid={request.uid} user={request.user} "
                f"{verdict}: {' '.join(request.argv)}\n"
            )
    except OSError:
        pass  # logging must never stop a user's program


@hookimpl
def mosix_check_mosrun(request: MosrunRequest) -> MosrunRequest | None:
    if request.uid == 0:
        _log(request, "allowed (root)")
        return None
    if REQUIRE_MEMORY and request.memory_mb is None:
        _log(request, "refused (no -m)")
        raise PolicyRefused("this cluster requires -m{mb}: say how much memory your program needs")
    if FORCE_BEST_NODE and request.location != "-b":
        request = attrs.evolve(request, location="-b")
    _log(request, "allowed")
    return request
