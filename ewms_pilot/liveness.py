"""Whether a process (a pilot holding events or containers) still exists, even across pid reuse.

A SIGKILLed pilot cannot release its events, and waiting for its lease to
expire costs up to a lease length. Every consumer records *which process* it
is; any other consumer on the same machine can then see that the process is
gone and release its events at once. A pid alone is not enough (pids are
reused), so the record also holds the process's start time, and the machine
identity holds the boot id and the pid namespace (two containers sharing a
database file must not judge each other's pids).

The check only ever answers "dead" when it is sure; when unsure (another
machine or namespace, no /proc) the lease expiry decides.
"""

from __future__ import annotations

import dataclasses as dc
import os
import socket
from pathlib import Path

_PROC = Path("/proc")


@dc.dataclass(frozen=True)
class ProcessIdentity:
    """Enough to recognise one process again, even after its pid is reused."""

    machine: str  # hostname + boot id + pid namespace: pids comparable only within one
    pid: int
    start: str  # kernel start time of the process ("" when the OS cannot tell)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _machine() -> str:
    boot = _read(_PROC / "sys/kernel/random/boot_id")
    try:
        pidns = os.readlink(_PROC / "self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{boot}|{pidns}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) from /proc/<pid>/stat; None when there is no such process."""
    text = _read(_PROC / str(pid) / "stat")
    if not text:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = text.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # field 3 (state) and field 22 (starttime)


def current() -> ProcessIdentity:
    """This process."""
    pid = os.getpid()
    stat = _stat(pid)
    return ProcessIdentity(machine=_machine(), pid=pid, start=stat[1] if stat else "")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def is_surely_dead(holder: ProcessIdentity, here: ProcessIdentity) -> bool:
    """True only when `holder` can be proven gone from this machine's view."""
    if holder.machine != here.machine or holder.pid <= 0:
        return False
    if _PROC.is_dir() and holder.start:
        stat = _stat(holder.pid)
        if stat is None:
            return not _pid_exists(holder.pid)  # /proc hidden (hidepid) -> fall back to kill(0)
        state, start = stat
        # a zombie (killed, not yet reaped by its parent) holds nothing any more
        return start != holder.start or state in ("Z", "X", "x")
    return not _pid_exists(holder.pid)
