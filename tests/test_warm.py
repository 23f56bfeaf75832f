"""Warm mode (EWMS_PILOT_TASK_MODE=warm): long-lived workers fed events over a JSON-lines pipe.

The pilot runs as a batch job would (env vars only) against the real
RabbitMQ, with host processes or podman containers as workers; the task
author's helper (`ewms_pilot/worker.py`) is run as a real process, with and
without the `json` module (the test image has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import fcntl
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import types
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot, start_pilot, wait_pilot
from proc_helpers import pipe_ends_here

from ewms_pilot import worker
from ewms_pilot.config.model import (
    BrokerConfig,
    ContainerConfig,
    ContainerPlatform,
    PilotConfig,
    TaskMode,
)
from ewms_pilot.runtimes import ProcessRuntime
from ewms_pilot.tasks.taskdir import TaskDir
from ewms_pilot.warm import WarmPool, WarmResult
from ewms_pilot.warm import driver as driver_module
from ewms_pilot.warm import hub as hub_module
from ewms_pilot.warm import pool as pool_module
from ewms_pilot.warm import worker_proc as worker_proc_module
from ewms_pilot.warm.driver import MUTE_WAIT, FileWork
from ewms_pilot.warm.lines import MAX_LINE
from ewms_pilot.warm.pool import MAX_BARREN_DEATHS
from ewms_pilot.warm.worker_log import BACKLOG_MAX, WorkerLog

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "ewms_pilot" / "worker.py"
EXAMPLES = REPO / "examples" / "warm"


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


# --------------------------------------------------------------------------- the helper


def helper_lib(root: Path) -> Path:
    """A directory holding only `ewms_pilot/worker.py`, as a task image would carry it."""
    pkg = root / "lib" / "ewms_pilot"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(HELPER, pkg / "worker.py")
    return root / "lib"


HELPER_WORKER = r"""
import sys
if sys.argv[1] == "nojson":
    sys.modules["json"] = None  # as on python3-minimal
from ewms_pilot import worker

print("noise while loading", flush=True)

@worker.handler
def handle(infile, outfile):
    print("noise from the handler")
    data = open(infile, encoding="utf-8").read()
    if data.startswith("bad"):
        raise ValueError("cannot take " + data)
    open(outfile, "w", encoding="utf-8").write(data + data + "|" + str(worker.HAVE_JSON))

worker.run()
"""


@pytest.mark.parametrize("mode", ["json", "nojson"])
def test_helper_answers_each_event_and_keeps_stdout_clean(tmp_path: Path, mode: str) -> None:
    lib = helper_lib(tmp_path)
    script = tmp_path / "w.py"
    script.write_text(HELPER_WORKER)
    names = ["plain", "bad-one", "ünï \"quoted\" 😀", "after"]
    requests = []
    for i, name in enumerate(names):
        (tmp_path / f"{i}.in").write_text(name, encoding="utf-8")
        requests.append(json.dumps({"id": f"id-{i}-ü", "infile": str(tmp_path / f"{i}.in"), "outfile": str(tmp_path / f"{i}.out")}))
    proc = subprocess.run(
        [PY, str(script), mode], input="\n".join(requests) + "\n\n", capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(lib)}, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # before the loop starts stdout is the process's own (the pilot logs such lines as noise);
    # from then on every stdout line is protocol
    first, *lines = proc.stdout.splitlines()
    assert first == "noise while loading"
    answers = [json.loads(line) for line in lines]
    assert answers == [
        {"id": "id-0-ü", "ok": True},
        {"id": "id-1-ü", "ok": False, "error": "ValueError: cannot take bad-one"},
        {"id": "id-2-ü", "ok": True},
        {"id": "id-3-ü", "ok": True},
    ]
    assert proc.stdout.isascii()
    have_json = str(mode == "json")
    assert (tmp_path / "2.out").read_text(encoding="utf-8") == names[2] * 2 + "|" + have_json
    assert not (tmp_path / "1.out").exists()
    assert proc.stderr.count("noise from the handler") == 4
    assert "Traceback" in proc.stderr and "ValueError: cannot take bad-one" in proc.stderr


def test_helper_loop_form_with_and_without_with(tmp_path: Path) -> None:
    lib = helper_lib(tmp_path)
    code = (
        "from ewms_pilot import worker\n"
        "for event in worker.events():\n"
        "    if event.id == 'a':\n"
        "        with event:\n"
        "            raise KeyError('inside with')\n"
        "    elif event.id == 'b':\n"
        "        print('done', event.infile)\n"
        "    else:\n"
        "        raise RuntimeError('escapes the loop')\n"
    )
    reqs = "".join(json.dumps({"id": i, "infile": f"/x/{i}", "outfile": f"/y/{i}"}) + "\n" for i in "abcd")
    proc = subprocess.run(
        [PY, "-c", code], input=reqs, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(lib)}, timeout=30, check=False,
    )
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert answers[:2] == [{"id": "a", "ok": False, "error": "KeyError: 'inside with'"}, {"id": "b", "ok": True}]
    # an exception outside `with event:` fails its event and ends the worker (the pilot replaces it)
    assert answers[2]["id"] == "c" and answers[2]["ok"] is False
    assert len(answers) == 3 and proc.returncode != 0 and "escapes the loop" in proc.stderr
    assert "done /x/b" in proc.stderr


NASTY = ["", "plain", 'q"uote', "back\\slash", "tab\tnl\nret\r", "\x00\x1f\x7f", "ü€", "😀", "\udc80", "/a/b c,d"]


def test_fallback_reader_and_writer_match_json(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded_with_json = [worker.encode_object({"id": s, "ok": False, "error": None}) for s in NASTY]
    monkeypatch.setattr(worker, "_json", None)
    for text, expected in zip(NASTY, encoded_with_json, strict=True):
        line = worker.encode_object({"id": text, "ok": False, "error": None})
        assert line == expected == json.dumps({"id": text, "ok": False, "error": None})
        assert worker.decode_object(line) == {"id": text, "ok": False, "error": None}
        assert worker.decode_object(json.dumps({"k": text}, ensure_ascii=False, indent=1)) == {"k": text}
    for bad in ['{"a": 1}', '{"a": "x"', '["a"]', '{"a": "x"} tail', '{"a": "\\q"}', "{'a': 'x'}"]:
        with pytest.raises(ValueError):
            worker.decode_object(bad)


# --------------------------------------------------------------------------- the pool


def _cfg(tmp_path: Path, args: list[str], size: int = 1) -> PilotConfig:
    return PilotConfig(
        task=ContainerConfig(image="", args=shlex.join(args)),
        incoming=BrokerConfig("unused-in", "local", str(tmp_path / "q.sqlite")),
        outgoing=BrokerConfig("unused-out", "local", str(tmp_path / "q.sqlite")),
        data_dir_parent=tmp_path,
        container_platform=ContainerPlatform.PROCESS,
        task_mode=TaskMode.WARM,
        max_concurrent_tasks=size,
    )


def _event(cfg: PilotConfig, n: int) -> TaskDir:
    tdir = TaskDir.create(cfg.data_dir, f"task{n}", ".in", ".out")
    tdir.infile.write_text(f"e{n}")
    return tdir


async def test_workers_that_keep_dying_fail_events_with_a_reason_instead_of_looping(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    cfg = _cfg(tmp_path, [PY, "-c", f"open({str(starts)!r},'a').write('x'); import sys; sys.exit('no licence')"])
    pool = WarmPool(cfg, ProcessRuntime(), "", "p1")
    t0 = time.monotonic()
    await pool.start()
    try:
        results = []
        for n in range(8):
            tdir = _event(cfg, n)
            nothing_to_do = FileWork(stage=lambda: None, collect=lambda: None)  # the infile is written
            results.append(await pool.run(f"task{n}", tdir.infile, tdir.outfile, 5, nothing_to_do))
    finally:
        await pool.close()
    # it dies before reading its event, and so does the one given the event next
    assert results[0].error == "warm worker exited (code 1) before taking the event: no licence"
    assert results[0].exit_code == 1
    assert all(not r.ok for r in results)
    assert "keep exiting before finishing an event" in (results[-1].error or "")
    assert starts.read_text() == "x" * pool_module.MAX_BARREN_DEATHS  # gave up, no restart loop
    assert time.monotonic() - t0 < 15


HANG_GUARD = 30  # s; not a speed bound: it only turns a hang into a failure


async def _run_one(pool: WarmPool, cfg: PilotConfig, n: int, timeout: float | None) -> WarmResult:
    tdir = _event(cfg, n)
    work = FileWork(stage=lambda: None, collect=lambda: "value")  # the infile is written
    return await asyncio.wait_for(pool.run(f"task{n}", tdir.infile, tdir.outfile, timeout, work), HANG_GUARD)


async def test_an_error_text_is_cut_to_2000_characters(tmp_path: Path) -> None:
    """docs/warm-workers.md rule 4: the pilot keeps at most 2000 characters of `error`."""
    script = "import json, sys\nfor line in sys.stdin:\n    print(json.dumps({'id': json.loads(line)['id'], 'ok': False, 'error': 'E' * 3000}), flush=True)\n"
    result = await _one_event_through(tmp_path, script, None)
    assert result.error == "E" * 1999 + "…"


async def test_only_an_answer_with_the_events_id_ends_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/warm-workers.md rule 2: an answer names its event; one for another id is ignored (with a
    warning), and the event waits for its own."""
    script = (
        "import json, sys\nfor line in sys.stdin:\n    rid = json.loads(line)['id']\n"
        "    print(json.dumps({'id': rid + '-other', 'ok': False, 'error': 'not this one'}), flush=True)\n"
        "    print(json.dumps({'id': rid, 'ok': True}), flush=True)\n"
    )
    with caplog.at_level(logging.WARNING, logger="ewms_pilot.warm"):
        result = await _one_event_through(tmp_path, script, None)
    assert (result.ok, result.error) == (True, None)
    assert [r.getMessage() for r in caplog.records if "which it was not given" in r.getMessage()] == [
        "ewms-pilot-one-warm0-1: answer for event 'task1-other', which it was not given: ignored"
    ]


