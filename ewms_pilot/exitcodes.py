"""Process exit codes: one value per way a pilot can end, so a site's wrapper can tell them apart."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Why the pilot process ended (see README, "Exit codes")."""

    OK = 0  # incoming queue stayed empty for the configured time; all work done
    INTERNAL = 1  # a bug: an unexpected exception (traceback logged)
    CONFIG = 2  # invalid configuration or command-line usage; nothing was consumed
    TASK_FAILED = 3  # stopped taking work because tasks failed (stop-on-error)
    INIT_FAILED = 4  # the init container failed or timed out; nothing was consumed
    BROKER = 5  # a broker could not be reached / reconnected within its deadline
    EVICTED = 6  # stopped by SIGTERM/SIGINT/SIGHUP (eviction); unfinished events were released
    RUNTIME_UNAVAILABLE = 7  # the container runtime or the task image cannot be used on this node
    DISK_FULL = 8  # free disk stayed below EWMS_PILOT_MIN_FREE_DISK with no task running
