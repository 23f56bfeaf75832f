"""NATS JetStream through oms-mqclient: the only code touching nats-py's objects.

Delivery count: JetStream puts it in the reply (ack) subject; it counts every
redelivery (naks, ack_wait expiries): raw, never the pilot's attempt count.

A long task: JetStream redelivers an event not acked within the consumer's
`ack_wait` (oms-mqclient's durable pull consumer keeps JetStream's default,
30 s) to the next consumer, while the first still runs it. So the subscription
renews every delivery it holds with an in-progress ack ("+WPI") every
`ack_wait / 3` (read from the consumer's info), for a task of any length.

Settling waits for the server's reply (a request, not a bare publish), so an
ack that did not arrive is reported as left for redelivery, never as acked.
A reply that is late (`CONFIRM_TIMEOUT`) says nothing about the connection: it
is kept. And an ack subject works on any connection, so what the subscription
holds stays its own across a reconnect (renewed and settled on the new one),
unlike RabbitMQ's delivery tags, which die with their channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from mqclient.broker_client_interface import Message

from ..errors import BrokerError
from .base import Delivery
from .mqclient_conn import (
    OPEN_TIMEOUT,
    SETTLE_TIMEOUT,
    MQClientPublisher,
    MQClientSubscription,
    where,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_ACK_WAIT = 30.0  # s: JetStream's default, when the consumer's info cannot be read
CONFIRM_TIMEOUT = 5.0  # s: the server's reply to an ack/nak; none by then = not settled
ACK = b""  # "+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"


def delivery_count(reply_subject: Any) -> int | None:
    """JetStream puts the delivery count in the ack subject: `$JS.ACK.<stream>.<consumer>.<n>....`."""
    if not isinstance(reply_subject, str) or not reply_subject.startswith("$JS.ACK."):
        return None
    tokens = reply_subject.split(".")
    index = 4 if len(tokens) == 9 else 6  # v1 vs v2 (domain + account hash) subjects
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return None


def _check_connected(raw: Any, cfg_where: str) -> None:
    """Raise `BrokerError` while nats-py has lost its server (it reconnects in the background).

    Calling the client meanwhile would hang: oms-mqclient's retry reconnects with
    `nats.connect()`, which tries a dead server for minutes.
    """
    client = getattr(raw, "_nats_client", None)
    if client is not None and not client.is_connected:
        raise BrokerError(f"{cfg_where} is disconnected (nats-py is reconnecting)")


class NatsPublisher(MQClientPublisher):
    """Outgoing JetStream subject; `send` returns once JetStream acknowledged it."""

    serialize: ClassVar[bool] = False  # nats-py is truly async

    def limit(self, raw: Any) -> int | None:
        """The server's `max_payload` from its INFO (known once connected)."""
        value = getattr(getattr(raw, "_nats_client", None), "max_payload", None)
        return value if isinstance(value, int) and value > 0 else None

    def check_alive(self, raw: Any) -> None:
        _check_connected(raw, where(self._conn.cfg))

    def is_permanent_refusal(self, e: BaseException) -> bool:
        import nats.errors

        return isinstance(e, nats.errors.MaxPayloadError)


