"""RabbitMQ through oms-mqclient (quorum queues, publisher confirms): the only code touching pika's objects.

Delivery count: quorum queues put `x-delivery-count` (earlier deliveries) in
the AMQP headers, which oms-mqclient's `get_message` drops, so `receive`
reads the channel itself. It counts every return to the queue (nacks,
channel closes, prefetch buffers): raw, never the pilot's attempt count.

A long task: RabbitMQ has no lease to renew; its `consumer_timeout`
(default 30 min) closes the channel of an event unacked for longer, and the
event is redelivered (docs/reliability.md). Heartbeats keep flowing between
calls (the connection thread's pump).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from mqclient.broker_client_interface import Message

from .mqclient_conn import SETTLE_TIMEOUT, MQClientPublisher, MQClientSubscription


class RabbitMQPublisher(MQClientPublisher):
    """Outgoing RabbitMQ queue; `send` returns once the broker confirmed the message."""


class RabbitMQSubscription(MQClientSubscription):
    """Incoming RabbitMQ quorum queue (the broker enforces prefetch too: `basic_qos`)."""

    publisher: ClassVar[type[MQClientPublisher]] = RabbitMQPublisher
    @staticmethod
    def pump_for(raw: Any) -> Callable[[], None] | None:
        """Heartbeats for oms-mqclient's blocking pika connection while tasks run."""
        conn = getattr(raw, "connection", None)
        if conn is not None and hasattr(conn, "process_data_events"):
            return lambda: conn.process_data_events(time_limit=0)
        return None

    async def receive(self, raw: Any, timeout: float) -> tuple[Message, int | None] | None:
        channel = raw.active_channels[0]
        for method, props, body in channel.consume(raw.queue, inactivity_timeout=timeout):
            if method is None:
                return None
            msg = Message(method.delivery_tag, body if isinstance(body, bytes) else body.encode())
            msg._connection_id = channel.channel_number  # how oms-mqclient maps acks to channels
            previous = (props.headers or {}).get("x-delivery-count", 0) if props else 0
            return msg, int(previous) + 1
        return None

    async def settle_raw(self, raw: Any, msg: Message, ack: bool) -> None:
        """Through pika's one thread-safe door, so it need not wait for a pending `get`.

        The broker thread may sit in a `get` for up to a poll slice; the
        callback runs inside that wait (or in the pump right after), so the
        broker sees the ack within milliseconds and can hand out the next event.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        channel = raw.active_channels[0]

        def _on_thread() -> None:
            try:
                if ack:
                    channel.basic_ack(msg.msg_id, multiple=False)
                else:
                    channel.basic_nack(msg.msg_id, multiple=False, requeue=True)
            except Exception as e:
                loop.call_soon_threadsafe(_resolve, e)
            else:
                loop.call_soon_threadsafe(_resolve, None)

        def _resolve(error: Exception | None) -> None:
            if not done.done():
                done.set_exception(error) if error else done.set_result(None)

        raw.connection.add_callback_threadsafe(_on_thread)
        self._conn.thread.pump_soon()
        await asyncio.wait_for(asyncio.shield(done), SETTLE_TIMEOUT)
