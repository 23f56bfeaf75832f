"""A stop at every point of an event's path ends it settled, or recorded as left for redelivery.

Issue 10 item 5: the real scheduler and task handler, the in-memory broker (a
real queue implementation with the local queue's semantics) and real task
processes. A gate in a publisher or the subscription holds the event at one
point while the pilot is told to stop (an eviction with grace 0); then the
journal, the exit summary's counts and the queues must all tell the same,
true story: nothing lost, nothing recorded that did not happen.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from memory_pilot import ECHO, FAIL, Queues, journal, memory_config, new_queues, put, take

from ewms_pilot.errors import BrokerError
from ewms_pilot.pilot import scheduler, task_handler
from ewms_pilot.pilot.journal import journal_path
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause, StopRequest
from ewms_pilot.queues import codec
from ewms_pilot.queues.base import Delivery, Publisher, Settlement, Subscription
from ewms_pilot.queues.memory import MemoryPublisher, MemorySubscription
from ewms_pilot.tasks.taskdir import TaskDir

SLEEP_THEN_ECHO = "import sys,time; time.sleep(30); open(sys.argv[2],'w').write('late')"


class Gate:
    """Holds a call at one point until `open_()`; `reached` says a call got there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.opened.wait()

    def open_(self) -> None:
        self.opened.set()


class GatedPublisher(Publisher):
    """A real memory publisher whose `send` waits at the gate first."""

    def __init__(self, inner: Publisher, gate: Gate) -> None:
        self.inner, self.gate = inner, gate
        self.max_message_bytes = inner.max_message_bytes

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        await self.gate.hold()
        await self.inner.send(data, headers)

    async def close(self) -> None:
        await self.inner.close()


class GatedAckSubscription(Subscription):
    """A real memory subscription whose `ack` waits at the gate first."""

    def __init__(self, inner: Subscription, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    async def get(self, timeout: float) -> Delivery | None:
        return await self.inner.get(timeout)

    async def ack(self, delivery: Delivery) -> Settlement:
        await self.gate.hold()
        return await self.inner.ack(delivery)

    async def release(self, delivery: Delivery) -> Settlement:
        return await self.inner.release(delivery)

    async def requeue(self, delivery: Delivery, error: str, error_type: str) -> Settlement:
        return await self.inner.requeue(delivery, error, error_type)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def queues() -> Queues:
    return new_queues()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Gate]]:
    """Gates the scheduler's connections get, by role: 'publish', 'deadletter', 'ack'."""
    gates: dict[str, Gate] = {}

    async def _pub(cfg: Any) -> Publisher:
        inner = await MemoryPublisher.open(cfg)
        role = "deadletter" if cfg.queue.startswith("dlq-") else "publish"
        return GatedPublisher(inner, gates[role]) if role in gates else inner

    async def _sub(cfg: Any, prefetch: int) -> Subscription:
        inner = await MemorySubscription.open(cfg, prefetch)
        return GatedAckSubscription(inner, gates["ack"]) if "ack" in gates else inner

    monkeypatch.setattr(scheduler, "open_publisher", _pub)
    monkeypatch.setattr(scheduler, "open_subscription", _sub)
    yield gates


async def _run_and_stop_at(pilot: Pilot, gate: Gate | None, *, open_gate: bool, after: float = 0.0) -> StopRequest:
    """Run the pilot; once the gate is reached (or `after` s), evict it (grace 0)."""
    run = asyncio.ensure_future(pilot.run())
    if gate is not None:
        await asyncio.wait_for(gate.reached.wait(), 30)
    else:
        await asyncio.sleep(after)
    pilot.request_stop(StopRequest(StopCause.SIGNAL, "test eviction", grace=0))
    if open_gate and gate is not None:
        await asyncio.sleep(0.3)  # the stop is being processed while the call is still held
        gate.open_()
    return await asyncio.wait_for(run, 60)


