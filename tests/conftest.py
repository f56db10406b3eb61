"""Fixtures shared by every test directory (defined in tests/helpers/fixtures.py)."""

from tests.helpers.fixtures import local_cluster, mosix_etc, small_tmpfs, spawn  # noqa: F401
