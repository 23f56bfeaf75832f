"""Build the frozen `PilotConfig` from an environ mapping, or explain the first mistake.

Only the mapping passed in is read (never `os.environ`), so the CLI, the 1.x
`consume_and_reply(...)` API and tests all go through the same checks. Every
value is parsed by its table entry and lands in the field the entry names;
what is left here are the rules between settings. Nothing is created or
connected: a config error means nothing was consumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..resources.disk import default_min_free
from ..resources.lifetime import find_lifetime
from ..resources.sizing import AUTO, SizingError, size_tasks
from ..resources.slot import discover
from ..tasks.args import PLACEHOLDERS, split_args
from .addresses import normalize_address
from .checks import check_loaded
from .datadir import SCRATCH_VAR, scratch_dir
from .model import BrokerConfig, ContainerConfig, ContainerPlatform, PilotConfig, TaskMode
from .names import check_unknown_names, suggest, unknown_names
from .redact import MASK, MIN_SECRET_CHARS, looks_secret, redact_env_json, register_settings, scrub
from .types import MAX_COUNT
from .vacate import fit_grace, vacate_seconds
from .variables import BY_NAME, VARIABLES, EnvVar

LOGGER = logging.getLogger(__name__)

# nested configs of `PilotConfig`, by the first part of a table entry's `field`
_GROUPS: Mapping[str, type[ContainerConfig] | type[BrokerConfig]] = {
    "task": ContainerConfig,
    "init": ContainerConfig,
    "teardown": ContainerConfig,
    "incoming": BrokerConfig,
    "outgoing": BrokerConfig,
}


def _shown(var: EnvVar | None, name: str, raw: object) -> object:
    """The value as an error may show it: secrets masked, URL passwords masked."""
    if (var is not None and var.secret) or looks_secret(name):
        return MASK
    if isinstance(raw, str):  # any value may be (a typo'd) broker address
        return scrub(redact_env_json(name, raw))
    return raw


def _override_text(name: str, value: object) -> tuple[EnvVar, str]:
    """An override (env var name -> typed or text value) as the env text it stands for."""
    var = BY_NAME.get(name)
    if var is None:
        known = suggest(name)
        hint = f" (did you mean {known.name}?)" if known else ""
        raise ConfigError(name, _shown(None, name, value), f"a known EWMS_PILOT_* variable name{hint}")
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
    """Every variable parsed (table order: the first bad one is reported), by current name."""

    def __init__(self, given: Mapping[str, tuple[str, str]], environ: Mapping[str, str]) -> None:
        self.given = given
        self.environ = environ
        self.parsed: dict[str, Any] = {}
        for var in VARIABLES:
            used, text = given.get(var.name, (var.name, var.default))
            if var.type.blank_is_default and not text.strip():
                text = var.default
            try:
                self.parsed[var.name] = var.type.parse(text)
            except ValueError as e:
                raise ConfigError(used, _shown(var, used, text), str(e) or var.type.expected) from None

    def __getitem__(self, name: str) -> Any:
        return self.parsed[name]

    def text(self, name: str) -> str:
        return self.given.get(name, (name, BY_NAME[name].default))[1]

    def fail(self, name: str, expected: str) -> ConfigError:
        """The error for variable `name`, naming a misspelled variable that stood for it."""
        used = self.given.get(name, (name, ""))[0]
        typos = [k for k in unknown_names(self.environ) if (v := suggest(k)) and v.name == name]
        if typos:
            expected += f"; {', '.join(typos)} is set: misspelled?"
        return ConfigError(used, _shown(BY_NAME[name], used, self.text(name)), expected)


def _fields(v: _Values) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parsed values by the field their table entry names: top level, and per nested config."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for var in VARIABLES:
        head, _, rest = var.field.partition(".")
        if rest:
            nested[head][rest] = v[var.name]
        else:
            top[head] = v[var.name]
    return top, nested


def _check_args(v: _Values, name: str) -> None:
    """An `*_ARGS` value, checked now so a quoting mistake is a config error, not a task failure."""
    try:
        split_args(v[name])
    except ValueError as e:
        raise v.fail(name, f"arguments that split like a POSIX shell's ({e})") from None


def _task(v: _Values, fields: dict[str, Any], platform: ContainerPlatform) -> ContainerConfig:
    _check_args(v, "EWMS_PILOT_TASK_ARGS")
    if platform is ContainerPlatform.PROCESS:
        if not fields["args"].strip():
            raise v.fail(
                "EWMS_PILOT_TASK_ARGS",
                "the task command (required when EWMS_PILOT_CONTAINER_PLATFORM=process)",
            )
        if fields["image"]:
            LOGGER.warning("Ignoring EWMS_PILOT_TASK_IMAGE: platform is process")
        fields["image"] = ""
    elif not fields["image"]:
        raise v.fail(
            "EWMS_PILOT_TASK_IMAGE",
            "the task's image (required unless EWMS_PILOT_CONTAINER_PLATFORM=process)",
        )
    per_event = [p for p, what in PLACEHOLDERS.items() if what != "data_hub" and p in fields["args"]]
    if v["EWMS_PILOT_TASK_MODE"] is TaskMode.WARM and per_event:
        raise v.fail(
            "EWMS_PILOT_TASK_ARGS",
            f"no per-event placeholder ({', '.join(per_event)}) with EWMS_PILOT_TASK_MODE=warm: "
            "a warm worker gets each event's paths on its stdin (docs/warm-workers.md)",
        )
    return ContainerConfig(**fields)


def _step(
    v: _Values, which: str, fields: dict[str, Any], platform: ContainerPlatform
) -> ContainerConfig | None:
    """The init/teardown step, or None when it is not configured."""
    base = f"EWMS_PILOT_{which.upper()}"
    _check_args(v, f"{base}_ARGS")
    if platform is ContainerPlatform.PROCESS:
        if fields["image"]:
            LOGGER.warning("Ignoring %s_IMAGE: platform is process (runs %s_ARGS)", base, base)
        configured, fields["image"] = bool(fields["args"]), ""
    else:
        configured = bool(fields["image"])
    if configured:
        return ContainerConfig(**fields)
    stray = [
        n
        for n in (f"{base}_ARGS", f"{base}_ENV_JSON", f"{base}_TIMEOUT")
        if v.text(n).strip() not in ("", BY_NAME[n].default)
    ]
    if stray:
        LOGGER.warning("Ignoring %s: no %s step is configured", ", ".join(stray), which)
    return None


def _broker(v: _Values, direction: str, fields: dict[str, Any]) -> BrokerConfig:
    base = f"EWMS_PILOT_QUEUE_{direction.upper()}"
    if not fields["queue"]:
        raise v.fail(base, f"the name of the {direction} queue (required)")
    if not fields["broker_type"]:
        raise v.fail(f"{base}_BROKER_TYPE", "one of rabbitmq|nats|pulsar|local (required)")
    if not fields["address"]:
        raise v.fail(
            f"{base}_BROKER_ADDRESS",
            f"the {direction} broker's address (required; for local: a SQLite file path)",
        )
    try:
        fields["address"] = normalize_address(fields["broker_type"], fields["address"])
    except ValueError as e:
        raise v.fail(f"{base}_BROKER_ADDRESS", str(e)) from None
    return BrokerConfig(**fields)


def _data_dir(v: _Values, top: dict[str, Any]) -> None:
    """Unset under HTCondor: the job's scratch dir (a job may write nowhere else)."""
    name = "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"
    scratch = scratch_dir(v.environ)
    if scratch is not None and not v.text(name).strip():
        try:
            top["data_dir_parent"] = BY_NAME[name].type.parse(scratch)
        except ValueError as e:
            raise ConfigError(SCRATCH_VAR, scratch, str(e)) from None


