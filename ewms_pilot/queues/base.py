"""The small broker interface the pilot talks to; one implementation per broker family.

Every implementation keeps oms-mqclient's wire format (`mqclient.Message.serialize`),
so a producer or consumer elsewhere in EWMS reads what the pilot writes.
"""

from __future__ import annotations

import abc
import dataclasses as dc
from typing import Any

#: set in `Delivery.headers` when the payload is not in oms-mqclient's format
DECODE_ERROR_HEADER = "_ewms_pilot_decode_error"
#: with it, the undecodable payload itself (base64), so a dead-lettered copy keeps it
RAW_PAYLOAD_HEADER = "_ewms_pilot_raw_payload_b64"


@dc.dataclass
class Delivery:
    """One event handed to the pilot, not yet acked or nacked."""

    msg_id: str  # broker's id for logs; not unique across redeliveries
    data: Any  # decoded payload (`Message.data`)
    headers: dict[str, Any] = dc.field(default_factory=dict)  # `Message.headers`
    delivery_count: int | None = None  # 1 = first delivery; None = the broker cannot tell
    raw: Any = dc.field(default=None, repr=False)  # the implementation's own handle


class Subscription(abc.ABC):
    """Incoming queue with manual ack and a prefetch limit."""

    @abc.abstractmethod
    async def get(self, timeout: float) -> Delivery | None:
        """Next event, or None when none arrived within `timeout` seconds.

        Must never block the calling event loop. Once it returns a delivery
        the caller owns it: it must end in `ack` or `nack`.
        """

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The event is done: the broker forgets it."""

    @abc.abstractmethod
    async def nack(self, delivery: Delivery) -> None:
        """The event is given back: the broker redelivers it (here or elsewhere)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; unacked events return to the queue."""


class Publisher(abc.ABC):
    """Outgoing queue."""

    @abc.abstractmethod
    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        """Publish one message; returns only once the broker has confirmed it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection."""
