"""Issue 14 item 6: the disk watchdog, on a real small file system (an 8 MiB tmpfs as the data dir).

A task that fills the disk fails as DiskFullError (the pilot and the other
tasks go on); below EWMS_PILOT_MIN_FREE_DISK no event is taken while tasks
run, and taking resumes when they free the space; with nothing running the
pilot ends (exit 8), its events left on the queue.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from config_env import MINIMAL
from local_helpers import put_local, take_all_local
from memory_pilot import journal, memory_config, new_queues, put
from pilot_proc import base_env, run_pilot_chirped
from test_config_checks import config_check

from ewms_pilot.exitcodes import ExitCode
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause, StopRequest
from ewms_pilot.resources.disk import DEFAULT_MIN_FREE, STATVFS_TIMEOUT, DiskWatch

MiB = 2**20


def _task(side: Path) -> str:
    """`fill`: write until the disk is full; `hog`: 5 MiB, 4 s; else 0.2 s. `side` gets the hog's times."""
    return (
        "import os,sys,time\n"
        "d=open(sys.argv[1]).read(); here=os.path.dirname(sys.argv[2])\n"
        "if d=='fill':\n"
        "    f=open(os.path.join(here,'fill'),'wb')\n"
        "    while True: f.write(b'x'*65536); f.flush()\n"
        "if d=='hog':\n"
        "    open(os.path.join(here,'hog'),'wb').write(b'x'*5*1024*1024)\n"
        f"    t=time.time(); time.sleep(4); open({str(side)!r},'w').write(f'{{t}} {{time.time()}}')\n"
        "else: time.sleep(0.2)\n"
        "open(sys.argv[2],'w').write(d)\n"
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _run(cfg_items: tuple[object, ...], cfg: object) -> StopRequest:
    async def main() -> StopRequest:
        await put(cfg, *cfg_items)  # type: ignore[arg-type]
        return await Pilot(cfg).run()  # type: ignore[arg-type]

    return asyncio.run(main())


def test_a_task_that_fills_the_disk_fails_as_disk_full_and_the_rest_go_on(small_disk: Path, tmp_path: Path) -> None:
    q = new_queues()
    cfg = memory_config(
        q, small_disk, _task(tmp_path / "side"), EWMS_PILOT_MIN_FREE_DISK="1M",
        EWMS_PILOT_OKAY_ERRORS="DiskFullError", EWMS_PILOT_MAX_DELIVERIES="1",
    )  # fmt: skip
    request = _run(("fill", "a", "b"), cfg)
    assert request.cause is StopCause.QUEUE_EMPTY, request.reason
    records = {r["error_type"] or r["result"]: r for r in journal(small_disk)}
    assert set(records) == {"DiskFullError", "succeeded"} and len(journal(small_disk)) == 3
    assert "No space left on device" in records["DiskFullError"]["error"]
    assert not list((small_disk / "ewms-pilot-data").glob("*/task-io/fill"))  # its files freed the disk


def test_below_the_minimum_no_event_is_taken_until_running_tasks_free_space(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ewms_pilot")
    q = new_queues()
    side = tmp_path / "side"
    cfg = memory_config(q, small_disk, _task(side), EWMS_PILOT_MIN_FREE_DISK="4M", EWMS_PILOT_MAX_CONCURRENT_TASKS="2")
    request = _run(("hog", *[f"q{i}" for i in range(12)]), cfg)
    assert request.cause is StopCause.QUEUE_EMPTY, request.reason
    filled, hog_exit = map(float, side.read_text().split())
    records = journal(small_disk)
    assert len(records) == 13 and all(r["result"] == "succeeded" for r in records)
    hog = next(r for r in records if r["end"] - r["start"] >= 4)
    quick = sorted(r["start"] for r in records if r is not hog)
    # a reading is at most 1 s old: from then on until the hog's files are gone, nothing starts
    assert [t for t in quick if filled + 2.0 <= t < hog_exit] == []
    assert any(t >= hog_exit for t in quick)  # taking resumed
    assert "below EWMS_PILOT_MIN_FREE_DISK" in caplog.text and "taking events again" in caplog.text


def test_with_nothing_running_a_full_disk_ends_the_pilot_and_leaves_the_events(small_disk: Path, tmp_path: Path) -> None:
    """A real pilot process: exit code 8, chirp says why (DiskFullError, FatalError), events stay queued."""
    (small_disk / "ballast").write_bytes(b"x" * int(7.5 * MiB))
    db = tmp_path / "q.db"
    asyncio.run(put_local(db, "in", ["a", "b"]))
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=small_disk,
        task_args=shlex.join([sys.executable, "-c", _task(tmp_path / "side"), "<<INFILE>>", "<<OUTFILE>>"]),
        extra={"EWMS_PILOT_MIN_FREE_DISK": "1M", "EWMS_PILOT_HTCHIRP": "true",
               "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.2"},
    )  # fmt: skip
    run, server = run_pilot_chirped(env, tmp_path / "chirp", 60)
    attrs = server.job_values
    assert run.returncode == ExitCode.DISK_FULL == 8, run.stderr[-3000:]
    assert "ewms-pilot finished: disk full: " in run.stdout and "below EWMS_PILOT_MIN_FREE_DISK=1 MiB" in run.stdout
    assert str(attrs["HTChirpEWMSPilotEndReason"]).startswith("disk full: free disk in "), attrs
    assert str(attrs["HTChirpEWMSPilotError"]).startswith("DiskFullError: "), attrs
    assert attrs["HTChirpEWMSPilotStatus"] == "FatalError"
    assert sorted(asyncio.run(take_all_local(db, "in"))) == ["a", "b"]  # left for a pilot elsewhere


def test_the_default_minimum_is_1g_or_a_tenth_of_a_small_slot(tmp_path: Path) -> None:
    """As `config --check` shows it (the settings in effect, pasteable back: "off" stays off)."""
    ad = tmp_path / ".machine.ad"
    env = {**MINIMAL, "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path), "_CONDOR_MACHINE_AD": str(ad)}

    def shown(**extra: str) -> str:
        res = config_check({**env, **extra})
        assert res.returncode == 0, res.stderr
        [line] = [x for x in res.stdout.splitlines() if x.startswith("EWMS_PILOT_MIN_FREE_DISK=")]
        return line.partition("=")[2]

    ad.write_text("Cpus = 1\nMemory = 2048\nDisk = 2000000\n")  # KB: ~1.9 GiB
    assert shown() == str(200_000 * 1024)  # a tenth of the slot
    ad.write_text("Cpus = 1\nMemory = 2048\nDisk = 200000000\n")
    assert shown() == str(DEFAULT_MIN_FREE)
    assert shown(EWMS_PILOT_MIN_FREE_DISK="0") == "0"
    assert shown(EWMS_PILOT_MIN_FREE_DISK=shown(EWMS_PILOT_MIN_FREE_DISK="0")) == "0"


@pytest.fixture
def hung_mount(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A real file system that does not answer: a FUSE mount whose server never replies (a hung
    NFS server's effect); setting the event closes the server's end: calls then fail (ENOTCONN)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a FUSE mount needs root and /dev/fuse")
    mnt = tmp_path / "hung"
    mnt.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hung", str(mnt).encode(), b"fuse", 0, opts) != 0:
        os.close(fd)
        pytest.skip(f"cannot mount FUSE: errno {ctypes.get_errno()}")
    answer = threading.Event()
    closer = threading.Thread(target=lambda: (answer.wait(), os.close(fd)), daemon=True)
    closer.start()
    try:
        yield mnt, answer
    finally:
        answer.set()
        closer.join(5)
        libc.umount2(str(mnt).encode(), 2)  # MNT_DETACH


def test_a_data_dir_that_does_not_answer_never_freezes_the_event_loop(
    hung_mount: tuple[Path, threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """statvfs on a hung data dir ran on the event loop: it froze it (signals included) for good."""
    mnt, answer = hung_mount
    watch = DiskWatch(mnt, minimum=1)
    unfreeze = threading.Timer(STATVFS_TIMEOUT + 3, answer.set)  # (a frozen loop gets its verdict too)
    unfreeze.start()

    async def main() -> tuple[str | None, int, list[str | None]]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        reason = await watch.short()
        during = ticks
        again = [await watch.short() for _ in range(3)]  # asked again before it answers: no new wait
        answer.set()  # the file system answers (with an error: not a measurement, so not short)
        while (back := await watch.short()) is not None:
            await asyncio.sleep(0.1)
        ticker.cancel()
        return reason, during, [*again, back]

    with caplog.at_level(logging.WARNING, "ewms_pilot"):
        reason, ticks, later = asyncio.run(main())
    unfreeze.cancel()
    assert ticks > 0, "the event loop was frozen while statvfs hung"
    assert reason == f"free disk in {mnt} unknown: statvfs has not answered for {STATVFS_TIMEOUT:g}s"
    assert later[:3] == [reason] * 3 and later[3] is None  # no events while unknown; then taken again
    messages = [r.getMessage() for r in caplog.records]
    assert sum("statvfs has not answered" in m for m in messages) == 1, messages  # said once
    assert f"{mnt} answers again" in messages
