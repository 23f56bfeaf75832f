"""Event data to infile, outfile to result: the only format rules a task has to know.

str → text, bytes → binary, anything else → JSON in a `.json` infile; an
outfile is read back as JSON (`.json`), else text, else bytes. These are
plain blocking functions: the pilot calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import enum
import errno
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from .errors import InvalidDataForInfileException, InvalidDataFromOutfileException

#: the largest result the pilot publishes by default (EWMS_PILOT_MAX_RESULT_SIZE); beyond it the task fails
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024

#: the infile is the pilot user's only (a container reads it as root or as that user)
INFILE_MODE = 0o600

#: how many directory levels above a task file the task itself can replace: task-io, and
#: the task's root (a warm worker sees the whole data dir). None of them may be a symlink.
TASK_WRITABLE_DIR_LEVELS = 2

#: the smallest read while an outfile turns out longer than `fstat` said (a writer still at it)
_MIN_READ = 64 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO or a leased file must fail at once, never block the pilot's thread
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _NoOutfile(enum.Enum):
    NO_OUTFILE = "NO_OUTFILE"

    def __repr__(self) -> str:
        return "<NO_OUTFILE>"


#: `read_outfile`'s answer when the task wrote no outfile (`None` is valid JSON data)
NO_OUTFILE: Final = _NoOutfile.NO_OUTFILE


def _is_json(path: Path) -> bool:
    # 1.x lowercases the configured extensions, so `.JSON` means JSON too
    return path.suffix.lower() == ".json"


def _describe_ext(path: Path) -> str:
    return f"a '{path.suffix}' infile" if path.suffix else "an infile without an extension"


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`: a write cut short (a full disk, a size limit, a pipe) goes on, or raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_infile(data: Any, path: Path, *, shared_dir: bool = False) -> int:
    """Write one event's data for the task to read; its size in bytes.

    Raises `InvalidDataForInfileException` when the data does not fit the
    extension (e.g. a dict for a `.txt` infile), is not JSON-serializable,
    or is text that is not valid Unicode. The infile is only ever written as a
    regular file, in directories that are not symlinks (`OSError` otherwise):
    a warm worker sees the data dir and could plant a link to a host file.
    `shared_dir`: the directory holds many events' files (warm mode), see `_task_dir`.
    """
    payload = _encode_event(data, path)
    role = _Role(path, "infile", "written", OSError)
    with _task_dir(role, keep=shared_dir) as dir_fd:
        _check_kind(dir_fd, role, missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _FILE_FLAGS
        fd = os.open(path.name, flags, INFILE_MODE, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        role.require_regular(os.fstat(fd).st_mode)
        os.fchmod(fd, INFILE_MODE)  # whatever the umask
        f.write(payload)
    return len(payload)


def _encode_event(data: Any, path: Path) -> bytes:
    """The infile's bytes; every way the data can be unwritable is an `InvalidDataForInfileException`."""
    if isinstance(data, str):
        # a lone surrogate is valid as a JSON \uXXXX escape, so it can arrive, but not in UTF-8
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidDataForInfileException(
                f"event text is not valid Unicode (lone surrogate at position {e.start}); "
                "it cannot be written as UTF-8",
                path,
            ) from e
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if not _is_json(path):
        raise InvalidDataForInfileException(
            f"event data is a {type(data).__name__}; only str or bytes can go to "
            f"{_describe_ext(path)}, use a .json extension for JSON data",
            path,
        )
    try:
        # ensure_ascii (1.x's default) escapes lone surrogates, so the encode cannot fail;
        # NaN and Infinity are written the way 1.x (Python's json) writes them
        return json.dumps(data).encode("ascii")
    except RecursionError as e:
        raise InvalidDataForInfileException(
            f"event data is nested too deeply to be written as JSON to infile {path.name}", path
        ) from e
    except (TypeError, ValueError) as e:  # unserializable types, circular data, too-long ints
        raise InvalidDataForInfileException(
            f"event data cannot be written as JSON to infile {path.name}: {e}", path
        ) from e


