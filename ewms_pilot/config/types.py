"""Value types of `EWMS_PILOT_*` settings: env text <-> Python value, with bounds.

Each parser raises `ValueError(<what was expected>)` and nothing else, for any
text at all: that message becomes the `expected` part of the one-line
`ConfigError`. The bounds are what the rest of the pilot can honour (an AMQP
prefetch count is 16 bits; asyncio cannot sleep 1e300 s), so an out-of-range
value is refused here rather than failing later as a task or broker error.
"""

from __future__ import annotations

import dataclasses as dc
import enum
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..resources.sizing import AUTO, SIZE_EXPECTED, parse_size, render_size
from ..resources.slot import MAX_SECONDS
from . import jsontext
from .model import ChirpDest, ContainerPlatform, TaskMode

BROKER_TYPES = ("rabbitmq", "nats", "pulsar", "local")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})  # same words as wipac-dev-tools
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})

MAX_COUNT = 65535  # prefetch and concurrency: AMQP's prefetch-count is an unsigned short
MAX_INT = 1_000_000  # any other count
MAX_EXT_CHARS = 32
MAX_QUEUE_NAME_BYTES = 255  # RabbitMQ's limit (a short string in AMQP 0-9-1)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dc.dataclass(frozen=True, kw_only=True)
class ValueType:
    """How one kind of setting is read from env text and written back to it.

    `render` turns a Python value (from a built config or a 1.x keyword
    argument) back into env text that `parse` accepts.
    """

    expected: str
    parse: Callable[[str], object]
    render: Callable[[object], str] = str
    blank_is_default: bool = True  # "" means "unset"; False for free-text strings


