"""Several whole pilot processes sharing one local-queue database (the laptop / replay case)."""

from __future__ import annotations

import asyncio
import os
import pty
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from local_helpers import put_local, take_all_local
from pilot_proc import base_env, start_pilot, wait_pilot

COPY = shlex.join(["cp", "<<INFILE>>", "<<OUTFILE>>"])




def _env(db: Path, tmp: Path, **extra: str) -> dict[str, str]:
    return base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp,
        task_args=COPY, extra={"EWMS_PILOT_MAX_CONCURRENT_TASKS": "4", "EWMS_PILOT_CL_LOG": "INFO", **extra},
    )


@pytest.mark.parametrize("pilots", [2, 4])
def test_pilots_share_one_database_and_drain_exactly_once(tmp_path: Path, pilots: int) -> None:
    db = tmp_path / "q.db"
    events = [f"event-{i:03d}" for i in range(500)]
    asyncio.run(put_local(db, "in", events))
    procs = [start_pilot(_env(db, tmp_path / f"p{i}")) for i in range(pilots)]
    runs = [wait_pilot(p, 240) for p in procs]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs if r.returncode]
    out = asyncio.run(take_all_local(db, "out"))
    assert Counter(out) == Counter(events)  # every output present exactly once
    worked = [int(r.stdout.split("received ")[1].split()[0]) for r in runs]
    assert sum(worked) == 500 and sum(1 for w in worked if w > 0) >= 2  # the work was shared


def test_sigkill_of_one_pilot_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    events = [f"e{i}" for i in range(120)]
    asyncio.run(put_local(db, "in", events))
    slow = shlex.join([sys.executable, "-c", "import shutil,sys,time; time.sleep(0.1); shutil.copy(sys.argv[1], sys.argv[2])", "<<INFILE>>", "<<OUTFILE>>"])
    victim = start_pilot({**_env(db, tmp_path / "a"), "EWMS_PILOT_TASK_ARGS": slow})
    survivor = start_pilot({**_env(db, tmp_path / "b"), "EWMS_PILOT_TASK_ARGS": slow})
    time.sleep(2.5)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    run = wait_pilot(survivor, 240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = Counter(asyncio.run(take_all_local(db, "out")))
    assert set(out) == set(events)  # losses never
    duplicates = sum(n - 1 for n in out.values())
    print(f"duplicates after SIGKILL: {duplicates}")
    assert duplicates <= 4  # at most the victim's in-flight tasks were redone


def test_status_line_updates_in_place_on_a_tty(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    asyncio.run(put_local(db, "in", [f"e{i}" for i in range(30)]))
    slow = shlex.join([sys.executable, "-c", "import shutil,sys,time; time.sleep(0.2); shutil.copy(sys.argv[1], sys.argv[2])", "<<INFILE>>", "<<OUTFILE>>"])
    env = {**_env(db, tmp_path, EWMS_PILOT_CL_LOG="WARNING"), "EWMS_PILOT_TASK_ARGS": slow}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ewms_pilot", "run", "--progress-interval", "0.2"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(60) == 0
    text = b"".join(chunks).decode(errors="replace")
    updates = text.count("\r\x1b[K")
    assert updates >= 3, text[-2000:]
    assert "received 30 | running 0 | done 30 | failed 0" in text


def test_status_line_is_a_periodic_log_line_otherwise(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    asyncio.run(put_local(db, "in", [f"e{i}" for i in range(10)]))
    slow = shlex.join([sys.executable, "-c", "import shutil,sys,time; time.sleep(0.3); shutil.copy(sys.argv[1], sys.argv[2])", "<<INFILE>>", "<<OUTFILE>>"])
    env = {**_env(db, tmp_path, EWMS_PILOT_CL_LOG="INFO"), "EWMS_PILOT_TASK_ARGS": slow}
    run = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "run", "--progress-interval", "0.3"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0
    lines = [ln for ln in run.stderr.splitlines() if "ewms_pilot.progress" in ln]
    assert len(lines) >= 2 and "\r" not in run.stderr
    assert all("received" in ln and "tasks/s" in ln for ln in lines)


def test_demo_script_runs_end_to_end() -> None:
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(["bash", str(repo / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 6
    # one result per demo sentence, counted by the example task (examples/tasks/word_count.py)
    assert sorted(r["words"] for r in results) == [3, 5, 6, 9, 10, 12]
