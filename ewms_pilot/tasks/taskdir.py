"""Where one task's files live on the pilot's host, so every module agrees on the layout.

<data_dir>/<task id>/task-io/infile-<id><ext>    (mounted into the task)
<data_dir>/<task id>/task-io/outfile-<id><ext>
<data_dir>/<task id>/outputs/stdoutfile           (pilot-side only)
<data_dir>/<task id>/outputs/stderrfile

Everything under the data dir is the pilot user's only (dirs 0700, files 0600,
process umask 077): an event, a result or a task's env is nobody else's to
read or replace. A container writes its outfile as root (rootful podman,
docker) or as the pilot's own user (rootless podman, apptainer); see
docs/sandbox.md for a site that runs tasks as yet another uid.
"""

from __future__ import annotations

import dataclasses as dc
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DATA_DIR_VAR = "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"

#: the pilot's directories: its user's only
PRIVATE_DIR_MODE = 0o700
#: the process umask the pilot runs with: whatever it (or a library) creates is its user's only
PILOT_UMASK = 0o077


def new_task_id() -> str:
    """A short unique id, safe in file names and container names (12 hex chars)."""
    return uuid.uuid4().hex[:12]


def normalize_ext(ext: str) -> str:
    """`json`, `.json`, `..JSON` → `.json`; `` → `` (no suffix). Lowercased like 1.x."""
    bare = ext.strip().lstrip(".").lower()
    if "/" in bare or "\\" in bare or "\0" in bare:
        raise ValueError(f"file extension {ext!r} must not contain a path separator")
    return f".{bare}" if bare else ""


def _check_task_id(task_id: str) -> None:
    if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
        raise ValueError(f"task id {task_id!r} is not a single file name")


@dc.dataclass(frozen=True)
class TaskDir:
    """The host paths of one task's files."""

    root: Path
    task_io: Path
    infile: Path
    outfile: Path
    outputs: Path
    stdout: Path
    stderr: Path

    @classmethod
    def layout(cls, data_dir: Path, task_id: str, infile_ext: str, outfile_ext: str) -> TaskDir:
        """The paths for `task_id`, without touching the filesystem."""
        _check_task_id(task_id)
        root = data_dir / task_id
        task_io = root / "task-io"
        outputs = root / "outputs"
        return cls(
            root=root,
            task_io=task_io,
            infile=task_io / f"infile-{task_id}{normalize_ext(infile_ext)}",
            outfile=task_io / f"outfile-{task_id}{normalize_ext(outfile_ext)}",
            outputs=outputs,
            stdout=outputs / "stdoutfile",
            stderr=outputs / "stderrfile",
        )

    @classmethod
    def create(cls, data_dir: Path, task_id: str, infile_ext: str, outfile_ext: str) -> TaskDir:
        """Make the directories for a new task (`FileExistsError` if the id was used)."""
        td = cls.layout(data_dir, task_id, infile_ext, outfile_ext)
        data_dir.mkdir(PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        for d in (td.root, td.task_io, td.outputs):
            d.mkdir(PRIVATE_DIR_MODE)
        return td

    def remove(self) -> None:
        """Delete the task's tree; parts already gone are fine, other errors raise."""

        def _ignore_missing(func: Callable[..., Any], path: str, exc: BaseException) -> None:
            if not isinstance(exc, FileNotFoundError):
                raise exc

        if sys.version_info >= (3, 12):
            shutil.rmtree(self.root, onexc=_ignore_missing)
        else:
            shutil.rmtree(
                self.root, onerror=lambda func, path, info: _ignore_missing(func, path, info[1])
            )


def prepare_data_dir(data_dir: Path, data_hub: Path) -> int:
    """At pilot start: umask 077, then the data dir and hub made (or narrowed to) 0700.

    An existing data dir left open by an older pilot is closed at its top
    level: nobody else can reach anything below it. ConfigError (exit 2)
    when the pilot cannot do that there. Returns the umask before, which the
    pilot restores when it ends (an in-process caller keeps its own).
    """
    before = os.umask(PILOT_UMASK)
    try:
        for d in (data_dir, data_hub):
            d.mkdir(PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            d.chmod(PRIVATE_DIR_MODE)
    except OSError as e:
        os.umask(before)
        raise ConfigError(
            DATA_DIR_VAR, str(data_dir.parent), f"a directory the pilot can own ({d}: {e.strerror})"
        ) from None
    return before
