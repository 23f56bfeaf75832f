"""The embedded local queue (broker type `local`): an SQLite file instead of a broker.

For testing task images on a laptop and replaying events without RabbitMQ.
The broker address is the database file's path (created on first use); queues
are named inside it. Several pilot processes may share one file.

Design (details in docs/local-queue.md):
- Manual ack, at-least-once. `get` claims the oldest ready event in one
  `BEGIN IMMEDIATE` transaction, so two consumers never hold the same event;
  `ack` deletes it, `release` makes it ready again at once (first in line),
  `requeue` replaces it by a copy with attempts+1 at the back of the queue,
  each only if the claim is still this subscription's (id + holder + count).
- An unacked event belongs to a *holder* row (one per subscription) with a
  lease (default 30 s) that a background task renews every 5 s. Any consumer
  releases the events of a holder whose lease ran out (a frozen or vanished
  pilot) and, on the same machine, of a holder whose process is gone
  (pid + process start time + boot id + pid namespace, so a reused pid is not
  mistaken for it): a SIGKILLed pilot's events come back within about a second.
  A subscription never expires its own holder (its events stay its own after
  a laptop suspend).
- `Delivery.delivery_count` is kept in the database: 1 on first delivery.
- Prefetch = most unacked deliveries one subscription holds at once. An ack's
  transaction also claims the events it makes room for (read ahead), so the
  next `get` needs no trip; unhanded ones go back uncounted at close.
- A result (or a dead-letter copy) for a queue in the same file is published
  in its event's ack transaction (`settles_with` / `ack_publishing`): exactly
  when the event is acked, never when the claim was lost.
- Payloads are `mqclient` `Message.serialize(data, headers)` bytes, like on
  every other broker, decoded by the one shared path (`codec.py`).
- SQLite runs on one worker thread per subscription/publisher (one connection
  each), never on the caller's event loop; waiting for an event polls with a
  20 -> 200 ms backoff.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..config.model import BrokerConfig
from ..errors import BrokerError, BrokerUnavailableError, ConfigError
from . import codec
from .base import Delivery, Publisher, Settlement, Subscription
from .local_store import Ack, Claimed, LocalStore, check_address

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

LEASE = 30.0  # seconds an unrenewed claim survives
RENEW_EVERY = 5.0  # seconds between lease renewals (while the subscription is open)
SWEEP_EVERY = 1.0  # seconds between checks for dead/expired holders, per subscription
POLL_MIN, POLL_MAX = 0.02, 0.2  # backoff while waiting for an event


class _Worker:
    """The one thread that owns one SQLite connection (connections are not shared)."""

    def __init__(self, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


class _Batcher(Generic[ItemT, ResultT]):
    """Calls that arrive while the worker thread is busy are run together, in one transaction.

    This is group commit: four concurrent results cost one `BEGIN ... COMMIT`
    (one fsync) instead of four, and each caller still returns only once its
    own item is committed. `run_many` runs on the worker thread and gives one
    result (or exception) per item; an item whose caller gave up (cancelled)
    before its turn is left out.
    """

    def __init__(self, worker: _Worker, run_many: Callable[[list[ItemT]], list[ResultT | BaseException]]) -> None:
        self._worker = worker
        self._run_many = run_many
        self._lock = threading.Lock()
        self._queued: list[tuple[ItemT, asyncio.Future[ResultT]]] = []

    async def __call__(self, item: ItemT) -> ResultT:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ResultT] = loop.create_future()
        with self._lock:
            self._queued.append((item, fut))
            first = len(self._queued) == 1
        if first:  # else a drain is already queued on the worker: it takes this item too
            try:
                self._worker.submit(self._drain, loop)
            except BaseException as e:  # no drain will come (worker shut down): nothing may wait for one
                with self._lock:
                    stranded, self._queued = self._queued, []
                _resolve([f for _, f in stranded], [e] * len(stranded))
        return await fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: everything queued so far, in one `run_many` call."""
        with self._lock:
            batch, self._queued = self._queued, []
        batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
        if not batch:
            return
        try:
            results = self._run_many([item for item, _ in batch])
        except BaseException as e:  # the whole transaction failed: every item with it
            results = [e] * len(batch)
        try:
            loop.call_soon_threadsafe(_resolve, [fut for _, fut in batch], results)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _resolve(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for fut, result in zip(futures, results, strict=True):
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _where(cfg: BrokerConfig) -> str:
    return f"local queue '{cfg.queue}' in {cfg.address}"


async def _open_store(cfg: BrokerConfig, worker: _Worker, *, durable: bool) -> LocalStore:
    def _open() -> LocalStore:
        return LocalStore(check_address(cfg.address), cfg.queue, durable=durable)

    try:
        return await worker.call(_open)
    except BaseException:
        worker.shutdown()
        raise


def _encode(cfg: BrokerConfig, data: Any, headers: dict[str, Any] | None) -> bytes | BrokerError:
    """Worker thread: one message's bytes for `cfg`'s queue, or why it cannot be sent (it fails alone)."""
    try:
        return codec.encode(data, headers)
    except TypeError as e:  # not JSON-serialisable: the caller's mistake, say so plainly
        return BrokerError(f"publishing to {_where(cfg)} failed: {e}")


#: one ack for the batcher: the claim, and the copy published with it (its queue, data, headers), if any
_AckItem = tuple[Claimed, tuple[BrokerConfig, Any, dict[str, Any] | None] | None]


def _decode(claim: Claimed) -> Delivery:
    """Runs on the worker thread: unpacking a large payload must not stall the caller's loop."""
    return codec.decode(str(claim.id), claim.payload, claim.delivery_count, raw=claim)


class LocalSubscription(Subscription):
    """Incoming local queue: manual ack, prefetch limit, leases renewed in the background."""

    def __init__(
        self,
        cfg: BrokerConfig,
        prefetch: int,
        worker: _Worker,
        store: LocalStore,
        lease: float,
        renew_every: float,
    ) -> None:
        self._cfg = cfg
        self._prefetch = prefetch
        self._worker = worker
        self._store = store
        self._lease = lease
        self._renew_every = renew_every
        self.holder = uuid.uuid4().hex  # this subscription's name in the `holders` table
        self._held: set[tuple[int, int]] = set()  # (event id, delivery count) handed out, not yet settled
        # claimed together with an ack (read ahead), not yet handed out: the worker thread appends
        self._ahead: collections.deque[Delivery] = collections.deque()
        self._claims = 0  # worker thread only: events held, handed out or ahead (what prefetch bounds)
        self._next_sweep = 0.0  # worker thread only, monotonic; 0 = sweep on the first claim
        self._found_last = False  # the last claim found an event
        self._taking = True  # False once the pilot takes no more events (no read ahead then)
        # monotonic time until which this holder's lease surely holds (set before each extension):
        # what was read ahead is handed out only within it, never once another consumer may have it
        self._lease_ok_until = 0.0
        self._closed = False
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"lease-{self.holder}")
        self._acks: _Batcher[_AckItem, bool] = _Batcher(worker, self._ack_many)

    @classmethod
    async def open(
        cls,
        cfg: BrokerConfig,
        prefetch: int,
        *,
        lease: float = LEASE,
        renew_every: float | None = None,
    ) -> LocalSubscription:
        """Open (creating if needed) the database; `lease`/`renew_every` are for tests."""
        if prefetch < 1:
            raise ConfigError("EWMS_PILOT_PREFETCH", prefetch, "an integer >= 1")
        if lease <= 0:
            raise ValueError(f"lease must be > 0 (got {lease})")
        renew = renew_every if renew_every is not None else min(RENEW_EVERY, lease / 6)
        worker = _Worker(f"local-sub-{cfg.queue}")
        store = await _open_store(cfg, worker, durable=False)
        LOGGER.info(f"opened {_where(cfg)} for consuming (prefetch={prefetch})")
        return cls(cfg, prefetch, worker, store, lease, renew)

    # ------------------------------------------------------------------- get

    def _sweep_due(self) -> bool:
        """Worker thread: time for this claim to release dead holders' events too?"""
        if time.monotonic() < self._next_sweep:
            return False
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        return True

    def _claim(self, look_first: bool) -> Delivery | None:
        """Worker thread: skip the write lock when there is surely nothing to take.

        `look_first=False` (the last claim found one, so more are likely) goes straight to the claim.
        """
        if self._claims >= self._prefetch:
            return None
        sweep = self._sweep_due()
        if look_first and not sweep and not self._store.has_ready():
            return None
        started = time.monotonic()
        claim = self._store.claim(self.holder, self._lease, sweep)
        if claim is None:
            return None
        self._lease_ok_until = started + self._lease
        self._claims += 1
        return _decode(claim)

    def _given_back(self, fn: Callable[..., T], *args: Any) -> T:
        """Worker thread: a settle of one held event; it no longer counts towards prefetch."""
        try:
            return fn(*args)
        finally:
            self._claims -= 1

    def _undo_claim(self, fut: concurrent.futures.Future[Delivery | None]) -> None:
        """Worker thread, after a cancelled `get`: give back what its claim took."""
        if fut.cancelled() or fut.exception() is not None:
            return
        delivery = fut.result()
        if delivery is not None:
            self._given_back(self._store.release, delivery.raw, self.holder)

    async def _try_claim(self) -> Delivery | None:
        fut = self._worker.submit(self._claim, not self._found_last)
        try:
            delivery = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self._worker.submit(self._undo_claim, fut)
            raise
        self._found_last = delivery is not None
        if delivery is not None:
            self._held.add((delivery.raw.id, delivery.raw.delivery_count))
        return delivery

    async def get(self, timeout: float) -> Delivery | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        delay = POLL_MIN
        while True:
            if self._closed:
                raise BrokerError(f"{_where(self._cfg)}: subscription is closed")
            if self._ahead and time.monotonic() >= self._lease_ok_until:  # frozen past the lease: maybe not ours
                await self._worker.call(self._unclaim_ahead)  # gives back only what is still ours
            if self._ahead:  # claimed with the last ack: no trip to the database
                ahead = self._ahead.popleft()
                self._held.add((ahead.raw.id, ahead.raw.delivery_count))
                self._found_last = True
                return ahead
            if len(self._held) < self._prefetch:
                delivery = await self._try_claim()
                if delivery is not None:
                    return delivery
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX)

    # ---------------------------------------------------------------- settle

    async def _settle(
        self, delivery: Delivery, verb: str, done: Settlement, fn: Callable[..., bool], *args: Any
    ) -> Settlement:
        """`done` when the store changed the claim; LEFT (with the reason logged) otherwise."""
        return await self._settle_with(
            delivery, verb, done, lambda claim: self._worker.call(self._given_back, fn, claim, self.holder, *args)
        )

    async def _settle_with(
        self,
        delivery: Delivery,
        verb: str,
        done: Settlement,
        change: Callable[[Claimed], Awaitable[bool]],
        *,
        may_retry: bool = False,
    ) -> Settlement:
        """`done` when the store changed the claim; LEFT (with the reason logged) otherwise.

        `may_retry`: a failed change raises instead (the caller may try again or release the event,
        which stays held), as does a cancel while it was under way.
        """
        claim = delivery.raw
        if not isinstance(claim, Claimed):
            raise TypeError(f"{verb}: not a delivery from a local queue: {delivery!r}")
        key = (claim.id, claim.delivery_count)
        if key not in self._held:
            LOGGER.warning(f"cannot {verb} event {claim.id}: it was already settled")
            return Settlement.LEFT
        self._held.discard(key)
        if self._closed:
            LOGGER.warning(f"cannot {verb} event {claim.id}: subscription closed, it is redelivered")
            return Settlement.LEFT
        try:
            changed = await change(claim)
        except BrokerError as e:  # still claimed by this holder: released at close or when its lease ends
            if may_retry:
                self._held.add(key)
                raise
            LOGGER.warning(f"cannot {verb} event {claim.id} ({e}): it is redelivered later")
            return Settlement.LEFT
        except asyncio.CancelledError:
            if may_retry:  # maybe never done: still this subscription's to settle
                self._held.add(key)
            raise
        if not changed:
            LOGGER.warning(f"cannot {verb} event {claim.id}: its lease ran out, so it is redelivered")
            return Settlement.LEFT
        return done

    def _ack_many(self, items: list[_AckItem]) -> list[bool | BaseException]:
        """Worker thread: the acks, each with its result, in one transaction, which also claims the
        events they make room for.

        A copy (result or dead-letter) is encoded here (a large one must not stall the caller's loop);
        one that cannot be fails alone, its event not acked. When the transaction fails nothing changed:
        an ack with a copy is still held (its caller may try again), a plain one is given up (LEFT).
        Read ahead stays within prefetch (counted here, on the one thread that claims); the
        events wait in `_ahead` for the next `get`, and go back uncounted if never handed out.
        """
        unsendable: dict[int, BaseException] = {}
        acks: list[Ack] = []
        for i, (claim, result) in enumerate(items):
            if result is None:
                acks.append(Ack(claim))
                continue
            out, data, headers = result
            payload = _encode(out, data, headers)
            if isinstance(payload, BrokerError):
                unsendable[i] = payload
            else:
                acks.append(Ack(claim, (out.queue, payload)))
        outcome: list[bool | BaseException] = []
        if acks:
            # refill only the slots these acks free: a large prefetch is not filled by one ack
            room = min(len(acks), self._prefetch - self._claims + len(acks)) if self._taking and not self._closed else 0
            started = time.monotonic()
            try:
                acked, taken = self._store.ack_and_take(
                    acks, self.holder, self._lease, room, room > 0 and self._sweep_due()
                )
            except BrokerError as e:
                self._claims -= sum(ack.result is None for ack in acks)
                outcome = [e] * len(acks)
            else:
                if taken:
                    self._lease_ok_until = started + self._lease
                self._claims += len(taken) - len(acks)
                self._ahead.extend(_decode(claim) for claim in taken)
                outcome = list(acked)
        decided = iter(outcome)
        return [unsendable[i] if i in unsendable else next(decided) for i in range(len(items))]

    async def ack(self, delivery: Delivery) -> Settlement:
        """Acks that meet on the worker thread are committed together (`_Batcher`), with the next claims."""
        return await self._settle_with(delivery, "ack", Settlement.ACKED, lambda claim: self._acks((claim, None)))

    def settles_with(self, publisher: Publisher) -> bool:
        """True for a `LocalPublisher` on this subscription's database file (any queue in it)."""
        return isinstance(publisher, LocalPublisher) and publisher.file_id == self._store.file_id

    async def ack_publishing(
        self, delivery: Delivery, publisher: Publisher, data: Any, headers: dict[str, Any] | None = None
    ) -> Settlement:
        """The copy (a result, a dead-letter copy) and the ack in one transaction, group-committed
        with other acks like `ack`.

        The commit is synced as a `send`'s (`synchronous=FULL`): the copy is as durable as if
        published alone. A lost claim publishes nothing (LEFT: the event is redelivered).
        """
        if not isinstance(publisher, LocalPublisher) or not self.settles_with(publisher):
            raise ValueError(f"{publisher!r} is not a local queue in {self._cfg.address}")
        if publisher.closed:
            raise BrokerError(f"{_where(publisher.cfg)}: publisher is closed")
        copy = (publisher.cfg, data, headers)
        return await self._settle_with(
            delivery, f"publish to '{publisher.cfg.queue}' and ack", Settlement.ACKED,
            lambda claim: self._acks((claim, copy)), may_retry=True,
        )  # fmt: skip

    async def release(self, delivery: Delivery) -> Settlement:
        return await self._settle(delivery, "release", Settlement.RELEASED, self._store.release)

    async def requeue(self, delivery: Delivery, error: str, error_type: str) -> Settlement:
        if delivery.decode_error is not None:  # cannot carry a count: given back unchanged
            return await self.release(delivery)

        def _requeue(claim: Claimed, holder: str) -> bool:  # worker thread: encoding may be slow
            return self._store.requeue(claim, holder, codec.requeued_payload(delivery, error, error_type))

        return await self._settle(delivery, "requeue", Settlement.REQUEUED, _requeue)

    # ----------------------------------------------------------- lease / close

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            started = time.monotonic()
            try:
                ok = await self._worker.call(self._store.renew, self.holder, self._lease)
            except Exception as e:  # a busy/broken database: the next round tries again
                LOGGER.warning(f"{_where(self._cfg)}: renewing the lease failed: {e}")
                continue
            if ok:
                self._lease_ok_until = started + self._lease
            else:  # swept as dead: what was read ahead is ready again, maybe someone else's now
                self._lease_ok_until = 0.0
            if not ok and self._held:
                LOGGER.warning(
                    f"{_where(self._cfg)}: lease lost; {len(self._held)} unacked event(s) "
                    "are redelivered (acking them will be skipped)"
                )

    async def stop_taking(self) -> None:
        """Draining: acks no longer read ahead, and what was read ahead goes back uncounted."""
        self._taking = False
        if not self._closed:
            await self._give_back_ahead()

    async def _give_back_ahead(self) -> None:
        try:
            await self._worker.call(self._unclaim_ahead)
        except BrokerError as e:  # close's release_all still gives them back (counted as a delivery)
            LOGGER.warning(f"{_where(self._cfg)}: giving back events read ahead failed: {e}")

    def _unclaim_ahead(self) -> None:
        """Worker thread: events read ahead and still this holder's go back as if never delivered."""
        ahead = [d.raw for d in self._ahead]
        self._ahead.clear()
        self._store.unclaim(ahead, self.holder)
        self._claims -= len(ahead)

    @property
    def in_flight(self) -> int:
        """Deliveries handed out and not yet acked/nacked (what prefetch limits)."""
        return len(self._held)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._renewer.cancel()
        await asyncio.gather(self._renewer, return_exceptions=True)
        try:
            await self._give_back_ahead()
            released = await self._worker.call(self._store.release_all, self.holder)
            if released:
                LOGGER.info(
                    f"{_where(self._cfg)}: {released} unacked event(s) returned to the queue"
                )
        finally:
            self._held.clear()
            await self._worker.call(self._store.close)
            self._worker.shutdown()


