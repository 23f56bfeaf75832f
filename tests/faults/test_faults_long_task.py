"""A task longer than the broker's hold on its event must still run once.

NATS JetStream redelivers an event its consumer has not acked within
`ack_wait` — to another pilot, while the first still runs it — unless the
holder keeps renewing it (in-progress acks). Real shared NATS on
127.0.0.1:4222; two real pilot processes on one queue whose consumer has a
short ack_wait (oms-mqclient's keeps JetStream's 30 s; the pilot reads it from
the consumer either way), so the test waits seconds, not minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    NATS_ACK_WAIT,
    PilotProcess,
    nats_unfinished,
    pilot_env,
    put,
    short_ack_wait,
    take_data,
    task_args,
    wait_until,
)

TASK_SECONDS = 3 * NATS_ACK_WAIT  # without renewal the event is redelivered mid-run, twice
#: the task notes each run in argv[3], then takes argv[4] seconds
TASK = (
    "import sys,time; d=open(sys.argv[1]).read(); open(sys.argv[3],'a').write('run\\n')\n"
    "time.sleep(float(sys.argv[4])); open(sys.argv[2],'w').write('out:'+d)"
)


@pytest.mark.timeout(150)
def test_nats_task_longer_than_ack_wait_runs_once(
    nats_address: str, new_queue: Any, tmp_path: Path, record: Any
) -> None:
    """A task three ack_waits long, two pilots on one queue: exactly one run and one result."""
    qin, qout = new_queue("i"), new_queue("o")
    short_ack_wait(nats_address, qin)
    put("nats", nats_address, qin, ["long"])
    runs = tmp_path / "runs"
    args = task_args(TASK, str(runs), str(TASK_SECONDS))
    first = PilotProcess(
        pilot_env("nats", nats_address, qin, qout, tmp_path / "a", args, EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2"),
        tmp_path / "a", "first",
    )
    assert wait_until(lambda: first.received() == 1, 30), first.log()[-3000:]
    # the second pilot listens past the moment JetStream would redeliver (ack_wait after delivery)
    second = PilotProcess(
        pilot_env(
            "nats", nats_address, qin, qout, tmp_path / "b", args,
            EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE=str(TASK_SECONDS + 5),
            EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2",
        ),
        tmp_path / "b", "second",
    )
    rc_first, rc_second = first.wait(120), second.wait(120)
    outputs = take_data("nats", nats_address, qout, idle=1)
    n_runs = runs.read_text().count("run") if runs.exists() else 0
    unfinished = nats_unfinished(nats_address, qin)
    record.add(
        case=f"{TASK_SECONDS:g} s task, two pilots, NATS ack_wait {NATS_ACK_WAIT:g} s", broker="nats",
        point="-", events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1),
        lost=int(not outputs and not unfinished),
        detail=f"task runs {n_runs}; second pilot received {second.received()}; exits {rc_first}/{rc_second}",
    )
    logs = f"first:\n{first.log()[-2500:]}\nsecond:\n{second.log()[-2500:]}"
    assert n_runs == 1 and second.received() == 0, logs
    assert outputs == ["out:long"], (outputs, logs)
    assert (rc_first, rc_second) == (0, 0), logs
    assert unfinished == 0, logs