async def test_a_request_is_ascii_even_for_a_data_dir_that_is_not(tmp_path: Path) -> None:
    """docs/warm-workers.md: requests are ASCII-only (non-ASCII \\u-escaped), so a worker in any locale
    reads the paths right: here under a data dir named with non-ASCII letters."""
    parent = tmp_path / "dätä ü"
    parent.mkdir()
    script = (
        "import json, os, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n"
        "    ok = line.isascii() and os.path.isfile(r['infile']) and 'dätä ü' in r['infile']\n"
        "    print(json.dumps({'id': r['id'], 'ok': ok, 'error': None if ok else repr(line)}), flush=True)\n"
    )
    result = await _one_event_through(parent, script, None)
    assert (result.ok, result.error) == (True, None)


async def test_a_workers_first_event_includes_its_start_up_in_the_timeout(tmp_path: Path) -> None:
    """docs/warm-workers.md: the per-event timeout counts from the request, so the first event
    also pays the worker's start-up: a start-up longer than the timeout times that event out."""
    script = "import json, sys, time\ntime.sleep(3)\nfor line in sys.stdin:\n    print(json.dumps({'id': json.loads(line)['id'], 'ok': True}), flush=True)\n"
    result = await _one_event_through(tmp_path, script, 1)
    assert (result.ok, result.timed_out) == (False, True)


