"""What environment a task and a container client get, and the owner-only env file.

A task is code the pilot did not write, and the pilot's own environment holds
broker tokens. So:
- a `process` task gets only `TASK_HOST_ENV` (names below) from the pilot's
  environment, plus what the pilot sets (`EWMS_TASK_*`, the task env JSON);
- a container task gets only what the pilot sets, through an env file that
  only the pilot's user can read (never `--env NAME=VALUE`: argv is visible to
  every local user in `ps`); the image provides the rest (PATH, HOME, ...);
- a container CLI (podman, docker, apptainer) gets the pilot's environment
  without any `EWMS_PILOT_*` setting (podman and docker, and apptainer's image
  build: with its path variables made absolute, `clientpaths`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

#: host variables a `process` task inherits (documented in README "For task authors")
TASK_HOST_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "TMPDIR",
    # HTCondor's per-slot settings: where to write, how many cores/GPUs the job got
    "_CONDOR_SCRATCH_DIR",
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)
#: name prefixes a `process` task inherits as well (locale categories)
TASK_HOST_ENV_PREFIXES = ("LC_",)
#: the pilot's own settings: never passed to a task or a container client
PILOT_ENV_PREFIXES = ("EWMS_PILOT_", "_EWMS_PILOT_")

#: an env file (or a warm worker's log) is private to the pilot's user
ENV_FILE_MODE = 0o600


def task_host_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """The part of the pilot's environment a `process` task may see."""
    return {
        k: v
        for k, v in inherited.items()
        if k in TASK_HOST_ENV or k.startswith(TASK_HOST_ENV_PREFIXES)
    }


def client_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """The pilot's environment without its own settings, for a container CLI."""
    return {k: v for k, v in inherited.items() if not k.upper().startswith(PILOT_ENV_PREFIXES)}


def open_private(path: Path) -> int:
    """A new file at `path` for the pilot's user only: the fd, open for writing.

    The directory may be one a task can write (a warm worker sees the whole
    data dir): neither it nor the file may be a symlink, so a task cannot
    make the pilot write to a host file. A leftover file is replaced.
    """
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path.name, flags, ENV_FILE_MODE, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    os.fchmod(fd, ENV_FILE_MODE)  # whatever the umask
    return fd


def write_env_file(path: Path, text: str) -> None:
    """Create `path` afresh with `text`, readable by the pilot's user only (`open_private`)."""
    with os.fdopen(open_private(path), "w", encoding="utf-8") as f:
        f.write(text)


def remove_env_file(path: Path | None) -> None:
    """Delete an env file once its client has exited (gone already, or its dir swapped: left)."""
    if path is None:
        return
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
