"""NATS JetStream specifics of the queue contract, against the real server on 127.0.0.1:4222.

The lease: JetStream redelivers an event its consumer has not acked within
`ack_wait`; the subscription reads `ack_wait` from the consumer and renews
every held event. The limit: the server's `max_payload` is known once
connected, and a message over it is refused for good (never retried).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from urllib.parse import urlsplit

import pytest
from mq_helpers import nats_consumer_with_ack_wait

from ewms_pilot.config.model import BrokerConfig
from ewms_pilot.errors import ResultRejectedError
from ewms_pilot.pilot.publish import publish_with_retry
from ewms_pilot.queues import Settlement, open_publisher, open_subscription

ACK_WAIT = 2.0  # s: the consumer's ack_wait in the lease test (JetStream's default is 30 s)


def _cfg(address: str, queue: str) -> BrokerConfig:
    return BrokerConfig(queue=queue, broker_type="nats", address=address)


async def test_held_event_is_renewed_past_ack_wait(nats_address: str, queue_name: str) -> None:
    """Held for 4 x ack_wait, it is never handed to another subscription; then the ack is taken."""
    await nats_consumer_with_ack_wait(nats_address, queue_name, ACK_WAIT)
    cfg = _cfg(nats_address, queue_name)
    pub = await open_publisher(cfg)
    await pub.send("long")
    await pub.close()
    holder, other = await open_subscription(cfg, 1), await open_subscription(cfg, 1)
    try:
        d = await holder.get(5)
        assert d is not None and d.data == "long"
        # the other one keeps asking for as long as four ack_waits: JetStream must not redeliver
        loop = asyncio.get_running_loop()
        end = loop.time() + 4 * ACK_WAIT
        while loop.time() < end:
            stolen = await other.get(1)
            assert stolen is None, f"redelivered while held (delivery #{stolen.delivery_count})"
        assert await holder.ack(d) is Settlement.ACKED
        assert await other.get(ACK_WAIT + 1) is None  # acked for good: nothing comes back
    finally:
        await holder.close()
        await other.close()


def _server_max_payload(address: str) -> int:
    url = urlsplit(address)
    with socket.create_connection((url.hostname, url.port or 4222), timeout=5) as s:
        line = s.makefile("rb").readline()
    assert line.startswith(b"INFO ")
    return int(json.loads(line[5:])["max_payload"])


async def test_message_over_max_payload_is_refused_for_good(
    nats_address: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(nats_address, queue_name)
    pub = await open_publisher(cfg)
    try:
        limit = _server_max_payload(nats_address)
        assert pub.max_message_bytes == limit
        big = os.urandom(2 * limit).hex()  # random: compressed, still twice the limit
        caplog.set_level(logging.WARNING)
        with pytest.raises(ResultRejectedError) as err:
            await publish_with_retry(pub, big, retries=5, deadline=60, log=logging.getLogger("test"))
        assert str(limit) in str(err.value) and "bytes" in str(err.value)
        assert "retrying" not in caplog.text  # a permanent refusal is not retried
        await pub.send("small")  # the publisher is still usable
    finally:
        await pub.close()
    sub = await open_subscription(cfg, 1)
    try:
        d = await sub.get(5)
        assert d is not None and d.data == "small"  # the refused one never reached the queue
        assert await sub.ack(d) is Settlement.ACKED
        assert await sub.get(1.5) is None
    finally:
        await sub.close()
