"""An event's attempt count is the number of task runs that failed on it (issue 10 items 1, 2, 4).

Real pilot processes on the real brokers. RabbitMQ's `x-delivery-count`
counts deliveries no task ever ran (prefetch buffers, channel closes,
evictions); the pilot's own attempt header does not. Each test reproduces the
observation of the issue on the old code (events dropped after one failure,
after evictions, a too-large result re-run forever).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mq_helpers import drain, drain_with_headers, publish
from pilot_proc import base_env, run_pilot, start_pilot, wait_pilot

PY = sys.executable
# record the run (one line per run, the event's name), then fail
RECORD_THEN_FAIL = (
    "import sys; d=open(sys.argv[1]).read(); open(sys.argv[3],'a').write(d.strip('\"')+'\\n'); sys.exit(1)"
)


def _env(btype: str, addr: str, q: str, tmp: Path, code: str, *args: str, **extra: str) -> dict[str, str]:
    return base_env(
        broker_type=btype, address=addr, queue_in=q + "i", queue_out=q + "o", data_dir=tmp,
        task_args=shlex.join([PY, "-c", code, "<<INFILE>>", "<<OUTFILE>>", *args]),
        extra={"EWMS_PILOT_CL_LOG": "INFO", "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "1", **extra},
    )


def _journal(tmp: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp / "ewms-pilot-tasks.jsonl").read_text().splitlines()]


def test_prefetched_events_keep_all_their_attempts(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    """PREFETCH=5, `bad,g1..g4`, every task fails: pilot 1 runs `bad` and stops (exit 3); the four it
    held unrun are not charged for it. Pilot 2 (no stop-on-error) runs each event until its third
    real failure, and only then drops it: every event ran exactly 3 times."""
    events = ["bad", "g1", "g2", "g3", "g4"]
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    runs = tmp_path / "runs"
    env = _env("rabbitmq", rabbitmq_address, queue_name, tmp_path, RECORD_THEN_FAIL, str(runs),
               EWMS_PILOT_PREFETCH="5")
    first = run_pilot(env)
    first_runs = runs.read_text().split() if runs.exists() else []
    second = run_pilot({**env, "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false"})
    tries = Counter(runs.read_text().split())
    record.add(
        case="PREFETCH 5, bad + 4 good, every task fails: 2 pilots (the 2nd without stop-on-error)",
        broker="rabbitmq", point="-", events=len(events), outputs=0, duplicates=0,
        lost=sum(1 for e in events if tries[e] < 3),  # dropped before its 3 attempts
        detail=f"exit codes {[first.returncode, second.returncode]}; runs per event {dict(sorted(tries.items()))} "
        "(MAX_DELIVERIES 3: each dropped after its 3rd failure, none charged for a prefetch)",
    )
    assert first.returncode == 3, first.stderr[-3000:]
    assert first_runs == ["bad"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert tries == {e: 3 for e in events}
    dropped = [r for r in _journal(tmp_path) if r["settlement"] == "dropped"]
    assert sorted(r["attempts"] for r in dropped) == [2] * 5  # two earlier failures each
    assert "dropped 5" in second.stdout and "dead-lettered 0" in second.stdout
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1)) == []


def test_evictions_are_not_attempts(rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any) -> None:
    """Two pilots evicted (SIGTERM, grace 0) while running the event, then one real failure: requeued."""
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["e"]))
    started = tmp_path / "started"
    hang = "import sys,time,pathlib; pathlib.Path(sys.argv[3]).touch(); time.sleep(60)"
    for _ in range(2):
        env = _env("rabbitmq", rabbitmq_address, queue_name, tmp_path, hang, str(started),
                   EWMS_PILOT_SHUTDOWN_GRACE="0")
        proc = start_pilot(env)
        t0 = time.monotonic()
        while not started.exists():
            assert time.monotonic() - t0 < 60 and proc.poll() is None, "the task never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert wait_pilot(proc, 60).returncode == 6
        started.unlink()
    runs = tmp_path / "runs"
    third = run_pilot(_env("rabbitmq", rabbitmq_address, queue_name, tmp_path, RECORD_THEN_FAIL, str(runs)))
    records = _journal(tmp_path)
    left = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1))
    record.add(
        case="2 evictions (SIGTERM, grace 0) mid-task, then 1 real failure",
        broker="rabbitmq", point="-", events=1, outputs=0, duplicates=0, lost=1 - len(left),
        detail=f"3rd pilot exit {third.returncode}; journal "
        + ", ".join(f"{r['result']}/{r['settlement']}/attempts {r['attempts']}" for r in records),
    )
    assert third.returncode == 3, third.stderr[-3000:]  # a first attempt failed: stop-on-error trips
    assert [(r["result"], r["settlement"], r["attempts"]) for r in records] == [
        ("cancelled", "released", 0), ("cancelled", "released", 0), ("failed", "requeued", 0)
    ]
    assert "dropp" not in third.stderr
    assert left == ["e"]


# a result NATS can never take (max_payload 1 MB): 4 MB of base64 noise, which zstd cannot shrink
TOO_LARGE = (
    "import base64,os,sys; open(sys.argv[3],'a').write('run\\n')\n"
    "open(sys.argv[2],'w').write(base64.b64encode(os.urandom(3*1024*1024)).decode())"
)


def test_a_result_too_large_for_nats_is_dead_lettered(
    nats_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    """Outgoing NATS, a 4 MB result: a failure of the event (ResultTooLargeError with size and
    limit), counted as an attempt, dead-lettered with its reason: two runs, not a loop."""
    asyncio.run(publish("nats", nats_address, queue_name + "i", ["big"]))
    runs = tmp_path / "runs"
    env = _env("nats", nats_address, queue_name, tmp_path, TOO_LARGE, str(runs),
               EWMS_PILOT_MAX_DELIVERIES="2", EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false",
               EWMS_PILOT_QUEUE_DEADLETTER=queue_name + "d", EWMS_PILOT_RECONNECT_DEADLINE="20")
    run = run_pilot(env, timeout=90)
    n_runs = len(runs.read_text().split())
    dead = asyncio.run(drain_with_headers("nats", nats_address, queue_name + "d"))
    record.add(
        case="4 MB result, outgoing NATS (max_payload 1 MB), MAX_DELIVERIES 2 + DLQ",
        broker="nats", point="publish", events=1, outputs=0, duplicates=0, lost=1 - len(dead),
        detail=f"exit {run.returncode}; {n_runs} runs; dead-lettered "
        + "; ".join(f"{h.get('ewms_pilot_error_type')}: {h.get('ewms_pilot_error')}"[:200] for _, h in dead),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert n_runs == 2
    [(data, headers)] = dead
    assert data == "big" and headers["ewms_pilot_error_type"] == "ResultTooLargeError"
    assert headers["ewms_pilot_attempts"] == 2
    reason = str(headers["ewms_pilot_error"])
    assert "4194304 bytes" in reason and "limit 1048576 bytes" in reason  # size and NATS's max_payload
    assert asyncio.run(drain("nats", nats_address, queue_name + "o", timeout=1)) == []
