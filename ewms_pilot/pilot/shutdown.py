"""Why a pilot stops, as a value carrying its reason, its grace and its exit code."""

from __future__ import annotations

import dataclasses as dc
import enum

from ..exitcodes import ExitCode


class StopCause(str, enum.Enum):
    """The kinds of ending; each maps to one exit code."""

    QUEUE_EMPTY = "queue-empty"  # normal end
    TASK_ERRORS = "task-errors"  # stop-on-error tripped
    SIGNAL = "signal"  # eviction / Ctrl-C
    BROKER = "broker"  # connection lost past its deadline
    INIT_FAILED = "init-failed"
    CONFIG = "config"  # a setting found invalid only when used (e.g. the local queue's path)
    FATAL = "fatal"  # unexpected exception
    RUNTIME = "runtime"  # container runtime / image unusable on this node


EXIT_CODES = {
    StopCause.QUEUE_EMPTY: ExitCode.OK,
    StopCause.TASK_ERRORS: ExitCode.TASK_FAILED,
    StopCause.SIGNAL: ExitCode.EVICTED,
    StopCause.BROKER: ExitCode.BROKER,
    StopCause.INIT_FAILED: ExitCode.INIT_FAILED,
    StopCause.CONFIG: ExitCode.CONFIG,
    StopCause.FATAL: ExitCode.INTERNAL,
    StopCause.RUNTIME: ExitCode.RUNTIME_UNAVAILABLE,
}


@dc.dataclass(frozen=True)
class StopRequest:
    """A request to stop: running tasks get `grace` seconds (None = wait for them all)."""

    cause: StopCause
    reason: str
    grace: float | None = None

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.cause]
