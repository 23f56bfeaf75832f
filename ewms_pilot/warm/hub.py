"""The one thread that drives every warm worker's pipes in this process.

A warm event costs the task next to nothing, so what it costs the pilot is
mostly hand-overs between threads: on two cores, each thread that wakes for an
event takes the GIL in turn, and each hand-over is a few `futex` calls and
often a context switch (benchmarks/README.md, issue 15, sixth and seventh
rounds). One thread per worker meant four such threads at c=4; one thread for
all of them wakes once for every event that is ready at that moment, and
answers that come together are read in one `poll`.

The price is that one worker's turn holds up the others for as long as it
takes: staging a large infile, reading a large outfile (a worker's noise is
only queued for its log's own thread). Warm events are meant to be small, and a
task's own time dwarfs a page-cache write.

Besides each stdout it watches each stdin's write end, which poll reports
(POLLERR) once nothing reads it: a live worker that closed its stdin is then
known before an event is sent to it, not at the event's timeout.

The thread runs while it has members and ends with the last one (a later
worker starts it again). Members post to it through `post`, which refuses once
the member has ended, so nothing is written to a wake-up pipe that was closed.
"""

from __future__ import annotations

import contextlib
import enum
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

    @property
    def stdin_fd(self) -> int | None:
        """The write end to watch for its reader's close; None once that was seen or the fd closed."""

    def read_stdout(self) -> bool:
        """Read what is there; True at EOF (the hub then stops polling it and calls `close_stdout`)."""

    def close_stdout(self) -> None: ...

    def stdin_gone(self) -> None:
        """Nothing reads its stdin any more (the hub stopped watching it)."""

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
        fds = _Fds(wake_r)
        active: set[Member] = set()
        failed: set[Member] = set()  # members whose call raised this round
        while True:
            ends = [t for m in active if isinstance(t := _call(failed, m, m.wake_at), float)]
            wait = None if not ends else min(max(min(ends) - time.monotonic(), 0.0) * 1000, _MAX_WAIT_MS)
            for fd, _ in fds.poller.poll(wait):
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif (owner := fds.owner.get(fd)) is None:
                    continue
                elif owner[1] is _Kind.STDIN:  # POLLERR: its reader is gone (reported until unwatched)
                    fds.drop(owner[0], _Kind.STDIN)
                    _call(failed, owner[0], owner[0].stdin_gone)
                elif _call(failed, owner[0], owner[0].read_stdout):
                    fds.drop(owner[0], _Kind.STDOUT)  # before the close: the number may be reused at once
                    _call(failed, owner[0], owner[0].close_stdout)
            now = time.monotonic()
            done = {m for m in active if m not in failed and _call(failed, m, m.tick, now)}
            for member, item in self._take():
                if item is _JOINED:
                    active.add(member)
                    for kind in (_Kind.STDOUT, _Kind.STDIN):
                        joined = _call(failed, member, lambda m=member, k=kind: k.fd_of(m))
                        if isinstance(joined, int):
                            fds.add(member, kind, joined)
                elif member in active and member not in done and member not in failed:
                    _call(failed, member, member.handle, item)
                    if _call(failed, member, lambda m=member: m.stdin_fd) is None:  # it closed it
                        fds.drop(member, _Kind.STDIN)
                else:
                    _call(failed, member, member.refuse, item)
            for member in done | failed:
                active.discard(member)
                fds.drop(member, _Kind.STDOUT)
                fds.drop(member, _Kind.STDIN)
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


class _Kind(enum.Enum):
    """Which of a member's pipes an fd is: stdout is read, stdin only watched for its reader's close."""

    STDOUT = select.POLLIN
    STDIN = 0  # poll reports POLLERR on a pipe's write end once no reader is left

    def fd_of(self, member: Member) -> int | None:
        return member.stdout_fd if self is _Kind.STDOUT else member.stdin_fd



class _Fds:
    """The members' fds the hub polls; each is unwatched before its member closes it (numbers are reused)."""

    def __init__(self, wake_r: int) -> None:
        self.poller = select.poll()
        self.poller.register(wake_r, select.POLLIN)
        self.owner: dict[int, tuple[Member, _Kind]] = {}
        self._of: dict[tuple[Member, _Kind], int] = {}

    def add(self, member: Member, kind: _Kind, fd: int) -> None:
        self.poller.register(fd, kind.value)
        self.owner[fd] = (member, kind)
        self._of[member, kind] = fd

    def drop(self, member: Member, kind: _Kind) -> None:
        fd = self._of.pop((member, kind), None)
        if fd is not None:
            self.poller.unregister(fd)
            del self.owner[fd]


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
