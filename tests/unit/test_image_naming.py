"""Checkpoint file naming (mosrun(1) CHECKPOINTS) and writing checkpoint files."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
import traceback

import pytest

from mosix_core.errors import MosixError
from mosix_core.image.naming import (
    MAX_LIMIT,
    NO_WRITE_ACCESS,
    CheckpointFileError,
    CheckpointNaming,
    CheckpointSettingError,
    can_write_in,
    split_name,
    write_atomically,
)

NOBODY = 65534


def names(naming: CheckpointNaming, count: int, cwd: str = "/w") -> list[str]:
    """The next ``count`` checkpoint paths, advancing after each as a checkpoint would."""
    paths = []
    for _ in range(count):
        paths.append(naming.next_path(cwd))
        naming.advance()
    return paths


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def as_unprivileged(function) -> None:
    """Run ``function`` as an ordinary user: as ourselves if we are one, else in a
    child that became nobody (root would pass every permission check)."""
    if os.geteuid() != 0:
        function()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        status = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            function()
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            status = 1
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


@pytest.fixture
def public_dir():
    """A directory an unprivileged child can reach (pytest's tmp_path is root's 0700)."""
    path = tempfile.mkdtemp(prefix="mosix-naming-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# --- names ---------------------------------------------------------------------------


def test_default_name_is_ckpt_pid_numbered_from_1():
    naming = CheckpointNaming.for_process(4321)
    assert names(naming, 3) == ["/w/ckpt.4321.1", "/w/ckpt.4321.2", "/w/ckpt.4321.3"]


def test_name_without_extension_gets_one_from_1():
    naming = CheckpointNaming.for_process(7, "mysave")
    assert naming.next_version() == 1
    assert names(naming, 3) == ["/w/mysave.1", "/w/mysave.2", "/w/mysave.3"]


def test_numeric_extension_starts_the_numbering():
    naming = CheckpointNaming.for_process(7, "save.4")
    assert naming.next_version() == 4
    assert names(naming, 3) == ["/w/save.4", "/w/save.5", "/w/save.6"]


def test_manual_recycling_example():
    # mosrun(1): "-Csave.4 -N3 ... save.4, save.5, save.6, save.4, save.5, save.6, save.4"
    naming = CheckpointNaming.for_process(7, "save.4", limit=3)
    expected = ["save.4", "save.5", "save.6", "save.4", "save.5", "save.6", "save.4"]
    assert names(naming, 7) == [f"/w/{name}" for name in expected]


def test_limit_0_never_recycles():
    naming = CheckpointNaming.for_process(7, "s", limit=0)
    assert names(naming, 50)[-1] == "/w/s.50"


def test_limit_1_rewrites_the_same_file():
    naming = CheckpointNaming.for_process(7, "s.9", limit=1)
    assert names(naming, 3) == ["/w/s.9"] * 3


def test_version_is_the_number_in_the_file_name():
    naming = CheckpointNaming.for_process(7, "run.10", limit=2)
    for _ in range(5):
        version = naming.next_version()
        assert naming.next_path("/w").endswith(f".{version}")
        naming.advance()


def test_relative_names_follow_the_working_directory_absolute_ones_do_not():
    relative = CheckpointNaming.for_process(7, "out/save")
    assert relative.next_path("/home/u") == "/home/u/out/save.1"
    assert relative.next_path("/elsewhere") == "/elsewhere/out/save.1"
    assert relative.directory("/home/u") == "/home/u/out"
    absolute = CheckpointNaming.for_process(7, "/scratch/save")
    assert absolute.next_path("/home/u") == "/scratch/save.1"
    assert absolute.directory("/home/u") == "/scratch"
    assert CheckpointNaming.for_process(7).directory("/") == "/"


def test_extension_rules():
    assert split_name("save.4") == ("save", 4, 0)
    assert split_name("mysave") == ("mysave", 1, 0)
    assert split_name("a.b.17") == ("a.b", 17, 0)
    assert split_name("save.0") == ("save", 0, 0)
    assert split_name("save.04") == ("save", 4, 2)
    # not numeric extensions
    assert split_name(".5") == (".5", 1, 0)
    assert split_name("dir/.5") == ("dir/.5", 1, 0)
    assert split_name("save.") == ("save.", 1, 0)
    assert split_name("save.4a") == ("save.4a", 1, 0)
    assert split_name("save.٤") == ("save.٤", 1, 0)  # a non-ASCII digit
    # only the last component counts
    assert split_name("run.3/save") == ("run.3/save", 1, 0)
    assert split_name("/tmp/run.3/save.8") == ("/tmp/run.3/save", 8, 0)


def test_zero_padding_is_kept():
    naming = CheckpointNaming.for_process(7, "save.08")
    assert names(naming, 3) == ["/w/save.08", "/w/save.09", "/w/save.10"]
    naming = CheckpointNaming.for_process(7, "save.98")
    assert names(naming, 3) == ["/w/save.98", "/w/save.99", "/w/save.100"]


@pytest.mark.parametrize("name", ["", "dir/", "/", ".", "..", "dir/..", "a\0b", "save.2147483648"])
def test_unusable_names(name):
    with pytest.raises(CheckpointSettingError) as info:
        CheckpointNaming.for_process(7, name)
    assert isinstance(info.value, MosixError)


def test_largest_extension_is_accepted():
    naming = CheckpointNaming.for_process(7, "s.2147483647")
    assert naming.next_version() == 2147483647


def test_unlimited_numbering_wraps_before_leaving_a_c_int():
    naming = CheckpointNaming.for_process(7, "s.2147483646")
    assert names(naming, 3) == ["/w/s.2147483646", "/w/s.2147483647", "/w/s.2147483646"]


@pytest.mark.parametrize("limit", [-1, MAX_LIMIT + 1])
def test_limit_out_of_range(limit):
    with pytest.raises(CheckpointSettingError, match="between 0 and 10000000"):
        CheckpointNaming.for_process(7, limit=limit)
    naming = CheckpointNaming.for_process(7)
    with pytest.raises(CheckpointSettingError):
        naming.set_limit(limit)
    assert naming.limit == 0
    CheckpointNaming.for_process(7, limit=MAX_LIMIT)


def test_set_base_restarts_numbering_from_the_new_extension_and_keeps_the_limit():
    naming = CheckpointNaming.for_process(7, limit=2)
    assert names(naming, 3) == ["/w/ckpt.7.1", "/w/ckpt.7.2", "/w/ckpt.7.1"]
    naming.set_base("phase2.20")
    assert naming.next_version() == 20
    assert names(naming, 3) == ["/w/phase2.20", "/w/phase2.21", "/w/phase2.20"]
    naming.set_base("final")
    assert names(naming, 1) == ["/w/final.1"]


def test_bad_set_base_changes_nothing():
    naming = CheckpointNaming.for_process(7, "s.3")
    naming.advance()
    with pytest.raises(CheckpointSettingError):
        naming.set_base("")
    assert naming.next_path("/w") == "/w/s.4"


def test_set_limit_keeps_the_next_version_when_it_is_in_range():
    naming = CheckpointNaming.for_process(7, "s.4")
    names(naming, 1)
    naming.set_limit(3)
    assert names(naming, 4) == ["/w/s.5", "/w/s.6", "/w/s.4", "/w/s.5"]


def test_lowered_limit_recycles_at_once_when_the_next_version_is_beyond_it():
    naming = CheckpointNaming.for_process(7, "s.4")
    names(naming, 5)  # s.4 .. s.8 taken; s.9 next
    naming.set_limit(2)
    assert names(naming, 3) == ["/w/s.4", "/w/s.5", "/w/s.4"]
    naming.set_limit(0)
    assert names(naming, 3) == ["/w/s.5", "/w/s.6", "/w/s.7"]


# --- writing ---------------------------------------------------------------------------


def test_file_has_no_permissions_while_written_and_0400_when_complete(tmp_path):
    path = str(tmp_path / "save.1")
    seen = []

    def produce(file):
        file.write(b"image bytes")
        file.flush()
        seen.append(mode(path))
        return "result"

    assert write_atomically(path, produce) == "result"
    assert seen == [0]
    assert mode(path) == 0o400
    assert os.stat(path).st_uid == os.geteuid()
    with open(path, "rb") as file:
        assert file.read() == b"image bytes"


def test_mode_ignores_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = str(tmp_path / "save.1")
        write_atomically(path, lambda file: file.write(b"x"))
        assert mode(path) == 0o400
    finally:
        os.umask(old)


class Boom(Exception):
    pass


@pytest.mark.parametrize("exception", [Boom("produce failed"), KeyboardInterrupt()])
def test_failure_inside_produce_leaves_no_file(tmp_path, exception):
    path = tmp_path / "save.1"

    def produce(file):
        file.write(b"half an image" * 1000)
        file.flush()
        assert path.exists()
        raise exception

    with pytest.raises(type(exception)) as info:
        write_atomically(str(path), produce)
    assert info.value is exception  # produce's own exception, unchanged
    assert list(tmp_path.iterdir()) == []


def test_recycled_version_is_replaced_by_its_owner(public_dir):
    # The old version is 0400: replacing it must unlink, not open it for writing
    # (which its owner, not being root, may not).
    directory = os.path.join(public_dir, "ckpt")
    os.mkdir(directory)
    if os.geteuid() == 0:
        os.chown(directory, NOBODY, NOBODY)
    path = os.path.join(directory, "save.4")

    def recycle_twice():
        write_atomically(path, lambda file: file.write(b"first"))
        assert mode(path) == 0o400
        with pytest.raises(PermissionError):
            open(path, "wb")
        write_atomically(path, lambda file: file.write(b"second"))
        assert mode(path) == 0o400
        assert os.stat(path).st_uid == os.geteuid()
        with open(path, "rb") as file:
            assert file.read() == b"second"
        assert os.listdir(directory) == ["save.4"]

    as_unprivileged(recycle_twice)


def test_failed_recycling_leaves_neither_old_nor_partial_file(tmp_path):
    # As the manual warns for -N1: a failure while a version is recycled can leave
    # no valid file of that version.
    path = tmp_path / "save.4"
    write_atomically(str(path), lambda file: file.write(b"old"))

    def produce(file):
        raise Boom()

    with pytest.raises(Boom):
        write_atomically(str(path), produce)
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_in_the_way_is_replaced_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = tmp_path / "save.1"
    link.symlink_to(target)
    write_atomically(str(link), lambda file: file.write(b"image"))
    assert not link.is_symlink()
    assert link.read_bytes() == b"image"
    assert target.read_bytes() == b"keep me"


def test_a_directory_in_the_way_is_an_error(tmp_path):
    (tmp_path / "save.1").mkdir()
    with pytest.raises(CheckpointFileError) as info:
        write_atomically(str(tmp_path / "save.1"), lambda file: file.write(b"x"))
    assert info.value.errno in (errno.EISDIR, errno.EPERM)
    assert str(tmp_path / "save.1") in str(info.value)


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(CheckpointFileError) as info:
        write_atomically(str(tmp_path / "no" / "save.1"), lambda file: file.write(b"x"))
    assert info.value.errno == errno.ENOENT
    assert "cannot create it" in str(info.value)


def test_out_of_space_while_producing_leaves_no_file(small_tmpfs):
    path = small_tmpfs / "save.1"

    def produce(file):
        file.write(b"\xa5" * (2 << 20))  # twice the file system

    with pytest.raises(OSError) as info:
        write_atomically(str(path), produce)
    assert info.value.errno == errno.ENOSPC
    assert list(small_tmpfs.iterdir()) == []


def test_out_of_space_when_finishing_is_a_checkpoint_error_and_leaves_no_file(small_tmpfs):
    fd = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC
    path = small_tmpfs / "save.1"

    def produce(file):
        # Small enough to stay in the write buffer: the failure comes at flush.
        file.write(b"\xa5" * 100)

    with pytest.raises(CheckpointFileError) as info:
        write_atomically(str(path), produce)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


# --- checkpoint directory ----------------------------------------------------------------


def test_can_write_in(tmp_path):
    assert can_write_in(str(tmp_path))
    assert not can_write_in(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    assert not can_write_in(str(tmp_path / "file"))
    assert NO_WRITE_ACCESS == "WARNING: no write-access in checkpoint directory!"


def test_can_write_in_follows_permissions(public_dir):
    closed = os.path.join(public_dir, "closed")
    os.mkdir(closed)
    # root's 0755 directory for nobody, or our own 0555 one for an ordinary user
    os.chmod(closed, 0o755 if os.geteuid() == 0 else 0o555)
    opened = os.path.join(public_dir, "open")
    os.mkdir(opened)
    os.chmod(opened, 0o777)

    def check():
        assert not can_write_in(str(closed))
        assert can_write_in(str(opened))
        naming = CheckpointNaming.for_process(7, "save")
        assert not can_write_in(naming.directory(closed))
        assert can_write_in(naming.directory(opened))

    as_unprivileged(check)


def test_can_write_in_a_read_only_file_system_is_false_even_for_root(small_tmpfs):
    assert can_write_in(str(small_tmpfs))
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    assert not can_write_in(str(small_tmpfs))
