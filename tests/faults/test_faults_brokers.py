"""Broker trouble while tasks run: restarts, an outgoing broker down for 10 s, long tasks vs heartbeats.

Brokers that get restarted or reconfigured are private to this module (a
RabbitMQ node on a spare port, nats-servers on spare ports): doing that to the
shared brokers would break the tests other people run at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    JETSTREAM_ACK_WAIT,
    NatsServer,
    PilotProcess,
    Tally,
    nats_unfinished,
    pilot_env,
    put,
    take_data,
    task_args,
    wait_until,
)
from mq_helpers import nats_consumer_with_ack_wait

from benchmarks.rabbitnode import (
    RabbitNode,  # the one private-node implementation (also --private-rabbitmq)
)

#: each task takes `argv[3]` seconds
TASK = "import sys,time; d=open(sys.argv[1]).read(); time.sleep(float(sys.argv[3])); open(sys.argv[2],'w').write('out:'+d)"
# runs until the file argv[3] exists (the test opens the gate), at most 90 s
GATED_TASK = (
    "import os, sys, time\n"
    "d = open(sys.argv[1]).read()\n"
    "end = time.monotonic() + 90\n"
    "while not os.path.exists(sys.argv[3]) and time.monotonic() < end:\n"
    "    time.sleep(0.1)\n"
    "open(sys.argv[2], 'w').write('out:' + d)\n"
)


def _tally(events: list[str], outputs: list[Any]) -> Tally:
    return Tally.of(events, outputs, lambda o: o[4:] if isinstance(o, str) and o.startswith("out:") else None)


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator[RabbitNode]:
    node = RabbitNode("ewms-faults-rmq")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _settle_left(btype: str, address: str, qin: str, tally: Tally) -> list[Any]:
    """What is still in the incoming queue; on NATS wait out ack_wait if outputs are missing."""
    idle = JETSTREAM_ACK_WAIT + 2 if btype == "nats" and tally.lost else 1
    return take_data(btype, address, qin, idle=idle)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rabbitmq_restart_mid_run(private_rabbit: RabbitNode, new_queue: Any, tmp_path: Path, record: Any) -> None:
    rabbitmq_address = private_rabbit.address
    qin, qout = new_queue("i"), new_queue("o")
    events = [f"e{i:02d}" for i in range(20)]
    put("rabbitmq", rabbitmq_address, qin, events)
    env = pilot_env("rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, "0.8"),
                    EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2")
    pilot = PilotProcess(env, tmp_path)
    assert wait_until(lambda: pilot.finished() >= 2, 60), pilot.log()[-3000:]
    t0 = time.monotonic()
    try:
        private_rabbit.ctl("stop_app")
    finally:
        private_rabbit.ctl("start_app")
    outage = time.monotonic() - t0
    rc = pilot.wait(150)
    outputs = take_data("rabbitmq", rabbitmq_address, qout, idle=1)
    tally = _tally(events, outputs)
    left = _settle_left("rabbitmq", rabbitmq_address, qin, tally)
    log = pilot.log()
    record.add(
        case="RabbitMQ stop_app/start_app while tasks run",
        broker="rabbitmq", point=f"after 2 results; outage {outage:.1f}s",
        events=len(events), outputs=len(outputs), duplicates=tally.duplicates,
        lost=len([e for e in tally.lost if e not in left]),
        detail=f"exit {rc}; {log.count('reconnecting')} reconnect warning(s); "
        f"{log.count('publish failed')} publish retries; {log.count('its connection was lost')} acks skipped",
    )
    assert rc == 0, log[-3000:]
    assert tally.lost == [] and left == [] and tally.unexpected == [], (tally, left)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nats_restart_mid_run(new_queue: Any, tmp_path: Path, record: Any) -> None:
    server = NatsServer(tmp_path)
    server.start()
    try:
        qin, qout = new_queue("i"), new_queue("o")
        events = [f"e{i:02d}" for i in range(20)]
        put("nats", server.address, qin, events)
        env = pilot_env("nats", server.address, qin, qout, tmp_path, task_args(TASK, "0.8"),
                        EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2")
        pilot = PilotProcess(env, tmp_path)
        assert wait_until(lambda: pilot.finished() >= 2, 60), pilot.log()[-3000:]
        t0 = time.monotonic()
        server.stop()
        time.sleep(2)
        server.start()
        outage = time.monotonic() - t0
        rc = pilot.wait(150)
        outputs = take_data("nats", server.address, qout, idle=1)
        tally = _tally(events, outputs)
        left = _settle_left("nats", server.address, qin, tally)
    finally:
        server.stop()
    log = pilot.log()
    late = [e for e in tally.lost if e in left]
    record.add(
        case="NATS server restart while tasks run (private server)",
        broker="nats", point=f"after 2 results; outage {outage:.1f}s",
        events=len(events), outputs=len(outputs), duplicates=tally.duplicates,
        lost=len([e for e in tally.lost if e not in left]),
        detail=f"exit {rc}; {len(late)} event(s) still queued when the pilot ended (back after ack_wait); "
        f"{log.count('reconnecting')} reconnect warning(s); {log.count('publish failed')} publish retries",
    )
    assert rc == 0, log[-3000:]
    assert tally.lost == [] and left == [] and tally.unexpected == [], (tally, left, log[-3000:])


class _Outgoing:
    """The outgoing broker a test breaks: a private nats-server, or the private RabbitMQ node."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.nats = NatsServer(tmp) if kind == "nats" else None
        self.rabbit: RabbitNode | None = request.getfixturevalue("private_rabbit") if kind == "rabbitmq" else None

    @property
    def address(self) -> str:
        return self.nats.address if self.nats else self.rabbit.address  # type: ignore[union-attr]

    def up(self) -> None:
        if self.nats:
            self.nats.start()
        else:
            self.rabbit.ctl("start_app")  # type: ignore[union-attr]

    def down(self) -> None:
        if self.nats:
            self.nats.stop()
        else:
            self.rabbit.ctl("stop_app")  # type: ignore[union-attr]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("outgoing", ["nats", "rabbitmq"])
