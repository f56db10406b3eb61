"""Python's os.open adds O_CLOEXEC to every open: the mosix(7) interface must still answer
its write forms (1|O_CREAT, 2|O_CREAT), which return values, never descriptors."""

from __future__ import annotations

import json

import pytest

from tests.helpers.programs import run

pytestmark = pytest.mark.linux

PROGRAM = """\
import json, os
written = os.open("/proc/self/lock", os.O_WRONLY | os.O_CREAT, 1)
previous = os.open("/proc/self/decayrate", os.O_RDWR | os.O_CREAT, 9000)
now = os.open("/proc/self/decayrate", os.O_RDWR | os.O_CREAT, 9000)
print(json.dumps([written, previous, now]))
"""


def test_os_open_with_its_o_cloexec_reaches_the_mosix_interface(mosrun_env):
    done = run(["mosrun", "python3", "-c", PROGRAM], mosrun_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 9976, 9000]
