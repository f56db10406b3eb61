"""What one run of mostestload does (mostestload(1)), from its options' values.

The manual gives some options a mini-syntax of their own — ``-t {seconds}`` or
``-t {min},{max}``, ``--write [size[,ncalls[,repeats]]]``, ``--noiosyscall
[ncalls[,repeats]]`` — and says which go together: :meth:`LoadSpec.from_options`
reads them and refuses any value or combination the manual does not allow, with a
:class:`SpecError` that names the option as the user spelt it. Where the manual is
silent: ``--read``/``--write``/``--noiosyscall`` are alternatives (its "OR"), and so
are ``-d`` and ``-f``; empty fields take the defaults, and a ``repeats`` of 0 means
indefinitely.
"""

from __future__ import annotations

import random
from pathlib import Path

from attrs import frozen

KB = 1 << 10
MB = 1 << 20
DEFAULT_SECONDS = 1800.0
DEFAULT_NCALLS = 1024


class SpecError(ValueError):
    """An invalid option value; ``option`` names the option as the user spelt it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def _number(text: str, option: str, what: str, *, integer: bool = False) -> float:
    text = text.strip()
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SpecError(option, f"{what} must be a{'n integer' if integer else ' number'}, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(option, f"{what} must be a finite number, not {text!r}")
    if value < 0:
        raise SpecError(option, f"{what} must not be negative: {text}")
    return value


@frozen
class TimeSpec:
    """CPU seconds to run: ``low`` == ``high`` for a fixed time; ``high == 0``: forever."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: str, option: str = "--time") -> TimeSpec:
        """``{seconds}`` or ``{min},{max}``."""
        parts = text.split(",")
        if len(parts) > 2:
            raise SpecError(option, f"expected SECONDS or MIN,MAX, not {text!r}")
        values = [_number(p, option, "seconds") for p in parts]
        return cls.between(values[0], values[-1], option)

    @classmethod
    def between(cls, low: float, high: float, option: str = "--time") -> TimeSpec:
        if low < 0 or high < 0:
            raise SpecError(option, "seconds must not be negative")
        if low > high:
            raise SpecError(option, f"minimum {low:g} is greater than maximum {high:g}")
        return cls(low, high)

    @property
    def forever(self) -> bool:
        return self.high == 0

    def pick(self, rng: random.Random) -> float:
        """The CPU seconds of this run (0 = indefinitely)."""
        if self.forever:
            return 0.0
        return self.low if self.low == self.high else rng.uniform(self.low, self.high)


@frozen
class IOSpec:
    """A chunk of ``ncalls`` system calls of ``size`` bytes, ``repeats`` times (None: forever)."""

    size: int
    ncalls: int
    repeats: int | None

    @classmethod
    def parse(cls, text: str, option: str, *, sized: bool = True) -> IOSpec:
        """``[size[,ncalls[,repeats]]]`` (size in KB), or ``[ncalls[,repeats]]`` when not ``sized``.
        Empty fields take the defaults: 1 KB, 1024 calls, repeated indefinitely (also ``0``)."""
        names = ["size", "ncalls", "repeats"] if sized else ["ncalls", "repeats"]
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        if len(parts) > len(names):
            raise SpecError(option, f"expected {','.join(names)}, not {text!r}")
        values: dict[str, int] = {}
        for name, part in zip(names, parts, strict=False):
            if part:
                values[name] = int(_number(part, option, name, integer=True))
        size_kb = values.get("size", 1)
        ncalls = values.get("ncalls", DEFAULT_NCALLS)
        if size_kb < 1:
            raise SpecError(option, "size must be at least 1 (KB)")
        if ncalls < 1:
            raise SpecError(option, "ncalls must be at least 1")
        return cls(size_kb * KB if sized else 0, ncalls, values.get("repeats") or None)


@frozen
class LoadSpec:
    """Everything one run of mostestload does."""

    time: TimeSpec = TimeSpec(DEFAULT_SECONDS, DEFAULT_SECONDS)
    mem_mb: int = 0
    random_mem: bool = False
    cpu_units: int | None = None
    read: IOSpec | None = None
    write: IOSpec | None = None
    noio: IOSpec | None = None
    directory: Path | None = None
    file: Path | None = None
    maxiosize_mb: float | None = None
    verbose: bool = False
    report_migrations: bool = False
    sleep: float = 0.0

    @classmethod
    def from_options(
        cls,
        *,
        time_text: str | None = None,
        low: float | None = None,
        high: float | None = None,
        mem_mb: int = 0,
        random_mem: bool = False,
        cpu_units: int | None = None,
        read: str | None = None,
        write: str | None = None,
        noio: str | None = None,
        directory: Path | None = None,
        file: Path | None = None,
        maxiosize_mb: float | None = None,
        verbose: bool = False,
        report_migrations: bool = False,
        sleep: float = 0.0,
    ) -> LoadSpec:
        """Validate the command-line values (as strings where the manual has a mini-syntax)."""
        if time_text is not None and (low is not None or high is not None):
            raise SpecError("-t", "give either -t/--time or -l/-h, not both")
        if (low is None) != (high is None):
            raise SpecError("-l" if high is None else "-h", "-l {min} and -h {max} go together (or use -t {min},{max})")
        if time_text is not None:
            run_time = TimeSpec.parse(time_text, "-t")
        elif low is not None and high is not None:
            run_time = TimeSpec.between(low, high, "-l/-h")
        else:
            run_time = TimeSpec(DEFAULT_SECONDS, DEFAULT_SECONDS)
        if mem_mb < 0:
            raise SpecError("-m", "memory must not be negative")
        if cpu_units is not None and cpu_units < 0:
            raise SpecError("--cpu", "units must not be negative")
        given = [
            name for name, value in (("--read", read), ("--write", write), ("--noiosyscall", noio)) if value is not None
        ]
        if len(given) > 1:
            raise SpecError(given[1], f"{' and '.join(given)} are alternatives: give one of them")
        if directory is not None and file is not None:
            raise SpecError("-d", "give either -d/--dir or -f/--file, not both")
        if maxiosize_mb is not None and not maxiosize_mb > 0:
            raise SpecError("--maxiosize", "SIZE must be a positive number of megabytes")
        if sleep < 0 or sleep != sleep:
            raise SpecError("--sleep", "seconds must not be negative")
        return cls(
            time=run_time,
            mem_mb=mem_mb,
            random_mem=random_mem,
            cpu_units=cpu_units,
            read=IOSpec.parse(read, "--read") if read is not None else None,
            write=IOSpec.parse(write, "--write") if write is not None else None,
            noio=IOSpec.parse(noio, "--noiosyscall", sized=False) if noio is not None else None,
            directory=directory,
            file=file,
            maxiosize_mb=maxiosize_mb,
            verbose=verbose,
            report_migrations=report_migrations,
            sleep=sleep,
        )

    @property
    def io(self) -> IOSpec | None:
        return self.read or self.write or self.noio
