"""The in-memory broker (type `memory`): the local queue's semantics without a file.

A real implementation of `Subscription`/`Publisher`, not a mock: named queues
live in this process (one per `(address, queue)`), several subscriptions may
share one, settling is manual, prefetch bounds what one subscription holds,
a released event is first in line again, a requeued one goes to the back
with attempts+1, and every claim counts a raw delivery. Payloads are stored
as oms-mqclient bytes and go through the one decode path (`codec.py`).

For tests and in-process use (`Pilot` with a `PilotConfig` built in code);
it is not offered as an `EWMS_PILOT_QUEUE_*_BROKER_TYPE`: events in memory die
with the process. Its own state is guarded by a thread lock, so subscriptions
on different event loops (or threads) may share a queue.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import heapq
import itertools
import logging
import threading
from typing import Any

from ..config.model import BrokerConfig
from ..errors import BrokerError, ConfigError
from . import codec
from .base import Delivery, Publisher, Settlement, Subscription

LOGGER = logging.getLogger(__name__)


@dc.dataclass
class _Event:
    id: int
    payload: bytes
    delivery_count: int = 0  # raw claims since it was (re)published
    holder: object | None = None


class MemoryQueue:
    """One named queue; every method is one step under the lock (the local queue's transactions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._ready: list[tuple[int, _Event]] = []  # heap by id: oldest first
        self._in_flight: dict[int, _Event] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _wake(self) -> None:
        for loop, fut in self._waiters:
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass
        self._waiters.clear()

    def _make_ready(self, event: _Event) -> None:
        event.holder = None
        heapq.heappush(self._ready, (event.id, event))
        self._wake()

    def publish(self, payload: bytes) -> int:
        with self._lock:
            event = _Event(next(self._ids), payload)
            self._make_ready(event)
            return event.id

    def claim(self, holder: object) -> _Event | asyncio.Future[None]:
        """The oldest ready event, now held by `holder`; else a future set on the next change."""
        with self._lock:
            if self._ready:
                _, event = heapq.heappop(self._ready)
                event.delivery_count += 1
                event.holder = holder
                self._in_flight[event.id] = event
                return dc.replace(event)  # a snapshot: the token is (id, holder, count)
            return self.changed_locked()

    def changed_locked(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters = [w for w in self._waiters if not w[1].done()]  # timed-out waits
        self._waiters.append((loop, fut))
        return fut

    def changed(self) -> asyncio.Future[None]:
        with self._lock:
            return self.changed_locked()

    def _take(self, token: _Event) -> _Event | None:
        event = self._in_flight.get(token.id)
        if event is None or event.holder is not token.holder or event.delivery_count != token.delivery_count:
            return None
        del self._in_flight[token.id]
        return event

    def ack(self, token: _Event) -> bool:
        with self._lock:
            if self._take(token) is None:
                return False
            self._wake()  # a prefetch slot is free
            return True

    def release(self, token: _Event) -> bool:
        with self._lock:
            event = self._take(token)
            if event is None:
                return False
            self._make_ready(event)
            return True

    def requeue(self, token: _Event, payload: bytes) -> bool:
        """Replace the held event by a fresh copy at the back of the queue, in one step."""
        with self._lock:
            if self._take(token) is None:
                return False
            self._make_ready(_Event(next(self._ids), payload))
            return True

    def release_all(self, holder: object) -> int:
        with self._lock:
            mine = [e for e in self._in_flight.values() if e.holder is holder]
            for event in mine:
                del self._in_flight[event.id]
                heapq.heappush(self._ready, (event.id, event))
                event.holder = None
            if mine:
                self._wake()
            return len(mine)

    def counts(self) -> dict[str, int]:
        """{"ready": n, "in_flight": n}, like the local queue's `count`."""
        with self._lock:
            return {"ready": len(self._ready), "in_flight": len(self._in_flight)}


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_QUEUES: dict[tuple[str, str], MemoryQueue] = {}
_QUEUES_LOCK = threading.Lock()


def memory_queue(cfg: BrokerConfig) -> MemoryQueue:
    """The process-wide queue named by `cfg` (address = broker name, queue = queue name)."""
    if not cfg.queue:
        raise ConfigError("memory broker queue", cfg.queue, "a queue name")
    with _QUEUES_LOCK:
        return _QUEUES.setdefault((cfg.address, cfg.queue), MemoryQueue())


def _where(cfg: BrokerConfig) -> str:
    return f"memory queue '{cfg.queue}' on '{cfg.address}'"


class MemorySubscription(Subscription):
    """Incoming in-memory queue: manual settling, prefetch limit (no lease: it lives in-process)."""

    def __init__(self, cfg: BrokerConfig, queue: MemoryQueue, prefetch: int) -> None:
        self._cfg = cfg
        self._queue = queue
        self._prefetch = prefetch
        self._holder = object()
        self._held: dict[tuple[int, int], _Event] = {}
        self._closed = False

    @classmethod
    async def open(cls, cfg: BrokerConfig, prefetch: int) -> MemorySubscription:
        if prefetch < 1:
            raise ConfigError("EWMS_PILOT_PREFETCH", prefetch, "an integer >= 1")
        return cls(cfg, memory_queue(cfg), prefetch)

    async def get(self, timeout: float) -> Delivery | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            if self._closed:
                raise BrokerError(f"{_where(self._cfg)}: subscription is closed")
            got = self._queue.claim(self._holder) if len(self._held) < self._prefetch else self._queue.changed()
            if isinstance(got, _Event):
                self._held[(got.id, got.delivery_count)] = got
                return codec.decode(str(got.id), got.payload, got.delivery_count, raw=got)
            remaining = deadline - loop.time()
            if remaining <= 0:
                got.cancel()
                return None
            try:
                await asyncio.wait_for(got, remaining)
            except TimeoutError:
                pass

    def _token(self, delivery: Delivery, verb: str) -> _Event | None:
        token = delivery.raw
        if not isinstance(token, _Event):
            raise TypeError(f"{verb}: not a delivery from a memory queue: {delivery!r}")
        if self._held.pop((token.id, token.delivery_count), None) is None or self._closed:
            LOGGER.warning(f"cannot {verb} event {token.id}: it is no longer held here (settled or closed)")
            return None
        return token

    async def ack(self, delivery: Delivery) -> Settlement:
        token = self._token(delivery, "ack")
        return Settlement.ACKED if token and self._queue.ack(token) else Settlement.LEFT

    async def release(self, delivery: Delivery) -> Settlement:
        token = self._token(delivery, "release")
        return Settlement.RELEASED if token and self._queue.release(token) else Settlement.LEFT

    async def requeue(self, delivery: Delivery, error: str, error_type: str) -> Settlement:
        if delivery.decode_error is not None:
            return await self.release(delivery)
        token = self._token(delivery, "requeue")
        if token is None:
            return Settlement.LEFT
        payload = codec.requeued_payload(delivery, error, error_type)
        return Settlement.REQUEUED if self._queue.requeue(token, payload) else Settlement.LEFT

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held.clear()
        released = self._queue.release_all(self._holder)
        if released:
            LOGGER.info(f"{_where(self._cfg)}: {released} unsettled event(s) returned to the queue")


class MemoryPublisher(Publisher):
    """Outgoing in-memory queue: `send` returns once the event is in the queue."""

    def __init__(self, cfg: BrokerConfig, queue: MemoryQueue) -> None:
        self._cfg = cfg
        self._queue = queue
        self._closed = False

    @classmethod
    async def open(cls, cfg: BrokerConfig) -> MemoryPublisher:
        return cls(cfg, memory_queue(cfg))

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        if self._closed:
            raise BrokerError(f"{_where(self._cfg)}: publisher is closed")
        try:
            payload = codec.encode(data, headers)
        except TypeError as e:  # not JSON-serialisable: the caller's mistake, say so plainly
            raise BrokerError(f"publishing to {_where(self._cfg)} failed: {e}") from e
        self._queue.publish(payload)

    async def close(self) -> None:
        self._closed = True
