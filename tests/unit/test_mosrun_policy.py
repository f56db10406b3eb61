"""The parameters of mosrun (manual §4.6) in ``{etc}/mosrun.conf``, through the hook bus."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import attrs
import pytest

from mosix_core.contract.plugins import apply_policies, build_plugin_manager
from mosix_core.contract.records import MosrunRequest
from mosix_core.errors import ConfigError, PolicyRefused
from mosix_core.mosrun.options import parse
from mosix_core.mosrun.options_wire import from_request, to_request
from mosix_plugins.mosrun_policy import MosrunParameters

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "mosix"
MEMORY_REQUIRED = "this cluster requires -m{mb}: please specify the memory your program needs"


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager()


@pytest.fixture
def etc(tmp_path):
    directory = tmp_path / "mosix"
    directory.mkdir()
    return directory


def configure(etc: Path, text: str) -> None:
    (etc / "mosrun.conf").write_text(text)


def request(etc: Path | None, *argv: str, uid: int = 1000) -> MosrunRequest:
    options, words = parse(list(argv))
    return to_request(
        options, words, uid=uid, user="root" if uid == 0 else "alice", etc=None if etc is None else str(etc)
    )


def check(pm, req: MosrunRequest) -> MosrunRequest:
    return apply_policies(pm, "mosix_check_mosrun", req)


# --- nothing active unless configured ------------------------------------------------------------------


def test_without_the_file_or_a_directory_everything_is_accepted_unchanged(pm, etc):
    for req in (request(etc, "prog"), request(None, "prog"), request(etc, "-3", "-e", "prog", "x")):
        assert check(pm, req) == req


def test_the_shipped_sample_activates_nothing(pm, tmp_path):
    etc = tmp_path / "mosix"
    shutil.copytree(SAMPLE, etc)
    assert MosrunParameters.load(etc) == MosrunParameters.default()
    req = request(etc, "prog")
    assert check(pm, req) == req


def test_the_sample_documents_every_parameter_with_its_default():
    text = (SAMPLE / "mosrun.conf").read_text()
    uncommented = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", text)
    documented = {m.group(1) for m in re.finditer(r"(?m)^([a-z_]+) = ", uncommented)}
    assert documented == {f.name for f in attrs.fields(MosrunParameters)}
    assert MosrunParameters.parse(uncommented, "mosrun.conf") == MosrunParameters.default()


# --- best node ---------------------------------------------------------------------------------------------


def test_best_force_overrides_every_location_of_ordinary_users(pm, etc):
    configure(etc, "best = force\n")
    for argv in (["prog"], ["-h", "prog"], ["-r", "node3", "prog"], ["-3", "prog"], ["-b", "prog"]):
        assert check(pm, request(etc, *argv)).location == "-b"


def test_best_force_leaves_root_alone(pm, etc):
    configure(etc, "best = force\n")
    for argv in (["prog"], ["-h", "prog"], ["-3", "prog"]):
        req = request(etc, *argv, uid=0)
        assert check(pm, req) == req


def test_best_default_applies_only_without_a_location_and_to_everyone(pm, etc):
    configure(etc, "best = default\n")
    assert check(pm, request(etc, "prog")).location == "-b"
    assert check(pm, request(etc, "prog", uid=0)).location == "-b"
    for argv in (["-h", "prog"], ["-rnode", "prog"], ["-4", "prog"]):
        req = request(etc, *argv)
        assert check(pm, req) == req


def test_best_user_changes_nothing(pm, etc):
    configure(etc, "best = user\n")
    req = request(etc, "prog")
    assert check(pm, req) == req


# --- unsupported system calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "option", "mode"), [("silent", "-e", "silent"), ("warn", "-w", "warn")])
def test_unsupported_default_applies_to_those_who_gave_none_of_e_w_u(pm, etc, value, option, mode):
    configure(etc, f"unsupported = {value}\n")
    for uid in (1000, 0):
        checked = check(pm, request(etc, "-m5", "prog", uid=uid))
        assert checked.options == (option,)
        options, words = from_request(checked)
        assert options.unsupported == mode and options.unsupported_explicit and words == ["prog"]
    for given in ("-e", "-w", "-u"):
        req = request(etc, given, "prog")
        assert check(pm, req) == req


def test_unsupported_kill_is_the_default_and_changes_nothing(pm, etc):
    configure(etc, "unsupported = kill\n")
    req = request(etc, "prog")
    assert check(pm, req) == req


# --- mandatory -m ----------------------------------------------------------------------------------------


def test_require_memory_refuses_ordinary_users_without_m(pm, etc):
    configure(etc, "require_memory = yes\n")
    with pytest.raises(PolicyRefused) as info:
        check(pm, request(etc, "prog"))
    assert str(info.value) == MEMORY_REQUIRED
    with pytest.raises(PolicyRefused):
        check(pm, request(etc, "-S4", "cmds"))  # a queue runs programs too
    for req in (request(etc, "-m0", "prog"), request(etc, "-m500", "-S4", "cmds"), request(etc, "prog", uid=0)):
        assert check(pm, req) == req


def test_require_memory_no_is_the_default(pm, etc):
    configure(etc, "require_memory = no\n")
    req = request(etc, "prog")
    assert check(pm, req) == req


def test_recovering_and_inspecting_are_exempt_from_program_options(pm, etc):
    # -R takes -m and -e/-w/-u from the checkpoint file, and -I runs nothing.
    configure(etc, "require_memory = yes\nunsupported = warn\nbest = force\n")
    recovered = check(pm, request(etc, "-Rckpt.1", "-3"))
    assert recovered.location == "-b" and recovered.options == ("-Rckpt.1",)
    assert from_request(recovered)[0].recover == "ckpt.1"
    inspect = request(etc, "-Ickpt.1")
    assert check(pm, inspect) == inspect


def test_all_three_together_flow_back_into_the_options(pm, etc):
    configure(
        etc, "# site rules\nbest = force   # everyone to the best node\nunsupported = warn\nrequire_memory = yes\n"
    )
    checked = check(pm, request(etc, "-m300", "-h", "-L", "prog", "arg"))
    options, words = from_request(checked)
    assert (options.location, options.memory_mb, options.unsupported, options.lock) == ("best", 300, "warn", True)
    assert words == ["prog", "arg"]


def test_a_changed_file_takes_effect_at_once(pm, etc):
    req = request(etc, "prog")
    configure(etc, "require_memory = yes\n")
    with pytest.raises(PolicyRefused):
        check(pm, req)
    configure(etc, "require_memory = no\n")
    assert check(pm, req) == req


def test_site_hooks_run_first_and_the_parameters_see_their_result(etc):
    from mosix_core.contract.hookspecs import hookimpl

    class AddMemory:
        @hookimpl
        def mosix_check_mosrun(self, request):
            return attrs.evolve(request, memory_mb=64)

    configure(etc, "require_memory = yes\n")
    with_site = build_plugin_manager(extra=[("add_memory", AddMemory())])
    assert check(with_site, request(etc, "prog")).memory_mb == 64


# --- malformed files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("best\n", 1, "expected 'key = value'"),
        ("\n# c\n = user\n", 3, "expected 'key = value'"),
        ("speed = 5\n", 1, "unknown key 'speed' (known: best, unsupported, require_memory, strict_limitations)"),
        ("best = always\n", 1, "best must be one of user, default, force, not 'always'"),
        ("best = user force\n", 1, "best must be one of user, default, force, not 'user force'"),
        ("unsupported = ignore\n", 1, "unsupported must be one of kill, silent, warn, not 'ignore'"),
        ("require_memory = true\n", 1, "require_memory must be one of yes, no, not 'true'"),
        ("require_memory =\n", 1, "require_memory must be one of yes, no, not ''"),
        ("best = user\nbest = force\n", 2, "best is already set on line 1"),
    ],
)
def test_malformed_files_name_the_file_and_line(pm, etc, text, line, reason):
    configure(etc, text)
    path = str(etc / "mosrun.conf")
    with pytest.raises(ConfigError) as info:
        check(pm, request(etc, "prog"))
    assert (info.value.path, info.value.line, info.value.reason) == (path, line, reason)
    assert str(info.value) == f"{path}:{line}: {reason}"


def test_unreadable_file_is_a_config_error(pm, etc):
    (etc / "mosrun.conf").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        check(pm, request(etc, "prog"))


def test_parse_reads_comments_and_blank_lines():
    params = MosrunParameters.parse(
        "\n# x\nbest=default\n  unsupported =silent # why\nrequire_memory = yes\n", "mosrun.conf"
    )
    assert params == MosrunParameters(best="default", unsupported="silent", require_memory=True)


# --- strict_limitations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("site", [False, True])
def test_strict_limitations_default_keeps_mosd_confs_and_yes_no_decide(pm, etc, site):
    req = attrs.evolve(request(etc, "prog"), strict_limitations=site)  # as mosd.conf says
    configure(etc, "strict_limitations = default\n")
    assert check(pm, req) == req
    for text, strict in (("yes", True), ("no", False)):
        configure(etc, f"strict_limitations = {text}\n")
        for uid in (0, 1000):  # root's programs too
            checked = check(pm, attrs.evolve(req, uid=uid))
            assert checked.strict_limitations is strict
            assert from_request(checked)[0].strict_limitations is strict  # and it reaches the options