def _one_record(tmp: Path, pilot: Pilot) -> dict[str, Any]:
    [rec] = journal(tmp)
    t = pilot.tally
    assert (t.received, t.finished, t.running) == (1, 1, 0)
    assert t.settlements[Settlement(rec["settlement"])] == 1
    return rec


def _row(record: Any, point: str, rec: dict[str, Any], outputs: int, kept: int) -> None:
    """One row: `kept` = copies of the event still in a queue (incoming or dead-letter)."""
    record.add(
        case="eviction (grace 0) at each point of an event's path, in-memory broker", broker="memory",
        point=point, events=1, outputs=outputs, duplicates=max(0, outputs - 1),
        lost=int(outputs == 0 and kept == 0),
        detail=f"journal: {rec['result']}, {rec['settlement']}, published {rec['published']}; "
        f"{outputs} result(s), {kept} copy(ies) left in a queue",
    )


def test_cancel_during_run_releases_the_event(queues: Queues, tmp_path: Path, record: Any) -> None:
    cfg = memory_config(queues, tmp_path, SLEEP_THEN_ECHO)

    async def main() -> tuple[Pilot, StopRequest, list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        req = await _run_and_stop_at(pilot, None, open_gate=False, after=1.5)
        return pilot, req, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    pilot, req, left, out = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "task running", rec, len(out), len(left))
    assert req.cause == StopCause.SIGNAL
    assert (rec["result"], rec["settlement"], rec["published"], rec["acked"]) == (
        "cancelled", "released", False, False
    )
    # back unchanged: an eviction is not an attempt
    assert [(d.data, d.attempts) for d in left] == [("e1", 0)] and out == []
    assert pilot.tally.failed == 0 and pilot.failures == []


def test_cancel_before_the_task_starts(queues: Queues, tmp_path: Path, record: Any) -> None:
    """The stop comes while the event is being staged (the handler's first step)."""
    cfg = memory_config(queues, tmp_path, ECHO)

    async def main() -> tuple[Pilot, list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        original = pilot._start

        def start_then_stop(handler: Any, delivery: Delivery) -> None:
            original(handler, delivery)
            pilot.request_stop(StopRequest(StopCause.SIGNAL, "test eviction", grace=0))

        pilot._start = start_then_stop  # type: ignore[method-assign]
        await asyncio.wait_for(pilot.run(), 60)
        return pilot, await take(cfg, queues.incoming)

    pilot, left = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "before the task starts", rec, 0, len(left))
    assert (rec["result"], rec["settlement"]) == ("cancelled", "released")
    assert [(d.data, d.attempts) for d in left] == [("e1", 0)]


@pytest.mark.parametrize("finishes", [True, False], ids=["publish-finishes", "publish-hangs"])
def test_cancel_during_publish(
    queues: Queues, tmp_path: Path, gated: dict[str, Gate], finishes: bool, record: Any
) -> None:
    cfg = memory_config(queues, tmp_path, ECHO)
    gated["publish"] = Gate()

    async def main() -> tuple[Pilot, list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        await _run_and_stop_at(pilot, gated["publish"], open_gate=finishes)
        return pilot, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    pilot, left, out = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "publish " + ("finishes" if finishes else "hangs"), rec, len(out), len(left))
    if finishes:  # the publish+ack unit is not cut by the stop: done once, recorded as done
        assert (rec["result"], rec["settlement"], rec["published"], rec["acked"]) == (
            "succeeded", "acked", True, True
        )
        assert [d.data for d in out] == ["out:e1"] and left == []
    else:  # given up at the end of the clean-up time: unsettled, back in the queue, said so
        assert (rec["settlement"], rec["published"], rec["acked"]) == ("left-for-redelivery", False, False)
        assert out == [] and [d.data for d in left] == ["e1"]


