"""ewms-pilot: an event-driven task pilot for HTCondor (see README).

The public names (1.x's `consume_and_reply` and `ContainerRunError`, and the
errors `consume_and_reply` raises, which the README names) are imported on first
use, not here: `import ewms_pilot.worker` (what a task container runs) must
load nothing but the standard library — no scheduler, broker clients or htchirp.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    from importlib.metadata import version as _version

    __version__ = _version("ewms-pilot")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

#: public name -> the module that defines it
_LAZY = {
    "consume_and_reply": "ewms_pilot.api",
    "ContainerRunError": "ewms_pilot.tasks.errors",
    "InitContainerError": "ewms_pilot.api",
    "TasksFailedError": "ewms_pilot.api",
    "PilotStoppedError": "ewms_pilot.api",
    "ConfigError": "ewms_pilot.errors",
}

__all__ = ["__version__", *_LAZY]  # the lazy names are the public API


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ewms_pilot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
