"""How long this pilot may run, and whether one more task still fits in what is left.

A pilot's job has a walltime: `EWMS_PILOT_LIFETIME` (seconds from the pilot's
start), or the job ad's (`slot.WALLTIME_ATTRS`, counted from the job's
`JobCurrentStartDate`: an image pull before the pilot started has used some
of it). When both are known the earlier end wins. A task is started only if
the time left covers what one takes (`EWMS_PILOT_TASK_TIMEOUT`, else the
longest handling seen so far) plus `END_RESERVE` for the pilot's own ending;
otherwise the pilot stops taking events through the one shutdown controller.
"""

from __future__ import annotations

import dataclasses as dc
import time

from .slot import Slot

#: seconds kept after the last task: publish and settle it, release the rest, close, chirp
END_RESERVE = 5.0


@dc.dataclass(frozen=True)
class Lifetime:
    """When this pilot's time is up (epoch seconds), and which setting said so."""

    seconds: float
    ends_at: float
    source: str

    def describe(self) -> str:
        end = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.ends_at))  # a date: a walltime may be days
        return f"lifetime {self.seconds:g}s ({self.source}), ends {end}"


def find_lifetime(configured: float | None, slot: Slot | None, now: float) -> Lifetime | None:
    """The earliest end of `EWMS_PILOT_LIFETIME` (from `now`) and the job ad's walltime (from the job's start)."""
    found = []
    if configured is not None:
        found.append(Lifetime(configured, now + configured, "EWMS_PILOT_LIFETIME"))
    if slot is not None and slot.walltime is not None:
        started = slot.job_started if slot.job_started is not None and slot.job_started <= now else now
        found.append(Lifetime(slot.walltime, started + slot.walltime, slot.walltime_source))
    return min(found, key=lambda lt: lt.ends_at, default=None)


def expected_task_seconds(task_timeout: float | None, longest_seen: float) -> float:
    """What one more task is expected to take: its time limit if set, else the longest one so far."""
    return task_timeout if task_timeout is not None else longest_seen


def task_fits(left: float, expected: float) -> bool:
    """Whether a task started now ends, with the pilot's ending, before the lifetime does."""
    return left >= expected + END_RESERVE
