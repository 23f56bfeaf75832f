"""Median and range of one figure over the rounds, and the ours/reference ratio."""

from __future__ import annotations

import dataclasses as dc
import statistics
from collections.abc import Iterable


@dc.dataclass(frozen=True)
class Summary:
    """A figure over the successful runs of one scenario."""

    median: float
    lo: float
    hi: float
    count: int

    def fmt(self, digits: int = 2) -> str:
        if self.count == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.lo:.{digits}f}–{self.hi:.{digits}f})"


def summarize(values: Iterable[float | None]) -> Summary | None:
    """None when no run produced the figure."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio(ours: Summary | None, ref: Summary | None) -> float | None:
    if ours is None or ref is None or ref.median == 0:
        return None
    return ours.median / ref.median
