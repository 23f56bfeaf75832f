"""`consume_and_reply(...)`: the Python entry point, keyword-compatible with ewms-pilot 1.x.

Each keyword defaults to its `EWMS_PILOT_*` environment variable; a keyword
given explicitly wins. Unlike 1.x, nothing is read at import time.
"""

from __future__ import annotations

import os
from typing import Any

from .config.loader import load_config
from .pilot.runner import run_with_signals
from .pilot.scheduler import Pilot
from .pilot.shutdown import StopCause

# keyword -> environment variable it overrides
KWARG_TO_ENV = {
    "task_image": "EWMS_PILOT_TASK_IMAGE",
    "task_args": "EWMS_PILOT_TASK_ARGS",
    "task_timeout": "EWMS_PILOT_TASK_TIMEOUT",
    "max_concurrent_tasks": "EWMS_PILOT_MAX_CONCURRENT_TASKS",
    "queue_incoming": "EWMS_PILOT_QUEUE_INCOMING",
    "queue_incoming_auth_token": "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN",
    "queue_incoming_broker_type": "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE",
    "queue_incoming_broker_address": "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS",
    "prefetch": "EWMS_PILOT_PREFETCH",
    "timeout_wait_for_first_message": "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE",
    "timeout_incoming": "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING",
    "queue_outgoing": "EWMS_PILOT_QUEUE_OUTGOING",
    "queue_outgoing_auth_token": "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN",
    "queue_outgoing_broker_type": "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE",
    "queue_outgoing_broker_address": "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS",
    "infile_ext": "EWMS_PILOT_INFILE_EXT",
    "outfile_ext": "EWMS_PILOT_OUTFILE_EXT",
    "init_image": "EWMS_PILOT_INIT_IMAGE",
    "init_args": "EWMS_PILOT_INIT_ARGS",
    "init_timeout": "EWMS_PILOT_INIT_TIMEOUT",
    "quarantine_time": "EWMS_PILOT_QUARANTINE_TIME",
}


class PilotStoppedError(RuntimeError):
    """The pilot ended for a reason other than an empty queue; `exit_code` says which."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


async def consume_and_reply(**kwargs: Any) -> None:
    """Run a pilot until the incoming queue stays empty; raise `PilotStoppedError` otherwise.

    Raises `ConfigError` (before connecting anywhere) for invalid settings and
    `TypeError` for an unknown keyword.
    """
    unknown = set(kwargs) - set(KWARG_TO_ENV)
    if unknown:
        raise TypeError(f"consume_and_reply() got unexpected keyword(s): {', '.join(sorted(unknown))}")
    overrides = {KWARG_TO_ENV[k]: v for k, v in kwargs.items() if v is not None}
    cfg = load_config(os.environ, overrides)
    request = await run_with_signals(Pilot(cfg))
    if request.cause != StopCause.QUEUE_EMPTY:
        raise PilotStoppedError(request.reason, int(request.exit_code))
