"""Choosing the freezing directory (mosix(7) freeze.conf, mosrun(1) ALTERNATIVE FREEZING SPACE)."""

from __future__ import annotations

import collections
import os
import random

import pytest

from mosix_core.config.freeze import FreezeConfig, FreezeDir
from mosix_core.errors import ConfigError, MosixError
from mosix_core.image.freezedirs import (
    FreezeDirs,
    NoSpaceToFreeze,
    available_bytes,
    choose_freeze_dir,
    freeze_dir_order,
    freeze_dirs_for,
    freeze_file_name,
)

MiB = 1 << 20
SYSTEM = FreezeConfig.parse("/sys1 2\n/sys2 0\nU 99\n", "/etc/mosix/freeze.conf")


def dirs(tmp_path, *weights: float) -> list[FreezeDir]:
    """Real directories d0, d1, … with the given weights."""
    result = []
    for index, weight in enumerate(weights):
        path = tmp_path / f"d{index}"
        path.mkdir()
        result.append(FreezeDir(str(path), weight))
    return result


def roomy(path) -> None:
    if (available_bytes(str(path)) or 0) < 64 * MiB:
        pytest.skip(f"{path} has less than 64 MiB free")


# --- which directories ----------------------------------------------------------------


def test_no_configuration_means_freeze_as_root():
    chosen = freeze_dirs_for(FreezeConfig.default(), {}, None, uid=1000)
    assert chosen == FreezeDirs(dirs=(FreezeDir("/freeze"),), owner=0, source="freeze.conf", users_own=False)


def test_system_directories_are_owned_by_the_u_line(tmp_path):
    chosen = freeze_dirs_for(SYSTEM, {"HOME": "/x"}, str(tmp_path), uid=1000)
    assert chosen.dirs == (FreezeDir("/sys1", 2.0), FreezeDir("/sys2", 0.0))
    assert chosen.owner == 99 and not chosen.users_own


def test_freeze_dir_variable_overrides_the_system(tmp_path):
    chosen = freeze_dirs_for(SYSTEM, {"FREEZE_DIR": "/scratch/me"}, str(tmp_path), uid=1000)
    assert chosen == FreezeDirs(dirs=(FreezeDir("/scratch/me"),), owner=1000, source="FREEZE_DIR", users_own=True)


def test_users_file_overrides_the_system(tmp_path):
    (tmp_path / ".freeze_dirs").write_text("# mine\n/scratch/a 3\n/scratch/b\n")
    chosen = freeze_dirs_for(SYSTEM, {}, str(tmp_path), uid=1000)
    assert chosen.dirs == (FreezeDir("/scratch/a", 3.0), FreezeDir("/scratch/b", 1.0))
    assert chosen.owner == 1000 and chosen.users_own
    assert chosen.source == str(tmp_path / ".freeze_dirs")


def test_freeze_dir_variable_wins_over_the_users_file(tmp_path):
    (tmp_path / ".freeze_dirs").write_text("/scratch/a\n")
    chosen = freeze_dirs_for(SYSTEM, {"FREEZE_DIR": "/fast"}, str(tmp_path), uid=1000)
    assert chosen.dirs == (FreezeDir("/fast"),)


def test_empty_freeze_dir_variable_is_unset(tmp_path):
    (tmp_path / ".freeze_dirs").write_text("/scratch/a\n")
    chosen = freeze_dirs_for(SYSTEM, {"FREEZE_DIR": ""}, str(tmp_path), uid=1000)
    assert chosen.dirs == (FreezeDir("/scratch/a"),)


def test_users_file_without_directories_falls_back_to_the_system(tmp_path):
    (tmp_path / ".freeze_dirs").write_text("# nothing yet\n")
    assert freeze_dirs_for(SYSTEM, {}, str(tmp_path), uid=1000).dirs == SYSTEM.dirs
    assert freeze_dirs_for(SYSTEM, {}, None, uid=1000).dirs == SYSTEM.dirs


def test_relative_freeze_dir_variable_is_an_error():
    with pytest.raises(ConfigError) as info:
        freeze_dirs_for(SYSTEM, {"FREEZE_DIR": "scratch"}, None, uid=1000)
    assert info.value.path == "FREEZE_DIR"
    assert "must start with '/'" in str(info.value)


def test_malformed_users_file_is_an_error(tmp_path):
    (tmp_path / ".freeze_dirs").write_text("/ok\nscratch\n")
    with pytest.raises(ConfigError) as info:
        freeze_dirs_for(SYSTEM, {}, str(tmp_path), uid=1000)
    assert info.value.path == str(tmp_path / ".freeze_dirs") and info.value.line == 2


def test_users_file_that_is_a_directory_is_an_error(tmp_path):
    (tmp_path / ".freeze_dirs").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        freeze_dirs_for(SYSTEM, {}, str(tmp_path), uid=1000)


# --- which one ------------------------------------------------------------------------


def test_weights_share_images_as_in_the_manual(tmp_path):
    # freeze.conf's example: weights 2, 0.5, 2.5 take 4, 1 and 5 of every 10 images.
    roomy(tmp_path)
    candidates = dirs(tmp_path, 2, 0.5, 2.5)
    rng = random.Random(1)
    counts = collections.Counter(choose_freeze_dir(candidates, MiB, rng).path for _ in range(20000))
    shares = [counts[d.path] / 20000 for d in candidates]
    assert shares == pytest.approx([0.4, 0.1, 0.5], abs=0.02)


