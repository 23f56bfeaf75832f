"""Real eviction: condor_vacate_job and condor_rm while tasks run, three pilots on one queue.

The job's vacate time (job_max_vacate_time = 5) is shorter than the pilot's grace
(30 s): a pilot that waited out its grace would be SIGKILLed before it released
its events and said why it stopped. Every event's task first waits on a file the
test creates, so all three pilots are mid-task when two of them are stopped.
"""

from __future__ import annotations

import collections
import shutil

import pytest
from mq_helpers import drain, publish
from poolkit import (
    SITE,
    Pool,
    PoolError,
    chirp_events,
    make_job_dir,
    pool_exec,
    pool_processes,
    rabbitmq_queue_env,
    remove_job_dir,
    submit,
    tms_parse,
    wait_for,
    wait_left_queue,
)

from ewms_pilot.chirp.status import ChirpAttr, PilotStatus

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

#: doubles its input; a "w..." event first waits (at most 5 min) for the file argv[3]
TASK = (
    "import os, sys, time; d=open(sys.argv[1]).read(); "
    "[time.sleep(0.2) for _ in range(1500) if d.startswith('w') and not os.path.exists(sys.argv[3])]; "
    "open(sys.argv[2],'w').write(d+d)"
)
JOB_REMOVED, JOB_COMPLETED = 3, 4


async def test_vacated_and_removed_pilots_release_their_events_in_time(
    pool: Pool, rabbitmq_address: str, queue_name: str
) -> None:
    events = ["q0", "q1", "w0", "w1", "w2", *(f"q{i}" for i in range(2, 8))]
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", events)
    site = SITE / queue_name
    site.mkdir(parents=True)
    release = site / "release"
    env = rabbitmq_queue_env(queue_name, rabbitmq_address) | {
        "EWMS_PILOT_TASK_IMAGE": pool.task_sandbox,
        "EWMS_PILOT_TASK_ARGS": f'python3 -c "{TASK}" <<INFILE>> <<OUTFILE>> {release}',
        "EWMS_PILOT_EXTERNAL_DIRECTORIES": [str(site)],
        "EWMS_PILOT_SHUTDOWN_GRACE": 30,
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": 30,  # the rematched run may find none
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": 4,
        "EWMS_PILOT_HTCHIRP": True,
        "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
    }
    job_dir = make_job_dir(env, pool.pilot_sandbox, queue=3)
    cluster = None
    try:
        cluster = submit(job_dir, "-append", "job_max_vacate_time = 5")
        log = job_dir / f"pilot-{cluster}.log"

        def waiting_tasks() -> list[str]:
            return [p for p in pool_processes(str(release)) if p.split()[0].endswith("/python3")]

        try:
            wait_for(lambda: len(waiting_tasks()) == 3, 240, "all three pilots running a task")
            pool_exec(["condor_vacate_job", f"{cluster}.0"])
            pool_exec(["condor_rm", f"{cluster}.1"])

            def stopped(proc: int) -> bool:
                return any(
                    p == proc and tms_parse(i)[0] == ChirpAttr.HTChirpEWMSPilotEndReason.value
                    for p, i in chirp_events(log)
                )

            wait_for(lambda: stopped(0) and stopped(1), 60, "both stopped pilots to end")
            release.touch()  # the tasks may finish now
            ads = wait_left_queue(cluster, 3, timeout=240)
        except PoolError as e:
            errs = {p.name: p.read_text()[-1500:] for p in job_dir.glob("pilot-*.err")}
            pytest.fail(f"{e}; job stderr tails: {errs}")

        by_proc = {ad["ProcId"]: ad for ad in ads}
        assert by_proc[0]["JobStatus"] == JOB_COMPLETED and by_proc[0]["ExitCode"] == 0
        assert by_proc[0]["NumJobStarts"] >= 2  # vacated, matched again, finished
        assert by_proc[1]["JobStatus"] == JOB_REMOVED
        assert by_proc[2]["JobStatus"] == JOB_COMPLETED and by_proc[2]["ExitCode"] == 0

        results = await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 5, len(events) + 3)
        counts = collections.Counter(results)
        duplicates = {r: n for r, n in counts.items() if n > 1}
        assert set(counts) == {e + e for e in events}, (
            f"lost: {[e for e in events if e + e not in counts]}"
        )
        assert duplicates == {}, (
            f"{sum(duplicates.values()) - len(duplicates)} duplicate(s): {duplicates}"
        )

        chirps = collections.defaultdict(list)
        for proc, info in chirp_events(log):
            chirps[proc].append(tms_parse(info))
        for proc in (0, 1):  # stopped by HTCondor: each ended its own shutdown in time
            ends = [v for a, v in chirps[proc] if a == ChirpAttr.HTChirpEWMSPilotEndReason.value]
            assert ends and ends[0] == "received SIGTERM", chirps[proc]
            statuses = [v for a, v in chirps[proc] if a == ChirpAttr.HTChirpEWMSPilotStatus.value]
            assert PilotStatus.Evicted.value in statuses, chirps[proc]
        statuses0 = [v for a, v in chirps[0] if a == ChirpAttr.HTChirpEWMSPilotStatus.value]
        first_end = statuses0.index(PilotStatus.Evicted.value)
        assert statuses0[first_end + 1] == PilotStatus.Started.value  # the rematched run
        assert statuses0[-1] == PilotStatus.Done.value
    finally:
        remove_job_dir(job_dir, cluster)
        shutil.rmtree(site, ignore_errors=True)
