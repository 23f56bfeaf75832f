"""What the pilot is doing and what it has done, as plain values others can read."""

from __future__ import annotations

import dataclasses as dc
import enum
import time
from collections import Counter

from ..queues.base import Settlement
from .outcome import Outcome, Result


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
    """Counts derived from the outcomes; concurrency is `received - finished`, nothing else."""

    received: int = 0  # events handed to a task handler
    crashed: int = 0  # handlers that raised instead of returning an outcome (a bug)
    results: Counter[Result] = dc.field(default_factory=Counter)
    settlements: Counter[Settlement] = dc.field(default_factory=Counter)
    started_at: float = dc.field(default_factory=time.monotonic)
    longest_runtime: float = 0.0  # s: the longest event handling so far (what the lifetime must still fit)

    def add(self, outcome: Outcome) -> None:
        self.results[outcome.result] += 1
        self.settlements[outcome.settlement] += 1
        self.longest_runtime = max(self.longest_runtime, outcome.runtime)

    @property
    def finished(self) -> int:
        return sum(self.results.values()) + self.crashed

    @property
    def running(self) -> int:
        return self.received - self.finished

    @property
    def succeeded(self) -> int:
        return self.results[Result.SUCCEEDED] + self.results[Result.NO_OUTPUT]

    @property
    def no_output(self) -> int:
        return self.results[Result.NO_OUTPUT]

    @property
    def failed(self) -> int:
        return self.results[Result.FAILED] + self.results[Result.SKIPPED_REDELIVERIES] + self.crashed

    @property
    def cancelled(self) -> int:
        return self.results[Result.CANCELLED]

    @property
    def dead_lettered(self) -> int:
        return self.settlements[Settlement.DEAD_LETTERED]

    @property
    def dropped(self) -> int:
        return self.settlements[Settlement.DROPPED]

    @property
    def done(self) -> int:
        return self.succeeded + self.failed
