"""Containers never outlive a SIGKILLed pilot for long: parent-death signal, then the next pilot's sweep."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot, start_pilot

pytestmark = pytest.mark.podman


def _containers_of(pilot_ids: set[str]) -> list[str]:
    names = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return [n for n in names if any(i in n for i in pilot_ids)]


def _kill_mid_task(env: dict[str, str], hub: Path, events: list[str]) -> set[str]:
    proc = start_pilot(env)
    deadline = time.monotonic() + 90
    while not all((hub / f"started-{e}").exists() for e in events):  # both tasks' containers run
        assert proc.poll() is None and time.monotonic() < deadline, "the tasks never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    ids = set(re.findall(r"ewms-pilot-([0-9a-f]{8})-", err))
    assert ids, err[-2000:]
    return ids


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_sigkilled_pilot_leaves_no_running_container(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str, ignores_sigterm: bool
) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["e1", "e2"]))
    code = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_sigterm else "") + (
        "import os,sys,time; d=open(sys.argv[1]).read()\n"
        "open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'],'started-'+d),'w').close()\n"
        "time.sleep(60); open(sys.argv[2],'w').write(d)"
    )
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=shlex.join(["python3", "-c", code, "<<INFILE>>", "<<OUTFILE>>"]), platform="podman",
        image=podman_image, extra={"EWMS_PILOT_MAX_CONCURRENT_TASKS": "2"},
    )
    ids = _kill_mid_task(env, tmp_path / "ewms-pilot-data" / "data-hub", ["e1", "e2"])
    if not ignores_sigterm:
        # the clients got SIGTERM from the kernel when the pilot died; --init passed it on
        deadline = time.monotonic() + 15
        while _containers_of(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _containers_of(ids) == []
    else:
        assert _containers_of(ids), "a task ignoring SIGTERM survives its pilot until the sweep"
        sweeper = dict(
            env, EWMS_PILOT_TASK_ARGS="true", EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE="1",
            EWMS_PILOT_QUEUE_INCOMING=queue_name + "empty",
        )
        run = run_pilot(sweeper, 120)
        assert "left running by a dead pilot" in run.stderr
        assert _containers_of(ids) == []
    # and the events were not lost: unacked, they went back to the queue
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2))) == ["e1", "e2"]
