"""Every `EWMS_PILOT_*` variable in one declarative table.

The loader, the effective-config banner and the README table are all generated
from `VARIABLES`, so a setting cannot be documented one way and parsed another.
Names and defaults match ewms-pilot 1.x; the new ones serve 2.x features.
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
from typing import TYPE_CHECKING

from .model import ChirpDest, ContainerPlatform, TaskMode

if TYPE_CHECKING:
    from .model import ContainerConfig, PilotConfig

PREFIXES = ("EWMS_PILOT_", "_EWMS_PILOT_")
BROKER_TYPES = ("rabbitmq", "nats", "pulsar", "local")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})  # same words as wipac-dev-tools
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


# ---------------------------------------------------------------------------
# value types: env text <-> Python value


@dc.dataclass(frozen=True, kw_only=True)
class ValueType:
    """How one kind of setting is read from env text and written back to it.

    `parse` raises `ValueError(<what was expected>)`; its message becomes the
    `expected` part of the `ConfigError`. `render` turns a Python value (from a
    built config or a 1.x keyword argument) back into env text.
    """

    expected: str
    parse: Callable[[str], object]
    render: Callable[[object], str] = str
    blank_is_default: bool = True  # "" means "unset"; False for free-text strings


def _render_scalar(value: object) -> str:
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


def _int_at_least(low: int) -> ValueType:
    expected = f"an integer >= {low}"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(expected) from None
        if value < low:
            raise ValueError(expected)
        return value

    return ValueType(expected=expected, parse=parse, render=_render_scalar)


def _seconds(*, zero_ok: bool, optional: bool) -> ValueType:
    """A duration in seconds (int or float). `optional`: blank means "no limit" (None)."""
    expected = "a number of seconds " + (">= 0" if zero_ok else "> 0")
    if optional:
        expected += ", or empty for no limit"

    def parse(raw: str) -> float | None:
        if optional and not raw.strip():
            return None
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(expected) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(expected)
        return value

    return ValueType(expected=expected, parse=parse, render=_render_scalar)


def _choice(choices: Iterable[str], *, upper: bool = False, allow_blank: bool = False) -> ValueType:
    """One of a fixed set of words, case-insensitive; returned normalized."""
    options = tuple(choices)
    expected = "one of " + "|".join(options)

    def parse(raw: str) -> str:
        word = raw.strip().upper() if upper else raw.strip().lower()
        if word in options or (allow_blank and not word):
            return word
        raise ValueError(expected)

    return ValueType(expected=expected, parse=parse, render=_render_scalar)


def _enum_choice(cls: type[enum.Enum], *, upper: bool = False) -> ValueType:
    words = _choice((str(m.value) for m in cls), upper=upper)

    def parse(raw: str) -> enum.Enum:
        return cls(words.parse(raw))

    return ValueType(expected=words.expected, parse=parse, render=_render_scalar)


def _json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


def _parse_env_json(raw: str) -> dict[str, str]:
    """A JSON object of env vars for a container.

    Integer values are accepted and turned into text, as 1.x did.
    """
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"a JSON object of env vars (invalid JSON: {e.msg} at char {e.pos})"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON object of env vars, not a JSON {_json_kind(obj)}")
    env: dict[str, str] = {}
    for key, value in obj.items():
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"a JSON object of env vars; key {key!r} is not a valid env var name")
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


def _split_list(raw: str) -> list[str]:
    """1.x split lists on whitespace (OKAY_ERRORS) or commas (EXTERNAL_DIRECTORIES): accept both."""
    return [item for item in re.split(r"[,\s]+", raw) if item]


def _parse_names(raw: str) -> frozenset[str]:
    expected = (
        "exception class names separated by commas or spaces (e.g. TaskTimeoutError,ValueError)"
    )
    names = _split_list(raw)
    if raw.strip().startswith("["):  # a JSON list is a natural thing to try
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(expected) from None
        if not isinstance(loaded, list) or not all(isinstance(n, str) for n in loaded):
            raise ValueError(expected)
        names = [n.strip() for n in loaded if n.strip()]
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{expected}; {name!r} is not a class name")
    return frozenset(names)


def _render_list(value: object) -> str:
    if isinstance(value, str) or value is None:
        return value or ""
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, Iterable):
        return ",".join(str(v) for v in value)
    return str(value)


def _parse_abs_paths(raw: str) -> tuple[Path, ...]:
    paths = tuple(Path(p) for p in raw.split(",") if p.strip())
    for path in paths:
        if not path.is_absolute():
            raise ValueError(
                f"absolute host paths separated by commas (mounted read-only at the same path); {str(path)!r} is relative"
            )
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
    expected = 'a JSON list of regular expressions, e.g. ["MemoryError", "CUDA error .*"]'
    if not raw.strip():
        return ()
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(expected) from None
    if not isinstance(loaded, list) or not all(isinstance(p, str) for p in loaded):
        raise ValueError(expected)
    for i, pattern in enumerate(loaded):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{expected}; item {i} ({pattern!r}) does not compile: {e}") from None
    return tuple(loaded)


def _render_patterns(value: object) -> str:
    if isinstance(value, str) or value is None:
        return value or ""
    if isinstance(value, Iterable):
        return json.dumps([str(v) for v in value]) if value else ""
    return str(value)


def _parse_ext(raw: str) -> str:
    if "/" in raw or "\0" in raw:
        raise ValueError("a file extension such as .in (no '/')")
    return raw


def _parse_opt_str(raw: str) -> str | None:
    return raw.strip() or None


TEXT = ValueType(expected="text", parse=_parse_str, render=_render_scalar, blank_is_default=False)
NAME = ValueType(
    expected="a name", parse=lambda raw: _parse_str(raw.strip()), render=_render_scalar
)
OPT_TEXT = ValueType(
    expected="text, or empty for none", parse=_parse_opt_str, render=_render_scalar
)
EXT = ValueType(
    expected="a file extension such as .in",
    parse=_parse_ext,
    render=_render_scalar,
    blank_is_default=False,
)
BOOL = ValueType(
    expected="a boolean: true/false, yes/no, on/off, 1/0", parse=_parse_bool, render=_render_scalar
)
INT_GE0 = _int_at_least(0)
INT_GE1 = _int_at_least(1)
SECONDS_GT0 = _seconds(zero_ok=False, optional=False)
SECONDS_GE0 = _seconds(zero_ok=True, optional=False)
OPT_SECONDS_GT0 = _seconds(zero_ok=False, optional=True)
ENV_JSON = ValueType(
    expected="a JSON object of env vars (string values)",
    parse=_parse_env_json,
    render=_render_env_json,
)
NAME_LIST = ValueType(
    expected="exception class names separated by commas or spaces",
    parse=_parse_names,
    render=_render_list,
)
ABS_PATH_LIST = ValueType(
    expected="absolute host paths separated by commas",
    parse=_parse_abs_paths,
    render=_render_list,
)
REGEX_LIST = ValueType(
    expected="a JSON list of regular expressions", parse=_parse_patterns, render=_render_patterns
)
DATA_DIR = ValueType(expected="a directory path", parse=_parse_dir("/"), render=_render_scalar)
BUILD_DIR = ValueType(
    expected="a directory path", parse=_parse_dir("/var/tmp"), render=_render_scalar
)
BROKER_TYPE = _choice(BROKER_TYPES, allow_blank=True)
LOG_LEVEL = _choice(LOG_LEVELS, upper=True)
PLATFORM = _enum_choice(ContainerPlatform)
CHIRP_DEST = _enum_choice(ChirpDest, upper=True)
TASK_MODE = _enum_choice(TaskMode)


# ---------------------------------------------------------------------------
# the table


@dc.dataclass(frozen=True, kw_only=True)
class EnvVar:
    """One environment variable: how to read it, its default, and where it lands in `PilotConfig`."""

    name: str
    type: ValueType
    default: str  # env text used when the variable is unset (or blank, see `ValueType`)
    help: str  # one line, shown in `ewms-pilot config --list` and the README
    section: str
    get: Callable[[PilotConfig], object]  # this setting's value in a built config
    secret: bool = False  # value never shown: `***` when set
    old_names: tuple[str, ...] = ()  # older spellings still accepted (with a warning)
    default_doc: str | None = None  # how docs show the default, when not just `default`

    @property
    def names(self) -> tuple[str, ...]:
        """Current name first, then the old spellings."""
        return (self.name, *self.old_names)


def _container(which: str, attr: str) -> Callable[[PilotConfig], object]:
    """Getter for a container's field (`task`/`init`/`teardown`); unset container -> blank."""

    def get(cfg: PilotConfig) -> object:
        container: ContainerConfig | None = getattr(cfg, which)
        return getattr(container, attr) if container is not None else None

    return get