def test_outgoing_broker_down_for_10s(
    outgoing: str, request: pytest.FixtureRequest, rabbitmq_address: str, new_queue: Any, tmp_path: Path, record: Any
) -> None:
    """Incoming RabbitMQ; the outgoing broker (a private one) is down for 10 s mid-run.

    With EWMS_PILOT_PUBLISH_DEADLINE=4, a publish caught by the outage must give
    up after about 4 s and nack its event (never ack it); the event is redone
    once the broker is back, so nothing is lost.
    """
    deadline = 4
    out = _Outgoing(outgoing, tmp_path, request)
    if out.nats:
        out.up()
    try:
        qin, qout = new_queue("i"), new_queue("o")
        events = [f"e{i:02d}" for i in range(12)]
        put("rabbitmq", rabbitmq_address, qin, events)
        env = pilot_env(
            "rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, "0.5"),
            EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2",
            EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE=outgoing, EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS=out.address,
            EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", EWMS_PILOT_PUBLISH_DEADLINE=str(deadline),
        )
        pilot = PilotProcess(env, tmp_path)
        assert wait_until(lambda: pilot.finished() >= 2, 60), pilot.log()[-3000:]
        out.down()
        try:
            time.sleep(10)
        finally:
            out.up()
        rc = pilot.wait(150)
        outputs = take_data(outgoing, out.address, qout, idle=1)
    finally:
        if out.nats:
            out.nats.stop()
    tally = _tally(events, outputs)
    left = take_data("rabbitmq", rabbitmq_address, qin, idle=1)
    log = pilot.log()
    slowest = max(float(x) for x in re.findall(r"done in ([0-9.]+)s", log))
    gave_up = log.count("result not published")
    record.add(
        case=f"outgoing broker ({outgoing}) down 10 s mid-run, PUBLISH_DEADLINE {deadline} s",
        broker=f"rabbitmq->{outgoing}", point="after 2 results",
        events=len(events), outputs=len(outputs), duplicates=tally.duplicates,
        lost=len([e for e in tally.lost if e not in left]),
        detail=f"exit {rc}; slowest task+publish {slowest:.1f}s; {log.count('publish failed')} publish "
        f"retries; {gave_up} publish(es) given up (event nacked, redone)",
    )
    assert rc == 0, log[-3000:]
    assert tally.lost == [] and left == [] and tally.unexpected == [], (tally, left, log[-3000:])
    # a publish caught by the outage gives up after ~deadline and the event is redone
    assert gave_up >= 1, f"no publish gave up within EWMS_PILOT_PUBLISH_DEADLINE={deadline} during a 10 s outage"
    assert slowest <= 0.5 + deadline + 3, f"a task's publish took {slowest:.1f}s (deadline {deadline}s)"


