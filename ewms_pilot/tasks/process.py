"""Run one runtime argv to its end, and make sure nothing of it outlives the call.

The client (docker/podman/apptainer CLI, or the task itself for the process
runtime) starts in a new session, so its process group holds everything it
spawned that did not detach itself. Stopping it (timeout, stop request,
cancellation) is:
- runtimes with a stop command: `stop -t <grace>`, wait briefly for the client
  to exit, SIGKILL the client's group, then force-remove the container;
- others: SIGTERM the group, wait up to `stop_grace` for the group to be gone,
  then SIGKILL the group.
The stop step runs shielded: a second cancellation cannot skip the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import errno
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..runtimes.base import RunSpec, Runtime
from ..runtimes.commands import run_command
from ..runtimes.envfile import open_private, remove_env_file
from .logcap import CappedLog
from .spawn import KILL_WAIT, start_process
from .stall import wait_for_stall

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds beyond the grace allowed for the runtime's stop command itself
STOP_COMMAND_SLACK = 15.0
#: seconds to wait for the client to exit once its container was stopped
CLIENT_EXIT_WAIT = 5.0
#: seconds allowed for the final force-remove of a container
REMOVE_TIMEOUT = 30.0
#: seconds to wait for the output readers after the process ended
DRAIN_WAIT = 5.0
#: how often to look whether the process group is gone
POLL_INTERVAL = 0.05
#: longest line handed to `on_line`; longer ones are split
MAX_LINE = 64 * 1024
#: exit code reported when the argv cannot be started at all (as a shell would)
NOT_STARTED_EXIT_CODE = 127


@dc.dataclass(frozen=True)
class ProcessOutcome:
    """How one run ended."""

    exit_code: int | None  # the client's exit code; negative: killed by that signal
    timed_out: bool  # stopped because `timeout` elapsed
    cancelled: bool  # stopped because `stop` was set (asyncio cancellation re-raises instead)
    duration: float  # seconds from start until it was over (a stop included)
    log_error: OSError | None = None  # writing its stdout/stderr failed (a full disk): output is incomplete
    stalled: bool = False  # stopped because it used no CPU for `stall_timeout` s (tasks/stall.py)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_exists(pgid: int) -> bool:
    """True while a process of group `pgid` is alive; zombies (dead, not yet reaped) don't count.

    Orphaned group members are reaped by the host's init, which may take a
    while: waiting for that would only delay the stop.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:  # no procfs: trust kill(0)
        return True
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                # after "pid (comm)": state, ppid, pgrp, ...
                state, _, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if pgrp == str(pgid).encode() and state not in (b"Z", b"X"):
            return True
    return False


async def uncancellable(aw: Awaitable[T]) -> T:
    """Await `aw` to its end even if we are cancelled meanwhile; re-raise the cancel after."""
    task = asyncio.ensure_future(aw)
    was_cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            was_cancelled = True
    if was_cancelled:
        raise asyncio.CancelledError()
    return result


async def _exited_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), seconds)
    except TimeoutError:
        return False
    return True


async def _group_gone_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if proc.returncode is not None and not group_exists(proc.pid):
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return False


async def terminate(
    runtime: Runtime, spec: RunSpec, proc: asyncio.subprocess.Process, grace: float
) -> None:
    """Stop the client and everything in its process group; returns once it has exited."""
    pgid = proc.pid
    stop_argv = runtime.stop_argv(spec.name, grace)
    if stop_argv is not None:
        try:
            stopped = await run_command(stop_argv, timeout=grace + STOP_COMMAND_SLACK)
            problem = None if stopped.ok else stopped.reason()
        except OSError as e:
            problem = f"cannot run it: {e}"
        if problem is not None and proc.returncode is None:
            # e.g. the container does not exist yet (still being created): the
            # client relays SIGTERM to it, or gives up creating it
            LOGGER.warning(f"{spec.name}: stop command failed ({problem}): signalling the client")
            signal_group(pgid, signal.SIGTERM)
        await _exited_within(proc, CLIENT_EXIT_WAIT)
        signal_group(pgid, signal.SIGKILL)
        remove_argv = runtime.remove_argv(spec.name)
        if remove_argv is not None:
            with contextlib.suppress(OSError):  # gone already is the usual case
                await run_command(remove_argv, timeout=REMOVE_TIMEOUT)
    else:
        signal_group(pgid, signal.SIGTERM)
        if not await _group_gone_within(proc, grace):
            LOGGER.warning(f"{spec.name}: still running {grace:g}s after SIGTERM: sending SIGKILL")
        signal_group(pgid, signal.SIGKILL)
    await proc.wait()
    await _group_gone_within(proc, KILL_WAIT)


