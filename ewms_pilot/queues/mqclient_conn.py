"""What the RabbitMQ, NATS and Pulsar adapters share: one oms-mqclient connection on its thread.

oms-mqclient fixes the wire format the rest of EWMS speaks; each adapter
(`rabbitmq.py`, `nats.py`, `pulsar.py`) adapts its `Sub`/`Pub` objects to the
pilot's `Subscription`/`Publisher` and is the only place that touches that
client's internals. Every connection runs on its own `BrokerThread`, so the
pilot's loop never waits on broker I/O. A lost connection is reopened on the
next call; events held on the lost one are redelivered by the broker, so
settling them returns `Settlement.LEFT` (at-least-once, never lost, never
recorded as acked). JetStream's are not tied to a connection: they stay the
subscription's until their lease lapses (`settles_across_connections`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from mqclient import broker_client_manager
from mqclient.broker_client_interface import Message, MQClientException

from ..config.model import BrokerConfig
from ..config.redact import redact_url
from ..errors import BrokerError, BrokerUnavailableError, ResultRejectedError
from . import codec
from .base import Delivery, Publisher, Settlement, Subscription
from .broker_thread import BrokerThread

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
Opener = Callable[[BrokerConfig, str, int], Coroutine[Any, Any, Any]]  # (cfg, "sub"|"pub", prefetch)

RETRIES = 1  # oms-mqclient's own retry count per call; the pilot adds its own policy
RETRY_DELAY = 0.5
SETTLE_TIMEOUT = 30.0  # s: a settle the broker connection has not taken by then has failed
CALL_SLACK = 10.0  # s: beyond its own timeout, how long a broker call may hang before it is abandoned
OPEN_TIMEOUT = 60.0  # s: connecting (clients retry internally; nats-py for minutes)
SEND_TIMEOUT = 15.0  # s: one publish, confirm included


def where(cfg: BrokerConfig) -> str:
    return f"{cfg.broker_type} queue '{cfg.queue}' at {redact_url(cfg.address)}"


class Connection:
    """One oms-mqclient queue object on its thread, reopened when it breaks.

    Every call is bounded in time: a call that hangs (a broker that stalls, or
    nats-py retrying a dead server for minutes) abandons the connection and its
    thread, and the next call starts afresh on a new thread. `generation`
    counts opens, so a delivery knows whether its connection still exists.
    """

    def __init__(
        self,
        cfg: BrokerConfig,
        kind: str,
        prefetch: int = 1,
        *,
        serialize: bool = True,
        pump_for: Callable[[Any], Callable[[], None] | None] | None = None,
        opener: Opener | None = None,
    ) -> None:
        self.cfg = cfg
        self.kind = kind
        self.prefetch = prefetch
        self._serialize = serialize  # False for truly async clients (nats-py)
        self._pump_for = pump_for  # keepalive for blocking clients (pika)
        self._opener = opener  # the adapter's own connect (RabbitMQ over TLS), else oms-mqclient's
        self.thread = self._new_thread()
        self.raw: Any = None
        self.generation = 0
        self._opening = asyncio.Lock()

    def _new_thread(self) -> BrokerThread:
        return BrokerThread(f"broker-{self.kind}-{self.cfg.queue}", serialize=self._serialize)

    async def call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run `coro` on the connection's thread; past `timeout` abandon the connection.

        A timeout scope, not `wait_for`: no task of its own per broker call (issue 15).
        """
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await self.thread.call(coro)
        except TimeoutError:
            if not scope.expired():  # the client's own timeout (nats-py's is a TimeoutError): not a hang
                raise
            self.abandon()
            raise BrokerError(f"{what} on {where(self.cfg)} hung for {timeout:.0f}s") from None

    def abandon(self) -> None:
        """Leave a hung connection to its (daemon) thread; later calls get a new one."""
        LOGGER.warning(f"abandoning a hung {self.kind} connection to {where(self.cfg)}")
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
        try:
            client = broker_client_manager.get_broker_client(self.cfg.broker_type)
        except MQClientException as e:
            raise BrokerUnavailableError(f"{self.cfg.broker_type}: {e}") from e

        async def _open() -> Any:
            if self._opener is not None:
                return await self._opener(self.cfg, self.kind, self.prefetch)
            if self.kind == "sub":
                return await client.create_sub_queue(
                    self.cfg.address, self.cfg.queue, self.prefetch, self.cfg.auth_token
                )
            return await client.create_pub_queue(self.cfg.address, self.cfg.queue, self.cfg.auth_token)

        try:
            self.raw = await self.call(_open(), OPEN_TIMEOUT, "connecting")
        except BrokerError:
            raise
        except Exception as e:
            raise BrokerUnavailableError(
                f"cannot connect to {where(self.cfg)}: {type(e).__name__}: {e}"
            ) from e
        self.generation += 1
        self.thread.set_pump(self._pump_for(self.raw) if self._pump_for else None)
        LOGGER.info(f"connected ({self.kind}) to {where(self.cfg)}")

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

    def holds(self, delivery: Delivery) -> bool:
        """Was `delivery` received on the connection that is open now?"""
        generation, _ = delivery.raw
        return bool(generation == self.generation and self.raw is not None)


