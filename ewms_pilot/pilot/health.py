"""Since when each broker connection has been failing, fed by the outcome of every broker call.

The consume loop reads it on every round, also while all slots are busy, so a
broker lost for good is noticed at the reconnect deadline even when no `get`
is being made (every task stuck publishing to the same dead server).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class BrokerHealth:
    """`failed(which, error)` / `ok(which)`; `worst()` is the longest current outage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._since: dict[str, float] = {}
        self._error: dict[str, str] = {}

    def failed(self, which: str, error: BaseException | str) -> None:
        self._since.setdefault(which, self.clock())
        self._error[which] = str(error)

    def ok(self, which: str) -> None:
        self._since.pop(which, None)
        self._error.pop(which, None)

    def down_for(self, which: str) -> float | None:
        since = self._since.get(which)
        return None if since is None else self.clock() - since

    @property
    def down(self) -> bool:
        return bool(self._since)

    def worst(self) -> tuple[str, float, str] | None:
        """(which, seconds down, last error) of the longest current outage, or None."""
        if not self._since:
            return None
        which = min(self._since, key=self._since.__getitem__)
        return which, self.clock() - self._since[which], self._error[which]
