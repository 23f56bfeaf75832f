"""The broker contract (`queues/base.py`), the same assertions for every implementation.

memory, local, RabbitMQ and NATS JetStream (real brokers) must agree on what
the pilot relies on: prefetch, ack, release keeps the attempt count, requeue
adds one and keeps the event's own data and headers, the raw delivery count,
an undecodable payload handed over whole, and a settle that could not happen
reported as `LEFT`, never as done.
"""

from __future__ import annotations

import dataclasses as dc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mq_helpers import publish_raw

from ewms_pilot.config.model import BrokerConfig
from ewms_pilot.errors import BrokerError
from ewms_pilot.queues import Settlement, Subscription, open_publisher, open_subscription
from ewms_pilot.queues.base import Delivery

BROKERS = ["memory", "local", "rabbitmq", "nats"]
WAIT = 5.0  # s: longest any broker may take to hand over an event that is ready
EMPTY = 1.5  # s: how long "nothing more comes" is watched (NATS fetches in whole seconds)


@dc.dataclass
class Broker:
    btype: str
    address: str
    queue: str

    def cfg(self) -> BrokerConfig:
        return BrokerConfig(queue=self.queue, broker_type=self.btype, address=self.address)

    async def put(self, *items: Any, headers: dict[str, Any] | None = None) -> None:
        pub = await open_publisher(self.cfg())
        try:
            for item in items:
                await pub.send(item, headers=headers)
        finally:
            await pub.close()

    async def sub(self, prefetch: int = 1) -> Subscription:
        return await open_subscription(self.cfg(), prefetch)


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path, queue_name: str) -> Broker:
    btype = request.param
    if btype == "memory":
        address = f"contract-{uuid.uuid4().hex}"
    elif btype == "local":
        address = str(tmp_path / "queues.db")
    else:
        address = request.getfixturevalue(f"{btype}_address")
    return Broker(btype, address, queue_name)


@pytest.fixture
async def sub(broker: Broker) -> AsyncIterator[Subscription]:
    s = await broker.sub(prefetch=1)
    yield s
    await s.close()


async def _get(s: Subscription) -> Delivery:
    d = await s.get(WAIT)
    assert d is not None, "a ready event was not handed over"
    return d


async def test_ack_forgets_the_event(broker: Broker, sub: Subscription) -> None:
    await broker.put("a")
    d = await _get(sub)
    assert (d.data, d.attempts, d.delivery_count, d.decode_error) == ("a", 0, 1, None)
    assert await sub.ack(d) is Settlement.ACKED
    again = await broker.sub()
    try:
        assert await again.get(EMPTY) is None
    finally:
        await again.close()


async def test_prefetch_bounds_what_one_subscription_holds(broker: Broker) -> None:
    await broker.put("a", "b", "c")
    s = await broker.sub(prefetch=2)
    try:
        first, second = await _get(s), await _get(s)
        assert await s.get(EMPTY) is None  # a third is ready, but two are unsettled
        assert await s.ack(first) is Settlement.ACKED
        third = await _get(s)
        assert sorted([first.data, second.data, third.data]) == ["a", "b", "c"]
        assert await s.ack(second) is Settlement.ACKED
        assert await s.ack(third) is Settlement.ACKED
    finally:
        await s.close()


async def test_release_gives_the_event_back_unchanged(broker: Broker, sub: Subscription) -> None:
    await broker.put("x", headers={"h": "v"})
    d = await _get(sub)
    assert await sub.release(d) is Settlement.RELEASED
    d = await _get(sub)
    assert (d.data, d.headers, d.attempts) == ("x", {"h": "v"}, 0)
    assert d.delivery_count == 2  # raw: the broker handed it over twice
    assert await sub.ack(d) is Settlement.ACKED


async def test_requeue_counts_an_attempt_and_keeps_the_event(broker: Broker, sub: Subscription) -> None:
    await broker.put({"n": 1}, headers={"h": "v"})
    d = await _get(sub)
    assert await sub.requeue(d, "task exited 1", "ContainerRunError") is Settlement.REQUEUED
    d = await _get(sub)
    assert (d.data, d.headers, d.attempts, d.delivery_count) == ({"n": 1}, {"h": "v"}, 1, 1)
    assert await sub.requeue(d, "task exited 1", "ContainerRunError") is Settlement.REQUEUED
    d = await _get(sub)
    assert (d.data, d.headers, d.attempts, d.delivery_count) == ({"n": 1}, {"h": "v"}, 2, 1)
    assert await sub.ack(d) is Settlement.ACKED
    assert await sub.get(EMPTY) is None  # the originals are gone: one copy at a time


