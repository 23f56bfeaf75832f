"""The per-task journal `<data dir parent>/ewms-pilot-tasks.jsonl`: one JSON line per event outcome.

It lives beside `ewms-pilot-data/`, not in it: 1.x's layout (every entry of
the data dir is a directory) is what site tools walk. Appended as each event
ends (by the recorder's thread, `recorder.py`: one write, no buffering, so a
crash keeps what was done); several pilots may share the file. A line a
crashed pilot left half-written is skipped with one warning, and the next
record starts on a fresh line, so one bad line costs one record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config.redact import scrub
from ..tasks.io import write_all

LOGGER = logging.getLogger("ewms_pilot")

JOURNAL_NAME = "ewms-pilot-tasks.jsonl"


def journal_path(data_dir_parent: Path) -> Path:
    """Where the journal of pilots using `data_dir_parent` lives."""
    return data_dir_parent / JOURNAL_NAME


class Journal:
    """Appends records to the journal file; thread-safe, one line per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record; first end a line another pilot left unterminated."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Write records in one append (one line each); first end a line another pilot left unterminated."""
        # errors may quote addresses
        line = "".join(scrub(json.dumps(record, default=str)) + "\n" for record in records).encode()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                write_all(fd, line)
            finally:
                os.close(fd)

    def read(self, pilot_id: str | None = None) -> list[dict[str, Any]]:
        """Records written so far, all or one pilot's; unreadable lines are skipped with one warning."""
        return list(self.records(pilot_id))

    def records(self, pilot_id: str | None = None) -> Iterator[dict[str, Any]]:
        """`read`, one record at a time: a long journal is streamed, never held whole in memory."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        bad = 0
        with f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if not isinstance(record, dict):
                    bad += 1
                    continue
                if pilot_id is None or record.get("pilot_id") == pilot_id:
                    yield record
        if bad:
            LOGGER.warning(f"journal {self.path}: skipped {bad} unreadable line(s)")

    def runtimes(self, pilot_id: str) -> list[float]:
        """end - start of each of one pilot's records (what the exit summary's statistics need)."""
        return [
            r["end"] - r["start"] for r in self.records(pilot_id)
            if isinstance(r.get("end"), (int, float)) and isinstance(r.get("start"), (int, float))
        ]
