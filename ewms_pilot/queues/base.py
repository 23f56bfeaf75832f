"""The small broker interface the pilot talks to; one adapter per broker family.

Every adapter keeps oms-mqclient's wire format (`mqclient.Message.serialize`,
see `codec.py`), so a producer or consumer elsewhere in EWMS reads what the
pilot writes. Settling returns what really happened (`Settlement`), so the
pilot never records an ack that did not take place.
"""

from __future__ import annotations

import abc
import dataclasses as dc
import enum
from typing import Any


class Settlement(str, enum.Enum):
    """What really happened to a delivery when the pilot settled it."""

    ACKED = "acked"  # broker forgot it
    REQUEUED = "requeued"  # failed attempt: back in the queue with attempts+1
    RELEASED = "released"  # given back unchanged (eviction, shutdown): attempts unchanged
    DEAD_LETTERED = "dead-lettered"  # copied to the DLQ (confirmed) and acked (one step where `settles_with`)
    DROPPED = "dropped"  # over the limit, no DLQ: acked and logged as lost on purpose
    LEFT = "left-for-redelivery"  # could not settle: the broker will redeliver it


@dc.dataclass
class Delivery:
    """One event handed to the pilot and not yet settled."""

    msg_id: str  # broker's id for logs; not unique across redeliveries
    data: Any  # decoded payload (`Message.data`); None when undecodable
    headers: dict[str, Any] = dc.field(default_factory=dict)  # the event's own (pilot headers stripped)
    attempts: int = 0  # failed task runs so far (pilot header), 0 = never failed
    delivery_count: int | None = None  # raw broker deliveries since the last (re)publish, 1 = first
    decode_error: str | None = None  # payload not in oms-mqclient's format
    raw_payload: bytes | None = dc.field(default=None, repr=False)  # the undecodable payload, for the DLQ
    raw: Any = dc.field(default=None, repr=False)  # the adapter's own handle


class Subscription(abc.ABC):
    """Incoming queue with manual settling and a prefetch limit.

    Settling never raises for a broker failure: it returns LEFT (and logs why).

    Renewing the broker's hold on every delivery handed out and not yet settled
    is the subscription's own job (NATS in-progress acks, local queue lease), so
    a task of any length runs once.
    """

    @abc.abstractmethod
    async def get(self, timeout: float) -> Delivery | None:
        """Next event, or None when none arrived within `timeout` seconds (or prefetch is full).

        Never blocks the calling event loop. Once it returns a delivery the
        caller owns it: it must end in `ack`, `release` or `requeue`.
        """

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> Settlement:
        """The event is done: ACKED, or LEFT when the broker could not be told."""

    @abc.abstractmethod
    async def release(self, delivery: Delivery) -> Settlement:
        """Give the event back unchanged (eviction, shutdown): RELEASED or LEFT."""

    @abc.abstractmethod
    async def requeue(self, delivery: Delivery, error: str, error_type: str) -> Settlement:
        """A failed attempt: the event goes back with attempts+1 and this error in its pilot headers.

        REQUEUED, or LEFT when it could not be settled. Brokers: a confirmed copy
        is published to the incoming queue, then the original is acked (a crash in
        between gives a duplicate, never a loss). An undecodable event cannot carry
        the count: it is released unchanged instead (RELEASED), so only the broker's
        raw delivery count bounds it.
        """

    def settles_with(self, publisher: Publisher) -> bool:
        """Can `ack_publishing` publish to `publisher` in the same atomic step as an ack?

        Only the local queue can (a publisher on the same database file); elsewhere the
        pilot publishes, then acks.
        """
        return False

    async def ack_publishing(
        self, delivery: Delivery, publisher: Publisher, data: Any, headers: dict[str, Any] | None = None
    ) -> Settlement:
        """Publish `data` (with `headers`) to `publisher`'s queue and ack `delivery`, all or nothing
        (`settles_with` only): a result, or a dead-letter copy.

        ACKED: both done (the copy as durable as `send` makes it). LEFT: neither, and the claim is
        gone (the event is redelivered; no duplicate copy). Raises `BrokerError`
        when the step failed and changed nothing: the event is still held, to try again or release.
        A call cancelled while under way may have done both or neither (only its end tells).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot publish with an ack")

    async def stop_taking(self) -> None:
        """The pilot takes no more events (it drains): give back what was taken ahead for it.

        Settling what was handed out still works. Only a subscription that reads ahead
        (the local queue) has anything to do.
        """
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; unsettled events return to the queue."""


class Publisher(abc.ABC):
    """Outgoing queue."""

    #: the broker's largest message in bytes, known after open where the broker tells it
    max_message_bytes: int | None = None

    @abc.abstractmethod
    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        """Publish one message; returns only once the broker has confirmed it.

        Raises `ResultRejectedError` when the broker refuses it for good (never
        worth retrying); any other `BrokerError` is transient.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection."""
