"""A runtime's helper commands (image check, pull, stop, remove): `runtimes/commands.py`.

Real processes (`sh`), no mocks: what the pilot sees of a helper is its exit
code and its output, and whether it waited for it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ewms_pilot.runtimes.commands import run_command


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_helper_that_leaves_a_child_on_its_pipes_is_done_at_its_exit(tmp_path: Path) -> None:
    """Before: the pilot waited for the pipes to close, i.e. for the child, so a helper that had
    exited 3 after printing its reason was reported as overrunning its time bound (and killed)."""
    pid_file = tmp_path / "child"
    script = f"sleep 60 & echo $! > {pid_file}; echo out; echo 'the reason' >&2; exit 3"
    result = await run_command(["sh", "-c", script], timeout=20)
    child = int(pid_file.read_text())
    try:
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "the reason\n")
        assert result.reason() == "the reason"
    finally:
        os.kill(child, 9)


async def test_all_a_helpers_output_is_read_once_it_has_exited() -> None:
    """Its output is read whole, however large, even though the exit comes before the last read."""
    code = "import sys; sys.stdout.write('x' * 3_000_000); sys.stderr.write('y' * 100_000 + '\\nlast line')"
    result = await run_command([sys.executable, "-c", code], timeout=20)
    assert result.ok
    assert result.stdout == "x" * 3_000_000
    assert result.stderr.endswith("\nlast line") and len(result.stderr) == 100_010


async def test_a_helper_over_its_time_bound_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    result = await run_command(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=1)
    assert result.returncode is None
    assert result.reason() == "sh did not finish within 1s"
    child = int(pid_file.read_text())
    for _ in range(100):  # killed with its group; reaped by init meanwhile
        if not _alive(child):
            break
        await asyncio.sleep(0.05)
    assert not _alive(child)
