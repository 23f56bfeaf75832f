"""Which host directories a task container may see, and how.

A task is code the pilot did not write: it may write into what is bound
writable. So kernel/device trees are never bound, system trees only
read-only, and external directories (site data) are always read-only at the
same path as on the host.
"""

from __future__ import annotations

import dataclasses as dc
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, PilotError
from .base import CONTAINER_DATA_HUB, CONTAINER_TASK_IO, Mount

EXTERNAL_DIRECTORIES_VAR = "EWMS_PILOT_EXTERNAL_DIRECTORIES"

#: host trees that are never bound into a container (kernel, devices, runtime sockets)
NEVER_MOUNTED = tuple(PurePosixPath(p) for p in ("/proc", "/dev", "/sys", "/run", "/boot"))
#: host trees that may only be bound read-only (the system and its logs/caches)
READ_ONLY_ONLY = tuple(
    PurePosixPath(p)
    for p in (
        "/etc",
        "/usr",
        "/lib",
        "/lib64",
        "/bin",
        "/sbin",
        "/root",
        "/var/log",
        "/var/cache",
        "/var/spool",
    )
)


class MountPolicyError(PilotError):
    """A bind mount the pilot refuses; the message is one line."""


@dc.dataclass(frozen=True)
class MountProblem:
    """Why a mount is refused, worded for a log (`reason`) and for a ConfigError (`expected`)."""

    reason: str
    expected: str


def _under(path: PurePosixPath, roots: Iterable[PurePosixPath]) -> PurePosixPath | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def _names(roots: Sequence[PurePosixPath]) -> str:
    return ", ".join(str(r) for r in roots)


def mount_problem(mount: Mount) -> MountProblem | None:
    """The first rule `mount` breaks, or None when it may be bound."""
    source = mount.source
    if not source.is_absolute():
        return MountProblem("host path is relative", "an absolute path")
    if not mount.target.is_absolute():
        return MountProblem(f"container path {mount.target} is relative", "an absolute path")
    if PurePosixPath(source) == PurePosixPath("/") or mount.target == PurePosixPath("/"):
        return MountProblem("the whole file system cannot be bound", "a directory other than /")
    # check the path as written and as it resolves (/var/run -> /run, /x/../proc)
    candidates = (PurePosixPath(source), PurePosixPath(os.path.realpath(source)))
    for candidate in candidates:
        root = _under(candidate, NEVER_MOUNTED)
        if root is not None:
            return MountProblem(
                f"{root} is never bound into a container",
                f"a directory outside {_names(NEVER_MOUNTED)}",
            )
    if not source.is_dir():
        return MountProblem("not an existing directory on this host", "an existing directory")
    if not mount.readonly:
        for candidate in candidates:
            root = _under(candidate, READ_ONLY_ONLY)
            if root is not None:
                return MountProblem(
                    f"{root} may only be bound read-only",
                    f"a writable directory outside {_names(READ_ONLY_ONLY)}",
                )
    return None


def validate_mount(mount: Mount) -> Mount:
    """`mount` itself, or MountPolicyError saying in one line which rule it breaks."""
    problem = mount_problem(mount)
    if problem is not None:
        mode = "read-only" if mount.readonly else "writable"
        raise MountPolicyError(
            f"refusing to bind {mount.source} at {mount.target} ({mode}): {problem.reason}"
        )
    return mount


def validate_mounts(mounts: Iterable[Mount]) -> tuple[Mount, ...]:
    """Each mount validated, and no two sharing a container path."""
    seen: set[PurePosixPath] = set()
    out: list[Mount] = []
    for mount in mounts:
        validate_mount(mount)
        if mount.target in seen:
            raise MountPolicyError(
                f"refusing to bind {mount.source} at {mount.target}: that container path is already bound"
            )
        seen.add(mount.target)
        out.append(mount)
    return tuple(out)


def external_mount(directory: Path) -> Mount:
    """An external directory: read-only, at the same path inside the container."""
    return Mount(directory, PurePosixPath(directory), readonly=True)


def build_mounts(
    *,
    data_hub: Path | None,
    task_io: Path | None,
    external_directories: Sequence[Path] = (),
) -> tuple[Mount, ...]:
    """The mounts one container gets: task-io and data hub (writable), external dirs (read-only).

    The pilot's own directories break the policy only through a bug or a bad
    data dir: MountPolicyError. A bad external directory is the user's setting:
    ConfigError naming EWMS_PILOT_EXTERNAL_DIRECTORIES.
    """
    own: list[Mount] = []
    if task_io is not None:
        own.append(Mount(task_io, CONTAINER_TASK_IO))
    if data_hub is not None:
        own.append(Mount(data_hub, CONTAINER_DATA_HUB))
    mounts = list(validate_mounts(own))
    seen = {m.target for m in mounts}
    for directory in external_directories:
        mount = external_mount(Path(directory))
        problem = mount_problem(mount)
        if problem is not None:
            raise ConfigError(EXTERNAL_DIRECTORIES_VAR, str(directory), problem.expected)
        if mount.target in seen:
            raise ConfigError(
                EXTERNAL_DIRECTORIES_VAR,
                str(directory),
                "each directory once, and none at a path the pilot binds itself",
            )
        seen.add(mount.target)
        mounts.append(mount)
    return tuple(mounts)


def require_plain_paths(mount: Mount, forbidden: str, runtime: str) -> None:
    """Refuse mount paths a runtime's mount syntax cannot carry (e.g. ',' or ':')."""
    for path in (str(mount.source), str(mount.target)):
        bad = sorted({c for c in path if c in forbidden})
        if bad:
            raise MountPolicyError(
                f"refusing to bind {mount.source} at {mount.target}: {runtime} cannot bind a path"
                f" containing {' '.join(repr(c) for c in bad)}"
            )
