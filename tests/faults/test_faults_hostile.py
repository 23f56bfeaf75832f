"""Inputs that can take down or fool a pilot rather than just fail a task: one pilot per case.

- an event string that cannot be encoded as UTF-8 (a lone surrogate, valid in JSON)
- an outfile that is a FIFO (reading it blocks forever)
- an outfile that is a symlink, made inside a podman container, to a host file
  the container cannot see (the pilot must not publish the host's file)

Each must end as a failed task with a reason, dead-lettered (MAX_DELIVERIES 1),
and the pilot must end normally.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
from faults_kit import PilotProcess, broker_address, pilot_env, put, take, take_data, task_args

ECHO_TASK = "import sys; open(sys.argv[2],'w').write(open(sys.argv[1]).read())"
#: only the hostile event gets the hostile outfile; "fine" is echoed
FIFO_TASK = "import os,sys; d=open(sys.argv[1]).read(); os.mkfifo(sys.argv[2]) if d=='fifo' else open(sys.argv[2],'w').write(d)"
SYMLINK_TASK = (
    "import os,sys; d=open(sys.argv[1]).read(); "
    "os.symlink(sys.argv[3], sys.argv[2]) if d=='link' else open(sys.argv[2],'w').write(d)"
)


HANG = 25  # s: a pilot still running this long after its two events has hung


def _case(name: str, tmp: Path, address: str, event: Any, args: str, **extra: str) -> dict[str, Any]:
    put("local", address, "in", [event, "fine"])
    env = pilot_env(
        "local", address, "in", "out", tmp, args,
        EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", EWMS_PILOT_MAX_DELIVERIES="1",
        EWMS_PILOT_QUEUE_DEADLETTER="dead", EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="1",
        EWMS_PILOT_TASK_TIMEOUT="20", **extra,
    )
    pilot = PilotProcess(env, tmp)
    try:
        rc: int | str = pilot.wait(HANG)
    except AssertionError:
        rc = f"hung (killed after {HANG} s)"
    return {
        "name": name, "rc": rc, "log": pilot.log(),
        "outputs": take_data("local", address, "out", idle=0.5),
        "dead": take("local", address, "dead", idle=0.5),
        "left": take_data("local", address, "in", idle=0.5),
    }


@pytest.mark.podman
@pytest.mark.timeout(120)
def test_hostile_inputs_fail_their_task_only(
    request: pytest.FixtureRequest, tmp_path: Path, podman_image: str, record: Any
) -> None:
    secret = tmp_path / "host-only" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("HOST-SECRET-d41d8cd9")
    cases = {
        "lone surrogate in a text event": ("\ud800 broken", task_args(ECHO_TASK), {}),
        "outfile is a FIFO": ("fifo", task_args(FIFO_TASK), {}),
        "outfile is a symlink to a host file (podman)": (
            "link", task_args(SYMLINK_TASK, str(secret), python="python3"),
            {"EWMS_PILOT_CONTAINER_PLATFORM": "podman", "EWMS_PILOT_TASK_IMAGE": podman_image},
        ),
    }
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        jobs = []
        for i, (name, (event, args, extra)) in enumerate(cases.items()):
            tmp = tmp_path / f"case{i}"
            tmp.mkdir()
            jobs.append(pool.submit(_case, name, tmp, broker_address(request, "local", tmp), event, args, **extra))
        runs = [j.result() for j in jobs]

    problems = []
    for r in runs:
        leaked = any("HOST-SECRET" in str(o) for o in r["outputs"])
        dead_types = [d.headers.get("ewms_pilot_error_type") for d in r["dead"]]
        ok = r["rc"] == 0 and r["outputs"] == ["fine"] and len(r["dead"]) == 1 and not r["left"] and not leaked
        record.add(
            case=f"hostile input: {r['name']}", broker="local", point="-",
            events=2, outputs=len(r["outputs"]), duplicates=0,
            lost=2 - len(r["outputs"]) - len(r["dead"]) - len(r["left"]),
            detail=f"exit {r['rc']}; dead-lettered {dead_types}; left {len(r['left'])}"
            + ("; HOST FILE PUBLISHED" if leaked else ""),
            verdict="held" if ok else f"FAILED: exit {r['rc']}" + (", host file published" if leaked else "")
            + (", not dead-lettered" if not r["dead"] else ""),
        )
        if not ok:
            problems.append(
                f"{r['name']}: exit {r['rc']}, outputs {r['outputs']}, dead {dead_types}, "
                f"left {r['left']}\n{r['log'][-1500:]}"
            )
    assert not problems, "\n\n".join(problems)
