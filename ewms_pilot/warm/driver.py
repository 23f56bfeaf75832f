"""One warm worker's exchange: an event's stage, request, answer and collect, driven by the warm hub.

Warm events cost the task nothing, so the pilot's own hops between its event
loop and helper threads were most of an event's cost (benchmarks/README.md,
issue 15). The hub's thread (`hub.py`, one for every worker) writes the
infile, sends the request line, reads the answer and the outfile, then hands
the event loop one result: one hop per event. Between events it keeps reading
stdout, so a worker's chatter is logged whenever it comes.

The event loop talks to a driver through `submit` (a job) and `exited` (the
process is gone: answer what is pending once its last output has been read);
nothing here touches asyncio except `call_soon_threadsafe` to resolve a job's
future. Everything below "the hub's side" runs on the hub's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import enum
import fcntl
import logging
import os
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

from .hub import Hub
from .lines import MAX_LINE, hand_on, split_pieces
from .protocol import Answer, parse_answer

LOGGER = logging.getLogger("ewms_pilot.warm")

#: seconds to read what a worker wrote before its exit was seen (an answer may still be in the pipe)
DRAIN_WAIT = 5.0
#: seconds a job waits for the worker's exit once its stdout is closed (no answer can come): a
#: crash closes stdout just before the exit is seen, and the exit says more than the closed pipe
MUTE_WAIT = 5.0
_CHUNK = 65536


class Ended(enum.Enum):
    """How a job ended without an answer."""

    TIMED_OUT = "timed out"
    EXITED = "exited"  # the worker is gone (its exit was seen); the caller asks how it ended
    NOT_TAKEN = "not taken"  # it ended without reading the request: the event never reached it
    MUTE = "stdout closed"  # the worker lives on but closed its stdout: no answer can come
    UNHEARD = "not sent"  # its stdout was closed before the event: never staged nor sent
    DEAF = "stdin closed"  # nothing reads its stdin (it lives on, or is exiting): the request never reached it whole
    BROKEN = "broken"  # driving it failed (a bug): `Done.error` says how


@dc.dataclass(frozen=True)
class FileWork:
    """What the hub's thread does around one exchange; both may raise (the event fails, the worker is fine)."""

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
    warned_long: bool = False  # an over-long stdout line was reported for it


class _Cmd(enum.Enum):
    EXITED = "exited"
    CLOSE_STDIN = "close stdin"


#: every warm worker of this process is driven by one thread
HUB = Hub()


