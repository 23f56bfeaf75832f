"""Why a task failed, as exception types a site can name in `EWMS_PILOT_OKAY_ERRORS`.

The class names match ewms-pilot 1.x so existing OKAY_ERRORS values keep
working; `TaskFailure.names()` lets a site name a base class or a leaf.
This module also pulls the one useful line out of a task's stderr, so a
failure is explained in one log line instead of a dump.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

#: the longest stderr line quoted in a failure message
MAX_ERROR_LINE_CHARS = 500

#: how much of a stderr file `read_tail` reads by default
DEFAULT_TAIL_BYTES = 64 * 1024


def _one_line(text: str) -> str:
    """Join a multi-line text so that a log record stays one line."""
    parts = [p.strip() for p in text.splitlines()]
    return " | ".join(p for p in parts if p)


def _describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "exited (exit code unknown)"
    if exit_code < 0:  # asyncio reports death by signal N as -N
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"was killed by {name} (exit code {exit_code})"
    return f"exited with code {exit_code}"


class TaskFailure(Exception):
    """Base of every way one task can fail; `reason` is one line for the logs."""

    def __init__(self, reason: str) -> None:
        self.reason = _one_line(reason)
        super().__init__(self.reason)

    @classmethod
    def names(cls) -> set[str]:
        """This class's name and those of its bases below `Exception` (for OKAY_ERRORS)."""
        return {k.__name__ for k in cls.__mro__ if issubclass(k, Exception) and k is not Exception}


class ContainerRunError(TaskFailure):
    """The task's container (or process) ended with a non-zero exit code.

    Build the standard message with `ContainerRunError.from_exit(code, line)`.
    """

    def __init__(self, reason: str, *, exit_code: int | None = None, stderr_line: str = "") -> None:
        self.exit_code = exit_code
        self.stderr_line = stderr_line
        super().__init__(reason)

    @classmethod
    def from_exit(cls, exit_code: int | None, stderr_line: str) -> ContainerRunError:
        """`exited with code 3: <line>` (or `was killed by SIGKILL ...` for a signal)."""
        detail = stderr_line if stderr_line else "(no stderr output)"
        return cls(
            f"{_describe_exit(exit_code)}: {detail}", exit_code=exit_code, stderr_line=stderr_line
        )


class TaskTimeoutError(ContainerRunError):
    """The task ran longer than its time limit and was stopped."""

    def __init__(
        self,
        reason: str,
        *,
        timeout: float | None = None,
        exit_code: int | None = None,
        stderr_line: str = "",
    ) -> None:
        self.timeout = timeout
        super().__init__(reason, exit_code=exit_code, stderr_line=stderr_line)

    @classmethod
    def after(cls, timeout: float, stderr_line: str = "") -> TaskTimeoutError:
        """`timed out after 90 s[; last stderr line: <line>]`."""
        tail = f"; last stderr line: {stderr_line}" if stderr_line else ""
        return cls(f"timed out after {timeout:g} s{tail}", timeout=timeout, stderr_line=stderr_line)


class FailurePatternError(ContainerRunError):
    """A stdout/stderr line matched a configured failure regex, even though the exit code was 0."""

    def __init__(
        self, reason: str, *, pattern: str = "", exit_code: int | None = 0, stderr_line: str = ""
    ) -> None:
        self.pattern = pattern
        super().__init__(reason, exit_code=exit_code, stderr_line=stderr_line)

    @classmethod
    def matched(cls, pattern: str, line: str, exit_code: int | None = 0) -> FailurePatternError:
        """`output matched failure pattern '<regex>': <line>`."""
        line = _truncate(line.strip())
        return cls(
            f"output matched failure pattern {pattern!r}: {line}",
            pattern=pattern,
            exit_code=exit_code,
            stderr_line=line,
        )


class InvalidDataForInfileException(TaskFailure):
    """The event's data cannot be written to the infile (wrong type for its extension)."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        self.path = path
        super().__init__(reason)


class InvalidDataFromOutfileException(TaskFailure):
    """The outfile cannot be turned into a published result (bad JSON, binary, too large)."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        self.path = path
        super().__init__(reason)


