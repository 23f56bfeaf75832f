"""The pilot as an HTCondor job, submitted the way EWMS submits it, reporting with real chirp.

Container universe, the apptainer-flavour pilot image as a sandbox, tasks run
by apptainer nested in the job's container; examples/htcondor/pilot.sub as
submitted (the pilot image the only substitution), the env file as EWMS's
task-management service (TMS) writes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mq_helpers import drain, publish
from poolkit import (
    POOL_SCRIPT,
    SITE,
    SUBMITTER_UID,
    Pool,
    PoolError,
    chirp_events,
    make_job_dir,
    rabbitmq_queue_env,
    remove_job_dir,
    submit,
    tms_parse,
    wait_left_queue,
)

from ewms_pilot.chirp.status import ChirpAttr, PilotStatus

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

#: the attribute names ewms-pilot 1.x reported, which the TMS knows (its JobInfoKey)
TMS_ATTRS = {
    "HTChirpEWMSPilotLastUpdatedTimestamp",
    "HTChirpEWMSPilotStartedTimestamp",
    "HTChirpEWMSPilotStatus",
    "HTChirpEWMSPilotTasksTotal",
    "HTChirpEWMSPilotTasksFailed",
    "HTChirpEWMSPilotTasksSuccess",
    "HTChirpEWMSPilotError",
    "HTChirpEWMSPilotErrorTraceback",
}

#: doubles its input, except "boom", on which it dies with a Python traceback
TASK = (
    "import sys; d=open(sys.argv[1]).read(); "
    "d == 'boom' and int('not-a-number-' + d); "
    "open(sys.argv[2],'w').write(d+d)"
)


def test_demo_shows_chirp_status_in_condor_q(pool: Pool, pool_dir: Path) -> None:
    """The README's try-it command: a pilot job finishes, condor_q shows its chirp status."""
    res = subprocess.run(
        ["bash", str(POOL_SCRIPT), "submit", "--events", "4", "--work", str(pool_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    running = [ln for ln in res.stdout.splitlines() if ln.startswith("condor_q: JobStatus=Running")]
    assert any("HTChirpEWMSPilotStatus=None" not in ln for ln in running), res.stdout
    assert (
        "condor_history: ExitCode=0 HTChirpEWMSPilotStatus=Done HTChirpEWMSPilotTasksTotal=4"
        " HTChirpEWMSPilotTasksSuccess=4 HTChirpEWMSPilotTasksFailed=0"
    ) in res.stdout


async def test_job_as_ewms_submits_it_reports_through_the_job_event_log(
    pool: Pool, rabbitmq_address: str, rabbitmq_token: tuple[str, str], queue_name: str
) -> None:
    """One pilot job: 3 events, one failing with a traceback; its chirp lines in the job
    event log, read as the TMS reads them; the token nowhere in the job's stderr."""
    user, token = rabbitmq_token
    address = f"{user}@{rabbitmq_address}"  # the password is the token from the env file
    auth = f"{user}:{token}@{rabbitmq_address}"
    await publish("rabbitmq", auth, f"{queue_name}-in", ["a", "boom", "c"])
    site = SITE / queue_name  # read-only in the job and its tasks (like site data on /cvmfs)
    site.mkdir(parents=True)
    (site / "hello.txt").write_text("from the site")
    env: dict[str, object] = rabbitmq_queue_env(queue_name, address) | {
        "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": token,
        "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN": token,
        "EWMS_PILOT_TASK_IMAGE": pool.task_sandbox,
        "EWMS_PILOT_TASK_ARGS": f'python3 -c "{TASK}" <<INFILE>> <<OUTFILE>>',
        "EWMS_PILOT_EXTERNAL_DIRECTORIES": [str(site), str(SITE)],  # -> str(list), as the TMS does
        "EWMS_PILOT_MAX_CONCURRENT_TASKS": 2,
        "EWMS_PILOT_MAX_DELIVERIES": 1,  # the failing event is not run again
        "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": False,  # -> "False"
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": 60,
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": 3,
        "EWMS_PILOT_HTCHIRP": True,  # -> "True"
        "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
    }
    job_dir = make_job_dir(env, pool.pilot_sandbox, queue=1)
    cluster = None
    try:
        cluster = submit(job_dir)
        log, err_file = job_dir / f"pilot-{cluster}.log", job_dir / f"pilot-{cluster}.0.err"

        try:
            (ad,) = wait_left_queue(cluster, 1, timeout=240)
        except PoolError as e:
            pytest.fail(
                f"{e}; the job's stderr: {err_file.exists() and err_file.read_text()[-3000:]}"
            )
        err = err_file.read_text()
        assert ad["ExitCode"] == 0, err[-3000:]
        assert token not in err  # the TMS's `set -x` in the env file traced it before
        results = await drain("rabbitmq", auth, f"{queue_name}-out", 3, 2)
        assert sorted(results) == ["aa", "cc"]

        chirps = [tms_parse(info) for _, info in chirp_events(log)]
        assert {a for a, _ in chirps} - {a.value for a in ChirpAttr} == set()  # nothing unnamed
        statuses = [v for a, v in chirps if a == ChirpAttr.HTChirpEWMSPilotStatus.value]
        assert statuses == [
            PilotStatus.Started.value,
            PilotStatus.AwaitingFirstMessage.value,
            PilotStatus.Tasking.value,
            PilotStatus.Done.value,
        ], "\n".join(map(repr, chirps))
        last = {a: v for a, v in chirps if a in TMS_ATTRS}  # the latest of each, as the TMS keeps
        counts = [last[f"HTChirpEWMSPilotTasks{k}"] for k in ("Total", "Success", "Failed")]
        assert counts == ["3", "2", "1"]
        assert "ValueError: invalid literal for int()" in last["HTChirpEWMSPilotError"]
        tb = last["HTChirpEWMSPilotErrorTraceback"]
        assert tb.startswith("Traceback (most recent call last):"), tb
        assert "ValueError: invalid literal for int() with base 10: 'not-a-number-boom'" in tb
        # with JOB_EVENT_LOG nothing goes to the job ad
        assert "HTChirpEWMSPilotStatus" not in ad
    finally:
        remove_job_dir(job_dir, cluster)
        shutil.rmtree(site, ignore_errors=True)


#: a plain vanilla-universe pilot (no image, no entrypoint): the pool's python runs it
VANILLA_SUB = """\
universe                = vanilla
executable              = /opt/ewms-pilot/bin/python3
arguments               = -m ewms_pilot run --no-progress
transfer_executable     = false
should_transfer_files   = YES
when_to_transfer_output = ON_EXIT_OR_EVICT
environment             = "{environment}"
output                  = pilot.out
error                   = pilot.err
log                     = pilot.log
queue
"""


def _vanilla_job(job_dir: Path, env: dict[str, str], *submit_args: str) -> tuple[dict[str, Any], str]:
    """Submit VANILLA_SUB with `env` (and condor_submit `submit_args`) from `job_dir`; (history ad, stderr)."""
    # HTCondor's quoting inside environment = "...": 'value', with ' and " doubled
    quoted = {k: v.replace("'", "''").replace('"', '""') for k, v in env.items()}
    environment = " ".join(f"{k}='{v}'" for k, v in quoted.items())
    (job_dir / "pilot.sub").write_text(VANILLA_SUB.format(environment=environment))
    os.chown(job_dir / "pilot.sub", SUBMITTER_UID, SUBMITTER_UID)
    cluster = submit(job_dir, *submit_args)
    try:
        (ad,) = wait_left_queue(cluster, 1, timeout=180)
    except PoolError as e:
        pytest.fail(str(e))
    return ad, (job_dir / "pilot.err").read_text()


async def test_vanilla_job_keeps_its_data_in_the_scratch_dir(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    """No EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST: the pilot itself (no entrypoint) uses
    the job's scratch dir, whose new files come back with the job's output."""
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", ["x", "y"])
    os.chown(pool_dir, SUBMITTER_UID, SUBMITTER_UID)
    env = rabbitmq_queue_env(queue_name, rabbitmq_address) | {
        "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_TASK_ARGS": 'python3 -c "import sys; d=open(sys.argv[1]).read(); '
        "open(sys.argv[2],'w').write(d+d)\" <<INFILE>> <<OUTFILE>>",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "2",
    }
    ad, err = _vanilla_job(pool_dir, env)
    assert ad["ExitCode"] == 0, err[-3000:]
    assert sorted(await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 3, 2)) == [
        "xx",
        "yy",
    ]
    # its journal was written to the scratch dir: a new top-level file, so HTCondor
    # brought it back with the output (1.x died with PermissionError on /ewms-pilot-data)
    journal = pool_dir / "ewms-pilot-tasks.jsonl"
    assert journal.is_file(), f"{sorted(p.name for p in pool_dir.iterdir())}; stderr: {err[-3000:]}"
    assert len(journal.read_text().splitlines()) == 2
    assert "PermissionError" not in err


async def test_vanilla_job_sizes_itself_from_its_slot_and_reads_its_walltime(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    """Issue 14: `auto` concurrency from the job's own slot (3 of the pool's 4 CPUs), and the
    lifetime from the job ad's `+OriginalTime` as EWMS submits it."""
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", ["x", "y", "z"])
    os.chown(pool_dir, SUBMITTER_UID, SUBMITTER_UID)
    env = rabbitmq_queue_env(queue_name, rabbitmq_address) | {
        "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_TASK_ARGS": 'python3 -c "import sys; d=open(sys.argv[1]).read(); '
        "open(sys.argv[2],'w').write(d+d)\" <<INFILE>> <<OUTFILE>>",
        "EWMS_PILOT_MAX_CONCURRENT_TASKS": "auto",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "2",
    }
    ad, err = _vanilla_job(pool_dir, env, "-append", "request_cpus = 3", "-append", "+OriginalTime = 3600")
    assert ad["ExitCode"] == 0, err[-3000:]
    assert "GPUs none (HTCondor machine ad); the pilot runs up to 3 task(s) at once" in err, err[-3000:]
    assert "lifetime 3600s (job ad OriginalTime)" in err
    assert sorted(await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 3, 3)) == ["xx", "yy", "zz"]


def test_vanilla_job_with_an_unwritable_data_dir_is_one_line_and_exit_2(
    pool: Pool, pool_dir: Path
) -> None:
    os.chown(pool_dir, SUBMITTER_UID, SUBMITTER_UID)
    env = {
        "EWMS_PILOT_QUEUE_INCOMING": "never-used-in",
        "EWMS_PILOT_QUEUE_OUTGOING": "never-used-out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "127.0.0.1:5672",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "127.0.0.1:5672",
        "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_TASK_ARGS": "true",
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": "/",  # what 1.x defaulted to: root's
    }
    ad, err = _vanilla_job(pool_dir, env)
    assert ad["ExitCode"] == 2, err[-3000:]
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith(
        "ewms-pilot: configuration error: EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="
    )
    assert "not writable" in line