class Driver:
    """One worker's pipes and its job in flight; `stdin_fd`/`stdout_fd` are its own from now on (it closes them)."""

    def __init__(self, name: str, stdin_fd: int, stdout_fd: int, on_noise: Callable[[bytes], None]) -> None:
        self.name = name
        self.completed = 0  # answers matched to their event
        self._stdin: int | None = stdin_fd
        self._stdout: int | None = stdout_fd
        self._on_noise = on_noise
        self._pending = b""  # the hub's: stdout read after the last complete line
        self._mid_line = False  # the hub's: the last piece was cut from a longer line, whose rest comes next
        self._drain_until: float | None = None  # the hub's: set once the exit was seen
        self._mute_since: float | None = None  # the hub's: when its stdout reached EOF
        self._deaf = False  # the hub's: nothing reads its stdin any more
        self._job: _Job | None = None  # the hub's: the event in flight
        self._exit_posted = False  # the loop's
        self.finished = threading.Event()  # it has ended (its fds are closed)

    def start(self) -> None:
        HUB.join(self)

    # -- the event loop's side ----------------------------------------------------

    def submit(self, task_id: str, line: bytes, work: FileWork, timeout: float | None) -> asyncio.Future[Done]:
        loop = asyncio.get_running_loop()
        job = _Job(task_id, line, work, timeout, loop, loop.create_future())
        if self._exit_posted or not HUB.post(self, job):  # nobody would take it
            job.future.set_result(Done(ended=Ended.NOT_TAKEN))
        return job.future

    def exited(self) -> None:
        """The process is gone: read what is left, answer what is pending, end."""
        if not self._exit_posted:
            self._exit_posted = True  # set on the loop, like `submit`: no job can slip in behind it
            HUB.post(self, _Cmd.EXITED)

    def close_stdin(self) -> None:
        """The protocol's "no more events" (the hub closes it: it may be writing to it)."""
        HUB.post(self, _Cmd.CLOSE_STDIN)

    # -- the hub's side -------------------------------------------------------------

    @property
    def stdout_fd(self) -> int | None:
        return self._stdout

    @property
    def stdin_fd(self) -> int | None:
        return None if self._deaf else self._stdin

    def stdin_gone(self) -> None:
        """Its reader closed stdin: a request still wholly unread never reached it (one it read may be answered)."""
        self._deaf = True
        if self._job is not None and self._unread() > 0:
            self._end_job(Done(ended=Ended.DEAF))

    def read_stdout(self) -> bool:
        assert self._stdout is not None
        chunk = os.read(self._stdout, _CHUNK)
        self._pending = self._lines(self._pending + chunk, final=not chunk)
        return not chunk  # EOF; a job still waits for the exit or its deadline, whichever comes first

    def close_stdout(self) -> None:
        self._close("_stdout")
        self._mute_since = time.monotonic()

    def _mute_end(self) -> float | None:
        """When a job in flight gives up on an answer from a worker whose stdout is closed."""
        if self._job is None or self._mute_since is None or self._drain_until is not None:
            return None
        return self._mute_since + MUTE_WAIT

    def wake_at(self) -> float | None:
        if self._drain_until is not None and self._stdout is None:
            return 0.0  # nothing left to read: end now
        ends = [t for t in (self._job.deadline if self._job else None, self._drain_until, self._mute_end())
                if t is not None]  # fmt: skip
        return min(ends) if ends else None

    def tick(self, now: float) -> bool:
        """A job past its deadline times out; once the exit was seen and stdout is read to its end
        (or `DRAIN_WAIT` has passed), the job still in flight ends with the exit, and so does the driver."""
        job = self._job
        if job is not None and job.deadline is not None and now >= job.deadline:
            self._end_job(Done(ended=Ended.TIMED_OUT))
        elif job is not None and (mute_end := self._mute_end()) is not None and now >= mute_end:
            self._end_job(Done(ended=Ended.MUTE))
        if self._drain_until is not None and (self._stdout is None or now >= self._drain_until):
            if self._job is not None:  # its exit was seen and no answer came
                self._end_job(Done(ended=Ended.NOT_TAKEN if self._untouched(self._job) else Ended.EXITED))
            return True
        return False

    def handle(self, item: object) -> None:
        if item is _Cmd.EXITED:
            self._drain_until = time.monotonic() + DRAIN_WAIT
        elif item is _Cmd.CLOSE_STDIN:
            self._close("_stdin")
        elif isinstance(item, _Job):
            self._begin(item)

    def refuse(self, item: object) -> None:
        if isinstance(item, _Job):
            self._finish(item, Done(ended=Ended.NOT_TAKEN))

    def fail(self, error: BaseException) -> None:
        if self._job is not None:
            self._end_job(Done(ended=Ended.BROKEN, error=f"{type(error).__name__}: {error}"))

    def end(self) -> None:
        self._close("_stdin")
        self._close("_stdout")
        self.finished.set()

    def _begin(self, job: _Job) -> None:
        """Stage, then send; the job stays in flight until its answer, the exit or its deadline."""
        if self._job is not None:  # the pool gives a worker one event at a time
            self._finish(job, Done(ended=Ended.BROKEN, error="a second event for a busy warm worker"))
            return
        if self._stdin is None:  # its stdin was closed: it takes no more events
            self._finish(job, Done(ended=Ended.NOT_TAKEN))
            return
        if self._mute_since is not None and self._drain_until is None:  # alive, but it could not answer
            self._finish(job, Done(ended=Ended.UNHEARD))
            return
        if self._deaf:  # it could not read the request
            self._finish(job, Done(ended=Ended.DEAF))
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
        except BrokenPipeError:  # it closed its stdin or is exiting: the rest of the line can never reach it
            self._deaf = True
            self._end_job(Done(ended=Ended.DEAF))

    def _untouched(self, job: _Job) -> bool:
        """After the exit: the worker never read `job`'s request whole (none of it left our side, or some is unread).

        Earlier requests were all answered, so they were read: what is still in the pipe is this one.
        """
        return not job.sent or self._unread() > 0  # a part of the line is not a request

    def _unread(self) -> int:
        """Bytes in its stdin pipe, read by nobody yet (the pipe keeps them after its reader's close); 0 when unknown."""
        if self._stdin is None:
            return 0
        try:
            return int(struct.unpack("i", fcntl.ioctl(self._stdin, termios.FIONREAD, b"\0\0\0\0"))[0])
        except OSError:
            return 0

    def _lines(self, data: bytes, *, final: bool) -> bytes:
        """Sort complete lines into the answer and noise; the incomplete rest (none when `final`).

        Only a whole line shorter than `MAX_LINE` can be an answer: never a piece of a longer one,
        whatever its tail looks like. An over-long line that starts like one (`{`) is reported,
        once per event: the event would otherwise wait for its timeout without a word.
        """
        pieces, rest = split_pieces(data, final=final)
        for raw, ends in pieces:
            starts, self._mid_line = not self._mid_line, not ends
            whole = starts and ends and len(raw) < MAX_LINE
            answer = parse_answer(raw.decode("utf-8", "replace")) if whole else None
            job = self._job
            if starts and not whole and job is not None and not job.warned_long and raw.lstrip()[:1] == b"{":
                job.warned_long = True
                LOGGER.warning(
                    f"{self.name}: a stdout line of {MAX_LINE} bytes or more while event {job.task_id} waits: "
                    "logged as noise, never read as its answer (an answer must be shorter)"
                )
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
