"""What this pilot may use: its HTCondor slot's machine ad, else the cgroup and CPU affinity.

HTCondor gives a job one slot and writes the slot's ad to the file named by
`_CONDOR_MACHINE_AD`: `Cpus`, `Memory` (MB, the slot's own, not
`TotalMemory`), `Disk` (KB) and `AssignedGPUs`. The job ad
(`_CONDOR_JOB_AD`) fills what the machine ad lacks (`RequestCpus`, ...).
Outside HTCondor the pilot may use what its cgroup (v2 or v1) and
`sched_getaffinity` allow. Everything here only reads files: it runs once at
config load, and a missing or garbled file is one warning, never a crash.
"""

from __future__ import annotations

import dataclasses as dc
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

LOGGER = logging.getLogger(__name__)

MACHINE_AD_VAR = "_CONDOR_MACHINE_AD"
JOB_AD_VAR = "_CONDOR_JOB_AD"
#: HTCondor's value of CUDA_VISIBLE_DEVICES for a job that got no GPU
NO_GPU_IDS = frozenset({"10000", "-1", "none", "NoDevFiles"})
#: a cgroup memory limit at or above this is "no limit" (v1 writes ~2**63)
_UNLIMITED = 1 << 60
_MAX_AD_BYTES = 1 << 20  # an ad is a few KB; never read a huge file whole

_AD_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")


@dc.dataclass(frozen=True)
class Slot:
    """The resources found for this pilot (None: not known)."""

    cpus: int
    memory_bytes: int | None
    disk_bytes: int | None
    gpus: tuple[str, ...]
    source: str  # where the numbers come from, for the start line
    # the job's walltime from its ad (`WALLTIME_ATTRS`): seconds, and
    # the epoch the job started (JobCurrentStartDate), None when the ad does not say
    walltime: float | None = None
    walltime_source: str = ""
    job_started: float | None = None

    def describe(self) -> str:
        """`4 CPUs, 8.0 GiB memory, 20.0 GiB disk, GPUs CUDA0,CUDA1 (HTCondor machine ad)`."""
        gpus = ",".join(self.gpus) if self.gpus else "none"
        return (
            f"{self.cpus} CPUs, {_size(self.memory_bytes)} memory, {_size(self.disk_bytes)} disk, "
            f"GPUs {gpus} ({self.source})"
        )


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.1f} GiB"


def parse_classad(text: str) -> dict[str, object]:
    """An old-style ClassAd (`Name = value` lines) as {lowercased name: int | float | str | bool | raw}.

    Only literals are decoded (ints, reals, "strings", true/false); any other
    expression is kept as its text. Lines that are not assignments are skipped.
    """
    ad: dict[str, object] = {}
    for line in text.splitlines():
        m = _AD_LINE.match(line)
        if m is None:
            continue
        ad[m.group(1).lower()] = _literal(m.group(2))
    return ad


def _literal(raw: str) -> object:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _read_ad(environ: Mapping[str, str], var: str) -> dict[str, object]:
    path = environ.get(var, "").strip()
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_AD_BYTES).decode("utf-8", "replace")
    except OSError as e:
        LOGGER.warning("%s=%s cannot be read (%s): sizing from the cgroup instead", var, path, e.strerror)
        return {}
    return parse_classad(text)


#: one (leap) year: every duration, a setting's or a job ad's walltime, is at most this
MAX_SECONDS = 366 * 24 * 3600
#: larger ad numbers are no count of anything (and overflow what uses them)
_MAX_AD_NUMBER = float(2**53)


def _number(ad: Mapping[str, object], *names: str, at_most: float = _MAX_AD_NUMBER) -> float | None:
    """The first of `names` the ad sets to a literal number in 0..`at_most`; one out of range is
    ignored with a warning naming it (HTCondor's ads are not ours to refuse)."""
    for name in names:
        value = ad.get(name.lower())
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            continue
        if value > at_most:  # (inf too)
            LOGGER.warning("HTCondor ad's %s = %g is out of range (at most %g): ignored", name, value, at_most)
            continue
        return float(value)
    return None


def gpu_ids(text: str) -> tuple[str, ...]:
    """Device ids from `AssignedGPUs` / `CUDA_VISIBLE_DEVICES` text; HTCondor's "no GPU" is none."""
    ids = tuple(g for g in re.split(r"[,\s]+", text.strip()) if g)
    return () if not ids or any(g in NO_GPU_IDS for g in ids) else ids


#: walltime attributes of a job ad, seconds: EWMS's task-management service submits every pilot
#: with `+OriginalTime = <max worker runtime>` (the OSG convention for a job's time limit);
#: `AllowedJobDuration` (submit: `allowed_job_duration`) is HTCondor's own, the job is held past it
WALLTIME_ATTRS = ("OriginalTime", "AllowedJobDuration")
JOB_START_ATTR = "JobCurrentStartDate"  # epoch seconds this run of the job started


