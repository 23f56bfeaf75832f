"""Where one task's files live on the pilot's host, so every module agrees on the layout.

<data_dir>/<task id>/task-io/infile-<id><ext>    (mounted into the task)
<data_dir>/<task id>/task-io/outfile-<id><ext>
<data_dir>/<task id>/outputs/stdoutfile           (pilot-side only)
<data_dir>/<task id>/outputs/stderrfile
"""

from __future__ import annotations

import dataclasses as dc
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: task-io is written by the task, which may be another (non-root) user in a container
TASK_IO_MODE = 0o777


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
        data_dir.mkdir(parents=True, exist_ok=True)
        td.root.mkdir()
        td.task_io.mkdir()
        td.task_io.chmod(TASK_IO_MODE)  # explicit: mkdir's mode is cut by the umask
        td.outputs.mkdir()
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
