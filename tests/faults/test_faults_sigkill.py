"""SIGKILL of a pilot at spread-out moments: a second pilot finishes the work, and no event is lost.

Each kill point is its own queue and its own pair of pilots (victim, then
survivor); the points of one broker run side by side to keep the suite short.
At-least-once: an event whose result was published but not yet acked when
the victim died is done twice; such duplicates are counted, never lost events.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses as dc
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    NATS_ACK_WAIT,
    PilotProcess,
    Tally,
    broker_address,
    pilot_env,
    processes_mentioning,
    put,
    short_ack_wait,
    take_data,
    task_args,
    wait_until,
)

N_EVENTS = 40
CONCURRENCY = 4
#: (what, seconds): "start" = after the victim process started (it is still connecting),
#: "taking" = after it took its first event (40 events take it ~3.5 s);
#: NATS/local get fewer points (on NATS each one waits out ack_wait)
KILL_POINTS = {
    "rabbitmq": [("start", 0.5), ("taking", 0.3), ("taking", 1.0), ("taking", 2.0), ("taking", 3.0)],
    "nats": [("start", 0.5), ("taking", 0.5), ("taking", 2.0)],
    "local": [("start", 0.5), ("taking", 0.3), ("taking", 2.0)],
}
#: 0.1-0.5 s per task, fixed per event so a redone event takes as long as the first time
SLEEPY = (
    "import sys,time,zlib; d=open(sys.argv[1]).read(); "
    "time.sleep(0.1+0.4*(zlib.crc32(d.encode())%1000)/1000); open(sys.argv[2],'w').write('out:'+d)"
)


@dc.dataclass
class KillResult:
    kill_at: tuple[str, float]
    tally: Tally
    left: list[Any]
    victim_received: int
    victim_finished: int
    victim_done_before_kill: bool
    orphans: int
    survivor_rc: int
    survivor_log: str


def _scenario(
    btype: str, address: str, qin: str, qout: str, kill_at: tuple[str, float], tmp: Path
) -> KillResult:
    events = [f"{qin}-e{i:02d}" for i in range(N_EVENTS)]
    if btype == "nats":
        short_ack_wait(address, qin)
    put(btype, address, qin, events)
    env = pilot_env(
        btype, address, qin, qout, tmp, task_args(SLEEPY),
        EWMS_PILOT_MAX_CONCURRENT_TASKS=str(CONCURRENCY),
        EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1",
        EWMS_PILOT_CL_LOG="INFO",
    )
    victim = PilotProcess(env, tmp / "logs", "victim")
    since, seconds = kill_at
    t0 = victim.started
    if since == "taking":
        assert wait_until(lambda: victim.received() > 0 or not victim.alive(), 60), victim.log()[-2000:]
        t0 = time.monotonic()
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    done_before = not victim.alive()
    victim.send(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    # the pilot's task processes run in their own sessions: they outlive it (and end by themselves)
    orphans = len(processes_mentioning(str(tmp / "ewms-pilot-data")))
    if btype == "nats":  # what the victim held comes back after JetStream's ack_wait
        time.sleep(max(0.0, killed_at + NATS_ACK_WAIT + 1 - time.monotonic()))
    survivor = PilotProcess(env, tmp / "logs", "survivor")
    rc = survivor.wait(120)
    outputs = take_data(btype, address, qout, idle=1)
    left = take_data(btype, address, qin, idle=1)
    tally = Tally.of(events, outputs, lambda o: o[4:] if isinstance(o, str) and o.startswith("out:") else None)
    return KillResult(
        kill_at, tally, left, victim.received(), victim.finished(), done_before, orphans, rc, survivor.log()
    )


@pytest.mark.timeout(180)
def test_sigkill_at_any_moment_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, new_queue: Any, record: Any
) -> None:
    """All kill points of all three brokers at once (NATS points mostly wait out ack_wait)."""
    scenarios = [(b, p) for b, points in KILL_POINTS.items() for p in points]
    address = {b: broker_address(request, b, tmp_path) for b in ("rabbitmq", "nats")}
    with concurrent.futures.ThreadPoolExecutor(len(scenarios)) as pool:
        jobs = []
        for btype, kill_at in scenarios:
            tmp = tmp_path / f"{btype}-{kill_at[0]}{kill_at[1]}"
            tmp.mkdir()
            addr = address.get(btype) or broker_address(request, btype, tmp)
            jobs.append(pool.submit(_scenario, btype, addr, new_queue("i"), new_queue("o"), kill_at, tmp))
        results = [(btype, j.result()) for (btype, _), j in zip(scenarios, jobs, strict=True)]

    problems = []
    for btype, r in results:
        t = r.tally
        in_flight = r.victim_received - r.victim_finished
        phase = "after its queue ran dry" if r.victim_done_before_kill else f"{in_flight} in flight"
        lost = [e for e in t.lost if e not in r.left]
        record.add(
            case="SIGKILL mid-run, second pilot drains",
            broker=btype,
            point=f"{r.kill_at[0]}+{r.kill_at[1]:g}s ({phase})",
            events=t.events, outputs=t.outputs, duplicates=t.duplicates, lost=len(lost),
            detail=(
                f"victim took {r.victim_received}, finished {r.victim_finished}; "
                f"{r.orphans} task process(es) outlived it; survivor exit {r.survivor_rc}"
            ),
            verdict="held" if not (lost or r.left or t.unexpected or r.survivor_rc != 0) else
            f"FAILED: lost {len(lost)}, left {len(r.left)}, survivor exit {r.survivor_rc}",
        )
        if lost or r.left or t.unexpected or r.survivor_rc != 0:
            problems.append(
                f"{btype} kill at {r.kill_at}: lost={lost} left={r.left} unexpected={t.unexpected} "
                f"survivor exit {r.survivor_rc}\n{r.survivor_log[-2000:]}"
            )
    assert not problems, "\n".join(problems)
    # the "taking" kills hit a pilot with events in flight (else the point proved nothing)
    idle = [(b, r.kill_at, r.victim_received, r.victim_finished) for b, r in results
            if r.kill_at[0] == "taking" and r.victim_received == r.victim_finished]
    assert not idle, idle