async def test_the_restart_back_off_grows_and_starts_over_once_a_worker_finishes_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/warm-workers.md: replacements start after a growing back-off while workers die before
    finishing an event, and the count of such deaths starts over once one finishes an event. Here
    starts 1-4 die at once, start 5 answers one event and exits, every later one dies again: the
    pool gives up after five more, at the tenth start (without the reset: at the sixth)."""
    monkeypatch.setattr(pool_module, "RESTART_BACKOFF", 0.01)
    starts = tmp_path / "starts"
    script = (
        "import json, sys\n"
        f"f = open({str(starts)!r}, 'a'); f.write('x'); f.close(); n = len(open({str(starts)!r}).read())\n"
        "if n != 5:\n    sys.exit(1)\n"
        "line = sys.stdin.readline()\n"
        "print(json.dumps({'id': json.loads(line)['id'], 'ok': True}), flush=True)\n"
    )
    cfg = _cfg(tmp_path, [PY, "-c", script])
    pool = WarmPool(cfg, ProcessRuntime(), "", "d3")
    await pool.start()
    results = []
    try:
        with caplog.at_level(logging.INFO, logger="ewms_pilot.warm"):
            while pool.broken is None and len(results) < 20:
                results.append(await _run_one(pool, cfg, len(results), None))
    finally:
        await pool.close(2)
    assert sum(r.ok for r in results) == 1
    assert len(starts.read_text()) == 10
    delays = [m.group(1) for r in caplog.records if (m := re.search(r"restarting warm worker slot 0 in (\S+)s", r.getMessage()))]
    assert delays == ["0.01", "0.02", "0.04", "0.08"] * 2


@pytest.mark.parametrize("keep", [False, True])
async def test_the_logs_of_workers_closed_cleanly_go_at_the_end_unless_all_files_are_kept(
    tmp_path: Path, keep: bool
) -> None:
    """docs/warm-workers.md "Logs": a worker that exits 0 when the pilot closes it leaves no log
    (nor the warm dirs), unless EWMS_PILOT_KEEP_ALL_TASK_FILES."""
    cfg = dc.replace(_cfg(tmp_path, [PY, "-c", ECHO]), keep_all_task_files=keep)
    pool = WarmPool(cfg, ProcessRuntime(), "", "d4")
    await pool.start()
    try:
        assert (await _run_one(pool, cfg, 1, None)).ok
    finally:
        await pool.close(2)
    logs = sorted(p.name for p in (cfg.data_dir / "warm-workers").glob("*.log")) if keep else []
    assert (cfg.data_dir / "warm-workers").exists() == keep
    assert logs == (["ewms-pilot-d4-warm0-1.log"] if keep else [])


async def _one_event_through(tmp_path: Path, script: str, timeout: float | None) -> WarmResult:
    """One event through a one-worker pool running `script`, the pool closed after."""
    cfg = _cfg(tmp_path, [PY, "-c", script])
    pool = WarmPool(cfg, ProcessRuntime(), "", "one")
    await pool.start()
    try:
        return await _run_one(pool, cfg, 1, timeout)
    finally:
        await pool.close(2)


ANSWER_ONE_THEN = """
import json, os, sys, time
req = json.loads(sys.stdin.readline())
print(json.dumps({'id': req['id'], 'ok': True}), flush=True)
%s
time.sleep(120)
"""


async def test_an_event_for_a_live_worker_that_closed_its_stdin_goes_to_a_new_worker(tmp_path: Path) -> None:
    """A live worker that closed its stdin can never be given an event: the pilot sees that (at once,
    not at the timeout) and a new worker takes the event. Before: the event waited for its timeout,
    or for ever without one."""
    cfg = _cfg(tmp_path, [PY, "-c", ANSWER_ONE_THEN % "os.close(0)"])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r1")
    await pool.start()
    results, workers = [], []
    try:
        for n in range(3):
            results.append(await _run_one(pool, cfg, n, None))
            worker = pool._slots[0].worker
            assert worker is not None and worker.pid is not None
            workers.append(worker)
            while Path(f"/proc/{worker.pid}/fd/0").exists():
                await asyncio.sleep(0.05)  # it has closed the pipe, and lives on
    finally:
        await pool.close(2)
    assert [r.ok for r in results] == [True] * 3
    assert len({w.pid for w in workers}) == 3  # each closed its stdin after its event: replaced
    assert all(not w.alive and w.stopped_by_pilot for w in workers)
    assert pool.broken is None  # each finished an event before closing its stdin


async def test_a_live_worker_that_closed_its_stdout_fails_the_event_without_its_timeout(tmp_path: Path) -> None:
    """No answer can come once stdout is closed: the event fails saying so (after MUTE_WAIT for an exit
    that would say more), the worker is replaced, and the next event succeeds. Before: the event
    waited for its timeout, or for ever without one."""
    script = """
import json, os, sys, time
marker = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    if not os.path.exists(marker):
        open(marker, 'w').close()
        os.close(1)  # a library that closed stdout, say; the worker lives on
        time.sleep(120)
    print(json.dumps({'id': req['id'], 'ok': True}), flush=True)
"""
    cfg = _cfg(tmp_path, [PY, "-c", script, str(tmp_path / "closed-once")])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r6")
    await pool.start()
    try:
        first = await _run_one(pool, cfg, 1, None)
        second = await _run_one(pool, cfg, 2, None)
    finally:
        await pool.close(2)
    assert (first.ok, first.timed_out, first.error) == (
        False, False, "the warm worker closed its stdout, so no answer could come"
    )  # fmt: skip
    assert second.ok


SLOW_FOR_TASK2 = """
import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    if req['id'] == 'task2':
        time.sleep(1)  # still in flight when the other worker's event breaks
    print(json.dumps({'id': req['id'], 'ok': True}), flush=True)
"""


async def test_a_bug_driving_one_worker_fails_its_event_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker is driven by one thread (warm/hub.py): a bug while handling one worker's output
    fails that worker's event, as unexpected, and never the event in flight in another worker,
    nor a later event in the broken worker's slot."""
    real_parse = driver_module.parse_answer

    def parse(line: str) -> object:
        if '"task1"' in line:
            raise ZeroDivisionError("a bug in the driver")
        return real_parse(line)

    monkeypatch.setattr(driver_module, "parse_answer", parse)
    cfg = _cfg(tmp_path, [PY, "-c", SLOW_FOR_TASK2], size=2)
    pool = WarmPool(cfg, ProcessRuntime(), "", "h1")
    await pool.start()
    try:
        slow = asyncio.ensure_future(_run_one(pool, cfg, 2, 10))
        await asyncio.sleep(0.2)  # task2 is in its worker
        with pytest.raises(RuntimeError, match="ZeroDivisionError: a bug in the driver"):
            await _run_one(pool, cfg, 1, 10)
        assert not slow.done()
        assert (await slow).ok
        assert (await _run_one(pool, cfg, 3, 10)).ok  # the broken worker's slot has a new worker
    finally:
        await pool.close(2)


def _warm_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("ewms-warm") or "-driver" in t.name)


async def test_one_thread_drives_every_warm_worker_and_ends_with_the_last(tmp_path: Path) -> None:
    """benchmarks/README.md, issue 15, seventh round: four threads for four workers took the GIL
    in turn for each event; the workers of a pilot share one, which does not outlive them (nor do
    their logs' writers, warm/worker_log.py)."""
    cfg = _cfg(tmp_path, [PY, "-c", SLOW_FOR_TASK2], size=4)
    pool = WarmPool(cfg, ProcessRuntime(), "", "h2")
    await pool.start()
    try:
        results = await asyncio.gather(*(_run_one(pool, cfg, n, 10) for n in range(4)))
        assert all(r.ok for r in results)
        logs = [f"ewms-warm-log-{s.worker.name}" for s in pool._slots if s.worker is not None]
        assert _warm_threads() == sorted(["ewms-warm-hub", *logs])  # a log's writer is idle but for output
    finally:
        await pool.close(2)
    for _ in range(100):
        if not _warm_threads():
            break
        await asyncio.sleep(0.05)
    assert _warm_threads() == []


async def test_a_timeout_longer_than_poll_can_wait_is_kept_and_costs_no_other_event(tmp_path: Path) -> None:
    """Review: a deadline beyond poll()'s longest wait (about 24.8 days; the config allows up to a
    year) raised OverflowError in the driver: with one thread for all workers, every event failed."""
    cfg = _cfg(tmp_path, [PY, "-c", SLOW_FOR_TASK2], size=2)
    pool = WarmPool(cfg, ProcessRuntime(), "", "h3")
    await pool.start()
    try:
        month = 30 * 24 * 3600.0
        results = await asyncio.gather(_run_one(pool, cfg, 1, month), _run_one(pool, cfg, 2, 5))
        again = await _run_one(pool, cfg, 3, month)
    finally:
        await pool.close(2)
    assert [r.ok for r in results] == [True, True] and again.ok


