"""The effective configuration as `NAME=value` lines, safe to print.

The entrypoint prints it at start (`ewms-pilot config --check`) so a site
admin can see what a pilot really ran with; secrets show as `***` and URL
passwords are masked (`redact.redact_url`).
"""

from __future__ import annotations

from collections.abc import Mapping

from .model import PilotConfig
from .redact import MASK, redact_env_json, redact_url
from .variables import VARIABLES


def _shown(name: str, text: str, secret: bool) -> str:
    """What the banner prints for one value: masked, and always on one line."""
    if secret:
        return MASK if text else ""
    if name.endswith("_ADDRESS"):
        text = redact_url(text)
    text = redact_env_json(name, text)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def effective_config_lines(source: PilotConfig | Mapping[str, str]) -> list[str]:
    """`NAME=value` for every variable, in table order, secrets as `***` (set) or empty.

    From a `PilotConfig`: the values the pilot runs with (defaults filled in).
    From an environ mapping: the raw text each variable was given, or
    `<default> (default)` when unset - usable even when the config is invalid.
    """
    lines: list[str] = []
    for var in VARIABLES:
        if isinstance(source, PilotConfig):
            text = var.type.render(var.get(source))
            lines.append(f"{var.name}={_shown(var.name, text, var.secret)}")
            continue
        given = next((n for n in var.names if n in source), None)
        if given is None:
            lines.append(f"{var.name}={var.default} (default)")
        else:
            shown = _shown(var.name, source[given], var.secret)
            via = f" (from {given})" if given != var.name else ""
            lines.append(f"{var.name}={shown}{via}")
    return lines


def resources_line(cfg: PilotConfig) -> str:
    """`slot: ...; the pilot runs up to N task(s) ...`: what was found and what is used of it."""
    from ..resources.sizing import describe_use

    if cfg.slot is None:
        return "slot: not looked at"
    line = describe_use(cfg.slot, cfg.max_concurrent_tasks, cfg.task_memory, cfg.task_gpus)
    return line if cfg.lifetime_end is None else f"{line}; {cfg.lifetime_end.describe()}"
