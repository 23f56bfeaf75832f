"""Run one short helper command (image check, pull, stop, remove) with a time bound.

The task itself is run by `tasks.process`; this is for the runtime's own
bookkeeping commands, whose output is small and read whole. A command is done
when it exits: a child it left holding its output pipes (a daemon it started)
is given `PIPE_DRAIN` seconds to let go, then its pipes are closed on our side;
it is not waited for, nor taken for the command overrunning its time bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..tasks.spawn import KILL_WAIT, start_process
from .envfile import client_env

#: longest one-line reason taken from a command's output
MAX_REASON = 300
#: seconds to read what is left in a command's pipes once it has exited
PIPE_DRAIN = 2.0


@dc.dataclass(frozen=True)
class CommandResult:
    """How a helper command ended."""

    argv: tuple[str, ...]
    returncode: int | None  # None: it was killed because it overran its time bound
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self) -> str:
        """One line saying why it failed: its last non-empty stderr (else stdout) line."""
        if self.returncode is None:
            return self.stderr
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1][:MAX_REASON]
        return f"exit code {self.returncode}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run `argv` (no shell) and capture its output; kill its process group after `timeout` s.

    `env` is the pilot's own without its settings (`client_env`: broker tokens
    among them) unless given. Raises OSError when `argv[0]` cannot be started.
    """
    proc = await start_process(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(os.environ) if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,  # so a timeout can kill whatever it spawned too
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    readers = [asyncio.ensure_future(_read_into(proc.stdout, out)), asyncio.ensure_future(_read_into(proc.stderr, err))]
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):  # one the kill cannot reach (hung storage) is not waited for
                await asyncio.wait_for(proc.wait(), KILL_WAIT)
            return CommandResult(tuple(argv), None, "", f"{argv[0]} did not finish within {timeout:g}s")
        except BaseException:  # cancelled: never leave the helper running
            _kill_group(proc.pid)
            raise
        await asyncio.wait(readers, timeout=PIPE_DRAIN)
    finally:
        for reader in readers:
            reader.cancel()
        proc.close_pipes()  # before the await (a second cancel there must not leave them open), or at the exit
        await asyncio.gather(*readers, return_exceptions=True)
    return CommandResult(tuple(argv), code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


async def _read_into(stream: asyncio.StreamReader, into: bytearray) -> None:
    """Append what `stream` gives to `into` until EOF (what was read stays there if cancelled)."""
    while chunk := await stream.read(65536):
        into += chunk
