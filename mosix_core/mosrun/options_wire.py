"""mosrun's options as data: JSON values through a socket (:func:`to_json`,
:func:`from_json`), and the invocation as site policies see it
(:func:`policy_fields`, :func:`to_request`, :func:`from_request`,
:func:`from_fields`). Both go through the command line's own syntax
(:mod:`mosix_core.mosrun.options`): what comes back is checked exactly as a command
line is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from mosix_core.errors import ProtocolError
from mosix_core.mosrun.options import MosrunOptions, UsageError, location_word, parse, parse_options, to_argv

if TYPE_CHECKING:
    from mosix_core.contract.records import MosrunRequest

# mosix_core.contract.records is imported where it is needed, not here: every mosrun
# reads its options before the program may start (see mosix_core.mosrun.options).


def to_json(options: MosrunOptions) -> dict[str, Any]:
    """The options as plain JSON values (lists for tuples, a sorted list for ``explicit``)."""
    data: dict[str, Any] = {}
    for field in attrs.fields(MosrunOptions):
        value = getattr(options, field.name)
        if field.name == "explicit":
            value = sorted(value)
        elif field.name == "redirect":
            value = [[fd, name] for fd, name in value]
        elif isinstance(value, tuple):
            value = list(value)
        data[field.name] = value
    return data


_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "location": (str, type(None)),
    "location_node": (str, type(None)),
    "memory_mb": (int, type(None)),
    "unsupported": (str,),
    "unsupported_explicit": (bool,),
    "lock": (bool,),
    "freezable": (bool,),
    "cpujob": (bool,),
    "decay": (int,),
    "local_time": (bool,),
    "force": (bool,),
    "argv0_included": (bool,),
    "queue_jobs": (int, type(None)),
    "checkpoint_file": (str, type(None)),
    "checkpoint_limit": (int, type(None)),
    "checkpoint_interval": (int, type(None)),
    "recover": (str, type(None)),
    "inspect": (str, type(None)),
    "strict_limitations": (bool,),
}


def from_json(data: Any) -> MosrunOptions:
    """Options from :func:`to_json`'s output; anything else is a :class:`ProtocolError`.

    The other side of a socket may be anyone, so the options are checked as
    strictly as a command line: they must be exactly what their own arguments say.
    """
    if not isinstance(data, Mapping):
        raise ProtocolError("mosrun options must be a JSON object")
    unknown = set(data) - set(attrs.fields_dict(MosrunOptions))
    if unknown:
        raise ProtocolError(f"mosrun options: unknown field {sorted(unknown)[0]!r}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _JSON_KINDS:
            kinds = _JSON_KINDS[name]
            # bool is an int in Python, but true is no number of megabytes.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ProtocolError(f"mosrun options: {name} has the wrong type")
            values[name] = value
        elif name == "redirect":
            values[name] = tuple(_json_pair(item) for item in _json_list(name, value))
        else:  # private_dirs, explicit
            items = _json_list(name, value)
            if not all(isinstance(item, str) for item in items):
                raise ProtocolError(f"mosrun options: {name} must be a list of strings")
            values[name] = frozenset(items) if name == "explicit" else tuple(items)
    options = MosrunOptions(**values)
    try:
        checked, rest = parse_options(to_argv(options))
    except UsageError as err:
        raise ProtocolError(f"mosrun options: {err}") from None
    if checked != options or rest:
        raise ProtocolError("mosrun options are inconsistent")
    return options


def _json_list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"mosrun options: {name} must be a list")
    return value


def _json_pair(item: Any) -> tuple[int, str]:
    if (
        not isinstance(item, list)
        or len(item) != 2
        or not isinstance(item[0], int)
        or isinstance(item[0], bool)
        or not isinstance(item[1], str)
    ):
        raise ProtocolError("mosrun options: redirect must be a list of [fd, filename] pairs")
    return item[0], item[1]


def policy_fields(options: MosrunOptions, words: Sequence[str]) -> dict[str, Any]:
    """The invocation as site policies see it, as plain data: the fields of a
    :class:`mosix_core.contract.records.MosrunRequest` other than who and where.

    ``options`` holds every option but the location, -m and -S as one word each,
    value glued (``-d9000``, ``-X/tmp``), so a policy can test for ``"-e"`` safely.
    """
    rest = attrs.evolve(
        options,
        location=None,
        location_node=None,
        memory_mb=None,
        queue_jobs=None,
        explicit=options.explicit - set("bhrmS"),
    )
    return {
        "argv": list(words),
        "location": location_word(options),
        "memory_mb": options.memory_mb,
        "options": to_argv(rest),
        "queue_jobs": options.queue_jobs,
        "strict_limitations": options.strict_limitations,
    }


def to_request(
    options: MosrunOptions, words: Sequence[str], *, uid: int, user: str, etc: str | None = None
) -> MosrunRequest:
    """The invocation as site policies see it (``mosix_check_mosrun``)."""
    from mosix_core.contract.records import MosrunRequest

    return MosrunRequest.from_fields(policy_fields(options, words), uid=uid, user=user, etc=etc)


def from_request(request: MosrunRequest) -> tuple[MosrunOptions, list[str]]:
    """The options and words of a request after the site policies had their say."""
    return from_fields(request.policy_fields())


def from_fields(fields: Mapping[str, Any]) -> tuple[MosrunOptions, list[str]]:
    """The options and words of :func:`policy_fields`'s output (after the policies)."""
    argv: list[str] = []
    if fields["location"] is not None:
        argv.append(fields["location"])
    if fields["memory_mb"] is not None:
        argv.append(f"-m{fields['memory_mb']}")
    if fields["queue_jobs"] is not None:
        argv.append(f"-S{fields['queue_jobs']}")
    argv.extend(fields["options"])
    if fields["argv"] and fields["argv"][0].startswith("-"):
        argv.append("--")
    argv.extend(fields["argv"])
    options, words = parse(argv)
    return attrs.evolve(options, strict_limitations=fields["strict_limitations"] is True), words
