"""Tell the broker what became of an event, and say what really happened (a `Settlement`).

The attempt policy lives here and nowhere else (docs/reliability.md):
- a failed run on an event with `attempts + 1 >= EWMS_PILOT_MAX_DELIVERIES`
  is dead-lettered (dropped, with an error line, when no dead-letter queue is
  set); any other failed run is requeued with attempts + 1;
- an event the broker delivered more than `EWMS_PILOT_MAX_REDELIVERIES` times,
  or whose payload cannot be decoded, is dead-lettered without running;
- a stopped task (eviction, shutdown) or a result the outgoing broker could
  not take for now is released: never counted as an attempt;
- a result (or a dead-letter copy) is published, then its event acked; where
  the subscription can do both in one step (`Subscription.settles_with`: a local
  queue file holding both queues) they are one transaction, so a lost claim
  publishes nothing and a crash leaves no duplicate copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..config.model import PilotConfig
from ..errors import BrokerError
from ..queues import codec
from ..queues.base import Delivery, Publisher, Settlement, Subscription
from ..tasks.errors import TaskFailure
from .health import BrokerHealth
from .publish import publish_with_retry, retry_publishing

LOGGER = logging.getLogger("ewms_pilot.task")

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]
T = TypeVar("T")


class Settler:
    """Publishes results and settles events for one pilot (its connections and its policy)."""

    def __init__(
        self,
        cfg: PilotConfig,
        pilot_id: str,
        subscription: Subscription,
        publisher: Publisher,
        deadletter: Publisher | None,
        health: BrokerHealth,
    ) -> None:
        self.health = health
        self.cfg = cfg
        self.pilot_id = pilot_id
        self.sub = subscription
        self.pub = publisher
        self.deadletter = deadletter
        self.fused = subscription.settles_with(publisher)  # results published in their acks
        # dead-letter copies parked in their acks
        self.dead_letter_fused = deadletter is not None and subscription.settles_with(deadletter)

    def over_redeliveries(self, delivery: Delivery) -> bool:
        count = delivery.delivery_count
        return count is not None and count > self.cfg.max_redeliveries

    def at_attempt_limit(self, delivery: Delivery) -> bool:
        """A failure now uses up the event's last attempt."""
        return delivery.attempts + 1 >= self.cfg.max_deliveries

    async def publish(self, result: Any, log: Log) -> None:
        """Publish a result; `ResultRejectedError` (permanent) or `BrokerError` (transient)."""
        await self._publishing(lambda: self.pub.send(result), log)

    async def publish_with_ack(self, delivery: Delivery, result: Any, log: Log) -> Settlement:
        """`self.fused` only: publish a result and ack its event in one step, tried as `publish` is.

        ACKED (both done) or LEFT (neither: the claim was lost); raises as `publish` does, with
        nothing acked. A failed try changed nothing, so trying again is safe.
        """
        return await self._with_ack(delivery, self.pub, result, None, log, which="outgoing")

    async def _with_ack(
        self, delivery: Delivery, publisher: Publisher, data: Any, headers: dict[str, Any] | None, log: Log,
        *, which: str,
    ) -> Settlement:  # fmt: skip
        """A copy (result or dead-letter) and the ack in one step (`Subscription.ack_publishing`), retried."""
        # each try runs to its answer (a local transaction ends within the store's busy timeout):
        # one cut short at the deadline could still commit after the pilot gave the event up
        return await self._publishing(
            lambda: self.sub.ack_publishing(delivery, publisher, data, headers), log, bounded=False, which=which
        )

    async def _publishing(
        self, step: Callable[[], Awaitable[T]], log: Log, *, bounded: bool = True, which: str = "outgoing"
    ) -> T:
        return await retry_publishing(
            step, retries=self.cfg.publish_retries, deadline=self.cfg.publish_deadline, log=log, health=self.health,
            which=which, bounded=bounded,
        )  # fmt: skip

    async def ack(self, delivery: Delivery, log: Log) -> Settlement:
        return await self._settle("ack", self.sub.ack(delivery), log)

    async def release(self, delivery: Delivery, log: Log) -> Settlement:
        return await self._settle("release", self.sub.release(delivery), log)

    async def failed(self, delivery: Delivery, failure: TaskFailure, log: Log, *, ran: bool = True) -> Settlement:
        """Settle an event whose run failed (or that must never run): requeue or dead-letter."""
        if ran and not self.at_attempt_limit(delivery) and delivery.decode_error is None:
            log.info(
                f"requeueing event {delivery.msg_id}: attempt {delivery.attempts + 1} of "
                f"{self.cfg.max_deliveries} failed"
            )
            return await self._settle(
                "requeue", self.sub.requeue(delivery, failure.reason, type(failure).__name__), log
            )
        return await self._dead_letter(delivery, failure, log, attempts=delivery.attempts + int(ran))

    async def _dead_letter(self, delivery: Delivery, failure: TaskFailure, log: Log, *, attempts: int) -> Settlement:
        """Park the event with its last error (a confirmed copy) and ack it; drop it without a DLQ."""
        why = (
            f"event {delivery.msg_id} ({attempts} failed attempt(s), delivery #{delivery.delivery_count or '?'}; "
            f"EWMS_PILOT_MAX_DELIVERIES={self.cfg.max_deliveries}, "
            f"EWMS_PILOT_MAX_REDELIVERIES={self.cfg.max_redeliveries})"
        )
        if self.deadletter is None:
            settlement = await self.ack(delivery, log)
            if settlement != Settlement.ACKED:
                return settlement
            log.error(f"{why}: no EWMS_PILOT_QUEUE_DEADLETTER is set: dropped it ({failure.reason})")
            return Settlement.DROPPED
        headers = codec.dead_letter_headers(
            delivery, attempts=attempts, error=failure.reason, error_type=type(failure).__name__,
            pilot_id=self.pilot_id,
        )
        try:
            settlement = await self._park(delivery, self.deadletter, headers, log)
        except BrokerError as e:  # ResultRejectedError included: the copy could not be parked
            log.error(f"{why}: dead-lettering failed ({e}); giving the event back unchanged")
            return await self.release(delivery, log)
        if settlement != Settlement.ACKED:
            if self.dead_letter_fused:
                log.warning(f"{why}: not dead-lettered: its claim was lost (or the subscription closed) "
                            "first, nothing parked, it comes back")
            else:
                log.warning(f"{why}: copied to dead-letter queue '{self.cfg.queue_deadletter}' but not acked: "
                            "it comes back and is dead-lettered again (a duplicate there, never a loss)")
            return settlement
        log.error(f"{why}: moved to dead-letter queue '{self.cfg.queue_deadletter}' ({failure.reason})")
        return Settlement.DEAD_LETTERED

    async def _park(self, delivery: Delivery, dlq: Publisher, headers: dict[str, Any], log: Log) -> Settlement:
        """The dead-letter copy and the ack: one step where the subscription settles with `dlq` (a crash
        or a failed ack cannot leave a second copy there), else published, then acked.

        ACKED or LEFT; raises `BrokerError` when the copy could not be parked (nothing acked).
        """
        if self.dead_letter_fused:
            return await self._with_ack(delivery, dlq, delivery.data, headers, log, which="incoming")
        await publish_with_retry(
            dlq, delivery.data, headers=headers,
            retries=self.cfg.publish_retries, deadline=self.cfg.publish_deadline, log=log,
            health=self.health, which="incoming",  # the dead-letter queue is on the incoming broker
        )  # fmt: skip
        return await self.ack(delivery, log)

    async def _settle(self, verb: str, call: Any, log: Log) -> Settlement:
        """Await a settle call; one that raises counts as not settled (the broker redelivers)."""
        try:
            settlement: Settlement = await call
        except BrokerError as e:
            log.warning(f"{verb} failed, the broker will redeliver the event: {e}")
            return Settlement.LEFT
        if settlement == Settlement.LEFT:
            log.warning(f"{verb} failed (connection replaced or lease lost): the broker will redeliver the event")
        return settlement

