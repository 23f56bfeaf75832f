"""Each event's journal line, then the removal of its finished task files, on threads of their own.

An event's record is the last step of its path, and nothing on the event loop
needs to wait for the disk to take it: the handler hands the record over and
returns its outcome (from which the summary counts and chirp are derived).
Before, every event paid a trip to a helper thread and back for it
(benchmarks/README.md, issue 15).

Two lanes, each one thread working through its queue in order:
- *lines*: every line queued when it looks, in one append; then it passes each
  event's removal on. So a line is on disk before its own event's files go
  (a kill or a timed-out shutdown during a long removal must not leave a
  published, acked event without its line).
- *removals*: the task dirs, one after another; a line never waits behind
  one. A full disk is the exception: that event's files go first, on this
  lane, and its line right after (the line needs the space the removal frees).
  A warm event's two files are unlinked on the lines lane, after the lines:
  two unlinks are quick (a directory planted at one of their names is not,
  and goes to this lane).

A lane that wakes waits `LINGER` for more before it starts: at hundreds of
events a second a batch then costs one wake-up of its thread, not one per
event (a handover to a thread that is not waiting costs no system call;
benchmarks/README.md, eighth round). A line reaches the disk that much later
at most, and a barrier waits that much longer.

`flush` and `close` are barriers through both lanes; the exit summary reads
the journal after `close`. Waiting never holds a thread of the event loop's
executor: the far end of a barrier resolves an asyncio future.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..tasks.taskdir import TaskDir
from .journal import Journal

LOGGER = logging.getLogger("ewms_pilot")

#: s a lane waits, once woken, for more to do before it starts
LINGER = 0.005

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dc.dataclass(frozen=True)
class _Done:
    """Resolves one asyncio future from a lane's thread (a closed loop: nobody waits any more)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def __call__(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, self.future)

    @classmethod
    def here(cls) -> _Done:
        loop = asyncio.get_running_loop()
        return cls(loop, loop.create_future())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dc.dataclass(frozen=True)
class _Entry:
    record: dict[str, Any] | None  # None: no journal line (no journal)
    remove: TaskDir | None  # the task's files, removed after its line (before it on a full disk)
    free_first: bool
    log: Log
    done: _Done | None = None  # told once both are done (only a full-disk handler waits for it)


@dc.dataclass(frozen=True)
class _Mark:
    """Passes through both lanes behind everything handed over before it."""

    done: _Done
    end: bool = False  # `close`: the lanes' threads end after it


class _Lane:
    """One daemon thread working through a queue in batches (all that is queued when it looks)."""

    def __init__(self, name: str, work: Callable[[list[_Entry]], None], then: _Lane | None = None) -> None:
        self._inbox: queue.SimpleQueue[_Entry | _Mark] = queue.SimpleQueue()
        self._work = work
        self._then = then  # where marks go once this lane's batch is done (None: the far end)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: _Entry | _Mark) -> None:
        self._inbox.put(item)

    def _run(self) -> None:
        ending = False
        while not ending:
            items = [self._inbox.get()]
            time.sleep(LINGER)  # what is handed over meanwhile joins this batch, and its `put` wakes nobody
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._work([i for i in items if isinstance(i, _Entry)])
            except Exception:  # a bug: later events must still be recorded
                LOGGER.exception("writing a journal line or removing task files failed")
            for mark in (i for i in items if isinstance(i, _Mark)):
                ending = ending or mark.end
                if self._then is not None:
                    self._then.put(mark)
                else:
                    mark.done()


class Recorder:
    """Journal lines and task-file removals for one pilot run; `start` it, `close` it in a `finally`."""

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal
        self._removals = _Lane("ewms-recorder-removals", self._remove_all)
        self._lines = _Lane("ewms-recorder-lines", self._write_lines, then=self._removals)
        self._started = False
        self._closing = False

    def start(self) -> None:
        self._removals.start()
        self._lines.start()
        self._started = True

    def record(
        self, record: dict[str, Any], remove: TaskDir | None, log: Log, *, free_first: bool = False
    ) -> asyncio.Future[None] | None:
        """Hand over one event's line and the files to remove; never blocks.

        A full disk (`free_first`) gets a future that resolves once both are done (its slot waits for the
        space); other events get none: nothing on the loop hears of their record again.
        """
        done = _Done.here() if free_first else None
        entry = _Entry(record if self.journal is not None else None, remove, free_first, log, done)
        if not self._started or self._closing:  # a handler that outlived `close`: a thread of its own
            threading.Thread(target=self._alone, args=(entry,), name="ewms-recorder-late", daemon=True).start()
        else:
            self._lines.put(entry)
        return done.future if done is not None else None

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every line and removal handed over so far; False if not all done."""
        if not self._started or self._closing:
            return True
        return await self._wait(_Mark(_Done.here()), timeout)

    async def close(self, timeout: float) -> bool:
        """`flush`, and the threads end after it (they do even if this wait is cut short)."""
        if not self._started or self._closing:
            return True
        self._closing = True
        done = await self._wait(_Mark(_Done.here(), end=True), timeout)
        if not done:
            LOGGER.warning(
                f"journal lines or task-file removals still in progress after {timeout:.1f}s: "
                "what is not written by the exit is lost"
            )
        return done

    async def _wait(self, mark: _Mark, timeout: float) -> bool:
        self._lines.put(mark)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(mark.done.future)
        except TimeoutError:
            return False
        return True

    # -- the threads ----------------------------------------------------------------

    def _write_lines(self, entries: list[_Entry]) -> None:
        """Lines thread: every line in one append (a full disk's after its removal), then removals on.

        A warm event's two files are unlinked here, after the lines: it is quick, and it spares
        waking the removals thread for each event; a directory at one of their names goes on.
        """
        self._append([e for e in entries if not e.free_first])
        for e in entries:
            if not e.free_first and e.remove is not None and e.remove.shared and self._unlink_files(e):
                continue
            if e.free_first or e.remove is not None:
                self._removals.put(e)
            elif e.done is not None:
                e.done()

    @staticmethod
    def _unlink_files(entry: _Entry) -> bool:
        """A warm event's files unlinked (True), or left for the removals lane (a tree at one's name)."""
        assert entry.remove is not None
        try:
            if not entry.remove.remove_files_only():
                return False
        except OSError as err:
            entry.log.warning(f"could not remove task files in {entry.remove.files_at}: {err}")
        if entry.done is not None:
            entry.done()
        return True

    def _remove_all(self, entries: list[_Entry]) -> None:
        """Removals thread: in order."""
        for e in entries:
            self._remove_then_done(e)

    def _remove_then_done(self, e: _Entry) -> None:
        """The entry's removal; a full disk's line right after it; then whoever waits is told."""
        self._remove(e)
        if e.free_first:
            self._append([e])
        if e.done is not None:
            e.done()

    def _alone(self, entry: _Entry) -> None:
        """A late record, on its own thread: line and removal in the same order as on the lanes."""
        if not entry.free_first:
            self._append([entry])
        self._remove_then_done(entry)

    def _append(self, entries: list[_Entry]) -> None:
        records = [e.record for e in entries if e.record is not None]
        if not records or self.journal is None:
            return
        try:
            self.journal.append_many(records)
        except OSError as err:
            for e in entries:
                if e.record is not None:
                    e.log.warning(f"could not write the journal record: {err}")

    @staticmethod
    def _remove(entry: _Entry) -> None:
        if entry.remove is None:
            return
        try:
            entry.remove.remove()
        except OSError as err:
            entry.log.warning(f"could not remove task files in {entry.remove.files_at}: {err}")