def _deliver(on_line: Callable[[str, str], None], stream: str, raw: bytes) -> None:
    try:
        on_line(stream, raw.decode("utf-8", "replace").rstrip("\r"))
    except Exception:  # a faulty progress callback must not break the task
        LOGGER.exception("on_line callback failed")


async def _pump(
    reader: asyncio.StreamReader,
    sink: CappedLog,
    stream: str,
    on_line: Callable[[str, str], None] | None,
) -> None:
    """Copy `reader` to `sink` as it comes, handing each complete line to `on_line`."""
    try:
        await _copy(reader, sink, stream, on_line)
    finally:
        sink.finish()


async def _copy(
    reader: asyncio.StreamReader,
    sink: CappedLog,
    stream: str,
    on_line: Callable[[str, str], None] | None,
) -> None:
    pending = b""
    while chunk := await reader.read(65536):
        sink.write(chunk)
        if on_line is None:
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            while len(line) > MAX_LINE:  # a huge line is handed over in pieces
                _deliver(on_line, stream, line[:MAX_LINE])
                line = line[MAX_LINE:]
            _deliver(on_line, stream, line)
        while len(pending) > MAX_LINE:
            _deliver(on_line, stream, pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
    if pending and on_line is not None:
        _deliver(on_line, stream, pending)


async def _drain(pumps: list[asyncio.Task[None]]) -> None:
    """Let the readers finish (EOF); cancel them if a detached process holds the pipes."""
    if not pumps:
        return
    _, pending = await asyncio.wait(pumps, timeout=DRAIN_WAIT)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)


async def _wait_for_end(
    proc: asyncio.subprocess.Process,
    timeout: float | None,
    stop: asyncio.Event | None,
    stall: asyncio.Future[None] | None = None,
) -> tuple[bool, bool, bool]:
    """(timed_out, stop_requested, stalled), all False when the client exited by itself."""
    exited: asyncio.Task[int] = asyncio.ensure_future(proc.wait())
    waiters: set[asyncio.Future[Any]] = {exited}
    stop_waiter: asyncio.Task[bool] | None = None
    if stop is not None:
        stop_waiter = asyncio.ensure_future(stop.wait())
        waiters.add(stop_waiter)
    if stall is not None:
        waiters.add(stall)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            if not waiter.done():
                waiter.cancel()
    if exited in done:
        return False, False, False
    if stop_waiter is not None and stop_waiter in done:
        return False, True, False
    if stall is not None and stall in done:
        return False, False, True
    return True, False, False


def _require_executable(cmd: str, env: Mapping[str, str] | None, cwd: Path | None) -> None:
    """Raise the OSError exec would raise for a missing or non-executable command."""
    if os.sep in cmd:
        path = Path(cwd or ".") / cmd
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd)
        if not os.access(path, os.X_OK) or path.is_dir():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), cmd)
    elif shutil.which(cmd, path=(env if env is not None else os.environ).get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd)


