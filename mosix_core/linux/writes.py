"""Which pages a running process writes: userfaultfd write-protection in its
asynchronous mode, read back with the ``PAGEMAP_SCAN`` ioctl (Linux >= 6.7).

This is what a pre-copied migration needs: memory is sent while the process runs,
then only what it wrote meanwhile. Soft-dirty bits would do too, but kernels built
without ``CONFIG_MEM_SOFT_DIRTY`` (this one) lack them; asynchronous write-protect
costs the process one minor fault per page it writes, resolved in the kernel —
nothing waits on us.

A userfaultfd belongs to the memory of the process that made it, so the process
makes it (an injected call); we take a duplicate with ``pidfd_getfd`` and close
theirs. A caller chooses what to track (capture tracks anonymous memory) and
sends the rest again. Closing our descriptor ends the tracking (the kernel then
unprotects everything).
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from mosix_core.errors import TraceError
from mosix_core.linux import inject, memory

SYS_USERFAULTFD = 323
SYS_CLOSE = 3
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PM_SCAN_WP_MATCHING = 1
PM_SCAN_CHECK_WPASYNC = 2
PAGE_IS_WPALLOWED = 1
PAGE_IS_WRITTEN = 2
REGIONS = 4096  # page runs asked for per scan


class WritesUntracked(TraceError):
    """The kernel cannot track this process's writes (too old, or refused)."""


class _Api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _Register(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class _Scan(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


class WriteTracker:
    """The pages of ``pid``'s anonymous memory written since :meth:`protect`."""

    def __init__(self, pid: int, uffd: int) -> None:
        self.pid = pid
        self.uffd = uffd
        self._regions = (_Region * REGIONS)()

    @classmethod
    def start(cls, pid: int, injector: inject.Injector) -> WriteTracker:
        """Have stopped process ``pid`` make a userfaultfd (``injector`` runs the call)
        and take it over. Raises :class:`WritesUntracked`."""
        theirs = injector.call(SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
        if theirs < 0:
            raise WritesUntracked(f"userfaultfd: {os.strerror(-theirs)}", -theirs)
        try:
            pidfd = os.pidfd_open(pid)
            try:
                ours = memory.borrow_fd(pidfd, theirs)
            finally:
                os.close(pidfd)
        finally:
            injector.call(SYS_CLOSE, theirs)
        try:
            api = _Api(UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0)
            fcntl.ioctl(ours, UFFDIO_API, api)
            return cls(pid, ours)
        except OSError as err:
            os.close(ours)
            raise WritesUntracked(f"userfaultfd write-protection: {err.strerror}", err.errno) from None

    def track(self, start: int, end: int) -> bool:
        """Track writes to the anonymous mapping ``[start, end)``; False if the kernel
        will not (not anonymous memory, or gone)."""
        try:
            fcntl.ioctl(self.uffd, UFFDIO_REGISTER, _Register(start, end - start, UFFDIO_REGISTER_MODE_WP, 0))
            return True
        except OSError:
            return False

    def protect(self, start: int, end: int) -> None:
        """Forget the writes so far in ``[start, end)``: they count again from now.
        Only tracked memory is protected; a part the process has just mapped anew is
        left alone (and is not :meth:`tracked`)."""
        self._scan(start, end, PM_SCAN_WP_MATCHING, PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED)

    def written(self, start: int, end: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` runs of ``[start, end)`` written since protected."""
        return self._scan(start, end, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN)

    def tracked(self, start: int, end: int) -> bool:
        """Whether all of ``[start, end)`` is still tracked (not unmapped and mapped
        again meanwhile, which would have lost the record of its writes)."""
        runs = self._scan(start, end, 0, PAGE_IS_WPALLOWED)
        return runs == [(start, end)]

    def _scan(self, start: int, end: int, flags: int, category: int) -> list[tuple[int, int]]:
        # the pagemap is opened afresh: after an exec it shows the new memory, which
        # is not tracked, where a descriptor kept from before would show the old
        try:
            pagemap = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise WritesUntracked(f"process {self.pid}: {err.strerror}", err.errno) from None
        try:
            return self._scan_in(pagemap, start, end, flags, category)
        finally:
            os.close(pagemap)

    def _scan_in(self, pagemap: int, start: int, end: int, flags: int, category: int) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        at = start
        while at < end:
            scan = _Scan(
                ctypes.sizeof(_Scan),
                flags,
                at,
                end,
                0,
                ctypes.addressof(self._regions),
                REGIONS,
                0,
                0,
                category,
                0,
                category,
            )
            try:
                count = fcntl.ioctl(pagemap, PAGEMAP_SCAN, scan)
            except OSError as err:
                raise WritesUntracked(f"PAGEMAP_SCAN({self.pid}): {err.strerror}", err.errno) from None
            for region in self._regions[:count]:
                if runs and runs[-1][1] == region.start:
                    runs[-1] = (runs[-1][0], region.end)
                else:
                    runs.append((region.start, region.end))
            if scan.walk_end <= at:
                break
            at = scan.walk_end
        return runs

    def close(self) -> None:
        """Stop tracking (the kernel unprotects the memory)."""
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1