ECHO = """
import json, sys
for line in sys.stdin:
    print(json.dumps({'id': json.loads(line)['id'], 'ok': True}), flush=True)
"""


def _live_with_arg(arg: str) -> list[int]:
    """Pids of live processes with `arg` in their argv."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if arg.encode() in (proc / "cmdline").read_bytes().split(b"\0") and alive(int(proc.name)):
                    found.append(int(proc.name))
    return found


async def test_a_driver_thread_that_cannot_start_fails_that_start_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: when the thread could not be started (a slot's process limit), the hub believed it
    was running, so every later warm event waited forever; and the worker ran on, undriven."""
    marker = f"marker-{tmp_path.name}"
    refusals = []

    class Refusing(threading.Thread):
        def start(self) -> None:
            if not refusals:
                refusals.append(self.name)
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(hub_module, "threading", types.SimpleNamespace(Thread=Refusing, Lock=threading.Lock))
    cfg = _cfg(tmp_path, [PY, "-c", ECHO, marker])
    first = WarmPool(cfg, ProcessRuntime(), "", "h4")
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await first.start()
    finally:
        await first.close(2)  # as the pilot does after a failed start
    assert refusals == ["ewms-warm-hub"]
    assert _live_with_arg(marker) == []  # the worker it had started is gone
    second = WarmPool(cfg, ProcessRuntime(), "", "h5")
    await second.start()
    try:
        assert (await _run_one(second, cfg, 1, 5)).ok
    finally:
        await second.close(2)


CHATTY_AT_START = """
import json, sys
sys.stderr.write('e' * 200000 + '\\n'); sys.stderr.flush()
print('n' * 200000, flush=True)  # stdout noise
for line in sys.stdin:
    print(json.dumps({'id': json.loads(line)['id'], 'ok': True}), flush=True)
"""


async def test_a_stalled_worker_log_never_stalls_the_other_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's log on a stalled file system (here a FIFO nobody reads yet: it takes 64 KiB, then
    blocks its writer) holds up neither the event loop (stderr) nor the warm hub (stdout noise): both
    workers answer while it is stalled, and the log is whole once the file system is back. Before: the
    first write that blocked stopped every worker's events."""
    fifos: list[Path] = []

    def open_stalled(path: Path) -> int:
        fifo = tmp_path / f"{path.name}.fifo"  # on a thread of its own: the workers start together
        os.mkfifo(fifo)
        fifos.append(fifo)
        return os.open(fifo, os.O_RDWR)  # the writer's end, never blocking the open itself

    monkeypatch.setattr(worker_proc_module, "open_private", open_stalled)
    answered, rescued = threading.Event(), threading.Event()
    drained: dict[Path, bytes] = {}

    def file_system_comes_back() -> None:
        if not answered.wait(HANG_GUARD):  # not a speed bound: it only turns the stall into a failure
            rescued.set()
        readers = [threading.Thread(target=lambda f=f: drained.__setitem__(f, f.read_bytes())) for f in fifos]
        for reader in readers:
            reader.start()  # each reads its log to the EOF of the worker's end
        for reader in readers:
            reader.join()

    cfg = _cfg(tmp_path, [PY, "-c", CHATTY_AT_START], size=2)
    pool = WarmPool(cfg, ProcessRuntime(), "", "r9")
    await pool.start()
    back = threading.Thread(target=file_system_comes_back, daemon=True)
    back.start()
    try:
        events = [asyncio.ensure_future(_run_one(pool, cfg, n, None)) for n in range(2)]  # one per worker
        results = await asyncio.gather(*events)
        answered.set()
    finally:
        answered.set()
        await pool.close(2)
    await asyncio.to_thread(back.join, HANG_GUARD)
    assert not rescued.is_set(), "the events waited for the stalled log"
    assert [r.ok for r in results] == [True, True]
    whole = sorted([b"e" * 200000, b"[stdout] " + b"n" * 200000])
    assert len(drained) == 2 and all(sorted(log.splitlines()) == whole for log in drained.values())


def test_a_log_that_fell_behind_says_where_and_how_much_it_dropped(tmp_path: Path) -> None:
    """What a blocked write still holds counts against the backlog, and the note of what was dropped
    comes where the gap is: after what was queued before it, before what came after (review: the
    note came first, and a blocked write's bytes were not counted, so twice the backlog was held)."""
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    log = WorkerLog("w", os.open(fifo, os.O_RDWR))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log.start()
    try:
        a = b"a" * 100_000 + b"\n"  # more than the FIFO takes: the writer blocks in it
        log.write(a)
        while _unread(reader) < fcntl.fcntl(reader, fcntl.F_GETPIPE_SZ):
            time.sleep(0.01)
        b = b"b" * (BACKLOG_MAX - len(a) - 100) + b"\n"
        log.write(b)
        log.write(b"c" * 1000)  # over the backlog, with `a` still in the blocked write
        got = bytearray()
        while len(got) < len(a) + len(b):
            got += _read_some(reader)
        log.write(b"d\n")  # it has caught up
        log.close()
        assert log.finished.wait(HANG_GUARD)
        got += _read_some(reader)
    finally:
        os.close(reader)
    assert bytes(got) == a + b + b"[pilot] 1000 bytes of output dropped here: the log fell behind\n" + b"d\n"