class _Refused(Exception):
    """A message this publisher will not send at all (cannot be encoded, or over the broker's limit)."""


class MQClientPublisher(Publisher):
    """Outgoing queue on an oms-mqclient broker; adapters override the broker-specific hooks."""

    serialize: ClassVar[bool] = True  # one call at a time on the connection's thread
    open_raw: ClassVar[Opener | None] = None  # connect other than oms-mqclient's factory

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @classmethod
    def connection(cls, cfg: BrokerConfig) -> Connection:
        return Connection(cfg, "pub", serialize=cls.serialize, pump_for=cls.pump_for, opener=cls.open_raw)

    @classmethod
    async def open(cls, cfg: BrokerConfig) -> MQClientPublisher:
        conn = cls.connection(cfg)
        await conn.open()
        pub = cls(conn)
        pub.max_message_bytes = pub.limit(conn.raw)
        return pub

    # -- hooks ----------------------------------------------------------------

    @staticmethod
    def pump_for(raw: Any) -> Callable[[], None] | None:
        """A keepalive to run on the connection's thread between calls (blocking clients)."""
        return None

    def limit(self, raw: Any) -> int | None:
        """The broker's largest message, where it tells it (None: not known)."""
        return None

    def check_alive(self, raw: Any) -> None:
        """Raise `BrokerError` when the client knows its connection is down."""

    def is_permanent_refusal(self, e: BaseException) -> bool:
        """Does this client error mean "never" (no retry can change it)?"""
        return False

    # -------------------------------------------------------------------------

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        """Encode and publish on the connection's thread, in one trip (zstd of a big outfile takes time)."""
        await self._publish(lambda: codec.encode(data, headers))

    async def send_payload(self, payload: bytes) -> None:
        """Publish bytes already in oms-mqclient's format; returns once the broker confirmed them."""
        await self._publish(lambda: payload)

    async def _publish(self, make: Callable[[], bytes]) -> None:
        pub = await self._conn.ensure_open()
        self.check_alive(pub)
        self.max_message_bytes = limit = self.limit(pub)
        size = 0

        async def _send() -> None:  # on the connection's thread
            nonlocal size
            try:
                payload = make()
            except TypeError as e:  # not JSON-serialisable: never worth retrying
                raise _Refused(f"publishing to {where(self._conn.cfg)} failed: {e}") from e
            size = len(payload)
            if limit is not None and size > limit:
                raise _Refused(f"message of {size} bytes is larger than {where(self._conn.cfg)} takes ({limit} bytes)")
            await pub.send_message(payload, retries=RETRIES, retry_delay=RETRY_DELAY)

        try:
            await self._conn.call(_send(), SEND_TIMEOUT, "publishing")
        except BrokerError:
            raise
        except _Refused as e:  # nothing was sent: the connection is fine
            raise ResultRejectedError(str(e)) from e.__cause__
        except Exception as e:
            await self._conn.drop()  # a refusal may close the channel too (RabbitMQ): start afresh
            if self.is_permanent_refusal(e):
                raise ResultRejectedError(f"{where(self._conn.cfg)} refused a message of {size} bytes: {e!r}") from e
            raise BrokerError(f"publishing to {where(self._conn.cfg)} failed: {e!r}") from e

    async def close(self) -> None:
        await self._conn.close()


