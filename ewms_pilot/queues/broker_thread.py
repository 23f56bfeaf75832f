"""A dedicated thread with its own event loop, for one broker connection.

oms-mqclient's RabbitMQ client is a blocking pika connection behind `async`
methods: awaiting it on the pilot's loop would freeze every running task.
So each connection lives in its own thread, every call on it runs there (pika
connections must only be used from one thread), and the pilot's loop awaits
the result through a future. Between calls the thread "pumps" the connection
so RabbitMQ heartbeats keep flowing while tasks run for a long time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOGGER = logging.getLogger(__name__)


class BrokerThread:
    """Runs coroutines for one connection on one thread, one at a time."""

    def __init__(self, name: str, pump_interval: float = 1.0, serialize: bool = True) -> None:
        self._name = name
        self._serialize = serialize  # False for clients that are truly async (nats-py)
        self._pump_interval = pump_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock: asyncio.Lock | None = None
        self._pump: Callable[[], None] | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start the thread and its loop (idempotent)."""
        if self._thread:
            return
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def set_pump(self, pump: Callable[[], None] | None) -> None:
        """Call `pump()` on the thread whenever the connection has been idle a while."""
        self._pump = pump

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._lock = asyncio.Lock()
        self._pumper = loop.create_task(self._pump_forever())  # a strong reference keeps it alive
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            # cancel what the client left running (nats-py's reader, pinger, ...) so
            # nothing is destroyed while pending
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            try:
                loop.run_until_complete(asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5))
            except Exception as e:  # a task refusing to end: leave it to die with the daemon thread
                LOGGER.debug(f"{self._name}: tasks still pending at stop: {e!r}")
            loop.close()

    async def _pump_forever(self) -> None:
        assert self._lock
        while True:
            await asyncio.sleep(self._pump_interval)
            if self._pump is None or self._lock.locked():
                continue
            async with self._lock:
                try:
                    self._pump()
                except Exception as e:  # a dead connection shows up on the next real call
                    LOGGER.debug(f"{self._name}: keepalive failed: {e!r}")

    async def _locked(self, coro: Awaitable[T]) -> T:
        assert self._lock
        if not self._serialize:
            return await coro
        async with self._lock:
            return await coro

    def pump_soon(self) -> None:
        """Run the keepalive once as soon as the thread is free (runs threadsafe callbacks)."""
        if self._loop and self._pump is not None:
            pump = self._pump

            async def _once() -> None:
                pump()

            self.submit(_once())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the thread; the caller owns the returned future."""
        if not self._loop:
            raise RuntimeError(f"{self._name} is not started")
        return asyncio.run_coroutine_threadsafe(self._locked(coro), self._loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the thread and await its result from the caller's loop.

        Cancelling the caller does not interrupt the broker call (that could
        leave the connection half-way through a frame); it is left to finish.
        """
        return await asyncio.shield(asyncio.wrap_future(self.submit(coro)))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread."""
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._thread = None
