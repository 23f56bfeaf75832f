"""Publish a result with exponential backoff and jitter, bounded in tries and time.

`retry_publishing` retries any publishing step: a `send`, or a local queue's result
published with its ack (`Subscription.ack_publishing`), where a failed try changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import BrokerError, ResultRejectedError
from ..queues.base import Publisher
from .health import BrokerHealth

T = TypeVar("T")


async def publish_with_retry(
    publisher: Publisher, data: Any, *, headers: dict[str, Any] | None = None, **retry: Any
) -> None:
    """Send `data` (with `headers`), retried as `retry_publishing` says."""
    await retry_publishing(lambda: publisher.send(data, headers=headers), **retry)


async def retry_publishing(
    step: Callable[[], Awaitable[T]],
    *,
    retries: int,
    deadline: float,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    health: BrokerHealth | None = None,
    which: str = "outgoing",
    base_delay: float = 0.5,
    max_delay: float = 10.0,
    bounded: bool = True,
) -> T:
    """`await step()`; raise `BrokerError` once `retries` extra tries or `deadline` s are spent.

    `ResultRejectedError` (the broker refuses this message for good) is raised at once.
    Every try's outcome goes to `health` (as broker `which`), so the pilot sees an outage
    while the retries still go on. `bounded=False`: a try is not cut at the deadline, for a
    step that always answers and whose outcome must be known (a local transaction: cut short,
    it may still commit, and the pilot would record as failed what was done).
    """
    end = time.monotonic() + deadline
    attempt = 0
    while True:
        try:
            # a send may hang (a broker that stalls, a client retrying for minutes): bound it too
            # (a timeout scope, not `wait_for`: no task of its own per try)
            async with asyncio.timeout(max(end - time.monotonic(), 1.0) if bounded else None):
                done = await step()
        except ResultRejectedError:
            if health is not None:
                health.ok(which)  # it answered: refusing this message is not an outage
            raise
        except (BrokerError, TimeoutError) as e:
            if health is not None:
                health.failed(which, e)
            attempt += 1
            left = end - time.monotonic()
            if attempt > retries or left <= 0:
                raise BrokerError(f"gave up publishing after {attempt} tries: {e}") from e
            delay = min(max_delay, base_delay * 2 ** (attempt - 1), left)
            delay *= random.uniform(0.5, 1.0)  # jitter: pilots that failed together retry apart
            log.warning(f"publish failed (try {attempt}/{retries + 1}), retrying in {delay:.1f}s: {e}")
            await asyncio.sleep(delay)
        else:
            if health is not None:
                health.ok(which)
            return done
