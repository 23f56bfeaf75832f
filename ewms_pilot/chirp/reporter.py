"""`ChirpReporter`: the pilot's status reports to HTCondor, without ever blocking or failing it.

Design: every public method only puts a small item on a queue (non-blocking, safe
from the asyncio loop and from any thread). One daemon thread, started on first
use, takes the items in order and does the blocking Chirp socket I/O
(`sender.ChirpSender`). Status, error and end-reason changes are sent at once;
task counts wait in the backlog until `ratelimit_interval` has passed since the
last send (the thread wakes up for that itself), and ride along with any earlier
immediate send. A value equal to the one last sent for its attribute is not
sent again (HTCondor logs every `set_job_attr` as a change, even 11 -> 11). `close()` (sync, bounded by a timeout) or `aclose()` (async,
polls without blocking the loop) flushes the backlog and stops the thread.

Chirp being absent (not under HTCondor, connection refused, wrong cookie) is
logged once and turns the reporter into a no-op; it never raises into the pilot.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import logging
import queue
import threading
import time
import traceback

from ..config.model import ChirpDest, PilotConfig
from ..tasks.errors import TaskFailure
from .sender import ChirpSender, Value
from .status import ChirpAttr, PilotStatus

LOGGER = logging.getLogger(__name__)


@dc.dataclass(frozen=True)
class _Update:
    values: dict[ChirpAttr, Value]
    immediate: bool


@dc.dataclass(frozen=True)
class _Stop:
    """Flush the backlog, close the connection, end the thread."""


class ChirpReporter:
    """Reports the pilot's status, counts and errors as job-ad attributes or job-event-log lines."""

    def __init__(
        self,
        enabled: bool,
        dest: ChirpDest,
        ratelimit_interval: float,
        *,
        socket_timeout: float = 5.0,
    ) -> None:
        self._enabled = enabled
        self._dest = ChirpDest(dest)
        self._interval = max(0.0, float(ratelimit_interval))
        self._socket_timeout = socket_timeout
        self._queue: queue.SimpleQueue[_Update | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._sender: ChirpSender | None = None

    @classmethod
    def from_config(cls, config: PilotConfig) -> ChirpReporter:
        """The reporter `EWMS_PILOT_HTCHIRP*` asks for."""
        return cls(config.htchirp, config.htchirp_dest, config.htchirp_ratelimit_interval)

    # ------------------------------------------------------------------ reports

    def start(self) -> None:
        """Status `Started` and the start time, sent now."""
        self._submit(
            {
                ChirpAttr.HTChirpEWMSPilotStatus: PilotStatus.Started.value,
                ChirpAttr.HTChirpEWMSPilotStartedTimestamp: int(time.time()),
            },
            immediate=True,
        )

    def set_status(self, status: PilotStatus) -> None:
        """A new status, sent now."""
        self._submit({ChirpAttr.HTChirpEWMSPilotStatus: PilotStatus(status).value}, immediate=True)

    def set_counts(self, received: int, succeeded: int, failed: int, dead_lettered: int) -> None:
        """Task totals so far; rate-limited, only the latest values are sent."""
        self._submit(
            {
                ChirpAttr.HTChirpEWMSPilotTasksTotal: int(received),
                ChirpAttr.HTChirpEWMSPilotTasksSuccess: int(succeeded),
                ChirpAttr.HTChirpEWMSPilotTasksFailed: int(failed),
                ChirpAttr.HTChirpEWMSPilotTasksDeadLettered: int(dead_lettered),
            },
            immediate=False,
        )

    def set_task_progress(self, task_id: str, progress: float | None, status: str | None) -> None:
        """The latest `ewms_progress:`/`ewms_status:` a task printed; rate-limited like counts."""
        parts = [f"task {task_id}"]
        if progress is not None:
            parts.append(f"{progress:g}%")
        if status:
            parts.append(status)
        self._submit({ChirpAttr.HTChirpEWMSPilotTaskProgress: " ".join(parts)}, immediate=False)

    def set_error(self, exc: BaseException | str, traceback_text: str | None = None) -> None:
        """The error that ends (or hurts) the pilot, with its traceback, sent now.

        A failed task (`TaskFailure`) is reported by type and `reason`, which carry
        no per-task noise, so identical failures on many pilots read the same; its
        traceback is the task's own (`detail`), not the pilot's. For any other
        exception without `traceback_text`, its own traceback is used if it was raised.
        """
        if not self._active():
            return
        values: dict[ChirpAttr, Value] = {}
        if isinstance(exc, TaskFailure):
            values[ChirpAttr.HTChirpEWMSPilotError] = f"{type(exc).__name__}: {exc.reason}"
            traceback_text = traceback_text or exc.detail or None
        elif isinstance(exc, BaseException):
            values[ChirpAttr.HTChirpEWMSPilotError] = f"{type(exc).__name__}: {exc}"
            if traceback_text is None and exc.__traceback__ is not None:
                traceback_text = "".join(traceback.format_exception(exc))
        else:
            values[ChirpAttr.HTChirpEWMSPilotError] = str(exc)
        if traceback_text is not None:
            values[ChirpAttr.HTChirpEWMSPilotErrorTraceback] = traceback_text
        self._submit(values, immediate=True)

    def set_end_reason(self, text: str) -> None:
        """Why the pilot stops (one line for the job ad), sent now."""
        self._submit({ChirpAttr.HTChirpEWMSPilotEndReason: str(text)}, immediate=True)

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is pending and stop; waits at most `timeout` s. True if all was handled."""
        thread = self._begin_close()
        if thread is None:
            return True
        thread.join(timeout)
        return self._finished(thread, timeout)

    async def aclose(self, timeout: float = 10.0) -> bool:
        """`close()` for the event loop: waits by polling, never blocks the loop."""
        thread = self._begin_close()
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._finished(thread, timeout)

    # ------------------------------------------------------------------ internals

    def _active(self) -> bool:
        """Cheap check done before any work: disabled, closed, or chirp found unavailable."""
        if not self._enabled or self._closed:
            return False
        sender = self._sender
        return sender is None or not sender.unavailable

    def _submit(self, values: dict[ChirpAttr, Value], immediate: bool) -> None:
        if not self._active():
            return
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._sender = ChirpSender(self._dest, self._interval, self._socket_timeout)
                self._thread = threading.Thread(
                    target=self._run, args=(self._sender,), name="ewms-pilot-chirp", daemon=True
                )
                self._thread.start()
            self._queue.put(_Update(values, immediate))

    def _begin_close(self) -> threading.Thread | None:
        with self._lock:
            already, self._closed = self._closed, True
            thread = self._thread
        if thread is None:
            return None
        if not already:
            self._queue.put(_Stop())
        return thread

    def _finished(self, thread: threading.Thread, timeout: float) -> bool:
        if thread.is_alive():
            LOGGER.warning(
                "HTCondor chirp: pending status reports not sent within %.1f s; giving up", timeout
            )
            return False
        return True

    def _run(self, sender: ChirpSender) -> None:
        """The sender thread: apply queued updates in order, send when due, stop on `_Stop`."""
        while True:
            try:
                wait = sender.seconds_until_due()
                if wait is not None and wait <= 0:
                    sender.send_backlog()
                    continue
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue  # the rate limit ran out: the next round sends
                if isinstance(item, _Stop):
                    sender.send_backlog()
                    sender.close()
                    return
                sender.add(item.values)
                if item.immediate:
                    sender.send_backlog()
            except Exception:  # a bug here must not kill reporting silently, nor the pilot
                LOGGER.exception("HTCondor chirp: unexpected error in the sender thread")
