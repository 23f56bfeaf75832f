"""RabbitMQ through oms-mqclient (quorum queues, publisher confirms): the only code touching pika's objects.

Delivery count: quorum queues put `x-delivery-count` (earlier deliveries) in
the AMQP headers, which oms-mqclient's `get_message` drops, so `receive`
reads the channel itself. It counts every return to the queue (nacks,
channel closes, prefetch buffers): raw, never the pilot's attempt count.

A long task: RabbitMQ has no lease to renew; its `consumer_timeout`
(default 30 min) closes the channel of an event unacked for longer, and the
event is redelivered (docs/reliability.md). Heartbeats keep flowing between
calls (the connection thread's pump).

TLS (`amqps://`): oms-mqclient 2.7 cannot ask pika for it, so `open_rabbitmq`
builds oms-mqclient's own queue object and adds pika's TLS options before it
connects; the server's certificate is verified against the system's CAs
(`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar

import pika
from mqclient.broker_client_interface import Message
from mqclient.broker_clients.rabbitmq import RabbitMQPub, RabbitMQSub

from ..config.model import BrokerConfig
from .mqclient_conn import SETTLE_TIMEOUT, MQClientPublisher, MQClientSubscription, Opener

TLS_SCHEME = "amqps://"
TLS_PORT = 5671


async def open_rabbitmq(cfg: BrokerConfig, kind: str, prefetch: int) -> Any:
    """oms-mqclient's connected queue object, over TLS for an `amqps://` address."""
    tls = cfg.address[: len(TLS_SCHEME)].lower() == TLS_SCHEME
    address = cfg.address[len(TLS_SCHEME) :] if tls else cfg.address
    queue: Any = (
        RabbitMQSub(address, cfg.queue, cfg.auth_token, prefetch)
        if kind == "sub"
        else RabbitMQPub(address, cfg.queue, cfg.auth_token)
    )
    if tls:
        params = queue.parameters
        params.ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=params.host)
        if urllib.parse.urlsplit("//" + address).port is None:
            params.port = TLS_PORT
    await queue.connect()
    return queue


def _heartbeats(raw: Any) -> Callable[[], None] | None:
    """The keepalive of oms-mqclient's blocking pika connection, run between calls while tasks run."""
    conn = getattr(raw, "connection", None)
    if conn is not None and hasattr(conn, "process_data_events"):
        return lambda: conn.process_data_events(time_limit=0)
    return None


class RabbitMQPublisher(MQClientPublisher):
    """Outgoing RabbitMQ queue; `send` returns once the broker confirmed the message.

    The broker's `max_message_size` is not announced to clients (None here); a
    message over it closes the channel with 406 PRECONDITION_FAILED, a refusal
    for good.
    """

    open_raw: ClassVar[Opener | None] = open_rabbitmq
    pump_for = staticmethod(_heartbeats)

    def is_permanent_refusal(self, e: BaseException) -> bool:
        import pika.exceptions

        return (
            isinstance(e, pika.exceptions.ChannelClosedByBroker)
            and e.reply_code == 406
            and "max size" in str(e.reply_text)
        )


class RabbitMQSubscription(MQClientSubscription):
    """Incoming RabbitMQ quorum queue (the broker enforces prefetch too: `basic_qos`)."""

    publisher: ClassVar[type[MQClientPublisher]] = RabbitMQPublisher
    open_raw: ClassVar[Opener | None] = open_rabbitmq
    pump_for = staticmethod(_heartbeats)

    def connection_lost(self, raw: Any) -> bool:
        """pika's flags, kept current by the connection thread's pump (it sees the socket close)."""
        return not (raw.connection.is_open and raw.active_channels and raw.active_channels[0].is_open)

    async def receive(self, raw: Any, timeout: float) -> tuple[Message, int | None] | None:
        channel = raw.active_channels[0]
        for method, props, body in channel.consume(raw.queue, inactivity_timeout=timeout):
            if method is None:
                break
            msg = Message(method.delivery_tag, body if isinstance(body, bytes) else body.encode())
            msg._connection_id = channel.channel_number  # how oms-mqclient maps acks to channels
            previous = (props.headers or {}).get("x-delivery-count", 0) if props else 0
            return msg, int(previous) + 1
        if not (channel.is_open and raw.connection.is_open):  # pika reports a lost link as "nothing"
            raise ConnectionError("the connection to RabbitMQ was lost")
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
        async with asyncio.timeout(SETTLE_TIMEOUT):  # a scope, not `wait_for`: no task per settle
            await asyncio.shield(done)
