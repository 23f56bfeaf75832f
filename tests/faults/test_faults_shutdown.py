"""One shutdown deadline (issue 10 item 6): whatever the pilot is doing, it exits within grace + 5 s.

Real pilot processes on the real RabbitMQ, process runtime. Each scenario
is one the old code got wrong: a SIGTERM during a stop-on-error drain or the
teardown was ignored, an idle warm worker ignoring EOF and SIGTERM held the
exit for 10 s, SIGHUP killed the pilot with no drain and no teardown.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mq_helpers import drain, publish
from pilot_proc import base_env, start_pilot, wait_pilot

PY = sys.executable
SLACK = 5.0  # the promise: exit within grace + 5 s of the (first) signal


def _env(addr: str, q: str, tmp: Path, code: str, *extra_args: str, **extra: str) -> dict[str, str]:
    return base_env(
        broker_type="rabbitmq", address=addr, queue_in=q + "i", queue_out=q + "o", data_dir=tmp,
        task_args=shlex.join([PY, "-c", code, "<<INFILE>>", "<<OUTFILE>>", *extra_args]),
        extra={"EWMS_PILOT_CL_LOG": "INFO", **extra},
    )


def _wait_for(path: Path, proc: object, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < timeout, f"{path.name} never appeared"
        time.sleep(0.05)


# a task that marks it started, then fails at once on "bad" or sleeps on anything else
MARK_THEN = (
    "import sys,time,pathlib; d=open(sys.argv[1]).read(); pathlib.Path(sys.argv[3], d.strip('\"')).touch()\n"
    "sys.exit('bad event') if 'bad' in d else time.sleep(60)"
)


def test_sigterm_during_a_stop_on_error_drain(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    """A failure stops the pilot and waits for the other task; a SIGTERM then bounds that wait."""
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["slow", "bad"]))
    marks = tmp_path / "marks"
    marks.mkdir()
    env = _env(rabbitmq_address, queue_name, tmp_path, MARK_THEN, str(marks),
               EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_SHUTDOWN_GRACE="0.5")
    proc = start_pilot(env)
    _wait_for(marks / "slow", proc)
    _wait_for(marks / "bad", proc)
    time.sleep(1.0)  # the failure is in: the pilot is draining for stop-on-error
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, 60)
    took = time.monotonic() - t0
    left = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1))
    record.add(case="SIGTERM during a stop-on-error drain (grace 0.5 s, a 60 s task)", broker="rabbitmq",
               point="drain", events=2, outputs=0, duplicates=0, lost=2 - len(left),
               detail=f"exit {run.returncode} {took:.1f}s after SIGTERM (promise: 6 within {0.5 + SLACK:g}s)")
    assert run.returncode == 6, run.stderr[-3000:]
    assert took <= 0.5 + SLACK, f"exit {took:.1f}s after SIGTERM\n{run.stderr[-3000:]}"
    assert sorted(left) == ["bad", "slow"]  # "slow" released, "bad" requeued: neither lost


def test_sigterm_during_the_teardown(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    started = tmp_path / "teardown-started"
    teardown = shlex.join([PY, "-c", "import sys,time,pathlib; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)",
                           str(started)])
    env = _env(rabbitmq_address, queue_name, tmp_path, "import sys; open(sys.argv[2],'w').write('1')",
               EWMS_PILOT_SHUTDOWN_GRACE="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1",
               EWMS_PILOT_TEARDOWN_IMAGE="x", EWMS_PILOT_TEARDOWN_ARGS=teardown)
    proc = start_pilot(env)
    _wait_for(started, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, 60)
    took = time.monotonic() - t0
    outputs = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1))
    record.add(case="SIGTERM during a 60 s teardown container (grace 2 s)", broker="rabbitmq",
               point="teardown", events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1),
               lost=1 - len(outputs),
               detail=f"exit {run.returncode} {took:.1f}s after SIGTERM (promise: 6 within {2 + SLACK:g}s)")
    assert run.returncode == 6, run.stderr[-3000:]
    assert took <= 2 + SLACK, f"exit {took:.1f}s after SIGTERM\n{run.stderr[-3000:]}"


IGNORING_WORKER = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(__import__('sys').argv[1], 'w').write('up')
while True:
    time.sleep(1)  # never reads stdin: EOF changes nothing
"""