def _attr(path: str) -> Callable[[PilotConfig], object]:
    """Getter for a (dotted) attribute of `PilotConfig`."""

    def get(cfg: PilotConfig) -> object:
        obj: object = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    return get


def _container_vars(which: str, section: str, what: str, extra_image_help: str) -> list[EnvVar]:
    upper = which.upper()
    return [
        EnvVar(
            name=f"EWMS_PILOT_{upper}_IMAGE",
            type=NAME,
            default="",
            section=section,
            help=f"Image to run {what}{extra_image_help}",
            get=_container(which, "image"),
            default_doc="required unless platform is `process`" if which == "task" else None,
        ),
        EnvVar(
            name=f"EWMS_PILOT_{upper}_ARGS",
            type=TEXT,
            default="",
            section=section,
            help=f"Arguments for the {which} command, split with shell-like quoting (never run by a shell)"
            + (
                "; required when platform is `process` (it is the command)"
                if which == "task"
                else ""
            ),
            get=_container(which, "args"),
        ),
        EnvVar(
            name=f"EWMS_PILOT_{upper}_ENV_JSON",
            type=ENV_JSON,
            default="{}",
            section=section,
            help=f'Extra env vars for the {which} as a JSON object, e.g. {{"K": "v"}}',
            get=_container(which, "env"),
        ),
    ]


