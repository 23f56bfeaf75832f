"""The embedded local queue (broker type `local`) on a real SQLite file.

Checks what a pilot relies on: manual ack, nack -> immediate redelivery with a
growing delivery count, the prefetch limit, no event ever held by two live
consumers, and no event lost when a consumer freezes, closes or is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses as dc
import json
import logging
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from local_helpers import take_all_local
from memory_pilot import ECHO, Queues, journal, memory_config
from mqclient.broker_client_interface import Message
from pilot_proc import base_env

from ewms_pilot.config.model import BrokerConfig, PilotConfig
from ewms_pilot.errors import BrokerError, BrokerUnavailableError, ConfigError
from ewms_pilot.liveness import ProcessIdentity, current, is_surely_dead
from ewms_pilot.pilot import scheduler
from ewms_pilot.pilot.health import BrokerHealth
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.settle import Settler
from ewms_pilot.queues import Settlement, open_publisher, open_subscription
from ewms_pilot.queues.local import (
    LocalPublisher,
    LocalSubscription,
    _Batcher,
    _Worker,
    local_counts,
)
from ewms_pilot.queues.local_store import LocalStore
from ewms_pilot.queues.memory import MemoryPublisher
from ewms_pilot.tasks.errors import ContainerRunError, InvalidDataForInfileException


def _cfg(db: Path, queue: str = "in") -> BrokerConfig:
    return BrokerConfig(queue=queue, broker_type="local", address=str(db))


async def _put(cfg: BrokerConfig, items: list[Any], headers: dict[str, Any] | None = None) -> None:
    pub = await open_publisher(cfg)
    try:
        for item in items:
            await pub.send(item, headers)
    finally:
        await pub.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


# --------------------------------------------------------------------------- basics


async def test_round_trip_keeps_data_headers_and_order(db: Path) -> None:
    cfg = _cfg(db)
    items = [{"n": i, "s": "é\u2603"} for i in range(5)] + ["text", [1, None], 3.5]
    await _put(cfg, items, {"origin": "test"})
    sub = await open_subscription(cfg, prefetch=1)
    got = []
    while (d := await sub.get(0.2)) is not None:
        assert d.headers == {"origin": "test"}
        assert d.delivery_count == 1
        got.append(d.data)
        await sub.ack(d)
    await sub.close()
    assert got == items
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 0}


async def test_payload_is_mqclient_wire_format(db: Path) -> None:
    """Another EWMS component reading the file sees oms-mqclient messages."""
    await _put(_cfg(db), [{"x": 1}], {"h": "v"})
    with sqlite3.connect(db) as conn:
        (payload,) = conn.execute("SELECT payload FROM events").fetchone()
    msg = Message("1", bytes(payload))
    assert (msg.data, msg.headers) == ({"x": 1}, {"h": "v"})


async def test_database_file_created_on_first_use(db: Path) -> None:
    assert not db.exists()
    sub = await open_subscription(_cfg(db), prefetch=1)
    assert await sub.get(0) is None
    await sub.close()
    assert db.is_file()


async def test_queues_in_one_database_are_separate(db: Path) -> None:
    await _put(_cfg(db, "a"), ["for-a"])
    await _put(_cfg(db, "b"), ["for-b"])
    sub = await open_subscription(_cfg(db, "b"), prefetch=5)
    d = await sub.get(0.2)
    assert d is not None and d.data == "for-b"
    await sub.ack(d)
    assert await sub.get(0.2) is None
    await sub.close()
    assert (await local_counts(_cfg(db, "a")))["ready"] == 1


async def test_nack_redelivers_at_once_with_growing_delivery_count(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, ["first", "second"])
    sub = await open_subscription(cfg, prefetch=1)
    for expected_count in (1, 2, 3):
        start = time.monotonic()
        d = await sub.get(5)
        assert d is not None
        assert time.monotonic() - start < 1  # immediately ready again, no redelivery delay
        assert (d.data, d.delivery_count) == ("first", expected_count)
        await sub.release(d)
    d = await sub.get(1)
    assert d is not None and d.data == "first"
    await sub.ack(d)
    d = await sub.get(1)
    assert d is not None and (d.data, d.delivery_count) == ("second", 1)
    await sub.ack(d)
    assert await sub.get(0.2) is None
    await sub.close()


async def test_ack_forgets_event_for_every_consumer(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, ["once"])
    sub = await open_subscription(cfg, prefetch=1)
    d = await sub.get(1)
    assert d is not None
    await sub.ack(d)
    await sub.close()
    other = await open_subscription(cfg, prefetch=1)
    assert await other.get(0.3) is None
    await other.close()
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 0}


async def test_prefetch_limits_unacked_deliveries(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, list(range(5)))
    sub = await open_subscription(cfg, prefetch=2)
    a, b = await sub.get(1), await sub.get(1)
    assert a is not None and b is not None
    start = time.monotonic()
    assert await sub.get(0.5) is None  # 3 events are ready, but 2 are unacked
    assert time.monotonic() - start >= 0.45
    assert await local_counts(cfg) == {"ready": 3, "in_flight": 2}
    await sub.ack(a)
    c = await sub.get(1)
    assert c is not None and c.data == 2
    assert await sub.get(0.2) is None
    await sub.release(b)
    d = await sub.get(1)
    assert d is not None and (d.data, d.delivery_count) == (1, 2)
    await sub.close()


async def test_get_picks_up_an_event_published_while_waiting(db: Path) -> None:
    cfg = _cfg(db)
    sub = await open_subscription(cfg, prefetch=1)
    waiting = asyncio.create_task(sub.get(10))
    await asyncio.sleep(0.5)
    sent_at = time.monotonic()
    await _put(cfg, ["late"])
    d = await waiting
    assert d is not None and d.data == "late"
    assert time.monotonic() - sent_at < 1.0  # polled, not waited out
    await sub.ack(d)
    await sub.close()


async def test_close_returns_unacked_events(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, ["a", "b"])
    sub = await open_subscription(cfg, prefetch=2)
    assert await sub.get(1) is not None and await sub.get(1) is not None
    await sub.close()
    other = await open_subscription(cfg, prefetch=2)
    got = [await other.get(1), await other.get(1)]
    assert [(d.data, d.delivery_count) for d in got if d] == [("a", 2), ("b", 2)]
    await other.close()


async def test_cancelled_get_never_strands_an_event(db: Path) -> None:
    """A `get` cancelled mid-claim (pilot shutdown) must not leave the event held."""
    cfg = _cfg(db)
    await _put(cfg, ["x"])
    sub = await LocalSubscription.open(cfg, prefetch=1)
    for i in range(40):  # cancel at different moments, some of them mid-claim
        delay = (i % 10) * 0.0005
        task = asyncio.create_task(sub.get(5))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            d = await task
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # the worker thread gives the claim back
            assert await local_counts(cfg) == {"ready": 1, "in_flight": 0}
        else:
            assert d is not None
            await sub.release(d)
    assert sub.in_flight == 0
    d = await sub.get(1)
    assert d is not None and d.data == "x"
    await sub.close()


async def test_foreign_payload_is_handed_over_with_decode_error(db: Path) -> None:
    """Something that is not oms-mqclient's format must reach the pilot so it can fail it."""
    await _put(_cfg(db), ["ok"])  # creates the schema
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (queue, payload, enqueued_at) VALUES ('in', ?, 0)", (b"garbage",)
        )
    sub = await open_subscription(_cfg(db), prefetch=2)
    first, second = await sub.get(1), await sub.get(1)
    assert first is not None and first.data == "ok"
    assert second is not None and second.data is None and second.decode_error is not None
    assert second.raw_payload == b"garbage"
    await sub.close()