def _unread(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _read_some(fd: int) -> bytes:
    select.select([fd], [], [], 1)
    with contextlib.suppress(BlockingIOError):
        return os.read(fd, 1 << 20)
    return b""


NESTED_NOISE = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.write('{"debug": ' + '[' * 100000 + ']' * 100000 + '}\\n')  # a library's debug line
    print(json.dumps({'id': req['id'], 'ok': True}), flush=True)
"""


async def test_a_noise_line_the_json_parser_chokes_on_is_only_noise(tmp_path: Path) -> None:
    """Review: a line nested too deeply for `json` (RecursionError) killed the driver thread; the event hung."""
    cfg = _cfg(tmp_path, [PY, "-c", NESTED_NOISE])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r2")
    await pool.start()
    try:
        result = await _run_one(pool, cfg, 1, 5)
    finally:
        await pool.close(2)
    assert result.ok and result.value == "value"


LONG_ANSWER = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps({'id': req['id'], 'ok': False, 'error': 'X' * (2 * 1024 * 1024)}), flush=True)
"""


async def test_an_answer_too_long_to_be_one_is_reported_with_its_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line of 1 MiB or more is cut and never read as an answer (rule 4 in docs/warm-workers.md):
    the event ends at its timeout, and the log says why, naming the event (before: a timeout only)."""
    cfg = _cfg(tmp_path, [PY, "-c", LONG_ANSWER])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r5")
    await pool.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ewms_pilot.warm"):
            result = await _run_one(pool, cfg, 1, 2)
    finally:
        await pool.close(2)
    assert not result.ok and result.timed_out
    warned = [r.getMessage() for r in caplog.records if "stdout line of 1048576 bytes or more" in r.getMessage()]
    assert len(warned) == 1 and "while event task1 waits" in warned[0] and "never read as its answer" in warned[0], warned


LONG_NOISE_THEN = """
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    answer = json.dumps({'id': req['id'], 'ok': True})
    %s
"""


async def test_a_long_noise_line_is_noise_and_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An over-long line that cannot be an answer (it does not start with '{') is logged as noise
    without a warning, and the answer after it is read (before: a warning for every event)."""
    cfg = _cfg(tmp_path, [PY, "-c", LONG_NOISE_THEN % "print('x' * (2 * 1024 * 1024)); print(answer, flush=True)"])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r10")
    await pool.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ewms_pilot.warm"):
            results = [await _run_one(pool, cfg, n, None) for n in range(2)]
    finally:
        await pool.close(2)
    assert [r.ok for r in results] == [True, True]
    assert [r.getMessage() for r in caplog.records if "bytes or more" in r.getMessage()] == []


async def test_the_tail_of_an_over_long_line_is_never_an_answer(tmp_path: Path) -> None:
    """A line is cut into MAX_LINE pieces while its end has not come; a tail that happens to read
    as the answer is still a piece of noise, and the event ends at its timeout (before: it was
    taken as the answer, and the event succeeded on a line the worker never meant as one)."""
    cut_at_the_answer = (
        f"sys.stdout.write('x' * {MAX_LINE} + answer); sys.stdout.flush(); "
        "import time; time.sleep(1); print(flush=True)"
    )
    result = await _one_event_through(tmp_path, LONG_NOISE_THEN % cut_at_the_answer, 3)
    assert (result.ok, result.timed_out) == (False, True)


@pytest.mark.parametrize("pipe", ["stdout", "stdin"])
async def test_workers_that_close_a_pipe_at_start_make_the_pool_give_up_like_dying_ones(
    tmp_path: Path, pipe: str
) -> None:
    """A worker that can never answer, or never be given an event, counts as one that died without
    finishing an event: after MAX_BARREN_DEATHS in a row no more are started (before: a new worker
    per event, for ever; with stdin closed, the first event waited for ever)."""
    fd = {"stdout": 1, "stdin": 0}[pipe]
    cfg = _cfg(tmp_path, [PY, "-c", f"import os, time; os.close({fd}); time.sleep(120)"])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r7")
    await pool.start()
    results = []
    try:
        for n in range(MAX_BARREN_DEATHS + 1):
            results.append(await _run_one(pool, cfg, n, None))
    finally:
        await pool.close(2)
    assert not any(r.ok for r in results)
    why = {"stdout": "no answer could come", "stdin": "it could not be given the event"}[pipe]
    assert results[0].error == f"the warm worker closed its {pipe}, so {why}"
    assert (results[-1].error or "").startswith(
        f"warm workers keep exiting before finishing an event ({MAX_BARREN_DEATHS} in a row"
    ), [r.error for r in results]


CRASH_ON_EVENT = """
import sys, time
sys.stdin.readline()
time.sleep(1)  # crashes once the loop is busy
print('boom: the worker crashed', file=sys.stderr, flush=True)
sys.exit(3)
"""


async def test_a_crash_seen_late_by_a_busy_loop_is_still_reported_as_the_crash(tmp_path: Path) -> None:
    """The hub sees the crashed worker's stdout close at once; the loop, busy for longer than
    MUTE_WAIT, sees its exit only later. The event is still reported with the exit code and stderr
    line (before: 'closed its stdout', and no barren death counted)."""
    cfg = _cfg(tmp_path, [PY, "-c", CRASH_ON_EVENT])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r8")
    await pool.start()
    try:
        running = asyncio.ensure_future(_run_one(pool, cfg, 1, None))
        await asyncio.sleep(0.3)  # the request went out; the worker crashes on it a second later
        time.sleep(MUTE_WAIT + 4)  # the loop is busy (a big file, a slow disk): no exit is seen meanwhile
        result = await running
    finally:
        await pool.close(2)
    assert (result.ok, result.exit_code) == (False, 3)
    assert result.error == "warm worker exited (code 3): boom: the worker crashed"


async def test_a_worker_dying_while_idle_writes_nothing_into_files_opened_since(tmp_path: Path) -> None:
    """Review: retiring a dead worker posted to its driver's closed wake-up pipe, whose fd number was reused."""
    cfg = _cfg(tmp_path, [PY, "-c", "import sys; sys.exit(3)"])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r3")
    await pool.start()
    worker = pool._slots[0].worker
    assert worker is not None
    while worker.alive:
        await asyncio.sleep(0.05)
    others = [tmp_path / f"other{i}" for i in range(32)]  # what the pilot opens meanwhile (infiles, logs, sockets)
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT) for p in others]
    try:
        await _run_one(pool, cfg, 1, 5)  # the slot is used again: the dead worker is retired
    finally:
        for fd in fds:
            os.close(fd)
        await pool.close(2)
    assert {p.name: p.read_bytes() for p in others if p.read_bytes()} == {}


ANSWER_THEN_EXIT = """
import json, sys
req = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps({'id': req['id'], 'ok': True}) + '\\n')  # flushed at the exit
"""


async def test_a_worker_exiting_between_events_costs_no_event(tmp_path: Path) -> None:
    """docs/warm-workers.md: "the worker exits between events | none". Review: a request sent while
    the exit was not yet seen failed its event ("warm worker exited (code 0)") about every other time."""
    cfg = _cfg(tmp_path, [PY, "-c", ANSWER_THEN_EXIT])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r4")
    await pool.start()
    try:
        results = [await _run_one(pool, cfg, n, 10) for n in range(10)]
    finally:
        await pool.close(2)
    assert [(r.ok, r.error) for r in results] == [(True, None)] * 10
    assert pool.broken is None


