"""A task's stdout/stderr file that cannot grow past EWMS_PILOT_TASK_LOG_MAX.

A task that prints forever must not fill the disk its pilot and the other
tasks share. The first half of the limit is written as it comes (so the
start is readable while the task runs); the last half is kept in memory and
written after a one-line marker when the stream ends, so the file still ends
with what the task said last (its traceback: see `errors.read_tail`).
"""

from __future__ import annotations

from typing import IO

MARKER = b"\n[ewms-pilot: %d bytes cut here (EWMS_PILOT_TASK_LOG_MAX=%d)]\n"


class CappedLog:
    """Writes chunks to `sink`, keeping at most `limit` bytes of them (None: all)."""

    def __init__(self, sink: IO[bytes], limit: int | None) -> None:
        self.sink = sink
        self.limit = limit
        self._head_left = limit - limit // 2 if limit is not None else 0
        self._tail_max = limit // 2 if limit is not None else 0
        self._tail = bytearray()
        self.cut = 0  # bytes dropped between head and tail
        self._finished = False
        # the first failed write (a full disk): later output is dropped, the task's pipe still read
        self.error: OSError | None = None

    def _put(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.sink.write(data)
            self.sink.flush()
        except OSError as e:
            self.error = e

    def write(self, chunk: bytes) -> None:
        if self.limit is None:
            self._put(chunk)
            return
        if self._head_left > 0:
            head = chunk[: self._head_left]
            self._put(head)
            self._head_left -= len(head)
            chunk = chunk[len(head) :]
        if chunk:
            self._tail += chunk
            extra = len(self._tail) - self._tail_max
            if extra > 0:
                del self._tail[:extra]
                self.cut += extra

    def finish(self) -> None:
        """Write the kept tail (after the marker, if anything was cut); once."""
        if self._finished or self.limit is None:
            return
        self._finished = True
        self._put((MARKER % (self.cut, self.limit) if self.cut else b"") + bytes(self._tail))
        self._tail.clear()
