"""Progress/status lines, failure patterns, the teardown container and the task journal, end to end."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from mq_helpers import drain, publish
from pilot_proc import DOUBLE, base_env, run_pilot, start_pilot, wait_pilot

PY = sys.executable


def _env(addr: str, q: str, tmp: Path, code: str, *extra_args: str, **extra: str) -> dict[str, str]:
    return base_env(
        broker_type="rabbitmq", address=addr, queue_in=q + "i", queue_out=q + "o", data_dir=tmp,
        task_args=shlex.join([PY, "-c", code, "<<INFILE>>", "<<OUTFILE>>", *extra_args]), extra=extra,
    )


def _journal(tmp: Path) -> list[dict[str, object]]:
    path = tmp / "ewms-pilot-tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_progress_and_status_lines_are_reported(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    code = (
        "import sys,time\n"
        "print('ewms_status: loading tables', flush=True)\n"
        "print('ewms_progress: 25', flush=True); time.sleep(0.2)\n"
        "print('openjd_progress: 80.5', flush=True)\n"
        "print('ewms_progress: lots', flush=True)\n"  # malformed: a warning, not a failure
        "print('openjd_status: writing', file=sys.stderr, flush=True)\n"
        "open(sys.argv[2],'w').write('done')"
    )
    run = run_pilot(_env(rabbitmq_address, queue_name, tmp_path, code))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "status: loading tables" in run.stderr and "progress 25%" in run.stderr
    assert "progress 80.5%" in run.stderr and "malformed progress" in run.stderr
    [rec] = _journal(tmp_path)
    assert rec["progress"] == 80.5 and rec["status"] == "writing" and rec["published"] is True
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1, expect=1)) == ["done"]


def test_failure_pattern_turns_exit_zero_into_a_nack(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["good", "licence"]))
    code = (
        "import sys; d=open(sys.argv[1]).read()\n"
        "print('WARNING: no licence available, output watermarked' if d=='licence' else 'fine')\n"
        "open(sys.argv[2],'w').write(d)"
    )
    run = run_pilot(
        _env(
            rabbitmq_address, queue_name, tmp_path, code,
            EWMS_PILOT_TASK_FAIL_PATTERNS=json.dumps(["no licence", "Error reading table"]),
            EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", EWMS_PILOT_MAX_DELIVERIES="1",
        )
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FailurePatternError" in run.stderr and "output watermarked" in run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1)) == ["good"]
    by_status = {r["error_type"]: r for r in _journal(tmp_path)}
    assert by_status["FailurePatternError"]["exit_code"] == 0
    assert "no licence" in str(by_status["FailurePatternError"]["error"])


def _teardown_env(addr: str, q: str, tmp: Path, task_code: str, **extra: str) -> dict[str, str]:
    marker = tmp / "teardown.log"
    teardown = shlex.join([
        PY, "-c",
        "import os,sys; open(sys.argv[1],'a').write('teardown saw hub '+os.path.basename(os.environ['EWMS_TASK_DATA_HUB_DIR'])+'\\n')",
        str(marker),
    ])
    return _env(addr, q, tmp, task_code, EWMS_PILOT_TEARDOWN_IMAGE="x", EWMS_PILOT_TEARDOWN_ARGS=teardown, **extra)


def test_teardown_runs_after_success(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a", "b"]))
    run = run_pilot(_teardown_env(rabbitmq_address, queue_name, tmp_path, DOUBLE))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "teardown.log").read_text() == "teardown saw hub data-hub\n"


def test_teardown_runs_after_failure_and_after_failed_init(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    run = run_pilot(_teardown_env(rabbitmq_address, queue_name, tmp_path, "import sys; sys.exit('boom')"))
    assert run.returncode == 3
    init_fail = _teardown_env(
        rabbitmq_address, queue_name + "x", tmp_path, DOUBLE,
        EWMS_PILOT_INIT_IMAGE="x", EWMS_PILOT_INIT_ARGS=shlex.join([PY, "-c", "raise SystemExit(7)"]),
    )
    run2 = run_pilot(init_fail)
    assert run2.returncode == 4
    assert (tmp_path / "teardown.log").read_text().count("teardown saw hub") == 2


def test_teardown_runs_on_sigterm_within_the_grace(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    env = _teardown_env(
        rabbitmq_address, queue_name, tmp_path, "import time; time.sleep(60)", EWMS_PILOT_SHUTDOWN_GRACE="2"
    )
    proc = start_pilot(env)
    time.sleep(3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, 30)
    assert run.returncode == 6
    assert time.monotonic() - t0 < 2 + 5
    assert (tmp_path / "teardown.log").read_text() == "teardown saw hub data-hub\n"
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1)) == ["a"]


def test_journal_matches_what_was_published(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    events = [f"e{i}" for i in range(12)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    code = "import sys; d=open(sys.argv[1]).read(); sys.exit('odd') if int(d[1:])%4==3 else open(sys.argv[2],'w').write(d*2)"
    run = run_pilot(
        _env(rabbitmq_address, queue_name, tmp_path, code,
             EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", EWMS_PILOT_MAX_DELIVERIES="2",
             EWMS_PILOT_MAX_CONCURRENT_TASKS="3")
    )
    assert run.returncode == 0, run.stderr[-3000:]
    published = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1))
    journal = _journal(tmp_path)
    assert sum(1 for r in journal if r["published"]) == len(published) == 9
    assert all(r["acked"] for r in journal if r["published"])
    failed = [r for r in journal if r["error"]]
    # three odd events, each tried twice (MAX_DELIVERIES=2): first requeued, then dropped (no
    # dead-letter queue is set, so none is counted as dead-lettered: issue 10 item 5c)
    assert sorted(r["settlement"] for r in failed) == ["dropped"] * 3 + ["requeued"] * 3
    assert sorted(r["attempts"] for r in failed) == [0, 0, 0, 1, 1, 1]
    assert not any(r["dead_lettered"] for r in journal)
    assert "succeeded 9" in run.stdout and "failed 6" in run.stdout and "dead-lettered 0" in run.stdout
    assert "dropped 3" in run.stdout
    assert "count 15" in run.stdout  # runtime statistics computed from the journal
