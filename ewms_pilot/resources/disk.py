"""The free space where task dirs live: stop taking events below a minimum, and name a full disk.

A task that fills the disk fails every task beside it, and a pilot that keeps
taking events on a full disk fails them all. `DiskWatch` measures the data
dir's file system with one `statvfs` at most once per `CHECK_INTERVAL`, so the
scheduler may ask before every event. The `statvfs` runs in a daemon thread:
on a hung (NFS) data dir it never returns, and must not freeze the event loop
(signals included) nor, unlike the default executor, hold up the pilot's exit.
A reading unanswered after `STATVFS_TIMEOUT` counts as "no room known": no
event is taken (its task dir would hang too) until the file system answers;
it is never called full (no exit 8 for a mount that does not answer). `disk_full` turns a write that failed for space (the task's
own, or the pilot's writing its infile or its output) into `DiskFullError`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..tasks.errors import DiskFullError, extract_detail, extract_error_line
from .sizing import human

LOGGER = logging.getLogger("ewms_pilot")

CHECK_INTERVAL = 1.0  # s: the longest a free-space reading is reused
STATVFS_TIMEOUT = 5.0  # s: a reading not answered by then is "no room known"
#: the default minimum: this much, or less on a small slot (`DEFAULT_SHARE` of its disk)
DEFAULT_MIN_FREE = 2**30
DEFAULT_SHARE = 0.10
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b")


def default_min_free(slot_disk: int | None) -> int:
    """min(1 GiB, 10% of the slot's disk): a small slot is not declared full while mostly empty."""
    if slot_disk is None:
        return DEFAULT_MIN_FREE
    return max(1, min(DEFAULT_MIN_FREE, int(slot_disk * DEFAULT_SHARE)))


class DiskWatch:
    """Whether the free space under `path` is below `minimum` bytes (None: never)."""

    def __init__(self, path: Path, minimum: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.minimum = minimum
        self.clock = clock
        self._read_at = -CHECK_INTERVAL
        self._short: str | None = None
        self._pending: asyncio.Future[int | None] | None = None  # a reading not answered yet
        self._pending_since = 0.0
        self.unanswered = False  # the last reading timed out: nothing known, not full

    async def short(self, *, fresh: bool = False) -> str | None:
        """Why events must wait (free space below the minimum, or no answer), None when there is room."""
        if self.minimum is None:
            return None
        now = self.clock()
        if fresh or now - self._read_at >= CHECK_INTERVAL or self.unanswered:
            self._read_at = now
            answered, free = await self._free()
            if answered:
                self._answered()
                self._update(free)
            elif not self.unanswered:
                self.unanswered = True
                self._short = f"free disk in {self.path} unknown: statvfs has not answered for {STATVFS_TIMEOUT:g}s"
                LOGGER.warning(f"{self._short}: no more events taken until it does")
        return self._short

    def _answered(self) -> None:
        if self.unanswered:
            self.unanswered, self._short = False, None
            LOGGER.warning(f"{self.path} answers again")

    async def _free(self) -> tuple[bool, int | None]:
        """(answered, free bytes; None: not measurable); not answered once `STATVFS_TIMEOUT` old."""
        if self._pending is None:
            self._pending, self._pending_since = _read_in_thread(self.path), self.clock()
        left = STATVFS_TIMEOUT - (self.clock() - self._pending_since)
        try:
            free = await asyncio.wait_for(asyncio.shield(self._pending), max(left, 0.0))
        except TimeoutError:
            return False, None
        self._pending = None
        return True, free

    def _update(self, free: int | None) -> None:
        assert self.minimum is not None
        was = self._short
        if free is None or free >= self.minimum:
            self._short = None
            if was is not None:
                LOGGER.warning(f"free disk in {self.path} back to {human(free or 0)}: taking events again")
            return
        self._short = (
            f"free disk in {self.path} is {human(free)}, below EWMS_PILOT_MIN_FREE_DISK={human(self.minimum)}"
        )
        if was is None:
            LOGGER.warning(f"{self._short}: no more events taken until running tasks free some")



def _statvfs_free(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None  # the dir is gone or unreadable: not a disk measurement
    return st.f_bavail * st.f_frsize


def _read_in_thread(path: Path) -> asyncio.Future[int | None]:
    """`_statvfs_free(path)` in a daemon thread (one that never returns does not hold up the exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int | None] = loop.create_future()

    def answer(free: int | None) -> None:
        if not future.done():
            future.set_result(free)

    def read() -> None:
        free = _statvfs_free(path)
        try:
            loop.call_soon_threadsafe(answer, free)
        except RuntimeError:  # the loop closed meanwhile
            pass

    threading.Thread(target=read, name="ewms-pilot-statvfs", daemon=True).start()
    return future


def disk_full_from_os_error(e: OSError, what: str) -> DiskFullError | None:
    """The failure for a pilot-side write (`what`) that ran out of space, None for any other error."""
    if e.errno not in FULL_ERRNOS:
        return None
    return DiskFullError(f"disk full {what}: {e.strerror}")


def disk_full_from_exit(exit_code: int | None, stderr_tail: str, *, apptainer: bool = False) -> DiskFullError | None:
    """The failure for a task whose last error line says the disk was full, None otherwise."""
    if exit_code in (0, None):
        return None
    line = extract_error_line(stderr_tail, apptainer=apptainer)
    if not _NO_SPACE.search(line):
        return None
    return DiskFullError(
        f"disk full: exited with code {exit_code}: {line}",
        exit_code=exit_code,
        stderr_line=line,
        detail=extract_detail(stderr_tail, apptainer=apptainer),
    )
