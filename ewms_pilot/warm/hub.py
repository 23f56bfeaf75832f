"""The one thread that drives every warm worker's pipes in this process.

A warm event costs the task next to nothing, so what it costs the pilot is
mostly hand-overs between threads: on two cores, each thread that wakes for an
event takes the GIL in turn, and each hand-over is a few `futex` calls and
often a context switch (benchmarks/README.md, issue 15, sixth and seventh
rounds). One thread per worker meant four such threads at c=4; one thread for
all of them wakes once for every event that is ready at that moment, and
answers that come together are read in one `poll`.

The price is that one worker's turn holds up the others for as long as it
takes: staging a large infile, reading a large outfile, writing a chatty
worker's noise to its log. Warm events are meant to be small, and a task's own
time dwarfs a page-cache write.

The thread runs while it has members and ends with the last one (a later
worker starts it again). Members post to it through `post`, which refuses once
the member has ended, so nothing is written to a wake-up pipe that was closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

LOGGER = logging.getLogger("ewms_pilot.warm")


class Member(Protocol):
    """What the hub needs of one worker's driver; every call is made on the hub's thread."""

    name: str

    @property
    def stdout_fd(self) -> int | None: ...

    def read_stdout(self) -> bool:
        """Read what is there; True at EOF (the hub then stops polling it and calls `close_stdout`)."""

    def close_stdout(self) -> None: ...

    def handle(self, item: object) -> None:
        """An item the loop posted."""

    def tick(self, now: float) -> bool:
        """Deadlines; True once the member is done (the hub then calls `end`)."""

    def wake_at(self) -> float | None:
        """The next monotonic time `tick` must run, if any."""

    def refuse(self, item: object) -> None:
        """An item posted before the member ended, taken after: answer it, never strand it."""

    def fail(self, error: BaseException) -> None:
        """A bug in one of its calls: answer what is pending; `end` follows."""

    def end(self) -> None:
        """Close what is left; it gets no further call."""


_JOINED = object()
#: poll()'s longest wait (ms, a C int); a later deadline is simply waited for in steps
_MAX_WAIT_MS = 2**31 - 1


class Hub:
    """Drives its members from one thread; the thread starts with the first member and ends with the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[tuple[Member, object]] = queue.SimpleQueue()
        self._members: set[Member] = set()  # joined and not yet ended (lock)
        self._wake_w: int | None = None  # the running thread's wake-up pipe (lock)

    def join(self, member: Member) -> None:
        """Drive `member` from now on; raises (and drives nothing) when no thread can be started."""
        with self._lock:
            if self._wake_w is None:
                wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                try:  # a slot's process limit: this worker fails to start, a later one may not
                    threading.Thread(target=self._run, args=(wake_r,), name="ewms-warm-hub", daemon=True).start()
                except BaseException:
                    os.close(wake_r)
                    os.close(wake_w)
                    raise
                self._wake_w = wake_w
            self._members.add(member)
            self._put(member, _JOINED)

    def post(self, member: Member, item: object) -> bool:
        """Hand `item` to `member` on the hub's thread; False once the member has ended."""
        with self._lock:
            if member not in self._members:
                return False
            self._put(member, item)
            return True

    def _put(self, member: Member, item: object) -> None:
        assert self._wake_w is not None  # a member exists, so the thread runs
        self._inbox.put((member, item))
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._wake_w, b"x")

    # -- the thread ---------------------------------------------------------------

    def _run(self, wake_r: int) -> None:
        try:
            self._serve(wake_r)
        except BaseException as e:  # a bug in the hub itself: no event may be left waiting
            LOGGER.exception("the warm workers' driver thread failed")
            with self._lock:  # one step: a member joining from now on gets a new thread, and its items
                stranded, self._members = self._members, set()
                items = self._take()
                self._stop(wake_r)
            failed: set[Member] = set()
            for member in stranded:
                _call(failed, member, member.fail, e)
                _call(failed, member, member.end)
            for member, item in items:
                if item is not _JOINED:
                    _call(failed, member, member.refuse, item)

    def _serve(self, wake_r: int) -> None:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        active: dict[Member, int | None] = {}  # member -> its stdout fd while polled
        by_fd: dict[int, Member] = {}
        failed: set[Member] = set()  # members whose call raised this round
        while True:
            ends = [t for m in active if isinstance(t := _call(failed, m, m.wake_at), float)]
            wait = None if not ends else min(max(min(ends) - time.monotonic(), 0.0) * 1000, _MAX_WAIT_MS)
            for fd, _ in poller.poll(wait):
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif (member := by_fd.get(fd)) is not None and _call(failed, member, member.read_stdout):
                    poller.unregister(fd)  # before the close: the number may be reused at once
                    del by_fd[fd]
                    active[member] = None
                    _call(failed, member, member.close_stdout)
            now = time.monotonic()
            done = {m for m in active if m not in failed and _call(failed, m, m.tick, now)}
            for member, item in self._take():
                if item is _JOINED:
                    joined = _call(failed, member, lambda m=member: m.stdout_fd)
                    active[member] = joined if isinstance(joined, int) else None
                    if isinstance(joined, int):
                        poller.register(joined, select.POLLIN)
                        by_fd[joined] = member
                elif member in active and member not in done and member not in failed:
                    _call(failed, member, member.handle, item)
                else:
                    _call(failed, member, member.refuse, item)
            for member in done | failed:
                if (polled := active.pop(member, None)) is not None:
                    poller.unregister(polled)
                    del by_fd[polled]
                with self._lock:
                    self._members.discard(member)  # no post reaches it from now on
                _call(failed, member, member.end)
            failed.clear()
            with self._lock:
                if not self._members and self._inbox.empty():
                    self._stop(wake_r)
                    return

    def _take(self) -> list[tuple[Member, object]]:
        items: list[tuple[Member, object]] = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _stop(self, wake_r: int) -> None:
        """The thread ends (lock held): the next `join` starts another with a new pipe."""
        assert self._wake_w is not None
        os.close(self._wake_w)
        os.close(wake_r)
        self._wake_w = None


def _call(failed: set[Member], member: Member, call: Callable[..., object], *args: object) -> object:
    """`call(*args)`; a bug there fails only `member` (added to `failed`: it then ends), never the others."""
    try:
        return call(*args)
    except BaseException as e:
        LOGGER.exception(f"{member.name}: its driver failed")
        if member not in failed:
            failed.add(member)
            with contextlib.suppress(BaseException):
                member.fail(e)
        return None
