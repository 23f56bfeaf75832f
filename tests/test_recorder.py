"""The recorder: each event's journal line, then its task files' removal, off the event loop (issue 15).

The handler no longer waits for either; what it promises instead: lines never
wait behind a long removal, a line comes before its own event's removal (a
full disk: after), the pilot's exit waits for everything handed over, and a
handler that outlives the pilot's close is still recorded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from memory_pilot import ECHO, journal, memory_config, new_queues, put, take

from ewms_pilot.pilot.journal import Journal, journal_path
from ewms_pilot.pilot.recorder import Recorder
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.tasks.taskdir import TaskDir, warm_root

LOG = logging.getLogger("test")


def _task_dir(tmp_path: Path, task_id: str) -> TaskDir:
    tdir = TaskDir.layout(tmp_path / "ewms-pilot-data", task_id, ".in", ".out")
    tdir.make()
    tdir.infile.write_text("x")
    return tdir


def _lines(tmp_path: Path) -> list[str]:
    path = journal_path(tmp_path)
    return [r["task_id"] for r in journal(tmp_path)] if path.exists() else []


async def _until(ok: Any, what: str) -> None:
    """Poll `ok()` for up to 30 s (a busy machine); fail naming `what`."""
    for _ in range(3000):
        if ok():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 30 s: {what}")


def _hold_removals(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event, list[str]]:
    """TaskDir.remove waits (in the recorder's thread) until `opened`; `removed` lists task ids in order."""
    reached, opened, removed = threading.Event(), threading.Event(), []
    remove = TaskDir.remove

    def held(self: TaskDir) -> None:
        reached.set()
        assert opened.wait(30)
        remove(self)
        removed.append(self.files_at.name)

    monkeypatch.setattr(TaskDir, "remove", held)
    return reached, opened, removed


def test_a_line_does_not_wait_behind_another_events_long_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, opened, removed = _hold_removals(monkeypatch)

    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        try:
            rec.record({"task_id": "a"}, _task_dir(tmp_path, "a"), LOG)
            assert await asyncio.to_thread(reached.wait, 30)  # a's removal is under way, and held
            rec.record({"task_id": "b"}, None, LOG)
            await _until(lambda: _lines(tmp_path) == ["a", "b"], "b's line while a's removal waits")
            assert removed == []
        finally:
            opened.set()
            assert await rec.close(30)
        assert removed == ["a"] and not (tmp_path / "ewms-pilot-data" / "a").exists()

    asyncio.run(main())


def test_a_warm_events_files_go_with_its_line_and_a_planted_tree_does_not_hold_back_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warm events' two files are unlinked on the lines lane; a tree at one's name goes to the removals lane."""
    reached, opened, removed = _hold_removals(monkeypatch)
    root = warm_root(tmp_path / "ewms-pilot-data", "pilot1")
    planted, plain = (TaskDir.in_shared(root, t, ".in", ".out") for t in ("a", "b"))
    for tdir in (planted, plain):
        tdir.make()
        tdir.infile.write_text("x")
    plain.outfile.write_text("y")
    (planted.outfile / "deep").mkdir(parents=True)  # the worker made a tree at its outfile's name
    (planted.outfile / "deep" / "f").write_text("z")

    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        try:
            rec.record({"task_id": "a"}, planted, LOG)
            assert await asyncio.to_thread(reached.wait, 30)  # a's tree is on the removals lane, held
            rec.record({"task_id": "b"}, plain, LOG)
            await _until(lambda: not plain.infile.exists() and not plain.outfile.exists(), "b's files gone")
            assert _lines(tmp_path) == ["a", "b"] and removed == []
        finally:
            opened.set()
            assert await rec.close(30)
        assert removed == ["task-io"] and sorted(p.name for p in root.joinpath("task-io").iterdir()) == []

    asyncio.run(main())


def test_close_waits_for_every_line_and_removal_handed_over(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        dirs = [_task_dir(tmp_path, f"t{i:03d}") for i in range(200)]
        for i, tdir in enumerate(dirs):
            rec.record({"task_id": f"t{i:03d}"}, tdir, LOG)
        assert await rec.close(30)
        assert _lines(tmp_path) == [f"t{i:03d}" for i in range(200)]  # in the order handed over
        assert [d for d in dirs if d.files_at.exists()] == []

    asyncio.run(main())


def test_a_record_after_close_is_still_written(tmp_path: Path) -> None:
    """A handler the shutdown gave up waiting for ends after the close: its line must not be lost."""
    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        assert await rec.close(30)
        tdir = _task_dir(tmp_path, "late")
        rec.record({"task_id": "late"}, tdir, LOG)
        await _until(lambda: _lines(tmp_path) == ["late"] and not tdir.files_at.exists(), "the late record")

    asyncio.run(main())


def test_the_line_comes_before_its_removal_except_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[str]] = {}  # task id -> journal lines present when its removal began
    remove = TaskDir.remove

    def noting(self: TaskDir) -> None:
        seen[self.files_at.name] = _lines(tmp_path)
        remove(self)

    monkeypatch.setattr(TaskDir, "remove", noting)

    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        rec.record({"task_id": "ok"}, _task_dir(tmp_path, "ok"), LOG)
        assert await rec.close(30)
        rec2 = Recorder(Journal(journal_path(tmp_path)))
        rec2.start()
        rec2.record({"task_id": "full"}, _task_dir(tmp_path, "full"), LOG, free_first=True)
        assert await rec2.close(30)

    asyncio.run(main())
    assert seen == {"ok": ["ok"], "full": ["ok"]}  # a full disk frees the space first, then the line
    assert _lines(tmp_path) == ["ok", "full"]


def test_a_full_disks_removal_holds_back_only_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reached, opened, removed = _hold_removals(monkeypatch)

    async def main() -> None:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        try:
            freed = rec.record({"task_id": "full"}, _task_dir(tmp_path, "full"), LOG, free_first=True)
            assert freed is not None
            assert await asyncio.to_thread(reached.wait, 30)  # its removal is under way, and held
            assert rec.record({"task_id": "other"}, None, LOG) is None  # nothing to wait for
            await _until(lambda: _lines(tmp_path) == ["other"], "the other event's line")
            assert not freed.done()
        finally:
            opened.set()
        await asyncio.wait_for(freed, 30)  # the full disk's slot: free once its files are gone and its line is in
        assert removed == ["full"] and _lines(tmp_path) == ["other", "full"]
        assert await rec.close(30)

    asyncio.run(main())


def test_a_journal_that_cannot_be_written_is_a_warning_and_the_files_still_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal_path(tmp_path).mkdir(parents=True)  # a directory where the journal file should be

    async def main() -> TaskDir:
        rec = Recorder(Journal(journal_path(tmp_path)))
        rec.start()
        tdir = _task_dir(tmp_path, "t1")
        rec.record({"task_id": "t1"}, tdir, LOG)
        assert await rec.close(30)
        return tdir

    with caplog.at_level(logging.WARNING):
        tdir = asyncio.run(main())
    assert not tdir.files_at.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not write the journal record" in warnings[0], warnings


def test_a_slow_journal_does_not_hold_back_the_next_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one task slot, a journal write that hangs used to keep the slot (and every later event) waiting."""
    held, opened = threading.Event(), threading.Event()
    append_many = Journal.append_many

    def slow(self: Journal, records: list[dict[str, Any]]) -> None:
        held.set()
        assert opened.wait(60)
        append_many(self, records)

    monkeypatch.setattr(Journal, "append_many", slow)
    queues = new_queues()
    cfg = memory_config(queues, tmp_path, ECHO, EWMS_PILOT_MAX_CONCURRENT_TASKS="1", EWMS_PILOT_PREFETCH="1")

    async def main() -> list[str]:
        await put(cfg, "e1", "e2", "e3")
        pilot = Pilot(cfg)
        run = asyncio.ensure_future(pilot.run())
        try:
            assert await asyncio.to_thread(held.wait, 30)  # the first line's write hangs
            out: list[str] = []

            async def published() -> bool:
                out.extend(d.data for d in await take(cfg, queues.outgoing))
                return len(out) == 3 or run.done()

            async with asyncio.timeout(60):  # the other two events are run and published meanwhile
                while not await published():
                    await asyncio.sleep(0.05)
            assert not run.done()
            return out
        finally:
            opened.set()
            await asyncio.wait_for(run, 60)

    out = asyncio.run(main())
    assert sorted(out) == ["out:e1", "out:e2", "out:e3"]
    assert [(r["result"], r["settlement"]) for r in journal(tmp_path)] == [("succeeded", "acked")] * 3


def test_the_exit_summary_counts_a_line_that_was_slow_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary's runtimes come from the journal: the pilot's exit waits for its lines first."""
    append_many = Journal.append_many

    def slow(self: Journal, records: list[dict[str, Any]]) -> None:
        time.sleep(1.0)
        append_many(self, records)

    monkeypatch.setattr(Journal, "append_many", slow)
    queues = new_queues()
    cfg = memory_config(queues, tmp_path, ECHO)

    async def main() -> None:
        await put(cfg, "e1")
        await Pilot(cfg).run()

    asyncio.run(main())
    assert "task runtime (s): count 1 " in capsys.readouterr().out
