"""Where one task's files live on the pilot's host, so every module agrees on the layout.

<data_dir>/<task id>/task-io/infile-<id><ext>    (mounted into the task)
<data_dir>/<task id>/task-io/outfile-<id><ext>
<data_dir>/<task id>/outputs/stdoutfile           (pilot-side only)
<data_dir>/<task id>/outputs/stderrfile
<data_dir>/warm-<pilot id>/task-io/infile-<id><ext>   (warm mode: one dir for all events)
<data_dir>/warm-<pilot id>/task-io/outfile-<id><ext>
<data_dir>/init/outputs/stdoutfile, stderrfile     (init/teardown: made afresh, `make_fresh_dir`)
<data_dir>/teardown/outputs/stdoutfile, stderrfile

Everything under the data dir is the pilot user's only (dirs 0700, files 0600,
process umask 077): an event, a result or a task's env is nobody else's to
read or replace. A container writes its outfile as root (rootful podman,
docker) or as the pilot's own user (rootless podman, apptainer); see
docs/sandbox.md for a site that runs tasks as yet another uid.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import errno
import hashlib
import itertools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .io import open_task_root, shared_dir_fd

DATA_DIR_VAR = "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"

#: the pilot's directories: its user's only
PRIVATE_DIR_MODE = 0o700
#: the process umask the pilot runs with: whatever it (or a library) creates is its user's only
PILOT_UMASK = 0o077


class _TaskIds:
    """12 hex characters, the first a letter: never repeated within a process, unguessable from outside.

    A counter taken through a keyed permutation of 44 bits (four Feistel rounds of keyed
    BLAKE2b), behind a random letter: distinct for 2**44 events, with no system call per
    event (uuid4 asked the kernel for randomness on the event loop's thread, for each event),
    and a worker that saw some ids cannot tell the next one (it could plant that event's
    outfile). The leading letter lets `tasks.errors.aggregatable` tell an id from a 12-digit
    number (an all-digit id went unreplaced, so one failure in ~300 reached chirp and the
    journal with its own path).
    """

    HALF = 22  # bits in each Feistel half: 44 in all, 11 hex characters
    ROUNDS = 4

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked child must not repeat its parent's ids

    def reseed(self) -> None:
        self._keyed = [hashlib.blake2b(key=os.urandom(16), digest_size=3) for _ in range(self.ROUNDS)]
        self._prefix = "abcdef"[os.urandom(1)[0] % 6]
        self._count = itertools.count()  # next() on it is atomic under the GIL

    def _round(self, half: int, n: int) -> int:
        h = self._keyed[n].copy()  # a keyed hash per round, its key set up once
        h.update(half.to_bytes(3, "big"))
        return int.from_bytes(h.digest(), "big") & ((1 << self.HALF) - 1)

    def __call__(self) -> str:
        count = next(self._count)
        left, right = count >> self.HALF & ((1 << self.HALF) - 1), count & ((1 << self.HALF) - 1)
        for n in range(self.ROUNDS):  # each round is invertible, so distinct counts give distinct ids
            left, right = right, left ^ self._round(right, n)
        return f"{self._prefix}{left << self.HALF | right:011x}"


#: a short unique id, safe in file names and container names
new_task_id = _TaskIds()


def normalize_ext(ext: str) -> str:
    """`json`, `.json`, `..JSON` → `.json`; `` → `` (no suffix). Lowercased like 1.x."""
    bare = ext.strip().lstrip(".").lower()
    if "/" in bare or "\\" in bare or "\0" in bare:
        raise ValueError(f"file extension {ext!r} must not contain a path separator")
    return f".{bare}" if bare else ""


def _check_task_id(task_id: str) -> None:
    if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
        raise ValueError(f"task id {task_id!r} is not a single file name")


def warm_root(data_dir: Path, pilot_id: str) -> Path:
    """The one directory that holds every warm-mode event's files of one pilot (made once, not per event)."""
    return data_dir / f"warm-{pilot_id}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dc.dataclass(frozen=True)
class TaskDir:
    """The host paths of one task's files.

    One-shot tasks get a tree of their own (`root` = `<data_dir>/<task id>`),
    made before the run and removed after it. Warm-mode events share their
    pilot's `warm_root` (`shared`): their files are named by task id, so an
    event costs two files, never a directory made and removed.
    """

    root: Path
    task_io: Path
    infile: Path
    outfile: Path
    outputs: Path
    stdout: Path
    stderr: Path
    shared: bool = False  # root and task_io belong to many events (warm mode): only the files are the event's

    @classmethod
    def layout(cls, data_dir: Path, task_id: str, infile_ext: str, outfile_ext: str) -> TaskDir:
        """The paths for `task_id`, without touching the filesystem."""
        _check_task_id(task_id)
        return cls._at(data_dir / task_id, task_id, infile_ext, outfile_ext, shared=False)

    @classmethod
    def in_shared(cls, root: Path, task_id: str, infile_ext: str, outfile_ext: str) -> TaskDir:
        """The paths of one warm-mode event's files under the shared `root` (`warm_root`)."""
        _check_task_id(task_id)
        return cls._at(root, task_id, infile_ext, outfile_ext, shared=True)

    @classmethod
    def _at(cls, root: Path, task_id: str, infile_ext: str, outfile_ext: str, *, shared: bool) -> TaskDir:
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
            shared=shared,
        )

    @classmethod
    def create(cls, data_dir: Path, task_id: str, infile_ext: str, outfile_ext: str) -> TaskDir:
        """Make the directories for a new task (`FileExistsError` if the id was used)."""
        td = cls.layout(data_dir, task_id, infile_ext, outfile_ext)
        td.make()
        return td

    @property
    def files_at(self) -> Path:
        """Where this task's files are (what a log line points to)."""
        return self.task_io if self.shared else self.root

    def make(self) -> None:
        """Make the directories (`FileExistsError` if a task's own id was used; shared ones may exist).

        The data dir normally exists (`prepare_data_dir`, at start): then a task's root is one mkdir.
        """
        subdirs = (self.task_io,) if self.shared else (self.task_io, self.outputs)
        try:
            os.mkdir(self.root, PRIVATE_DIR_MODE)
        except FileNotFoundError:  # the data dir itself is not there (yet, or any more)
            self.root.parent.mkdir(PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            os.mkdir(self.root, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not self.shared:
                raise
        root_fd = open_task_root(self.root)  # a link a worker planted at a shared root is refused, not followed
        try:
            for d in subdirs:
                try:
                    os.mkdir(d.name, PRIVATE_DIR_MODE, dir_fd=root_fd)
                except OSError as e:
                    if self.shared and isinstance(e, FileExistsError):
                        continue
                    e.filename = str(d)  # the whole path in the event's failure, not the name in its root
                    raise
        finally:
            os.close(root_fd)

    def remove(self) -> None:
        """Delete the task's files (and its own tree); parts already gone are fine, other errors raise.

        The usual tree (the files the pilot knows of) goes with a few unlinks and
        rmdirs through directory fds that never follow a link; anything else in
        a task's own tree (extra files, a link it planted) falls back to `shutil.rmtree`.
        """
        if self.shared:
            self._remove_files(trees=True)
            return
        try:
            self._remove_known()
        except OSError:  # ENOTEMPTY, EISDIR, ELOOP ...: not the usual tree
            _rmtree(self.root)

    def remove_files_only(self) -> bool:
        """Shared dir: unlink this event's two files, quickly; False if a name is a directory (`remove` it)."""
        assert self.shared, "a one-shot task's own tree goes with `remove`"
        return self._remove_files(trees=False)

    def _remove_files(self, *, trees: bool) -> bool:
        """Shared dir: only this event's two names (a directory made at one of them too, with `trees`)."""
        try:
            with shared_dir_fd(self.infile) as fd:
                for path in (self.infile, self.outfile):
                    try:
                        os.unlink(path.name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except IsADirectoryError:
                        if not trees:
                            return False
                        _rmtree(path.name, dir_fd=fd)
        except FileNotFoundError:  # the dir is gone: nothing to remove
            pass
        return True

    def _remove_known(self) -> None:
        """Remove the known files and directories; OSError when there is anything else."""
        if (root_fd := _open_dir(self.root)) is None:
            return
        try:
            for sub, names in ((self.task_io, (self.infile, self.outfile)), (self.outputs, (self.stdout, self.stderr))):
                if (fd := _open_dir(sub.name, root_fd)) is None:
                    continue
                try:
                    for path in names:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path.name, dir_fd=fd)
                finally:
                    os.close(fd)
                os.rmdir(sub.name, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        os.rmdir(self.root)


def remove_warm_root(root: Path) -> None:
    """At the end of a warm pool: the shared dir goes if no event's files were kept in it."""
    for d in (root / "task-io", root):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:  # not empty (a failed event's files), or replaced: left for a look
            return


def make_fresh_dir(base: Path, rel: Path) -> None:
    """Make `base/rel` a new empty dir of the pilot's, whatever a task left on its way.

    A warm worker can write anywhere under the data dir (`base`), so no part of
    `rel` is trusted: each is opened without following a link, a link or file
    in the way is removed (never followed) and replaced by a dir, and the last
    part is removed with what it holds before it is made anew.
    """
    fd = os.open(base, _DIR_FLAGS)
    try:
        for i, name in enumerate(rel.parts):
            if i == len(rel.parts) - 1:
                _remove_entry(name, fd)
            child = _open_or_make_dir(name, fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def _open_or_make_dir(name: str, dir_fd: int) -> int:
    """The fd of dir `name` in `dir_fd` (made if missing; a link or file at its name replaced)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    os.unlink(name, dir_fd=dir_fd)  # a link or a file: only the name goes
    os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove `name` in `dir_fd`, whatever it is (a dir with its contents; a link itself, not its target)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        _rmtree(name, dir_fd=dir_fd)


def _open_dir(path: Path | str, dir_fd: int | None = None) -> int | None:
    """A directory's fd, opened without following a link; None when it is gone (nothing to remove)."""
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _rmtree(path: Path | str, dir_fd: int | None = None) -> None:
    def _ignore_missing(func: Callable[..., Any], path: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_ignore_missing, dir_fd=dir_fd)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: _ignore_missing(func, p, info[1]), dir_fd=dir_fd)


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
