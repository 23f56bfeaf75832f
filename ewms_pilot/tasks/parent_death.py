"""Ask the kernel to SIGTERM a task's client process when the pilot dies (Linux `PR_SET_PDEATHSIG`).

A SIGKILLed pilot cannot stop what it started. With this set in the child
between fork and exec, the docker/podman client (or the host process) gets
SIGTERM the moment the pilot is gone; the OCI client forwards it to the
container, whose `--init` passes it to the task. Elsewhere (not Linux) it is
a no-op and the orphan sweep of the next pilot is the safety net.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


# resolved once at import: the function runs in the forked child, where it must do no more than one call
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """`preexec_fn`: SIGTERM this child when its parent exits."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)  # type: ignore[operator]
