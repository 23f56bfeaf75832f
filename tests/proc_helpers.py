"""Looking at processes from a test: which pipe ends this process still holds."""

from __future__ import annotations

import os


def pipe_ends_here(pid: int, fd: int) -> list[int]:
    """This process's fds on the same pipe (or file) as `pid`'s `fd`."""
    target = os.readlink(f"/proc/{pid}/fd/{fd}")
    ours = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                ours.append(int(name))
        except OSError:  # the listing's own fd, gone meanwhile
            continue
    return ours
