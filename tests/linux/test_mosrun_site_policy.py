"""Site policy on mosrun, end to end: a real configuration directory, a real ordinary
user (nobody, through setpriv) running the real mosrun.

Every test runs twice: on a node without a running mosd (mosrun loads the plugins and
applies the policy itself) and on a node whose mosd runs (mosrun asks it: the daemon
applies the policy with the caller's uid from SO_PEERCRED, and writes the hook's log).

* a site hook module (hooks/limit_mosrun.py, loaded through ``hooks_dir`` in mosd.conf);
* the built-in parameters of mosrun in ``{etc}/mosrun.conf`` (plugins/mosrun_policy.py):
  ``unsupported``, ``require_memory``, ``best`` and ``strict_limitations``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mosix_core.cluster import localcluster
from mosix_core.daemon import server
from tests.helpers.cluster import fresh_base_ip
from tests.helpers.programs import BIN

pytestmark = pytest.mark.linux

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
KILLED = (-9, 137)
HOOK_REFUSAL = "this cluster requires -m{mb}: say how much memory your program needs"
BUILTIN_REFUSAL = "mosrun: this cluster requires -m{mb}: please specify the memory your program needs"
BEST_NOTE = "mosrun: note: -b needs MOSIX running on this node (mosd); starting at home"


def best_note(site) -> list[str]:
    """What mosrun says of -b: with mosd it asks for the best node (on a one-node site,
    this one: nothing to say); without, that it cannot."""
    return [] if site.mosd else [BEST_NOTE]


SHARED_MEMORY = "MOSRUN: Shared memory (MAP_SHARED) not supported under MOSIX"


@pytest.fixture(scope="module")
def nobody_can_run_mosrun():
    if os.geteuid() != 0:
        pytest.skip("needs root, to run mosrun as both root and an ordinary user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run mosrun as an ordinary user")
    probe = subprocess.run(
        [*AS_NOBODY, str(BIN / "mosrun"), "--help"], capture_output=True, text=True, cwd="/", timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"this interpreter cannot run as user nobody: {probe.stderr.strip()[-200:]}")


class Site:
    """A node's configuration directory readable by everyone, and a directory everyone may write."""

    def __init__(self, base: Path, extra_conf: str = "") -> None:
        layout = localcluster.ClusterLayout(
            root=base / "config",
            nodes=1,
            base_ip=fresh_base_ip(),
            speeds=(10000,),
            cpus=1,
            memory_mb=1024,
            interval=0.2,
            udp_port=localcluster.default_ports()[0],
            tcp_port=localcluster.default_ports()[1],
        )
        localcluster.write_layout(layout, extra_conf=extra_conf)
        self.base = base
        self.etc = layout.etc(1)
        self.mosd: int | None = None
        self.work = base / "work"
        self.work.mkdir()
        os.chmod(self.work, 0o777)
        self.log = self.work / "policy.log"

    def start_mosd(self) -> None:
        # The hook module reads MOSRUN_POLICY_LOG when mosd loads it: mosd's environment.
        old = os.environ.get("MOSRUN_POLICY_LOG")
        os.environ["MOSRUN_POLICY_LOG"] = str(self.log)
        try:
            self.mosd = server.start_background(self.etc)
        finally:
            if old is None:
                del os.environ["MOSRUN_POLICY_LOG"]
            else:
                os.environ["MOSRUN_POLICY_LOG"] = old

    def stop_mosd(self) -> None:
        if self.mosd:
            server.stop(self.etc)
            self.mosd = None

    def configure(self, text: str) -> None:
        (self.etc / "mosrun.conf").write_text(text)

    def mosrun(self, *args: str, user: str = "nobody", locale: str = "C") -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": locale, "HOME": str(self.work), "MOSIX_ETC": str(self.etc)}
        if not self.mosd:  # with mosd running, only the daemon can have written the log
            env["MOSRUN_POLICY_LOG"] = str(self.log)
        prefix = AS_NOBODY if user == "nobody" else []
        return subprocess.run(
            [*prefix, str(BIN / "mosrun"), *args], env=env, cwd=self.work, capture_output=True, text=True, timeout=60
        )

    def log_lines(self) -> list[str]:
        # "YYYY-mm-dd HH:MM:SS uid=... user=... verdict: argv": without the time stamp
        return [line.split(" ", 2)[2] for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture(params=["in-mosrun", "by-mosd"])
def make_site(request, nobody_can_run_mosrun):
    sites: list[Site] = []

    def make(extra_conf: str = "") -> Site:
        base = Path(tempfile.mkdtemp(prefix="mosrun-policy-"))  # not under pytest's 0700 directories
        os.chmod(base, 0o755)
        site = Site(base, extra_conf)
        sites.append(site)
        if request.param == "by-mosd":
            site.start_mosd()
        return site

    yield make
    for site in sites:
        site.stop_mosd()
        shutil.rmtree(site.base, ignore_errors=True)


def touching(site: Site, name: str) -> list[str]:
    """A program that leaves a marker file (and says who ran it)."""
    return ["sh", "-c", f"touch {site.work / name}; id -u"]


# -- a site hook module ----------------------------------------------------------------------------------
def test_site_hook_refuses_ordinary_users_without_memory(make_site):
    site = make_site(f"hooks_dir = {REPO / 'hooks'}\n")
    refused = site.mosrun(*touching(site, "refused"))
    assert refused.returncode != 0
    assert HOOK_REFUSAL in refused.stderr
    assert refused.stdout == ""
    assert not (site.work / "refused").exists()  # nothing started
    assert site.log_lines() == [f"uid={NOBODY} user=nobody refused (no -m): sh -c touch {site.work}/refused; id -u"]


def test_site_hook_allows_ordinary_users_with_memory_and_forces_best(make_site):
    site = make_site(f"hooks_dir = {REPO / 'hooks'}\n")
    allowed = site.mosrun("-m100", "-h", *touching(site, "allowed"))
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == f"{NOBODY}\n"
    assert (site.work / "allowed").exists()
    assert allowed.stderr.splitlines() == best_note(site)  # -h became -b
    assert site.log_lines() == [f"uid={NOBODY} user=nobody allowed: sh -c touch {site.work}/allowed; id -u"]


def test_site_hook_exempts_root(make_site):
    site = make_site(f"hooks_dir = {REPO / 'hooks'}\n")
    result = site.mosrun(*touching(site, "root"), user="root")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("0\n", "")
    assert (site.work / "root").exists()
    assert site.log_lines() == [f"uid=0 user=root allowed (root): sh -c touch {site.work}/root; id -u"]


def test_without_hooks_dir_the_hook_is_not_loaded(make_site):
    site = make_site()
    result = site.mosrun(*touching(site, "free"))
    assert result.returncode == 0, result.stderr
    assert (site.work / "free").exists()
    assert not site.log.exists()


# -- mosrun.conf: unsupported ----------------------------------------------------------------------------
@pytest.fixture
def utf8_locale():
    names = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split()
    for name in ("C.utf8", "C.UTF-8"):
        if name in names:
            return name
    pytest.skip("no C.UTF-8 locale on this machine")


def test_a_default_site_lets_ls_la_work_in_a_utf8_locale(make_site, utf8_locale):
    """Issue 18: glibc's read-only MAP_SHARED of its gconv cache is mapped privately."""
    site = make_site()
    (site.work / "some-file").write_text("x")
    result = site.mosrun("ls", "-la", str(site.work), locale=utf8_locale)
    assert (result.returncode, result.stderr) == (0, "")
    assert "some-file" in result.stdout


def test_a_strict_site_refuses_as_the_manual_does(make_site, utf8_locale):
    """mosd.conf strict_limitations = yes: the manual's LIMITATIONS exactly, messages and all."""
    site = make_site("strict_limitations = yes\n")
    for argv, message in (
        (["ls", "-la", str(site.work)], SHARED_MEMORY),
        (["nproc"], "MOSRUN: system-call 'sched_getaffinity' not supported under MOSIX"),
        (
            ["/usr/bin/python3", "-c", "import time; time.sleep(0.01)"],
            "MOSRUN: system-call 'clock_nanosleep' not supported under MOSIX",
        ),
    ):
        killed = site.mosrun(*argv, locale=utf8_locale if argv[0] == "ls" else "C")
        assert killed.returncode in KILLED, argv
        assert killed.stderr.strip() == message
        warned = site.mosrun("-w", *argv, locale=utf8_locale if argv[0] == "ls" else "C")
        assert message in warned.stderr.splitlines(), argv  # and the call failed with ENOSYS


def test_unsupported_silent_lets_ls_la_work_in_a_utf8_locale(make_site, utf8_locale):
    site = make_site("strict_limitations = yes\n")
    (site.work / "some-file").write_text("x")
    killed = site.mosrun("ls", "-la", str(site.work), locale=utf8_locale)
    assert killed.returncode in KILLED
    assert killed.stderr.strip() == SHARED_MEMORY

    site.configure("unsupported = silent\n")
    allowed = site.mosrun("ls", "-la", str(site.work), locale=utf8_locale)
    assert allowed.returncode == 0, allowed.stderr
    assert "some-file" in allowed.stdout and allowed.stderr == ""
    # The user's own -u still wins over the site's default.
    undone = site.mosrun("-u", "ls", "-la", str(site.work), locale=utf8_locale)
    assert undone.returncode in KILLED
    assert undone.stderr.strip() == SHARED_MEMORY


def test_unsupported_warn_continues_with_a_message(make_site, utf8_locale):
    site = make_site("strict_limitations = yes\n")
    site.configure("unsupported = warn\n")
    result = site.mosrun("ls", "-la", str(site.etc), locale=utf8_locale)
    assert result.returncode == 0, result.stderr
    assert "mosix.map" in result.stdout
    assert SHARED_MEMORY in result.stderr.splitlines()


# -- strictness as the site's mosrun policy decides it -----------------------------------------------------
NPROC_REFUSED = "MOSRUN: system-call 'sched_getaffinity' not supported under MOSIX"

STRICT_FOR_NOBODY = """\
import attrs
from mosix_core.contract.hookspecs import hookimpl

@hookimpl
def mosix_check_mosrun(request):
    if request.user == "nobody":
        return attrs.evolve(request, strict_limitations=True)
"""


def test_mosrun_conf_makes_a_default_site_strict_children_and_nested_mosruns_too(make_site):
    site = make_site()
    assert (site.mosrun("nproc").stdout, site.mosrun("nproc").stderr) == ("1\n", "")
    site.configure("strict_limitations = yes\n")
    # the program, a child of it, and a mosrun a child runs (which cannot lift it: the
    # supervisor keeps the setting, whatever the nested mosrun sends)
    for argv in (["nproc"], ["sh", "-c", "nproc"], ["sh", "-c", f"{BIN / 'mosrun'} -u nproc"]):
        killed = site.mosrun(*argv)
        assert killed.returncode in KILLED or argv[0] == "sh", argv
        assert NPROC_REFUSED in killed.stderr.splitlines(), (argv, killed.stderr)
        assert killed.stdout == "", argv
    root = site.mosrun("nproc", user="root")
    assert NPROC_REFUSED in root.stderr.splitlines()  # everyone's, not only ordinary users'


def test_mosrun_conf_lifts_a_strict_sites_limitations(make_site):
    site = make_site("strict_limitations = yes\n")
    assert NPROC_REFUSED in site.mosrun("nproc").stderr.splitlines()
    site.configure("strict_limitations = no\n")
    lifted = site.mosrun("nproc")
    assert (lifted.returncode, lifted.stdout, lifted.stderr) == (0, "1\n", "")


def test_a_site_hook_makes_one_user_strict(make_site):
    hooks = Path(tempfile.mkdtemp(prefix="mosrun-hooks-"))
    try:
        os.chmod(hooks, 0o755)
        (hooks / "strict_for_nobody.py").write_text(STRICT_FOR_NOBODY)
        site = make_site(f"hooks_dir = {hooks}\n")
        refused = site.mosrun("nproc")
        assert (refused.returncode in KILLED, refused.stderr.strip()) == (True, NPROC_REFUSED)
        root = site.mosrun("nproc", user="root")
        assert (root.returncode, root.stdout, root.stderr) == (0, "1\n", "")
    finally:
        shutil.rmtree(hooks, ignore_errors=True)


# -- mosrun.conf: require_memory -------------------------------------------------------------------------
def test_require_memory(make_site):
    site = make_site()
    site.configure("require_memory = yes\n")
    refused = site.mosrun(*touching(site, "refused"))
    assert refused.returncode != 0
    assert refused.stderr.strip() == BUILTIN_REFUSAL
    assert not (site.work / "refused").exists()

    allowed = site.mosrun("-m10", *touching(site, "allowed"))
    assert (allowed.returncode, allowed.stdout) == (0, f"{NOBODY}\n"), allowed.stderr
    assert (site.work / "allowed").exists()

    root = site.mosrun(*touching(site, "root"), user="root")
    assert (root.returncode, root.stdout, root.stderr) == (0, "0\n", "")

    site.configure("require_memory = no\n")
    assert site.mosrun(*touching(site, "again")).returncode == 0
    assert (site.work / "again").exists()


# -- mosrun.conf: best ----------------------------------------------------------------------------------
def test_best_force_overrides_the_users_location(make_site):
    site = make_site()
    site.configure("best = force\n")
    for location in ("-h", "-1", "-b"):
        result = site.mosrun(location, "true")
        assert (result.returncode, result.stderr.splitlines()) == (0, best_note(site)), location
    # root is exempt: -h stays -h
    root = site.mosrun("-h", "true", user="root")
    assert (root.returncode, root.stderr) == (0, "")


def test_best_default_only_when_no_location_is_given(make_site):
    site = make_site()
    site.configure("best = default\n")
    plain = site.mosrun("true")
    assert (plain.returncode, plain.stderr.splitlines()) == (0, best_note(site))
    home = site.mosrun("-h", "true")
    assert (home.returncode, home.stderr) == (0, "")
    root = site.mosrun("true", user="root")  # a default, not an enforcement: root gets it too
    assert (root.returncode, root.stderr.splitlines()) == (0, best_note(site))


def test_best_user_keeps_the_location(make_site):
    site = make_site()
    site.configure("best = user\n")
    result = site.mosrun("-h", "true")
    assert (result.returncode, result.stderr) == (0, "")


def test_a_broken_mosrun_conf_is_reported(make_site):
    site = make_site()
    site.configure("best = sometimes\n")
    result = site.mosrun(*touching(site, "marker"))
    assert result.returncode != 0
    assert f"{site.etc / 'mosrun.conf'}:1:" in result.stderr and "sometimes" in result.stderr
    assert not (site.work / "marker").exists()
