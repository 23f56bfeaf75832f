"""Build the frozen `PilotConfig` from an environ mapping, or explain the first mistake.

Only the mapping passed in is read (never `os.environ`), so the CLI, the 1.x
`consume_and_reply(**kwargs)` API and tests all go through the same checks.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError
from ..tasks.args import PLACEHOLDERS, split_args
from .model import (
    BrokerConfig,
    ChirpDest,
    ContainerConfig,
    ContainerPlatform,
    PilotConfig,
    TaskMode,
)
from .redact import MASK, redact_url
from .variables import BY_NAME, PREFIXES, VARIABLES, EnvVar

LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

# how close an unknown name must be to a known one to be called a typo (difflib ratio)
_TYPO_CUTOFF_SUFFIX = 0.8  # comparing the part after `EWMS_PILOT_`
_TYPO_CUTOFF_FULL = 0.9  # comparing whole names (typo in the prefix itself)


def _shown(var: EnvVar | None, name: str, raw: object) -> object:
    """The value as an error may show it: secrets masked, URL passwords masked."""
    if (var is not None and var.secret) or "TOKEN" in name.upper():
        return MASK
    if isinstance(raw, str):  # any value may be (a typo'd) broker address
        return redact_url(raw)
    return raw


def _suggest(key: str) -> str | None:
    """The known variable `key` is probably a misspelling of, if any."""
    upper = key.upper()
    if upper in BY_NAME:  # wrong case only
        return BY_NAME[upper].name
    for prefix in PREFIXES:
        if upper.startswith(prefix):
            suffixes = {n[len(prefix) :]: n for n in BY_NAME if n.startswith(prefix)}
            hits = difflib.get_close_matches(
                upper[len(prefix) :], suffixes, n=1, cutoff=_TYPO_CUTOFF_SUFFIX
            )
            if hits:
                return BY_NAME[suffixes[hits[0]]].name
    hits = difflib.get_close_matches(upper, BY_NAME, n=1, cutoff=_TYPO_CUTOFF_FULL)
    return BY_NAME[hits[0]].name if hits else None


def _check_unknown_names(environ: Mapping[str, str]) -> None:
    """A misspelled setting would silently fall back to its default: refuse it instead."""
    for key in sorted(environ):
        if key in BY_NAME or "EWMS" not in key.upper():
            continue
        suggestion = _suggest(key)
        if suggestion is not None:
            raise ConfigError(
                key,
                _shown(BY_NAME[suggestion], key, environ[key]),
                f"a known variable name (did you mean {suggestion}?)",
            )
        if key.upper().startswith(PREFIXES):
            LOGGER.warning("Ignoring unknown variable %s (see `ewms-pilot config --list`)", key)


def _override_text(name: str, value: object) -> tuple[EnvVar, str]:
    """An override (env var name -> typed or text value) as the env text it stands for."""
    var = BY_NAME.get(name)
    if var is None:
        suggestion = _suggest(name)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        raise ConfigError(
            name, _shown(None, name, value), f"a known EWMS_PILOT_* variable name{hint}"
        )
    if isinstance(value, str):
        return var, value
    try:
        return var, var.type.render(value)
    except (TypeError, ValueError):
        raise ConfigError(name, _shown(var, name, value), var.type.expected) from None


def _gather_text(
    environ: Mapping[str, str], overrides: Mapping[str, object]
) -> dict[str, tuple[str, str]]:
    """Current name -> (the spelling that was given, its text), for every variable given."""
    from_overrides = {}
    for name, value in overrides.items():
        var, text = _override_text(name, value)
        from_overrides[var.name] = (name, text)

    given: dict[str, tuple[str, str]] = {}
    for var in VARIABLES:
        if var.name in from_overrides:
            given[var.name] = from_overrides[var.name]
            continue
        present = [n for n in var.names if n in environ]
        if not present:
            continue
        used = present[0]  # the current name wins over old spellings
        if used != var.name:
            LOGGER.warning("%s is an old name; use %s instead", used, var.name)
        for ignored in present[1:]:
            LOGGER.warning("Ignoring %s since %s is set", ignored, used)
        given[var.name] = (used, environ[used])
    return given


class _Values:
    """Parsed values by current name, with typed access for building `PilotConfig`."""

    def __init__(self, given: Mapping[str, tuple[str, str]]) -> None:
        self.given = given
        self._parsed: dict[str, object] = {}
        for var in VARIABLES:  # table order: the first bad variable is the one reported
            used, text = given.get(var.name, (var.name, var.default))
            if var.type.blank_is_default and not text.strip():
                text = var.default
            try:
                self._parsed[var.name] = var.type.parse(text)
            except ValueError as e:
                raise ConfigError(
                    used, _shown(var, used, text), str(e) or var.type.expected
                ) from None

    def get(self, name: str, typ: type[_T]) -> _T:
        value = self._parsed[name]
        if not isinstance(value, typ):  # a bug in the table, not a user mistake
            raise TypeError(f"{name}: parsed {value!r}, not {typ.__name__}")
        return value

    def opt(self, name: str, typ: type[_T]) -> _T | None:
        return None if self._parsed[name] is None else self.get(name, typ)

    def used_name(self, name: str) -> str:
        return self.given.get(name, (name, ""))[0]

    def text(self, name: str) -> str:
        return self.given.get(name, (name, BY_NAME[name].default))[1]

    def fail(self, name: str, expected: str) -> ConfigError:
        used = self.used_name(name)
        return ConfigError(used, _shown(BY_NAME[name], used, self.text(name)), expected)


def _broker(v: _Values, direction: str) -> BrokerConfig:
    base = f"EWMS_PILOT_QUEUE_{direction.upper()}"
    queue = v.get(base, str)
    broker_type = v.get(f"{base}_BROKER_TYPE", str)
    address = v.get(f"{base}_BROKER_ADDRESS", str)
    if not queue:
        raise v.fail(base, f"the name of the {direction} queue (required)")
    if not broker_type:
        raise v.fail(f"{base}_BROKER_TYPE", "one of rabbitmq|nats|pulsar|local (required)")
    if not address:
        raise v.fail(
            f"{base}_BROKER_ADDRESS",
            f"the {direction} broker's address (required; for local: a SQLite file path)",
        )
    return BrokerConfig(
        queue=queue,
        broker_type=broker_type,
        address=address,
        auth_token=v.get(f"{base}_AUTH_TOKEN", str),
    )


def _args(v: _Values, name: str) -> str:
    """An `*_ARGS` value, checked now so a quoting mistake is a config error, not a task failure."""
    text = v.get(name, str)
    try:
        split_args(text)
    except ValueError as e:
        raise v.fail(name, f"arguments that split like a POSIX shell's ({e})") from None
    return text


def _container(v: _Values, which: str, platform: ContainerPlatform) -> ContainerConfig | None:
    """The init/teardown step, or None when it is not configured."""
    base = f"EWMS_PILOT_{which.upper()}"
    image = v.get(f"{base}_IMAGE", str)
    args = _args(v, f"{base}_ARGS")
    if platform is ContainerPlatform.PROCESS:
        if image:
            LOGGER.warning("Ignoring %s_IMAGE: platform is process (runs %s_ARGS)", base, base)
        configured, image = bool(args), ""
    else:
        configured = bool(image)
    if not configured:
        stray = [
            n
            for n in (f"{base}_ARGS", f"{base}_ENV_JSON", f"{base}_TIMEOUT")
            if v.text(n).strip() not in ("", BY_NAME[n].default)
        ]
        if stray:
            LOGGER.warning("Ignoring %s: no %s step is configured", ", ".join(stray), which)
        return None
    return ContainerConfig(
        image=image,
        args=args,
        env=v.get(f"{base}_ENV_JSON", dict),
        timeout=v.opt(f"{base}_TIMEOUT", float),
    )


def load_config(
    environ: Mapping[str, str], overrides: Mapping[str, object] | None = None
) -> PilotConfig:
    """Validate every `EWMS_PILOT_*` setting and build the config.

    `overrides` maps variable names to text or typed values (`None` = unset) and
    wins over `environ`; the 1.x-compatible API passes its keyword arguments this way.
    Raises `ConfigError` for the first problem found.
    """
    _check_unknown_names(environ)
    v = _Values(_gather_text(environ, overrides or {}))

    platform = v.get("EWMS_PILOT_CONTAINER_PLATFORM", ContainerPlatform)
    task_image = v.get("EWMS_PILOT_TASK_IMAGE", str)
    task_args = _args(v, "EWMS_PILOT_TASK_ARGS")
    if platform is ContainerPlatform.PROCESS:
        if not task_args.strip():
            raise v.fail(
                "EWMS_PILOT_TASK_ARGS",
                "the task command (required when EWMS_PILOT_CONTAINER_PLATFORM=process)",
            )
        if task_image:
            LOGGER.warning("Ignoring EWMS_PILOT_TASK_IMAGE: platform is process")
        task_image = ""
    elif not task_image:
        raise v.fail(
            "EWMS_PILOT_TASK_IMAGE",
            "the task's image (required unless EWMS_PILOT_CONTAINER_PLATFORM=process)",
        )
    task_mode = v.get("EWMS_PILOT_TASK_MODE", TaskMode)
    per_event = [p for p, what in PLACEHOLDERS.items() if what != "data_hub" and p in task_args]
    if task_mode is TaskMode.WARM and per_event:
        raise v.fail(
            "EWMS_PILOT_TASK_ARGS",
            f"no per-event placeholder ({', '.join(per_event)}) with EWMS_PILOT_TASK_MODE=warm: "
            "a warm worker gets each event's paths on its stdin (docs/warm-workers.md)",
        )
    task = ContainerConfig(
        image=task_image,
        args=task_args,
        env=v.get("EWMS_PILOT_TASK_ENV_JSON", dict),
        timeout=v.opt("EWMS_PILOT_TASK_TIMEOUT", float),
    )
    init = _container(v, "init", platform)
    teardown = _container(v, "teardown", platform)
    incoming = _broker(v, "incoming")
    outgoing = _broker(v, "outgoing")

    quarantine = v.get("EWMS_PILOT_QUARANTINE_TIME", float)
    stop_on_error = v.get("EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR", bool)
    if quarantine and not stop_on_error:
        raise v.fail(
            "EWMS_PILOT_QUARANTINE_TIME",
            "0 while EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR is false "
            "(quarantine only follows stopping on a task error)",
        )
    deadletter = v.get("EWMS_PILOT_QUEUE_DEADLETTER", str)
    if deadletter and deadletter == incoming.queue:
        raise v.fail(
            "EWMS_PILOT_QUEUE_DEADLETTER",
            "a queue other than EWMS_PILOT_QUEUE_INCOMING (events would loop)",
        )

    timeout_incoming = v.get("EWMS_PILOT_TIMEOUT_QUEUE_INCOMING", float)
    timeout_first = v.opt("EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE", float)

    return PilotConfig(
        task=task,
        incoming=incoming,
        outgoing=outgoing,
        init=init,
        teardown=teardown,
        prefetch=v.get("EWMS_PILOT_PREFETCH", int),
        timeout_first_message=timeout_incoming if timeout_first is None else timeout_first,
        timeout_incoming=timeout_incoming,
        infile_ext=v.get("EWMS_PILOT_INFILE_EXT", str),
        outfile_ext=v.get("EWMS_PILOT_OUTFILE_EXT", str),
        external_directories=v.get("EWMS_PILOT_EXTERNAL_DIRECTORIES", tuple),
        data_dir_parent=v.get("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", Path),
        keep_all_task_files=v.get("EWMS_PILOT_KEEP_ALL_TASK_FILES", bool),
        dump_task_output=v.get("EWMS_PILOT_DUMP_TASK_OUTPUT", bool),
        container_platform=platform,
        container_debug=v.get("EWMS_PILOT_CONTAINER_DEBUG", bool),
        docker_shm_size=v.opt("_EWMS_PILOT_DOCKER_SHM_SIZE", str),
        apptainer_build_workdir=v.get("_EWMS_PILOT_APPTAINER_BUILD_WORKDIR", Path),
        apptainer_image_directory_must_be_present=v.get(
            "_EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT", bool
        ),
        task_mode=task_mode,
        max_concurrent_tasks=v.get("EWMS_PILOT_MAX_CONCURRENT_TASKS", int),
        stop_listening_on_task_error=stop_on_error,
        okay_errors=v.get("EWMS_PILOT_OKAY_ERRORS", frozenset),
        quarantine_time=quarantine,
        task_fail_patterns=v.get("EWMS_PILOT_TASK_FAIL_PATTERNS", tuple),
        shutdown_grace=v.get("EWMS_PILOT_SHUTDOWN_GRACE", float),
        max_deliveries=v.get("EWMS_PILOT_MAX_DELIVERIES", int),
        max_redeliveries=v.get("EWMS_PILOT_MAX_REDELIVERIES", int),
        queue_deadletter=deadletter,
        publish_retries=v.get("EWMS_PILOT_PUBLISH_RETRIES", int),
        publish_deadline=v.get("EWMS_PILOT_PUBLISH_DEADLINE", float),
        reconnect_deadline=v.get("EWMS_PILOT_RECONNECT_DEADLINE", float),
        log_level=v.get("EWMS_PILOT_CL_LOG", str),
        log_level_third_party=v.get("EWMS_PILOT_CL_LOG_THIRD_PARTY", str),
        htchirp=v.get("EWMS_PILOT_HTCHIRP", bool),
        htchirp_dest=v.get("EWMS_PILOT_HTCHIRP_DEST", ChirpDest),
        htchirp_ratelimit_interval=v.get("EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL", float),
    )


def config_as_environ(cfg: PilotConfig) -> dict[str, str]:
    """The env vars that `load_config` turns back into `cfg` (includes secrets: never log it)."""
    return {var.name: var.type.render(var.get(cfg)) for var in VARIABLES}
