"""Fixtures shared by every test directory (defined in tests/helpers/fixtures.py)."""

from tests.helpers.fixtures import (  # noqa: F401
    checkpoint,
    checkpoint_image,
    local_cluster,
    mosix_etc,
    small_tmpfs,
    spawn,
)
