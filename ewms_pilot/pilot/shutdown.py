"""Why a pilot stops, and the one controller that turns every stop cause into one deadline.

Every cause (signal, stop-on-error, broker lost, fatal error, empty queue, lifetime)
is a `StopRequest`. The `Shutdown` controller keeps the request that decides
the exit code and ONE deadline: `now + grace` at the first request that
carries a grace; a later request can only move it earlier (a second signal:
now). Running tasks get until the deadline; what must still happen after it
(stopping tasks, warm workers, teardown, closing connections, chirp flush)
shares `CLEANUP_SLACK` seconds more, so an evicted pilot exits within
grace + 5 s whatever step it was in when the signal came.

A pilot with a lifetime has a `ceiling` (the lifetime's end less the pilot's own
ending): every stop's deadline respects it, whatever caused the stop, so a
drain after a stop-on-error or a long-grace signal never runs past the walltime.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import enum
import logging
import time
from collections.abc import Callable

from ..exitcodes import ExitCode

LOGGER = logging.getLogger("ewms_pilot")

#: seconds after the deadline for the clean-up steps together (the promise is grace + 5 s)
CLEANUP_SLACK = 4.0


class StopCause(str, enum.Enum):
    """The kinds of ending; each maps to one exit code."""

    QUEUE_EMPTY = "queue-empty"  # normal end
    LIFETIME = "lifetime"  # normal end: no task fits in the time left (resources/lifetime.py)
    TASK_ERRORS = "task-errors"  # stop-on-error tripped
    SIGNAL = "signal"  # eviction / Ctrl-C
    BROKER = "broker"  # connection lost past its deadline
    INIT_FAILED = "init-failed"
    CONFIG = "config"  # a setting found invalid only when used (e.g. the local queue's path)
    FATAL = "fatal"  # unexpected exception
    RUNTIME = "runtime"  # container runtime / image unusable on this node
    DISK_FULL = "disk-full"  # below EWMS_PILOT_MIN_FREE_DISK, and no running task to free any

    @property
    def clean(self) -> bool:
        """A normal end (chirp `Done`, nothing raised for it): the causes `EXIT_CODES` maps to 0."""
        return EXIT_CODES[self] == ExitCode.OK


EXIT_CODES = {
    StopCause.QUEUE_EMPTY: ExitCode.OK,
    StopCause.LIFETIME: ExitCode.OK,
    StopCause.TASK_ERRORS: ExitCode.TASK_FAILED,
    StopCause.SIGNAL: ExitCode.EVICTED,
    StopCause.BROKER: ExitCode.BROKER,
    StopCause.INIT_FAILED: ExitCode.INIT_FAILED,
    StopCause.CONFIG: ExitCode.CONFIG,
    StopCause.FATAL: ExitCode.INTERNAL,
    StopCause.RUNTIME: ExitCode.RUNTIME_UNAVAILABLE,
    StopCause.DISK_FULL: ExitCode.DISK_FULL,
}


@dc.dataclass(frozen=True)
class StopRequest:
    """A request to stop: running tasks get `grace` seconds (None = wait for them all)."""

    cause: StopCause
    reason: str
    grace: float | None = None

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.cause]


class Shutdown:
    """Merges stop requests into the one that decides the exit, and one deadline.

    Not tied to an event loop at construction; `changed` wakes every waiter
    whenever the request or the deadline changes, so a step waiting on it
    re-reads `remaining()` (a later signal hurries whatever is going on).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, ceiling: float | None = None) -> None:
        self.clock = clock
        self.ceiling = ceiling  # on `clock`; no deadline is later (None: no lifetime)
        self.request: StopRequest | None = None
        self.deadline: float | None = None  # monotonic; None: no time limit (yet)
        self.signals = 0
        self._changed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None

    # -- events, created lazily inside the running loop --------------------------

    @property
    def stopping(self) -> asyncio.Event:
        """Set from the first request on."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
            if self.request is not None:
                self._stopping.set()
        return self._stopping

    def _wake(self) -> None:
        self.stopping.set()
        if self._changed is not None:
            self._changed.set()

    # -- requests -----------------------------------------------------------------

    def request_stop(self, request: StopRequest) -> None:
        """Record a stop cause; the deadline can only move earlier, and is never past the ceiling."""
        now = self.clock()
        if request.cause == StopCause.SIGNAL:
            self.signals += 1
        if self.request is None:
            self.request = request
            LOGGER.warning(f"stopping: {request.reason}")
        elif request.cause == StopCause.SIGNAL and self.request.cause != StopCause.SIGNAL:
            # an eviction overrides what was going on: the exit says evicted
            LOGGER.warning(f"stopping: {request.reason} (while {self.request.reason})")
            self.request = request
        elif request.cause == StopCause.SIGNAL:
            LOGGER.warning(f"second stop signal ({request.reason}): stopping everything now")
        candidate = None
        if request.cause == StopCause.SIGNAL and self.signals > 1:
            candidate = now
        elif request.grace is not None:
            candidate = now + request.grace
        if self.ceiling is not None:  # "wait for them all" too: at most until the lifetime ends
            candidate = self.ceiling if candidate is None else min(candidate, self.ceiling)
        if candidate is not None and (self.deadline is None or candidate < self.deadline):
            self.deadline = candidate
        self._wake()

    @property
    def cause(self) -> StopCause | None:
        return None if self.request is None else self.request.cause

    @property
    def evicted(self) -> bool:
        return self.cause == StopCause.SIGNAL

    @property
    def hurried(self) -> bool:
        """The deadline has passed: whatever runs now is clean-up."""
        return self.deadline is not None and self.clock() >= self.deadline

    def remaining(self) -> float | None:
        """Seconds until the deadline (0 once passed); None while there is no deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock())

    def cleanup_budget(self, wanted: float) -> float:
        """Seconds a clean-up step may take: `wanted`, cut to what is left of deadline + slack."""
        if self.deadline is None:
            return wanted
        return max(0.0, min(wanted, self.deadline + CLEANUP_SLACK - self.clock()))

    async def wait_changed(self, timeout: float | None) -> None:
        """Sleep up to `timeout` seconds, waking early when a request changes the deadline."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def until_deadline(self) -> None:
        """Return once the deadline has passed (re-reading it whenever it moves)."""
        while True:
            left = self.remaining()
            if left is not None and left <= 0:
                return
            await self.wait_changed(left)
