"""Feed events to a pilot and collect its results with arrival times, on RabbitMQ or the local queue.

Events go out through oms-mqclient's public `Queue` API (what an EWMS
producer uses) or, for the local queue, this package's own
`ewms_pilot.queues.factory` (the code `ewms-pilot queue put` uses). Results
are consumed *while* the pilot runs, so each arrival is timestamped
(time.monotonic) as it happens: on RabbitMQ with a pika push consumer that
decodes with oms-mqclient's `Message` (see `_collect_rabbitmq_blocking` for
why not its iterators), on the local queue by polling every LOCAL_POLL s.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import math
import threading
import time
from typing import Any

import mqclient

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
RABBITMQ_ADDRESS = f"{RABBITMQ_HOST}:{RABBITMQ_PORT}"


def use_rabbitmq(address: str) -> None:
    """Point every later call (and every pilot started after it) at `HOST:PORT`."""
    global RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_ADDRESS
    host, _, port = address.rpartition(":")
    RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_ADDRESS = host, int(port), address


def _pika_params() -> Any:
    """Patient connection settings: the shared test broker is sometimes slow to shake hands."""
    import pika

    return pika.ConnectionParameters(
        host=RABBITMQ_HOST,
        port=RABBITMQ_PORT,
        socket_timeout=10,
        stack_timeout=30,
        connection_attempts=5,
        retry_delay=2,
    )


AFTER_EXIT = 1.0  # s: how long results may keep arriving after the pilot exited
LOCAL_POLL = 0.005  # s between claim attempts on the local queue (its arrival-time resolution)


@dc.dataclass(frozen=True)
class Arrival:
    """One result as the consumer saw it."""

    at: float  # time.monotonic()
    data: Any


def _mq_queue(queue: str, timeout: float) -> mqclient.Queue:
    return mqclient.Queue(
        "rabbitmq",
        address=RABBITMQ_ADDRESS,
        name=queue,
        timeout=max(1, math.ceil(timeout)),  # whole seconds of inactivity
        except_errors=False,
    )


def _local_cfg(db: str, queue: str) -> Any:
    from ewms_pilot.config.model import BrokerConfig

    return BrokerConfig(queue=queue, broker_type="local", address=db)


async def publish(broker: str, address: str, queue: str, items: list[str]) -> None:
    """Put every item on `queue` (in order) before the pilot starts."""
    if broker == "rabbitmq":
        async with _mq_queue(queue, 1).open_pub() as pub:
            for item in items:
                await pub.send(item)
        return
    from ewms_pilot.queues.factory import open_publisher

    lpub = await open_publisher(_local_cfg(address, queue))
    try:
        for item in items:
            await lpub.send(item)
    finally:
        await lpub.close()


async def collect(broker: str, address: str, queue: str, pilot_exited: threading.Event) -> list[Arrival]:
    """Take (and ack) results until the pilot is gone and none came for AFTER_EXIT s."""
    if broker == "rabbitmq":
        return await _collect_rabbitmq(queue, pilot_exited)
    return await _collect_local(address, queue, pilot_exited)


def _finished(pilot_exited: threading.Event, quiet_since: float) -> bool:
    """Consume until the pilot is gone and nothing more came for a while (so extras are seen too)."""
    return pilot_exited.is_set() and time.monotonic() - quiet_since >= AFTER_EXIT


def _collect_rabbitmq_blocking(queue: str, pilot_exited: threading.Event) -> list[Arrival]:
    """pika push consumer on one connection, in a thread: each message is timed when it lands.

    (oms-mqclient's iterators were tried first: they can hand a message over
    only when the next one arrives or their 1 s inactivity timeout passes,
    which would mis-time the last output by up to a second.)
    """
    import pika
    from mqclient.broker_client_interface import Message

    got: list[Arrival] = []
    conn = pika.BlockingConnection(_pika_params())
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=64)

        def on_message(chan: Any, method: Any, _props: Any, body: bytes) -> None:
            at = time.monotonic()
            got.append(Arrival(at, Message(method.delivery_tag, body).data))
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message_callback=on_message)
        quiet_since = time.monotonic()
        while True:
            before = len(got)
            conn.process_data_events(time_limit=0.05)
            if len(got) != before or not pilot_exited.is_set():
                quiet_since = time.monotonic()
            if _finished(pilot_exited, quiet_since):
                break
    finally:
        conn.close()
    return got


async def _collect_rabbitmq(queue: str, pilot_exited: threading.Event) -> list[Arrival]:
    return await asyncio.to_thread(_collect_rabbitmq_blocking, queue, pilot_exited)


async def declare(broker: str, address: str, queue: str) -> None:
    """Create the outgoing queue (as oms-mqclient would) so it can be consumed before the pilot publishes."""
    if broker == "rabbitmq":
        async with _mq_queue(queue, 1).open_pub():
            pass


async def _collect_local(db: str, queue: str, pilot_exited: threading.Event) -> list[Arrival]:
    from ewms_pilot.queues.factory import open_subscription

    got: list[Arrival] = []
    sub = await open_subscription(_local_cfg(db, queue), 1)
    try:
        quiet_since = time.monotonic()
        while not _finished(pilot_exited, quiet_since):
            # one claim attempt every LOCAL_POLL s: `get(timeout)` backs off to 200 ms
            # between attempts, which would blur the arrival times by that much
            delivery = await sub.get(0)
            if delivery is None:
                if not pilot_exited.is_set():
                    quiet_since = time.monotonic()
                await asyncio.sleep(LOCAL_POLL)
                continue
            got.append(Arrival(time.monotonic(), delivery.data))
            quiet_since = time.monotonic()
            await sub.ack(delivery)
    finally:
        await sub.close()
    return got


def delete_rabbitmq_queues(names: list[str]) -> None:
    """Best effort: mqclient declares durable quorum queues, which would pile up on the broker."""
    import pika

    try:
        conn = pika.BlockingConnection(_pika_params())
    except Exception:  # cleanup never fails a benchmark
        return
    try:
        for name in names:
            try:
                ch = conn.channel()
                ch.queue_delete(queue=name)
                ch.close()
            except Exception:
                pass
    finally:
        conn.close()


def rabbitmq_version() -> str:
    """The server's version as it announces itself on connect."""
    import pika

    conn = pika.BlockingConnection(_pika_params())
    try:
        props = conn._impl.server_properties
        version = props.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        conn.close()