async def run_to_completion(
    runtime: Runtime,
    spec: RunSpec,
    *,
    stdout_path: Path,
    stderr_path: Path,
    timeout: float | None,
    stop_grace: float = 5.0,
    on_line: Callable[[str, str], None] | None = None,
    stop: asyncio.Event | None = None,
    log_max: int | None = None,
    stall_timeout: float | None = None,
) -> ProcessOutcome:
    """Run `runtime.run_argv(spec)` until it exits, times out, or `stop` is set.

    stdout/stderr go to the two files (through `on_line(stream, line)` as well
    when given: stream is "stdout" or "stderr"), each capped at `log_max` bytes
    (head and tail kept, `logcap`). With `stall_timeout`, a task whose CPU
    time does not grow for that long is stopped (`stalled`). On asyncio cancellation the
    process is stopped the same way, then CancelledError is re-raised. When it
    returns or raises, no process of the run is left in its process group and
    no container of it is left running.
    """
    command = runtime.run_argv(spec)
    env = runtime.process_env(spec, os.environ)
    cwd = runtime.process_cwd(spec)
    loop = asyncio.get_running_loop()
    try:
        # unbuffered: a write that fails for space fails once, nothing is left to fail again at close;
        # new files, never a link's target (`open_private`): a task may have written their dir
        with (
            os.fdopen(open_private(stdout_path), "wb", buffering=0) as out_file,
            os.fdopen(open_private(stderr_path), "wb", buffering=0) as err_file,
        ):
            runtime.write_env_file(spec)  # owner-only; the client reads it as it starts
            started = loop.time()
            piped = on_line is not None or log_max is not None
            try:
                _require_executable(command[0], env, cwd)  # setpriv would only say so in its own words
                proc = await start_process(  # wait() returns at the exit, not when the pipes close
                    *runtime.launch_argv(spec),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if piped else out_file,
                    stderr=subprocess.PIPE if piped else err_file,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as e:
                # e.g. the task command does not exist: a task failure, told in its stderr
                err_file.write(f"ewms-pilot: cannot start {command[0]!r}: {e.strerror}\n".encode())
                return ProcessOutcome(NOT_STARTED_EXIT_CODE, False, False, loop.time() - started)
            LOGGER.debug(f"{spec.name}: started (pid {proc.pid})")

            pumps: list[asyncio.Task[None]] = []
            caps = [CappedLog(out_file, log_max), CappedLog(err_file, log_max)]
            if piped:
                assert proc.stdout is not None and proc.stderr is not None
                pumps = [
                    asyncio.create_task(_pump(proc.stdout, caps[0], "stdout", on_line)),
                    asyncio.create_task(_pump(proc.stderr, caps[1], "stderr", on_line)),
                ]

            timed_out = stop_requested = stalled = False
            stall = None
            if stall_timeout is not None:
                pid = proc.pid
                stall = asyncio.ensure_future(
                    wait_for_stall(lambda: runtime.cpu_reader(spec, pid), stall_timeout, spec.name)
                )
            try:
                timed_out, stop_requested, stalled = await _wait_for_end(proc, timeout, stop, stall)
                if timed_out or stop_requested or stalled:
                    why = (
                        f"timed out after {timeout:g}s" if timed_out
                        else f"used no CPU for {stall_timeout:g}s" if stalled
                        else "stop requested"
                    )  # fmt: skip
                    LOGGER.info(f"{spec.name}: {why}: stopping it")
                    await uncancellable(terminate(runtime, spec, proc, stop_grace))
            except BaseException:  # cancelled (or a bug): stop it before letting go
                if proc.returncode is None:  # else it ended, or was stopped above already
                    LOGGER.info(f"{spec.name}: cancelled: stopping it")
                    await uncancellable(terminate(runtime, spec, proc, stop_grace))
                raise
            finally:
                ended = loop.time()
                # whatever the task left behind in its group (background children)
                if group_exists(proc.pid):
                    signal_group(proc.pid, signal.SIGKILL)
                    await uncancellable(_group_gone_within(proc, KILL_WAIT))
                await uncancellable(_drain(pumps))
                proc.close_pipes()  # what a detached process still holds
    finally:
        remove_env_file(spec.env_file)
    log_error = next((c.error for c in caps if c.error is not None), None)
    return ProcessOutcome(proc.returncode, timed_out, stop_requested, ended - started, log_error, stalled)