def _broker_vars(direction: str) -> list[EnvVar]:
    upper = direction.upper()
    attr = direction  # PilotConfig.incoming / .outgoing
    section = f"{direction} queue"
    return [
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}",
            type=NAME,
            default="",
            section=section,
            help=f"Name of the {direction} queue",
            get=_attr(f"{attr}.queue"),
            default_doc="required",
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_AUTH_TOKEN",
            type=TEXT,
            default="",
            section=section,
            help=f"Auth token for the {direction} queue",
            get=_attr(f"{attr}.auth_token"),
            secret=True,
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_BROKER_TYPE",
            type=BROKER_TYPE,
            default="",
            section=section,
            help=f"Broker of the {direction} queue: rabbitmq, nats, pulsar or local (embedded SQLite)",
            get=_attr(f"{attr}.broker_type"),
            default_doc="required",
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_BROKER_ADDRESS",
            type=NAME,
            default="",
            section=section,
            help=f"Broker address of the {direction} queue (for local: the SQLite file); URL passwords are masked in logs",
            get=_attr(f"{attr}.address"),
            default_doc="required",
        ),
    ]


VARIABLES: tuple[EnvVar, ...] = (
    *_container_vars("task", "task", "for each event", ""),
    EnvVar(
        name="EWMS_PILOT_TASK_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="task",
        help="Seconds a task may run before it is killed and counted as failed",
        get=_attr("task.timeout"),
        old_names=("EWMS_PILOT_SUBPROC_TIMEOUT",),
        default_doc="no limit",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_MODE",
        type=TASK_MODE,
        default="oneshot",
        section="task",
        help="`oneshot`: one container per event; `warm`: long-lived workers take many events",
        get=_attr("task_mode"),
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_CONCURRENT_TASKS",
        type=INT_GE1,
        default="1",
        section="task",
        help="How many tasks run at the same time",
        get=_attr("max_concurrent_tasks"),
    ),
    *_container_vars("init", "init", "once before any event", " (empty: no init step)"),
    EnvVar(
        name="EWMS_PILOT_INIT_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="init",
        help="Seconds the init container may run",
        get=_container("init", "timeout"),
        default_doc="no limit",
    ),
    *_container_vars(
        "teardown", "teardown", "once after the last event", " (empty: no teardown step)"
    ),
    EnvVar(
        name="EWMS_PILOT_TEARDOWN_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="teardown",
        help="Seconds the teardown container may run",
        get=_container("teardown", "timeout"),
        default_doc="no limit",
    ),
    *_broker_vars("incoming"),
    EnvVar(
        name="EWMS_PILOT_PREFETCH",
        type=INT_GE1,
        default="1",
        section="incoming queue",
        help="Events held unacked at once (raised to EWMS_PILOT_MAX_CONCURRENT_TASKS if lower)",
        get=_attr("prefetch"),
    ),
    EnvVar(
        name="EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE",
        type=OPT_SECONDS_GT0,
        default="",
        section="incoming queue",
        help="Seconds to wait for the first event before ending with nothing done",
        get=_attr("timeout_first_message"),
        default_doc="= EWMS_PILOT_TIMEOUT_QUEUE_INCOMING",
    ),
    EnvVar(
        name="EWMS_PILOT_TIMEOUT_QUEUE_INCOMING",
        type=SECONDS_GT0,
        default="1",
        section="incoming queue",
        help="Seconds the incoming queue may stay empty before the pilot finishes",
        get=_attr("timeout_incoming"),
    ),
    *_broker_vars("outgoing"),
    EnvVar(
        name="EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST",
        type=DATA_DIR,
        default="",
        section="files",
        help="Directory holding `ewms-pilot-data/` (task dirs, data hub); relative paths resolve against the working directory",
        get=_attr("data_dir_parent"),
        default_doc="/",
    ),
    EnvVar(
        name="EWMS_PILOT_INFILE_EXT",
        type=EXT,
        default=".in",
        section="files",
        help="Extension of the file each event is written to for the task",
        get=_attr("infile_ext"),
    ),
    EnvVar(
        name="EWMS_PILOT_OUTFILE_EXT",
        type=EXT,
        default=".out",
        section="files",
        help="Extension of the file the task writes its result to",
        get=_attr("outfile_ext"),
    ),
    EnvVar(
        name="EWMS_PILOT_EXTERNAL_DIRECTORIES",
        type=ABS_PATH_LIST,
        default="",
        section="files",
        help="Comma-separated absolute host directories mounted read-only into tasks at the same path",
        get=_attr("external_directories"),
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_KEEP_ALL_TASK_FILES",
        type=BOOL,
        default="false",
        section="files",
        help="Keep every task's directory, not only those of failed tasks",
        get=_attr("keep_all_task_files"),
    ),
    EnvVar(
        name="EWMS_PILOT_DUMP_TASK_OUTPUT",
        type=BOOL,
        default="false",
        section="files",
        help="Copy each task's stdout/stderr to the pilot's stdout/stderr",
        get=_attr("dump_task_output"),
    ),
    EnvVar(
        name="EWMS_PILOT_CONTAINER_PLATFORM",
        type=PLATFORM,
        default="docker",
        section="runtime",
        help="How tasks run: docker, podman, apptainer, or process (plain host command, no image)",
        get=_attr("container_platform"),
        old_names=("_EWMS_PILOT_CONTAINER_PLATFORM",),
    ),
    EnvVar(
        name="EWMS_PILOT_CONTAINER_DEBUG",
        type=BOOL,
        default="false",
        section="runtime",
        help="Run the container tool with its debug output",
        get=_attr("container_debug"),
    ),
    EnvVar(
        name="_EWMS_PILOT_DOCKER_SHM_SIZE",
        type=OPT_TEXT,
        default="",
        section="runtime",
        help="docker `--shm-size` for tasks (e.g. 2g)",
        get=_attr("docker_shm_size"),
        default_doc="docker's default",
    ),
    EnvVar(
        name="_EWMS_PILOT_APPTAINER_BUILD_WORKDIR",
        type=BUILD_DIR,
        default="/var/tmp",
        section="runtime",
        help="Where apptainer builds SIF images",
        get=_attr("apptainer_build_workdir"),
    ),
    EnvVar(
        name="_EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT",
        type=BOOL,
        default="true",
        section="runtime",
        help="Apptainer images must be existing sandbox directories (no building from a registry)",
        get=_attr("apptainer_image_directory_must_be_present"),
    ),
    EnvVar(
        name="EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR",
        type=BOOL,
        default="true",
        section="task failures",
        help="After a task fails, take no new events (a bad node should not eat the queue)",
        get=_attr("stop_listening_on_task_error"),
    ),
    EnvVar(
        name="EWMS_PILOT_OKAY_ERRORS",
        type=NAME_LIST,
        default="",
        section="task failures",
        help="Task error class names that do not trigger EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR (comma/space separated)",
        get=_attr("okay_errors"),
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_QUARANTINE_TIME",
        type=SECONDS_GE0,
        default="0",
        section="task failures",
        help="Seconds to sleep after stopping on a task error, so HTCondor does not reuse a bad node at once",
        get=_attr("quarantine_time"),
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_FAIL_PATTERNS",
        type=REGEX_LIST,
        default="",
        section="task failures",
        help="JSON list of regexes; a task with a stdout/stderr line matching one counts as failed, even with exit code 0",
        get=_attr("task_fail_patterns"),
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_SHUTDOWN_GRACE",
        type=SECONDS_GE0,
        default="10",
        section="reliability",
        help="Seconds running tasks get to finish after SIGTERM before they are stopped (0: none)",
        get=_attr("shutdown_grace"),
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_DELIVERIES",
        type=INT_GE1,
        default="3",
        section="reliability",
        help="Attempts per event: an event whose task failed this many times is not run again "
        "(it goes to EWMS_PILOT_QUEUE_DEADLETTER, if set); evictions and crashes do not count",
        get=_attr("max_deliveries"),
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_REDELIVERIES",
        type=INT_GE1,
        default="20",
        section="reliability",
        help="Raw broker deliveries of one event (evictions, crashes, prefetch included): over this many "
        "it is dead-lettered without running (the event that kills every pilot that touches it)",
        get=_attr("max_redeliveries"),
    ),
    EnvVar(
        name="EWMS_PILOT_QUEUE_DEADLETTER",
        type=NAME,
        default="",
        section="reliability",
        help="Queue (on the incoming broker) for events over EWMS_PILOT_MAX_DELIVERIES or "
        "EWMS_PILOT_MAX_REDELIVERIES (empty: no dead-letter queue; such events are dropped with an error line)",
        get=_attr("queue_deadletter"),
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_PUBLISH_RETRIES",
        type=INT_GE0,
        default="5",
        section="reliability",
        help="Retries of a failed publish before the event is nacked",
        get=_attr("publish_retries"),
    ),
    EnvVar(
        name="EWMS_PILOT_PUBLISH_DEADLINE",
        type=SECONDS_GT0,
        default="60",
        section="reliability",
        help="Seconds one publish (with its retries) may take",
        get=_attr("publish_deadline"),
    ),
    EnvVar(
        name="EWMS_PILOT_RECONNECT_DEADLINE",
        type=SECONDS_GE0,
        default="120",
        section="reliability",
        help="Seconds to keep reconnecting to a lost broker before giving up (exit code 5)",
        get=_attr("reconnect_deadline"),
    ),
    EnvVar(
        name="EWMS_PILOT_CL_LOG",
        type=LOG_LEVEL,
        default="INFO",
        section="logging",
        help="Log level of the pilot's own loggers",
        get=_attr("log_level"),
    ),
    EnvVar(
        name="EWMS_PILOT_CL_LOG_THIRD_PARTY",
        type=LOG_LEVEL,
        default="WARNING",
        section="logging",
        help="Log level of third-party loggers",
        get=_attr("log_level_third_party"),
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP",
        type=BOOL,
        default="false",
        section="HTCondor chirp",
        help="Report status to HTCondor with chirp",
        get=_attr("htchirp"),
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP_DEST",
        type=CHIRP_DEST,
        default="JOB_ATTR",
        section="HTCondor chirp",
        help="Chirp destination: JOB_ATTR or JOB_EVENT_LOG",
        get=_attr("htchirp_dest"),
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL",
        type=SECONDS_GE0,
        default="60",
        section="HTCondor chirp",
        help="Minimum seconds between two chirp updates",
        get=_attr("htchirp_ratelimit_interval"),
    ),
)

BY_NAME: Mapping[str, EnvVar] = {name: var for var in VARIABLES for name in var.names}
"""Every accepted spelling (current and old) -> its variable."""