def _fit_grace_to_vacate(v: _Values, top: dict[str, Any]) -> None:
    """Under HTCondor the grace must end before the job is SIGKILLed (config/vacate.py)."""
    vacate = vacate_seconds(v.environ)
    fitted = fit_grace(top["shutdown_grace"], vacate)
    if fitted != top["shutdown_grace"]:
        LOGGER.warning(
            f"EWMS_PILOT_SHUTDOWN_GRACE={top['shutdown_grace']:g}s does not fit in the {vacate:g}s"
            f" HTCondor gives this job to vacate (JobMaxVacateTime/MachineMaxVacateTime):"
            f" using {fitted:g}s"
        )
        top["shutdown_grace"] = fitted


def _cross_checks(v: _Values, top: dict[str, Any], incoming: BrokerConfig) -> None:
    if top["quarantine_time"] and not top["stop_listening_on_task_error"]:
        raise v.fail(
            "EWMS_PILOT_QUARANTINE_TIME",
            "0 while EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR is false "
            "(quarantine only follows stopping on a task error)",
        )
    if top["queue_deadletter"] and top["queue_deadletter"] == incoming.queue:
        raise v.fail(
            "EWMS_PILOT_QUEUE_DEADLETTER",
            "a queue other than EWMS_PILOT_QUEUE_INCOMING (events would loop)",
        )
    if top["timeout_first_message"] is None:
        top["timeout_first_message"] = top["timeout_incoming"]