def render_scalar(value: object) -> str:
    """Env text for a bool/enum/number/str value (None -> empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_str(raw: str) -> str:
    if "\0" in raw:
        raise ValueError("text without NUL characters")
    return raw


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("a boolean: true/false, yes/no, on/off, 1/0")


def int_between(low: int, high: int = MAX_INT) -> ValueType:
    """An integer in [low, high]."""
    expected = f"an integer from {low} to {high}"

    def parse(raw: str) -> int:
        text = raw.strip()
        if len(text) > 20:  # also keeps int() away from its 4300-digit limit
            raise ValueError(expected)
        try:
            value = int(text)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return ValueType(expected=expected, parse=parse, render=render_scalar)


def seconds(*, zero_ok: bool, optional: bool) -> ValueType:
    """A duration in seconds, at most `MAX_SECONDS`. `optional`: blank means "no limit" (None)."""
    expected = f"a number of seconds {'>= 0' if zero_ok else '> 0'} and <= {MAX_SECONDS} (a year)"
    if optional:
        expected += ", or empty for no limit"

    def parse(raw: str) -> float | None:
        text = raw.strip()
        if optional and not text:
            return None
        try:
            value = float(text) if len(text) <= 64 else math.nan
        except ValueError:
            raise ValueError(expected) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(expected)
        if value > MAX_SECONDS:
            raise ValueError(expected)
        return value

    return ValueType(expected=expected, parse=parse, render=render_scalar)


def choice(options: Iterable[str], *, upper: bool = False, allow_blank: bool = False) -> ValueType:
    """One of a fixed set of words, case-insensitive; returned normalized."""
    words = tuple(options)
    expected = "one of " + "|".join(words)

    def parse(raw: str) -> str:
        word = raw.strip().upper() if upper else raw.strip().lower()
        if word in words or (allow_blank and not word):
            return word
        raise ValueError(expected)

    return ValueType(expected=expected, parse=parse, render=render_scalar)


def enum_choice(cls: type[enum.Enum], *, upper: bool = False) -> ValueType:
    """A member of `cls`, by its value (case-insensitive)."""
    words = choice((str(m.value) for m in cls), upper=upper)

    def parse(raw: str) -> enum.Enum:
        return cls(words.parse(raw))

    return ValueType(expected=words.expected, parse=parse, render=render_scalar)


def _json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


def _parse_env_json(raw: str) -> dict[str, str]:
    """A JSON object of env vars for a container; integer values become text, as in 1.x."""
    if not raw.strip():
        return {}
    try:
        obj = jsontext.loads(raw)
    except ValueError as e:
        raise ValueError(f"a JSON object of env vars ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON object of env vars, not a JSON {_json_kind(obj)}")
    env: dict[str, str] = {}
    for key, value in obj.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(
                f"a JSON object of env vars; key {key!r} is not an env var name "
                "(letters, digits, _; not starting with a digit)"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(
                f"a JSON object whose values are strings; key {key!r} has a JSON {_json_kind(value)}"
            )
        if "\0" in value:
            raise ValueError(f"a JSON object of env vars; the value of key {key!r} contains NUL")
        env[key] = value
    return env


def _render_env_json(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return str(value)


def parse_list(raw: str, *, split: bool, what: str) -> list[str]:
    """A list of strings: a JSON list, a Python list as `str(list)` writes it, or
    (when `split`) items separated by commas and/or whitespace.
    """
    text = raw.strip()
    if not text:
        return []
    if text.startswith(("[", "(")):
        try:
            loaded = jsontext.loads(text)
        except ValueError:
            try:
                loaded = jsontext.literal(text)
            except ValueError as e:
                raise ValueError(f"{what}: not a JSON or Python list ({e})") from None
        if not isinstance(loaded, (list, tuple)) or not all(isinstance(x, str) for x in loaded):
            raise ValueError(f"{what}: a list of strings")
        return [x for x in loaded if x.strip()]
    if not split:
        raise ValueError(f"{what}: a JSON or Python list")
    return [item for item in re.split(r"[,\s]+", text) if item]


_LIST_FORMS = "commas/spaces, a JSON list or a Python list"


def _parse_names(raw: str) -> frozenset[str]:
    expected = f"exception class names ({_LIST_FORMS}, e.g. TaskTimeoutError,ValueError)"
    names = [n.strip() for n in parse_list(raw, split=True, what=expected)]
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{expected}; {name!r} is not a class name")
    return frozenset(names)


def _render_list(value: object) -> str:
    """JSON list text: parses back to the same items whatever they contain."""
    if isinstance(value, str) or value is None:
        return value or ""
    if isinstance(value, (set, frozenset)):
        items = sorted(str(v) for v in value)
    elif isinstance(value, Iterable):
        items = [str(v) for v in value]
    else:
        return str(value)
    return json.dumps(items) if items else ""


def _parse_abs_paths(raw: str) -> tuple[Path, ...]:
    expected = f"absolute host paths ({_LIST_FORMS})"
    paths = tuple(Path(p.strip()) for p in parse_list(raw, split=True, what=expected))
    for path in paths:
        if "\0" in str(path) or not path.is_absolute():
            raise ValueError(f"{expected}; {str(path)!r} is not an absolute path")
    return paths


def _parse_dir(default: str) -> Callable[[str], Path]:
    """A directory; relative paths resolve against the working directory (handy on a laptop)."""

    def parse(raw: str) -> Path:
        text = raw.strip() or default
        if "\0" in text:
            raise ValueError("a directory path")
        return Path(os.path.abspath(text))

    return parse


def _parse_patterns(raw: str) -> tuple[str, ...]:
    # never split on commas/spaces: a regex contains them ("CUDA error .*")
    expected = 'a JSON or Python list of regular expressions, e.g. ["MemoryError", "CUDA error .*"]'
    patterns = parse_list(raw, split=False, what=expected)
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise ValueError(f"{expected}; item {i} ({pattern!r}) does not compile: {e}") from None
    return tuple(patterns)


def _parse_ext(raw: str) -> str:
    if len(raw) > MAX_EXT_CHARS or any(c in raw for c in "/\\") or _CONTROL.search(raw):
        raise ValueError(
            f"a file extension such as .in: at most {MAX_EXT_CHARS} characters, "
            "no '/', '\\' or control characters"
        )
    return raw


def _parse_queue_name(raw: str) -> str:
    text = raw.strip()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_QUEUE_NAME_BYTES or re.search(
        r"[\s\x00-\x1f\x7f]", text
    ):
        raise ValueError(
            f"a queue name: at most {MAX_QUEUE_NAME_BYTES} bytes, no whitespace or control characters"
        )
    return text


def _parse_opt_str(raw: str) -> str | None:
    text = _parse_str(raw.strip())
    return text or None


def _parse_shm_size(raw: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,15}[bkmgBKMG]?", text):
        raise ValueError("a size such as 512m or 2g (digits, then b, k, m or g)")
    return text


def _or_auto(parse: Callable[[str], object], expected: str) -> ValueType:
    """`auto` (resolved from the slot at load: resources/sizing.py) or a value of `parse`."""
    full = f"{expected}, or auto (sized from the slot)"

    def parse_or_auto(raw: str) -> object:
        if raw.strip().lower() == AUTO:
            return AUTO
        try:
            return parse(raw)
        except ValueError:
            raise ValueError(full) from None

    return ValueType(expected=full, parse=parse_or_auto, render=render_scalar)


def _parse_opt_size(raw: str) -> int | None:
    text = raw.strip()
    if not text or text.lower() in ("none", "0"):
        return None
    return parse_size(text)


TEXT = ValueType(expected="text", parse=_parse_str, render=render_scalar, blank_is_default=False)
NAME = ValueType(
    expected="a name", parse=lambda raw: _parse_str(raw.strip()), render=render_scalar
)
QUEUE_NAME = ValueType(
    expected="a queue name", parse=_parse_queue_name, render=render_scalar
)
SHM_SIZE = ValueType(expected="a size such as 2g", parse=_parse_shm_size, render=render_scalar)
OPT_TEXT = ValueType(
    expected="text, or empty for none", parse=_parse_opt_str, render=render_scalar
)
EXT = ValueType(
    expected="a file extension such as .in",
    parse=_parse_ext,
    render=render_scalar,
    blank_is_default=False,
)
BOOL = ValueType(
    expected="a boolean: true/false, yes/no, on/off, 1/0", parse=_parse_bool, render=render_scalar
)
COUNT = int_between(1, MAX_COUNT)
COUNT_OR_AUTO = _or_auto(COUNT.parse, COUNT.expected)
OPT_SIZE = ValueType(
    expected=f"{SIZE_EXPECTED}, or empty/0 for no limit", parse=_parse_opt_size, render=render_size
)
OPT_SIZE_OR_AUTO = _or_auto(_parse_opt_size, OPT_SIZE.expected)
#: a size, `auto`, or 0 for off; "off" is written back as 0 (empty would mean the default, `auto`)
SIZE_AUTO_OR_OFF = dc.replace(
    _or_auto(_parse_opt_size, f"{SIZE_EXPECTED}, or 0 for none"),
    render=lambda value: "0" if value is None else render_scalar(value),
)
SIZE = ValueType(expected=SIZE_EXPECTED, parse=parse_size, render=render_size)
INT_GE0 = int_between(0)
INT_GE1 = int_between(1)
SECONDS_GT0 = seconds(zero_ok=False, optional=False)
SECONDS_GE0 = seconds(zero_ok=True, optional=False)
OPT_SECONDS_GT0 = seconds(zero_ok=False, optional=True)
ENV_JSON = ValueType(
    expected="a JSON object of env vars (string values)",
    parse=_parse_env_json,
    render=_render_env_json,
)
NAME_LIST = ValueType(
    expected=f"exception class names ({_LIST_FORMS})", parse=_parse_names, render=_render_list
)
ABS_PATH_LIST = ValueType(
    expected=f"absolute host paths ({_LIST_FORMS})", parse=_parse_abs_paths, render=_render_list
)
REGEX_LIST = ValueType(
    expected="a JSON or Python list of regular expressions",
    parse=_parse_patterns,
    render=_render_list,
)
DATA_DIR = ValueType(expected="a directory path", parse=_parse_dir("/"), render=render_scalar)
BUILD_DIR = ValueType(
    expected="a directory path", parse=_parse_dir("/var/tmp"), render=render_scalar
)
BROKER_TYPE = choice(BROKER_TYPES, allow_blank=True)
LOG_LEVEL = choice(LOG_LEVELS, upper=True)
PLATFORM = enum_choice(ContainerPlatform)
CHIRP_DEST = enum_choice(ChirpDest, upper=True)
TASK_MODE = enum_choice(TaskMode)
