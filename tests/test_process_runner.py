"""`tasks.process.run_to_completion` with the process runtime: real processes, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from proc_helpers import pipe_ends_here

from ewms_pilot.runtimes.base import RunSpec
from ewms_pilot.runtimes.process import ProcessRuntime
from ewms_pilot.tasks import process as process_module
from ewms_pilot.tasks.process import ProcessOutcome, run_to_completion

PY = sys.executable

# A child that starts a grandchild (same process group), writes both pids, then sleeps.
# IGNORE_TERM=1 makes both ignore SIGTERM.
TREE = r"""
import os, signal, subprocess, sys, time
ignore = os.environ.get("IGNORE_TERM") == "1"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore else "") + "time.sleep(120)"
grandchild = subprocess.Popen([sys.executable, "-c", code])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("tree started", flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


async def wait_for_pids(path: Path, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the task did not write {path} within {timeout}s")
        await asyncio.sleep(0.05)
    return [int(p) for p in path.read_text().split()]


def make_spec(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None) -> RunSpec:
    return RunSpec(image="", argv=tuple(argv), env=env or {}, mounts=(), name="t", workdir=tmp_path)


async def run(
    tmp_path: Path, argv: list[str], env: dict[str, str] | None = None, **kw: object
) -> ProcessOutcome:
    return await run_to_completion(
        ProcessRuntime(),
        make_spec(tmp_path, argv, env),
        stdout_path=tmp_path / "stdout",
        stderr_path=tmp_path / "stderr",
        **{"timeout": 30.0, **kw},  # type: ignore[arg-type]
    )


async def test_exit_code_output_files_env_and_cwd(tmp_path: Path) -> None:
    code = (
        "import os, sys; print('out', os.environ['GREETING'], os.getcwd());"
        "print('err line', file=sys.stderr); sys.exit(3)"
    )
    outcome = await run(tmp_path, [PY, "-c", code], {"GREETING": "hello $(x) 'q'"})
    assert outcome.exit_code == 3
    assert not outcome.timed_out and not outcome.cancelled
    assert 0 < outcome.duration < 30
    assert (tmp_path / "stdout").read_text() == f"out hello $(x) 'q' {tmp_path}\n"
    assert (tmp_path / "stderr").read_text() == "err line\n"


async def test_output_files_are_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """A task that could write the outputs dir (a warm worker) cannot aim the pilot's writes at a host file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original\n")
    for name in ("stdout", "stderr"):
        (tmp_path / name).symlink_to(victim)
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    outcome = await run(tmp_path, [PY, "-c", code])
    assert outcome.exit_code == 0
    assert victim.read_text() == "original\n"
    assert not (tmp_path / "stdout").is_symlink() and (tmp_path / "stdout").read_text() == "out\n"
    assert not (tmp_path / "stderr").is_symlink() and (tmp_path / "stderr").read_text() == "err\n"


async def test_missing_command_is_exit_127_with_reason(tmp_path: Path) -> None:
    outcome = await run(tmp_path, ["/nonexistent/task-binary", "x"])
    assert outcome.exit_code == 127
    assert (tmp_path / "stderr").read_text() == (
        "ewms-pilot: cannot start '/nonexistent/task-binary': No such file or directory\n"
    )


async def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    outcome = await run(tmp_path, [PY, "-c", TREE, str(pids_file)], timeout=2.0, stop_grace=5.0)
    child, grandchild = [int(p) for p in pids_file.read_text().split()]
    assert outcome.timed_out and not outcome.cancelled
    assert outcome.exit_code == -15  # SIGTERM was enough: no need to wait out the grace
    assert 2.0 <= outcome.duration < 5.0
    assert not alive(child) and not alive(grandchild)
    assert (tmp_path / "stdout").read_text() == "tree started\n"


async def test_sigterm_ignored_then_sigkill_after_grace(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    start = time.monotonic()
    outcome = await run(
        tmp_path,
        [PY, "-c", TREE, str(pids_file)],
        {"IGNORE_TERM": "1"},
        timeout=1.0,
        stop_grace=1.5,
    )
    elapsed = time.monotonic() - start
    child, grandchild = [int(p) for p in pids_file.read_text().split()]
    assert outcome.timed_out
    assert outcome.exit_code == -9  # only SIGKILL ended it
    assert elapsed >= 1.0 + 1.5  # the grace was granted before the kill
    assert elapsed < 1.0 + 1.5 + 5
    assert not alive(child) and not alive(grandchild)


async def test_grandchild_ignoring_sigterm_is_killed_too(tmp_path: Path) -> None:
    """The child dies on SIGTERM at once; its grandchild ignores it and must not survive."""
    pids_file = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
        f"open({str(pids_file)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n"
        "time.sleep(120)\n"
    )
    outcome = await run(tmp_path, [PY, "-c", code], timeout=1.5, stop_grace=1.0)
    child, grandchild = [int(p) for p in pids_file.read_text().split()]
    assert outcome.exit_code == -15
    assert not alive(child) and not alive(grandchild)


async def test_background_process_left_by_a_finished_task_is_killed(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    code = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids_file)!r}, 'w').write(str(g.pid))\n"
    )
    outcome = await run(tmp_path, [PY, "-c", code])
    assert outcome.exit_code == 0 and not outcome.timed_out
    (grandchild,) = [int(p) for p in pids_file.read_text().split()]
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(grandchild)


async def test_a_task_leaving_a_child_on_its_output_pipes_ends_when_it_exits(tmp_path: Path) -> None:
    """As the pilot runs tasks (piped output): Python 3.11's `Process.wait()` returns once the pipes are
    closed too, so a task that exited leaving a background child on its stdout/stderr was taken for
    running until the timeout, then reported timed out."""
    pids_file = tmp_path / "pids"
    code = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids_file)!r}, 'w').write(str(g.pid))\n"
        "print('task done', flush=True)\n"
        "sys.exit(5)\n"
    )
    lines: list[tuple[str, str]] = []
    # the failure mode is waiting out the 60 s timeout; cancelling stops the whole group
    outcome = await asyncio.wait_for(
        run(tmp_path, [PY, "-c", code], timeout=60.0, on_line=lambda stream, line: lines.append((stream, line))), 15
    )
    assert (outcome.exit_code, outcome.timed_out, outcome.cancelled) == (5, False, False)
    assert lines == [("stdout", "task done")]
    (grandchild,) = [int(p) for p in pids_file.read_text().split()]
    assert not alive(grandchild)


async def test_a_detached_process_left_on_a_tasks_pipes_keeps_no_pipe_open_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process in its own session is out of the group kill's reach: the task still ends once its output
    is drained, and the pilot's ends of the pipes are closed, not left to it."""
    monkeypatch.setattr(process_module, "DRAIN_WAIT", 0.5)
    pids_file = tmp_path / "pids"
    code = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pids_file)!r}, 'w').write(str(g.pid))\n"
    )
    try:
        outcome = await asyncio.wait_for(run(tmp_path, [PY, "-c", code], timeout=60.0, log_max=2**20), 15)
        (detached,) = [int(p) for p in pids_file.read_text().split()]
        assert alive(detached)
        held = pipe_ends_here(detached, 1) + pipe_ends_here(detached, 2)
    finally:
        if pids_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pids_file.read_text()), signal.SIGKILL)
    assert (outcome.exit_code, outcome.timed_out) == (0, False)
    assert held == []


