"""The per-task journal `ewms-pilot-data/tasks.jsonl`: one JSON line per finished task.

Written as each task ends (appended and flushed, so a crash keeps what was
done), it lets an operator see afterwards what the pilot did; the exit
summary's statistics are computed from the same records.
"""

from __future__ import annotations

import dataclasses as dc
import json
import threading
from pathlib import Path
from typing import Any

from ..config.redact import scrub

JOURNAL_NAME = "tasks.jsonl"


@dc.dataclass
class TaskRecord:
    """What one task did; filled in as it runs."""

    task_id: str
    pilot_id: str
    event_id: str
    delivery_count: int | None
    start: float  # epoch seconds
    end: float | None = None
    exit_code: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    progress: float | None = None  # last `ewms_progress:` seen
    status: str | None = None  # last `ewms_status:` seen
    error: str | None = None
    error_type: str | None = None
    published: bool = False
    acked: bool = False
    nacked: bool = False
    dead_lettered: bool = False

    @property
    def runtime(self) -> float:
        return (self.end or self.start) - self.start


class Journal:
    """Appends records to the journal file; thread-safe, one line per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: TaskRecord) -> None:
        line = scrub(json.dumps(dc.asdict(record), default=str)) + "\n"  # errors may quote addresses
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    def read(self, pilot_id: str | None = None) -> list[dict[str, Any]]:
        """Records written so far, all or one pilot's (several pilots may share a data dir)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        return [r for r in records if pilot_id is None or r.get("pilot_id") == pilot_id]
