"""mosps — list MOSIX processes in ps style (mosps(1)).

``mosps [ps options] [-I] [-h] [-M] [-L] [-O] [-n] [-P] [-V] [-S] [--json] [--etc DIR]``

How it works: the rows come from mosd's process table (``processes``); the real
``ps`` selects among them and supplies the standard columns. The user's ps
*selection* options (``-A -e -a -d -N -G -g -p -t -u -U``; BSD ``a x T p t U``)
and modifiers (``-H -m -T``; BSD ``e f g m``) are handed to ``ps`` as they are, the
*format* options (``-f -l -j``; BSD ``u j l c n w``) are interpreted here, and ps
is asked for fixed columns (``-o``), so its output parses exactly. Only pids in the
table are shown.

* Without any ps selection option, mosps lists the caller's own MOSIX processes,
  on any terminal or none (as ``ps -u $EUID``) — root too sees only root's then;
  ``-A``, ``-e``, ``ax`` and so on ask for everyone's, following ps. Guests have no
  terminal here: list them with ``-V`` or such an option (manual, note 1).
* Columns: the ps columns of the chosen format, less those mosps(1) says it does not
  display (%CPU %MEM ADDR C F PRI RSS S STAT STIME SZ TIME VSZ WCHAN; BSD's START is
  the same as STIME and goes too), with the MOSIX columns before TTY:

  ==========  =====================================================
  default     ``PID WHERE FROM FRZ TTY CMD``
  ``-f``      ``UID PID PPID WHERE FROM FRZ TTY CMD`` (full command line)
  ``-l``      ``UID PID PPID NI WHERE FROM FRZ TTY CMD``
  ``-j``      ``PID PGID SID WHERE FROM FRZ TTY CMD``
  ``u``       ``USER PID WHERE FROM FRZ TTY COMMAND``
  ``j``       ``PPID PID PGID SID WHERE FROM FRZ TTY TPGID UID COMMAND``
  ``l``       ``UID PID PPID NI WHERE FROM FRZ TTY COMMAND``
  BSD         ``PID WHERE FROM FRZ TTY COMMAND`` (``ax`` and the like)
  ==========  =====================================================

  ``-P`` adds ORIGPID before WHERE, ``-n`` NMIGS after FRZ; ``-V`` shows
  ``ORIGPID FROM`` (and NMIGS with ``-n``) instead; ``-S`` shows ``TOTAL DONE FAIL``
  instead. ``-T``, ``m`` and ``-m`` add SPID (threads).
* Nodes (WHERE, FROM): the local node is always ``here``; otherwise the node number
  from userview.map when the address is listed there, else the IP address; ``-I``
  always addresses, ``-h`` host names, ``-M`` the host name's first component (an
  address when the name cannot be found).
* Filters: ``-L`` local processes only (home here), ``-O`` local processes running
  away, ``-V`` guests only, ``-S`` ``mosrun -S`` queue drivers only; together they
  must all hold.
* ``--json``: a list of objects, one per process: every table field (as mosd keeps
  it) plus ``user``, ``tty``, ``ppid``, ``pgid``, ``sid``, ``tpgid``, ``ni``,
  ``cmd`` and ``display`` (the row as printed, header → text).
* Width: on a terminal, lines are cut to its width; ``w`` gives 132 columns, ``ww``
  (or ``-w -w``) no limit. Not on a terminal: no limit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import attrs
import typer

from mosix_core import users
from mosix_core.cli.common import ETC_HELP, etc_path, new_app, print_json, reports_errors, run
from mosix_core.cluster.proctable import ProcessRecord
from mosix_core.config.userview import UserView
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import MosixError
from mosix_core.linux import procfs

app = new_app("List MOSIX processes in ps(1) style.")

OWN_FLAGS = frozenset("IhMLOnPVS")  # mosps's own, always after a '-'
DASH_LETTERS = frozenset("AGHNTUadefgjlmptuw")
BSD_LETTERS = frozenset("TUacefgjlmnptuwx")  # x is not in the manual's list, but its note uses "ax"
DASH_WITH_LIST = frozenset("GUgptu")
BSD_WITH_LIST = frozenset("Upt")
DASH_SELECT = frozenset("AGUadegptu")
BSD_SELECT = frozenset("TUaptx")
PS = "ps"


# -- the command line --------------------------------------------------------------------------------
@attrs.frozen
class PsOption:
    """One ps option: ``dash`` is True for UNIX (``-e``), False for BSD (``a``)."""

    letter: str
    dash: bool
    arg: str | None = None

    def encode(self) -> str:
        text = ("-" if self.dash else "") + self.letter
        return text if self.arg is None else f"{text}={self.arg}"

    @classmethod
    def decode(cls, text: str) -> PsOption:
        body, sep, arg = text.partition("=")
        dash = body.startswith("-")
        return cls(body.lstrip("-"), dash, arg if sep else None)

    def argv(self) -> list[str]:
        text = ("-" if self.dash else "") + self.letter
        return [text] if self.arg is None else [text, self.arg]


def split_argv(argv: list[str]) -> tuple[list[PsOption], list[str]]:
    """Separate ps options from mosps's own (``-I -h -M -L -O -n -P -V -S``, which may
    share a '-' with ps's: ``-efn``), and from ``--`` options, which go to typer."""
    ps: list[PsOption] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            rest.append(arg)
            if arg in ("--etc",) and i < len(argv):
                rest.append(argv[i])
                i += 1
            continue
        dash = arg.startswith("-")
        letters = arg[1:] if dash else arg
        with_list = DASH_WITH_LIST if dash else BSD_WITH_LIST
        for j, letter in enumerate(letters):
            if dash and letter in OWN_FLAGS:
                rest.append("-" + letter)
            elif letter in with_list:
                value = letters[j + 1 :]
                if not value and i < len(argv):
                    value = argv[i]
                    i += 1
                ps.append(PsOption(letter, dash, value or ""))
                break
            else:
                ps.append(PsOption(letter, dash))
        if not letters:
            ps.append(PsOption("", dash))
    return ps, rest


