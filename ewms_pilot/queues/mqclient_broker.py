"""RabbitMQ, NATS JetStream and Pulsar through oms-mqclient's broker clients.

oms-mqclient fixes the wire format the rest of EWMS speaks; this module only
adapts its `Sub`/`Pub` objects to the pilot's `Subscription`/`Publisher` and
runs each connection on its own `BrokerThread` so the pilot's loop never
waits on broker I/O. A lost connection is reopened on the next call; events
held on the lost connection are redelivered by the broker, so acking or
nacking them is skipped with a log line (at-least-once, never lost).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

from mqclient import broker_client_manager
from mqclient.broker_client_interface import Message, MQClientException, Pub, Sub

from ..config.model import BrokerConfig
from ..config.redact import redact_url
from ..errors import BrokerError, BrokerUnavailableError
from .base import DECODE_ERROR_HEADER, RAW_PAYLOAD_HEADER, Delivery, Publisher, Subscription
from .broker_thread import BrokerThread

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = 1  # oms-mqclient's own retry count per call; the pilot adds its own policy
RETRY_DELAY = 0.5
SETTLE_TIMEOUT = 30.0  # s: an ack/nack the broker connection has not taken by then has failed
CALL_SLACK = 10.0  # s: beyond its own timeout, how long a broker call may hang before it is abandoned
OPEN_TIMEOUT = 60.0  # s: connecting (clients retry internally; nats-py for minutes)
SEND_TIMEOUT = 15.0  # s: one publish, confirm included
RAW_PAYLOAD_KEEP = 1024 * 1024  # bytes of an undecodable payload kept (base64) for the dead-letter queue


def _client(cfg: BrokerConfig) -> Any:
    try:
        return broker_client_manager.get_broker_client(cfg.broker_type)
    except MQClientException as e:
        raise BrokerUnavailableError(f"{cfg.broker_type}: {e}") from e


def _where(cfg: BrokerConfig) -> str:
    return f"{cfg.broker_type} queue '{cfg.queue}' at {redact_url(cfg.address)}"


def _pump_for(raw: Any) -> Any:
    """The keepalive for a pika connection (None for async clients, which need none)."""
    conn = getattr(raw, "connection", None)
    if conn is not None and hasattr(conn, "process_data_events"):
        return lambda: conn.process_data_events(time_limit=0)
    return None


def nats_delivery_count(reply_subject: Any) -> int | None:
    """JetStream puts the delivery count in the ack subject: `$JS.ACK.<stream>.<consumer>.<n>....`."""
    if not isinstance(reply_subject, str) or not reply_subject.startswith("$JS.ACK."):
        return None
    tokens = reply_subject.split(".")
    index = 4 if len(tokens) == 9 else 6  # v1 vs v2 (domain + account hash) subjects
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return None


async def _settle_nats(sub: Any, msg: Message, ack: bool) -> None:
    """Ack/nak by the JetStream reply subject alone.

    oms-mqclient rebuilds the NATS message from the *decoded* payload first,
    which fails for an event not in its format, so such an event could never
    be acked or dead-lettered; the reply subject is all JetStream needs.
    """
    import nats.aio.msg

    reply = nats.aio.msg.Msg(_client=sub._nats_client, subject=sub.subject, reply=str(msg.msg_id), data=b"")
    await (reply.ack() if ack else reply.nak())


def _rabbitmq_get(sub: Any, timeout: float) -> tuple[Message | None, int | None]:
    """One message from oms-mqclient's RabbitMQ channel, keeping its delivery count.

    oms-mqclient's own `get_message` drops the AMQP properties, where quorum
    queues (which it declares) put `x-delivery-count`, the number of earlier
    deliveries; the pilot needs it to dead-letter poison events. The channel,
    queue declaration, acks and nacks stay oms-mqclient's.
    """
    channel = sub.active_channels[0]
    for method, props, body in channel.consume(sub.queue, inactivity_timeout=timeout):
        if method is None:
            return None, None
        msg = Message(method.delivery_tag, body if isinstance(body, bytes) else body.encode())
        msg._connection_id = channel.channel_number  # how oms-mqclient maps acks to channels
        previous = (props.headers or {}).get("x-delivery-count", 0) if props else 0
        return msg, int(previous) + 1
    return None, None


class _Connection:
    """One oms-mqclient queue object on its thread, reopened when it breaks.

    Every call is bounded in time: a call that hangs (a broker that stalls, or
    nats-py retrying a dead server for minutes) abandons the connection and its
    thread, and the next call starts afresh on a new thread.
    """

    def __init__(self, cfg: BrokerConfig, kind: str, prefetch: int = 1) -> None:
        self.cfg = cfg
        self.kind = kind
        self.prefetch = prefetch
        self.thread = self._new_thread()
        self.raw: Any = None
        self.generation = 0
        self._opening = asyncio.Lock()

    def _new_thread(self) -> BrokerThread:
        return BrokerThread(
            f"broker-{self.kind}-{self.cfg.queue}", serialize=self.cfg.broker_type != "nats"
        )

    async def call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run `coro` on the connection's thread; past `timeout` abandon the connection."""
        try:
            return await asyncio.wait_for(self.thread.call(coro), timeout)
        except TimeoutError:
            self.abandon()
            raise BrokerError(f"{what} on {_where(self.cfg)} hung for {timeout:.0f}s") from None

    def abandon(self) -> None:
        """Leave a hung connection to its (daemon) thread; later calls get a new one."""
        LOGGER.warning(f"abandoning a hung {self.kind} connection to {_where(self.cfg)}")
        old = self.thread
        self.raw = None
        self.thread = self._new_thread()
        old.stop(timeout=0)

    async def ensure_open(self) -> Any:
        """The live queue object, connecting first if needed (one connect at a time)."""
        async with self._opening:
            if self.raw is None:
                await self.open()
            return self.raw

    async def open(self) -> None:
        self.thread.start()
        client = _client(self.cfg)

        async def _open() -> Any:
            if self.kind == "sub":
                return await client.create_sub_queue(
                    self.cfg.address, self.cfg.queue, self.prefetch, self.cfg.auth_token
                )
            return await client.create_pub_queue(
                self.cfg.address, self.cfg.queue, self.cfg.auth_token
            )

        try:
            self.raw = await self.call(_open(), OPEN_TIMEOUT, "connecting")
        except BrokerError:
            raise
        except Exception as e:
            raise BrokerUnavailableError(
                f"cannot connect to {_where(self.cfg)}: {type(e).__name__}: {e}"
            ) from e
        self.generation += 1
        self.thread.set_pump(_pump_for(self.raw))
        LOGGER.info(f"connected ({self.kind}) to {_where(self.cfg)}")

    async def drop(self) -> None:
        """Forget a broken connection (closing it best-effort)."""
        raw, self.raw = self.raw, None
        self.thread.set_pump(None)
        if raw is not None:
            try:
                await asyncio.wait_for(self.thread.call(raw.close()), 5)
            except TimeoutError:
                self.abandon()
            except Exception:
                pass

    async def close(self) -> None:
        await self.drop()
        await asyncio.to_thread(self.thread.stop)

    def check_nats_connected(self) -> None:
        """Raise `BrokerError` while nats-py has lost its server (it reconnects in the background).

        Calling the client meanwhile would hang: oms-mqclient's retry reconnects with
        `nats.connect()`, which tries a dead server for minutes.
        """
        client = getattr(self.raw, "_nats_client", None)  # oms-mqclient's NATS queue object
        if client is not None and not client.is_connected:
            raise BrokerError(f"{_where(self.cfg)} is disconnected (nats-py is reconnecting)")