def test_idle_warm_worker_ignoring_eof_and_sigterm(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    script, up = tmp_path / "worker.py", tmp_path / "up"
    script.write_text(IGNORING_WORKER)
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path, task_args=shlex.join([PY, str(script), str(up)]),
        extra={"EWMS_PILOT_TASK_MODE": "warm", "EWMS_PILOT_SHUTDOWN_GRACE": "1",
               "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "60"},
    )
    proc = start_pilot(env)
    _wait_for(up, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, 60)
    took = time.monotonic() - t0
    record.add(case="SIGTERM, idle warm worker ignoring EOF and SIGTERM (grace 1 s)", broker="rabbitmq",
               point="warm close", events=0, outputs=0, duplicates=0, lost=0,
               detail=f"exit {run.returncode} {took:.1f}s after SIGTERM (promise: 6 within {1 + SLACK:g}s)")
    assert run.returncode == 6, run.stderr[-3000:]
    assert took <= 1 + SLACK, f"exit {took:.1f}s after SIGTERM\n{run.stderr[-3000:]}"


def test_second_signal_hurries_and_sighup_is_an_eviction(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    """grace 30 s, a 60 s task: SIGHUP (drains: not rc 129), then SIGINT 1 s later ends it now."""
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["slow"]))
    marks = tmp_path / "marks"
    marks.mkdir()
    env = _env(rabbitmq_address, queue_name, tmp_path, MARK_THEN, str(marks), EWMS_PILOT_SHUTDOWN_GRACE="30")
    proc = start_pilot(env)
    _wait_for(marks / "slow", proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert proc.poll() is None, "SIGHUP killed the pilot at once"
    proc.send_signal(signal.SIGINT)
    run = wait_pilot(proc, 60)
    took = time.monotonic() - t0
    left = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1))
    record.add(case="SIGHUP, then SIGINT 1 s later (grace 30 s, a 60 s task)", broker="rabbitmq",
               point="drain", events=1, outputs=0, duplicates=0, lost=1 - len(left),
               detail=f"alive after SIGHUP; exit {run.returncode} {took:.1f}s after it "
               f"(promise: 6 within 1 + {SLACK:g}s of the first signal)")
    assert run.returncode == 6, run.stderr[-3000:]
    assert took <= 1 + SLACK, f"exit {took:.1f}s after the first signal\n{run.stderr[-3000:]}"
    assert left == ["slow"]


def test_sighup_drains_and_runs_the_teardown(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, record: Any
) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    marks, done = tmp_path / "marks", tmp_path / "teardown.done"
    marks.mkdir()
    code = "import sys,time,pathlib; pathlib.Path(sys.argv[3],'a').touch(); time.sleep(2); open(sys.argv[2],'w').write('r')"
    teardown = shlex.join([PY, "-c", "import sys,pathlib; pathlib.Path(sys.argv[1]).touch()", str(done)])
    env = _env(rabbitmq_address, queue_name, tmp_path, code, str(marks), EWMS_PILOT_SHUTDOWN_GRACE="10",
               EWMS_PILOT_TEARDOWN_IMAGE="x", EWMS_PILOT_TEARDOWN_ARGS=teardown)
    proc = start_pilot(env)
    _wait_for(marks / "a", proc)
    proc.send_signal(signal.SIGHUP)
    run = wait_pilot(proc, 60)
    outputs = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1))
    record.add(case="SIGHUP with a 2 s task running (grace 10 s) and a teardown", broker="rabbitmq",
               point="task running", events=1, outputs=len(outputs), duplicates=max(0, len(outputs) - 1),
               lost=1 - len(outputs), detail=f"exit {run.returncode}; teardown ran: {done.exists()}")
    assert run.returncode == 6, run.stderr[-3000:]
    assert done.exists(), run.stderr[-3000:]  # the teardown ran
    # the running task was drained: finished within the grace and its result published
    assert outputs == ["r"]