class LocalPublisher(Publisher):
    """Outgoing local queue: `send` returns once the event is committed (and fsynced)."""

    def __init__(self, cfg: BrokerConfig, worker: _Worker, store: LocalStore) -> None:
        self.cfg = cfg
        self.file_id = store.file_id  # which database file (a subscription on it may publish for it)
        self._worker = worker
        self._store = store
        self.closed = False
        self._sends: _Batcher[tuple[Any, dict[str, Any] | None], int] = _Batcher(worker, self._publish_many)

    @classmethod
    async def open(cls, cfg: BrokerConfig) -> LocalPublisher:
        worker = _Worker(f"local-pub-{cfg.queue}")
        store = await _open_store(cfg, worker, durable=True)
        LOGGER.info(f"opened {_where(cfg)} for publishing")
        return cls(cfg, worker, store)

    def _publish_many(self, items: list[tuple[Any, dict[str, Any] | None]]) -> list[int | BaseException]:
        """Worker thread: encode each item (a bad one fails alone), then commit the rest together."""
        encoded = [_encode(self.cfg, data, headers) for data, headers in items]
        ids = iter(self._store.publish_many([p for p in encoded if isinstance(p, bytes)]))
        return [p if isinstance(p, BaseException) else next(ids) for p in encoded]

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        if self.closed:
            raise BrokerError(f"{_where(self.cfg)}: publisher is closed")
        await self._sends((data, headers))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._worker.call(self._store.close)
        finally:
            self._worker.shutdown()


def _counts(cfg: BrokerConfig) -> dict[str, int]:
    path = check_address(cfg.address)
    if not path.exists():
        raise BrokerUnavailableError(
            f"local queue database {cfg.address!r} does not exist (nothing was ever put there)"
        )
    store = LocalStore(Path(path), cfg.queue, durable=False)
    try:
        return store.counts()
    finally:
        store.close()


async def local_counts(cfg: BrokerConfig) -> dict[str, int]:
    """{"ready": n, "in_flight": n} for `cfg.queue` (releases dead holders' events first)."""
    return await asyncio.to_thread(_counts, cfg)
