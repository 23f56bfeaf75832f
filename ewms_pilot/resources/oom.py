"""Tell a task that ran out of memory from any other failed task.

Under a container runtime the kernel's OOM killer ends the task with SIGKILL
(the client exits 137). podman on cgroupfs (cgroup v1) reports
`State.OOMKilled=false` even then, and `--rm` removes the container anyway,
so a SIGKILL exit of a task that had a limit, that was neither timed out nor
stopped by the pilot, is taken as out of memory. Under the process runtime
the address-space limit makes allocations fail instead: the task's own last
error line says so (`MemoryError`, `std::bad_alloc`, `Cannot allocate memory`).
"""

from __future__ import annotations

import re

from ..tasks.errors import TaskOutOfMemoryError, extract_detail, extract_error_line
from .sizing import human

#: exit codes of a client whose task was SIGKILLed: 128+9 from a container CLI, -9 directly
KILLED_EXITS = frozenset({137, -9})
_NO_MEMORY = re.compile(
    r"\bMemoryError\b|std::bad_alloc|Cannot allocate memory|out of memory|cannot allocate|"
    r"failed to allocate|mmap failed",
    re.IGNORECASE,
)


def out_of_memory(
    exit_code: int | None, stderr_tail: str, limit: int | None, *, killed_means_oom: bool, apptainer: bool = False
) -> TaskOutOfMemoryError | None:
    """The failure for a task that died of its memory limit, or None when it did not.

    `killed_means_oom`: the runtime enforces the limit with the OOM killer (containers).
    """
    if limit is None or exit_code in (0, None):
        return None
    line = extract_error_line(stderr_tail, apptainer=apptainer)
    if killed_means_oom and exit_code in KILLED_EXITS:
        how = f"killed at its {human(limit)} memory limit (exit code {exit_code})"
    elif _NO_MEMORY.search(line):
        how = f"refused memory at its {human(limit)} memory limit (exit code {exit_code}): {line}"
    else:
        return None
    return TaskOutOfMemoryError(
        f"out of memory: {how}",
        limit=limit,
        exit_code=exit_code,
        stderr_line=line,
        detail=extract_detail(stderr_tail, apptainer=apptainer),
    )
