"""The home side of a migrated process judges each call the guest sends by mosrun's
own rules: ``seccomp.evaluate`` runs the very filter a process at home runs under,
and ``rules.home_verdict`` says what mosrun would decide of a call that stops."""

from __future__ import annotations

import errno

import pytest

from mosix_core.linux import seccomp
from mosix_core.linux.syscall_names import NUMBERS
from mosix_core.mosrun import rules

HOME = rules.build_filter()
NO_FILES = rules.CallContext(1, lambda fd: None)


@pytest.mark.parametrize(
    "name, args, stops",
    [
        ("getpid", (), False),
        ("read", (0, 0, 10), False),
        ("epoll_create1", (0o2000000,), True),
        ("ioctl", (1, 0x5401, 0), False),  # TCGETS runs natively
        ("ioctl", (1, 0x8914, 0), True),  # SIOCSIFFLAGS: the manual refuses it
        ("mmap", (0, 4096, 3, 0x22, -1, 0), False),  # anonymous private
        ("mmap", (0, 4096, 1, 0x01, 3, 0), True),  # MAP_SHARED
        ("mmap", (0, 4096, 1, 0x02, 3, 0), True),  # a file: a character device is refused
        ("prctl", (1, 9), False),  # PR_SET_PDEATHSIG
        ("prctl", (15, 0), True),  # PR_SET_NAME
        ("openat", (-100, 0, 0o2000000), False),  # O_CLOEXEC: never a /proc/self special
        ("openat", (-100, 0, 0), True),
    ],
)
def test_evaluate_runs_the_filter_mosrun_installs(name, args, stops):
    assert (seccomp.evaluate(HOME, NUMBERS[name], args) == seccomp.RET_TRACE) is stops


def test_other_architectures_and_x32_calls():
    # an i386 call stops, whatever its number (the supervisor judges it with its
    # architecture: see tests/security/test_guest_syscalls.py); x32 fails
    assert seccomp.evaluate(HOME, NUMBERS["epoll_create1"], (), arch=seccomp.AUDIT_ARCH_I386) == seccomp.RET_TRACE
    assert seccomp.evaluate(HOME, NUMBERS["getpid"], (), arch=seccomp.AUDIT_ARCH_I386) == seccomp.RET_TRACE
    assert seccomp.evaluate(HOME, NUMBERS["getpid"] | seccomp.X32_BIT, ()) == seccomp.RET_ERRNO | errno.ENOSYS


def test_home_verdicts_of_calls_a_guest_sends():
    assert rules.home_verdict(NUMBERS["getpid"], (), NO_FILES) is None
    verdict = rules.home_verdict(NUMBERS["sched_setaffinity"], (0, 8, 0), NO_FILES)
    assert rules.refuses(verdict)
    assert verdict.message == "system-call 'sched_setaffinity' not supported under MOSIX"
    shared = rules.home_verdict(NUMBERS["mmap"], (0, 4096, 1, 0x01, 3, 0), NO_FILES)
    assert rules.settle(shared, rules.MODE_SILENT) == (rules.Rewrite(3, 0x02), [], False)
    assert rules.settle(shared, rules.MODE_KILL)[1:] == (["Shared memory (MAP_SHARED) not supported under MOSIX"], True)


def test_settle_unwraps_warnings_and_unsupported_features():
    nofile = rules.Warn(rules.NOFILE_WARNING, rules.Return(0))
    assert rules.settle(nofile, rules.MODE_KILL) == (rules.Return(0), [rules.NOFILE_WARNING], False)
    unsupported = rules.unsupported_call("acct")
    assert rules.settle(unsupported, rules.MODE_WARN) == (rules.Fail(errno.ENOSYS), [unsupported.message], False)
    assert rules.settle(unsupported, rules.MODE_SILENT) == (rules.Fail(errno.ENOSYS), [], False)
    assert rules.settle(rules.ALLOW, rules.MODE_KILL) == (rules.ALLOW, [], False)
