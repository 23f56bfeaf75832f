"""Talk to a test broker the way EWMS producers/consumers do: oms-mqclient's public Queue API.

Tests use these to feed a pilot its events and to collect its results, so what
they check is exactly what a real EWMS workflow would see on the wire.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import mqclient


def _queue(broker_type: str, address: str, queue: str, timeout: float = 1) -> mqclient.Queue:
    return mqclient.Queue(
        broker_type,
        address=address,
        name=queue,
        # mqclient's timeout is whole seconds (>= 1) of inactivity
        timeout=max(1, math.ceil(timeout)),
        # let a failure inside `open_sub()` reach the test instead of being swallowed
        except_errors=False,
    )


async def publish(broker_type: str, address: str, queue: str, items: list[Any]) -> None:
    """Send each item (JSON-serialisable) as one message, in order."""
    async with _queue(broker_type, address, queue).open_pub() as pub:
        for item in items:
            await pub.send(item)


async def drain(
    broker_type: str,
    address: str,
    queue: str,
    timeout: float,
    expect: int | None = None,
) -> list[Any]:
    """Receive (and ack) messages until none arrives for `timeout` seconds.

    With `expect`, stop as soon as that many arrived, so a test waiting for
    N results does not also pay the idle timeout. Returns the decoded data in
    arrival order; callers assert on it (fewer than `expect` is not an error here).
    """
    got: list[Any] = []
    if expect is not None and expect <= 0:
        return got
    async with _queue(broker_type, address, queue, timeout).open_sub() as sub:
        async for data in sub:
            got.append(data)
            if expect is not None and len(got) >= expect:
                break
    return got


async def drain_with_headers(broker_type: str, address: str, queue: str, timeout: float = 1) -> list[tuple[Any, dict[str, Any]]]:
    """(data, headers) of every message until none arrives for `timeout` s: the headers as on the wire,
    the pilot's own `ewms_pilot_*` included (the pilot's decode path strips those)."""
    got: list[tuple[Any, dict[str, Any]]] = []
    async with _queue(broker_type, address, queue, timeout).open_sub_manual_acking() as sub:
        async for msg in sub.iter_messages():
            got.append((msg.data, dict(msg.headers or {})))
            await sub.ack(msg)
    return got


async def publish_raw(broker_type: str, address: str, queue: str, payloads: list[bytes]) -> None:
    """Put bytes that are NOT (necessarily) oms-mqclient messages straight into a queue."""
    if broker_type in ("local", "memory"):
        from ewms_pilot.config.model import BrokerConfig

        cfg = BrokerConfig(queue=queue, broker_type=broker_type, address=address)
        if broker_type == "memory":
            from ewms_pilot.queues.memory import memory_queue

            for p in payloads:
                memory_queue(cfg).publish(p)
            return
        from ewms_pilot.queues.local_store import LocalStore, check_address

        def _local() -> None:
            store = LocalStore(check_address(address), queue, durable=True)
            try:
                for p in payloads:
                    store.publish(p)
            finally:
                store.close()

        await asyncio.to_thread(_local)
    elif broker_type == "rabbitmq":
        await asyncio.to_thread(_rabbitmq_raw, address, queue, payloads)
    elif broker_type == "nats":
        await _nats_raw(address, queue, payloads)
    else:
        raise ValueError(broker_type)


def _rabbitmq_raw(address: str, queue: str, payloads: list[bytes]) -> None:
    import pika

    host, _, port = address.partition(":")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=int(port or 5672)))
    try:
        ch = conn.channel()
        ch.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})  # as oms-mqclient
        # confirmed, as oms-mqclient publishes: an unconfirmed publish to a quorum queue whose
        # connection closes right after can be dropped (a fuzz run lost the last 17 of 57 this way)
        ch.confirm_delivery()
        for p in payloads:
            ch.basic_publish("", queue, p, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        conn.close()


async def _nats_raw(address: str, queue: str, payloads: list[bytes]) -> None:
    import nats

    nc = await nats.connect(address, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name=f"{queue}-stream", subjects=[f"{queue}-subject"])  # oms-mqclient's names
        for p in payloads:
            await js.publish(f"{queue}-subject", p)
    finally:
        await nc.close()


async def nats_consumer_with_ack_wait(address: str, queue: str, ack_wait: float) -> None:
    """Create oms-mqclient's stream and durable consumer (`psub`) first, with a short ack_wait.

    oms-mqclient (nats-py) binds to a consumer that exists; its own would keep JetStream's
    default of 30 s, which tests about redelivery after ack_wait would otherwise wait out.
    """
    import nats
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(address, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=10)
        subject = f"{queue}-subject"
        await js.add_stream(name=f"{queue}-stream", subjects=[subject])  # oms-mqclient's names
        await js.add_consumer(
            f"{queue}-stream",
            ConsumerConfig(durable_name="psub", name="psub", filter_subject=subject, ack_wait=ack_wait),
        )
    finally:
        await nc.close()
