"""The task journal survives a crashed pilot's half-written line (issue 10 item 7, issue 12 item 5).

A whole pilot run after such a line: tests/faults/test_faults_records.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from memory_pilot import ECHO, memory_config, new_queues, put

from ewms_pilot.config.model import PilotConfig
from ewms_pilot.pilot.journal import Journal, journal_path
from ewms_pilot.pilot.scheduler import Pilot

TRUNCATED = '{"task_id": "aaa", "pilot_id": "old", "event_id": "1", "start": 1.0, "end": 2.0, "resu'


def test_append_after_a_truncated_line_starts_a_fresh_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = journal_path(tmp_path)
    path.write_text(json.dumps({"task_id": "ok", "pilot_id": "old"}) + "\n" + TRUNCATED)
    j = Journal(path)
    j.append({"task_id": "new", "pilot_id": "p"})
    lines = path.read_text().splitlines()
    assert lines[-2] == TRUNCATED and json.loads(lines[-1]) == {"task_id": "new", "pilot_id": "p"}
    with caplog.at_level(logging.WARNING):
        records = j.read()
    assert [r["task_id"] for r in records] == ["ok", "new"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 unreadable line" in warnings[0] and str(path) in warnings[0]


def test_an_in_process_pilot_leaves_the_callers_umask_as_it_was(tmp_path: Path) -> None:
    """The pilot's files are owner-only, but a library call must not change its caller's process."""
    cfg = memory_config(new_queues(), tmp_path, ECHO)
    before = os.umask(0o022)
    try:
        asyncio.run(_run_one(cfg))
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
    assert stat.S_IMODE(cfg.data_dir.stat().st_mode) == 0o700  # the pilot's own files stay private


async def _run_one(cfg: PilotConfig) -> None:
    await put(cfg, "e1")
    await Pilot(cfg).run()