async def test_a_worker_that_exited_by_itself_keeps_its_log_and_says_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/warm-workers.md "Logs": a worker that exits by itself, even with code 0 and between
    events, keeps its log, and the warning names it (review: its log was removed at the end)."""
    script = ANSWER_THEN_EXIT + "sys.stderr.write('why I left\\n')\n"
    cfg = _cfg(tmp_path, [PY, "-c", script])
    pool = WarmPool(cfg, ProcessRuntime(), "", "d6")
    await pool.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ewms_pilot.warm"):
            assert (await _run_one(pool, cfg, 1, None)).ok
            worker = pool._slots[0].worker
            assert worker is not None
            await worker.exited_within(HANG_GUARD)
    finally:
        await pool.close(2)
    assert worker.log_path.read_text() == "why I left\n"
    assert [r.getMessage() for r in caplog.records if "exited by itself" in r.getMessage()] == [
        f"warm worker {worker.name} exited by itself (code 0) after 1 event(s); its log: {worker.log_path}"
    ]


async def test_close_stops_a_worker_that_ignores_eof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "EOF_GRACE", 0.5)
    monkeypatch.setattr(pool_module, "STOP_GRACE", 1.0)
    pids = tmp_path / "pids"
    code = (
        "import os,signal,subprocess,sys,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r},'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "for line in sys.stdin: pass\n"
        "time.sleep(120)\n"
    )
    cfg = _cfg(tmp_path, [PY, "-c", code])
    pool = WarmPool(cfg, ProcessRuntime(), "", "p2")
    await pool.start()
    for _ in range(200):
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await pool.close()
    assert time.monotonic() - t0 < 20
    assert not [pid for pid in map(int, pids.read_text().split()) if alive(pid)]
    # it did not exit cleanly: its log is kept for a look
    assert list((cfg.data_dir / "warm-workers").glob("*.log"))


CRASH_LEAVING_A_CHILD = r"""
import json, os, subprocess, sys
req = json.loads(sys.stdin.readline())
starts = sys.argv[1]
if not os.path.exists(starts):  # the first worker: a background child holding its pipes, then a crash
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # inherits stderr
    open(starts, "w").write(f"{os.getpid()} {child.pid}")
    print("crashing with a child left behind", file=sys.stderr, flush=True)
    sys.exit(4)
print(json.dumps({"id": req["id"], "ok": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps({"id": req["id"], "ok": True}), flush=True)
"""


async def test_a_crash_that_leaves_a_child_holding_stderr_fails_the_event_at_once(tmp_path: Path) -> None:
    """Python 3.11's `Process.wait()` returns once the pipes are closed too: a worker that crashed leaving a
    background child on its stderr was not seen to exit, and its event waited for the task timeout."""
    starts = tmp_path / "starts"
    cfg = _cfg(tmp_path, [PY, "-c", CRASH_LEAVING_A_CHILD, str(starts)])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r5")
    await pool.start()
    crashed_pid = pool._slots[0].worker.pid  # type: ignore[union-attr]
    child = None
    tdir = _event(cfg, 1)
    work = FileWork(stage=lambda: None, collect=lambda: "value")
    run = asyncio.ensure_future(pool.run("task1", tdir.infile, tdir.outfile, 60, work))
    try:
        done, _ = await asyncio.wait([run], timeout=15)  # the failure mode is waiting out the 60 s timeout
        child = int(starts.read_text().split()[1])
        assert run in done, "the worker's exit was not seen: the event waits for its timeout"
        first = run.result()
        second = await _run_one(pool, cfg, 2, 10)
        replacement_pid = pool._slots[0].worker.pid  # type: ignore[union-attr]
    finally:
        if child is not None and alive(child):  # only when failing: let close() end instead of hanging
            os.kill(child, signal.SIGKILL)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await pool.close(2)
    assert (first.ok, first.timed_out, first.exit_code) == (False, False, 4)
    assert first.error == "warm worker exited (code 4): crashing with a child left behind"
    assert not alive(child)  # the worker's group was killed once it had exited
    assert second.ok and second.value == "value"
    assert replacement_pid != crashed_pid


CRASH_LEAVING_A_DETACHED_CHILD = r"""
import json, subprocess, sys
json.loads(sys.stdin.readline())
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
print("crashing with a detached child left behind", file=sys.stderr, flush=True)
sys.exit(4)
"""


async def test_a_detached_child_holding_a_crashed_workers_stderr_keeps_no_pipe_open_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child in its own session is out of the group kill's reach: its event still fails once the
    output is drained, and the pilot's end of the stderr pipe is closed, not left to it."""
    monkeypatch.setattr(driver_module, "DRAIN_WAIT", 0.5)
    monkeypatch.setattr(worker_proc_module, "DRAIN_WAIT", 0.5)
    pid_file = tmp_path / "child"
    cfg = _cfg(tmp_path, [PY, "-c", CRASH_LEAVING_A_DETACHED_CHILD, str(pid_file)])
    pool = WarmPool(cfg, ProcessRuntime(), "", "r6")
    await pool.start()
    try:
        result = await _run_one(pool, cfg, 1, 60)  # HANG_GUARD: the failure mode is waiting out the 60 s
        child = int(pid_file.read_text())
        assert alive(child)
        held = pipe_ends_here(child, 2)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        await pool.close(2)
    assert (result.ok, result.timed_out, result.exit_code) == (False, False, 4)
    assert result.error == "warm worker exited (code 4): crashing with a detached child left behind"
    assert held == []


def test_oci_runtimes_keep_stdin_attached_only_for_warm_workers() -> None:
    from ewms_pilot.runtimes import DockerRuntime, PodmanRuntime, RunSpec

    for runtime in (DockerRuntime(), PodmanRuntime()):
        base = dict(image="img:1", argv=("python3", "w.py"), env={}, mounts=(), name="n1")
        warm = runtime.run_argv(RunSpec(**base, interactive=True))  # type: ignore[arg-type]
        oneshot = runtime.run_argv(RunSpec(**base))  # type: ignore[arg-type]
        assert "--interactive" not in oneshot
        assert warm.index("--interactive") < warm.index("img:1")
        assert [a for a in warm if a != "--interactive"] == oneshot


# --------------------------------------------------------------------------- the pilot, process runtime

RAW_WORKER = r"""
import json, os, sys, time
marks, pidlog = sys.argv[1], sys.argv[2]
assert os.environ["EWMS_TASK_MODE"] == "warm" and "EWMS_TASK_INFILE" not in os.environ
print("library noise at start-up", flush=True)
print("{not json", flush=True)
print('{"id": "not-mine", "ok": true}', flush=True)
for line in sys.stdin:
    req = json.loads(line)
    data = open(req["infile"]).read()
    with open(pidlog, "a") as f:
        f.write(f"{os.getpid()}\n")
    marker = os.path.join(marks, data)
    if data in ("ev-57", "ev-77", "ev-123") and not os.path.exists(marker):
        open(marker, "w").close()
        if data == "ev-57":
            print("dying on ev-57", file=sys.stderr, flush=True)
            os._exit(3)
        if data == "ev-123":
            time.sleep(60)
        print(json.dumps({"id": req["id"], "ok": False, "error": "refused ev-77 once"}), flush=True)
        continue
    print("noise before the answer to " + data, flush=True)
    open(req["outfile"], "w").write(data + data)
    print(json.dumps({"id": req["id"], "ok": True}), flush=True)
"""


def test_two_hundred_events_survive_a_crash_a_hang_and_noise(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    events = [f"ev-{i}" for i in range(200)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, events))
    script, marks, pidlog = tmp_path / "worker.py", tmp_path / "marks", tmp_path / "pids"
    script.write_text(RAW_WORKER)
    marks.mkdir()
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=shlex.join([PY, str(script), str(marks), str(pidlog)]),
        extra={
            "EWMS_PILOT_TASK_MODE": "warm",
            "EWMS_PILOT_MAX_CONCURRENT_TASKS": "4",
            "EWMS_PILOT_TASK_TIMEOUT": "4",  # roomy: a busy CI machine must not time out good events
            "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
            "EWMS_PILOT_CL_LOG": "INFO",
        },
    )
    run = run_pilot(env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    results = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=len(events)))
    assert sorted(results) == sorted(e + e for e in events)  # nothing lost, nothing twice
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1)) == []
    assert "succeeded 200" in run.stdout and "failed 3" in run.stdout, run.stdout
    assert re.search(r"ContainerRunError: warm worker exited \(code 3\): dying on ev-57", run.stderr)
    assert re.search(r"TaskTimeoutError: timed out after 4 s", run.stderr)
    assert "ContainerRunError: refused ev-77 once" in run.stderr
    # warm: 4 workers, plus one replacing the crashed one and one replacing the hung one
    pids = {int(p) for p in pidlog.read_text().split()}
    assert len(pids) <= 6, pids
    assert not [p for p in pids if alive(p)]
    # stdout noise went to the workers' logs; the crashed/stopped workers' logs are kept
    logs = "".join(p.read_text() for p in (tmp_path / "ewms-pilot-data" / "warm-workers").glob("*.log"))
    assert "[stdout] library noise at start-up" in logs and "[stdout] {not json" in logs
    assert "dying on ev-57" in logs
    # no directory per event: the pilot's one warm dir keeps just the three failed events' infiles
    data = tmp_path / "ewms-pilot-data"
    [warm_dir] = [p for p in data.iterdir() if p.name not in ("data-hub", "warm-workers")]
    assert re.fullmatch(r"warm-[0-9a-f]{8}", warm_dir.name), sorted(data.iterdir())
    kept = list((warm_dir / "task-io").iterdir())
    assert all(p.name.startswith("infile-") for p in kept), kept
    assert sorted(p.read_text() for p in kept) == ["ev-123", "ev-57", "ev-77"]