# --------------------------------------------------------------------------- concurrency


async def test_two_subscriptions_in_one_process_never_share_an_event(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, list(range(200)))

    both_hold_one = asyncio.Barrier(2)

    async def drain(sub: Any) -> list[int]:
        got = []
        while (d := await sub.get(0.5)) is not None:
            got.append(d.data)
            if len(got) == 1:  # each holds an event of its own before either acks: both really consume
                await both_hold_one.wait()  # (else one could take all 200 on a busy machine)
            await asyncio.sleep(0)  # let the other consumer interleave
            await sub.ack(d)
        return got

    subs = [await open_subscription(cfg, prefetch=3) for _ in range(2)]
    a, b = await asyncio.gather(*(drain(s) for s in subs))
    for s in subs:
        await s.close()
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(200))


async def test_expired_lease_returns_event_and_stale_ack_is_skipped(db: Path) -> None:
    """A consumer that stops renewing loses its events; its late ack must not delete them."""
    cfg = _cfg(db)
    await _put(cfg, ["e"])
    slow = await LocalSubscription.open(cfg, prefetch=1, lease=1.5, renew_every=3600)
    d_slow = await slow.get(1)
    assert d_slow is not None
    other = await open_subscription(cfg, prefetch=1)
    assert await other.get(0.1) is None  # lease still valid
    d_other = await other.get(5)
    assert d_other is not None and (d_other.data, d_other.delivery_count) == ("e", 2)
    # too late: not done, and said so; the event belongs to `other` now
    assert await slow.ack(d_slow) is Settlement.LEFT
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 1}
    await other.ack(d_other)
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 0}
    await slow.close()
    await other.close()


async def test_renewed_lease_keeps_events(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, ["kept"])
    holder = await LocalSubscription.open(cfg, prefetch=1, lease=1.0, renew_every=0.1)
    d = await holder.get(1)
    assert d is not None
    other = await open_subscription(cfg, prefetch=1)
    assert await other.get(2.5) is None  # > 2 lease lengths: renewal kept it
    await holder.ack(d)
    await holder.close()
    await other.close()


