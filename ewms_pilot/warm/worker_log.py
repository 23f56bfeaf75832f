"""A warm worker's log file, written by a thread of its own.

Its stderr is read on the event loop and its stdout noise on the warm hub's
thread; neither may wait for a disk, or a log on a stalled file system would
hold up every other worker's events. So `write` only queues; the log's own
thread writes. A writer that falls more than `BACKLOG_MAX` bytes behind drops
what comes next, and says in the log how much once it catches up: the log is
worth less than the events.
"""

from __future__ import annotations

import logging
import os
import threading

from ..tasks.io import write_all

LOGGER = logging.getLogger("ewms_pilot.warm")

#: bytes queued for the file before further output is dropped
BACKLOG_MAX = 4 * 1024 * 1024


class WorkerLog:
    """An append-only log fd, written by `start`'s thread; `write` and `close` never block on the file."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd = fd
        self._cond = threading.Condition()
        self._queued: list[bytes] = []
        self._backlog = 0  # bytes queued or being written
        self._dropped = 0  # bytes dropped since the last write
        self._closing = False
        self.finished = threading.Event()  # the fd is closed

    def start(self) -> None:
        """Start the writer; raises (the fd is then closed) when no thread can be started."""
        try:
            threading.Thread(target=self._run, name=f"ewms-warm-log-{self.name}", daemon=True).start()
        except BaseException:
            os.close(self._fd)
            self.finished.set()
            raise

    def abandon(self) -> None:
        """Close the fd of a log whose writer was never started (the worker did not start)."""
        os.close(self._fd)
        self.finished.set()

    def write(self, data: bytes) -> None:
        """Queue `data` (from any thread); dropped, and counted, while the writer is too far behind."""
        with self._cond:
            if self._closing:
                return
            if self._backlog + len(data) > BACKLOG_MAX:
                self._dropped += len(data)
                return
            self._queued.append(data)
            self._backlog += len(data)
            self._cond.notify()

    def close(self) -> None:
        """The writer writes what is queued, then closes the fd (`finished`); later output is dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queued and not self._closing:
                        self._cond.wait()
                    chunks, self._queued = self._queued, []
                    dropped, self._dropped = self._dropped, 0
                    closing = self._closing
                taken = sum(map(len, chunks))
                if dropped:  # after the chunks: nothing is queued while the backlog is full, so they came first
                    chunks.append(f"[pilot] {dropped} bytes of output dropped here: the log fell behind\n".encode())
                self._write(b"".join(chunks))
                with self._cond:
                    self._backlog -= taken  # only now: what waits in a blocked write counts
                if closing and not chunks:
                    return
        finally:
            os.close(self._fd)
            self.finished.set()

    def _write(self, data: bytes) -> None:
        try:
            write_all(self._fd, data)
        except OSError as e:  # a full disk: the protocol goes on without its log
            LOGGER.debug(f"{self.name}: cannot write its log: {e}")