class NatsSubscription(MQClientSubscription):
    """Incoming JetStream pull consumer, its held deliveries' leases renewed in the background."""

    publisher: ClassVar[type[MQClientPublisher]] = NatsPublisher
    serialize: ClassVar[bool] = False
    settles_across_connections: ClassVar[bool] = True  # an ack subject is not tied to a connection

    ack_wait: float = DEFAULT_ACK_WAIT
    _renewer: asyncio.Task[None] | None = None
    _renewed: dict[int, float]  # by `_key`: loop time its lease surely started (asked for, or renewal sent)

    def _received(self, delivery: Delivery, asked: float) -> None:
        self._renewed[self._key(delivery)] = asked

    def _forget(self, delivery: Delivery) -> bool:
        self._renewed.pop(self._key(delivery), None)
        return super()._forget(delivery)

    def lease_lapsed(self, delivery: Delivery) -> bool:
        """Not renewed within `ack_wait` (an outage, a reconnect): JetStream has redelivered it."""
        last = self._renewed.get(self._key(delivery))
        return last is not None and asyncio.get_running_loop().time() - last > self.ack_wait

    async def started(self) -> None:
        self._renewed = {}
        self.ack_wait = await self._read_ack_wait()
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"nats-lease-{self._conn.cfg.queue}")

    async def _read_ack_wait(self) -> float:
        raw = self._conn.raw

        async def _info() -> Any:
            return await raw._subscription.consumer_info()

        try:
            info = await self._conn.call(_info(), OPEN_TIMEOUT, "reading the consumer's info")
            value = float(info.config.ack_wait)
        except Exception as e:  # not fatal: JetStream's default is what oms-mqclient's consumer has
            LOGGER.warning(f"{where(self._conn.cfg)}: cannot read the consumer's ack_wait ({e!r}); assuming {DEFAULT_ACK_WAIT:g}s")
            return DEFAULT_ACK_WAIT
        return value if value > 0 else DEFAULT_ACK_WAIT

    def check_alive(self, raw: Any) -> None:
        _check_connected(raw, where(self._conn.cfg))

    async def receive(self, raw: Any, timeout: float) -> tuple[Message, int | None] | None:
        msg = await raw.get_message(max(int(timeout * 1000), 1), retries=1, retry_delay=0.5)
        return (msg, delivery_count(msg.msg_id)) if msg is not None else None

    async def _reply(self, raw: Any, msg: Message, body: bytes, confirm: bool) -> None:
        """Answer JetStream on the event's reply subject alone.

        oms-mqclient rebuilds the NATS message from the *decoded* payload first,
        which fails for an event not in its format; the reply subject is all
        JetStream needs.
        """
        import nats.errors

        client = raw._nats_client

        async def _send() -> None:
            if not confirm:
                await client.publish(str(msg.msg_id), body)
                return
            try:
                await client.request(str(msg.msg_id), body, timeout=CONFIRM_TIMEOUT)
            except nats.errors.TimeoutError:  # a slow server, not a broken connection: keep it
                raise BrokerError(
                    f"{where(self._conn.cfg)} did not confirm within {CONFIRM_TIMEOUT:g}s (it may still take it)"
                ) from None

        await self._conn.call(_send(), SETTLE_TIMEOUT, "settling")

    async def settle_raw(self, raw: Any, msg: Message, ack: bool) -> None:
        await self._reply(raw, msg, ACK if ack else NAK, confirm=True)

    async def _renew_forever(self) -> None:
        every = self.ack_wait / 3
        while True:
            await asyncio.sleep(every)
            if not self.held():
                continue
            try:  # after a dropped connection too: what it holds is still this subscription's
                raw = await self._conn.ensure_open()
            except BrokerError as e:
                LOGGER.warning(f"{where(self._conn.cfg)}: cannot renew the events in hand: {e}")
                continue
            if not raw._nats_client.is_connected:
                continue  # nats-py is reconnecting: renew on the next round (ack_wait leaves two more)
            sent: list[tuple[int, float]] = []
            for delivery in self.held():
                if self.lease_lapsed(delivery):  # another consumer's run by now: its lease, not ours
                    continue
                _, msg = delivery.raw
                at = asyncio.get_running_loop().time()
                try:
                    await self._reply(raw, msg, IN_PROGRESS, confirm=False)
                    sent.append((self._key(delivery), at))
                except Exception as e:  # the next round tries again; a lost connection redelivers anyway
                    LOGGER.warning(f"{where(self._conn.cfg)}: renewing event {delivery.msg_id} failed: {e!r}")
            if sent:
                await self._confirm_renewals(raw, sent)

    async def _confirm_renewals(self, raw: Any, sent: list[tuple[int, float]]) -> None:
        """A renewal only counts once the server has read it (a flush's PONG comes after it): a stalled
        server's leases lapse here as they do there, and a late settle is then not sent."""
        try:
            await self._conn.call(raw._nats_client.flush(timeout=CONFIRM_TIMEOUT), SETTLE_TIMEOUT, "renewing")
        except Exception as e:
            LOGGER.warning(f"{where(self._conn.cfg)}: the server did not confirm the renewals: {e!r}")
            return
        for key, at in sent:
            if key in self._renewed:
                self._renewed[key] = at

    async def close(self) -> None:
        """Give back what is still held at once (JetStream would wait ack_wait), then disconnect."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._conn.raw is not None and getattr(self._conn.raw._nats_client, "is_connected", False):
            await asyncio.gather(*(self.release(d) for d in self.held()))
        await super().close()
