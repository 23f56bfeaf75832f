"""Talk to a test broker the way EWMS producers/consumers do: oms-mqclient's public Queue API.

Tests use these to feed a pilot its events and to collect its results, so what
they check is exactly what a real EWMS workflow would see on the wire.
"""

from __future__ import annotations

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
