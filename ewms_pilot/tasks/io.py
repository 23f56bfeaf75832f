"""Event data to infile, outfile to result: the only format rules a task has to know.

str → text, bytes → binary, anything else → JSON in a `.json` infile; an
outfile is read back as JSON (`.json`), else text, else bytes. These are
plain blocking functions: the pilot calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Any, Final

from .errors import InvalidDataForInfileException, InvalidDataFromOutfileException

#: the largest result the pilot publishes; beyond it the task fails with a clear reason
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024

#: the infile is read by the task, which may run as another user inside a container
INFILE_MODE = 0o644


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


def write_infile(data: Any, path: Path) -> None:
    """Write one event's data for the task to read.

    Raises `InvalidDataForInfileException` when the data does not fit the
    extension (e.g. a dict for a `.txt` infile) or is not JSON-serializable.
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
    elif _is_json(path):
        try:
            payload = json.dumps(data).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidDataForInfileException(
                f"event data cannot be written as JSON to infile {path.name}: {e}", path
            ) from e
    else:
        raise InvalidDataForInfileException(
            f"event data is a {type(data).__name__}; only str or bytes can go to "
            f"{_describe_ext(path)}, use a .json extension for JSON data",
            path,
        )
    path.write_bytes(payload)
    os.chmod(path, INFILE_MODE)  # umask may have left it unreadable to the task's user


def read_outfile(path: Path, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Any:
    """The task's result: decoded JSON for `.json`, else text, else bytes.

    Returns `NO_OUTFILE` when the task wrote none. Raises
    `InvalidDataFromOutfileException` for invalid JSON, for a file larger
    than `max_bytes` (checked before reading, so a runaway task cannot
    exhaust memory) and for a path that cannot be read.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidDataFromOutfileException(_too_large(path, size, max_bytes), path)
        raw = path.read_bytes()
    except FileNotFoundError:
        return NO_OUTFILE
    except OSError as e:
        raise InvalidDataFromOutfileException(
            f"outfile {path.name} cannot be read: {e.strerror or e}", path
        ) from e

    if _is_json(path):
        return _decode_json(raw, path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # `ensure_publishable` decides whether bytes can go out


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


def _too_large(path: Path, size: int, max_bytes: int) -> str:
    return f"outfile {path.name} is {size} bytes, more than the {max_bytes}-byte result limit"


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
