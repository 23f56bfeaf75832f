"""Apache Pulsar through oms-mqclient: its own `get_message` / `ack_message` / `reject_message`.

oms-mqclient's Pulsar message drops the redelivery count, so `delivery_count`
is None (unknown): only the pilot's attempt count bounds a failing event.
A long task: Pulsar has no ack timeout unless the consumer sets one
(oms-mqclient does not), so an unacked event stays with its consumer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mqclient.broker_client_interface import Message

from .mqclient_conn import (
    RETRIES,
    RETRY_DELAY,
    SETTLE_TIMEOUT,
    MQClientPublisher,
    MQClientSubscription,
)


class PulsarPublisher(MQClientPublisher):
    """Outgoing Pulsar topic."""


class PulsarSubscription(MQClientSubscription):
    """Incoming Pulsar subscription (oms-mqclient's shared subscription)."""

    publisher: ClassVar[type[MQClientPublisher]] = PulsarPublisher

    async def receive(self, raw: Any, timeout: float) -> tuple[Message, int | None] | None:
        msg = await raw.get_message(max(int(timeout * 1000), 1), retries=RETRIES, retry_delay=RETRY_DELAY)
        return (msg, None) if msg is not None else None

    async def settle_raw(self, raw: Any, msg: Message, ack: bool) -> None:
        call = raw.ack_message if ack else raw.reject_message
        await self._conn.call(call(msg, retries=RETRIES, retry_delay=RETRY_DELAY), SETTLE_TIMEOUT, "settling")
