"""The pilot's side of the warm-worker protocol: one JSON object per line, both ways.

Request (pilot → worker stdin):  {"id": "<task id>", "infile": "<path>", "outfile": "<path>"}
Answer  (worker stdout → pilot): {"id": "<task id>", "ok": true}
                                 {"id": "<task id>", "ok": false, "error": "<text>"}
Any other stdout line is noise (a library printing): logged, never an answer.
"""

from __future__ import annotations

import dataclasses as dc
import json

#: env var telling a task it runs as a warm worker (value "warm")
ENV_TASK_MODE = "EWMS_TASK_MODE"
WARM = "warm"

#: longest error text kept from an answer (it becomes a one-line failure reason)
MAX_ERROR_CHARS = 2000


@dc.dataclass(frozen=True)
class Answer:
    """A worker's verdict on one event."""

    id: str
    ok: bool
    error: str | None = None


def encode_request(task_id: str, infile: str, outfile: str) -> bytes:
    """One request line; ASCII-only (non-ASCII escaped), so the worker's locale cannot garble it."""
    line = json.dumps({"id": task_id, "infile": infile, "outfile": outfile}, ensure_ascii=True)
    return line.encode("ascii") + b"\n"


def parse_answer(line: str) -> Answer | None:
    """The answer on `line`, or None when the line is not a protocol answer (noise)."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # a deeply nested noise line is noise too
        return None
    if not isinstance(obj, dict):
        return None
    task_id, ok = obj.get("id"), obj.get("ok")
    if not isinstance(task_id, str) or not isinstance(ok, bool):
        return None
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error)
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    return Answer(task_id, ok, error)
