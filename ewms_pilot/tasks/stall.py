"""Whether a running task still uses CPU: the reading behind EWMS_PILOT_TASK_STALL_TIMEOUT.

A looping or hung task (a deadlock, a read from a dead mount) can hold its
slot until the task timeout, or for ever without one. Its CPU time stops
growing. Where to read it depends on the runtime (`Runtime.cpu_reader`):
the process group the pilot started (process, apptainer: the task runs under
the client), or the container's cgroup (podman, docker: the task runs under
the runtime's monitor, not the client). Every reading is a few small /proc
or /sys reads, done in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

LOGGER = logging.getLogger("ewms_pilot")

#: CPU seconds used so far by a task (None: cannot be read now)
CpuReader = Callable[[], float | None]

_TICKS = os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the `(comm)` field (which may hold spaces): state, ppid, pgrp, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def group_cpu(pgid: int) -> float | None:
    """CPU seconds of every process in group `pgid`, with the children each has reaped."""
    total = 0.0
    found = False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is None or len(fields) < 15 or fields[2] != str(pgid):
            continue
        found = True
        ns = _threads_ns(name)
        own = ns / 1e9 if ns is not None else sum(int(f) for f in fields[11:13]) / _TICKS  # utime stime
        total += own + sum(int(f) for f in fields[13:15]) / _TICKS  # + cutime cstime (reaped children)
    return total if found else None


def _threads_ns(pid: str) -> int | None:
    """Nanoseconds on CPU of every thread of process `pid` (schedstat), None where the kernel has none.

    /proc/<pid>/stat counts in 10 ms ticks, charged to whoever runs at the tick: a
    thread that wakes briefly 5 times a second (a heartbeat) never shows there.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total, found = 0, False
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # (a thread that just ended)
        found = True
    return total if found else None


def cgroup_cpu_reader(pid: int, root: Path = CGROUP_ROOT) -> CpuReader | None:
    """A reader of the CPU usage of the cgroup process `pid` is in (v2 `cpu.stat`, v1 `cpuacct.usage`)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if not controllers and (root / "cgroup.controllers").exists():
            stat = root / rel / "cpu.stat"
            if stat.exists():
                return lambda: _usage_usec(stat)
        elif "cpuacct" in controllers.split(","):
            for mount in (root / "cpuacct", root / "cpu,cpuacct", root / controllers):
                usage = mount / rel / "cpuacct.usage"
                if usage.exists():
                    return lambda: _read_number(usage, 1e-9)
    return None


def _usage_usec(stat: Path) -> float | None:
    try:
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        pass
    return None


def _read_number(path: Path, scale: float) -> float | None:
    try:
        return int(path.read_text().split()[0]) * scale
    except (OSError, ValueError, IndexError):
        return None


def process_tree_reader(pid: int) -> CpuReader | None:
    """The cgroup of `pid`, else the process group it leads."""
    reader = cgroup_cpu_reader(pid)
    if reader is not None:
        return reader
    fields = _stat_fields(pid)
    if fields is None:
        return None
    pgid = int(fields[2])
    return lambda: group_cpu(pgid)


def check_interval(stall_timeout: float) -> float:
    """How often to read: a fifth of the timeout, between 0.5 and 10 s."""
    return min(max(stall_timeout / 5, 0.5), 10.0)


async def wait_for_stall(
    find_reader: Callable[[], Awaitable[CpuReader | None]],
    stall_timeout: float,
    name: str,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once the task's CPU time has not grown for `stall_timeout` s; never if it cannot be read."""
    reader = await find_reader()
    if reader is None:
        LOGGER.warning(f"{name}: its CPU use cannot be read: no stall detection for it")
        await asyncio.Event().wait()  # until the run ends and cancels this
    assert reader is not None
    interval = check_interval(stall_timeout)
    last = await asyncio.to_thread(reader)
    since = clock()
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(reader)
        # any change is progress: a group's total also drops when a member exits (or no reading: no verdict)
        if now is None or last is None or now != last:
            last, since = now, clock()
        elif clock() - since >= stall_timeout:
            return
