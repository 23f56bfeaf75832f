"""Make settings safe to print: mask URL passwords and secret variables.

The entrypoint prints every effective setting at start (so a site admin can see
what a pilot really ran with); this module is what keeps tokens out of that log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import PilotConfig

MASK = "***"

# `user:password@` right after `scheme://`, a comma (multi-host URLs) or the start;
# the password runs to the last `@` before the next `/`, `,` or whitespace.
_USERINFO = re.compile(r"(?P<pre>^|://|,)(?P<user>[^:@/,\s]*):(?P<password>[^/,\s]*)@")


def redact_url(url: str) -> str:
    """`scheme://user:pass@host` -> `scheme://user:***@host`; anything else unchanged."""

    def mask(m: re.Match[str]) -> str:
        if not m["password"]:
            return m[0]
        return f"{m['pre']}{m['user']}:{MASK}@"

    return _USERINFO.sub(mask, url)


def _shown(name: str, text: str, secret: bool) -> str:
    """What the banner prints for one value: masked, and always on one line."""
    if secret:
        return MASK if text else ""
    if name.endswith("_ADDRESS"):
        text = redact_url(text)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def effective_config_lines(source: PilotConfig | Mapping[str, str]) -> list[str]:
    """`NAME=value` for every variable, in table order, secrets as `***` (set) or empty.

    From a `PilotConfig`: the values the pilot runs with (defaults filled in).
    From an environ mapping: the raw text each variable was given, or
    `<default> (default)` when unset - usable even when the config is invalid.
    """
    from .model import PilotConfig
    from .variables import VARIABLES

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