async def test_cancellation_stops_the_tree_and_reraises(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    task = asyncio.create_task(run(tmp_path, [PY, "-c", TREE, str(pids_file)], timeout=None))
    child, grandchild = await wait_for_pids(pids_file)
    assert alive(child) and alive(grandchild)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(child) and not alive(grandchild)


async def test_second_cancel_during_stop_cannot_skip_the_kill(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    task = asyncio.create_task(
        run(
            tmp_path,
            [PY, "-c", TREE, str(pids_file)],
            {"IGNORE_TERM": "1"},
            timeout=None,
            stop_grace=1.5,
        )
    )
    child, grandchild = await wait_for_pids(pids_file)
    task.cancel()
    await asyncio.sleep(0.3)  # now inside the grace period, waiting for the group to go
    assert alive(child)  # SIGTERM is ignored: still there
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(child) and not alive(grandchild)


async def test_stop_event_stops_and_reports_cancelled(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    stop = asyncio.Event()
    task = asyncio.create_task(run(tmp_path, [PY, "-c", TREE, str(pids_file)], stop=stop))
    child, grandchild = await wait_for_pids(pids_file)
    stop.set()
    outcome = await task
    assert outcome.cancelled and not outcome.timed_out
    assert outcome.exit_code == -15
    assert not alive(child) and not alive(grandchild)


async def test_on_line_sees_each_line_and_files_get_everything(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "print('progress 1', flush=True)\n"
        "sys.stderr.write('warn a\\nwarn b\\n'); sys.stderr.flush()\n"
        "time.sleep(0.2)\n"
        "sys.stdout.write('x' * 200000 + '\\n')\n"
        "sys.stdout.write('no newline at end')\n"
    )
    seen: list[tuple[str, str]] = []
    outcome = await run(tmp_path, [PY, "-c", code], on_line=lambda s, line: seen.append((s, line)))
    assert outcome.exit_code == 0
    out = [line for s, line in seen if s == "stdout"]
    assert [line for s, line in seen if s == "stderr"] == ["warn a", "warn b"]
    assert out[0] == "progress 1"
    assert "".join(out[1:-1]) == "x" * 200000  # a long line arrives in bounded pieces
    assert all(len(line) <= 64 * 1024 for line in out)
    assert out[-1] == "no newline at end"
    assert (
        tmp_path / "stdout"
    ).read_text() == "progress 1\n" + "x" * 200000 + "\nno newline at end"
    assert (tmp_path / "stderr").read_text() == "warn a\nwarn b\n"


async def test_on_line_callback_error_does_not_break_the_task(tmp_path: Path) -> None:
    def boom(stream: str, line: str) -> None:
        raise RuntimeError("callback bug")

    outcome = await run(tmp_path, [PY, "-c", "print('a'); print('b')"], on_line=boom)
    assert outcome.exit_code == 0
    assert (tmp_path / "stdout").read_text() == "a\nb\n"
