"""SIGKILL of a pilot and its podman clients (as a batch system kills a job's process tree).

What is checked: no event is lost (a second pilot redoes them) and the
containers do not stay forever. What is *recorded*: whether the containers
outlived the pilot. podman's `conmon` monitors each container from its own
session (re-parented to init), so killing the client does not stop the
container: it runs its task to the end, then `--rm` removes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from faults_kit import (
    PilotProcess,
    pilot_env,
    podman_names,
    podman_remove,
    put,
    take_data,
    task_args,
    wait_until,
)

TASK_SECONDS = 8  # long enough that both containers surely still run when checked after the kill
TASK = (
    "import os,sys,time\n"
    "d=open(sys.argv[1]).read()\n"
    "open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'],'started-'+d),'w').close()\n"
    f"time.sleep({TASK_SECONDS}); open(sys.argv[2],'w').write('out:'+d)\n"
)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.mark.podman
@pytest.mark.timeout(120)
def test_sigkill_of_pilot_and_podman_clients(
    rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    qin, qout = new_queue("i"), new_queue("o")
    events = ["a", "b"]
    put("rabbitmq", rabbitmq_address, qin, events)
    env = pilot_env(
        "rabbitmq", rabbitmq_address, qin, qout, tmp_path, task_args(TASK, python="python3"),
        EWMS_PILOT_CONTAINER_PLATFORM="podman", EWMS_PILOT_TASK_IMAGE=podman_image,
        EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1",
    )
    hub = tmp_path / "ewms-pilot-data" / "data-hub"
    victim = PilotProcess(env, tmp_path, "victim")
    ids: set[str] = set()
    try:
        assert wait_until(lambda: all((hub / f"started-{e}").exists() for e in events), 90), victim.log()[-3000:]
        ids = victim.pilot_ids()
        assert ids, "no container name in the pilot's log"
        tree = [victim.pid, *_descendants(victim.pid)]
        for pid in tree:  # the whole tree at once, as a batch system does
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victim.wait(10)
        killed = time.monotonic()
        time.sleep(1)
        running_after_kill = podman_names(*ids)
        # conmon runs the task to its end; `--rm` then removes the container
        gone = wait_until(lambda: not podman_names(*ids), TASK_SECONDS + 20, interval=0.5)
        gone_after = time.monotonic() - killed
    finally:
        podman_remove(podman_names(*ids))

    survivor = PilotProcess(env, tmp_path, "survivor")
    rc = survivor.wait(90)
    outs = sorted(o[4:] for o in take_data("rabbitmq", rabbitmq_address, qout, idle=1))
    record.add(
        case=f"SIGKILL of pilot + podman clients, {TASK_SECONDS} s podman tasks running",
        broker="rabbitmq", point="2 tasks running",
        events=2, outputs=len(outs), duplicates=len(outs) - len(set(outs)),
        lost=len(set(events) - set(outs)),
        detail=(
            f"{len(tree) - 1} descendant process(es) killed with the pilot; {len(running_after_kill)} "
            f"container(s) still running 1 s later (conmon keeps them); "
            f"{'all removed' if gone else 'NOT removed'} {gone_after:.0f}s after the kill (task end + --rm)"
        ),
    )
    assert rc == 0, survivor.log()[-3000:]
    assert outs == events
    assert gone, "containers of a SIGKILLed pilot were never removed"
    # How many are still running 1 s after the kill is a race, not a promise: the
    # kernel's parent-death SIGTERM (tasks/parent_death.py) reaches a podman client
    # when the pilot dies, and the client may forward it to its container before
    # this test's own SIGKILL reaches the client. Either way: at most the two started.
    assert len(running_after_kill) <= 2
