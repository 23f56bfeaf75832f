"""A poison event (fails every time) among good ones, with pilots run one after another.

Stop-on-error stays on (the default): only a failure on a FIRST attempt may
stop a pilot, so the poison can stop at most one pilot; after
EWMS_PILOT_MAX_DELIVERIES (default 3) failed attempts it is parked in the dead-letter
queue with its last error in the headers, and every good event is done.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    PilotProcess,
    Tally,
    broker_address,
    pilot_env,
    put,
    take,
    take_data,
    task_args,
)

POISON = "poison-pill"
TASK = (
    "import sys\n"
    "d=open(sys.argv[1]).read()\n"
    "if d==" + repr(POISON) + ":\n"
    "    open(sys.argv[3],'a').write('x'); sys.exit('refusing to eat ' + d)\n"
    "open(sys.argv[2],'w').write('out:'+d)\n"
)
PILOTS = 4


def _run(btype: str, address: str, qin: str, qout: str, qdead: str, tmp: Path) -> dict[str, Any]:
    good = [f"g{i:02d}" for i in range(20)]
    events = good[:5] + [POISON] + good[5:]
    put(btype, address, qin, events)
    attempts = tmp / "poison-attempts"
    env = pilot_env(
        btype, address, qin, qout, tmp, task_args(TASK, str(attempts)),
        EWMS_PILOT_MAX_CONCURRENT_TASKS="2",
        EWMS_PILOT_QUEUE_DEADLETTER=qdead,
        EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1",
        EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE="1",
        EWMS_PILOT_CL_LOG="INFO",
    )
    codes, logs = [], []
    for n in range(PILOTS):
        pilot = PilotProcess(env, tmp / "logs", f"pilot{n}")
        codes.append(pilot.wait(60))
        logs.append(pilot.log())
    outputs = take_data(btype, address, qout, idle=1)
    return {
        "events": events,
        "tally": Tally.of(good, outputs, lambda o: o[4:] if isinstance(o, str) else None),
        "dead": take(btype, address, qdead, idle=1),
        "left": take_data(btype, address, qin, idle=1),
        "tries": len(attempts.read_text()) if attempts.exists() else 0,
        "codes": codes,
        "logs": logs,
    }


def _verdict(checks: dict[str, bool]) -> str:
    failed = [k for k, ok in checks.items() if not ok]
    return "held" if not failed else "FAILED: " + "; ".join(failed)


@pytest.mark.timeout(120)
def test_poison_event_is_dead_lettered_and_stops_at_most_one_pilot(
    request: pytest.FixtureRequest, tmp_path: Path, new_queue: Any, record: Any
) -> None:
    """The same scenario on RabbitMQ, NATS and local, side by side."""
    brokers = ["rabbitmq", "nats", "local"]
    with concurrent.futures.ThreadPoolExecutor(len(brokers)) as pool:
        jobs = {}
        for btype in brokers:
            tmp = tmp_path / btype
            tmp.mkdir()
            address = broker_address(request, btype, tmp)
            jobs[btype] = pool.submit(_run, btype, address, new_queue("i"), new_queue("o"), new_queue("d"), tmp)
        runs = {b: j.result() for b, j in jobs.items()}

    problems = []
    for btype, r in runs.items():
        tally, dead, codes, tries = r["tally"], r["dead"], r["codes"], r["tries"]
        headers = dead[0].headers if dead else {}
        checks = {
            "at most one pilot stopped, none crashed": codes.count(3) <= 1 and set(codes) <= {0, 3},
            "every good event done, nothing left": not tally.lost and not tally.unexpected and not r["left"],
            "poison dead-lettered once": [d.data for d in dead] == [POISON],
            "error type header": headers.get("ewms_pilot_error_type") == "ContainerRunError",
            "error text header": "refusing to eat " + POISON in str(headers.get("ewms_pilot_error")),
            "attempts header": headers.get("ewms_pilot_attempts") == 3,
            "tried MAX_DELIVERIES times": tries == 3,
        }
        record.add(
            case="poison event among 20 good, 4 pilots in a row (MAX_DELIVERIES 3)",
            broker=btype, point="-",
            events=len(r["events"]), outputs=tally.outputs, duplicates=tally.duplicates,
            lost=len(tally.lost) + (0 if dead else 1),
            detail=(
                f"exit codes {codes}; poison tried {tries}x, dead-lettered {len(dead)}x with "
                f"attempts={headers.get('ewms_pilot_attempts')} type={headers.get('ewms_pilot_error_type')}"
            ),
            verdict=_verdict(checks),
        )
        if failed := [k for k, ok in checks.items() if not ok]:
            problems.append(f"{btype}: {failed}: codes={codes} tries={tries} headers={headers} "
                            f"tally={tally} left={r['left']}\n{r['logs'][-1][-1500:]}")
    assert not problems, "\n".join(problems)