def _connections_of(node: RabbitNode, pid: int) -> dict[int, int]:
    """{local port: heartbeat} of this process's connections to `node`."""
    ss = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{node.port} )"],
                        capture_output=True, text=True, timeout=30, check=True).stdout
    ports = {int(m.group(1)) for line in ss.splitlines() if f"pid={pid}," in line
             if (m := re.search(rf"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:{node.port}", line))}
    listed = node.ctl("list_connections", "peer_port", "timeout", "--no-table-headers", "--quiet")
    beats = {}
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in ports:
            beats[int(parts[0])] = int(parts[1])
    return beats


@pytest.mark.timeout(120)
def test_long_task_keeps_rabbitmq_connection_alive(
    private_rabbit: RabbitNode, new_queue: Any, tmp_path: Path, record: Any
) -> None:
    """A task that runs for over 3 heartbeats of 2 s (the server's default: mqclient drops URL query params).

    The task ends only when the test opens its gate, after the second look at the connections: that look
    is always taken while the task runs, however slow `rabbitmqctl` is on a busy machine.
    """
    heartbeat, idle = 2, 6.0  # the connections stay idle for at least 3 heartbeats while the task runs
    rabbitmq_address = private_rabbit.address
    qin, qout = new_queue("i"), new_queue("o")
    gate = tmp_path / "gate"
    put("rabbitmq", rabbitmq_address, qin, ["long"])
    env = pilot_env("rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(GATED_TASK, str(gate)),
                    EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1")
    private_rabbit.ctl("eval", f"application:set_env(rabbit, heartbeat, {heartbeat}).")
    try:
        pilot = PilotProcess(env, tmp_path)
        connected = wait_until(lambda: pilot.count("connected (") >= 2 or not pilot.alive(), 30)
    finally:
        private_rabbit.ctl("eval", "application:set_env(rabbit, heartbeat, 60).")
    assert connected, pilot.log()[-3000:]
    assert wait_until(lambda: pilot.received() == 1, 30), pilot.log()[-3000:]
    started = time.monotonic()
    try:
        before = _connections_of(private_rabbit, pilot.pid)
        time.sleep(max(0.0, started + idle - time.monotonic()))
        during = _connections_of(private_rabbit, pilot.pid)  # the task still runs: its gate is shut
        assert pilot.alive() and pilot.finished() == 0, pilot.log()[-3000:]
    finally:
        gate.touch()
    rc = pilot.wait(60)
    outputs = take_data("rabbitmq", rabbitmq_address, qout, idle=1)
    left = take_data("rabbitmq", rabbitmq_address, qin, idle=1)
    log = pilot.log()
    record.add(
        case=f"task idle over {idle:g} s, RabbitMQ heartbeat {heartbeat} s",
        broker="rabbitmq", point="-",
        events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1), lost=1 - len(outputs) - len(left),
        detail=f"exit {rc}; heartbeats negotiated {sorted(before.values())}; same connections after "
        f"{idle:g}s: {during == before}",
    )
    assert sorted(before.values()) == [heartbeat, heartbeat], before  # the test really ran with it
    assert during == before  # neither connection was dropped and replaced
    assert rc == 0 and outputs == ["out:long"] and left == [], log[-3000:]
    assert "connection was lost" not in log and "reconnecting" not in log and "publish failed" not in log


