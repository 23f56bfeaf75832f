"""The exit summary: counts, runtime statistics and a small terminal histogram."""

from __future__ import annotations

import statistics
import time

from ..config.redact import scrub
from ..queues.base import Settlement
from .shutdown import StopRequest
from .state import Tally

#: settlements that leave the event in the incoming queue
GIVEN_BACK = (Settlement.REQUEUED, Settlement.RELEASED, Settlement.LEFT)

BAR_WIDTH = 30
BINS = 8


def runtime_stats(runtimes: list[float]) -> dict[str, float]:
    """count / mean / median / min / max of task runtimes in seconds."""
    if not runtimes:
        return {"count": 0}
    return {
        "count": len(runtimes),
        "mean": statistics.fmean(runtimes),
        "median": statistics.median(runtimes),
        "min": min(runtimes),
        "max": max(runtimes),
    }


def histogram(runtimes: list[float], bins: int = BINS, width: int = BAR_WIDTH) -> list[str]:
    """Equal-width bins between min and max, one text bar per bin."""
    if not runtimes:
        return []
    lo, hi = min(runtimes), max(runtimes)
    if hi - lo < 1e-9:
        return [f"  {lo:8.2f}s          | {'#' * width} {len(runtimes)}"]
    bins = min(bins, len(runtimes))
    step = (hi - lo) / bins
    counts = [0] * bins
    for r in runtimes:
        counts[min(int((r - lo) / step), bins - 1)] += 1
    top = max(counts)
    return [
        f"  {lo + i * step:8.2f}-{lo + (i + 1) * step:<8.2f}s | {'#' * round(width * c / top):<{width}} {c}"
        for i, c in enumerate(counts)
    ]


def render_summary(tally: Tally, request: StopRequest, runtimes: list[float]) -> str:
    """The block printed when the pilot ends: counts from the outcomes, statistics from their records' runtimes."""
    elapsed = time.monotonic() - tally.started_at
    given_back = {s.value: n for s, n in sorted(tally.settlements.items()) if s in GIVEN_BACK and n}
    lines = [
        "=" * 60,
        f"ewms-pilot finished: {request.reason} (exit code {int(request.exit_code)})",
        f"  received {tally.received}  succeeded {tally.succeeded}  failed {tally.failed}"
        f"  dead-lettered {tally.dead_lettered}  no-output {tally.no_output}  dropped {tally.dropped}",
    ]
    if given_back:
        lines.append("  back in the queue: " + "  ".join(f"{k} {n}" for k, n in given_back.items()))
    lines.append(f"  wall time {elapsed:.1f}s")
    stats = runtime_stats(runtimes)
    if stats["count"]:
        lines.append(
            "  task runtime (s): count {count:.0f}  mean {mean:.3f}  median {median:.3f}"
            "  min {min:.3f}  max {max:.3f}".format(**stats)
        )
        lines += histogram(runtimes)
    lines.append("=" * 60)
    return scrub("\n".join(lines))  # the reason may quote a broker error
