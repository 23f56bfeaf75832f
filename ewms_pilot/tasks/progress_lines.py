"""Progress and status lines a task prints while it runs (`ewms_progress: 40`, `ewms_status: text`).

The `openjd_progress:` / `openjd_status:` spellings of Open Job Description are
accepted too, so a task written for either reports to both.
"""

from __future__ import annotations

import dataclasses as dc
import re

_LINE = re.compile(r"^\s*(?:ewms|openjd)_(progress|status)\s*:\s*(.*?)\s*$")


@dc.dataclass(frozen=True)
class ProgressUpdate:
    """One parsed line: exactly one of `progress` (0-100) or `status` is set."""

    progress: float | None = None
    status: str | None = None


class MalformedProgress(ValueError):
    """A progress line whose value is not a number from 0 to 100."""


def parse_progress_line(line: str) -> ProgressUpdate | None:
    """The update a line carries; None for ordinary output; `MalformedProgress` for a bad value."""
    m = _LINE.match(line)
    if m is None:
        return None
    kind, value = m.groups()
    if kind == "status":
        return ProgressUpdate(status=value[:500])
    try:
        pct = float(value.rstrip("%"))
    except ValueError:
        raise MalformedProgress(f"progress value {value[:50]!r} is not a number") from None
    if not 0 <= pct <= 100:
        raise MalformedProgress(f"progress value {pct:g} is outside 0-100")
    return ProgressUpdate(progress=pct)
