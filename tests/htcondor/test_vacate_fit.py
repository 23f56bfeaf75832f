"""The shutdown grace fits in the vacate time HTCondor gives the job (config/vacate.py).

The eviction test in test_pool_eviction.py shows it under a real pool; this one
covers the ad files' cases without one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from config_env import MINIMAL as BASE_ENV

from ewms_pilot.config.loader import load_config

MINIMAL = BASE_ENV | {
    "EWMS_PILOT_SHUTDOWN_GRACE": "30",
}


@pytest.mark.parametrize(
    ("job_ad", "machine_ad", "grace"),
    [
        (None, None, 30.0),  # not an HTCondor job
        ("JobMaxVacateTime = 7\n", "MachineMaxVacateTime = 60\n", 2.0),  # the job's is smaller
        ('Owner = "ewms"\n', "MachineMaxVacateTime = 10 * 2\n", 15.0),  # an expression
        ("JobMaxVacateTime = 3\n", "MachineMaxVacateTime = 600\n", 0.0),  # never below 0
        ("JobMaxVacateTime = 600\n", "MachineMaxVacateTime = 600\n", 30.0),  # fits as is
        ("this is [ not a classad", "", 30.0),  # unusable ads change nothing
    ],
)
def test_grace_is_cut_to_the_vacate_time(
    tmp_path: Path, job_ad: str | None, machine_ad: str | None, grace: float
) -> None:
    environ = dict(MINIMAL)
    for var, text in (("_CONDOR_JOB_AD", job_ad), ("_CONDOR_MACHINE_AD", machine_ad)):
        if text is not None:
            (tmp_path / var).write_text(text)
            environ[var] = str(tmp_path / var)
    assert load_config(environ).shutdown_grace == grace
