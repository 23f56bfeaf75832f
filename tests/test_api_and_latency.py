"""The 1.x-compatible Python entry point, and a finished task's result not waiting for the next `get`."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from memory_pilot import ECHO, journal, memory_config, new_queues, put, take
from mq_helpers import drain, publish

import ewms_pilot
from ewms_pilot.config.model import BrokerConfig
from ewms_pilot.errors import ConfigError
from ewms_pilot.pilot import scheduler
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause, StopRequest
from ewms_pilot.queues.base import Delivery, Subscription
from ewms_pilot.queues.memory import MemoryQueue, MemorySubscription, memory_queue

PY = sys.executable
HANG_GUARD = 60.0  # s: only ends the wait of a broken pilot (a working one publishes within milliseconds)


def test_consume_and_reply_keywords_win_over_env(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if k.startswith("EWMS_PILOT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("EWMS_PILOT_CONTAINER_PLATFORM", "process")
    monkeypatch.setenv("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", str(tmp_path))
    monkeypatch.setenv("EWMS_PILOT_TASK_ARGS", "false")  # overridden below
    monkeypatch.setenv("EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE", "rabbitmq")
    monkeypatch.setenv("EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE", "rabbitmq")
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["x", "y"]))
    code = "import sys; open(sys.argv[2],'w').write(open(sys.argv[1]).read()*3)"
    asyncio.run(
        ewms_pilot.consume_and_reply(
            task_image="",
            task_args=shlex.join([PY, "-c", code, "{{INFILE}}", "{{OUTFILE}}"]),
            queue_incoming=qin,
            queue_outgoing=qout,
            queue_incoming_broker_address=rabbitmq_address,
            queue_outgoing_broker_address=rabbitmq_address,
            timeout_incoming=1,
            max_concurrent_tasks=2,
        )
    )
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=2))) == ["xxx", "yyy"]


def test_consume_and_reply_raises_for_failures_and_bad_config(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EWMS_PILOT_CONTAINER_PLATFORM", "process")
    monkeypatch.setenv("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", str(tmp_path))
    common = dict(
        queue_incoming=queue_name + "i", queue_outgoing=queue_name + "o",
        queue_incoming_broker_type="rabbitmq", queue_outgoing_broker_type="rabbitmq",
        queue_incoming_broker_address=rabbitmq_address, queue_outgoing_broker_address=rabbitmq_address,
        timeout_incoming=1,
    )
    with pytest.raises(ConfigError, match="EWMS_PILOT_MAX_CONCURRENT_TASKS"):
        asyncio.run(ewms_pilot.consume_and_reply(task_args="true", max_concurrent_tasks=0, **common))
    with pytest.raises(TypeError, match="bogus"):
        asyncio.run(ewms_pilot.consume_and_reply(bogus=1, **common))
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["x"]))
    with pytest.raises(ewms_pilot.ContainerRunError, match=r"^1 TASK\(S\) FAILED: task \w+: ContainerRunError: exited with code 1"):
        asyncio.run(ewms_pilot.consume_and_reply(task_args="false", **common))


class WatchedSubscription(MemorySubscription):
    """The real in-memory subscription, counting the `get`s that have returned (for the test to read)."""

    returned = 0

    async def get(self, timeout: float) -> Delivery | None:
        try:
            return await super().get(timeout)
        finally:
            self.returned += 1


async def _until(done: Callable[[], bool], queues: list[MemoryQueue], guard: asyncio.Future[Any]) -> bool:
    """Wake on every change of `queues` until `done()` (True) or `guard` ended (False)."""
    while True:
        changes = [q.changed() for q in queues]  # registered before the check: no change is missed
        try:
            if done():
                return True
            finished, _ = await asyncio.wait({guard, *changes}, return_when=asyncio.FIRST_COMPLETED)
            if guard in finished:
                return done()
        finally:
            for change in changes:
                change.cancel()


def test_a_finished_task_is_published_and_acked_while_the_subscriber_waits_in_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, one event: when its task ends, the scheduler sits in a `get` on the empty queue.

    That `get` is held open (a poll slice and queue timeout of an hour) and returns only when the
    test publishes a second event. The result must be published and the event acked before: a
    result that waited for the `get` to return would never come while it is held.
    """
    monkeypatch.setattr(scheduler, "POLL_SLICE", 3600.0)
    subs: list[WatchedSubscription] = []

    async def _sub(cfg: BrokerConfig, prefetch: int) -> Subscription:
        sub = await WatchedSubscription.open(cfg, prefetch)
        assert isinstance(sub, WatchedSubscription)
        subs.append(sub)
        return sub

    monkeypatch.setattr(scheduler, "open_subscription", _sub)
    q = new_queues()
    cfg = memory_config(q, tmp_path, ECHO, EWMS_PILOT_MAX_CONCURRENT_TASKS="2",
                        EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="3600")  # fmt: skip
    incoming, outgoing = memory_queue(cfg.incoming), memory_queue(cfg.outgoing)

    def published_and_acked() -> bool:
        return outgoing.counts()["ready"] == 1 and incoming.counts() == {"ready": 0, "in_flight": 0}

    async def main() -> tuple[bool, int, int, StopRequest]:
        await put(cfg, "a")
        pilot = Pilot(cfg)
        run = asyncio.ensure_future(pilot.run())
        # a hang guard, not a speed bound: a result that waits for the get is not there after any wait
        guard = asyncio.ensure_future(asyncio.wait({run}, timeout=HANG_GUARD))
        try:
            seen = await _until(published_and_acked, [incoming, outgoing], guard)
            returned, received = subs[0].returned, pilot.tally.received  # the get still pending
        finally:
            guard.cancel()
            pilot.request_stop(StopRequest(StopCause.QUEUE_EMPTY, "test: the get may return"))
            await put(cfg, "late")  # the get returns it; the stopping pilot gives it back
            request = await run
        return seen, returned, received, request

    seen, returned, received, request = asyncio.run(main())
    assert seen, "no result published and acked while the subscriber waited in its get"
    assert (returned, received) == (1, 1)  # only the get that delivered "a" had returned
    assert request.cause is StopCause.QUEUE_EMPTY
    assert [r["result"] for r in journal(tmp_path)] == ["succeeded"]
    assert [d.data for d in asyncio.run(take(cfg, q.outgoing))] == ["out:a"]
    assert incoming.counts() == {"ready": 1, "in_flight": 0}  # "late": given back, not run