class MQClientSubscription(Subscription):
    """Incoming queue on RabbitMQ / NATS / Pulsar."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, cfg: BrokerConfig, prefetch: int) -> MQClientSubscription:
        conn = _Connection(cfg, "sub", prefetch)
        await conn.open()
        return cls(conn)

    def _to_delivery(self, msg: Message, count: int | None) -> Delivery:
        """Decode on the broker thread: a large payload must not stall the pilot's loop."""
        if self._conn.cfg.broker_type == "nats":
            count = nats_delivery_count(msg.msg_id)
        try:
            data, headers = msg.data, msg.headers
        except Exception as e:  # not oms-mqclient's format: keep it so it can be failed/nacked
            data, headers = None, {
                DECODE_ERROR_HEADER: f"{type(e).__name__}: {e}",
                RAW_PAYLOAD_HEADER: base64.b64encode(msg.payload[:RAW_PAYLOAD_KEEP]).decode(),
            }
        return Delivery(
            msg_id=str(msg.msg_id),
            data=data,
            headers=headers if isinstance(headers, dict) else {},
            delivery_count=count,
            raw=(self._conn.generation, msg),
        )

    async def get(self, timeout: float) -> Delivery | None:
        sub: Sub = await self._conn.ensure_open()
        self._conn.check_nats_connected()
        millis = max(int(timeout * 1000), 1)

        async def _get() -> Delivery | None:
            if self._conn.cfg.broker_type == "rabbitmq":
                msg, count = _rabbitmq_get(sub, millis / 1000)
            else:
                msg, count = await sub.get_message(millis, retries=RETRIES, retry_delay=RETRY_DELAY), None
            return self._to_delivery(msg, count) if msg is not None else None

        try:
            delivery = await self._conn.call(_get(), math.ceil(timeout) + CALL_SLACK, "receiving")
        except BrokerError:
            raise
        except Exception as e:
            await self._conn.drop()
            raise BrokerError(f"receiving from {_where(self._conn.cfg)} failed: {e!r}") from e
        if delivery is None:
            # nats-py answers "no message" while it has no server: that is an outage, not an empty queue
            self._conn.check_nats_connected()
        return delivery

    async def _settle(self, delivery: Delivery, ack: bool) -> None:
        generation, msg = delivery.raw
        verb = "ack" if ack else "nack"
        if generation != self._conn.generation or self._conn.raw is None:
            LOGGER.warning(
                f"not {verb}ing event {delivery.msg_id}: its connection was lost, "
                "so the broker redelivers it"
            )
            return
        sub: Sub = self._conn.raw
        try:
            if self._conn.cfg.broker_type == "rabbitmq":
                await self._settle_rabbitmq(sub, msg, ack)
            elif self._conn.cfg.broker_type == "nats":
                await self._conn.call(_settle_nats(sub, msg, ack), SETTLE_TIMEOUT, verb)
            else:
                call = sub.ack_message if ack else sub.reject_message
                await self._conn.call(
                    call(msg, retries=RETRIES, retry_delay=RETRY_DELAY), SETTLE_TIMEOUT, verb
                )
        except BrokerError:
            raise
        except Exception as e:
            await self._conn.drop()
            raise BrokerError(f"{verb} on {_where(self._conn.cfg)} failed: {e!r}") from e

    async def _settle_rabbitmq(self, sub: Any, msg: Message, ack: bool) -> None:
        """Ack/nack through pika's one thread-safe door, so it need not wait for a pending `get`.

        The broker thread may sit in a `get` for up to a poll slice; the
        callback runs inside that wait (or in the pump right after), so the
        broker sees the ack within milliseconds and can hand out the next event.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        channel = sub.active_channels[0]

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

        sub.connection.add_callback_threadsafe(_on_thread)
        self._conn.thread.pump_soon()
        await asyncio.wait_for(asyncio.shield(done), SETTLE_TIMEOUT)

    async def ack(self, delivery: Delivery) -> None:
        await self._settle(delivery, ack=True)

    async def nack(self, delivery: Delivery) -> None:
        await self._settle(delivery, ack=False)

    async def close(self) -> None:
        await self._conn.close()


class MQClientPublisher(Publisher):
    """Outgoing queue on RabbitMQ / NATS / Pulsar (RabbitMQ with publisher confirms)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, cfg: BrokerConfig) -> MQClientPublisher:
        conn = _Connection(cfg, "pub")
        await conn.open()
        return cls(conn)

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        pub: Pub = await self._conn.ensure_open()
        self._conn.check_nats_connected()

        async def _send() -> None:  # serialize on the broker thread: zstd of a big outfile takes time
            payload = Message.serialize(data, headers=headers)
            await pub.send_message(payload, retries=RETRIES, retry_delay=RETRY_DELAY)

        try:
            await self._conn.call(_send(), SEND_TIMEOUT, "publishing")
        except BrokerError:
            raise
        except Exception as e:
            await self._conn.drop()
            raise BrokerError(f"publishing to {_where(self._conn.cfg)} failed: {e!r}") from e

    async def close(self) -> None:
        await self._conn.close()