@pytest.mark.parametrize("finishes", [True, False], ids=["ack-finishes", "ack-hangs"])
def test_cancel_between_publish_and_ack(
    queues: Queues, tmp_path: Path, gated: dict[str, Gate], finishes: bool, record: Any
) -> None:
    cfg = memory_config(queues, tmp_path, ECHO)
    gated["ack"] = Gate()

    async def main() -> tuple[Pilot, list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        await _run_and_stop_at(pilot, gated["ack"], open_gate=finishes)
        return pilot, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    pilot, left, out = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "between publish and ack, ack " + ("finishes" if finishes else "hangs"), rec, len(out), len(left))
    assert rec["published"] is True and [d.data for d in out] == ["out:e1"]
    if finishes:
        assert (rec["settlement"], rec["acked"]) == ("acked", True) and left == []
    else:  # published, never acked: a duplicate later, never a loss; and not recorded as acked
        assert (rec["settlement"], rec["acked"]) == ("left-for-redelivery", False)
        assert [d.data for d in left] == ["e1"]


@pytest.mark.parametrize("finishes", [True, False], ids=["dlq-finishes", "dlq-hangs"])
def test_cancel_during_dead_lettering(
    queues: Queues, tmp_path: Path, gated: dict[str, Gate], finishes: bool, record: Any
) -> None:
    cfg = memory_config(queues, tmp_path, FAIL, EWMS_PILOT_QUEUE_DEADLETTER=queues.deadletter)
    gated["deadletter"] = Gate()

    async def main() -> tuple[Pilot, list[Delivery], list[Delivery]]:
        # two failed attempts already (MAX_DELIVERIES 3): this failure is the last one
        await put(cfg, "e1", headers={codec.ATTEMPTS: 2})
        pilot = Pilot(cfg)
        await _run_and_stop_at(pilot, gated["deadletter"], open_gate=finishes)
        return pilot, await take(cfg, queues.incoming), await take(cfg, queues.deadletter)

    pilot, left, dead = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "dead-lettering " + ("finishes" if finishes else "hangs"), rec, 0, len(left) + len(dead))
    assert (rec["result"], rec["error_type"], rec["attempts"]) == ("failed", "ContainerRunError", 2)
    if finishes:
        assert (rec["settlement"], rec["dead_lettered"]) == ("dead-lettered", True)
        assert pilot.tally.dead_lettered == 1 and left == []
        [copy] = dead
        assert copy.data == "e1" and copy.attempts == 3
    else:
        assert (rec["settlement"], rec["dead_lettered"]) == ("left-for-redelivery", False)
        assert pilot.tally.dead_lettered == 0 and dead == []
        assert [(d.data, d.attempts) for d in left] == [("e1", 2)]


class LeaseLostSubscription(GatedAckSubscription):
    """A real memory subscription that loses its hold on the event just before the ack (as a
    replaced connection or a lost local lease does): the ack then cannot be done."""

    lost = False

    async def ack(self, delivery: Delivery) -> Settlement:
        if not self.lost:  # once: the event goes back to the queue under the pilot's feet
            self.lost = True
            await self.inner.release(delivery)
        return await self.inner.ack(delivery)


class RefusingPublisher(Publisher):
    """A dead-letter queue that cannot be published to (a real error path of every broker)."""

    async def send(self, data: Any, headers: dict[str, Any] | None = None) -> None:
        raise BrokerError("dead-letter queue unreachable (test)")

    async def close(self) -> None:
        pass