HOLDER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from ewms_pilot.config.model import BrokerConfig
    from ewms_pilot.queues.local import LocalSubscription

    async def main():
        cfg = BrokerConfig(queue=sys.argv[2], broker_type="local", address=sys.argv[1])
        sub = await LocalSubscription.open(cfg, int(sys.argv[3]), lease=float(sys.argv[4]))
        for _ in range(int(sys.argv[3])):
            d = await sub.get(10)
            print(json.dumps(d.data), flush=True)
        print("holding", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _start_holder(
    db: Path, queue: str, n: int, lease: float
) -> tuple[subprocess.Popen[str], list[Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(db), queue, str(n), str(lease)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    taken = []
    while (line := proc.stdout.readline().strip()) != "holding":
        assert line, f"holder process ended early (rc={proc.poll()})"
        taken.append(json.loads(line))
    return proc, taken


async def test_sigkilled_holder_events_come_back_quickly(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, list(range(5)))
    proc, taken = await asyncio.to_thread(_start_holder, db, "in", 3, 30.0)
    try:
        assert taken == [0, 1, 2]
        assert await local_counts(cfg) == {"ready": 2, "in_flight": 3}
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: a zombie must count as dead too
        start = time.monotonic()
        sub = await open_subscription(cfg, prefetch=5)
        got: list[tuple[Any, int | None]] = []
        while len(got) < 5 and (d := await sub.get(5)) is not None:
            got.append((d.data, d.delivery_count))
            await sub.ack(d)
        elapsed = time.monotonic() - start
        await sub.close()
    finally:
        proc.kill()
        proc.wait()
    assert sorted(got) == [(0, 2), (1, 2), (2, 2), (3, 1), (4, 1)]
    assert elapsed < 5  # far below the 30 s lease: the dead process was recognised


async def test_frozen_holder_keeps_events_until_its_lease_runs_out(db: Path) -> None:
    """SIGSTOP: the process is alive, so only the lease (not liveness) can free its events."""
    cfg = _cfg(db)
    await _put(cfg, ["a", "b"])
    proc, taken = await asyncio.to_thread(_start_holder, db, "in", 2, 3.0)
    try:
        assert taken == ["a", "b"]
        os.kill(proc.pid, signal.SIGSTOP)
        sub = await open_subscription(cfg, prefetch=2)
        assert await sub.get(0.5) is None  # alive and within its lease
        start = time.monotonic()
        got: list[tuple[Any, int | None]] = []
        while len(got) < 2 and (d := await sub.get(10)) is not None:
            got.append((d.data, d.delivery_count))
            await sub.ack(d)
        elapsed = time.monotonic() - start
        await sub.close()
    finally:
        proc.kill()
        proc.wait()
    assert sorted(got) == [("a", 2), ("b", 2)]
    assert elapsed < 6


DRAIN_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from ewms_pilot.config.model import BrokerConfig
    from ewms_pilot.queues import open_subscription

    async def main():
        cfg = BrokerConfig(queue=sys.argv[2], broker_type="local", address=sys.argv[1])
        sub = await open_subscription(cfg, prefetch=4)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # all four start together
        while (d := await sub.get(1.5)) is not None:
            await sub.ack(d)
            print(json.dumps([d.data, d.delivery_count]), flush=True)
        await sub.close()

    asyncio.run(main())
    """
)


async def test_four_processes_drain_500_events_exactly_once(db: Path) -> None:
    cfg = _cfg(db)
    await _put(cfg, list(range(500)))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DRAIN_SCRIPT,
            str(db),
            "in",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout is not None
        assert await asyncio.wait_for(p.stdout.readline(), 60) == b"ready\n"
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 120)
    per_proc = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        per_proc.append([json.loads(line) for line in out.decode().splitlines()])
    delivered = [data for rows in per_proc for data, _ in rows]
    assert sorted(delivered) == list(range(500))  # every event, none twice
    assert all(count == 1 for rows in per_proc for _, count in rows)
    assert sum(1 for rows in per_proc if rows) >= 3  # really concurrent
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 0}


# --------------------------------------------------------------------------- liveness


def test_liveness_recognises_a_reused_pid() -> None:
    me = current()
    assert not is_surely_dead(me, me)
    # same pid, different start time: the holder died and its pid went to another process
    assert is_surely_dead(ProcessIdentity(me.machine, me.pid, me.start + "0"), me)
    # another machine / pid namespace: cannot judge, so never "dead"
    assert not is_surely_dead(ProcessIdentity("elsewhere", 999_999_999, "1"), me)


def test_liveness_sees_an_exited_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = current()
    start = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    ident = ProcessIdentity(here.machine, proc.pid, start)
    assert not is_surely_dead(ident, here)
    proc.kill()
    deadline = time.monotonic() + 5
    while not is_surely_dead(ident, here) and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGKILL is delivered asynchronously
    assert is_surely_dead(ident, here)
    # not reaped yet: this exercised the zombie case, not a vanished pid
    assert Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    proc.wait()
    assert is_surely_dead(ident, here)  # gone


# --------------------------------------------------------------------------- errors


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    return text


async def test_missing_parent_dir_is_a_config_error(tmp_path: Path) -> None:
    address = tmp_path / "no-such-dir" / "q.db"
    with pytest.raises(ConfigError) as sub_err:
        await open_subscription(_cfg(address), prefetch=1)
    with pytest.raises(ConfigError) as pub_err:
        await open_publisher(_cfg(address))
    for e in (sub_err.value, pub_err.value):
        assert "does not exist" in _one_line(e) and str(address) in str(e)
    assert not address.parent.exists()


async def test_directory_as_address_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        await open_publisher(_cfg(tmp_path))
    assert "not a directory" in _one_line(e.value)


async def test_corrupt_database_is_broker_unavailable(db: Path) -> None:
    db.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(BrokerUnavailableError) as e:
        await open_subscription(_cfg(db), prefetch=1)
    assert "not a database" in _one_line(e.value) and str(db) in str(e.value)


async def test_foreign_sqlite_file_is_not_touched(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE mine (x)")
    with pytest.raises(BrokerUnavailableError) as e:
        await open_publisher(_cfg(db))
    assert "not an ewms-pilot local queue" in _one_line(e.value)
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["mine"]


async def test_counts_of_missing_database_is_an_error(db: Path) -> None:
    with pytest.raises(BrokerUnavailableError) as e:
        await local_counts(_cfg(db))
    assert "does not exist" in _one_line(e.value)
    assert not db.exists()


# --------------------------------------------------------------------------- group commit


def _wal_commits(db: Path) -> int:
    """Transactions in the database's write-ahead log: frames that end one (nonzero "db size" field).

    Frames of an older WAL generation (a different salt) are not counted.
    """
    raw = (db.parent / (db.name + "-wal")).read_bytes()
    page_size = int.from_bytes(raw[8:12], "big")
    salt = raw[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(raw):
        header = raw[offset : offset + 24]
        if header[8:16] != salt:
            break
        commits += int.from_bytes(header[4:8], "big") != 0
        offset += 24 + page_size
    return commits


async def _all_at_once(worker: Any, batcher: Any, calls: list[Any]) -> list[Any]:
    """Run `calls` (coroutines) while `worker`'s thread is held by a job, released once every call
    waits in `batcher`: they then meet in one batch whatever the thread scheduling."""
    hold = threading.Event()
    busy = worker.submit(hold.wait, 30)
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        async with asyncio.timeout(30):
            while len(batcher._queued) < len(calls):
                await asyncio.sleep(0)
    finally:
        hold.set()
    assert busy.result(30) is True
    return await asyncio.gather(*tasks)


async def test_concurrent_results_and_acks_commit_together(db: Path) -> None:
    """Eight results published at once cost one commit (fsync), not eight; acks too; none is lost."""
    cfg_in, cfg_out = _cfg(db, "in"), _cfg(db, "out")
    await _put(cfg_in, list(range(8)))
    # no lease renewal (a commit of its own) during the test
    sub = await LocalSubscription.open(cfg_in, 8, lease=3600, renew_every=3600)
    pub = await open_publisher(cfg_out)
    assert isinstance(pub, LocalPublisher)
    try:
        held = [d for _ in range(8) if (d := await sub.get(1)) is not None]
        assert len(held) == 8
        before = _wal_commits(db)
        await _all_at_once(pub._worker, pub._sends, [pub.send(d.data) for d in held])
        published = _wal_commits(db) - before
        settlements = await _all_at_once(sub._worker, sub._acks, [sub.ack(d) for d in held])
        acked = _wal_commits(db) - before - published
    finally:
        await pub.close()
        await sub.close()
    assert settlements == [Settlement.ACKED] * 8
    assert (published, acked) == (1, 1)
    assert await local_counts(cfg_in) == {"ready": 0, "in_flight": 0}
    assert await local_counts(cfg_out) == {"ready": 8, "in_flight": 0}


async def test_a_batch_call_after_the_worker_is_gone_fails_and_the_next_does_not_hang() -> None:
    """Issue 15 review: a failed submit left its item queued; every later call then waited forever."""
    worker = _Worker("test-gone")
    batcher: _Batcher[int, int] = _Batcher(worker, lambda items: list(items))
    assert await batcher(1) == 1
    worker.shutdown()
    for item in (2, 3):
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(batcher(item), 10)


async def test_one_unencodable_result_fails_alone(db: Path) -> None:
    """A result that is not JSON fails its own send; sends committed with it in one go still land."""
    pub = await open_publisher(_cfg(db, "out"))
    try:
        sent = await asyncio.gather(pub.send(1), pub.send({1, 2}), pub.send(3), return_exceptions=True)
    finally:
        await pub.close()
    assert sent[0] is None and sent[2] is None
    assert isinstance(sent[1], BrokerError) and "publishing to local queue" in str(sent[1])
    assert await local_counts(_cfg(db, "out")) == {"ready": 2, "in_flight": 0}


# --------------------------------------------------------------------------- read ahead (issue 15)


async def _next_delivery(cfg: BrokerConfig) -> tuple[Any, int] | None:
    """(data, delivery count) of what a fresh consumer gets next (it gives it back)."""
    other = await open_subscription(cfg, prefetch=1)
    try:
        d = await other.get(1)
        return None if d is None else (d.data, d.delivery_count)
    finally:
        await other.close()


async def test_an_ack_also_claims_the_event_it_makes_room_for_in_one_commit(db: Path) -> None:
    """The slot an ack frees is refilled in the same transaction: the next `get` needs no trip."""
    cfg = _cfg(db)
    await _put(cfg, list(range(4)))
    sub = await LocalSubscription.open(cfg, 2, lease=3600, renew_every=3600)
    try:
        a, b = await sub.get(1), await sub.get(1)
        assert a is not None and b is not None
        before = _wal_commits(db)
        assert await sub.ack(a) == Settlement.ACKED
        c = await sub.get(0)  # no wait at all: it is already this subscription's
        commits = _wal_commits(db) - before
        assert c is not None and (c.data, c.delivery_count) == (2, 1)
        assert commits == 1  # the ack and the claim
        assert await local_counts(cfg) == {"ready": 1, "in_flight": 2}  # never beyond prefetch
        assert await sub.get(0.1) is None
    finally:
        await sub.close()


async def test_events_read_ahead_and_never_handed_out_go_back_uncounted(db: Path) -> None:
    """A stop must not count as a delivery of an event no task ever saw (EWMS_PILOT_MAX_REDELIVERIES)."""
    cfg = _cfg(db)
    await _put(cfg, ["a", "b"])
    sub = await open_subscription(cfg, prefetch=1)
    a = await sub.get(1)
    assert a is not None
    await sub.ack(a)  # reads "b" ahead
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 1}
    await sub.close()
    assert await local_counts(cfg) == {"ready": 1, "in_flight": 0}
    assert await _next_delivery(cfg) == ("b", 1)


async def test_read_ahead_never_holds_more_than_prefetch_while_acks_and_gets_interleave(db: Path) -> None:
    """Three consumers' worth of acks and gets at once: the database never shows more in flight than prefetch."""
    cfg = _cfg(db)
    await _put(cfg, list(range(60)))
    sub = await open_subscription(cfg, prefetch=3)
    seen: list[int] = []
    most = 0

    async def slot(n: int) -> None:
        while (d := await sub.get(0.3)) is not None:
            seen.append(d.data)
            await asyncio.sleep(0.001 * ((d.data * 7 + n) % 5))
            assert await sub.ack(d) == Settlement.ACKED

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, (await local_counts(cfg))["in_flight"])
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(slot(n) for n in range(3)))
    finally:
        watcher.cancel()
        await sub.close()
    assert sorted(seen) == list(range(60))  # each exactly once
    assert 1 <= most <= 3
    assert await local_counts(cfg) == {"ready": 0, "in_flight": 0}


async def test_stop_taking_gives_back_what_was_read_ahead_and_ends_read_ahead(db: Path) -> None:
    """A draining pilot holds nothing back from other pilots (review of the read ahead)."""
    cfg = _cfg(db)
    await _put(cfg, ["a", "b", "c"])
    sub = await open_subscription(cfg, prefetch=2)
    try:
        a, b = await sub.get(1), await sub.get(1)
        assert a is not None and b is not None
        await sub.ack(a)  # reads "c" ahead
        assert await local_counts(cfg) == {"ready": 0, "in_flight": 2}
        await sub.stop_taking()
        assert await local_counts(cfg) == {"ready": 1, "in_flight": 1}  # "c" is back, uncounted
        await sub.ack(b)  # and acking reads nothing ahead any more
        assert await local_counts(cfg) == {"ready": 1, "in_flight": 0}
    finally:
        await sub.close()
    assert await _next_delivery(cfg) == ("c", 1)


async def test_an_ack_refills_only_the_slots_it_frees(db: Path) -> None:
    """EWMS_PILOT_PREFETCH=5 with one slot: one ack takes one event ahead, not five."""
    cfg = _cfg(db)
    await _put(cfg, list(range(7)))
    sub = await open_subscription(cfg, prefetch=5)
    try:
        first = await sub.get(1)
        assert first is not None
        await sub.ack(first)
        assert await local_counts(cfg) == {"ready": 5, "in_flight": 1}
    finally:
        await sub.close()


async def test_what_was_read_ahead_is_not_handed_out_once_the_lease_may_have_run_out(db: Path) -> None:
    """A frozen consumer (no renewal) whose lease ran out: another took the event; its next get must not."""
    cfg = _cfg(db)
    await _put(cfg, ["a", "b"])
    frozen = await LocalSubscription.open(cfg, prefetch=1, lease=1.0, renew_every=3600)
    other = await open_subscription(cfg, prefetch=1)
    try:
        a = await frozen.get(1)
        assert a is not None
        await frozen.ack(a)  # "b" read ahead, under a 1 s lease nobody renews
        b = await other.get(10)  # once the lease ran out, the sweep gives "b" to `other`
        assert b is not None and b.data == "b"
        assert await frozen.get(0.2) is None  # not handed out a second time
        assert await local_counts(cfg) == {"ready": 0, "in_flight": 1}
    finally:
        await other.close()
        await frozen.close()


def test_a_draining_pilot_leaves_the_queue_to_other_pilots(db: Path, tmp_path: Path) -> None:
    """SIGTERM while two tasks run: the one that ends during the drain reads nothing ahead (review of the
    read ahead: the next event sat claimed, out of other pilots' reach, until the pilot closed)."""
    task = shlex.join([
        sys.executable, "-c",
        "import os,shutil,sys,time\n"
        "d=open(sys.argv[1]).read()\n"
        f"while not os.path.exists(os.path.join({str(tmp_path)!r}, 'release-' + d)): time.sleep(0.05)\n"
        "shutil.copy(sys.argv[1], sys.argv[2])",
        "<<INFILE>>", "<<OUTFILE>>",
    ])  # fmt: skip
    cfg = _cfg(db)
    asyncio.run(_put(cfg, ["long", "mid", "x1"]))
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp_path / "a",
        task_args=task, extra={"EWMS_PILOT_MAX_CONCURRENT_TASKS": "2", "EWMS_PILOT_SHUTDOWN_GRACE": "120"},
    )  # fmt: skip
    journal = tmp_path / "a" / "ewms-pilot-tasks.jsonl"
    log = tmp_path / "pilot.log"
    with log.open("w") as err:
        pilot = subprocess.Popen(
            [sys.executable, "-m", "ewms_pilot", "run", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
            stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        while asyncio.run(local_counts(cfg)) != {"ready": 1, "in_flight": 2}:  # "long" and "mid" run
            assert pilot.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(pilot.pid, signal.SIGTERM)  # the pilot only (its group could catch a task before its setsid)
        while "waiting for 2 running task(s)" not in log.read_text():  # it stopped taking events
            assert pilot.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        (tmp_path / "release-mid").touch()  # "mid" ends during the drain ...
        while not journal.exists() or "succeeded" not in journal.read_text():
            assert pilot.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        assert asyncio.run(local_counts(cfg)) == {"ready": 1, "in_flight": 1}  # ... and "x1" stays for others
    finally:
        (tmp_path / "release-long").touch()
        assert pilot.wait(120) == 6, log.read_text()[-3000:]  # evicted, after "long" finished
    assert asyncio.run(local_counts(cfg)) == {"ready": 1, "in_flight": 0}


# --------------------------------------------------------------------------- a result published with its ack (issue 15)


async def _held_one(db: Path, **open_args: Any) -> tuple[LocalSubscription, LocalPublisher, Any]:
    """A subscription on "in" holding its one event, and a publisher on "out" in the same file."""
    await _put(_cfg(db, "in"), ["e"])
    sub = await LocalSubscription.open(_cfg(db, "in"), 1, **open_args)
    pub = await LocalPublisher.open(_cfg(db, "out"))
    d = await sub.get(1)
    assert d is not None
    return sub, pub, d


async def test_a_result_and_its_ack_are_one_commit(db: Path) -> None:
    """Nobody can see the result without the ack (or the ack without the result): one transaction."""
    sub, pub, d = await _held_one(db, lease=3600, renew_every=3600)
    try:
        assert sub.settles_with(pub)
        before = _wal_commits(db)
        assert await sub.ack_publishing(d, pub, {"result": 1}) == Settlement.ACKED
        assert _wal_commits(db) - before == 1
    finally:
        await pub.close()
        await sub.close()
    assert await local_counts(_cfg(db, "in")) == {"ready": 0, "in_flight": 0}
    assert await _next_delivery(_cfg(db, "out")) == ({"result": 1}, 1)


async def test_a_lost_claim_publishes_nothing_and_the_event_comes_back(db: Path) -> None:
    """The lease ran out while the task ran: no result (the event is run again), not a duplicate."""
    sub, pub, d = await _held_one(db, lease=1.0, renew_every=3600)
    try:
        while await local_counts(_cfg(db, "in")) != {"ready": 1, "in_flight": 0}:  # swept, by another
            await asyncio.sleep(0.05)
        assert await sub.ack_publishing(d, pub, "result") == Settlement.LEFT
    finally:
        await pub.close()
        await sub.close()
    assert await local_counts(_cfg(db, "out")) == {"ready": 0, "in_flight": 0}
    assert await _next_delivery(_cfg(db, "in")) == ("e", 2)


async def test_the_commit_that_publishes_a_result_is_synced_as_a_publish(db: Path) -> None:
    """The subscription's connection skips the fsync of a claim or an ack (synchronous=NORMAL), but
    not for a transaction that publishes: a result must survive a power cut once it counts as sent."""
    await _put(_cfg(db, "in"), ["a", "b"])
    sub = await LocalSubscription.open(_cfg(db, "in"), 2, lease=3600, renew_every=3600)
    pub = await LocalPublisher.open(_cfg(db, "out"))
    statements: list[str] = []
    await sub._worker.call(sub._store._conn.set_trace_callback, statements.append)
    try:
        a, b = await sub.get(1), await sub.get(1)
        assert a is not None and b is not None
        del statements[:]
        assert await sub.ack(a) == Settlement.ACKED
        assert not any("synchronous" in sql for sql in statements)
        del statements[:]
        assert await sub.ack_publishing(b, pub, "result") == Settlement.ACKED
        sync = [i for i, sql in enumerate(statements) if "synchronous" in sql or sql in ("BEGIN IMMEDIATE", "COMMIT")]
        assert [statements[i] for i in sync] == [
            "PRAGMA synchronous = FULL", "BEGIN IMMEDIATE", "COMMIT", "PRAGMA synchronous = NORMAL"
        ]
    finally:
        await pub.close()
        await sub.close()


async def test_a_result_publishes_with_its_ack_only_into_the_same_file(db: Path, tmp_path: Path) -> None:
    """Same file by another spelling: yes (any queue in it); another file or another broker: no."""
    await _put(_cfg(db, "in"), ["e"])
    sub = await LocalSubscription.open(_cfg(db, "in"), 1)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.db").symlink_to(db)
    pubs = [
        await LocalPublisher.open(_cfg(tmp_path / "sub" / ".." / "queue.db", "out")),
        await LocalPublisher.open(_cfg(tmp_path / "link.db", "in")),
        await LocalPublisher.open(_cfg(tmp_path / "other.db", "out")),
    ]
    memory = await MemoryPublisher.open(BrokerConfig(queue="out", broker_type="memory", address="m"))
    try:
        assert [sub.settles_with(p) for p in pubs] == [True, True, False]
        assert not sub.settles_with(memory)
    finally:
        for p in pubs:
            await p.close()
        await sub.close()


async def test_a_result_that_cannot_be_encoded_fails_alone_and_its_event_stays_held(db: Path) -> None:
    """Met in one batch with a good one: that one is published and acked, the bad one neither."""
    cfg = _cfg(db, "in")
    await _put(cfg, ["good", "bad"])
    sub = await LocalSubscription.open(cfg, 2, lease=3600, renew_every=3600)
    pub = await LocalPublisher.open(_cfg(db, "out"))
    try:
        good, bad = await sub.get(1), await sub.get(1)
        assert good is not None and bad is not None
        settled = await _all_at_once(sub._worker, sub._acks, [
            sub.ack_publishing(good, pub, "ok"), _raises(sub.ack_publishing(bad, pub, {1, 2}))
        ])  # fmt: skip
        assert settled[0] == Settlement.ACKED
        assert isinstance(settled[1], BrokerError) and "publishing to local queue 'out'" in str(settled[1])
        assert await local_counts(cfg) == {"ready": 0, "in_flight": 1}
        assert await sub.release(bad) == Settlement.RELEASED  # still this subscription's to give back
    finally:
        await pub.close()
        await sub.close()
    assert await local_counts(_cfg(db, "out")) == {"ready": 1, "in_flight": 0}
    assert await _next_delivery(cfg) == ("bad", 2)


async def _raises(call: Any) -> BaseException:
    try:
        await call
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


async def test_a_failed_transaction_changes_nothing_and_can_be_tried_again(db: Path) -> None:
    """The pilot retries a failed publish-with-ack: the first try must not have half-happened."""
    sub, pub, d = await _held_one(db, lease=3600, renew_every=3600)
    await sub._worker.call(sub._store._conn.execute, "PRAGMA busy_timeout = 0")
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(BrokerError, match="locked"):
            await sub.ack_publishing(d, pub, "result")
        blocker.execute("ROLLBACK")
        assert await local_counts(_cfg(db, "out")) == {"ready": 0, "in_flight": 0}
        assert await sub.ack_publishing(d, pub, "result") == Settlement.ACKED
    finally:
        blocker.close()
        await pub.close()
        await sub.close()
    assert await local_counts(_cfg(db, "in")) == {"ready": 0, "in_flight": 0}
    assert await local_counts(_cfg(db, "out")) == {"ready": 1, "in_flight": 0}


def _local_pilot_config(tmp: Path, code: str, incoming: Path, outgoing: Path, **extra: str) -> PilotConfig:
    cfg = memory_config(Queues("", "in", "out", "dlq"), tmp, code, **extra)
    return dc.replace(
        cfg,
        incoming=dc.replace(cfg.incoming, broker_type="local", address=str(incoming)),
        outgoing=dc.replace(cfg.outgoing, broker_type="local", address=str(outgoing)),
    )


def _gated_task(tmp: Path, end: str) -> tuple[str, Path, Path]:
    """A task that says it started, then waits for `go` before `end` (its last line); (code, started, go)."""
    started, go = tmp / "started", tmp / "go"
    code = (
        f"import os,sys,time\nopen({str(started)!r},'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n{end}"
    )
    return code, started, go


def _run_losing_its_claim(
    monkeypatch: pytest.MonkeyPatch, cfg: PilotConfig, started: Path, go: Path, headers: dict[str, Any] | None = None
) -> None:
    """A pilot on one event whose lease nobody renews: the task runs until `go`, meanwhile the lease runs
    out and a sweep gives the event back (its start is seen by a file, not by the counts: a stalled loop
    could miss the claim); then the pilot runs to its end, taking the event again."""

    async def _sub(c: BrokerConfig, prefetch: int) -> LocalSubscription:
        return await LocalSubscription.open(c, prefetch, lease=1.0, renew_every=3600)

    monkeypatch.setattr(scheduler, "open_subscription", _sub)

    async def main() -> None:
        await _put(cfg.incoming, ["e1"], headers)
        run = asyncio.ensure_future(Pilot(cfg).run())
        while not started.exists() or await local_counts(cfg.incoming) != {"ready": 1, "in_flight": 0}:
            assert not run.done()
            await asyncio.sleep(0.05)
        go.touch()
        await asyncio.wait_for(run, 60)

    asyncio.run(main())


def test_a_pilot_whose_claim_ran_out_publishes_no_result_and_runs_the_event_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the result was published, the ack failed, the event ran again: two results for one event."""
    db = tmp_path / "q.db"
    task, started, go = _gated_task(tmp_path, "open(sys.argv[2],'w').write('out:'+open(sys.argv[1]).read())")
    cfg = _local_pilot_config(tmp_path, task, db, db, EWMS_PILOT_MAX_CONCURRENT_TASKS="1")  # no 2nd claim
    _run_losing_its_claim(monkeypatch, cfg, started, go)
    first, second = journal(tmp_path)
    assert (first["result"], first["settlement"], first["published"]) == ("succeeded", "left-for-redelivery", False)
    assert (second["settlement"], second["published"], second["delivery_count"]) == ("acked", True, 2)
    assert asyncio.run(take_all_local(db, "out")) == ["out:e1"]  # one result, not two
    warned = [r.getMessage() for r in caplog.records if "result NOT published" in r.getMessage()]
    assert len(warned) == 1 and first["task_id"] in warned[0] and "redelivered" in warned[0]


@pytest.mark.parametrize("retries", [1, 0])
async def test_a_failed_publish_with_ack_is_retried_and_its_event_released_when_the_pilot_gives_up(
    db: Path, tmp_path: Path, retries: int
) -> None:
    """EWMS_PILOT_PUBLISH_RETRIES holds for the one step too; each try's outcome reaches BrokerHealth."""
    cfg = _local_pilot_config(tmp_path, ECHO, db, db, EWMS_PILOT_PUBLISH_RETRIES=str(retries))
    sub, pub, d = await _held_one(db, lease=3600, renew_every=3600)
    await sub._worker.call(sub._store._conn.execute, "PRAGMA busy_timeout = 0")
    health = BrokerHealth()
    settler = Settler(cfg, "pilot", sub, pub, None, health)
    log = logging.getLogger("test")
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        assert settler.fused
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the first try fails
        step = asyncio.ensure_future(settler.publish_with_ack(d, "result", log))
        while not health.down:
            await asyncio.sleep(0.01)
        blocker.execute("ROLLBACK")
        if retries:
            assert await step == Settlement.ACKED
            assert not health.down
        else:
            with pytest.raises(BrokerError, match="gave up publishing after 1 tries"):
                await step
            assert await settler.release(d, log) == Settlement.RELEASED
    finally:
        blocker.close()
        await pub.close()
        await sub.close()
    assert await local_counts(_cfg(db, "out")) == {"ready": int(retries > 0), "in_flight": 0}
    assert await local_counts(_cfg(db, "in")) == {"ready": int(retries == 0), "in_flight": 0}


@pytest.mark.parametrize("files", ["one file", "two files"])
def test_a_pilot_publishes_every_result_once_with_its_queues_in_one_file_or_two(tmp_path: Path, files: str) -> None:
    """One file: each result rides on its ack; two: published, then acked. The same results either way."""
    incoming = tmp_path / "in.db"
    outgoing = incoming if files == "one file" else tmp_path / "out.db"
    cfg = _local_pilot_config(tmp_path, ECHO, incoming, outgoing)
    events = [f"e{i}" for i in range(6)]

    async def main() -> None:
        await _put(cfg.incoming, events)
        await asyncio.wait_for(Pilot(cfg).run(), 60)

    asyncio.run(main())
    assert sorted(asyncio.run(take_all_local(outgoing, "out"))) == [f"out:{e}" for e in events]
    assert all((r["settlement"], r["published"]) == ("acked", True) for r in journal(tmp_path))
    assert asyncio.run(local_counts(cfg.incoming)) == {"ready": 0, "in_flight": 0}


def test_a_publish_with_ack_that_outlasts_the_publish_deadline_is_recorded_as_it_ended(tmp_path: Path) -> None:
    """Review: a try cut at EWMS_PILOT_PUBLISH_DEADLINE still committed on the queue's thread; the pilot had
    given the event up and journalled failed / not published, while the result was out and the event acked."""
    db = tmp_path / "q.db"
    ready, locked = tmp_path / "ready", tmp_path / "locked"
    task = (  # says it is about to finish, waits until another process holds the write lock, then writes
        f"import os,sys,time\nopen({str(ready)!r},'w').close()\n"
        f"while not os.path.exists({str(locked)!r}): time.sleep(0.02)\n"
        "open(sys.argv[2],'w').write('out:'+open(sys.argv[1]).read())"
    )
    cfg = _local_pilot_config(
        tmp_path, task, db, db, EWMS_PILOT_PUBLISH_DEADLINE="1", EWMS_PILOT_PUBLISH_RETRIES="0",
        EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false",
    )  # fmt: skip

    def another_process() -> None:  # a write transaction of 3 s, longer than the publish deadline
        assert _wait_file(ready, 60)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.touch()
        time.sleep(3.0)
        conn.execute("ROLLBACK")
        conn.close()

    async def main() -> None:
        await _put(cfg.incoming, ["e1"])
        other = threading.Thread(target=another_process)
        other.start()
        try:
            await asyncio.wait_for(Pilot(cfg).run(), 60)
        finally:
            other.join()

    asyncio.run(main())
    assert asyncio.run(take_all_local(db, "out")) == ["out:e1"]
    assert asyncio.run(local_counts(cfg.incoming)) == {"ready": 0, "in_flight": 0}
    assert [(r["result"], r["published"], r["settlement"]) for r in journal(tmp_path)] == [
        ("succeeded", True, "acked")
    ]


def _wait_file(path: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------- a dead-letter copy parked with its ack


def _on_the_wire(db: Path, queue: str) -> list[tuple[Any, dict[str, Any]]]:
    """(data, headers) of every event in `queue`, as stored (the pilot's own `ewms_pilot_*` headers kept)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, payload FROM events WHERE queue = ? ORDER BY id", (queue,)).fetchall()
    finally:
        conn.close()
    return [(m.data, dict(m.headers or {})) for m in (Message(str(i), bytes(p)) for i, p in rows)]


def test_a_pilot_whose_claim_ran_out_while_dead_lettering_parks_one_copy_not_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the copy was published to the dead-letter queue, then the ack failed (the claim was lost),
    the event came back and was dead-lettered again: two copies of one event in the dead-letter queue."""
    db = tmp_path / "q.db"
    task, started, go = _gated_task(tmp_path, "sys.exit('refusing '+open(sys.argv[1]).read())")
    cfg = _local_pilot_config(
        tmp_path, task, db, db, EWMS_PILOT_MAX_CONCURRENT_TASKS="1", EWMS_PILOT_MAX_DELIVERIES="1",
        EWMS_PILOT_QUEUE_DEADLETTER="dlq", EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false",
    )  # fmt: skip
    _run_losing_its_claim(monkeypatch, cfg, started, go, {"origin": "test"})
    first, second = journal(tmp_path)
    assert (first["result"], first["settlement"], first["dead_lettered"]) == ("failed", "left-for-redelivery", False)
    assert (second["settlement"], second["dead_lettered"], second["delivery_count"]) == ("dead-lettered", True, 2)
    [(data, headers)] = _on_the_wire(db, "dlq")  # one copy, not two
    assert (data, headers["origin"], headers["ewms_pilot_deliveries"]) == ("e1", "test", 2)
    assert asyncio.run(local_counts(cfg.incoming)) == {"ready": 0, "in_flight": 0}
    warned = [r.getMessage() for r in caplog.records if "not dead-lettered: its claim was lost" in r.getMessage()]
    assert len(warned) == 1 and "nothing parked" in warned[0]


@pytest.mark.parametrize("retries", [1, 0])
async def test_a_failed_dead_lettering_commit_parks_nothing_and_is_retried_or_gives_the_event_back(
    db: Path, tmp_path: Path, retries: int
) -> None:
    """The copy and the ack are one transaction: a failed try parks nothing, the next parks one copy;
    once the retries are spent the event is given back unchanged (released), as on every broker."""
    cfg = _local_pilot_config(
        tmp_path, ECHO, db, db, EWMS_PILOT_MAX_DELIVERIES="1", EWMS_PILOT_QUEUE_DEADLETTER="dlq",
        EWMS_PILOT_PUBLISH_RETRIES=str(retries),
    )  # fmt: skip
    sub, pub, d = await _held_one(db, lease=3600, renew_every=3600)
    dlq = await LocalPublisher.open(_cfg(db, "dlq"))
    # a try fails after 1 s; the release that follows the last one waits for the lock to go
    await sub._worker.call(sub._store._conn.execute, "PRAGMA busy_timeout = 1000")
    health = BrokerHealth()
    settler = Settler(cfg, "pilot", sub, pub, dlq, health)
    log = logging.getLogger("test")
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        assert sub.settles_with(dlq)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the first try fails
        step = asyncio.ensure_future(settler.failed(d, ContainerRunError("exited with code 1: boom"), log))
        async with asyncio.timeout(10):  # (before: the copy waited for the lock on its own connection)
            while not health.down:
                await asyncio.sleep(0.01)
        blocker.execute("ROLLBACK")
        assert await step == (Settlement.DEAD_LETTERED if retries else Settlement.RELEASED)
    finally:
        blocker.close()
        for closing in (dlq, pub, sub):
            await closing.close()
    assert len(_on_the_wire(db, "dlq")) == int(retries > 0)
    assert await local_counts(_cfg(db, "in")) == {"ready": int(retries == 0), "in_flight": 0}
    if not retries:
        assert await _next_delivery(_cfg(db, "in")) == ("e", 2)  # back unchanged: not run, not lost


@pytest.mark.parametrize("undecodable", [False, True], ids=["event", "undecodable payload"])
async def test_a_dead_letter_copy_parked_with_its_ack_carries_the_headers_of_one_published_then_acked(
    tmp_path: Path, undecodable: bool
) -> None:
    """Dead-letter queue in the incoming queue's file (one commit) or in another (published, then acked):
    the same copy, with the same dead-letter headers (an undecodable payload kept whole in both)."""
    cfg = _local_pilot_config(tmp_path, ECHO, tmp_path / "x.db", tmp_path / "x.db", EWMS_PILOT_MAX_DELIVERIES="2",
                              EWMS_PILOT_QUEUE_DEADLETTER="dlq")  # fmt: skip
    copies = {}
    for layout in ("same file", "another file"):
        (tmp_path / layout).mkdir()
        db = tmp_path / layout / "q.db"
        dlq_db = db if layout == "same file" else tmp_path / layout / "dlq.db"
        if undecodable:
            store = LocalStore(db, "in", durable=True)
            store.publish(b"not an oms-mqclient message")
            store.close()
        else:
            await _put(_cfg(db, "in"), ["e"], {"origin": "test", "ewms_pilot_attempts": 1})
        sub = await LocalSubscription.open(_cfg(db, "in"), 1, lease=3600, renew_every=3600)
        pub, dlq = await LocalPublisher.open(_cfg(db, "out")), await LocalPublisher.open(_cfg(dlq_db, "dlq"))
        settler = Settler(cfg, "pilot-1", sub, pub, dlq, BrokerHealth())
        try:
            assert sub.settles_with(dlq) == (layout == "same file")
            d = await sub.get(1)
            assert d is not None
            before = _wal_commits(db)
            failure = InvalidDataForInfileException("cannot write it")
            assert await settler.failed(d, failure, logging.getLogger("test")) == Settlement.DEAD_LETTERED
            if layout == "same file":
                assert _wal_commits(db) - before == 1  # the copy and the ack: one transaction
        finally:
            for closing in (dlq, pub, sub):
                await closing.close()
        assert await local_counts(_cfg(db, "in")) == {"ready": 0, "in_flight": 0}
        copies[layout] = _on_the_wire(dlq_db, "dlq")
    assert copies["same file"] == copies["another file"]
    [(data, headers)] = copies["same file"]
    assert (headers["ewms_pilot_id"], headers["ewms_pilot_deliveries"]) == ("pilot-1", 1)
    assert (headers["ewms_pilot_error"], headers["ewms_pilot_error_type"]) == (
        "cannot write it", "InvalidDataForInfileException"
    )  # fmt: skip
    if undecodable:
        assert data is None and "ewms_pilot_decode_error" in headers
        assert base64.b64decode(headers["ewms_pilot_raw_payload_b64"]) == b"not an oms-mqclient message"
        assert headers["ewms_pilot_raw_payload_bytes"] == len(b"not an oms-mqclient message")
    else:
        assert (data, headers["origin"], headers["ewms_pilot_attempts"]) == ("e", "test", 2)


def test_a_dead_letter_copy_says_when_an_undecodable_payload_was_cut(caplog: pytest.LogCaptureFixture) -> None:
    """The copy keeps the first MiB of a payload nobody can read; its whole size says it was cut."""
    from ewms_pilot.queues import codec
    from ewms_pilot.queues.base import Delivery

    raw = bytes(range(256)) * (codec.RAW_PAYLOAD_KEEP // 256 + 10)
    d = Delivery(msg_id="m1", data=None, decode_error="JSONDecodeError: x", raw_payload=raw)
    with caplog.at_level(logging.WARNING):
        headers = codec.dead_letter_headers(d, attempts=0, error="e", error_type="E", pilot_id="p")
    assert base64.b64decode(headers["ewms_pilot_raw_payload_b64"]) == raw[: codec.RAW_PAYLOAD_KEEP]
    assert headers["ewms_pilot_raw_payload_bytes"] == len(raw) > codec.RAW_PAYLOAD_KEEP
    assert [r.getMessage() for r in caplog.records] == [
        f"event m1: its undecodable payload has {len(raw)} bytes; the dead-letter copy keeps the first "
        f"{codec.RAW_PAYLOAD_KEEP} (ewms_pilot_raw_payload_bytes says how many there were)"
    ]
