"""Issue 14 item 5: a pilot with a walltime takes no event it cannot finish, drains and exits 0.

The walltime comes from the job ad (`OriginalTime`, as EWMS submits pilots)
or `EWMS_PILOT_LIFETIME`; what a task takes is `EWMS_PILOT_TASK_TIMEOUT`, else
the longest one so far. Events not taken stay on the queue for another pilot.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path

from config_env import MINIMAL
from local_helpers import put_local, take_all_local
from memory_pilot import journal, memory_config, new_queues, put, take
from pilot_proc import base_env, run_pilot, run_pilot_chirped
from test_config_checks import config_check

from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause
from ewms_pilot.resources.lifetime import END_RESERVE

# sleeps as many seconds as the event says, then echoes it
SLEEPER = "import sys,time; d=open(sys.argv[1]).read(); time.sleep(float(d)); open(sys.argv[2],'w').write(d)"


def test_walltime_from_the_job_ad_no_task_started_that_cannot_finish(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    asyncio.run(put_local(db, "in", ["0.3"] * 40))
    job_start = int(time.time())
    ad = tmp_path / ".job.ad"
    ad.write_text(f"OriginalTime = 11\nJobCurrentStartDate = {job_start}\nRequestCpus = 1\n")
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp_path / "p",
        task_args=shlex.join([sys.executable, "-c", SLEEPER, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={
            "_CONDOR_JOB_AD": str(ad), "EWMS_PILOT_TASK_TIMEOUT": "2", "EWMS_PILOT_CL_LOG": "INFO",
            "EWMS_PILOT_HTCHIRP": "true", "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.2",
        },
    )  # fmt: skip
    run, server = run_pilot_chirped(env, tmp_path / "chirp", 60)
    attrs = server.job_values
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ewms-pilot finished: lifetime ending" in run.stdout  # the exit summary
    assert "stopping: lifetime ending" in run.stderr  # the log
    assert "job ad OriginalTime" in run.stderr
    assert str(attrs["HTChirpEWMSPilotEndReason"]).startswith("lifetime ending")
    assert attrs["HTChirpEWMSPilotStatus"] == "Done"
    records = journal(tmp_path / "p")
    assert records and all(r["result"] == "succeeded" for r in records)
    # every task started had its full time limit left, and ended inside the walltime
    assert all(r["start"] + 2 <= job_start + 11 and r["end"] <= job_start + 11 for r in records)
    left = asyncio.run(take_all_local(db, "in"))  # the rest is there for another pilot
    assert left and len(left) + len(records) == 40
    assert len(asyncio.run(take_all_local(db, "out"))) == len(records)


def test_without_a_time_limit_the_longest_task_so_far_must_fit(tmp_path: Path) -> None:
    q = new_queues()
    cfg = memory_config(q, tmp_path, SLEEPER, EWMS_PILOT_LIFETIME="8.5")
    assert cfg.lifetime_end is not None
    ends_at = cfg.lifetime_end.ends_at

    async def main() -> tuple[StopCause | None, str, int]:
        await put(cfg, "1.5", *["0.1"] * 40)  # the first one teaches the pilot a task takes 1.5 s
        request = await Pilot(cfg).run()
        return request.cause, request.reason, len(await take(cfg, q.incoming))

    cause, reason, left = asyncio.run(main())
    assert cause is StopCause.LIFETIME and reason.startswith("lifetime ending"), reason
    assert "the longest task so far" in reason
    records = sorted(journal(tmp_path), key=lambda r: r["start"])
    assert records[0]["end"] - records[0]["start"] >= 1.5
    for i, r in enumerate(records[1:], 1):
        longest = max(p["end"] - p["start"] for p in records[:i])
        assert r["start"] + longest + END_RESERVE <= ends_at  # it was still expected to fit
    assert left and left + len(records) == 41


def test_the_earlier_end_wins_and_is_shown(tmp_path: Path) -> None:
    """As `config --check` (and the start line) shows it: which setting, how long, when it ends."""
    ad = tmp_path / ".job.ad"
    job_start = int(time.time()) - 600
    ad.write_text(f"OriginalTime = 3600\nAllowedJobDuration = 7200\nJobCurrentStartDate = {job_start}\n")
    env = {**MINIMAL, "_CONDOR_JOB_AD": str(ad), "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path)}

    def shown(**extra: str) -> str:
        res = config_check({**env, **extra})
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().splitlines()[-1]  # the resources line

    ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(job_start + 3600))  # from the job's start
    assert shown().endswith(f"lifetime 3600s (job ad OriginalTime), ends {ends}")
    assert "lifetime 60s (EWMS_PILOT_LIFETIME), ends " in shown(EWMS_PILOT_LIFETIME="60")
    assert shown(EWMS_PILOT_LIFETIME="86400").endswith(f"lifetime 3600s (job ad OriginalTime), ends {ends}")
    ad.write_text("RequestCpus = 1\n")
    assert "lifetime" not in shown()


# fails at once on "bad", else sleeps as many seconds as the event says
FAIL_OR_SLEEP = (
    "import sys,time; d=open(sys.argv[1]).read()\n"
    "if d == 'bad': sys.exit('refused')\n"
    "time.sleep(float(d)); open(sys.argv[2],'w').write(d)"
)


def test_a_stop_for_another_cause_still_ends_within_the_walltime(tmp_path: Path) -> None:
    """Stop-on-error (which waits for running tasks) beside a 60 s task: the pilot still exits before
    its walltime, the long task stopped and its event released 5 s before the end."""
    db = tmp_path / "q.db"
    asyncio.run(put_local(db, "in", ["bad", "60"]))
    job_start = int(time.time())
    walltime_end = job_start + 12
    ad = tmp_path / ".job.ad"
    ad.write_text(f"OriginalTime = 12\nJobCurrentStartDate = {job_start}\n")
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp_path / "p",
        task_args=shlex.join([sys.executable, "-c", FAIL_OR_SLEEP, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={
            "_CONDOR_JOB_AD": str(ad), "EWMS_PILOT_MAX_CONCURRENT_TASKS": "2",
            "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "true", "EWMS_PILOT_MAX_DELIVERIES": "3",
        },
    )  # fmt: skip
    run = run_pilot(env, 90)
    ended = time.time()
    assert run.returncode == 3, run.stderr[-3000:]  # the stop's own cause decides the exit
    assert "stopping: " in run.stderr and "lifetime ending" not in run.stdout
    assert ended <= walltime_end, f"pilot ended {ended - walltime_end:.1f}s after its walltime"
    records = {r["result"]: r for r in journal(tmp_path / "p")}
    assert set(records) == {"failed", "cancelled"}, records
    cancelled = records["cancelled"]
    assert cancelled["settlement"] == "released"
    # it had until 5 s before the end (the one deadline), then was stopped and released before the end
    assert walltime_end - END_RESERVE <= cancelled["end"] <= walltime_end
    assert sorted(asyncio.run(take_all_local(db, "in"))) == ["60", "bad"]  # both back for another pilot
