"""Run one short helper command (image check, pull, stop, remove) with a time bound.

The task itself is run by `tasks.process`; this is for the runtime's own
bookkeeping commands, whose output is small and read whole.
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

#: longest one-line reason taken from a command's output
MAX_REASON = 300


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

    Raises OSError when `argv[0]` cannot be started.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,  # so a timeout can kill whatever it spawned too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return CommandResult(tuple(argv), None, "", f"{argv[0]} did not finish within {timeout:g}s")
    except BaseException:  # cancelled: never leave the helper running
        _kill_group(proc.pid)
        raise
    return CommandResult(
        tuple(argv),
        proc.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
    )