def rewrite(argv: list[str]) -> list[str]:
    ps, rest = split_argv(argv)
    for option in ps:
        rest += ["--ps", option.encode()]
    return rest


@attrs.frozen
class PsRequest:
    """What the user's ps options ask for, once interpreted."""

    to_ps: tuple[str, ...]  # selection and modifiers, for the real ps
    selects: bool  # some option chooses which processes
    unix_format: frozenset[str]  # of f, l, j
    bsd_format: str | None  # u, j or l
    bsd: bool  # BSD personality (BSD options were used)
    comm: bool  # show the command name, not the command line
    numeric: bool  # user ids as numbers
    width: int  # how many w
    threads: bool  # -T, -m, m: one row per thread, with SPID


def interpret(options: list[PsOption]) -> PsRequest:
    to_ps: list[str] = []
    bsd_flags = ""
    unix_format: set[str] = set()
    bsd_format: str | None = None
    selects = bsd = comm = numeric = threads = False
    width = 0
    for o in options:
        allowed = DASH_LETTERS if o.dash else BSD_LETTERS
        if len(o.letter) != 1 or o.letter not in allowed:
            shown = ("-" if o.dash else "") + (o.letter or "")
            raise MosixError(f"unsupported ps option '{shown}' (supported: TUacefgjlmnptuw and -AGHNTUadefgjlmptuw)")
        if o.arg is not None and not o.arg:
            raise MosixError(f"ps option '{o.encode()}' needs a list")
        if o.dash:
            if o.letter in "flj":
                unix_format.add(o.letter)
            elif o.letter == "w":
                width += 1
            else:
                to_ps += o.argv()
                selects |= o.letter in DASH_SELECT
                threads |= o.letter in "Tm"
            continue
        bsd = True
        if o.letter in "ujl":
            if bsd_format not in (None, o.letter):
                raise MosixError("conflicting format options")
            bsd_format = o.letter
        elif o.letter == "c":
            comm = True
        elif o.letter == "n":
            numeric = True
        elif o.letter == "w":
            width += 1
        elif o.arg is not None:
            to_ps += o.argv()
            selects = True
        else:
            bsd_flags += o.letter
            selects |= o.letter in BSD_SELECT
            threads |= o.letter == "m"
    if unix_format and bsd_format:
        raise MosixError("conflicting format options")
    if bsd_flags:
        to_ps.insert(0, bsd_flags)
    return PsRequest(tuple(to_ps), selects, frozenset(unix_format), bsd_format, bsd, comm, numeric, width, threads)


# -- asking ps ---------------------------------------------------------------------------------------
# tname first and pid last: every field but the command is one word, and the
# command starts one space after the right-aligned pid (forest indentation intact).
PS_FIELDS = ("tname:20", "euid:12", "ppid:12", "pgid:12", "sid:12", "tpgid:12", "ni:6", "spid:12", "pid:12")
PS_NAMES = ("tty", "euid", "ppid", "pgid", "sid", "tpgid", "ni", "spid", "pid")


