"""ewms-pilot: an event-driven task pilot for HTCondor (see README)."""

from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("ewms-pilot")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

from .api import consume_and_reply

__all__ = ["__version__", "consume_and_reply"]