async def test_undecodable_payload_is_handed_over_whole(broker: Broker, sub: Subscription) -> None:
    await publish_raw(broker.btype, broker.address, broker.queue, [b"not an oms-mqclient message"])
    d = await _get(sub)
    assert d.data is None and d.decode_error
    assert d.raw_payload == b"not an oms-mqclient message"
    # it cannot carry an attempt count: given back unchanged, only the raw count grows
    assert await sub.requeue(d, "undecodable", "InvalidDataForInfileException") is Settlement.RELEASED
    d = await _get(sub)
    assert (d.raw_payload, d.delivery_count) == (b"not an oms-mqclient message", 2)
    assert await sub.ack(d) is Settlement.ACKED


async def test_settling_after_the_connection_is_gone_is_left(broker: Broker) -> None:
    await broker.put("x")
    first = await broker.sub()
    d = await _get(first)
    await first.close()
    for settle in (first.ack, first.release):
        assert await settle(d) is Settlement.LEFT
    assert await first.requeue(d, "e", "E") is Settlement.LEFT
    second = await broker.sub()
    try:
        d = await _get(second)  # redelivered, once, unchanged
        assert (d.data, d.attempts, d.delivery_count) == ("x", 0, 2)
        assert await second.ack(d) is Settlement.ACKED
        assert await second.get(EMPTY) is None
    finally:
        await second.close()


async def test_settling_twice_is_left(broker: Broker, sub: Subscription) -> None:
    await broker.put("x")
    d = await _get(sub)
    assert await sub.ack(d) is Settlement.ACKED
    assert await sub.ack(d) is Settlement.LEFT


class _Proxy:
    """A TCP relay to a broker whose connections the test can cut (a network failure)."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._writers: list[Any] = []
        self.port = 0
        self._server: Any = None

    async def start(self) -> None:
        import asyncio

        async def relay(reader: Any, writer: Any) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def on_client(c_reader: Any, c_writer: Any) -> None:
            u_reader, u_writer = await asyncio.open_connection(*self._upstream)
            self._writers += [c_writer, u_writer]
            await asyncio.gather(relay(c_reader, u_writer), relay(u_reader, c_writer))

        self._server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        self._server.close()


async def test_settling_on_a_replaced_rabbitmq_connection_is_left(rabbitmq_address: str, queue_name: str) -> None:
    """The connection breaks and is reopened: the old delivery is LEFT, the broker hands it over again."""
    host, _, port = rabbitmq_address.partition(":")
    proxy = _Proxy(host, int(port))
    await proxy.start()
    broker = Broker("rabbitmq", f"127.0.0.1:{proxy.port}", queue_name)
    await broker.put("x")
    sub = await broker.sub()
    try:
        old = await _get(sub)
        proxy.cut()
        new = None
        for _ in range(5):  # until the loss is seen (the connection thread notices it), then reconnected
            try:
                new = await sub.get(WAIT)
            except BrokerError:
                continue
            if new is not None:
                break
        assert new is not None and (new.data, new.delivery_count) == ("x", 2)
        assert await sub.ack(old) is Settlement.LEFT
        assert await sub.requeue(old, "e", "E") is Settlement.LEFT
        assert await sub.ack(new) is Settlement.ACKED
        assert await sub.get(EMPTY) is None
    finally:
        await sub.close()
        await proxy.stop()


async def test_two_subscriptions_on_one_queue_never_share_an_event(broker: Broker) -> None:
    import asyncio

    events = list(range(20))
    await broker.put(*events)

    async def drain(s: Subscription) -> list[int]:
        got = []
        while (d := await s.get(EMPTY)) is not None:
            got.append(d.data)
            assert await s.ack(d) is Settlement.ACKED
        return got

    subs = [await broker.sub(prefetch=3), await broker.sub(prefetch=3)]
    try:
        a, b = await asyncio.gather(*(drain(s) for s in subs))
    finally:
        for s in subs:
            await s.close()
    assert sorted(a + b) == events  # each exactly once


async def test_a_result_that_cannot_be_encoded_fails_alone_and_the_publisher_goes_on(broker: Broker) -> None:
    """Encoding happens where each adapter sends (a worker or broker thread): its error is the caller's."""
    pub = await open_publisher(broker.cfg())
    try:
        with pytest.raises(BrokerError, match="not JSON serializable"):
            await pub.send({"bad": object()})
        await pub.send("good")  # the connection was not dropped or broken by it
    finally:
        await pub.close()
    s = await broker.sub()
    try:
        d = await _get(s)
        assert d.data == "good"
        assert await s.ack(d) == Settlement.ACKED
        assert await s.get(EMPTY) is None
    finally:
        await s.close()
