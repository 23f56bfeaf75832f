"""Warm mode: long-lived task workers that take many events over a JSON-lines pipe.

See docs/warm-workers.md for the protocol; `pool.WarmPool` is what the pilot uses.
"""

from __future__ import annotations

from .pool import WarmPool, WarmResult, WarmStartError

__all__ = ["WarmPool", "WarmResult", "WarmStartError"]
