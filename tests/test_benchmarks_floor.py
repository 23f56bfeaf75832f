"""The bare warm loop (`benchmarks/warmloop.py`) does, per event, the work the pilot must do.

The report judges the warm local-queue row against it ("ours = N% of it"), so
the comparison is honest only if the loop leaves out nothing of the contract:
each result published and its event acked (nothing left in the queue file),
a journal line per event, and the task files removed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from benchmarks import scenarios as S
from benchmarks.runs import Setup, run_pilot

N = 40


async def test_the_bare_warm_loop_publishes_acks_journals_and_cleans_up_each_event(tmp_path: Path) -> None:
    setup = Setup(n=N, incoming_timeout=1, image="", containers_conf=tmp_path / "none.conf",
                  ours_python=sys.executable, ref_python=None, shim_dir=None, workdir=tmp_path)
    result = await run_pilot(S.WARM_LOOP, setup, 0)

    assert result.ok, result.error
    assert result.verified == N  # every result, checked by value
    run_dir = Path(result.log_dir)
    with sqlite3.connect(run_dir / "queue.sqlite") as db:  # every event acked, every result consumed
        assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    loop_dir = run_dir / "data" / "warmloop"
    lines = (loop_dir / "journal.jsonl").read_text().splitlines()
    assert len(lines) == N and {json.loads(line)["outcome"] for line in lines} == {"ok"}
    assert list((loop_dir / "task-io").iterdir()) == []