def test_the_same_seed_gives_the_same_choices(tmp_path):
    roomy(tmp_path)
    candidates = dirs(tmp_path, 1, 1, 1, 1)
    first = [choose_freeze_dir(candidates, 0, random.Random(7)).path for _ in range(3)]
    again = [choose_freeze_dir(candidates, 0, random.Random(7)).path for _ in range(3)]
    assert first == again


def test_order_lists_every_fitting_directory_once_weight_0_last_as_listed(tmp_path):
    roomy(tmp_path)
    candidates = dirs(tmp_path, 0, 3, 0, 1, 2)
    for seed in range(50):
        order = freeze_dir_order(candidates, MiB, random.Random(seed))
        assert sorted(d.path for d in order[:3]) == sorted(d.path for d in candidates if d.weight)
        assert order[3:] == [candidates[0], candidates[2]]


def test_weight_0_is_never_chosen_while_a_weighted_directory_has_room(tmp_path):
    roomy(tmp_path)
    candidates = dirs(tmp_path, 0, 0.001)
    rng = random.Random(3)
    assert {choose_freeze_dir(candidates, MiB, rng) for _ in range(500)} == {candidates[1]}


def test_weight_0_is_the_last_resort_when_the_others_are_full(tmp_path, small_tmpfs):
    roomy(tmp_path)
    last_resort = dirs(tmp_path, 0)[0]
    small = FreezeDir(str(small_tmpfs), 5.0)
    rng = random.Random(5)
    # Half a MiB fits the 1 MiB tmpfs: the weighted directory is chosen.
    assert {choose_freeze_dir([last_resort, small], MiB // 2, rng) for _ in range(50)} == {small}
    # Two MiB do not: only then the weight-0 directory.
    assert {choose_freeze_dir([last_resort, small], 2 * MiB, rng) for _ in range(50)} == {last_resort}
    assert freeze_dir_order([last_resort, small], 2 * MiB, rng) == [last_resort]


def test_a_directory_fills_up(tmp_path, small_tmpfs):
    roomy(tmp_path)
    other = dirs(tmp_path, 1)[0]
    small = FreezeDir(str(small_tmpfs), 1000.0)
    need = 600 * 1024
    assert choose_freeze_dir([small], need) == small
    # A first image takes 600 KiB of the 1 MiB: a second of the same size no longer fits.
    (small_tmpfs / "freeze.n.1.0").write_bytes(b"\xa5" * need)
    assert available_bytes(str(small_tmpfs)) < need
    assert {choose_freeze_dir([small, other], need, random.Random(seed)) for seed in range(30)} == {other}
    with pytest.raises(NoSpaceToFreeze):
        choose_freeze_dir([small], need)


def test_nothing_fits_is_the_manuals_message(small_tmpfs):
    with pytest.raises(NoSpaceToFreeze) as info:
        choose_freeze_dir([FreezeDir(str(small_tmpfs), 1.0), FreezeDir(str(small_tmpfs), 0.0)], 2 * MiB)
    assert isinstance(info.value, MosixError)
    assert str(info.value) == "No space to freeze"


def test_size_is_compared_with_the_space_available(small_tmpfs):
    space = available_bytes(str(small_tmpfs))
    assert space == MiB
    target = FreezeDir(str(small_tmpfs))
    assert choose_freeze_dir([target], space) == target
    with pytest.raises(NoSpaceToFreeze):
        choose_freeze_dir([target], space + 1)


def test_inaccessible_candidates_count_as_full(tmp_path):
    roomy(tmp_path)
    (tmp_path / "a-file").write_bytes(b"")
    missing = FreezeDir(str(tmp_path / "missing"), 100.0)
    a_file = FreezeDir(str(tmp_path / "a-file"), 100.0)
    assert available_bytes(missing.path) is None and available_bytes(a_file.path) is None
    real = dirs(tmp_path, 0)[0]
    assert freeze_dir_order([missing, a_file, real], 1) == [real]
    with pytest.raises(NoSpaceToFreeze):
        choose_freeze_dir([missing, a_file], 0)
    with pytest.raises(NoSpaceToFreeze):
        choose_freeze_dir([], 0)


# --- image file names ------------------------------------------------------------------


def test_freeze_file_name():
    assert freeze_file_name("/freeze", node="n1", pid=1234, serial=0) == "/freeze/freeze.n1.1234.0"
    assert freeze_file_name("/freeze/", node="10.0.0.1", pid=1, serial=7) == "/freeze/freeze.10.0.0.1.1.7"
    names = {
        freeze_file_name("/f", node=node, pid=pid, serial=serial)
        for node in ("a", "b")
        for pid in (1, 2)
        for serial in (0, 1)
    }
    assert len(names) == 8


@pytest.mark.parametrize(
    ("node", "pid", "serial"), [("", 1, 0), ("a/b", 1, 0), ("a\0", 1, 0), ("n", 0, 0), ("n", 1, -1)]
)
def test_freeze_file_name_rejects_bad_parts(node, pid, serial):
    with pytest.raises(MosixError):
        freeze_file_name("/freeze", node=node, pid=pid, serial=serial)


def test_freeze_file_name_is_creatable(tmp_path):
    path = freeze_file_name(str(tmp_path), node=os.uname().nodename, pid=os.getpid(), serial=3)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    assert os.path.dirname(path) == str(tmp_path)