def _resources(v: _Values, top: dict[str, Any]) -> None:
    """The slot, and `auto` concurrency/memory resolved from it: the pilot only sees numbers."""
    slot = discover(v.environ, disk_path=top["data_dir_parent"])
    if top["task_stall_timeout"] is not None and top["task_mode"] is TaskMode.WARM:
        raise v.fail(
            "EWMS_PILOT_TASK_STALL_TIMEOUT", "empty with EWMS_PILOT_TASK_MODE=warm (it watches one-shot tasks)"
        )
    if top["task_gpus"] and top["task_mode"] is TaskMode.WARM:
        raise v.fail("EWMS_PILOT_TASK_GPUS", "0 with EWMS_PILOT_TASK_MODE=warm (GPUs go to one-shot tasks)")
    try:
        sizing = size_tasks(
            slot,
            concurrency=top["max_concurrent_tasks"],
            task_cpus=top["task_cpus"],
            task_memory=top["task_memory"],
            task_gpus=top["task_gpus"],
            max_count=MAX_COUNT,
        )
    except SizingError as e:
        raise v.fail(e.variable, e.expected) from None
    for note in sizing.notes:
        LOGGER.warning(note)
    if sizing.task_memory and top["container_platform"] is ContainerPlatform.APPTAINER:
        from ..runtimes.apptainer import (
            memory_limit_enforceable,  # local: runtimes import the model
        )

        if not memory_limit_enforceable():
            LOGGER.warning(
                "EWMS_PILOT_TASK_MEMORY is not enforced: apptainer needs root or cgroup v2 for --memory"
            )
    top.update(
        max_concurrent_tasks=sizing.max_concurrent_tasks,
        task_memory=sizing.task_memory,
        slot=slot,
        lifetime_end=find_lifetime(top["lifetime"], slot, time.time()),
        min_free_disk=default_min_free(slot.disk_bytes) if top["min_free_disk"] == AUTO else top["min_free_disk"],
    )


def load_config(
    environ: Mapping[str, str], overrides: Mapping[str, object] | None = None
) -> PilotConfig:
    """Validate every `EWMS_PILOT_*` setting and build the config.

    `overrides` maps variable names to text or typed values (`None` = unset) and
    wins over `environ`; the 1.x-compatible API passes its keyword arguments this way.
    Raises `ConfigError` for the first problem found.
    """
    # first: even the error about a setting must not show a secret
    for name in register_settings(environ) + register_settings(overrides or {}):
        LOGGER.warning(
            f"{name} holds a secret shorter than {MIN_SECRET_CHARS} characters: it is masked where the "
            "pilot knows it stands (settings, addresses), but not searched for in other text "
            "(e.g. a task's or a library's messages); use a longer one"
        )
    given = _gather_text(environ, overrides or {})
    v = _Values(given, environ)
    check_unknown_names(environ, given, strict=v["EWMS_PILOT_STRICT_CONFIG"])
    top, nested = _fields(v)
    platform = top["container_platform"]
    task = _task(v, nested["task"], platform)
    init = _step(v, "init", nested["init"], platform)
    teardown = _step(v, "teardown", nested["teardown"], platform)
    incoming = _broker(v, "incoming", nested["incoming"])
    outgoing = _broker(v, "outgoing", nested["outgoing"])
    _cross_checks(v, top, incoming)
    _data_dir(v, top)
    _resources(v, top)
    _fit_grace_to_vacate(v, top)
    cfg = PilotConfig(
        task=task, init=init, teardown=teardown, incoming=incoming, outgoing=outgoing, **top
    )

    def name_of(name: str) -> str:
        if name == "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST" and name not in given:
            return SCRATCH_VAR if scratch_dir(environ) else name
        return given.get(name, (name, ""))[0]

    check_loaded(cfg, name_of)
    return cfg


def config_as_environ(cfg: PilotConfig) -> dict[str, str]:
    """The env vars that `load_config` turns back into `cfg` (includes secrets: never log it)."""
    return {var.name: var.type.render(var.get(cfg)) for var in VARIABLES}
