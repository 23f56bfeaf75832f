"""Issue 14 item 8: a task that uses no CPU for EWMS_PILOT_TASK_STALL_TIMEOUT fails as TaskStalledError.

CPU counts wherever the task's work runs: in a child process (process runtime:
the process group), in a container (podman: its cgroup, while the client the
pilot started sits idle). A busy task is never called stalled.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

import pytest
from config_env import MINIMAL
from memory_pilot import journal, memory_config, new_queues, put

from ewms_pilot.config.loader import load_config
from ewms_pilot.errors import ConfigError
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause

# `hang`: sleeps (no CPU); `busy`: computes for 4 s; `child`: waits for a child that computes 4 s;
# `heartbeat`: sleeps 4 s while a thread wakes 5 times a second (far less CPU than one 10 ms tick)
TASK = (
    "import subprocess,sys,threading,time\n"
    "d=open(sys.argv[1]).read()\n"
    "spin='import time\\nt=time.time()\\nwhile time.time()-t<4: pass'\n"
    "def beat():\n"
    "    while True: time.sleep(0.2)\n"
    "if d=='heartbeat': threading.Thread(target=beat,daemon=True).start(); time.sleep(4)\n"
    "if d=='hang': time.sleep(60)\n"
    "if d=='busy': exec(spin)\n"
    "if d=='child': subprocess.run([sys.executable,'-c',spin],check=True)\n"
    "open(sys.argv[2],'w').write(d)\n"
)


def _results(cfg_extra: dict[str, str], tmp_path: Path, events: list[str]) -> list[dict[str, Any]]:
    q = new_queues()
    cfg = memory_config(
        q, tmp_path, TASK, EWMS_PILOT_TASK_STALL_TIMEOUT="1.5", EWMS_PILOT_TASK_TIMEOUT="30",
        EWMS_PILOT_OKAY_ERRORS="TaskStalledError", EWMS_PILOT_MAX_DELIVERIES="1",
        EWMS_PILOT_MAX_CONCURRENT_TASKS=str(len(events)), **cfg_extra,
    )  # fmt: skip

    async def main() -> StopCause | None:
        await put(cfg, *events)
        return (await Pilot(cfg).run()).cause

    assert asyncio.run(main()) is StopCause.QUEUE_EMPTY
    records = journal(tmp_path)
    assert len(records) == len(events)
    return records


def test_a_hung_task_is_stopped_and_busy_ones_and_their_children_are_not(tmp_path: Path) -> None:
    """docs/resources.md: "a task with a heartbeat thread is never stalled" (process runtime)."""
    records = _results({}, tmp_path, ["hang", "busy", "child", "heartbeat"])
    failed = [r for r in records if r["result"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_type"] == "TaskStalledError", records
    assert "used no CPU for 1.5 s" in failed[0]["error"]
    assert failed[0]["end"] - failed[0]["start"] < 25  # stopped for its stall, not at its 30 s timeout
    ok = [r for r in records if r["result"] == "succeeded"]
    assert len(ok) == 3 and all(r["end"] - r["start"] >= 4 for r in ok)  # computing for 4 s is not a stall


@pytest.mark.podman
def test_a_container_is_judged_by_its_cgroup_not_its_idle_client(tmp_path: Path, podman_image: str) -> None:
    args = shlex.join(["python3", "-c", TASK, "{{INFILE}}", "{{OUTFILE}}"])
    extra = {"EWMS_PILOT_CONTAINER_PLATFORM": "podman", "EWMS_PILOT_TASK_IMAGE": podman_image,
             "EWMS_PILOT_TASK_ARGS": args}  # fmt: skip
    records = _results(extra, tmp_path, ["hang", "busy"])
    assert sorted((r["result"], r["error_type"]) for r in records) == [
        ("failed", "TaskStalledError"), ("succeeded", None)
    ], records


def test_stall_detection_is_for_one_shot_tasks() -> None:
    with pytest.raises(ConfigError) as e:
        load_config({**MINIMAL, "EWMS_PILOT_TASK_STALL_TIMEOUT": "60", "EWMS_PILOT_TASK_MODE": "warm"})
    assert e.value.variable == "EWMS_PILOT_TASK_STALL_TIMEOUT"
    assert load_config(MINIMAL).task_stall_timeout is None  # off by default
