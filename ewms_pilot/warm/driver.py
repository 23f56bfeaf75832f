"""The thread that owns one warm worker's stdin and stdout: an event's stage, exchange and collect in one trip.

Warm events cost the task nothing, so the pilot's own hops between its event
loop and helper threads were most of an event's cost (benchmarks/README.md,
issue 15). Here one thread per worker writes the infile, sends the request
line, waits for the answer, and reads the outfile, then hands the event loop
one result: one hop per event instead of a file trip before the request, the
pipe traffic on the loop, and a file trip after it. Between events it keeps
reading stdout, so a worker's chatter is logged whenever it comes.

The event loop talks to it through `submit` (a job) and `exited` (the process
is gone: answer what is pending once its last output has been read);
nothing here touches asyncio except `call_soon_threadsafe` to resolve a
job's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import enum
import fcntl
import logging
import os
import queue
import select
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from .lines import MAX_LINE, hand_on, split_lines
from .protocol import Answer, parse_answer

LOGGER = logging.getLogger("ewms_pilot.warm")

#: seconds to read what a worker wrote before its exit was seen (an answer may still be in the pipe)
DRAIN_WAIT = 5.0
_CHUNK = 65536


class Ended(enum.Enum):
    """How a job ended without an answer."""

    TIMED_OUT = "timed out"
    EXITED = "exited"  # the worker is gone (its exit was seen); the caller asks how it ended
    NOT_TAKEN = "not taken"  # it ended without reading the request: the event never reached it
    BROKEN = "broken"  # the driver thread itself failed (a bug): `Done.error` says how


@dc.dataclass(frozen=True)
class FileWork:
    """What the driver thread does around one exchange; both may raise (the event fails, the worker is fine)."""

    stage: Callable[[], None]  # write the infile
    collect: Callable[[], Any]  # read the outfile, once the worker answered ok


@dc.dataclass(frozen=True)
class Done:
    """A job's result: the worker's answer (and the collected value when it said ok), or why there is none."""

    answer: Answer | None = None
    value: Any = None
    ended: Ended | None = None
    file_error: BaseException | None = None  # staging or collecting failed
    error: str | None = None  # Ended.BROKEN: what failed


@dc.dataclass
class _Job:
    task_id: str
    line: bytes
    work: FileWork
    timeout: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Done]
    deadline: float | None = None
    sent: bool = False  # some of the request line went into the pipe


class _Cmd(enum.Enum):
    EXITED = "exited"
    CLOSE_STDIN = "close stdin"


class Driver:
    """One thread per worker; `stdin_fd`/`stdout_fd` are its own from now on (it closes them)."""

    def __init__(self, name: str, stdin_fd: int, stdout_fd: int, on_noise: Callable[[bytes], None]) -> None:
        self.name = name
        self.completed = 0  # answers matched to their event
        self._stdin: int | None = stdin_fd
        self._stdout: int | None = stdout_fd
        self._on_noise = on_noise
        self._inbox: queue.SimpleQueue[_Job | _Cmd] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # posting and the thread's end take turns: a post after the end must not write to the wake
        # pipe's old fd number, which another file may have by then
        self._post_lock = threading.Lock()
        self._gone = False
        self._job: _Job | None = None  # the thread's: the event in flight
        self._exit_posted = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-driver", daemon=True)
        self.finished = threading.Event()  # the thread has ended (its fds are closed)

    def start(self) -> None:
        self._thread.start()

    # -- the event loop's side ----------------------------------------------------

    def submit(self, task_id: str, line: bytes, work: FileWork, timeout: float | None) -> asyncio.Future[Done]:
        loop = asyncio.get_running_loop()
        job = _Job(task_id, line, work, timeout, loop, loop.create_future())
        if self._exit_posted or not self._post(job):  # nobody would take it
            job.future.set_result(Done(ended=Ended.NOT_TAKEN))
        return job.future

    def exited(self) -> None:
        """The process is gone: read what is left, answer what is pending, end the thread."""
        if not self._exit_posted:
            self._exit_posted = True  # set on the loop, like `submit`: no job can slip in behind it
            self._post(_Cmd.EXITED)

    def close_stdin(self) -> None:
        """The protocol's "no more events" (the thread closes it: it may be writing to it)."""
        self._post(_Cmd.CLOSE_STDIN)

    def _post(self, item: _Job | _Cmd) -> bool:
        """Hand `item` to the thread; False once it has ended."""
        with self._post_lock:
            if self._gone:
                return False
            self._inbox.put(item)
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
                os.write(self._wake_w, b"x")
            return True

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._drive()
        except BaseException as e:  # a bug here must not leave an event waiting forever
            LOGGER.exception(f"{self.name}: its driver thread failed")
            if self._job is not None:
                self._finish(self._job, Done(ended=Ended.BROKEN, error=f"{type(e).__name__}: {e}"))
                self._job = None
        finally:
            with self._post_lock:
                self._gone = True
                os.close(self._wake_r)
                os.close(self._wake_w)
            for item in self._take_inbox():  # posted before the end: answered, never stranded
                if isinstance(item, _Job):
                    self._finish(item, Done(ended=Ended.NOT_TAKEN))
            self._close("_stdin")
            self._close("_stdout")
            self.finished.set()

    def _drive(self) -> None:
        """Until the exit was seen and stdout is read to its end (or `DRAIN_WAIT` has passed)."""
        pending = b""
        drain_until: float | None = None  # set once the exit was seen
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        assert self._stdout is not None
        poller.register(self._stdout, select.POLLIN)
        while True:
            job = self._job
            if drain_until is not None and (self._stdout is None or time.monotonic() >= drain_until):
                if job is not None:  # its exit was seen and no answer came
                    self._end_job(Done(ended=Ended.NOT_TAKEN if self._untouched(job) else Ended.EXITED))
                return
            ends = [t for t in (job.deadline if job else None, drain_until) if t is not None]
            wait = None if not ends else max(min(ends) - time.monotonic(), 0.0)
            events = dict(poller.poll(None if wait is None else wait * 1000))
            if self._stdout is not None and self._stdout in events:
                chunk = os.read(self._stdout, _CHUNK)
                pending = self._lines(pending + chunk, final=not chunk)
                if not chunk:  # EOF; a job still waits for the exit or its deadline, whichever comes first
                    poller.unregister(self._stdout)
                    self._close("_stdout")
            job = self._job
            if job is not None and job.deadline is not None and time.monotonic() >= job.deadline:
                self._end_job(Done(ended=Ended.TIMED_OUT))
            if self._wake_r in events:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                for item in self._take_inbox():
                    if item is _Cmd.EXITED:
                        drain_until = time.monotonic() + DRAIN_WAIT
                    elif item is _Cmd.CLOSE_STDIN:
                        self._close("_stdin")
                    elif isinstance(item, _Job):
                        self._begin(item)

    def _take_inbox(self) -> list[_Job | _Cmd]:
        items: list[_Job | _Cmd] = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _begin(self, job: _Job) -> None:
        """Stage, then send; the job stays in flight until its answer, the exit or its deadline."""
        if self._job is not None:  # the pool gives a worker one event at a time
            self._finish(job, Done(ended=Ended.BROKEN, error="a second event for a busy warm worker"))
            return
        if self._stdin is None:  # its stdin was closed: it takes no more events
            self._finish(job, Done(ended=Ended.NOT_TAKEN))
            return
        try:
            job.work.stage()
        except BaseException as e:  # the event's data or the disk: the worker never saw it
            self._finish(job, Done(file_error=e))
            return
        job.deadline = None if job.timeout is None else time.monotonic() + job.timeout
        self._job = job
        try:
            view = memoryview(job.line)
            while view:
                view = view[os.write(self._stdin, view) :]
                job.sent = True
        except OSError:  # EPIPE: it closed its stdin or is exiting; the exit or the deadline ends the job
            self._close("_stdin")

    def _untouched(self, job: _Job) -> bool:
        """After the exit: the worker never read `job`'s request (none of it left our side, or all is unread).

        Earlier requests were all answered, so they were read: what is still in the pipe is this one.
        """
        if not job.sent:
            return True
        if self._stdin is None:
            return False
        try:
            unread = struct.unpack("i", fcntl.ioctl(self._stdin, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return False
        return bool(unread >= len(job.line))

    def _lines(self, data: bytes, *, final: bool) -> bytes:
        """Sort complete lines into the answer and noise; the incomplete rest (none when `final`)."""
        lines, rest = split_lines(data, final=final)
        for raw in lines:
            answer = parse_answer(raw.decode("utf-8", "replace")) if len(raw) < MAX_LINE else None
            job = self._job
            if answer is not None and job is not None and answer.id == job.task_id:
                self.completed += 1
                self._answered(answer)
                continue
            if answer is not None:
                LOGGER.warning(f"{self.name}: answer for event {answer.id!r}, which it was not given: ignored")
            hand_on(self._on_noise, raw)
        return rest

    def _answered(self, answer: Answer) -> None:
        """The answer came: collect the outfile (ok only) and end the job."""
        assert self._job is not None
        done = Done(answer=answer)
        if answer.ok:
            try:
                done = Done(answer=answer, value=self._job.work.collect())
            except BaseException as e:  # a bad outfile fails the event, not the worker
                done = Done(answer=answer, file_error=e)
        self._end_job(done)

    def _end_job(self, done: Done) -> None:
        assert self._job is not None
        self._finish(self._job, done)
        self._job = None

    @staticmethod
    def _finish(job: _Job, done: Done) -> None:
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, done)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _close(self, attr: str) -> None:
        fd = getattr(self, attr)
        if fd is not None:
            setattr(self, attr, None)
            with contextlib.suppress(OSError):
                os.close(fd)


def _resolve(future: asyncio.Future[Done], done: Done) -> None:
    if not future.done():
        future.set_result(done)
