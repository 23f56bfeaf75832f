"""`python -m benchmarks.compare --smoke`: the benchmark harness still runs end to end.

Runs every one of our scenarios once with N=5 real events (RabbitMQ, podman,
the local queue) and checks what a reader of the report relies on: a table
with every row of ours, every run ok and every output verified by value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS_ROWS = {
    "ours-podman-c1": "ours, podman, concurrency 1",
    "ours-podman-c4": "ours, podman, concurrency 4 (defaults)",
    "ours-process-rabbitmq-c4": "ours, process runtime, RabbitMQ, concurrency 4",
    "ours-process-local-c4": "ours, process runtime, local queue, concurrency 4",
}
SMOKE_N = 5


@pytest.mark.rabbitmq
@pytest.mark.podman
def test_smoke_benchmark_reports_every_row_of_ours_verified(
    rabbitmq_address: str, podman_image: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--smoke", "--image", podman_image,
         "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"

    report = (tmp_path / "smoke.md").read_text()
    assert report.strip() in res.stdout  # printed and written alike
    for key, label in OURS_ROWS.items():
        row = next((ln for ln in report.splitlines() if ln.startswith(f"| {label} |")), None)
        assert row is not None, f"no table row for {key} in:\n{report}"
        assert f"1/1 runs ok, {SMOKE_N}/{SMOKE_N} outputs verified" in row, row
    assert "warm mode" in report  # the warm rows are there, labelled (run only with --with-warm)

    data = json.loads((tmp_path / "smoke.json").read_text())
    for key in OURS_ROWS:
        runs = data["runs"][key]
        assert len(runs) == 1, key
        run = runs[0]
        assert run["ok"] and run["verified"] == run["n"] == SMOKE_N, run
        assert run["wall_s"] > 0 and run["peak_rss_mib"] > 0 and run["cpu_s"] > 0, run
        assert run["exit_after_last_s"] >= 0, run
    assert not any(k.startswith("ref-") for k in data["runs"]), "smoke mode must not run 1.0.5"
    print(f"smoke benchmark took {elapsed:.0f} s")