def _broker_gone(ending: str, qin: str, qout: str, tmp: Path) -> dict[str, Any]:
    server = NatsServer(tmp)
    server.start()
    events = [f"e{i:02d}" for i in range(6)]
    put("nats", server.address, qin, events)
    deadline, grace = 5, 2
    env = pilot_env("nats", server.address, qin, qout, tmp, task_args(TASK, "0.5"),
                    EWMS_PILOT_RECONNECT_DEADLINE=str(deadline), EWMS_PILOT_SHUTDOWN_GRACE=str(grace),
                    EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="5")
    pilot = PilotProcess(env, tmp)
    try:
        assert wait_until(lambda: pilot.finished() >= 1, 60), pilot.log()[-3000:]
        server.stop()
        gone = time.monotonic()
        if ending == "sigterm":
            time.sleep(2)
            pilot.send(signal.SIGTERM)
        budget = deadline + 15 if ending == "reconnect-deadline" else 2 + grace + 5
        try:
            rc: int | str = pilot.wait(budget + 5)
        except AssertionError:
            rc = "hung"
        took = time.monotonic() - gone
        server.start()  # count what the broker still holds
        outputs = take_data("nats", server.address, qout, idle=1)
        tally = _tally(events, outputs)
        unfinished = nats_unfinished(server.address, qin)  # incl. what the dead connection held
    finally:
        server.stop()
    return {"rc": rc, "took": took, "budget": budget, "tally": tally, "unfinished": unfinished, "log": pilot.log()}


@pytest.mark.timeout(150)
def test_incoming_broker_gone(new_queue: Any, tmp_path: Path, record: Any) -> None:
    """A (private) NATS broker dies for good while tasks run; two pilots, side by side.

    reconnect-deadline: EWMS_PILOT_RECONNECT_DEADLINE=5 -> the pilot drains and exits 5 soon after.
    sigterm: an eviction 2 s into the outage (grace 2 s) -> exit 6 within grace + 5 s.
    """
    endings = {"reconnect-deadline": 5, "sigterm": 6}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {}
        for ending in endings:
            (tmp_path / ending).mkdir()
            jobs[ending] = pool.submit(_broker_gone, ending, new_queue("i"), new_queue("o"), tmp_path / ending)
        runs = {e: j.result() for e, j in jobs.items()}
    problems = []
    for ending, r in runs.items():
        tally = r["tally"]
        lost = tally.lost[r["unfinished"]:]  # by count: JetStream still holds `unfinished` events
        record.add(
            case="incoming NATS gone for good, "
            + ("RECONNECT_DEADLINE 5 s" if ending != "sigterm" else "SIGTERM 2 s into the outage (grace 2 s)"),
            broker="nats", point="after 1 result",
            events=tally.events, outputs=tally.outputs, duplicates=tally.duplicates, lost=len(lost),
            detail=f"exit {r['rc']} {r['took']:.0f}s after the broker died "
            f"(expected {endings[ending]} within {r['budget']}s)",
            verdict="held" if not (lost or r["rc"] != endings[ending] or r["took"] > r["budget"])
            else f"FAILED: exit {r['rc']} after {r['took']:.0f}s (expected {endings[ending]} within {r['budget']}s)",
        )
        if lost or r["rc"] != endings[ending] or r["took"] > r["budget"]:
            problems.append(f"{ending}: exit {r['rc']} after {r['took']:.0f}s, lost {lost}\n{r['log'][-1500:]}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(150)
def test_task_longer_than_the_consumer_timeout(
    private_rabbit: RabbitNode, new_queue: Any, tmp_path: Path, record: Any
) -> None:
    """RabbitMQ closes the channel of an event unacked past `consumer_timeout` and requeues it.

    The pilot must neither crash nor lose the result: the result is published
    (separate connection), the ack fails and is logged, the subscription
    reconnects and the requeued event is done again (a duplicate, never a loss).
    """
    address = private_rabbit.address
    qin, qout = new_queue("i"), new_queue("o")
    put("rabbitmq", address, qin, ["long"])
    # the broker checks the timeout on its channel tick: make both short for this node
    private_rabbit.ctl("eval", "application:set_env(rabbit, consumer_timeout, 2000).")
    private_rabbit.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
    marker = tmp_path / "ran-once"
    # slow only the first time, so the redelivered copy finishes within the timeout
    code = (
        "import os,sys,time; d=open(sys.argv[1]).read(); m=sys.argv[3]\n"
        "first = not os.path.exists(m); open(m,'a').close()\n"
        "time.sleep(8 if first else 0); open(sys.argv[2],'w').write('out:'+d)"
    )
    env = pilot_env("rabbitmq", address, qin, qout, tmp_path, task_args(code, str(marker)),
                    EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="3")
    try:
        pilot = PilotProcess(env, tmp_path)
        rc = pilot.wait(120)
    finally:
        private_rabbit.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1800000).")
        private_rabbit.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 60000).")
    outputs = take_data("rabbitmq", address, qout, idle=1)
    left = take_data("rabbitmq", address, qin, idle=1)
    log = pilot.log()
    record.add(
        case="8 s task, RabbitMQ consumer_timeout 2 s", broker="rabbitmq", point="-",
        events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1), lost=int(not outputs and not left),
        detail=f"exit {rc}; ack failed and logged: {'ack failed' in log}; "
        f"reconnected: {log.count('connected (sub)') >= 2}",
    )
    assert rc == 0, log[-3000:]
    assert outputs and set(outputs) == {"out:long"} and left == [], (outputs, left, log[-3000:])
    # the timeout really fired: the ack was refused and the subscription reconnected
    assert "ack failed" in log and log.count("connected (sub)") >= 2, log[-3000:]
    assert "Traceback" not in log


