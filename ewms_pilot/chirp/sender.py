"""The backlog of values waiting to be chirped, and the blocking code that sends it.

Used by exactly one thread (the reporter's sender thread), so it needs no locks.
Every failure ends here as a log line: the pilot never sees a chirp exception.
"""

from __future__ import annotations

import logging
import math
import time

from ..config.model import ChirpDest
from ..config.redact import scrub
from . import encoding
from .connection import (
    ChirpConnection,
    ChirpConnectionError,
    ChirpRejectedError,
    ChirpUnavailableError,
)
from .status import ChirpAttr

LOGGER = logging.getLogger(__name__)

Value = str | int


class ChirpSender:
    """Keeps the latest value per attribute and sends them all, plus a timestamp, in one batch."""

    def __init__(self, dest: ChirpDest, ratelimit_interval: float, timeout: float) -> None:
        self._dest = dest
        self._interval = ratelimit_interval
        self._conn = ChirpConnection(timeout)
        self._backlog: dict[ChirpAttr, Value] = {}
        self._last_send = -math.inf  # monotonic time the last batch finished
        self._in_outage = False  # a batch was given up; warn again only after a success
        self._rejected: set[ChirpAttr] = set()  # attributes already warned about
        self._sent: dict[ChirpAttr, Value] = {}  # the value the server last accepted, per attribute
        self.unavailable = False  # chirp never worked: drop everything from now on

    def add(self, values: dict[ChirpAttr, Value]) -> None:
        """Replace the pending value of each attribute (only the latest one matters).

        A value equal to the one the server last accepted is not pending: it is
        not sent again.
        """
        if self.unavailable:
            return
        for attr, value in values.items():
            if isinstance(value, str):  # the one way in: values quote errors, errors may quote addresses
                value = scrub(value)
            if self._sent.get(attr) == value:
                self._backlog.pop(attr, None)
            else:
                self._backlog[attr] = value

    def seconds_until_due(self) -> float | None:
        """None when nothing is pending, else how long the rate limit still holds the backlog."""
        if not self._backlog:
            return None
        return self._last_send + self._interval - time.monotonic()

    def send_backlog(self) -> None:
        """Send every pending value, then `LastUpdatedTimestamp`; the backlog is empty afterwards.

        A value that cannot be sent is dropped (with a warning), never kept: in 1.x one
        value the server refused stayed in the backlog and blocked every later update.
        """
        if not self._backlog:
            return
        batch = dict(self._backlog)
        self._backlog.clear()
        batch[ChirpAttr.HTChirpEWMSPilotLastUpdatedTimestamp] = int(time.time())
        try:
            self._send_batch(batch)
        finally:
            self._last_send = time.monotonic()

    def _send_batch(self, batch: dict[ChirpAttr, Value]) -> None:
        items = list(batch.items())
        for i, (attr, value) in enumerate(items):
            try:
                self._send(attr, value)
                self._sent[attr] = value
            except ChirpUnavailableError as e:
                self.unavailable = True
                LOGGER.warning(
                    "HTCondor chirp unavailable: %s; continuing without status reports", e
                )
                return
            except ChirpRejectedError as e:
                log = LOGGER.debug if attr in self._rejected else LOGGER.warning
                self._rejected.add(attr)
                log("HTCondor chirp server refused %s (%s); dropping that value", attr.value, e)
            except ChirpConnectionError as e:
                log = LOGGER.debug if self._in_outage else LOGGER.warning
                self._in_outage = True
                dropped = ", ".join(a.value for a, _ in items[i:])
                log("HTCondor chirp update failed after a reconnect (%s); dropped %s", e, dropped)
                return
        if self._in_outage:
            self._in_outage = False
            LOGGER.info("HTCondor chirp updates go through again")

    def _send(self, attr: ChirpAttr, value: Value) -> None:
        name = attr.value
        if self._dest is ChirpDest.JOB_EVENT_LOG:
            text = encoding.ulog_text(name, value)
            LOGGER.debug("chirp ulog %s", text)
            self._conn.call(lambda client: client.ulog(text))
        else:
            expr = encoding.job_attr_expr(name, value)
            LOGGER.debug("chirp set_job_attr %s %s", name, expr)
            self._conn.call(lambda client: client.set_job_attr(name, expr))

    def close(self) -> None:
        """Close the connection; pending values are not sent (call `send_backlog` first)."""
        self._conn.close()
