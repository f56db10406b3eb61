"""The administrator's "parameters of mosrun" (manual §4.6), as a policy plugin.

No defaults or enforcement are active as shipped: this built-in accepts every
invocation unchanged. Sites enforce rules with a hook module (see
``hooks/limit_mosrun.py``), which runs before this one.
"""

from __future__ import annotations

from mosix_core.hookspecs import hookimpl
from mosix_core.placement import MosrunRequest


@hookimpl(trylast=True)
def mosix_check_mosrun(request: MosrunRequest) -> None:
    return None