async def _publish_refused(address: str, queue: str, limit: int) -> tuple[str, str]:
    """(what the refusal said, what was logged) for one message over `limit`, then one small message."""
    import io
    import logging
    import os

    from ewms_pilot.config.model import BrokerConfig
    from ewms_pilot.errors import ResultRejectedError
    from ewms_pilot.pilot.publish import publish_with_retry
    from ewms_pilot.queues import open_publisher

    log = logging.getLogger(f"test-refusal-{queue}")
    buf = io.StringIO()
    log.addHandler(logging.StreamHandler(buf))
    pub = await open_publisher(BrokerConfig(queue=queue, broker_type="rabbitmq", address=address))
    try:
        assert pub.max_message_bytes is None  # RabbitMQ does not announce its limit
        try:
            await publish_with_retry(pub, os.urandom(2 * limit).hex(), retries=3, deadline=60, log=log)
        except ResultRejectedError as e:
            said = str(e)
        else:
            raise AssertionError("a message over max_message_size was accepted")
        await pub.send("small")  # the publisher reconnects: later results still go out
    finally:
        await pub.close()
    return said, buf.getvalue()


@pytest.mark.timeout(120)
def test_rabbitmq_message_over_max_size_is_refused_for_good(private_rabbit: RabbitNode, new_queue: Any) -> None:
    """Over `max_message_size` the broker closes the channel (406): a permanent refusal, never retried."""
    import asyncio

    limit = 65536
    qout = new_queue("o")
    private_rabbit.ctl("eval", f"application:set_env(rabbit, max_message_size, {limit}).")
    try:
        said, logged = asyncio.run(_publish_refused(private_rabbit.address, qout, limit))
    finally:
        private_rabbit.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")
    assert "max size" in said and str(limit) in said, said
    assert "retrying" not in logged, logged
    assert take_data("rabbitmq", private_rabbit.address, qout, idle=1) == ["small"]


