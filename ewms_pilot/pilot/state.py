"""What the pilot is doing and what it has done, as plain values others can read."""

from __future__ import annotations

import dataclasses as dc
import enum
import time


class PilotState(str, enum.Enum):
    """Lifecycle phases (also reported through chirp)."""

    STARTED = "Started"
    INIT = "RunningInitCommand"  # 1.x's status name, read by TMS
    AWAITING_FIRST = "AwaitingFirstMessage"
    TASKING = "Tasking"
    PENDING_REMAINING = "PendingRemainingTasks"
    DRAINING = "Draining"
    EVICTED = "Evicted"
    FATAL = "FatalError"
    DONE = "Done"


@dc.dataclass
class Tally:
    """Task counts; the only place concurrency is tracked is `running`."""

    received: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    no_output: int = 0
    started_at: float = dc.field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed
