"""What the pilot records about events is what happened (issue 10 items 5c and 7).

The real scheduler and handler on the in-memory broker (a real queue
implementation with the local queue's semantics) and real task processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from memory_pilot import ECHO, FAIL, journal, memory_config, new_queues, put, take

from ewms_pilot.pilot.journal import journal_path
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause
from ewms_pilot.queues import codec
from ewms_pilot.queues.base import Settlement

CASE = "what is recorded about an event, in-memory broker"
#: what a SIGKILL in the middle of an append leaves at the end of the journal
TRUNCATED = '{"task_id": "aaa", "pilot_id": "old", "event_id": "1", "start": 1.0, "end": 2.0, "resu'


def test_an_event_dropped_without_a_dead_letter_queue_is_counted_as_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record: Any
) -> None:
    """Item 5c: with no EWMS_PILOT_QUEUE_DEADLETTER, events dropped at their last attempt were
    counted as "dead-lettered" (summary, chirp)."""
    q = new_queues()
    cfg = memory_config(q, tmp_path, FAIL, EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false")
    assert not cfg.queue_deadletter

    async def main() -> tuple[Pilot, list[Any]]:
        await put(cfg, "e1", headers={codec.ATTEMPTS: cfg.max_deliveries - 1})  # its last attempt
        pilot = Pilot(cfg)
        await asyncio.wait_for(pilot.run(), 60)
        return pilot, await take(cfg, q.incoming)

    pilot, left = asyncio.run(main())
    summary = capsys.readouterr().out
    [rec] = journal(tmp_path)
    t = pilot.tally
    record.add(
        case=CASE, broker="memory", point="last attempt fails, no dead-letter queue", events=1, outputs=0,
        duplicates=0, lost=0,
        detail=f"journal: {rec['result']}, {rec['settlement']}, dead_lettered {rec['dead_lettered']}; summary: "
        f"dead-lettered {t.dead_lettered}, dropped {t.dropped} (dropped as configured, with an error line)",
    )
    assert (rec["result"], rec["settlement"], rec["dead_lettered"]) == ("failed", "dropped", False)
    assert (t.dead_lettered, t.dropped, t.settlements[Settlement.DROPPED]) == (0, 1, 1)
    assert "dead-lettered 0" in summary and "dropped 1" in summary
    assert left == []


def test_a_pilot_after_a_crashed_one_ends_normally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, record: Any
) -> None:
    """Item 7: one corrupt line in the journal crashed every later pilot at exit (traceback, exit 1,
    no summary). The next pilot's summary is printed and its record readable, on a line of its own;
    the data dir holds directories only (1.x's layout)."""
    journal_path(tmp_path).write_text(TRUNCATED)
    q = new_queues()
    cfg = memory_config(q, tmp_path, ECHO)

    async def main() -> StopCause:
        await put(cfg, "e1")
        return (await Pilot(cfg).run()).cause

    with caplog.at_level(logging.WARNING):
        cause = asyncio.run(main())
    out = capsys.readouterr().out
    lines = journal_path(tmp_path).read_text().splitlines()
    skipped = [r.getMessage() for r in caplog.records if "unreadable line" in r.getMessage()]
    record.add(
        case=CASE, broker="memory", point="journal ends in a half-written line", events=1,
        outputs=int("succeeded 1" in out), duplicates=0, lost=0,
        detail=f"ended: {cause.value}; summary printed: {'received 1' in out}; "
        f"{len(skipped)} warning(s) about the bad line; new record on its own line: "
        f"{len(lines) == 2 and lines[0] == TRUNCATED}",
    )
    assert cause == StopCause.QUEUE_EMPTY
    assert "received 1  succeeded 1" in out and "task runtime (s): count 1" in out
    assert lines[0] == TRUNCATED and json.loads(lines[1])["settlement"] == "acked"  # nothing rewritten
    assert len(skipped) == 1
    assert all(p.is_dir() for p in (tmp_path / "ewms-pilot-data").iterdir())
