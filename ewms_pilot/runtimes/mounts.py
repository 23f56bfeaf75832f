"""Which host directories a task container may see, and how.

A task is code the pilot did not write. So kernel and device trees (and
anything that resolves into them) are never bound, nor is the whole file
system; external directories (site data) are bound read-only at the same path
as on the host; the pilot's own directories (task-io, data hub) are the only
writable binds. Mount sources are bound with symlinks resolved, as checked.
The same rules are checked when the configuration is loaded
(`spec.validate_for_runtime`), so a bad setting is exit 2 before any event.
"""

from __future__ import annotations

import dataclasses as dc
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, PilotError
from .base import CONTAINER_DATA_ROOT, Mount

EXTERNAL_DIRECTORIES_VAR = "EWMS_PILOT_EXTERNAL_DIRECTORIES"

#: host trees that are never bound into a container (kernel, devices, runtime sockets, boot)
NEVER_MOUNTED = tuple(PurePosixPath(p) for p in ("/proc", "/dev", "/sys", "/run", "/boot"))
ROOT = PurePosixPath("/")


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


def path_problem(path: Path, forbidden_chars: str = "", *, must_exist: bool = True) -> MountProblem | None:
    """The first rule a bind source `path` breaks (as written and as it resolves), or None.

    `forbidden_chars`: what the runtime's mount syntax cannot carry. With
    `must_exist=False` (the data dir, made at start) a missing path is fine.
    """
    if not path.is_absolute():
        return MountProblem("host path is relative", "an absolute path")
    if "\0" in str(path):
        return MountProblem("it contains a NUL byte", "a path without NUL bytes")
    real = PurePosixPath(os.path.realpath(path))
    for candidate in dict.fromkeys((PurePosixPath(path), real)):
        via = "" if candidate == PurePosixPath(path) else f"it resolves to {real}: "
        if candidate == ROOT:
            return MountProblem(f"{via}the whole file system cannot be bound", "a directory other than /")
        root = _under(candidate, NEVER_MOUNTED)
        if root is not None:
            return MountProblem(
                f"{via}{root} is never bound into a container",
                f"a directory outside {_names(NEVER_MOUNTED)}",
            )
        bad = sorted({c for c in str(candidate) if c in forbidden_chars})
        if bad:
            chars = " ".join(repr(c) for c in bad)
            return MountProblem(
                f"{via}the runtime's mount syntax cannot carry {chars}",
                f"a path without {chars}",
            )
    if not os.path.lexists(path):
        if must_exist:
            return MountProblem("no such directory on this host", "an existing directory")
    elif not os.path.isdir(path):
        return MountProblem("not a directory on this host", "an existing directory")
    return None


def mount_problem(mount: Mount, forbidden_chars: str = "") -> MountProblem | None:
    """The first rule `mount` breaks, or None when it may be bound."""
    if not mount.target.is_absolute():
        return MountProblem(f"container path {mount.target} is relative", "an absolute path")
    if mount.target == ROOT:
        return MountProblem("the whole file system cannot be bound", "a directory other than /")
    return path_problem(mount.source, forbidden_chars)


def validate_mount(mount: Mount, forbidden_chars: str = "") -> Mount:
    """`mount` itself, or MountPolicyError saying in one line which rule it breaks."""
    problem = mount_problem(mount, forbidden_chars)
    if problem is not None:
        mode = "read-only" if mount.readonly else "writable"
        raise MountPolicyError(
            f"refusing to bind {mount.source} at {mount.target} ({mode}): {problem.reason}"
        )
    return mount


def validate_mounts(mounts: Iterable[Mount], forbidden_chars: str = "") -> tuple[Mount, ...]:
    """Each mount validated, and no two sharing a container path."""
    seen: set[PurePosixPath] = set()
    out: list[Mount] = []
    for mount in mounts:
        validate_mount(mount, forbidden_chars)
        if mount.target in seen:
            raise MountPolicyError(
                f"refusing to bind {mount.source} at {mount.target}: that container path is already bound"
            )
        seen.add(mount.target)
        out.append(mount)
    return tuple(out)


def external_mounts(directories: Sequence[Path], forbidden_chars: str) -> tuple[Mount, ...]:
    """External directories: read-only, at their path as given, bound from where they resolve.

    A directory the policy refuses is the user's setting: ConfigError naming
    EWMS_PILOT_EXTERNAL_DIRECTORIES and the one entry.
    """
    seen: set[PurePosixPath] = set()
    mounts: list[Mount] = []
    for directory in directories:
        target = PurePosixPath(directory)
        if target in seen or _under(target, (CONTAINER_DATA_ROOT,)):
            raise ConfigError(
                EXTERNAL_DIRECTORIES_VAR,
                str(directory),
                f"each directory once, and none at or inside {CONTAINER_DATA_ROOT} (the pilot binds it)",
            )
        problem = path_problem(Path(directory), forbidden_chars)
        if problem is not None:
            raise ConfigError(
                EXTERNAL_DIRECTORIES_VAR, str(directory), f"{problem.expected} ({problem.reason})"
            )
        seen.add(target)
        mounts.append(Mount(Path(os.path.realpath(directory)), target, readonly=True))
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