@pytest.mark.timeout(120)
def test_a_slow_nats_ack_reply_leaves_the_other_events_in_hand(new_queue: Any, tmp_path: Path, caplog: Any) -> None:
    """JetStream stalls (SIGSTOP, 6 s) while one event's ack waits for its confirmation (5 s): that
    ack is reported as not done, but the connection is not given up for a hung one, and the
    other event a task is still running stays this subscription's: renewed, acked when its task
    ends, and handed to nobody else. Before, the slow reply abandoned the connection, which
    dropped every held event: their acks said left-for-redelivery and JetStream ran them again."""
    from ewms_pilot.config.model import BrokerConfig
    from ewms_pilot.queues import open_subscription
    from ewms_pilot.queues.base import Settlement

    server = NatsServer(tmp_path)
    server.start()
    queue = new_queue("stall")
    put("nats", server.address, queue, ["A", "B"])

    async def scenario() -> tuple[Settlement, list[str], Settlement, list[str]]:
        sub = await open_subscription(BrokerConfig(queue=queue, broker_type="nats", address=server.address), 2)
        try:
            a, b = await sub.get(10), await sub.get(10)
            assert a is not None and b is not None
            await asyncio.to_thread(server.pause)
            try:  # stopped until A's ack has given up waiting for its confirmation (5 s)
                a_settled = await asyncio.wait_for(sub.ack(a), 20)
            finally:
                server.resume()
            still_held = [d.data for d in sub.held()]
            b_settled = await sub.ack(b)
            return a_settled, still_held, b_settled, await _unfinished(server.address, queue)
        finally:
            await sub.close()

    try:
        with caplog.at_level(logging.WARNING):
            a_settled, still_held, b_settled, unfinished = asyncio.run(scenario())
    finally:
        server.stop()
    assert a_settled == Settlement.LEFT  # unconfirmed: never reported as acked
    assert still_held == ["B"]
    assert b_settled == Settlement.ACKED
    assert unfinished == (0, 0)  # A's late ack reached JetStream, B's too: nothing pending, nothing unacked
    assert not any("abandoning" in r.getMessage() or "hung" in r.getMessage() for r in caplog.records)


async def _unfinished(address: str, queue: str) -> tuple[int, int]:
    """(events waiting, events handed out and not acked) of oms-mqclient's consumer, from JetStream."""
    import nats

    nc = await nats.connect(address, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream(timeout=10).consumer_info(f"{queue}-stream", "psub")
        return info.num_pending, info.num_ack_pending
    finally:
        await nc.close()


@pytest.mark.timeout(120)
def test_a_nats_event_whose_lease_lapsed_in_an_outage_is_not_settled_for_its_new_holder(
    new_queue: Any, tmp_path: Path
) -> None:
    """The server is gone longer than ack_wait while a task runs: JetStream hands the event out again,
    and acks by stream sequence, so this holder's late ack would ack the new holder's run (and a
    late nack would redeliver it under that run). The settle is reported as left, and does nothing."""
    from ewms_pilot.config.model import BrokerConfig
    from ewms_pilot.queues import open_subscription
    from ewms_pilot.queues.base import Settlement

    server = NatsServer(tmp_path)
    server.start()
    queue = new_queue("lapse")
    asyncio.run(nats_consumer_with_ack_wait(server.address, queue, 2))
    put("nats", server.address, queue, ["A"])

    async def scenario() -> tuple[Settlement, int | None]:
        sub = await open_subscription(BrokerConfig(queue=queue, broker_type="nats", address=server.address), 1)
        other = None
        try:
            first = await sub.get(10)
            assert first is not None and first.data == "A"
            server.stop()
            await asyncio.sleep(4)  # two ack_waits with no renewal reaching anyone
            server.start()
            other = await open_subscription(BrokerConfig(queue=queue, broker_type="nats", address=server.address), 1)
            again = await other.get(20)  # the new holder's run
            assert again is not None and again.data == "A", again
            for _ in range(100):  # until the old subscription's client is back on the server
                if sub._conn.raw is not None and sub._conn.raw._nats_client.is_connected:
                    break
                await asyncio.sleep(0.1)
            settled = await sub.ack(first)
            await other.release(again)  # the new holder gives it back: it must still be there
            back = await other.get(10)
            assert back is not None, f"the old holder's late ack (reported {settled}) ended the new holder's run"
            await other.ack(back)
            return settled, back.delivery_count
        finally:
            for closing in (sub, other):
                if closing is not None:
                    await closing.close()

    try:
        settled, count = asyncio.run(scenario())
    finally:
        server.stop()
    assert settled == Settlement.LEFT
    assert count == 3  # handed out three times: the old holder's ack did not end it