def ps_rows(request: PsRequest, uid: int, everyone: bool = False) -> list[dict[str, str]]:
    """The processes ps selects, in its order, with its fields (all text). Without a
    selection option: the ``uid``'s, or (``everyone``) every process."""
    if request.selects:
        selection = list(request.to_ps)
    else:
        selection = ["-e" if everyone else "-u", *([] if everyone else [str(uid)]), *request.to_ps]
    command = "comm" if request.comm or not (request.bsd or "f" in request.unix_format) else "args"
    fields = ",".join(f"{f}=" for f in PS_FIELDS) + f",{command}="
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PS_", "CMD_ENV", "COLUMNS", "PERSONALITY"))}
    try:
        out = subprocess.run(
            [PS, "-ww", *selection, "-o", fields], capture_output=True, text=True, env=env, errors="replace", timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MosixError(f"cannot run ps: {err}") from None
    if out.returncode != 0 and out.stderr.strip():
        first = next(line for line in out.stderr.splitlines() if line.strip())
        raise MosixError(f"ps: {first.strip()}")
    rows = []
    for line in out.stdout.splitlines():
        words, rest = [], line
        for _ in PS_FIELDS:
            rest = rest.lstrip(" ")
            word, _, rest = rest.partition(" ")
            words.append(word)
        row = dict(zip(PS_NAMES, words))
        row["cmd"] = rest
        rows.append(row)
    return rows


# -- the listing -------------------------------------------------------------------------------------
@attrs.frozen
class Display:
    """How nodes are shown: ``numbers`` (default), ``ip``, ``host`` or ``short``."""

    local_ip: IPv4Address | None
    style: str = "numbers"
    userview: UserView | None = None
    lookup: Callable[[str], str | None] = attrs.field(default=None)

    def node(self, address: str) -> str:
        try:
            ip = IPv4Address(address)
        except ValueError:
            return address  # here, leaving, starting
        if ip == self.local_ip:
            return "here"
        if self.style in ("host", "short"):
            name = (self.lookup or host_name)(str(ip))
            if not name:
                return str(ip)
            return name.split(".")[0] if self.style == "short" else name
        if self.style == "numbers" and self.userview is not None:
            number = self.userview.number_of(ip)
            if number is not None:
                return str(number)
        return str(ip)


_names: dict[str, str | None] = {}


def host_name(ip: str) -> str | None:
    if ip not in _names:
        try:
            _names[ip] = socket.gethostbyaddr(ip)[0]
        except OSError:
            _names[ip] = None
    return _names[ip]


@attrs.frozen
class Filters:
    local_only: bool = False  # -L
    away_only: bool = False  # -O
    guests_only: bool = False  # -V
    queues_only: bool = False  # -S

    def keep(self, r: ProcessRecord, display: Display) -> bool:
        if self.local_only and r.is_guest:
            return False
        if self.away_only and (r.is_guest or display.node(r.where) in ("here", "leaving", "starting")):
            return False
        if self.guests_only and not r.is_guest:
            return False
        return not (self.queues_only and r.queue is None)


def user_name(uid: str, numeric: bool, row: dict[str, str] | None = None) -> str:
    if numeric or not uid.isdigit():
        return uid
    if row is not None and "home_user" in row:
        return row["home_user"]  # a guest's owner, named as home names it
    return users.user_name(int(uid))


def guest_view(row: dict[str, str], record: ProcessRecord, request: PsRequest) -> dict[str, str]:
    """A guest's ps fields as its owner knows them: the owner at home (not the guest
    uid it runs as here, which no account has), and the command home sent where ps
    would show a stranger's: the guest host's own is an interpreter's, and the guest
    process's name is that of the memory file it was restored from (its argument
    list, which ps shows for the full command line, is its own)."""
    row = dict(row)
    if record.home_uid is not None:
        row["euid"] = str(record.home_uid)
        row["home_user"] = record.home_user or str(record.home_uid)
    if request.comm or not (request.bsd or "f" in request.unix_format):
        row["cmd"] = Path(record.command.split(" ", 1)[0]).name[:15]
    elif int(row["pid"]) == record.pid:
        row["cmd"] = record.command
    return row


def mosix_columns(
    r: ProcessRecord | None, display: Display, *, origpid: bool, nmigs: bool, guests: bool, queues: bool
) -> list[tuple[str, str]]:
    """The MOSIX columns of one row (``r`` None: a thread row, left blank)."""
    cols: list[tuple[str, str]] = []

    def add(header: str, value: Callable[[ProcessRecord], Any]) -> None:
        cols.append((header, "" if r is None else str(value(r))))

    if queues:
        for k, header in enumerate(("TOTAL", "DONE", "FAIL")):
            add(header, lambda r, k=k: (r.queue_counts or ("-", "-", "-"))[k])
        return cols
    if origpid or guests:
        add("ORIGPID", lambda r: r.origpid if r.is_guest and r.origpid is not None else "N/A")
    if not guests:
        add("WHERE", lambda r: "here" if r.is_guest else display.node(r.where))
    add("FROM", lambda r: display.node(str(r.home)) if r.is_guest else "here")
    if not guests:
        add("FRZ", lambda r: "N/A" if r.is_guest else r.frozen)
    if nmigs:
        add("NMIGS", lambda r: "N/A" if r.is_guest else r.nmigs)
    return cols


def ps_columns(request: PsRequest, row: dict[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The ps columns before the MOSIX ones and after them (the command last)."""
    uf, bf = request.unix_format, request.bsd_format
    before: list[tuple[str, str]] = []
    after: list[tuple[str, str]] = [("TTY", row["tty"])]
    thread_cols = [("SPID", row["spid"])] if request.threads else []
    if bf == "u":
        before += [("USER", user_name(row["euid"], request.numeric, row)), ("PID", row["pid"]), *thread_cols]
    elif bf == "j":
        before += [("PPID", row["ppid"]), ("PID", row["pid"]), *thread_cols, ("PGID", row["pgid"]), ("SID", row["sid"])]
        after += [("TPGID", row["tpgid"]), ("UID", row["euid"])]
    elif bf == "l":
        before += [("UID", row["euid"]), ("PID", row["pid"]), *thread_cols, ("PPID", row["ppid"]), ("NI", row["ni"])]
    else:
        if "f" in uf or "l" in uf:
            named = "f" in uf and not request.numeric
            before.append(("UID", user_name(row["euid"], not named, row)))
        before += [("PID", row["pid"]), *thread_cols]
        if "f" in uf or "l" in uf:
            before.append(("PPID", row["ppid"]))
        if "j" in uf:
            before += [("PGID", row["pgid"]), ("SID", row["sid"])]
        if "l" in uf:
            before.append(("NI", row["ni"]))
    after.append(("COMMAND" if request.bsd else "CMD", row["cmd"]))
    return before, after


def listing(
    etc: Path,
    ps_options: list[PsOption],
    *,
    style: str = "numbers",
    filters: Filters = Filters(),
    origpid: bool = False,
    nmigs: bool = False,
    uid: int | None = None,
) -> list[dict]:
    """The rows mosps shows: each a process's table fields plus ``display``, the
    columns as printed (header → text, in order), and ps's fields."""
    request = interpret(ps_options)
    reply = Client(etc).request(p.ProcessesRequest())
    userview_path = etc / "userview.map"
    display = Display(
        IPv4Address(reply.ip),
        style,
        UserView.from_file(userview_path) if style == "numbers" and userview_path.exists() else None,
    )
    uid = os.geteuid() if uid is None else uid
    records = {
        r.pid: r
        for r in reply.processes
        if filters.keep(r, display)
        if not (filters.guests_only and not request.selects and uid != 0 and r.home_uid != uid)
    }
    if not records:
        return []
    # A guest is listed as the process that runs its program (what top and kill see
    # here), not as the guest host that traces it; its host's row stands in meanwhile.
    programs = {pid: r for r in records.values() if r.is_guest and (pid := procfs.traced_child(r.pid)) is not None}
    hosts = {r.pid for r in programs.values()}
    rows: list[dict] = []
    current: ProcessRecord | None = None
    # -V alone: guests run as uids of their own, so "the caller's" means by their owner at home
    for row in ps_rows(request, uid, everyone=filters.guests_only):
        if row["pid"] == "-":  # a thread of the row before (m, -m)
            record, is_thread = current, True
        else:
            pid = int(row["pid"]) if row["pid"].isdigit() else None
            record = current = None if pid in hosts else records.get(pid) or programs.get(pid)
            is_thread = False
        if record is None:
            continue
        if record.is_guest and not is_thread:
            row = guest_view(row, record, request)
        before, after = ps_columns(request, row)
        mosix = mosix_columns(
            None if is_thread else record,
            display,
            origpid=origpid,
            nmigs=nmigs,
            guests=filters.guests_only,
            queues=filters.queues_only,
        )
        data = {
            **record.to_json(),
            "thread": is_thread,
            "user": user_name(row["euid"], False, row),
            **{k: row[k] for k in ("tty", "ppid", "pgid", "sid", "tpgid", "ni", "cmd")},
            "display": dict(before + mosix + after),
            "_columns": before + mosix + after,
        }
        if record.is_guest and not is_thread:
            data.update(pid=int(row["pid"]), host_pid=record.pid, user=row.get("home_user", data["user"]))
        rows.append(data)
    return rows


NUMERIC_HEADERS = {
    "PID",
    "PPID",
    "PGID",
    "SID",
    "TPGID",
    "UID",
    "NI",
    "SPID",
    "ORIGPID",
    "NMIGS",
    "TOTAL",
    "DONE",
    "FAIL",
}


def headers_for(ps_options: list[PsOption], *, origpid: bool, nmigs: bool, filters: Filters) -> list[str]:
    """The header line when there is nothing to list."""
    request = interpret(ps_options)
    empty = dict.fromkeys(PS_NAMES + ("cmd",), "")
    before, after = ps_columns(request, empty)
    mosix = mosix_columns(
        None, Display(None), origpid=origpid, nmigs=nmigs, guests=filters.guests_only, queues=filters.queues_only
    )
    return [h for h, _ in before + mosix + after]


def render(headers: list[str], rows: list[list[str]], width: int | None) -> list[str]:
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(headers)]
    lines = []
    for cells in [headers, *rows]:
        parts = []
        for k, (h, text) in enumerate(zip(headers, cells)):
            if k == len(headers) - 1:
                parts.append(text)
            elif h in NUMERIC_HEADERS:
                parts.append(text.rjust(widths[k]))
            else:
                parts.append(text.ljust(widths[k]))
        line = " ".join(parts).rstrip()
        lines.append(line[:width] if width else line)
    return lines


def line_width(request: PsRequest) -> int | None:
    if request.width >= 2 or not sys.stdout.isatty():
        return None
    if request.width == 1:
        return 132
    return shutil.get_terminal_size().columns


@app.command()
@reports_errors
def main_command(
    ps: list[str] = typer.Option([], "--ps", hidden=True, help="a ps option (set by the argv pre-parser)"),
    ips: bool = typer.Option(False, "-I", help="show nodes as IP addresses"),
    hosts: bool = typer.Option(False, "-h", help="show nodes as host names"),
    short_hosts: bool = typer.Option(False, "-M", help="show nodes as the first component of host names"),
    local_only: bool = typer.Option(False, "-L", help="only local processes (home here)"),
    away_only: bool = typer.Option(False, "-O", help="only local processes running away from home"),
    nmigs: bool = typer.Option(False, "-n", help="show the number of migrations (NMIGS)"),
    origpid: bool = typer.Option(False, "-P", help="show the original process ID at home (ORIGPID)"),
    guests_only: bool = typer.Option(False, "-V", help="only guest processes (home elsewhere)"),
    queues_only: bool = typer.Option(False, "-S", help="only mosrun -S queue drivers, with TOTAL DONE FAIL"),
    etc: Path | None = typer.Option(None, "--etc", help=ETC_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """mosps [ps options] [-I] [-h] [-M] [-L] [-O] [-n] [-P] [-V] [-S]

    Supported ps(1) options: TUacefgjlmnptuw (and x), -AGHNTUadefgjlmptuw.
    """
    options = [PsOption.decode(text) for text in ps]
    style = "ip" if ips else "host" if hosts else "short" if short_hosts else "numbers"
    filters = Filters(local_only, away_only, guests_only, queues_only)
    rows = listing(etc_path(etc), options, style=style, filters=filters, origpid=origpid, nmigs=nmigs)
    if as_json:
        print_json([{k: v for k, v in row.items() if k != "_columns"} for row in rows])
        return
    if rows:
        headers = [h for h, _ in rows[0]["_columns"]]
    else:
        headers = headers_for(options, origpid=origpid, nmigs=nmigs, filters=filters)
    for line in render(
        headers, [[text for _, text in row["_columns"]] for row in rows], line_width(interpret(options))
    ):
        typer.echo(line)


def main() -> None:
    run(app, rewrite=rewrite)


if __name__ == "__main__":
    main()
