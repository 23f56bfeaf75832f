"""One frozen `Outcome` per event: what ran, what was published, what the broker was told.

The handler returns exactly one per event it was handed; the journal record,
the exit summary's counts, the status line and the chirp counts are all
derived from it (`record()`, `Tally.add`), so they cannot disagree.
"""

from __future__ import annotations

import dataclasses as dc
import enum
from typing import Any

from ..queues.base import Settlement
from ..tasks.errors import TaskFailure


class Result(str, enum.Enum):
    """What became of the task itself."""

    SUCCEEDED = "succeeded"  # ran, result published
    NO_OUTPUT = "no-output"  # ran, wrote no outfile: nothing to publish
    FAILED = "failed"  # ran (or could not) and failed: `failure` says why
    CANCELLED = "cancelled"  # stopped by the pilot's shutdown before it ended
    SKIPPED_REDELIVERIES = "skipped-redeliveries"  # over EWMS_PILOT_MAX_REDELIVERIES: never run


#: settlements after which the broker no longer holds the event
GONE_FROM_QUEUE = frozenset({Settlement.ACKED, Settlement.DEAD_LETTERED, Settlement.DROPPED})


@dc.dataclass(frozen=True)
class Outcome:
    """The single account of one event."""

    task_id: str
    pilot_id: str
    event_id: str
    attempts: int  # failed runs before this one (the pilot's own counter)
    delivery_count: int | None  # raw broker deliveries of this copy (None: the broker cannot tell)
    result: Result
    failure: TaskFailure | None
    settlement: Settlement
    published: bool
    start: float  # epoch seconds
    end: float
    exit_code: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    progress: float | None = None  # last `ewms_progress:` seen
    status: str | None = None  # last `ewms_status:` seen

    @property
    def runtime(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.result in (Result.SUCCEEDED, Result.NO_OUTPUT)

    def record(self) -> dict[str, Any]:
        """The journal line (JSON-ready)."""
        return {
            "task_id": self.task_id,
            "pilot_id": self.pilot_id,
            "event_id": self.event_id,
            "attempts": self.attempts,
            "delivery_count": self.delivery_count,
            "start": self.start,
            "end": self.end,
            "result": self.result.value,
            "exit_code": self.exit_code,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "progress": self.progress,
            "status": self.status,
            "error": None if self.failure is None else self.failure.reason,
            "error_type": None if self.failure is None else type(self.failure).__name__,
            "published": self.published,
            "settlement": self.settlement.value,
            "acked": self.settlement in GONE_FROM_QUEUE,
            "dead_lettered": self.settlement == Settlement.DEAD_LETTERED,
        }