def job_walltime(job: Mapping[str, object]) -> tuple[float | None, str]:
    """The shortest walltime the job ad sets (positive literal seconds), with its attribute's name."""
    found = [(n, name) for name in WALLTIME_ATTRS if (n := _number(job, name, at_most=MAX_SECONDS))]
    if not found:
        return None, ""
    seconds, name = min(found)
    return seconds, f"job ad {name}"


# -- outside HTCondor ----------------------------------------------------------------


def _own_cgroup(proc_cgroup: Path) -> dict[str, str]:
    """Controller (\"\" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                found[controller] = parts[2]
    return found


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if not text or text[0] == "max":
        return None
    try:
        return int(text[0])
    except ValueError:
        return None


def _candidates(root: Path, sub: str) -> list[Path]:
    """The cgroup dir as seen from here: its full path, else the root (a cgroup namespace)."""
    own = root / sub.lstrip("/")
    return [own, root] if own != root else [root]


def _cgroup_limits(root: Path, proc_cgroup: Path) -> tuple[float | None, int | None]:
    """(CPUs the CFS quota allows, memory limit in bytes) of this process's cgroup (v2, else v1)."""
    groups = _own_cgroup(proc_cgroup)
    cpus: float | None = None
    memory: int | None = None
    if "" in groups and (root / "cgroup.controllers").exists():  # v2
        for d in _candidates(root, groups[""]):
            if not d.is_dir():
                continue
            try:
                quota, period = (d / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    cpus = int(quota) / int(period)
            except (OSError, ValueError):
                pass
            memory = _read_int(d / "memory.max")
            break
        return cpus, memory
    for d in _candidates(root / "cpu", groups.get("cpu", "/")):
        quota_us, period_us = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
        if quota_us is not None and period_us:
            cpus = quota_us / period_us if quota_us > 0 else None
            break
    for d in _candidates(root / "memory", groups.get("memory", "/")):
        memory = _read_int(d / "memory.limit_in_bytes")
        if memory is not None:
            break
    return cpus, memory


def _host_memory(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _host_disk(path: Path) -> int | None:
    """Free bytes where `path` is (or will be: its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except (OSError, ValueError):
            continue
        return st.f_bavail * st.f_frsize
    return None


def discover(
    environ: Mapping[str, str],
    *,
    disk_path: Path = Path("/"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    meminfo: Path = Path("/proc/meminfo"),
) -> Slot:
    """This pilot's slot: the machine ad (job ad for what it lacks), else the cgroup/affinity.

    `disk_path`: where task dirs live (its free space is the disk outside HTCondor).
    """
    machine = _read_ad(environ, MACHINE_AD_VAR)
    job = _read_ad(environ, JOB_AD_VAR)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if machine or job:
        cpus = _number(machine, "Cpus") or _number(job, "RequestCpus", "CpusProvisioned")
        memory_mb = _number(machine, "Memory") or _number(job, "RequestMemory", "MemoryProvisioned")
        disk_kb = _number(machine, "Disk") or _number(job, "RequestDisk", "DiskProvisioned")
        assigned = machine.get("assignedgpus")
        gpus = gpu_ids(assigned) if isinstance(assigned, str) else gpu_ids(environ.get("CUDA_VISIBLE_DEVICES", ""))
        source = "HTCondor machine ad" if machine else "HTCondor job ad"
        walltime, walltime_source = job_walltime(job)
        return Slot(
            cpus=max(1, int(cpus)) if cpus else affinity,
            memory_bytes=int(memory_mb * 2**20) if memory_mb else None,
            disk_bytes=int(disk_kb * 1024) if disk_kb else _host_disk(disk_path),
            gpus=gpus,
            source=source,
            walltime=walltime,
            walltime_source=walltime_source,
            job_started=_number(job, JOB_START_ATTR) if walltime is not None else None,
        )
    quota_cpus, memory = _cgroup_limits(cgroup_root, proc_cgroup)
    cpus = affinity if quota_cpus is None else max(1, min(affinity, math.floor(quota_cpus)))
    host = _host_memory(meminfo)
    if memory is None or memory >= _UNLIMITED:
        memory = host
    elif host is not None:
        memory = min(memory, host)
    return Slot(
        cpus=cpus,
        memory_bytes=memory,
        disk_bytes=_host_disk(disk_path),
        gpus=gpu_ids(environ.get("CUDA_VISIBLE_DEVICES", "")),
        source="cgroup and CPU affinity",
    )