WIPING_WORKER = r"""
import json, os, shutil, sys
for line in sys.stdin:
    r = json.loads(line)
    d = open(r["infile"]).read()
    if d == "wipe":  # no outfile, and the whole shared task-io dir goes
        shutil.rmtree(os.path.dirname(r["infile"]))
    else:
        open(r["outfile"], "w").write(d + d)
    print(json.dumps({"id": r["id"], "ok": True}), flush=True)
"""


def test_a_worker_that_removes_its_task_dir_costs_no_later_event(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """The pilot keeps its shared warm dir open between events: a worker that removed the dir gets it back."""
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["a", "wipe", "b", "c"]))
    script = tmp_path / "worker.py"
    script.write_text(WIPING_WORKER)
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=shlex.join([PY, str(script)]),
        extra={"EWMS_PILOT_TASK_MODE": "warm", "EWMS_PILOT_MAX_CONCURRENT_TASKS": "1",
               "EWMS_PILOT_PREFETCH": "1"},
    )  # fmt: skip
    run = run_pilot(env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=3))) == ["aa", "bb", "cc"]
    assert "succeeded 4" in run.stdout and "failed 0" in run.stdout, run.stdout


def _warm_pilot_env(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, events: list[str], args: list[str], **extra: str
) -> dict[str, str]:
    """`events` queued on `<queue_name>i`, and a warm pilot's env (process runtime) running `args`."""
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    return base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i",
        queue_out=queue_name + "o", data_dir=tmp_path, task_args=shlex.join(args),
        extra={"EWMS_PILOT_TASK_MODE": "warm", **extra},
    )


def _wait_for_file(path: Path, proc: subprocess.Popen[str], t0: float, what: str) -> None:
    """Until `path` has content (the worker got its event); a pilot that ended first fails the test."""
    while not path.exists() or not path.read_text():
        assert time.monotonic() - t0 < 60 and proc.poll() is None, what
        time.sleep(0.05)


HANGING_WORKER = r"""
import json, os, signal, sys, time
if sys.argv[2:] == ["ignore-sigterm"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for line in sys.stdin:
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(120)
"""


@pytest.mark.parametrize("worker", ["plain", "ignore-sigterm"])
def test_sigterm_stops_busy_workers_and_gives_their_events_back(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, worker: str
) -> None:
    """A busy worker that ignores SIGTERM is killed too: the event's own stop of it is cut short
    at the end of the shutdown, and the pool's close finishes it (before, it outlived the pilot)."""
    qin = queue_name + "i"
    script, pidlog = tmp_path / "hang.py", tmp_path / "pids"
    script.write_text(HANGING_WORKER)
    env = _warm_pilot_env(
        rabbitmq_address, queue_name, tmp_path, ["a", "b"],
        [PY, str(script), str(pidlog), *([worker] if worker != "plain" else [])],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="2", EWMS_PILOT_SHUTDOWN_GRACE="1",
    )  # fmt: skip
    t0 = time.monotonic()
    proc = start_pilot(env)
    while not (pidlog.exists() and len(pidlog.read_text().split()) == 2):
        assert time.monotonic() - t0 < 60 and proc.poll() is None, "both workers never got an event"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, timeout=60, started=t0)
    assert run.returncode == 6, run.stderr[-3000:]
    pids = [int(p) for p in pidlog.read_text().split()]
    outlived = [p for p in pids if alive(p)]
    for pid in outlived:  # no stray process left to later tests
        os.kill(pid, signal.SIGKILL)
    assert not outlived
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2))) == ["a", "b"]


TERM_RECORDING_WORKER = r"""
import os, signal, sys, time
def on_term(*_):
    open(sys.argv[2], "w").write(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
for line in sys.stdin:
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
"""


SLOW_DOUBLING_WORKER = r"""
import json, sys, time
for line in sys.stdin:
    r = json.loads(line)
    open(sys.argv[1], "w").write("busy")
    time.sleep(2)  # still running when the pilot is told to stop
    d = open(r["infile"]).read()
    open(r["outfile"], "w").write(d + d)
    print(json.dumps({"id": r["id"], "ok": True}), flush=True)
"""


