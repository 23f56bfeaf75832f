"""`consume_and_reply(...)`: the Python entry point, call-compatible with ewms-pilot 1.x.

The parameters are 1.x's, in 1.x's order (so positional calls work). Each one
defaults to its `EWMS_PILOT_*` environment variable, read when the function is
called (1.x read them at import); a value given explicitly wins, and an
explicit `None` means the variable's built-in default. Every other setting
comes from the environment, exactly as for the CLI.

What a caller can catch is what 1.x raised, as subclasses of 1.x's types:
`InitContainerError` (a `ContainerRunError`) when the init container failed or
timed out, `TasksFailedError` (a `ContainerRunError` and a `RuntimeError`)
naming every failed task with its traceback, `PilotStoppedError` (a
`RuntimeError`) for any other early end, and `ConfigError` for bad settings.
"""

from __future__ import annotations

import dataclasses as dc
import inspect
import os
from collections.abc import Sequence

from .cli.logs import install_scrubber
from .config.loader import load_config
from .config.redact import scrub
from .pilot.runner import run_with_signals
from .pilot.scheduler import Pilot
from .pilot.shutdown import StopCause
from .tasks.errors import ContainerRunError, TaskFailure, TaskTimeoutError

#: the id under which `Pilot.failures` holds the init container's failure
INIT_FAILURE_ID = "init"


@dc.dataclass(frozen=True)
class FromEnv:
    """A parameter's default: the value of environment variable `name` when called."""

    name: str

    def __repr__(self) -> str:
        return f"${self.name}"


class PilotStoppedError(RuntimeError):
    """The pilot ended for a reason other than an empty queue; `exit_code` says which."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class InitContainerError(ContainerRunError, RuntimeError):
    """The init container failed or timed out, so no event was taken (1.x raised `ContainerRunError`).

    `str()` is `init-container failed (exit code N): <its traceback or stderr tail>`;
    `failure` is how it failed (a `ContainerRunError` or `TaskTimeoutError`) and
    `exit_code` the container's exit code (None after a timeout).
    """

    def __init__(self, failure: TaskFailure) -> None:
        self.failure = failure
        code = getattr(failure, "exit_code", None)
        if isinstance(failure, TaskTimeoutError):
            what = f"init-container failed: {failure.reason}"
        else:
            shown = failure.detail or failure.reason
            what = f"init-container failed (exit code {code}): {shown}"
        super().__init__(failure.reason, exit_code=code, detail=failure.detail)
        self.args = (scrub(what),)


class TasksFailedError(ContainerRunError, RuntimeError):
    """Tasks failed during the run (1.x raised one exception naming them all).

    `failures` lists (task id, failure); `str()` starts with one line naming
    every failed task and its reason, followed by each task's traceback
    (`detail`). The pilot's own exit code would be 3 (see README, "Exit codes").
    """

    def __init__(self, failures: Sequence[tuple[str, TaskFailure]]) -> None:
        self.failures = list(failures)
        summary = "; ".join(
            f"task {task_id}: {type(f).__name__}: {f.reason}" for task_id, f in self.failures
        )
        head = f"{len(self.failures)} TASK(S) FAILED: {summary}"
        blocks = [
            f"--- task {task_id} ({type(f).__name__}) ---\n{f.detail}"
            for task_id, f in self.failures
            if f.detail
        ]
        super().__init__(head, detail="\n".join(blocks))
        self.args = (scrub("\n".join([head, *blocks])),)


async def consume_and_reply(
    task_image: str | None | FromEnv = FromEnv("EWMS_PILOT_TASK_IMAGE"),
    task_args: str | None | FromEnv = FromEnv("EWMS_PILOT_TASK_ARGS"),
    task_timeout: float | None | FromEnv = FromEnv("EWMS_PILOT_TASK_TIMEOUT"),
    max_concurrent_tasks: int | None | FromEnv = FromEnv("EWMS_PILOT_MAX_CONCURRENT_TASKS"),
    #
    queue_incoming: str | None | FromEnv = FromEnv("EWMS_PILOT_QUEUE_INCOMING"),
    queue_incoming_auth_token: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN"
    ),
    queue_incoming_broker_type: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE"
    ),
    queue_incoming_broker_address: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"
    ),
    prefetch: int | None | FromEnv = FromEnv("EWMS_PILOT_PREFETCH"),
    timeout_wait_for_first_message: float | None | FromEnv = FromEnv(
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE"
    ),
    timeout_incoming: float | None | FromEnv = FromEnv("EWMS_PILOT_TIMEOUT_QUEUE_INCOMING"),
    #
    queue_outgoing: str | None | FromEnv = FromEnv("EWMS_PILOT_QUEUE_OUTGOING"),
    queue_outgoing_auth_token: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN"
    ),
    queue_outgoing_broker_type: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE"
    ),
    queue_outgoing_broker_address: str | None | FromEnv = FromEnv(
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS"
    ),
    #
    infile_ext: str | None | FromEnv = FromEnv("EWMS_PILOT_INFILE_EXT"),
    outfile_ext: str | None | FromEnv = FromEnv("EWMS_PILOT_OUTFILE_EXT"),
    #
    init_image: str | None | FromEnv = FromEnv("EWMS_PILOT_INIT_IMAGE"),
    init_args: str | None | FromEnv = FromEnv("EWMS_PILOT_INIT_ARGS"),
    init_timeout: float | None | FromEnv = FromEnv("EWMS_PILOT_INIT_TIMEOUT"),
    #
    quarantine_time: float | None | FromEnv = FromEnv("EWMS_PILOT_QUARANTINE_TIME"),
) -> None:
    """Run a pilot until the incoming queue stays empty (1.x's signature and order).

    Raises `ConfigError` (before connecting anywhere) for invalid settings,
    `InitContainerError` if the init container failed, `TasksFailedError` if
    any task failed, and `PilotStoppedError` for any other early end
    (eviction signal, broker lost, runtime unusable).
    """
    given = locals()
    overrides = {
        default.name: given[name]
        for name, default in _DEFAULTS.items()
        if not isinstance(given[name], FromEnv)
    }
    install_scrubber()  # the caller's log handlers, too, must never show a token
    pilot = Pilot(load_config(os.environ, overrides))
    request = await run_with_signals(pilot)
    raise_for_outcome(request.cause, request.reason, int(request.exit_code), pilot.failures)


def raise_for_outcome(
    cause: StopCause, reason: str, exit_code: int, failures: Sequence[tuple[str, TaskFailure]]
) -> None:
    """Raise what a 1.x caller expects for this ending (nothing for a clean one)."""
    init = [f for task_id, f in failures if task_id == INIT_FAILURE_ID]
    if cause == StopCause.INIT_FAILED and init:
        raise InitContainerError(init[-1])
    tasks = [(task_id, f) for task_id, f in failures if task_id != INIT_FAILURE_ID]
    if tasks and (cause.clean or cause == StopCause.TASK_ERRORS):
        raise TasksFailedError(tasks)
    if not cause.clean:
        raise PilotStoppedError(scrub(reason), exit_code)


#: parameter -> its default (`FromEnv`), in 1.x's order
_DEFAULTS: dict[str, FromEnv] = {
    name: p.default
    for name, p in inspect.signature(consume_and_reply).parameters.items()
    if isinstance(p.default, FromEnv)
}

