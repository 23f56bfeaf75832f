"""The benchmark report compares a row only with a bound that does the same work (issue 15 review)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from benchmarks import compare

RESULTS = Path(compare.__file__).parent / "results"


def _overhead_cells(md: str) -> dict[str, str]:
    """scenario label -> its "per-task overhead over bare (ms)" cell, from the per-row table."""
    lines = md.splitlines()
    [head] = [i for i, line in enumerate(lines) if line.startswith("| scenario | status |")]
    col = [c.strip() for c in lines[head].split("|")].index("per-task overhead over bare (ms)")
    rows = (line for line in lines[head + 2 :] if line.startswith("| "))
    cells: dict[str, str] = {}
    for line in rows:
        parts = [c.strip() for c in line.split("|")]
        if len(parts) <= col:
            break
        cells[parts[1]] = parts[col]
    return cells


def test_warm_rows_get_no_one_shot_bare_bound(tmp_path: Path) -> None:
    """A warm worker against one-shot bare runs gave a meaningless -114.9 ms "overhead"."""
    shutil.copy(RESULTS / "issue15-1round.json", tmp_path / "r.json")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert compare.main(["--render-only", "--stem", "r", "--results-dir", str(tmp_path)]) == 0
    cells = _overhead_cells((tmp_path / "r.md").read_text())
    assert cells["ours, podman, concurrency 4, warm mode"] == "—"
    assert cells["ours, process runtime, local queue, concurrency 4, warm mode"] == "—"
    # warm RabbitMQ keeps its bound: the oms-mqclient loop does the same broker work without the pilot
    assert cells["ours, process runtime, RabbitMQ, concurrency 4, warm mode"] not in ("—", "")
    # one-shot rows keep theirs
    assert cells["ours, podman, concurrency 4 (defaults)"] not in ("—", "")
