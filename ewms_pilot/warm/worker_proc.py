"""One warm worker process: its pipes, its log file, and its one in-flight request.

The worker is started like a one-shot task (`runtime.run_argv`, new session,
so its whole process group can be stopped) but with stdin kept open. Its
stdin and stdout belong to its `Driver` (on the warm hub's thread), which runs each event's
stage → exchange → collect in one trip; stdout noise and stderr go to the
worker's log file. A watcher task notices the exit and lets the driver answer
the request in flight, if any, with it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses as dc
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..runtimes.base import RunSpec, Runtime
from ..runtimes.envfile import open_private, remove_env_file
from ..tasks.errors import extract_error_line

# The stop sequence (runtime stop command or group signals, then SIGKILL) is the
# one-shot tasks' own: a warm worker must not outlive the pilot any more than they do.
from ..tasks.process import group_exists, signal_group, terminate, uncancellable
from ..tasks.spawn import Process, start_process
from .driver import DRAIN_WAIT, Done, Driver, Ended, FileWork
from .lines import hand_on, split_lines
from .worker_log import WorkerLog

LOGGER = logging.getLogger("ewms_pilot.warm")

#: stderr lines kept in memory to explain a crash in one line
STDERR_LINES_KEPT = 50


@dc.dataclass(frozen=True)
class Exited:
    """The worker process ended; `stderr_line` is the most telling line of its stderr."""

    exit_code: int | None
    stderr_line: str


#: a request's end: the driver's result, the worker's exit, or None (timed out)
Reply = Done | Exited


class WarmWorker:
    """A long-lived task process fed one request at a time."""

    def __init__(self, runtime: Runtime, spec: RunSpec, log_path: Path) -> None:
        self.runtime = runtime
        self.spec = spec
        self.log_path = log_path
        self.stopped_by_pilot = False  # True once the pilot closed or stopped it
        self.ended_by_itself = False  # it exited before the pilot closed or stopped it (its log stays)
        self._proc: asyncio.subprocess.Process | None = None
        self._driver: Driver | None = None
        self._log: WorkerLog | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._ended: asyncio.Future[Exited] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def completed(self) -> int:
        """Events answered (ok or not) by this process."""
        return 0 if self._driver is None else self._driver.completed

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        """Started and not yet seen to exit."""
        return self._ended is not None and not self._ended.done()

    @property
    def exit_info(self) -> Exited | None:
        """How it ended, once it has."""
        if self._ended is None or not self._ended.done():
            return None
        return self._ended.result()

    # -- start ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process; raises OSError when the runtime's argv cannot be started."""
        argv = self.runtime.launch_argv(self.spec)  # with the process runtime's memory limit, as a task's
        env = self.runtime.process_env(self.spec, os.environ)
        cwd = self.runtime.process_cwd(self.spec)
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        # the worker sees this dir (the whole data dir is bound): never follow its links
        log = WorkerLog(self.name, await asyncio.to_thread(open_private, self.log_path))
        # stdin/stdout as plain pipes, not asyncio transports: the hub's thread owns them
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            # owner-only; the client reads it as it starts, removed when the worker has exited
            await asyncio.to_thread(self.runtime.write_env_file, self.spec)
            # wait() returns at the exit, even while a child it left holds its stderr (Python 3.11)
            proc = await start_process(
                *argv,
                stdin=in_r,
                stdout=out_w,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            log.abandon()
            for fd in (in_w, out_r):
                os.close(fd)
            remove_env_file(self.spec.env_file)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        driver = Driver(self.name, in_w, out_r, self._on_stdout_noise)
        try:
            log.start()  # before the driver: its noise goes there
            driver.start()
        except BaseException:  # no thread to drive it or write its log (a process limit): it must not run
            driver.end()  # closes its pipe ends
            signal_group(proc.pid, signal.SIGKILL)
            await uncancellable(proc.wait())
            proc.close_pipes()
            log.close()
            remove_env_file(self.spec.env_file)
            raise
        self._proc, self._log, self._driver = proc, log, driver
        self._ended = asyncio.get_running_loop().create_future()
        assert proc.stderr is not None
        stderr = asyncio.create_task(_read_lines(proc.stderr, self._on_stderr))
        self._tasks = [stderr, asyncio.create_task(self._watch(proc, stderr))]
        LOGGER.info(f"warm worker {self.name} started (pid {proc.pid}, log {self.log_path})")

    # -- output -----------------------------------------------------------------

    def _on_stdout_noise(self, raw: bytes) -> None:
        """On the hub's thread; queued, never written there (worker_log.py)."""
        if self._log is not None:
            self._log.write(b"[stdout] " + raw + b"\n")

    def _on_stderr(self, raw: bytes) -> None:
        """On the loop; queued, never written there."""
        if self._log is not None:
            self._log.write(raw + b"\n")
        self._stderr_tail.append(raw.decode("utf-8", "replace"))

    async def _watch(self, proc: Process, stderr: asyncio.Task[None]) -> None:
        """Wait for the exit; let the driver read what is left and answer the request in flight."""
        code = await proc.wait()
        self.ended_by_itself = not self.stopped_by_pilot  # now: a close from here on came too late
        remove_env_file(self.spec.env_file)
        if group_exists(proc.pid):  # background children it left behind
            signal_group(proc.pid, signal.SIGKILL)
        assert self._driver is not None
        self._driver.exited()
        _, late = await asyncio.wait([stderr], timeout=DRAIN_WAIT)
        for task in late:  # a detached grandchild holds the pipe open
            task.cancel()
        await asyncio.gather(stderr, return_exceptions=True)
        proc.close_pipes()  # what such a grandchild still holds
        await asyncio.to_thread(self._driver.finished.wait, DRAIN_WAIT + 1)
        line = extract_error_line(
            "\n".join(self._stderr_tail), apptainer=self.runtime.name == "apptainer"
        )
        exited = Exited(code, line)
        if self._log is not None:
            self._log.close()  # its thread writes the rest; nobody waits for that but the pool's close
        assert self._ended is not None
        self._ended.set_result(exited)
        if self.ended_by_itself:
            LOGGER.warning(f"warm worker {self.name} exited by itself (code {code}) after {self.completed} "
                           f"event(s); its log: {self.log_path}")
        else:
            LOGGER.info(f"warm worker {self.name} exited (code {code}) after {self.completed} event(s)")

    async def log_written(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until its log has all it was given and is closed."""
        if self._log is None or self._log.finished.is_set():
            return True
        return await asyncio.to_thread(self._log.finished.wait, timeout)

    # -- requests ---------------------------------------------------------------

    async def request(self, task_id: str, line: bytes, work: FileWork, timeout: float | None) -> Reply | None:
        """Stage, send one request line, wait for its answer, collect: one trip to the hub's thread.

        The answer (with the collected value), the worker's exit, or None on timeout; a `Done`
        with `Ended.NOT_TAKEN` when it exited without reading the request (the event never started), with
        `Ended.MUTE`/`UNHEARD` when it lives on with its stdout closed, `Ended.DEAF` when nothing reads
        its stdin (the pool stops it, unless its exit comes).
        """
        driver, ended = self._driver, self._ended
        assert driver is not None and ended is not None
        if ended.done():
            return ended.result()
        done = await driver.submit(task_id, line, work, timeout)
        if done.ended is Ended.TIMED_OUT:
            return None
        if done.ended is Ended.EXITED:
            return await asyncio.shield(ended)
        if done.ended is Ended.NOT_TAKEN:  # ending before reading it: the pool gives it to a new worker
            try:
                await asyncio.wait_for(asyncio.shield(ended), timeout)
            except TimeoutError:  # a closed stdin, but still running: stopped like a hung worker
                return None
            return done
        if done.ended is Ended.BROKEN:  # a bug: the event fails as unexpected, the pool stops the worker
            raise RuntimeError(f"warm worker {self.name}: {done.error}")
        return done

    async def exited_within(self, seconds: float) -> Exited | None:
        """How it ended, if that is seen within `seconds` (an exit already on its way is seen at once)."""
        assert self._ended is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._ended), seconds)
        except TimeoutError:
            return None

    # -- ending -----------------------------------------------------------------

    def _close_stdin(self) -> None:
        if self._driver is not None:
            self._driver.close_stdin()

    async def stop(self, grace: float) -> Exited:
        """Stop it now (runtime stop command / SIGTERM, SIGKILL after `grace`) and wait for the exit."""
        proc, ended = self._proc, self._ended
        assert proc is not None and ended is not None
        self.stopped_by_pilot = True
        self._close_stdin()
        if proc.returncode is None:
            await uncancellable(terminate(self.runtime, self.spec, proc, grace))
        return await uncancellable(asyncio.shield(ended))

    async def close(self, eof_grace: float, stop_grace: float) -> Exited:
        """Close its stdin (the protocol's "no more events"); stop it if it lingers."""
        ended = self._ended
        assert ended is not None
        self.stopped_by_pilot = True
        self._close_stdin()
        try:
            return await asyncio.wait_for(asyncio.shield(ended), eof_grace)
        except TimeoutError:
            LOGGER.warning(
                f"warm worker {self.name} still running {eof_grace:g}s after its stdin closed: stopping it"
            )
        return await self.stop(stop_grace)


async def _read_lines(reader: asyncio.StreamReader, handle: Callable[[bytes], None]) -> None:
    """Hand every line (without its newline) to `handle`; over-long lines in pieces."""
    pending = b""
    while chunk := await reader.read(65536):
        lines, pending = split_lines(pending + chunk)
        for line in lines:
            hand_on(handle, line)
    for line in split_lines(pending, final=True)[0]:
        hand_on(handle, line)