def test_an_ack_that_cannot_be_done_is_not_recorded_as_acked(
    queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Any
) -> None:
    """Issue 10 item 5a: the journal said `acked: true` and the log "event acked" anyway."""
    cfg = memory_config(queues, tmp_path, ECHO)

    async def _sub(c: Any, prefetch: int) -> Subscription:
        return LeaseLostSubscription(await MemorySubscription.open(c, prefetch), Gate())

    monkeypatch.setattr(scheduler, "open_subscription", _sub)

    async def main() -> tuple[Pilot, list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        await asyncio.wait_for(pilot.run(), 60)
        return pilot, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    pilot, left, out = asyncio.run(main())
    first, second = journal(tmp_path)  # the lost event came back and was done again
    _row(record, "ack after the hold was lost", first, len(out), len(left))
    assert (first["result"], first["settlement"], first["published"], first["acked"]) == (
        "succeeded", "left-for-redelivery", True, False
    )
    assert (second["settlement"], second["acked"]) == ("acked", True)
    assert pilot.tally.settlements[Settlement.LEFT] == 1 and pilot.tally.settlements[Settlement.ACKED] == 1
    assert [d.data for d in out] == ["out:e1", "out:e1"] and left == []  # a duplicate, never a loss


def test_a_failed_dead_lettering_is_not_counted(
    queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Any
) -> None:
    """Issue 10 item 5b: a failed dead-letter publish was recorded and counted as dead-lettered."""
    cfg = memory_config(queues, tmp_path, FAIL, EWMS_PILOT_QUEUE_DEADLETTER=queues.deadletter,
                        EWMS_PILOT_PUBLISH_RETRIES="0", EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false")

    async def _pub(c: Any) -> Publisher:
        return RefusingPublisher() if c.queue == queues.deadletter else await MemoryPublisher.open(c)

    monkeypatch.setattr(scheduler, "open_publisher", _pub)

    async def main() -> tuple[Pilot, list[Delivery]]:
        await put(cfg, "e1", headers={codec.ATTEMPTS: 2})  # this failure is its last attempt
        pilot = Pilot(cfg)
        original = pilot._start

        def once(handler: Any, delivery: Delivery) -> None:  # run it once, then stop taking events
            original(handler, delivery)
            pilot.request_stop(StopRequest(StopCause.QUEUE_EMPTY, "test: one event"))

        pilot._start = once  # type: ignore[method-assign]
        await asyncio.wait_for(pilot.run(), 60)
        return pilot, await take(cfg, queues.incoming)

    pilot, left = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "dead-lettering fails", rec, 0, len(left))
    assert (rec["settlement"], rec["dead_lettered"]) == ("released", False)
    assert pilot.tally.dead_lettered == 0 and [(d.data, d.attempts) for d in left] == [("e1", 2)]


def _gate_the_output_dump(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """The real output dump runs only once the returned gate opens (a cancel cuts it there)."""
    gate = Gate()
    dump = task_handler.TaskHandler._dump_outputs

    async def gated_dump(self: task_handler.TaskHandler, tdir: Any, log: Any) -> None:
        await gate.hold()
        await dump(self, tdir, log)

    monkeypatch.setattr(task_handler.TaskHandler, "_dump_outputs", gated_dump)
    return gate


def _stop_during_the_output_dump(
    cfg: Any, queues: Queues, monkeypatch: pytest.MonkeyPatch, finishes: bool
) -> tuple[Pilot, list[Delivery], list[Delivery]]:
    """One event through a pilot stopped while its output is dumped: (pilot, left on incoming, outgoing)."""
    gate = _gate_the_output_dump(monkeypatch)

    async def main() -> tuple[Pilot, list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        await _run_and_stop_at(pilot, gate, open_gate=finishes)
        return pilot, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    return asyncio.run(main())


@pytest.mark.parametrize("finishes", [True, False], ids=["dump-finishes", "dump-hangs"])
def test_cancel_during_the_output_dump(
    queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finishes: bool, record: Any
) -> None:
    """Issue 10 item 5d: a stop while a failed task's output is dumped to the log skipped settling."""
    cfg = memory_config(queues, tmp_path, FAIL)
    pilot, left, out = _stop_during_the_output_dump(cfg, queues, monkeypatch, finishes)
    rec = _one_record(tmp_path, pilot)
    _row(record, "output dump " + ("finishes" if finishes else "cut short"), rec, len(out), len(left))
    # the task really ran and failed before the stop: one attempt, settled as such (requeued)
    assert (rec["result"], rec["error_type"], rec["settlement"], rec["published"], rec["acked"]) == (
        "failed", "ContainerRunError", "requeued", False, False
    )
    assert pilot.tally.failed == 1 and out == []
    assert [(d.data, d.attempts) for d in left] == [("e1", 1)]


@pytest.mark.parametrize("finishes", [True, False], ids=["dump-finishes", "dump-hangs"])
def test_cancel_during_a_successful_tasks_output_dump(
    queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finishes: bool, record: Any
) -> None:
    """EWMS_PILOT_DUMP_TASK_OUTPUT: a succeeded task's output is dumped after its result was published
    and its event acked; a stop during that dump skipped the journal line and left the task dir."""
    cfg = memory_config(queues, tmp_path, ECHO, EWMS_PILOT_DUMP_TASK_OUTPUT="true")
    pilot, left, out = _stop_during_the_output_dump(cfg, queues, monkeypatch, finishes)
    rec = _one_record(tmp_path, pilot)
    _row(record, "succeeded task's output dump " + ("finishes" if finishes else "cut short"), rec, len(out), len(left))
    assert (rec["result"], rec["settlement"], rec["published"], rec["acked"]) == ("succeeded", "acked", True, True)
    assert [d.data for d in out] == ["out:e1"] and left == []
    task_dirs = [p for p in tmp_path.rglob("*") if p.is_dir() and p.name == rec["task_id"]]
    assert task_dirs == [], "a succeeded task's files are removed"


def test_stopped_during_clean_up_the_journal_line_is_present(
    queues: Queues, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Any
) -> None:
    """Issue 15: the task dir was removed before the journal line was written; a kill or a timed-out
    shutdown during a long removal left an event published and acked with no line."""
    cfg = memory_config(queues, tmp_path, ECHO)
    reached, opened = threading.Event(), threading.Event()
    remove = TaskDir.remove

    def held_remove(self: TaskDir) -> None:  # the removal, in its thread, held until the test says
        reached.set()
        opened.wait(30)
        remove(self)

    monkeypatch.setattr(TaskDir, "remove", held_remove)

    async def main() -> tuple[Pilot, list[dict[str, Any]], list[Delivery], list[Delivery]]:
        await put(cfg, "e1")
        pilot = Pilot(cfg)
        run = asyncio.ensure_future(pilot.run())
        try:
            assert await asyncio.to_thread(reached.wait, 30), "the clean-up was never reached"
            pilot.request_stop(StopRequest(StopCause.SIGNAL, "test eviction", grace=0))
            # what a SIGKILL now would leave on disk
            path = journal_path(tmp_path)
            at_kill = journal(tmp_path) if path.exists() else []
        finally:
            opened.set()
        await asyncio.wait_for(run, 60)
        return pilot, at_kill, await take(cfg, queues.incoming), await take(cfg, queues.outgoing)

    pilot, at_kill, left, out = asyncio.run(main())
    rec = _one_record(tmp_path, pilot)
    _row(record, "stopped during clean-up", rec, len(out), len(left))
    assert [(r["result"], r["settlement"], r["published"]) for r in at_kill] == [("succeeded", "acked", True)]
    assert [d.data for d in out] == ["out:e1"] and left == []


def test_a_settle_that_ends_in_the_same_turn_as_the_stop_keeps_what_it_did() -> None:
    """Review: the handler's cancel landing after its publish/settle unit ended (before the handler resumed)
    made `Critical.run` raise, so an acked event was journalled as left for redelivery."""
    crit = task_handler.Critical()

    async def main() -> str:
        finished = asyncio.Event()

        async def unit() -> str:
            await finished.wait()
            return "acked"

        async def handler() -> str:
            try:
                return await crit.run(unit())
            except asyncio.CancelledError:
                return "recorded as left for redelivery"

        h = asyncio.ensure_future(handler())
        await asyncio.sleep(0)  # the handler waits on its unit
        finished.set()
        await asyncio.sleep(0)  # the unit ends; the handler's wake-up is only scheduled
        h.cancel()  # the scheduler stopping unfinished handlers, in that same turn
        return await h

    assert asyncio.run(main()) == "acked"
