"""Eviction (SIGTERM) with running tasks: grace, then stop; exit 6; nothing lost, nothing left behind.

Each task drops a `started-<event>` file in the data hub (mounted read-write in
the container) so the test signals the pilot exactly when the tasks it wants
to interrupt are running, not after a guessed sleep. Independent scenarios
run side by side (each has its own queues and pilot) to keep the suite short.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
import time
from collections.abc import Callable
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
STOP_SLACK = 5.0  # the promise: exit within grace + 5 s of (the first) SIGTERM

#: "f*" events take 0.2 s, "s*" events `argv[3]` s; an "i*" event ignores SIGTERM
TASK = (
    "import os,signal,sys,time\n"
    "d=open(sys.argv[1]).read()\n"
    "if d.startswith('i'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'],'started-'+d),'w').close()\n"
    "time.sleep(0.2 if d.startswith('f') else float(sys.argv[3]))\n"
    "open(sys.argv[2],'w').write('out:'+d)\n"
)

pytestmark = [pytest.mark.podman, pytest.mark.timeout(120)]


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


def _leftovers(pilot: PilotProcess) -> list[str]:
    ids = pilot.pilot_ids()
    assert ids, "no container name in the pilot's log: cannot tell its containers apart"
    names = podman_names(*ids)
    podman_remove(names)  # never leave them to the next test
    return names


def _side_by_side(jobs: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


# --------------------------------------------------------------------------- scenarios


def _evict(address: str, qin: str, qout: str, tmp: Path, image: str, grace: int) -> dict[str, Any]:
    """f0, f1 finish; SIGTERM once s0 and s1 (3 s each) have started."""
    events = ["f0", "f1", "s0", "s1", "s2", "s3", "s4", "s5"]
    put("rabbitmq", address, qin, events)
    pilot = PilotProcess(_podman_env(address, qin, qout, tmp, image, 3, EWMS_PILOT_SHUTDOWN_GRACE=str(grace)), tmp)
    assert wait_until(lambda: _started(tmp, "s0", "s1"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(grace + 60)
    took = pilot.since_signal()
    return {
        "events": events, "rc": rc, "took": took, "log": pilot.log(), "containers": _leftovers(pilot),
        "outs": sorted(o[4:] for o in take_data("rabbitmq", address, qout, idle=1)),
        "left": sorted(take_data("rabbitmq", address, qin, idle=1)),
    }


def _hurry(address: str, qin: str, qout: str, tmp: Path, image: str) -> dict[str, Any]:
    """grace 30 s, 60 s tasks: a second SIGTERM 1 s after the first."""
    events = ["s0", "s1", "s2"]
    put("rabbitmq", address, qin, events)
    pilot = PilotProcess(_podman_env(address, qin, qout, tmp, image, 60, EWMS_PILOT_SHUTDOWN_GRACE="30"), tmp)
    assert wait_until(lambda: _started(tmp, "s0", "s1"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    time.sleep(1)
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    return {
        "events": events, "rc": rc, "took": pilot.since_signal(), "log": pilot.log(),
        "containers": _leftovers(pilot),
        "outs": take_data("rabbitmq", address, qout, idle=1),
        "left": sorted(take_data("rabbitmq", address, qin, idle=1)),
    }


def _ignoring_podman(address: str, qin: str, qout: str, tmp: Path, image: str) -> dict[str, Any]:
    put("rabbitmq", address, qin, ["i0"])
    pilot = PilotProcess(_podman_env(address, qin, qout, tmp, image, 60, EWMS_PILOT_SHUTDOWN_GRACE="1"), tmp)
    assert wait_until(lambda: _started(tmp, "i0"), 90), pilot.log()[-3000:]
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    return {
        "events": ["i0"], "rc": rc, "took": pilot.since_signal(), "log": pilot.log(),
        "containers": _leftovers(pilot), "outs": [],
        "left": take_data("rabbitmq", address, qin, idle=1),
    }


def _ignoring_process_tree(address: str, tmp: Path) -> dict[str, Any]:
    """process runtime: a task that ignores SIGTERM and forks a child that does too."""
    put("local", address, "in", ["i0", "i1"])
    code = (
        "import os,signal,sys,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork()==0: time.sleep(120); os._exit(0)\n"
        "open(sys.argv[2]+'.started','w').close(); time.sleep(120)\n"
    )
    env = pilot_env("local", address, "in", "out", tmp, task_args(code),
                    EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_SHUTDOWN_GRACE="1")
    pilot = PilotProcess(env, tmp)
    marker = str(tmp / "ewms-pilot-data")
    assert wait_until(lambda: len(list(Path(marker).rglob("*.started"))) == 2, 30), pilot.log()[-3000:]
    running = len(processes_mentioning(marker))
    pilot.send(signal.SIGTERM)
    rc = pilot.wait(60)
    took = pilot.since_signal()
    survivors = processes_mentioning(marker)
    for pid in survivors:  # never leave them running, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    return {
        "events": ["i0", "i1"], "rc": rc, "took": took, "log": pilot.log(), "running": running,
        "survivors": survivors, "outs": [], "left": sorted(take_data("local", address, "in", idle=0.5)),
    }


# --------------------------------------------------------------------------- tests


def _verdict(checks: dict[str, bool]) -> str:
    failed = [k for k, ok in checks.items() if not ok]
    return "held" if not failed else "FAILED: " + "; ".join(failed)


def test_sigterm_with_running_containers(
    rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    """grace 1: the 3 s tasks are stopped and nacked; grace 10: they finish and publish."""
    graces = (1, 10)
    for g in graces:
        (tmp_path / f"g{g}").mkdir()
    runs = _side_by_side({
        str(g): functools.partial(
            _evict, rabbitmq_address, new_queue("i"), new_queue("o"), tmp_path / f"g{g}", podman_image, g
        )
        for g in graces
    })
    problems = []
    for g in graces:
        r = runs[str(g)]
        finished = ["f0", "f1"] if g < 3 else ["f0", "f1", "s0", "s1"]
        tally = Tally.of(r["events"], [f"out:{x}" for x in r["outs"] + r["left"]], lambda o: o[4:])
        checks = {
            "exit 6": r["rc"] == EVICTED,
            f"exit within grace + {STOP_SLACK:g}s": r["took"] <= g + STOP_SLACK,
            "no container left": r["containers"] == [],
            "finished results published exactly once": r["outs"] == finished,
            "the rest back in the queue": r["left"] == sorted(set(r["events"]) - set(finished)),
            "logged the signal": "received SIGTERM" in r["log"],
        }
        record.add(
            case=f"SIGTERM, 3 s podman tasks running, grace {g}s",
            broker="rabbitmq", point="2 tasks 0-1 s into their 3 s",
            events=len(r["events"]), outputs=len(r["outs"]), duplicates=tally.duplicates, lost=len(tally.lost),
            detail=f"exit {r['rc']} after {r['took']:.1f}s; published {r['outs']}; back in queue "
            f"{len(r['left'])}; containers left {len(r['containers'])}",
            verdict=_verdict(checks),
        )
        if failed := [k for k, ok in checks.items() if not ok]:
            problems.append(f"grace {g}: {failed} (took {r['took']:.1f}s)\n{r['log'][-2000:]}")
    assert not problems, "\n".join(problems)


def test_hurry_and_stubborn_tasks(
    request: pytest.FixtureRequest, rabbitmq_address: str, new_queue: Any, tmp_path: Path, podman_image: str, record: Any
) -> None:
    """A second SIGTERM hurries; tasks ignoring SIGTERM (podman; process + child) are killed in time."""
    for d in ("hurry", "podman", "process"):
        (tmp_path / d).mkdir()
    runs = _side_by_side({
        "hurry": lambda: _hurry(rabbitmq_address, new_queue("i"), new_queue("o"), tmp_path / "hurry", podman_image),
        "podman": lambda: _ignoring_podman(rabbitmq_address, new_queue("i"), new_queue("o"), tmp_path / "podman", podman_image),
        "process": lambda: _ignoring_process_tree(broker_address(request, "local", tmp_path / "process"), tmp_path / "process"),
    })
    h = runs["hurry"]
    hc = {
        "exit 6": h["rc"] == EVICTED,
        f"exit within 1 + {STOP_SLACK:g}s of the first SIGTERM": h["took"] <= 1 + STOP_SLACK,
        "logged the hurry": "second stop signal" in h["log"],
        "no container left": h["containers"] == [],
        "events back in the queue": h["outs"] == [] and h["left"] == h["events"],
    }
    record.add(
        case="second SIGTERM 1 s after the first (grace 30 s, 60 s podman tasks)",
        broker="rabbitmq", point="both tasks running",
        events=3, outputs=len(h["outs"]), duplicates=0, lost=3 - len(h["left"]) - len(h["outs"]),
        detail=f"exit {h['rc']} {h['took']:.1f}s after the first SIGTERM; containers left {len(h['containers'])}",
        verdict=_verdict(hc),
    )

    p = runs["podman"]
    pc = {
        "exit 6": p["rc"] == EVICTED,
        f"exit within grace + {STOP_SLACK:g}s": p["took"] <= 1 + STOP_SLACK,
        "no container left": p["containers"] == [],
        "event back in the queue": p["left"] == ["i0"],
    }
    record.add(
        case="SIGTERM, podman task ignores SIGTERM (grace 1 s)",
        broker="rabbitmq", point="task running",
        events=1, outputs=0, duplicates=0, lost=1 - len(p["left"]),
        detail=f"exit {p['rc']} {p['took']:.1f}s after SIGTERM; containers left {len(p['containers'])}",
        verdict=_verdict(pc),
    )

    t = runs["process"]
    tc = {
        "exit 6": t["rc"] == EVICTED,
        f"exit within grace + {STOP_SLACK:g}s": t["took"] <= 1 + STOP_SLACK,
        "2 tasks + 2 children were running": t["running"] == 4,
        "no process left": t["survivors"] == [],
        "events back in the queue": t["left"] == ["i0", "i1"],
    }
    record.add(
        case="SIGTERM, process task + child both ignore SIGTERM (grace 1 s)",
        broker="local", point="2 tasks running",
        events=2, outputs=0, duplicates=0, lost=2 - len(t["left"]),
        detail=f"exit {t['rc']} {t['took']:.1f}s after SIGTERM; {t['running']} processes before, "
        f"{len(t['survivors'])} after",
        verdict=_verdict(tc),
    )
    problems = [
        f"{name}: {_verdict(c)} (took {r['took']:.1f}s)"
        for name, c, r in (("hurry", hc, h), ("podman ignoring SIGTERM", pc, p), ("process tree ignoring SIGTERM", tc, t))
        if _verdict(c) != "held"
    ]
    assert not problems, "\n".join(problems)
