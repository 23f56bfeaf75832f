"""Have the kernel SIGTERM a task's client process when the pilot dies (Linux `PR_SET_PDEATHSIG`).

A SIGKILLed pilot cannot stop what it started. With the parent-death signal
set on the child, the docker/podman client (or the host process) gets SIGTERM
the moment the pilot is gone; the OCI client forwards it to the container,
whose `--init` passes it to the task.

It is set by exec'ing the command through util-linux's `setpriv --pdeathsig
TERM --`, not with a Python `preexec_fn`: a `preexec_fn` makes Python fork the
whole pilot the slow way and blocks the event loop about 8 ms per task
(measured in benchmarks/). Without `setpriv` (not Linux) the argv runs as is,
and the orphan sweep of the next pilot is the safety net.
"""

from __future__ import annotations

import shutil
import sys

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """`argv`, run so that it gets SIGTERM when this process dies."""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
