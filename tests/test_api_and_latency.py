"""The 1.x-compatible Python entry point, and how fast a finished task's result goes out."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot

import ewms_pilot
from ewms_pilot.errors import ConfigError

PY = sys.executable


def test_consume_and_reply_keywords_win_over_env(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if k.startswith("EWMS_PILOT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("EWMS_PILOT_CONTAINER_PLATFORM", "process")
    monkeypatch.setenv("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", str(tmp_path))
    monkeypatch.setenv("EWMS_PILOT_TASK_ARGS", "false")  # overridden below
    monkeypatch.setenv("EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE", "rabbitmq")
    monkeypatch.setenv("EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE", "rabbitmq")
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["x", "y"]))
    code = "import sys; open(sys.argv[2],'w').write(open(sys.argv[1]).read()*3)"
    asyncio.run(
        ewms_pilot.consume_and_reply(
            task_image="",
            task_args=shlex.join([PY, "-c", code, "{{INFILE}}", "{{OUTFILE}}"]),
            queue_incoming=qin,
            queue_outgoing=qout,
            queue_incoming_broker_address=rabbitmq_address,
            queue_outgoing_broker_address=rabbitmq_address,
            timeout_incoming=1,
            max_concurrent_tasks=2,
        )
    )
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=2))) == ["xxx", "yyy"]


def test_consume_and_reply_raises_for_failures_and_bad_config(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EWMS_PILOT_CONTAINER_PLATFORM", "process")
    monkeypatch.setenv("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", str(tmp_path))
    common = dict(
        queue_incoming=queue_name + "i", queue_outgoing=queue_name + "o",
        queue_incoming_broker_type="rabbitmq", queue_outgoing_broker_type="rabbitmq",
        queue_incoming_broker_address=rabbitmq_address, queue_outgoing_broker_address=rabbitmq_address,
        timeout_incoming=1,
    )
    with pytest.raises(ConfigError, match="EWMS_PILOT_MAX_CONCURRENT_TASKS"):
        asyncio.run(ewms_pilot.consume_and_reply(task_args="true", max_concurrent_tasks=0, **common))
    with pytest.raises(TypeError, match="bogus"):
        asyncio.run(ewms_pilot.consume_and_reply(bogus=1, **common))
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["x"]))
    with pytest.raises(ewms_pilot.ContainerRunError, match=r"^1 TASK\(S\) FAILED: task \w+: ContainerRunError: exited with code 1"):
        asyncio.run(ewms_pilot.consume_and_reply(task_args="false", **common))


def test_a_finished_task_is_published_within_100ms_while_the_subscriber_waits(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """One slot, queue empty: the subscriber sits in a broker `get` when the task exits."""
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["a", "b", "c"]))
    code = (
        "import sys,time; time.sleep(1.3); open(sys.argv[2],'w').write(repr(time.time()))"
    )
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=shlex.join([PY, "-c", code, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={"EWMS_PILOT_MAX_CONCURRENT_TASKS": "4", "EWMS_PILOT_CL_LOG": "INFO"},
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-2000:]
    journal = [json.loads(line) for line in (tmp_path / "ewms-pilot-tasks.jsonl").read_text().splitlines()]
    outs = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=3))
    assert len(journal) == 3 == len(outs)
    # task wrote its outfile (its last act) -> result published and event acked: under 100 ms
    lags = sorted(r["end"] - float(o) for r, o in zip(sorted(journal, key=lambda r: r["end"]), sorted(outs, key=float), strict=True))
    assert lags[-1] < 0.1, lags