class MQClientSubscription(Subscription):
    """Incoming queue on an oms-mqclient broker; adapters override the broker-specific hooks.

    Holds every delivery handed out and not yet settled (and still its own: see
    `_ours`): that is what prefetch bounds and what lease renewal renews.
    """

    publisher: ClassVar[type[MQClientPublisher]] = MQClientPublisher  # for requeued copies
    serialize: ClassVar[bool] = True
    open_raw: ClassVar[Opener | None] = None  # connect other than oms-mqclient's factory
    #: a delivery stays this subscription's to settle on a later connection (JetStream: its ack
    #: subject works on any); RabbitMQ's delivery tags die with their channel, and the broker
    #: redelivers what that channel held
    settles_across_connections: ClassVar[bool] = False

    def __init__(self, conn: Connection, prefetch: int) -> None:
        self._conn = conn
        self._prefetch = prefetch
        self._held: dict[int, Delivery] = {}  # by `Message.uuid`
        self._slot_freed = asyncio.Event()
        self._requeue_pub: MQClientPublisher | None = None  # opened on the first requeue

    @classmethod
    async def open(cls, cfg: BrokerConfig, prefetch: int) -> MQClientSubscription:
        conn = Connection(
            cfg, "sub", prefetch, serialize=cls.serialize, pump_for=cls.pump_for, opener=cls.open_raw
        )
        await conn.open()
        sub = cls(conn, prefetch)
        await sub.started()
        return sub

    # -- hooks ----------------------------------------------------------------

    @staticmethod
    def pump_for(raw: Any) -> Callable[[], None] | None:
        """A keepalive to run on the connection's thread between calls (blocking clients)."""
        return None

    async def started(self) -> None:
        """Called once after the first connect (start lease renewal, ...)."""

    def check_alive(self, raw: Any) -> None:
        """Raise `BrokerError` when the client knows its connection is down."""

    def connection_lost(self, raw: Any) -> bool:
        """True when the client saw its connection end for good (it must be reopened)."""
        return False

    async def receive(self, raw: Any, timeout: float) -> tuple[Message, int | None] | None:
        """Broker thread: one message and its raw delivery count, or None after `timeout` s."""
        raise NotImplementedError

    async def settle_raw(self, raw: Any, msg: Message, ack: bool) -> None:
        """Ack (or give back unchanged) one message on the live connection; raises on failure."""
        raise NotImplementedError

    # -------------------------------------------------------------------------

    def _key(self, delivery: Delivery) -> int:
        _, msg = delivery.raw
        return int(msg.uuid)

    def held(self) -> list[Delivery]:
        """Deliveries handed out and not yet settled that are still this subscription's."""
        return [d for d in self._held.values() if self._ours(d)]

    def _ours(self, delivery: Delivery) -> bool:
        """Can it still be settled here (the broker has not taken it back with its connection)?"""
        return self.settles_across_connections or self._conn.holds(delivery)

    def lease_lapsed(self, delivery: Delivery) -> bool:
        """Has the broker given `delivery` to another consumer by now (its lease not renewed in time)?

        A settle then would settle that consumer's run (JetStream acks by stream sequence).
        """
        return False

    async def _wait_for_slot(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.held()) >= self._prefetch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def get(self, timeout: float) -> Delivery | None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self._conn.raw is not None and self.connection_lost(self._conn.raw):
            # what it held is redelivered by the broker: those prefetch slots are free again
            LOGGER.warning(f"the connection to {where(self._conn.cfg)} was lost; reconnecting")
            await self._conn.drop()
        if not await self._wait_for_slot(timeout):
            return None
        timeout = max(timeout - (loop.time() - start), 0.001)
        raw = await self._conn.ensure_open()
        self.check_alive(raw)
        generation = self._conn.generation

        async def _get() -> Delivery | None:  # decoded on the broker thread: payloads may be large
            got = await self.receive(raw, timeout)
            if got is None:
                return None
            msg, count = got
            return codec.decode(str(msg.msg_id), msg.payload, count, raw=(generation, msg))

        asked = asyncio.get_running_loop().time()  # the broker's clock for it starts after this
        try:
            delivery = await self._conn.call(_get(), math.ceil(timeout) + CALL_SLACK, "receiving")
        except BrokerError:
            raise
        except Exception as e:
            await self._conn.drop()
            raise BrokerError(f"receiving from {where(self._conn.cfg)} failed: {e!r}") from e
        if delivery is None:
            # a client may answer "no message" while it has no server: an outage, not an empty queue
            self.check_alive(raw)
            return None
        self._held[self._key(delivery)] = delivery
        self._received(delivery, asked)
        return delivery

    def _received(self, delivery: Delivery, asked: float) -> None:
        """A delivery is now held; `asked`: loop time just before it was asked for (a lease starts later)."""

    def _forget(self, delivery: Delivery) -> bool:
        """Stop holding `delivery`; False when it was not held (already settled)."""
        known = self._held.pop(self._key(delivery), None) is not None
        self._slot_freed.set()
        return known

    async def _settle(self, delivery: Delivery, ack: bool) -> bool:
        """True once the broker took it; False (logged) when it is left for redelivery."""
        verb = "ack" if ack else "release"
        lapsed = self.lease_lapsed(delivery)
        if not self._forget(delivery):
            LOGGER.warning(f"cannot {verb} event {delivery.msg_id}: it was already settled")
            return False
        if not self._ours(delivery) or self._conn.raw is None:
            LOGGER.warning(
                f"cannot {verb} event {delivery.msg_id}: its connection was lost, so the broker redelivers it"
            )
            return False
        if lapsed:
            LOGGER.warning(
                f"cannot {verb} event {delivery.msg_id}: its lease was not renewed in time, so the broker "
                "has handed it out again"
            )
            return False
        _, msg = delivery.raw
        try:
            self.check_alive(self._conn.raw)  # a client that knows it is offline would only hang
            await self.settle_raw(self._conn.raw, msg, ack)
        except Exception as e:  # a broken connection is dropped: the broker redelivers what it held
            if not isinstance(e, BrokerError):
                await self._conn.drop()
            LOGGER.warning(
                f"{verb} failed for event {delivery.msg_id} on {where(self._conn.cfg)}: {e!r}; "
                "the broker redelivers it"
            )
            return False
        return True

    async def ack(self, delivery: Delivery) -> Settlement:
        return Settlement.ACKED if await self._settle(delivery, ack=True) else Settlement.LEFT

    async def release(self, delivery: Delivery) -> Settlement:
        return Settlement.RELEASED if await self._settle(delivery, ack=False) else Settlement.LEFT

    async def requeue(self, delivery: Delivery, error: str, error_type: str) -> Settlement:
        """A confirmed copy with attempts+1 to the incoming queue, then the original acked."""
        if delivery.decode_error is not None:  # cannot carry a count: given back unchanged
            return await self.release(delivery)
        if self._key(delivery) not in self._held:  # settled, or the subscription closed: no copy
            LOGGER.warning(f"cannot requeue event {delivery.msg_id}: it was already settled")
            return Settlement.LEFT
        if not self._ours(delivery) or self.lease_lapsed(delivery):  # redelivered anyway: a copy would be a duplicate
            self._forget(delivery)
            LOGGER.warning(
                f"cannot requeue event {delivery.msg_id}: its connection was lost or its lease ran out, "
                "so the broker redelivers it"
            )
            return Settlement.LEFT
        if self._requeue_pub is None:
            self._requeue_pub = self.publisher(self.publisher.connection(self._conn.cfg))
        try:
            payload = await asyncio.to_thread(codec.requeued_payload, delivery, error, error_type)
            await self._requeue_pub.send_payload(payload)
        except BrokerError as e:  # no copy: give the original back instead (its attempts unchanged)
            LOGGER.warning(f"cannot requeue event {delivery.msg_id} ({e}): releasing it instead")
            return await self.release(delivery)
        if not await self._settle(delivery, ack=True):
            LOGGER.warning(f"event {delivery.msg_id}: requeued, but the original is redelivered too (a duplicate)")
        return Settlement.REQUEUED

    async def close(self) -> None:
        self._held.clear()
        if self._requeue_pub is not None:
            await self._requeue_pub.close()
        await self._conn.close()
