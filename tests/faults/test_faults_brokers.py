"""Broker trouble while tasks run: restarts, an outgoing broker down for 10 s, long tasks vs heartbeats.

The shared RabbitMQ is restarted once (`stop_app`/`start_app`, a few seconds)
and its heartbeat default is lowered for about a second: both touch other
people's tests, so these are `slow` and kept short. NATS outages use a private
nats-server on a spare port (the shared one is not ours to restart).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    NATS_ACK_WAIT,
    NatsServer,
    PilotProcess,
    Tally,
    pilot_env,
    put,
    take_data,
    task_args,
    wait_until,
)

#: each task takes `argv[3]` seconds
TASK = "import sys,time; d=open(sys.argv[1]).read(); time.sleep(float(sys.argv[3])); open(sys.argv[2],'w').write('out:'+d)"


def _tally(events: list[str], outputs: list[Any]) -> Tally:
    return Tally.of(events, outputs, lambda o: o[4:] if isinstance(o, str) and o.startswith("out:") else None)


def _rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True)


def _settle_left(btype: str, address: str, qin: str, tally: Tally) -> list[Any]:
    """What is still in the incoming queue; on NATS wait out ack_wait if outputs are missing."""
    idle = NATS_ACK_WAIT + 2 if btype == "nats" and tally.lost else 1
    return take_data(btype, address, qin, idle=idle)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rabbitmq_restart_mid_run(rabbitmq_address: str, new_queue: Any, tmp_path: Path, record: Any) -> None:
    qin, qout = new_queue("i"), new_queue("o")
    events = [f"e{i:02d}" for i in range(20)]
    put("rabbitmq", rabbitmq_address, qin, events)
    env = pilot_env("rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, "0.8"),
                    EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2")
    pilot = PilotProcess(env, tmp_path)
    assert wait_until(lambda: pilot.finished() >= 2, 60), pilot.log()[-3000:]
    t0 = time.monotonic()
    try:
        _rabbitmqctl("stop_app")
    finally:
        _rabbitmqctl("start_app")  # whatever happens, the shared broker comes back
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


@pytest.mark.timeout(180)
@pytest.mark.parametrize("deadline", [4])
def test_outgoing_broker_down_for_10s(
    deadline: int | None, rabbitmq_address: str, new_queue: Any, tmp_path: Path, record: Any
) -> None:
    """Incoming RabbitMQ, outgoing a private NATS that is down for 10 s mid-run.

    Default EWMS_PILOT_PUBLISH_DEADLINE (60 s): the publish rides out the outage.
    Deadline 4 s: publishing must give up after about 4 s and nack the event.
    """
    server = NatsServer(tmp_path)
    server.start()
    extra = {} if deadline is None else {"EWMS_PILOT_PUBLISH_DEADLINE": str(deadline)}
    try:
        qin, qout = new_queue("i"), new_queue("o")
        events = [f"e{i:02d}" for i in range(12)]
        put("rabbitmq", rabbitmq_address, qin, events)
        env = pilot_env(
            "rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, "0.5"),
            EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2",
            EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE="nats", EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS=server.address,
            EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", **extra,
        )
        pilot = PilotProcess(env, tmp_path)
        assert wait_until(lambda: pilot.finished() >= 2, 60), pilot.log()[-3000:]
        server.stop()
        time.sleep(10)
        server.start()
        rc = pilot.wait(150)
        outputs = take_data("nats", server.address, qout, idle=1)
    finally:
        server.stop()
    tally = _tally(events, outputs)
    left = take_data("rabbitmq", rabbitmq_address, qin, idle=1)
    log = pilot.log()
    slowest = max(float(x) for x in re.findall(r"done in ([0-9.]+)s", log))
    gave_up = log.count("result not published")
    record.add(
        case=f"outgoing broker (NATS) down 10 s mid-run, PUBLISH_DEADLINE {deadline or 'default 60'} s",
        broker="rabbitmq->nats", point="after 2 results",
        events=len(events), outputs=len(outputs), duplicates=tally.duplicates,
        lost=len([e for e in tally.lost if e not in left]),
        detail=f"exit {rc}; slowest task+publish {slowest:.1f}s; {log.count('publish failed')} publish "
        f"retries; {gave_up} publish(es) given up (event nacked, redone)",
    )
    assert rc == 0, log[-3000:]
    assert tally.lost == [] and left == [] and tally.unexpected == [], (tally, left, log[-3000:])
    if deadline is None:
        assert slowest > 5  # the outage was felt (else this proved nothing)
    else:
        # the publish of a task caught by the outage gives up after ~deadline, the event is redone
        assert gave_up >= 1, "no publish gave up within EWMS_PILOT_PUBLISH_DEADLINE=4 during a 10 s outage"
        assert slowest <= 0.5 + deadline + 3, f"a task's publish took {slowest:.1f}s (deadline {deadline}s)"


def _connections_of(pid: int) -> dict[int, int]:
    """{local port: heartbeat} of this process's RabbitMQ connections."""
    ss = subprocess.run(["ss", "-tnpH", "state", "established", "( dport = :5672 )"],
                        capture_output=True, text=True, timeout=30, check=True).stdout
    ports = {int(m.group(1)) for line in ss.splitlines() if f"pid={pid}," in line
             if (m := re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:5672", line))}
    listed = _rabbitmqctl("list_connections", "peer_port", "timeout", "--no-table-headers", "--quiet").stdout
    beats = {}
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in ports:
            beats[int(parts[0])] = int(parts[1])
    return beats


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_long_task_keeps_rabbitmq_connection_alive(rabbitmq_address: str, new_queue: Any, tmp_path: Path, record: Any) -> None:
    """A 9 s task with a 2 s heartbeat (server default lowered for ~1 s: mqclient drops URL query params)."""
    heartbeat, task = 2, 9.0
    qin, qout = new_queue("i"), new_queue("o")
    put("rabbitmq", rabbitmq_address, qin, ["long"])
    env = pilot_env("rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, str(task)),
                    EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1")
    _rabbitmqctl("eval", f"application:set_env(rabbit, heartbeat, {heartbeat}).")
    try:
        pilot = PilotProcess(env, tmp_path)
        connected = wait_until(lambda: pilot.count("connected (") >= 2 or not pilot.alive(), 30)
    finally:
        _rabbitmqctl("eval", "application:set_env(rabbit, heartbeat, 60).")
    assert connected, pilot.log()[-3000:]
    assert wait_until(lambda: pilot.received() == 1, 30), pilot.log()[-3000:]
    before = _connections_of(pilot.pid)
    time.sleep(task - 1)  # the task is still running: both connections idle for > 2 heartbeats
    during = _connections_of(pilot.pid)
    rc = pilot.wait(60)
    outputs = take_data("rabbitmq", rabbitmq_address, qout, idle=1)
    left = take_data("rabbitmq", rabbitmq_address, qin, idle=1)
    log = pilot.log()
    record.add(
        case=f"{task:g} s task, RabbitMQ heartbeat {heartbeat} s",
        broker="rabbitmq", point="-",
        events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1), lost=1 - len(outputs) - len(left),
        detail=f"exit {rc}; heartbeats negotiated {sorted(before.values())}; same connections after "
        f"{task - 1:g}s: {during == before}",
    )
    assert sorted(before.values()) == [heartbeat, heartbeat], before  # the test really ran with it
    assert during == before  # neither connection was dropped and replaced
    assert rc == 0 and outputs == ["out:long"] and left == [], log[-3000:]
    assert "connection was lost" not in log and "reconnecting" not in log and "publish failed" not in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ending", ["reconnect-deadline", "sigterm"])
def test_incoming_broker_gone(ending: str, new_queue: Any, tmp_path: Path, record: Any) -> None:
    """The (private) NATS broker dies for good while tasks run.

    reconnect-deadline: EWMS_PILOT_RECONNECT_DEADLINE=5 -> the pilot drains and exits 5 soon after.
    sigterm: an eviction during the outage -> exit 6 within grace + 5 s.
    """
    server = NatsServer(tmp_path)
    server.start()
    qin, qout = new_queue("i"), new_queue("o")
    events = [f"e{i:02d}" for i in range(6)]
    put("nats", server.address, qin, events)
    deadline, grace = 5, 2
    env = pilot_env("nats", server.address, qin, qout, tmp_path, task_args(TASK, "0.5"),
                    EWMS_PILOT_RECONNECT_DEADLINE=str(deadline), EWMS_PILOT_SHUTDOWN_GRACE=str(grace),
                    EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="5")
    pilot = PilotProcess(env, tmp_path)
    try:
        assert wait_until(lambda: pilot.finished() >= 1, 60), pilot.log()[-3000:]
        server.stop()
        gone = time.monotonic()
        if ending == "sigterm":
            time.sleep(2)
            pilot.send(signal.SIGTERM)
        budget = deadline + 15 if ending == "reconnect-deadline" else 2 + grace + 5
        try:
            rc: int | str = pilot.wait(budget + 20)
        except AssertionError:
            rc = "hung"
        took = time.monotonic() - gone
        server.start()  # count what the broker still holds
        outputs = take_data("nats", server.address, qout, idle=1)
        tally = _tally(events, outputs)
        left = _settle_left("nats", server.address, qin, tally)
    finally:
        server.stop()
    expected = 5 if ending == "reconnect-deadline" else 6
    record.add(
        case=f"incoming NATS gone for good, {'RECONNECT_DEADLINE 5 s' if ending != 'sigterm' else 'SIGTERM 2 s into the outage (grace 2 s)'}",
        broker="nats", point="after 1 result",
        events=len(events), outputs=len(outputs), duplicates=tally.duplicates,
        lost=len([e for e in tally.lost if e not in left]),
        detail=f"exit {rc} {took:.0f}s after the broker died (expected {expected} within {budget}s)",
    )
    assert [e for e in tally.lost if e not in left] == []
    assert rc == expected, pilot.log()[-3000:]
    assert took <= budget, f"exit {took:.0f}s after the broker died (budget {budget}s)"
