"""The two files of a pilot job, written the way EWMS writes them (used by demo.py and the tests).

- the env file as the task-management service (TMS) writes it: every value
  `str()`-ed (a list becomes Python's `str(list)`), newlines turned to spaces,
  shell-quoted, one `export` per variable, sorted, between `set -x` and `set +x`;
- `pilot.sub` from this directory with the pilot image as the only substitution
  (and, for a test, the number of jobs).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENVFILE_NAME = "ewms_htcondor_envfile.sh"
SUB_FILE = HERE / "pilot.sub"


def tms_envfile_text(env: Mapping[str, object]) -> str:
    """The text of `ewms_htcondor_envfile.sh` for `env`."""
    lines = [
        "#!/bin/bash",
        "",
        "# Environment setup for an EWMS pilot (written the way the TMS writes it)",
        "set -x",
        *(f"export {k}={shlex.quote(str(env[k]).replace(chr(10), ' '))}" for k in sorted(env)),
        "set +x",
        "",
        "# End of environment file",
        "",
    ]
    return "\n".join(lines)


def submit_file_text(image: str, *, queue: int | None = None) -> str:
    """pilot.sub with `container_image = image` (and `queue N` when given)."""
    out = []
    for line in SUB_FILE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "container_image":
            line = f"container_image         = {image}"
        elif queue is not None and line.startswith("queue"):
            line = f"queue {queue}"
        out.append(line)
    return "\n".join(out) + "\n"


def write_job_dir(
    job_dir: Path, env: Mapping[str, object], image: str, *, queue: int | None = None
) -> None:
    """Put the env file (owner-only: it holds broker tokens) and pilot.sub into `job_dir`."""
    job_dir.mkdir(parents=True, exist_ok=True)
    envfile = job_dir / ENVFILE_NAME
    envfile.write_text(tms_envfile_text(env))
    envfile.chmod(0o600)
    (job_dir / "pilot.sub").write_text(submit_file_text(image, queue=queue))
