"""Entry points of one group, found the quick way.

``importlib.metadata.distributions()`` parses every installed distribution's
metadata with the email package; on a small machine that is 40-60 ms, paid by
every ``mosrun`` before its program may start (the site's mosrun policy is a
plugin). The group's members are all that is needed, so this reads only the
``entry_points.txt`` files of ``*.dist-info``/``*.egg-info`` directories on
``sys.path`` and, for those that declare the group, the two header lines of
their metadata. Same search order and same rule as importlib: the first copy
of a distribution on the path is the one Python imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Iterator


class EntryPoint:
    """One member of a group (a plain class: ``typing`` alone costs a start-up 5 ms)."""

    __slots__ = ("name", "value", "distribution", "version")

    def __init__(self, name: str, value: str, distribution: str, version: str) -> None:
        self.name = name
        self.value = value  # "module" or "module:attribute"
        self.distribution = distribution  # the distribution's own spelling of its name
        self.version = version

    def __repr__(self) -> str:
        return f"EntryPoint({self.name!r}, {self.value!r}, {self.distribution!r}, {self.version!r})"

    def load(self):
        module_name, _, attribute = self.value.partition(":")
        target = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            target = getattr(target, part)
        return target


def normalized(name: str) -> str:
    """PEP 503 name normalisation (``Mosix_Py`` and ``mosix-py`` are one distribution)."""
    out = name.lower()
    for sep in ("_", "."):
        out = out.replace(sep, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def entry_points(group: str, path: Iterable[str] | None = None) -> Iterator[EntryPoint]:
    seen: set[str] = set()
    for directory in sys.path if path is None else path:
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            continue  # missing directories and zip files hold no plugins of ours
        for entry in names:
            if not entry.endswith((".dist-info", ".egg-info")):
                continue
            meta_dir = os.path.join(directory or ".", entry)
            stem = entry.rsplit(".", 1)[0]
            key = normalized(stem.split("-", 1)[0])
            if key in seen or not os.path.isdir(meta_dir):
                continue
            seen.add(key)
            members = _group_members(os.path.join(meta_dir, "entry_points.txt"), group)
            if not members:
                continue
            dist_name, version = _name_and_version(meta_dir, stem)
            for name, value in members:
                yield EntryPoint(name, value, dist_name, version)


def _group_members(path: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of ``[group]`` (none if the file is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return []
    members, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == group
            continue
        if inside:
            name, equals, value = line.partition("=")
            if equals and name.strip() and value.strip():
                members.append((name.strip(), value.strip()))
    return members


def _name_and_version(meta_dir: str, stem: str) -> tuple[str, str]:
    """``Name:`` and ``Version:`` from the metadata headers; the directory name as a fallback."""
    fallback_name, _, fallback_version = stem.partition("-")
    found = {"name": fallback_name, "version": fallback_version}
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(meta_dir, file), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        break  # end of the headers
                    key, colon, value = line.partition(":")
                    if colon and key.lower() in found and value.strip():
                        found[key.lower()] = value.strip()
            break
        except OSError:
            continue
    return found["name"], found["version"]
