"""The one thread that writes each event's journal line and then removes its finished task files.

An event's record is the last step of its path, and nothing on the event loop
needs to wait for the disk to take it: the handler hands the record over and
returns its outcome (from which the summary counts and chirp are derived).
Before this, every event paid a trip to a helper thread and back for it
(benchmarks/README.md, issue 15). Lines that arrive together go out in one
append, and lines always go before removals: a kill or a timed-out shutdown
during a long removal (a task that left many files) must not leave a
published, acked event without its line. Only a full disk removes first
(the line needs the space the removal frees).

`close` waits, within the shutdown's time, for what was handed over; the exit
summary reads the journal after it.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..tasks.taskdir import TaskDir
from .journal import Journal

LOGGER = logging.getLogger("ewms_pilot")

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dc.dataclass(frozen=True)
class _Entry:
    record: dict[str, Any] | None  # None: no journal line (no journal)
    remove: TaskDir | None  # the task's files to remove once the line is written
    free_first: bool  # a full disk: remove before writing
    log: Log


@dc.dataclass(frozen=True)
class _Mark:
    """Passes through both lanes behind what was handed over before it; `done` is set at the far end."""

    done: threading.Event = dc.field(default_factory=threading.Event)
    end: bool = False  # `close`: the lanes end after it


class _Lane:
    """One daemon thread working through a queue in batches (what is queued when it looks)."""

    def __init__(self, name: str, work: Callable[[list[_Entry]], None], then: _Lane | None = None) -> None:
        self._inbox: queue.SimpleQueue[_Entry | _Mark] = queue.SimpleQueue()
        self._work = work
        self._then = then  # marks go on there once this lane's batch is done
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: _Entry | _Mark) -> None:
        self._inbox.put(item)

    def _run(self) -> None:
        ending = False
        while not ending:
            items = [self._inbox.get()]
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._work([i for i in items if isinstance(i, _Entry)])
            except Exception:  # a bug: the next events must still be recorded
                LOGGER.exception("writing a journal line or removing task files failed")
            for mark in (i for i in items if isinstance(i, _Mark)):
                ending = ending or mark.end
                if self._then is not None:
                    self._then.put(mark)
                else:
                    mark.done.set()


class Recorder:
    """Journal lines on one thread, then task-file removals on another, each in the order handed over.

    Two threads, so that a line never waits behind another event's long removal.
    """

    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal
        self._removals = _Lane("ewms-recorder-removals", self._remove_all)
        self._lines = _Lane("ewms-recorder-lines", lambda batch: self._write(batch, self._removals.put), then=self._removals)
        self._started = False
        self._closing = False

    def start(self) -> None:
        self._removals.start()
        self._lines.start()
        self._started = True

    def record(self, record: dict[str, Any], remove: TaskDir | None, log: Log, *, free_first: bool = False) -> None:
        """Hand over one event's line (and the files to remove after it); never blocks the caller."""
        entry = _Entry(record if self.journal is not None else None, remove, free_first, log)
        if not self._started or self._closing:  # a handler that outlived `close`: a thread of its own
            threading.Thread(target=self._alone, args=(entry,), name="ewms-recorder-late", daemon=True).start()
            return
        self._lines.put(entry)

    async def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every line and removal handed over so far; False if not all done."""
        return await self._wait(_Mark(), timeout)

    async def close(self, timeout: float) -> bool:
        """`flush`, then the threads end (later records get a thread of their own)."""
        if self._closing:
            return True
        self._closing = True
        done = await self._wait(_Mark(end=True), timeout)
        if not done:
            LOGGER.warning(
                f"journal lines or task-file removals still in progress after {timeout:.1f}s: left to the exit"
            )
        return done

    async def _wait(self, mark: _Mark, timeout: float) -> bool:
        if not self._started or self._closing and not mark.end:
            return True
        self._lines.put(mark)
        return await asyncio.to_thread(mark.done.wait, timeout)

    # -- the threads ----------------------------------------------------------------

    def _write(self, entries: list[_Entry], remove_later: Callable[[_Entry], None]) -> None:
        """Removals a full disk needs first, then every line in one append; the other removals after."""
        for e in entries:
            if e.free_first:
                self._remove(e)
        records = [e.record for e in entries if e.record is not None]
        if records and self.journal is not None:
            try:
                self.journal.append_many(records)
            except OSError as err:
                for e in entries:
                    if e.record is not None:
                        e.log.warning(f"could not write the journal record: {err}")
        for e in entries:
            if not e.free_first and e.remove is not None:
                remove_later(e)

    def _remove_all(self, entries: list[_Entry]) -> None:
        for e in entries:
            self._remove(e)

    def _alone(self, entry: _Entry) -> None:
        """A late record: its line, then its removal, on this (its own) thread."""
        self._write([entry], self._remove)

    @staticmethod
    def _remove(entry: _Entry) -> None:
        if entry.remove is None:
            return
        try:
            entry.remove.remove()
        except OSError as err:
            entry.log.warning(f"could not remove task files in {entry.remove.files_at}: {err}")
