"""Feed events to a pilot and collect its results with arrival times, on RabbitMQ or the local queue.

RabbitMQ goes through oms-mqclient's public `Queue` API (what an EWMS
producer/consumer uses); the local queue through this package's own
`ewms_pilot.queues.factory`, the same code `ewms-pilot queue put` uses.
Results are consumed *while* the pilot runs, so each arrival is timestamped
(time.monotonic) as it happens.
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


async def collect(
    broker: str, address: str, queue: str, expect: int, pilot_exited: threading.Event
) -> list[Arrival]:
    """Take (and ack) results until `expect` arrived, or the pilot is gone and none came for a while."""
    if broker == "rabbitmq":
        return await _collect_rabbitmq(queue, expect, pilot_exited)
    return await _collect_local(address, queue, expect, pilot_exited)


def _finished(got: list[Arrival], expect: int, pilot_exited: threading.Event, quiet_since: float) -> bool:
    if len(got) >= expect:
        return True
    return pilot_exited.is_set() and time.monotonic() - quiet_since >= AFTER_EXIT


async def _collect_rabbitmq(queue: str, expect: int, pilot_exited: threading.Event) -> list[Arrival]:
    got: list[Arrival] = []
    quiet_since = time.monotonic()
    while not _finished(got, expect, pilot_exited, quiet_since):
        # the iteration ends after 1 s without a message; then look at the pilot and go on
        async with _mq_queue(queue, 1).open_sub() as sub:
            async for data in sub:
                got.append(Arrival(time.monotonic(), data))
                quiet_since = time.monotonic()
                if len(got) >= expect:
                    break
        if not pilot_exited.is_set():
            quiet_since = time.monotonic()
    return got


async def _collect_local(db: str, queue: str, expect: int, pilot_exited: threading.Event) -> list[Arrival]:
    from ewms_pilot.queues.factory import open_subscription

    got: list[Arrival] = []
    sub = await open_subscription(_local_cfg(db, queue), 1)
    try:
        quiet_since = time.monotonic()
        while not _finished(got, expect, pilot_exited, quiet_since):
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

    params = pika.ConnectionParameters(host=RABBITMQ_HOST, port=RABBITMQ_PORT, socket_timeout=5)
    try:
        conn = pika.BlockingConnection(params)
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

    params = pika.ConnectionParameters(host=RABBITMQ_HOST, port=RABBITMQ_PORT, socket_timeout=5)
    conn = pika.BlockingConnection(params)
    try:
        props = conn._impl.server_properties
        version = props.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        conn.close()


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh loop (callers are synchronous)."""
    return asyncio.run(coro)