def test_sigterm_lets_a_running_warm_event_finish_within_the_grace(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """docs/warm-workers.md: on SIGTERM, running events get EWMS_PILOT_SHUTDOWN_GRACE to finish; one
    that does is published and acked, not given back, and no further event is taken."""
    qin, qout = queue_name + "i", queue_name + "o"
    script, busy = tmp_path / "w.py", tmp_path / "busy"
    script.write_text(SLOW_DOUBLING_WORKER)
    env = _warm_pilot_env(
        rabbitmq_address, queue_name, tmp_path, ["a", "b"], [PY, str(script), str(busy)],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="1", EWMS_PILOT_PREFETCH="1", EWMS_PILOT_SHUTDOWN_GRACE="60",
    )
    t0 = time.monotonic()
    proc = start_pilot(env)
    _wait_for_file(busy, proc, t0, "the worker never got an event")
    proc.send_signal(signal.SIGTERM)
    run = wait_pilot(proc, timeout=90, started=t0)
    assert run.returncode == 6, run.stderr[-3000:]
    done = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2))
    left = asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2))
    assert len(done) == 1 and done[0] in ("aa", "bb"), run.stderr[-3000:]
    assert left == [{"aa": "b", "bb": "a"}[done[0]]]


def test_a_warm_event_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """docs/warm-workers.md: EWMS_PILOT_MAX_DELIVERIES and the dead-letter queue apply as in one-shot
    mode: an event a warm worker refuses each time is parked after its last attempt, with its error."""
    qin, qout, dlq = queue_name + "i", queue_name + "o", queue_name + "d"
    script = "import json, sys\nfor line in sys.stdin:\n    print(json.dumps({'id': json.loads(line)['id'], 'ok': False, 'error': 'refused'}), flush=True)\n"
    env = _warm_pilot_env(
        rabbitmq_address, queue_name, tmp_path, ["a"], [PY, "-c", script],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="1", EWMS_PILOT_MAX_DELIVERIES="2", EWMS_PILOT_QUEUE_DEADLETTER=dlq,
        EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false",
    )
    run = run_pilot(env, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, dlq, timeout=2)) == ["a"]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2)) == []
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2)) == []
    assert run.stderr.count("refused") >= 2, run.stderr[-3000:]  # both attempts ran, and failed with its text


def test_a_sigkilled_pilots_workers_get_sigterm_and_its_event_comes_back(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """docs/warm-workers.md: workers of a pilot that is SIGKILLed get SIGTERM from the kernel (the
    process runtime: the worker itself), and the event it held is redelivered."""
    qin = queue_name + "i"
    script, busy, termed = tmp_path / "w.py", tmp_path / "busy", tmp_path / "termed"
    script.write_text(TERM_RECORDING_WORKER)
    env = _warm_pilot_env(
        rabbitmq_address, queue_name, tmp_path, ["a"], [PY, str(script), str(busy), str(termed)],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="1",
    )
    t0 = time.monotonic()
    proc = start_pilot(env)
    _wait_for_file(busy, proc, t0, "the worker never got the event")
    pid = int(busy.read_text())
    proc.kill()
    proc.wait()
    for _ in range(600):  # not a speed bound: only turns a worker that never ends into a failure
        if not alive(pid):
            break
        time.sleep(0.05)
    outlived = alive(pid)
    if outlived:
        os.kill(pid, signal.SIGKILL)  # no stray process left to later tests
    assert not outlived
    assert termed.read_text() == str(pid)
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2)) == ["a"]


def test_per_event_placeholder_is_a_one_line_error_and_consumes_nothing(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["kept"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=shlex.join([PY, "task.py", "<<INFILE>>"]), extra={"EWMS_PILOT_TASK_MODE": "warm"},
    )
    run = run_pilot(env, timeout=60)
    assert run.returncode == 2  # a config error, found before anything connects
    [line] = run.stderr.strip().splitlines()
    assert "EWMS_PILOT_TASK_ARGS" in line and "<<INFILE>>" in line and "Traceback" not in run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1)) == ["kept"]


# --------------------------------------------------------------------------- the pilot, podman


def _podman_names(pilot_ids: set[str]) -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout
    return [n for n in out.split() if any(f"ewms-pilot-{p}-" in n for p in pilot_ids)]


def _podman_env(rabbitmq_address: str, queue_name: str, tmp_path: Path, image: str, args: list[str], **extra: str) -> dict[str, str]:
    lib = helper_lib(tmp_path)
    return base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path / "data", task_args=shlex.join(args), platform="podman", image=image,
        extra={
            "EWMS_PILOT_TASK_MODE": "warm",
            "EWMS_PILOT_EXTERNAL_DIRECTORIES": f"{lib},{EXAMPLES},{tmp_path / 'scripts'}",
            "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"PYTHONPATH": str(lib), "SLOW_START_SECONDS": "2"}),
            "EWMS_PILOT_CL_LOG": "INFO",
            **extra,
        },
    )


PODMAN_WORKER = r"""
import os
from ewms_pilot import worker

for event in worker.events():
    with event:
        print("noise")
        data = open(event.infile).read()
        info = [str(worker.HAVE_JSON), os.environ["EWMS_TASK_MODE"], os.environ["EWMS_TASK_DATA_HUB_DIR"],
                str(event.infile.startswith("/ewms-pilot-data/")), str(os.getpid())]
        open(event.outfile, "w").write(data + data + "|" + "|".join(info))
"""


@pytest.mark.podman
def test_thirty_events_through_warm_containers_with_the_helper_without_json(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "w.py").write_text(PODMAN_WORKER)
    events = [f"ev{i}" for i in range(30)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    env = _podman_env(
        rabbitmq_address, queue_name, tmp_path, podman_image, ["python3", str(tmp_path / "scripts" / "w.py")],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="2",
    )
    run = run_pilot(env, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=30))
    by_event = {o.split("|")[0]: o.split("|")[1:] for o in out}
    assert sorted(by_event) == sorted(e + e for e in events)
    infos = list(by_event.values())
    assert {tuple(i[:4]) for i in infos} == {("False", "warm", "/ewms-pilot-data/data-hub", "True")}
    assert len({i[4] for i in infos}) <= 2  # two containers did all thirty
    pilot_ids = set(re.findall(r"ewms-pilot-([0-9a-f]{8})-warm", run.stderr))
    assert pilot_ids and not _podman_names(pilot_ids)


@pytest.mark.podman
def test_slow_start_is_paid_once_per_worker_not_per_event(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    (tmp_path / "scripts").mkdir()
    events = [f"e{i}" for i in range(50)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    # each start of the example (its 2 s "load the table") leaves a line in the data hub
    starts = 'echo started >>"$EWMS_TASK_DATA_HUB_DIR/starts"; exec python3 "$0"'
    env = _podman_env(
        rabbitmq_address, queue_name, tmp_path, podman_image,
        ["sh", "-c", starts, str(EXAMPLES / "slow_start_task.py")],
        EWMS_PILOT_MAX_CONCURRENT_TASKS="1",
    )
    run = run_pilot(env, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=50))
    assert sorted(out) == sorted(e + e for e in events)
    # one-shot would pay the start-up once per event; warm pays it once per worker
    assert (tmp_path / "data" / "ewms-pilot-data" / "data-hub" / "starts").read_text().splitlines() == ["started"]
