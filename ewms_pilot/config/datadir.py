"""Where the pilot's data lives, and whether it can live there: decided at load.

Under HTCondor the job's scratch directory is the only place a job may write,
so it is the default there (not only in the image's entrypoint: a plain
vanilla-universe pilot gets it too). The check only looks: nothing is created
until the pilot starts, so `config --check` has no side effects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SCRATCH_VAR = "_CONDOR_SCRATCH_DIR"
REFUSED_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def scratch_dir(environ: Mapping[str, str]) -> str | None:
    """HTCondor's scratch directory for this job, when there is one."""
    value = environ.get(SCRATCH_VAR, "").strip()
    return value or None


def data_dir_problem(data_dir: Path) -> str | None:
    """Why the pilot could not keep its files in `data_dir`, or None if it can."""
    real = Path(os.path.realpath(data_dir))
    for root in REFUSED_ROOTS:
        if real == root or root in real.parents:
            return f"a directory not under {root} ({data_dir} is {real})"
    probe = real
    while not os.path.lexists(probe):  # the first part that exists is where mkdir starts
        probe = probe.parent
    if not probe.is_dir():
        return f"a directory ({probe} is not a directory)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"a directory the pilot (uid {os.geteuid()}) can write ({probe} is not writable)"
    return None
