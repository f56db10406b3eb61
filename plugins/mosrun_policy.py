"""The administrator's "parameters of mosrun" (manual §4.6), read from ``{etc}/mosrun.conf``.

Four parameters, as ``key = value`` lines (``#`` starts a comment)::

    best = user | default | force       # where programs start (mosrun -b)
    unsupported = kill | silent | warn  # the default for users who give none of -e/-w/-u
    require_memory = no | yes           # make mosrun -m{mb} mandatory
    strict_limitations = default | yes | no  # the manual's LIMITATIONS exactly (yes) or not (no)
                                        # for programs mosrun starts here; default: as mosd.conf says

No defaults or enforcement are active as shipped: without the file (or with every
line commented out, as in the sample) every invocation is accepted unchanged.
The super-user is exempt from ``best = force`` and ``require_memory = yes``;
defaults (``best = default``, ``unsupported``) and ``strict_limitations`` apply to everyone.
A strict process's children (and any mosrun they run) stay strict: the supervisor
keeps the setting in the process's MOSIX state, where the program cannot change it.

Options other than the location and -m reach policies in ``MosrunRequest.options``
one word each, value glued (see ``mosix_core.mosrun.options_wire.to_request``), so
``"-e"`` there is the option, never a file name; a site default of ``silent`` or
``warn`` is added to them as ``"-e"`` or ``"-w"``.

The file is read at each invocation, so a change takes effect at once. A site
hook module (see ``hooks/limit_mosrun.py``) runs before this built-in and can
enforce anything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from mosix_core.config.source import content_lines, read_optional_text
from mosix_core.contract.hookspecs import hookimpl
from mosix_core.contract.records import MosrunRequest
from mosix_core.errors import ConfigError, PolicyRefused

CONFIG_NAME = "mosrun.conf"

BEST_CHOICES = ("user", "default", "force")
UNSUPPORTED_CHOICES = ("kill", "silent", "warn")
_YES_NO = {"yes": True, "no": False}
# The option that makes each unsupported-call behaviour the default.
_UNSUPPORTED_OPTION = {"silent": "-e", "warn": "-w"}

MEMORY_REQUIRED = "this cluster requires -m{mb}: please specify the memory your program needs"


@attrs.frozen
class MosrunParameters:
    best: str = "user"  # "user": they decide; "default": -b without a location; "force": always -b
    unsupported: str = "kill"  # what happens on unsupported system calls unless -e/-w/-u says
    require_memory: bool = False  # refuse ordinary users' programs without -m{mb}
    strict_limitations: str = "default"  # "default": as mosd.conf says; "yes"/"no" decide

    @classmethod
    def default(cls) -> MosrunParameters:
        return cls()

    @classmethod
    def parse(cls, text: str, source: str) -> MosrunParameters:
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for number, content in content_lines(text):
            key, equals, raw = content.partition("=")
            key, value = key.strip(), raw.strip()
            if not equals or not key:
                raise ConfigError(source, "expected 'key = value'", number)
            if key not in _CHOICES:
                raise ConfigError(source, f"unknown key {key!r} (known: {', '.join(_CHOICES)})", number)
            if key in lines:
                raise ConfigError(source, f"{key} is already set on line {lines[key]}", number)
            choices = _CHOICES[key]
            if value not in choices:
                raise ConfigError(source, f"{key} must be one of {', '.join(choices)}, not {value!r}", number)
            values[key] = _YES_NO[value] if key == "require_memory" else value
            lines[key] = number
        return attrs.evolve(cls(), **values)

    @classmethod
    def load(cls, etc: str | os.PathLike[str]) -> MosrunParameters:
        """The parameters in ``etc``; the shipped defaults (nothing active) without the file."""
        path = Path(etc) / CONFIG_NAME
        text = read_optional_text(path)
        return cls.default() if text is None else cls.parse(text, os.fspath(path))


_CHOICES: dict[str, tuple[str, ...]] = {
    "best": BEST_CHOICES,
    "unsupported": UNSUPPORTED_CHOICES,
    "require_memory": tuple(_YES_NO),
    "strict_limitations": ("default", *_YES_NO),
}


def apply_parameters(parameters: MosrunParameters, request: MosrunRequest) -> MosrunRequest:
    """``request`` as the parameters change it; raises PolicyRefused if they refuse it."""
    if any(option.startswith("-I") for option in request.options):
        return request  # inspecting a checkpoint file runs nothing
    # -R takes its program options from the checkpoint file, -m and -e/-w among them.
    recovering = any(option.startswith("-R") for option in request.options)
    ordinary_user = request.uid != 0
    changes: dict[str, Any] = {}
    forced = parameters.best == "force" and ordinary_user and request.location != "-b"
    by_default = parameters.best == "default" and request.location is None
    if forced or by_default:
        changes["location"] = "-b"
    strict = _YES_NO.get(parameters.strict_limitations, request.strict_limitations)
    if strict != request.strict_limitations:
        changes["strict_limitations"] = strict
    if parameters.require_memory and ordinary_user and not recovering and request.memory_mb is None:
        raise PolicyRefused(MEMORY_REQUIRED)
    default_option = _UNSUPPORTED_OPTION.get(parameters.unsupported)
    said = any(option in ("-e", "-w", "-u") for option in request.options)
    if default_option is not None and not recovering and not said:
        # The site's default travels as the option itself, as if the user had typed it.
        changes["options"] = (*request.options, default_option)
    return attrs.evolve(request, **changes) if changes else request


@hookimpl(trylast=True)
def mosix_check_mosrun(request: MosrunRequest) -> MosrunRequest | None:
    # Without a configuration directory there is nowhere to read the parameters from.
    if request.etc is None:
        return None
    result = apply_parameters(MosrunParameters.load(request.etc), request)
    return None if result == request else result
