"""A whole pilot run reporting through chirp to the protocol server (no client patching)."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
import time
from pathlib import Path

import classad2
from chirp_server import ChirpServer
from mq_helpers import publish
from pilot_proc import DOUBLE, base_env, run_pilot, start_pilot, wait_pilot

from ewms_pilot.pilot.journal import journal_path


def _values(server: ChirpServer, name: str) -> list[object]:
    return [classad2.ExprTree(expr).eval() for n, expr in server.set_job_attr_calls() if n == name]


def _env(addr: str, q: str, tmp: Path, server: ChirpServer, code: str, **extra: str) -> dict[str, str]:
    env = base_env(
        broker_type="rabbitmq", address=addr, queue_in=q + "i", queue_out=q + "o", data_dir=tmp,
        task_args=shlex.join([sys.executable, "-c", code, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={"EWMS_PILOT_HTCHIRP": "true", "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.2", **extra},
    )
    env["_CONDOR_CHIRP_CONFIG"] = str(server.config_path)
    return env


def test_a_run_reports_status_counts_and_end(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a", "b", "c"]))
    (tmp_path / "chirp").mkdir()
    with ChirpServer(tmp_path / "chirp") as server:
        run = run_pilot(_env(rabbitmq_address, queue_name, tmp_path, server, DOUBLE))
        assert run.returncode == 0, run.stderr[-3000:]
        statuses = _values(server, "HTChirpEWMSPilotStatus")
        assert statuses[0] == "Started" and statuses[-1] == "Done"
        assert statuses.index("AwaitingFirstMessage") < statuses.index("Tasking")
        attrs = {name: classad2.ExprTree(expr).eval() for name, expr in server.job_attrs.items()}
    assert attrs["HTChirpEWMSPilotTasksTotal"] == 3 and attrs["HTChirpEWMSPilotTasksSuccess"] == 3
    assert attrs["HTChirpEWMSPilotTasksFailed"] == 0 and attrs["HTChirpEWMSPilotTasksDeadLettered"] == 0
    assert "stayed empty" in str(attrs["HTChirpEWMSPilotEndReason"])
    assert isinstance(attrs["HTChirpEWMSPilotStartedTimestamp"], int)
    assert attrs["HTChirpEWMSPilotLastUpdatedTimestamp"] >= attrs["HTChirpEWMSPilotStartedTimestamp"]


def test_failure_and_eviction_are_reported(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["bad", "slow"]))
    code = (
        "import sys,time; d=open(sys.argv[1]).read()\n"
        "if d=='bad': sys.exit('cannot read table X')\n"
        "time.sleep(60)"
    )
    (tmp_path / "chirp").mkdir()
    with ChirpServer(tmp_path / "chirp") as server:
        env = _env(rabbitmq_address, queue_name, tmp_path, server, code,
                   EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false", EWMS_PILOT_MAX_CONCURRENT_TASKS="2",
                   EWMS_PILOT_SHUTDOWN_GRACE="1")
        proc = start_pilot(env)
        assert server.wait_for(lambda s: "HTChirpEWMSPilotError" in s.job_attrs, timeout=30)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        run = wait_pilot(proc, 30)
        assert run.returncode == 6
        attrs = {name: classad2.ExprTree(expr).eval() for name, expr in server.job_attrs.items()}
    assert "cannot read table X" in str(attrs["HTChirpEWMSPilotError"])
    assert attrs["HTChirpEWMSPilotStatus"] == "Evicted"
    assert "SIGTERM" in str(attrs["HTChirpEWMSPilotEndReason"])
    assert attrs["HTChirpEWMSPilotTasksFailed"] >= 1


def test_no_chirp_config_says_so_once_and_runs(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    (tmp_path / "chirp").mkdir()
    with ChirpServer(tmp_path / "chirp") as server:
        env = _env(rabbitmq_address, queue_name, tmp_path, server, DOUBLE)
    env["_CONDOR_CHIRP_CONFIG"] = str(tmp_path / "missing.chirp.config")
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("HTCondor chirp unavailable") == 1


def test_stop_on_error_ends_with_the_same_reason_on_every_pilot(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """Stop-on-error: the end reason, like the error, names the failure, not the task. TMS and a
    `condor_q -af` over a taskforce count identical values across pilots (docs/design.md)."""
    fail = "import sys; sys.exit('cannot read table X')"
    ends, errors, task_ids = [], [], []
    for n in range(2):  # two pilots, each with its own queue: each event is a first attempt
        q = queue_name + f"p{n}"
        asyncio.run(publish("rabbitmq", rabbitmq_address, q + "i", ["bad"]))
        data = tmp_path / f"pilot{n}"
        (data / "chirp").mkdir(parents=True)
        with ChirpServer(data / "chirp") as server:
            run = run_pilot(_env(rabbitmq_address, q, data, server, fail, EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="true"))
            attrs = {name: classad2.ExprTree(expr).eval() for name, expr in server.job_attrs.items()}
        assert run.returncode == 3, run.stderr[-3000:]
        assert attrs["HTChirpEWMSPilotStatus"] == "FatalError"
        ends.append(attrs["HTChirpEWMSPilotEndReason"])
        errors.append(attrs["HTChirpEWMSPilotError"])
        task_ids += [json.loads(line)["task_id"] for line in journal_path(data).read_text().splitlines()]
    assert len(set(task_ids)) == 2
    assert ends[0] == ends[1] == "a task failed (ContainerRunError): exited with code 1: cannot read table X"
    assert errors[0] == errors[1] == "ContainerRunError: exited with code 1: cannot read table X"
