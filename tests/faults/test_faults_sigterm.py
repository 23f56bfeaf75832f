"""Eviction (SIGTERM) with running podman tasks: grace, then stop; exit 6; nothing lost, nothing left.

Each task drops a `started-<event>` file in the data hub (mounted read-write in
the container) so the test signals the pilot exactly when the tasks it wants
to interrupt are running, not after a guessed sleep.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    PilotProcess,
    Tally,
    broker_address,
    pilot_env,
    podman_names,
    podman_remove,
    processes_mentioning,
    put,
    take_data,
    task_args,
    wait_until,
)

EVICTED = 6
STOP_SLACK = 5.0  # the promise: exit within grace + 5 s of SIGTERM

#: "f*" events take 0.2 s, "s*" events `argv[3]` s; an "i*" event ignores SIGTERM
TASK = (
    "import os,signal,sys,time\n"
    "d=open(sys.argv[1]).read()\n"
    "if d.startswith('i'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'],'started-'+d),'w').close()\n"
    "time.sleep(0.2 if d.startswith('f') else float(sys.argv[3]))\n"
    "open(sys.argv[2],'w').write('out:'+d)\n"
)


def _podman_env(address: str, qin: str, qout: str, tmp: Path, image: str, slow: float, **extra: str) -> dict[str, str]:
    args = task_args(TASK, str(slow), python="python3")
    return pilot_env(
        "rabbitmq", address, qin, qout, tmp, args,
        EWMS_PILOT_CONTAINER_PLATFORM="podman", EWMS_PILOT_TASK_IMAGE=image,
        EWMS_PILOT_MAX_CONCURRENT_TASKS="2", **extra,
    )


def _started(tmp: Path, *events: str) -> bool:
    hub = tmp / "ewms-pilot-data" / "data-hub"
    return all((hub / f"started-{e}").exists() for e in events)


def _outputs(address: str, qout: str) -> list[str]:
    return sorted(o[4:] for o in take_data("rabbitmq", address, qout, idle=1))


def _leftovers(pilot: PilotProcess) -> list[str]:
    names = podman_names(*pilot.pilot_ids())
    podman_remove(names)  # never leave them to the next test
    return names


pytestmark = [pytest.mark.podman, pytest.mark.timeout(120)]


@pytest.mark.parametrize("grace", [1, 10])
def test_sigterm_with_running_containers(
    grace: int, rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    """grace 1: the 3 s tasks are stopped and nacked; grace 10: they finish and publish."""
    qin, qout = new_queue("i"), new_queue("o")
    events = ["f0", "f1", "s0", "s1", "s2", "s3", "s4", "s5"]
    put("rabbitmq", rabbitmq_address, qin, events)
    env = _podman_env(rabbitmq_address, qin, qout, tmp_path, podman_image, 3, EWMS_PILOT_SHUTDOWN_GRACE=str(grace))
    pilot = PilotProcess(env, tmp_path)
    assert wait_until(lambda: _started(tmp_path, "s0", "s1"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(grace + 60)
    took = pilot.since_signal()
    left_containers = _leftovers(pilot)
    outs = _outputs(rabbitmq_address, qout)
    left = sorted(take_data("rabbitmq", rabbitmq_address, qin, idle=1))

    finished = ["f0", "f1"] if grace < 3 else ["f0", "f1", "s0", "s1"]
    tally = Tally.of(events, [f"out:{o}" for o in outs] + [f"out:{x}" for x in left], lambda o: o[4:])
    record.add(
        case=f"SIGTERM, 3 s podman tasks running, grace {grace}s",
        broker="rabbitmq", point="2 tasks 0-1 s into their 3 s",
        events=len(events), outputs=len(outs), duplicates=tally.duplicates, lost=len(tally.lost),
        detail=f"exit {rc} after {took:.1f}s; published {outs}; back in queue {len(left)}; "
        f"containers left {len(left_containers)}",
    )
    assert rc == EVICTED, pilot.log()[-3000:]
    assert took <= grace + STOP_SLACK, f"exit took {took:.1f}s after SIGTERM"
    assert left_containers == []
    assert outs == finished  # each finished result exactly once
    assert left == sorted(set(events) - set(finished))  # the rest redelivered, none lost
    assert "received SIGTERM" in pilot.log()


def test_second_sigterm_hurries(
    rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    qin, qout = new_queue("i"), new_queue("o")
    events = ["s0", "s1", "s2"]
    put("rabbitmq", rabbitmq_address, qin, events)
    env = _podman_env(rabbitmq_address, qin, qout, tmp_path, podman_image, 60, EWMS_PILOT_SHUTDOWN_GRACE="30")
    pilot = PilotProcess(env, tmp_path)
    assert wait_until(lambda: _started(tmp_path, "s0", "s1"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    time.sleep(1)
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    took = pilot.since_signal()
    left_containers = _leftovers(pilot)
    outs = _outputs(rabbitmq_address, qout)
    left = sorted(take_data("rabbitmq", rabbitmq_address, qin, idle=1))
    record.add(
        case="second SIGTERM 1 s after the first (grace 30 s, 60 s tasks)",
        broker="rabbitmq", point="both tasks running",
        events=3, outputs=len(outs), duplicates=0, lost=3 - len(left) - len(outs),
        detail=f"exit {rc} {took:.1f}s after the first SIGTERM; containers left {len(left_containers)}",
    )
    assert rc == EVICTED, pilot.log()[-3000:]
    assert took <= 1 + STOP_SLACK, f"exit took {took:.1f}s after the first SIGTERM (grace was 30)"
    assert "second stop signal" in pilot.log()
    assert left_containers == [] and outs == [] and left == events


def test_task_ignoring_sigterm_is_killed(
    rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    qin, qout = new_queue("i"), new_queue("o")
    put("rabbitmq", rabbitmq_address, qin, ["i0"])
    env = _podman_env(rabbitmq_address, qin, qout, tmp_path, podman_image, 60, EWMS_PILOT_SHUTDOWN_GRACE="1")
    pilot = PilotProcess(env, tmp_path)
    assert wait_until(lambda: _started(tmp_path, "i0"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    took = pilot.since_signal()
    left_containers = _leftovers(pilot)
    left = take_data("rabbitmq", rabbitmq_address, qin, idle=1)
    record.add(
        case="SIGTERM, podman task ignores SIGTERM (grace 1 s)",
        broker="rabbitmq", point="task running",
        events=1, outputs=0, duplicates=0, lost=1 - len(left),
        detail=f"exit {rc} {took:.1f}s after SIGTERM; containers left {len(left_containers)}",
    )
    assert rc == EVICTED, pilot.log()[-3000:]
    assert left_containers == [] and left == ["i0"]
    assert took <= 1 + STOP_SLACK, f"exit took {took:.1f}s after SIGTERM (grace 1)"


def test_process_task_tree_ignoring_sigterm_is_killed(tmp_path: Path, request: pytest.FixtureRequest, record: Any) -> None:
    """process runtime: a task that ignores SIGTERM and forks a child that does too leaves nothing behind."""
    address = broker_address(request, "local", tmp_path)
    put("local", address, "in", ["i0", "i1"])
    code = (
        "import os,signal,sys,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork()==0: time.sleep(120); os._exit(0)\n"
        "open(sys.argv[2]+'.started','w').close(); time.sleep(120)\n"
    )
    env = pilot_env("local", address, "in", "out", tmp_path, task_args(code),
                    EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_SHUTDOWN_GRACE="1")
    pilot = PilotProcess(env, tmp_path)
    marker = str(tmp_path / "ewms-pilot-data")
    assert wait_until(lambda: len(list(Path(marker).rglob("*.started"))) == 2, 30), pilot.log()[-3000:]
    assert len(processes_mentioning(marker)) == 4  # 2 tasks + 2 children
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    took = pilot.since_signal()
    survivors = processes_mentioning(marker)
    for pid in survivors:  # never leave them running, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    left = sorted(take_data("local", address, "in", idle=0.5))
    record.add(
        case="SIGTERM, process task + child both ignore SIGTERM (grace 1 s)",
        broker="local", point="2 tasks running",
        events=2, outputs=0, duplicates=0, lost=2 - len(left),
        detail=f"exit {rc} {took:.1f}s after SIGTERM; {len(survivors)} process(es) left",
    )
    assert rc == EVICTED, pilot.log()[-3000:]
    assert survivors == [] and left == ["i0", "i1"]
    assert took <= 1 + STOP_SLACK, f"exit took {took:.1f}s after SIGTERM (grace 1)"
