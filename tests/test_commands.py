"""A runtime's helper commands (image check, pull, stop, remove): `runtimes/commands.py`.

Real processes (`sh`), no mocks: what the pilot sees of a helper is its exit
code and its output, and whether it waited for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ewms_pilot.cli.main import _fast_child_watcher
from ewms_pilot.runtimes import commands
from ewms_pilot.runtimes.commands import CommandResult, run_command


def _state(pid: int) -> str:
    """Its state letter in /proc (`Z`: dead, not yet reaped), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _alive(pid: int) -> bool:
    return _state(pid) not in ("Z", "gone")


async def _pid_in(file: Path) -> int:
    """The pid a helper's script wrote to `file`, once it has."""
    for _ in range(400):
        if file.exists() and file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    return int(file.read_text())


@pytest.fixture
def pilots_child_watcher() -> Iterator[None]:
    """The child watcher the pilot's command line sets on Python 3.11 (`cli.main`); 3.12+ picks it itself."""
    if sys.version_info >= (3, 12):
        yield
        return
    before = asyncio.get_child_watcher()
    _fast_child_watcher()
    try:
        yield
    finally:
        asyncio.get_child_watcher().close()
        asyncio.set_child_watcher(before)


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


def _pipes_of(pid: int | str) -> set[str]:
    """The pipes process `pid` holds open (`pipe:[inode]`)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            if (target := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("pipe:"):
                held.add(target)
    return held


async def _reaped(pid: int) -> None:
    """Until the pidfd watcher (`pilots_child_watcher`) has reaped `pid`, then the loop's turns that
    close its transport: no test leaves a process or a transport to a loop that is closed."""
    for _ in range(1000):
        if _state(pid) == "gone":
            break
        await asyncio.sleep(0.01)
    assert _state(pid) == "gone"
    for _ in range(3):  # the exit, then the done-callback that closes the transport
        await asyncio.sleep(0)


async def _cancelled_helper(tmp_path: Path, *, storm: bool) -> tuple[int, int]:
    """A helper (with a detached child on its pipes) cancelled once, or at every turn of the loop
    until it is done (so some cancel lands in its clean-up); (the helper's pid, the child's)."""
    pid_file, helper_file = tmp_path / "child", tmp_path / "helper"
    script = f"echo $$ > {helper_file}; setsid sleep 60 & echo $! > {pid_file}; sleep 60"
    task = asyncio.ensure_future(run_command(["sh", "-c", script], timeout=60))
    child = await _pid_in(pid_file)
    task.cancel()
    while storm and not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return int(helper_file.read_text()), child


@pytest.mark.usefixtures("pilots_child_watcher")
@pytest.mark.parametrize("storm", [False, True], ids=["cancelled once", "cancelled again in its clean-up"])
async def test_a_cancelled_helper_is_killed_and_its_pipes_let_go(tmp_path: Path, storm: bool) -> None:
    """The helper goes with its group; its detached child (out of the group's reach) lives on,
    but the pilot no longer holds the pipes it shares with it, however often it was cancelled."""
    helper, child = await _cancelled_helper(tmp_path, storm=storm)
    try:
        shared = _pipes_of(child)
        assert shared  # its stdout and stderr are the helper's pipes
        for _ in range(200):
            if not shared & _pipes_of("self"):
                break
            await asyncio.sleep(0.05)
        assert not shared & _pipes_of("self")
        assert _alive(child)
        await _reaped(helper)
    finally:
        os.kill(child, 9)


@pytest.mark.usefixtures("pilots_child_watcher")
async def test_a_cancelled_helper_is_reaped_by_the_child_watcher_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: its pipes were closed before it was seen to exit, which made asyncio poll (and so
    reap) it behind the child watcher's back; the watcher then warned that its exit status was
    already read (or of an unknown child) and reported 255. The kill here returns only once the
    helper is dead and not yet reaped, the moment that race needs (on a quiet machine it is rare)."""
    kill = commands._kill_group

    def kill_and_see_it_dead(pid: int) -> None:
        kill(pid)
        for _ in range(1000):
            if _state(pid) in ("Z", "gone"):
                return
            time.sleep(0.01)

    monkeypatch.setattr(commands, "_kill_group", kill_and_see_it_dead)
    caplog.set_level(logging.WARNING, logger="asyncio")
    for _ in range(3):
        helper, child = await _cancelled_helper(tmp_path, storm=False)
        os.kill(child, 9)
        await _reaped(helper)
        (tmp_path / "child").unlink()
    reaped_twice = ("exit status already read", "Unknown child process")
    assert [r.getMessage() for r in caplog.records if any(m in r.getMessage() for m in reaped_twice)] == []


async def test_a_helper_never_gets_the_pilots_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper is a container CLI (pull, inspect, stop, remove): it gets the pilot's environment
    without the pilot's settings, as the task's client does. Before, it got all of it, broker
    tokens included (a CLI can pass its environment on, to a credential helper or an OCI hook)."""
    monkeypatch.setenv("EWMS_PILOT_BROKER_AUTH_TOKEN", "s3cret-token")
    monkeypatch.setenv("_EWMS_PILOT_INTERNAL", "x")
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/site/containers.conf")
    result = await run_command(["env"], timeout=20)
    assert result.ok
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "CONTAINERS_CONF=/etc/site/containers.conf" in result.stdout.splitlines()
    assert not {n for n in names if "EWMS_PILOT" in n}
    assert "s3cret-token" not in result.stdout


async def _unkillable_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, timeout: float
) -> tuple[asyncio.Future[CommandResult], int]:
    """A helper the kill does not reach (stuck on hung storage; a kill refused), running: (its run, its pid)."""
    monkeypatch.setattr(commands, "_kill_group", lambda pid: None)
    pid_file = tmp_path / "helper"
    script = f"echo $$ > {pid_file}; exec sleep 60"
    task = asyncio.ensure_future(run_command(["sh", "-c", script], timeout=timeout))
    return task, await _pid_in(pid_file)


@pytest.mark.usefixtures("pilots_child_watcher")
async def test_a_cancelled_helper_that_does_not_die_holds_no_pipe_of_the_pilot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper the kill does not reach (stuck on hung storage; a kill refused): the pilot lets go of
    its pipes at once, whenever (if ever) its exit comes. Before, they stayed open until then."""
    task, helper = await _unkillable_helper(tmp_path, monkeypatch, timeout=60)
    try:
        held = _pipes_of(helper)
        assert held  # its stdout and stderr
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the pipes' transports close on the loop's next turn
        assert _alive(helper)
        assert not held & _pipes_of("self")
    finally:
        os.kill(helper, 9)
    await _reaped(helper)


@pytest.mark.usefixtures("pilots_child_watcher")
async def test_a_helper_over_its_bound_that_the_kill_cannot_reach_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: after the kill the pilot waited for its exit without a bound, so a helper stuck on hung
    storage (or a kill refused) held the pilot's stop or image check forever."""
    monkeypatch.setattr(commands, "KILL_WAIT", 0.5)
    task, helper = await _unkillable_helper(tmp_path, monkeypatch, timeout=1)
    try:
        async with asyncio.timeout(30):  # before: only the helper's own end (60 s) let it return
            result = await task
        assert result.returncode is None and result.reason() == "sh did not finish within 1s"
        assert _alive(helper)
        assert not _pipes_of(helper) & _pipes_of("self")
    finally:
        task.cancel()
        os.kill(helper, 9)
    await _reaped(helper)