class TaskCancelledError(TaskFailure):
    """The pilot stopped the task because it is shutting down (its event is nacked)."""

    def __init__(self, reason: str = "the pilot is shutting down") -> None:
        super().__init__(reason)


class ResultTooLargeError(TaskFailure):
    """The task's result can never be published: the outgoing broker refuses it for good.

    Not worth a retry of the publish; the event counts an attempt and is
    dead-lettered with this reason at the limit.
    """

    def __init__(self, reason: str, *, size: int | None = None, limit: int | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(reason)


class TooManyRedeliveriesError(TaskFailure):
    """The broker delivered the event more often than EWMS_PILOT_MAX_REDELIVERIES: it is not run again.

    (Pilots that took it kept dying or being evicted before any task ended.)
    """


def describe_failure(task_id: str, failure: TaskFailure) -> str:
    """The one-line log message for a failed task: its id, the failure type and reason.

    e.g. `task 1a2b3c4d5e6f failed: ContainerRunError: exited with code 1: ValueError: bad input`
    """
    return f"task {task_id} failed: {type(failure).__name__}: {failure.reason}"


# --- stderr parsing -------------------------------------------------------------------

_TRACEBACK_HEADER = re.compile(
    r"^(?P<lead>[ +|]*)(?:Exception Group )?Traceback \(most recent call last\):\s*$"
)
# apptainer's own log lines: "INFO:    Converting SIF file..." and, with --debug,
# "DEBUG   [U=613,P=1]   startContainer()   ..."; ERROR/FATAL lines are kept (they explain).
_APPTAINER_NOISE = re.compile(
    r"^(?:(?:INFO|WARNING|VERBOSE|DEBUG):\s|(?:INFO|WARNING|VERBOSE|DEBUG)\s+\[U=\d+,P=\d+\])"
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _truncate(line: str) -> str:
    if len(line) <= MAX_ERROR_LINE_CHARS:
        return line
    return line[: MAX_ERROR_LINE_CHARS - 1] + "…"


def _exception_line(lines: list[str], header_index: int, lead_len: int) -> str | None:
    """The first non-indented line after a traceback header: `SomeError: message`."""
    for line in lines[header_index + 1 :]:
        if lead_len and line[:lead_len].strip(" +|"):
            continue  # not part of this (exception-group) traceback block
        body = line[lead_len:]
        if body.strip() and not body[0].isspace():
            return body.strip()
    return None


def extract_error_line(stderr_text: str, *, apptainer: bool = False) -> str:
    """The most telling line of a task's stderr, for the failure message.

    The exception line of the last Python traceback when there is one (so in
    chained exceptions the last one wins), else the last non-empty line.
    With `apptainer`, apptainer's own INFO/WARNING/VERBOSE/DEBUG lines are
    skipped (unless that is all there is). Returns "" for an empty stderr.
    """
    lines = [_ANSI_ESCAPE.sub("", ln).rstrip() for ln in stderr_text.splitlines() if ln.strip()]
    if apptainer:
        useful = [ln for ln in lines if not _APPTAINER_NOISE.match(ln)]
        if not useful:  # only apptainer talk: its last line is better than nothing
            return _truncate(lines[-1].strip()) if lines else ""
        lines = useful
    for i in range(len(lines) - 1, -1, -1):
        m = _TRACEBACK_HEADER.match(lines[i])
        if m:
            found = _exception_line(lines, i, len(m.group("lead")))
            if found is not None:
                return _truncate(found)
            break  # a truncated traceback: fall back to the last line
    return _truncate(lines[-1].strip()) if lines else ""


def read_tail(path: Path, max_bytes: int = DEFAULT_TAIL_BYTES) -> str:
    """The last `max_bytes` of a (possibly huge, possibly non-UTF-8) file as text.

    A line cut by the window is dropped, unless it is the only one. Returns ""
    when the file cannot be read (e.g. the task never started): this feeds a
    message, it must never raise.
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - max_bytes)
            f.seek(start)
            chunk = f.read(max_bytes)
    except OSError:
        return ""
    if start > 0:
        newline = chunk.find(b"\n")
        if 0 <= newline < len(chunk) - 1:
            chunk = chunk[newline + 1 :]
    return chunk.decode("utf-8", errors="replace")
