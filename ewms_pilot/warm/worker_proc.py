"""One warm worker process: its pipes, its log file, and its one in-flight request.

The worker is started like a one-shot task (`runtime.run_argv`, new session,
so its whole process group can be stopped) but with stdin kept open. A
reader task sorts its stdout into protocol answers and noise; noise and
stderr go to the worker's log file. A watcher task notices the exit and
turns it into the answer of the request in flight, if any.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses as dc
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..runtimes.base import RunSpec, Runtime
from ..runtimes.envfile import open_private, remove_env_file
from ..tasks.errors import extract_error_line

# The stop sequence (runtime stop command or group signals, then SIGKILL) is the
# one-shot tasks' own: a warm worker must not outlive the pilot any more than they do.
from ..tasks.process import group_exists, signal_group, terminate, uncancellable
from .protocol import Answer, parse_answer

LOGGER = logging.getLogger("ewms_pilot.warm")

#: longest stdout/stderr line handled whole; longer ones are cut (and are never answers)
MAX_LINE = 1024 * 1024
#: stderr lines kept in memory to explain a crash in one line
STDERR_LINES_KEPT = 50
#: seconds to let the readers reach EOF once the process has exited
DRAIN_WAIT = 5.0


@dc.dataclass(frozen=True)
class Exited:
    """The worker process ended; `stderr_line` is the most telling line of its stderr."""

    exit_code: int | None
    stderr_line: str


Reply = Answer | Exited


class WarmWorker:
    """A long-lived task process fed one request at a time."""

    def __init__(self, runtime: Runtime, spec: RunSpec, log_path: Path) -> None:
        self.runtime = runtime
        self.spec = spec
        self.log_path = log_path
        self.completed = 0  # events answered (ok or not) by this process
        self.stopped_by_pilot = False  # True once the pilot closed or stopped it
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._pending: tuple[str, asyncio.Future[Reply]] | None = None
        self._ended: asyncio.Future[Exited] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.spec.name

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
        log = os.fdopen(await asyncio.to_thread(open_private, self.log_path), "ab")
        try:
            # owner-only; the client reads it as it starts, removed when the worker has exited
            await asyncio.to_thread(self.runtime.write_env_file, self.spec)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            remove_env_file(self.spec.env_file)
            raise
        self._proc, self._log = proc, log
        self._ended = asyncio.get_running_loop().create_future()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(_read_lines(proc.stdout, self._on_stdout)),
            asyncio.create_task(_read_lines(proc.stderr, self._on_stderr)),
        ]
        self._tasks = [*readers, asyncio.create_task(self._watch(proc, readers))]
        LOGGER.info(f"warm worker {self.name} started (pid {proc.pid}, log {self.log_path})")

    # -- output -----------------------------------------------------------------

    def _write_log(self, data: bytes) -> None:
        if self._log is not None and not self._log.closed:
            try:
                self._log.write(data)
                self._log.flush()
            except OSError as e:  # disk full: the protocol must go on regardless
                LOGGER.debug(f"{self.name}: cannot write its log: {e}")

    def _on_stdout(self, raw: bytes) -> None:
        answer = parse_answer(raw.decode("utf-8", "replace"))
        if answer is not None and self._pending is not None and answer.id == self._pending[0]:
            future = self._pending[1]
            if not future.done():
                self.completed += 1
                future.set_result(answer)
                return
        if answer is not None:
            LOGGER.warning(f"{self.name}: answer for event {answer.id!r}, which it was not given: ignored")
        self._write_log(b"[stdout] " + raw + b"\n")

    def _on_stderr(self, raw: bytes) -> None:
        self._write_log(raw + b"\n")
        self._stderr_tail.append(raw.decode("utf-8", "replace"))

    async def _watch(self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]) -> None:
        """Wait for the exit; then settle the request in flight with it."""
        code = await proc.wait()
        remove_env_file(self.spec.env_file)
        if group_exists(proc.pid):  # background children it left behind
            signal_group(proc.pid, signal.SIGKILL)
        _, late = await asyncio.wait(readers, timeout=DRAIN_WAIT)
        for task in late:  # a detached grandchild holds the pipe open
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        line = extract_error_line(
            "\n".join(self._stderr_tail), apptainer=self.runtime.name == "apptainer"
        )
        exited = Exited(code, line)
        if self._log is not None:
            self._log.close()
        assert self._ended is not None
        self._ended.set_result(exited)
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_result(exited)
        level = logging.INFO if self.stopped_by_pilot else logging.WARNING
        LOGGER.log(level, f"warm worker {self.name} exited (code {code}) after {self.completed} event(s)")

    # -- requests ---------------------------------------------------------------

    async def request(self, task_id: str, line: bytes, timeout: float | None) -> Reply | None:
        """Send one request line and wait for its answer (or the exit); None on timeout."""
        proc, ended = self._proc, self._ended
        assert proc is not None and proc.stdin is not None and ended is not None
        if ended.done():
            return ended.result()
        stdin = proc.stdin
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending = (task_id, future)

        try:  # one write into the pipe's buffer; a full buffer (a slow reader) is waited for below
            stdin.write(line)
        except ConnectionError:
            pass  # it is exiting: `_watch` answers with the exit
        try:
            async with asyncio.timeout(timeout):  # no task per request: the per-event path stays short
                with contextlib.suppress(ConnectionError):
                    await stdin.drain()
                return await future
        except TimeoutError:
            return None
        finally:
            self._pending = None

    # -- ending -----------------------------------------------------------------

    def _close_stdin(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._proc.stdin.close()

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
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _safe(handle, line.rstrip(b"\r"))
        while len(pending) > MAX_LINE:
            _safe(handle, pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
    if pending:
        _safe(handle, pending.rstrip(b"\r"))


def _safe(handle: Callable[[bytes], None], line: bytes) -> None:
    try:
        handle(line)
    except Exception:  # a bug here must not stop the reader (the worker would block on a full pipe)
        LOGGER.exception("handling a warm worker's output line failed")
