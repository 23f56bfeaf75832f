"""Why a task failed, as exception types a site can name in `EWMS_PILOT_OKAY_ERRORS`.

The class names match ewms-pilot 1.x so existing OKAY_ERRORS values keep
working; `TaskFailure.names()` lets a site name a base class, a leaf, or the
builtin name 1.x users wrote for the same failure (`TimeoutError`).
Every failure carries two texts: `reason`, one line free of per-task noise
(task ids, temp paths, timestamps) so that identical failures on many pilots
aggregate into one count where HTCondor/TMS collect them, and `detail`, the
task's own last Python traceback (else the tail of its stderr) for whoever
debugs it. This module also pulls the one useful line out of a task's stderr.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import ClassVar, Self

#: the longest stderr line quoted in a failure message
MAX_ERROR_LINE_CHARS = 500

#: the longest `detail` kept (a traceback of a deep recursion can be megabytes)
MAX_DETAIL_CHARS = 16_000

#: stderr lines kept as `detail` when there is no traceback
DETAIL_TAIL_LINES = 20

#: how much of a stderr file `read_tail` reads by default
DEFAULT_TAIL_BYTES = 64 * 1024


def _one_line(text: str) -> str:
    """Join a multi-line text so that a log record stays one line."""
    parts = [p.strip() for p in text.splitlines()]
    return " | ".join(p for p in parts if p)


# Per-task noise, most specific first. Task ids are 12 hex digits, the first a letter (taskdir.new_task_id),
# event ids UUIDs; a path up to a task's own directory differs on every pilot.
_NOISE = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"(?<![0-9A-Za-z])(?=[0-9]*[a-f])[0-9a-f]{12}(?:[0-9a-f]{20})?(?![0-9A-Za-z])"), "<id>"),
    (re.compile(r"(?:/[^\s/'\"<>]+)*/<id>(?=/|['\"\s]|$)"), "<task dir>"),
    (re.compile(r"\btmp[a-z0-9_]{8}\b"), "tmp<x>"),
    (re.compile(r"\bdir_\d+\b"), "dir_<n>"),
    (
        re.compile(
            r"\b(?:\d{4}-\d{2}-\d{2}[T ])?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b"
        ),
        "<time>",
    ),
)


def aggregatable(text: str) -> str:
    """`text` with task ids, temp paths and timestamps replaced by placeholders."""
    for pattern, placeholder in _NOISE:
        text = pattern.sub(placeholder, text)
    return text


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
    """Base of every way one task can fail; `reason` is one line for logs and chirp."""

    #: builtin exception names 1.x users wrote in OKAY_ERRORS for this failure
    builtin_aliases: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, reason: str, *, detail: str = "") -> None:
        self.reason = aggregatable(_one_line(reason))
        self.detail = detail
        super().__init__(self.reason)

    @classmethod
    def names(cls) -> set[str]:
        """Names that match this failure in OKAY_ERRORS: its class, its bases below
        `Exception`, and the builtin names 1.x raised for the same failure."""
        own = {k.__name__ for k in cls.__mro__ if issubclass(k, Exception) and k is not Exception}
        return own | cls.builtin_aliases


class ContainerRunError(TaskFailure):
    """The task's container (or process) ended with a non-zero exit code.

    Build the standard message with `ContainerRunError.from_exit(code, stderr_tail)`.
    """

    def __init__(
        self,
        reason: str,
        *,
        exit_code: int | None = None,
        stderr_line: str = "",
        detail: str = "",
    ) -> None:
        self.exit_code = exit_code
        self.stderr_line = stderr_line
        super().__init__(reason, detail=detail)

    @classmethod
    def from_exit(
        cls, exit_code: int | None, stderr_tail: str, *, apptainer: bool = False
    ) -> ContainerRunError:
        """`exited with code 3: <line>` (or `was killed by SIGKILL ...` for a signal).

        `stderr_tail` is the end of the task's stderr (`read_tail`); the line quoted and
        the `detail` are taken from it.
        """
        line = extract_error_line(stderr_tail, apptainer=apptainer)
        return cls(
            f"{_describe_exit(exit_code)}: {line or '(no stderr output)'}",
            exit_code=exit_code,
            stderr_line=line,
            detail=extract_detail(stderr_tail, apptainer=apptainer),
        )


class TaskTimeoutError(ContainerRunError):
    """The task ran longer than its time limit and was stopped."""

    builtin_aliases = frozenset({"TimeoutError"})
    #: what `after` says the limit did ({s}: its seconds)
    limit_text: ClassVar[str] = "timed out after {s:g} s"

    def __init__(
        self,
        reason: str,
        *,
        timeout: float | None = None,
        exit_code: int | None = None,
        stderr_line: str = "",
        detail: str = "",
    ) -> None:
        self.timeout = timeout
        super().__init__(reason, exit_code=exit_code, stderr_line=stderr_line, detail=detail)

    @classmethod
    def after(cls, timeout: float, stderr_tail: str = "", *, apptainer: bool = False) -> Self:
        """`timed out after 90 s[; last stderr line: <line>]` (`limit_text`), from the end of its stderr."""
        line = extract_error_line(stderr_tail, apptainer=apptainer)
        tail = f"; last stderr line: {line}" if line else ""
        return cls(
            cls.limit_text.format(s=timeout) + tail,
            timeout=timeout,
            stderr_line=line,
            detail=extract_detail(stderr_tail, apptainer=apptainer),
        )


class TaskStalledError(TaskTimeoutError):
    """The task used no CPU for EWMS_PILOT_TASK_STALL_TIMEOUT seconds (hung, or waiting for ever) and was stopped."""

    limit_text: ClassVar[str] = "used no CPU for {s:g} s (EWMS_PILOT_TASK_STALL_TIMEOUT)"


class TaskOutOfMemoryError(ContainerRunError):
    """The task went over its memory limit (EWMS_PILOT_TASK_MEMORY) and was killed or refused memory.

    Built by `resources/oom.py` from the exit and the stderr tail; `limit` in bytes,
    `peak` when the runtime tells it (None otherwise).
    """

    builtin_aliases = frozenset({"MemoryError"})

    def __init__(
        self,
        reason: str,
        *,
        limit: int | None = None,
        peak: int | None = None,
        exit_code: int | None = None,
        stderr_line: str = "",
        detail: str = "",
    ) -> None:
        self.limit = limit
        self.peak = peak
        super().__init__(reason, exit_code=exit_code, stderr_line=stderr_line, detail=detail)


class DiskFullError(ContainerRunError):
    """The disk where task dirs live filled up under the task (ENOSPC / EDQUOT).

    Built by `resources/disk.py`: the task said so, or the pilot could not write
    its infile or its stdout/stderr. The pilot survives it (docs/resources.md).
    """


class FailurePatternError(ContainerRunError):
    """A stdout/stderr line matched a configured failure regex, even though the exit code was 0."""

    def __init__(
        self, reason: str, *, pattern: str = "", exit_code: int | None = 0, stderr_line: str = ""
    ) -> None:
        self.pattern = pattern
        super().__init__(reason, exit_code=exit_code, stderr_line=stderr_line, detail=stderr_line)

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
    lines = _clean_lines(stderr_text, apptainer)
    for i in range(len(lines) - 1, -1, -1):
        m = _TRACEBACK_HEADER.match(lines[i])
        if m:
            found = _exception_line(lines, i, len(m.group("lead")))
            if found is not None:
                return _truncate(found)
            break  # a truncated traceback: fall back to the last line
    return _truncate(lines[-1].strip()) if lines else ""


def _clean_lines(stderr_text: str, apptainer: bool) -> list[str]:
    """Non-blank lines without ANSI colours (and without apptainer's own talk, unless that is all)."""
    lines = [_ANSI_ESCAPE.sub("", ln).rstrip() for ln in stderr_text.splitlines() if ln.strip()]
    if apptainer:
        useful = [ln for ln in lines if not _APPTAINER_NOISE.match(ln)]
        if useful:
            return useful
    return lines


def extract_detail(stderr_text: str, *, apptainer: bool = False) -> str:
    """The task's last Python traceback (header to end of stderr), else the last stderr lines.

    In chained exceptions the last traceback is the one that ended the task.
    At most `MAX_DETAIL_CHARS`: a longer text keeps its start and its end.
    """
    lines = _clean_lines(stderr_text, apptainer)
    headers = [(i, m.group("lead")) for i, ln in enumerate(lines) if (m := _TRACEBACK_HEADER.match(ln))]
    # a header inside an exception group is led by "|"; the group's own header by "  + "
    top_level = [i for i, lead in headers if "|" not in lead]
    if top_level or headers:
        start = (top_level or [i for i, _ in headers])[-1]
    else:
        start = max(0, len(lines) - DETAIL_TAIL_LINES)
    text = "\n".join(lines[start:])
    if len(text) <= MAX_DETAIL_CHARS:
        return text
    head = MAX_DETAIL_CHARS // 4
    tail = MAX_DETAIL_CHARS - head
    return f"{text[:head]}\n…[{len(text) - head - tail} characters cut]…\n{text[-tail:]}"


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
