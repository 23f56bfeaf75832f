"""How long HTCondor lets this job shut down, so the shutdown grace fits inside it.

On eviction, `condor_vacate_job` or `condor_rm`, HTCondor sends SIGTERM and
SIGKILLs the job after its vacate time: the smaller of the job's
`JobMaxVacateTime` (`job_max_vacate_time` in the submit file) and the slot's
`MachineMaxVacateTime`. A pilot killed there cannot release its unfinished
events or flush its last chirp report, so under HTCondor the grace is cut to
the vacate time minus what the rest of the shutdown needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

LOGGER = logging.getLogger(__name__)

JOB_AD_VAR = "_CONDOR_JOB_AD"
MACHINE_AD_VAR = "_CONDOR_MACHINE_AD"
#: seconds the pilot needs after the grace: stop tasks, release events, close, chirp
#: (docs/reliability.md: a stop ends within grace + 5 s)
SHUTDOWN_RESERVE = 5.0


def _ad_number(path: str, attr: str) -> float | None:
    """`attr` of the ClassAd file at `path` evaluated to a number, None if absent/unusable."""
    try:
        import classad2  # type: ignore[import-untyped]

        with open(path, encoding="utf-8", errors="replace") as f:
            value = classad2.parseOne(f.read()).eval(attr)
    except Exception as e:  # no bindings, unreadable file, not a ClassAd, undefined attr
        LOGGER.debug(f"no usable {attr} in {path}: {e}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def vacate_seconds(environ: Mapping[str, str]) -> float | None:
    """The job's vacate time under HTCondor (job ad, machine ad), None elsewhere."""
    limits = [
        n
        for var, attr in ((JOB_AD_VAR, "JobMaxVacateTime"), (MACHINE_AD_VAR, "MachineMaxVacateTime"))
        if (path := environ.get(var, "").strip()) and (n := _ad_number(path, attr)) is not None
    ]
    return min(limits) if limits else None


def fit_grace(grace: float, vacate: float | None) -> float:
    """`grace`, cut so that grace + SHUTDOWN_RESERVE fits in `vacate` (never below 0)."""
    if vacate is None or math.isinf(vacate):
        return grace
    return min(grace, max(vacate - SHUTDOWN_RESERVE, 0.0))