def read_outfile(path: Path, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Any:
    """The task's result: decoded JSON for `.json`, else text, else bytes.

    Returns `NO_OUTFILE` when the task wrote none. Raises
    `InvalidDataFromOutfileException` for invalid JSON, for a file larger
    than `max_bytes` (checked before reading, so a runaway task cannot
    exhaust memory), for a path that cannot be read, and for anything but a
    regular file: the task made the outfile, so a symlink could make the pilot
    publish a host file the task cannot see, and a FIFO would block it forever.
    """
    return read_outfile_sized(path, max_bytes=max_bytes)[0]


def read_outfile_sized(
    path: Path, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES, shared_dir: bool = False
) -> tuple[Any, int | None]:
    """`read_outfile`'s value and the number of bytes read (None with `NO_OUTFILE`).

    `shared_dir`: the directory holds many events' files (warm mode), see `_task_dir`.
    """
    try:
        raw = _read_regular(path, max_bytes, shared_dir)
    except FileNotFoundError:
        return NO_OUTFILE, None
    except OSError as e:
        raise InvalidDataFromOutfileException(
            f"outfile {path.name} cannot be read: {e.strerror or e}", path
        ) from e
    if _is_json(path):
        return _decode_json(raw, path), len(raw)
    try:
        return raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError:
        return raw, len(raw)  # `ensure_publishable` decides whether bytes can go out


def _read_regular(path: Path, max_bytes: int, shared_dir: bool = False) -> bytes:
    """The outfile's bytes, read from one fd opened without following any link.

    `FileNotFoundError` when there is no outfile, another `OSError` when it
    cannot be read, `InvalidDataFromOutfileException` for the rest.
    """
    role = _Role(
        path, "outfile", "read", lambda reason: InvalidDataFromOutfileException(reason, path)
    )
    with _task_dir(role, keep=shared_dir) as dir_fd:
        _check_kind(dir_fd, role)  # a device is refused before it is even opened
        try:
            fd = os.open(path.name, os.O_RDONLY | _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:  # swapped for a symlink since the check
                raise role.not_regular("symlink") from e
            raise
    try:
        st = os.fstat(fd)
        role.require_regular(st.st_mode)
        if st.st_size > max_bytes:
            raise InvalidDataFromOutfileException(_too_large(path, st.st_size, max_bytes), path)
        chunks: list[bytes] = []
        total = 0
        while True:  # bounded, for a file still growing (a task's leftover process)
            chunk = os.read(fd, min(max_bytes + 1 - total, max(st.st_size - total + 1, _MIN_READ)))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                reason = _too_large(path, total, max_bytes, at_least=True)
                raise InvalidDataFromOutfileException(reason, path)
    finally:
        os.close(fd)


@dc.dataclass(frozen=True)
class _Role:
    """A task file the pilot opens, and the error it raises when the file is not one it may open."""

    path: Path
    name: str  # "infile" / "outfile"
    verb: str  # "written" / "read"
    error: Callable[[str], Exception]

    def not_regular(self, kind: str) -> Exception:
        return self.error(
            f"{self.name} {self.path.name} is a {kind}; only a regular file is {self.verb}"
        )

    def require_regular(self, mode: int) -> None:
        if not stat.S_ISREG(mode):
            raise self.not_regular(_kind(mode))


class _KeptDir:
    """One thread's fd of a shared task dir, and what its task-writable levels were when it was checked."""

    def __init__(self, where: str, levels: tuple[Path, ...], fd: int) -> None:
        self.where, self.levels, self.fd = where, levels, fd  # where: the directory's absolute path
        self.ident = _identities(levels)  # just after `_open_task_dir` found them real directories

    def still_there(self) -> bool:
        """Each task-writable level is still the directory (not a link, not another) it was."""
        try:
            return _identities(self.levels) == self.ident
        except OSError:  # gone, or a file: `_open_task_dir` says so in its own words
            return False

    def __del__(self) -> None:  # the thread ended (its locals go) or another dir took its place
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _identities(levels: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    stats = [os.stat(level, follow_symlinks=False) for level in levels]
    return tuple((st.st_dev, st.st_ino) for st in stats)


def _writable_levels(directory: str) -> tuple[Path, ...]:
    """The absolute `directory` and the levels above it that a task can replace, deepest first."""
    levels: list[Path] = []
    level = Path(directory)
    while len(levels) < TASK_WRITABLE_DIR_LEVELS and level.name:
        levels.append(level)
        level = level.parent
    return tuple(levels)


_kept = threading.local()


@contextlib.contextmanager
def _task_dir(role: _Role, *, keep: bool) -> Iterator[int]:
    """An fd of the file's directory, opened by `_open_task_dir`; closed after, unless `keep`.

    `keep` (a warm pilot's shared dir, used by the same worker thread event after
    event): the thread keeps the fd, and later uses it while each task-writable
    level of the path is still the directory it was (device and inode, one `lstat`
    per level: a link planted at any of them shows), instead of opening each level
    again: five system calls fewer per file, each a turn at the GIL. A level
    replaced, moved or removed since is opened and checked afresh, and any error
    while the kept fd is in use drops it (a stale fd must not fail every later event).
    """
    where = os.path.abspath(role.path.parent)
    if not keep:
        fd = _open_task_dir(role, _writable_levels(where))
        try:
            yield fd
        finally:
            os.close(fd)
        return
    kept: _KeptDir | None = getattr(_kept, "dir", None)
    if kept is None or kept.where != where or not kept.still_there():
        _kept.dir = kept = None  # the old fd goes first
        levels = _writable_levels(where)
        _kept.dir = kept = _KeptDir(where, levels, _open_task_dir(role, levels))
    try:
        yield kept.fd
    except BaseException:
        _kept.dir = None
        raise


@contextlib.contextmanager
def shared_dir_fd(file: Path) -> Iterator[int]:
    """The fd of the warm shared dir that holds `file`, kept by this thread (`_task_dir`); for removals."""
    with _task_dir(_Role(file, "task file", "removed", OSError), keep=True) as fd:
        yield fd


def open_task_root(root: Path) -> int:
    """An fd of a task's root dir (`<data_dir>/<task id>`, `warm-<pilot id>`), whose parent is the pilot's.

    A warm worker can replace a shared root with a link; `OSError` then, as for a
    file write under it, so the dirs made in it are never made where the link points.
    """
    role = _Role(root / "task-io", "task directory", "made", OSError)
    return _open_task_dir(role, (root,))


def _open_task_dir(role: _Role, levels: tuple[Path, ...]) -> int:
    """An fd of the file's directory, whose task-writable `levels` (`_writable_levels`) are real directories.

    The task can replace those levels with symlinks (e.g. to `/`); the levels
    above belong to the pilot and may be symlinks (a site's scratch link).
    """
    top = levels[-1].parent if levels else Path(os.path.abspath(role.path.parent))
    fd = os.open(top, _DIR_FLAGS)
    try:
        for name in (level.name for level in reversed(levels)):
            try:
                sub = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                # Linux reports a symlink under O_NOFOLLOW|O_DIRECTORY as ENOTDIR, not ELOOP
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = _kind(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
                    raise role.error(
                        f"{role.name} {role.path.name} was not {role.verb}: "
                        f"directory '{name}' on its path is a {kind}"
                    ) from e
                raise
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_kind(dir_fd: int, role: _Role, *, missing_ok: bool = False) -> None:
    """Refuse a non-regular file before opening it: opening a device can have effects of its own."""
    try:
        mode = os.stat(role.path.name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    role.require_regular(mode)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISREG, "regular file"),  # where a directory was expected
    )
    return next((name for is_kind, name in kinds if is_kind(mode)), "special file")


def _decode_json(raw: bytes, path: Path) -> Any:
    if not raw.strip():
        raise InvalidDataFromOutfileException(f"outfile {path.name} is empty; expected JSON", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidDataFromOutfileException(
            f"outfile {path.name} is not UTF-8 text (byte {e.start}); JSON must be UTF-8", path
        ) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidDataFromOutfileException(
            f"outfile {path.name} is not valid JSON: {e.msg} "
            f"at line {e.lineno} column {e.colno} (char {e.pos})",
            path,
        ) from e
    except RecursionError as e:
        raise InvalidDataFromOutfileException(
            f"outfile {path.name} is JSON nested too deeply to decode", path
        ) from e


def _too_large(path: Path, size: int, max_bytes: int, *, at_least: bool = False) -> str:
    amount = f"at least {size}" if at_least else f"{size}"
    return f"outfile {path.name} is {amount} bytes, more than the {max_bytes}-byte result limit"


def ensure_publishable(value: Any, path: Path, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Any:
    """Return `value` if oms-mqclient's JSON wire format can carry it, else fail the task.

    Raises `InvalidDataFromOutfileException` for bytes (JSON has no bytes),
    for data that cannot be encoded as JSON, and for a result larger than
    `max_bytes` once encoded. `NO_OUTFILE` is not a result: check for it first.
    """
    if value is NO_OUTFILE:
        raise TypeError("NO_OUTFILE is not a result; check for it before publishing")
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidDataFromOutfileException(
            f"outfile is not UTF-8 text ({path.name}); results are published as JSON, "
            "so write UTF-8 text, a .json outfile, or encode binary data (e.g. base64)",
            path,
        )
    if isinstance(value, str):
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    else:
        try:
            size = len(json.dumps(value, separators=(",", ":")))
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidDataFromOutfileException(
                f"outfile {path.name} holds data that cannot be published as JSON: {e}", path
            ) from e
    if size > max_bytes:
        raise InvalidDataFromOutfileException(_too_large(path, size, max_bytes), path)
    return value
