"""Drop-in for ewms-pilot 1.x: driven the way 1.x users and the EWMS TMS drive it (issue 12).

Real RabbitMQ, real task processes, the chirp protocol server; chirp lines
are read back exactly as TMS reads them: each job-event-log line split as
`Attr: value`, the value passed to the htcondor bindings' `unquote`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import classad2
import pytest
from chirp_server import ChirpServer
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot_chirped

import ewms_pilot
from ewms_pilot import ContainerRunError
from ewms_pilot.chirp import ChirpAttr, PilotStatus

PY = sys.executable

#: 1.x's parameters, in 1.x's order (its tests pass the first ones positionally)
PARAMETERS_1X = (
    "task_image", "task_args", "task_timeout", "max_concurrent_tasks",
    "queue_incoming", "queue_incoming_auth_token", "queue_incoming_broker_type",
    "queue_incoming_broker_address", "prefetch", "timeout_wait_for_first_message",
    "timeout_incoming", "queue_outgoing", "queue_outgoing_auth_token",
    "queue_outgoing_broker_type", "queue_outgoing_broker_address", "infile_ext",
    "outfile_ext", "init_image", "init_args", "init_timeout", "quarantine_time",
)  # fmt: skip

#: the status values 1.x reports; ours may add only the ones docs/design.md lists
STATUSES_1X = {
    "Started", "RunningInitCommand", "AwaitingFirstMessage", "Tasking",
    "PendingRemainingTasks", "FatalError", "Done",
}  # fmt: skip
STATUSES_NEW = {"Draining", "Evicted"}

# a ~4 KB traceback (two functions in turn: Python does not fold those frames)
DEEP_FAILURE = (
    "import sys\n"
    "def ping(n):\n"
    "    if n == 0:\n"
    "        raise ValueError('calibration table missing for ' + sys.argv[1])\n"
    "    pong(n - 1)\n"
    "def pong(n):\n"
    "    ping(n - 1)\n"
    "ping(100)\n"
)


@pytest.fixture
def api_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment a 1.x caller's job has: only what the call does not pass."""
    for k in [k for k in os.environ if k.startswith("EWMS_PILOT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("EWMS_PILOT_CONTAINER_PLATFORM", "process")
    monkeypatch.setenv("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", str(tmp_path))
    return tmp_path


def _argv(code: str, *placeholders: str) -> str:
    return shlex.join([PY, "-c", code, *placeholders])


# --------------------------------------------------------------------------- Python API


def test_the_signature_is_1x_order_with_env_var_defaults() -> None:
    params = inspect.signature(ewms_pilot.consume_and_reply).parameters
    assert tuple(params) == PARAMETERS_1X
    assert {p.kind for p in params.values()} == {inspect.Parameter.POSITIONAL_OR_KEYWORD}
    assert repr(params["task_timeout"].default) == "$EWMS_PILOT_TASK_TIMEOUT"


def test_positional_call_as_1x_tests_make_it(api_env: Path, rabbitmq_address: str, queue_name: str) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["x", "y"]))
    code = "import sys; open(sys.argv[2],'w').write(open(sys.argv[1]).read()*2)"
    asyncio.run(
        ewms_pilot.consume_and_reply(
            "",  # task_image (the process platform runs task_args on the host)
            _argv(code, "{{INFILE}}", "{{OUTFILE}}"),
            None,  # task_timeout: none
            2,  # max_concurrent_tasks
            qin, "", "rabbitmq", rabbitmq_address,
            1,  # prefetch
            10,  # timeout_wait_for_first_message
            1,  # timeout_incoming
            qout, "", "rabbitmq", rabbitmq_address,
        )  # fmt: skip
    )
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=2))) == ["xx", "yy"]


def test_failed_tasks_raise_one_container_run_error_naming_each_with_its_traceback(
    api_env: Path, rabbitmq_address: str, queue_name: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR", "false")
    monkeypatch.setenv("EWMS_PILOT_MAX_DELIVERIES", "1")  # one try per event
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["ok", "b", "c"]))
    code = (
        "import sys; d=open(sys.argv[1]).read()\n"
        "def check(d):\n"
        "    if d != 'ok': raise ValueError('bad event ' + d)\n"
        "check(d); open(sys.argv[2],'w').write(d)"
    )
    caplog.set_level(logging.INFO, logger="ewms_pilot")
    with pytest.raises(ContainerRunError) as info:
        asyncio.run(
            ewms_pilot.consume_and_reply(
                "", _argv(code, "{{INFILE}}", "{{OUTFILE}}"),
                queue_incoming=qin, queue_outgoing=qout,
                queue_incoming_broker_type="rabbitmq", queue_outgoing_broker_type="rabbitmq",
                queue_incoming_broker_address=rabbitmq_address,
                queue_outgoing_broker_address=rabbitmq_address, timeout_incoming=1,
            )  # fmt: skip
        )
    err = info.value
    assert isinstance(err, RuntimeError)  # 1.x raised a RuntimeError for failed tasks
    failures = dict(err.failures)  # type: ignore[attr-defined]
    assert len(failures) == 2
    text = str(err)
    assert text.splitlines()[0].startswith("2 TASK(S) FAILED: ")
    assert all(task_id in text.splitlines()[0] for task_id in failures)
    for event in ("b", "c"):
        (failure,) = [f for f in failures.values() if f.reason.endswith(f"ValueError: bad event {event}")]
        assert failure.detail.startswith("Traceback (most recent call last):")
        assert "in check" in failure.detail and failure.detail.endswith(f"ValueError: bad event {event}")
        assert failure.detail in text
    # the log keeps one line per failed task
    lines = [r.getMessage() for r in caplog.records if " failed: ContainerRunError: " in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in ln for ln in lines)
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=1)) == ["ok"]


def test_a_failed_init_container_raises_container_run_error_with_its_traceback(
    api_env: Path, rabbitmq_address: str, queue_name: str
) -> None:
    common = dict(
        queue_incoming=queue_name + "i", queue_outgoing=queue_name + "o",
        queue_incoming_broker_type="rabbitmq", queue_outgoing_broker_type="rabbitmq",
        queue_incoming_broker_address=rabbitmq_address,
        queue_outgoing_broker_address=rabbitmq_address, timeout_incoming=1,
    )  # fmt: skip
    init = "def load():\n    raise RuntimeError('no calibration')\nload()"
    with pytest.raises(ContainerRunError) as info:
        asyncio.run(ewms_pilot.consume_and_reply("", "true", init_args=_argv(init), **common))
    text = str(info.value)
    assert text.startswith("init-container failed (exit code 1): Traceback (most recent call last):")
    assert "in load" in text and text.endswith("RuntimeError: no calibration")

    with pytest.raises(ContainerRunError) as info:
        asyncio.run(
            ewms_pilot.consume_and_reply(
                "", "true", init_args=_argv("import time; time.sleep(60)"), init_timeout=1, **common
            )
        )
    assert str(info.value).startswith("init-container failed: timed out after 1 s")


def test_importing_the_package_runs_nothing_and_the_worker_stays_stdlib_only(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import ewms_pilot.__main__\n"  # must not start a pilot (1.x's tests import every module)
        "import ewms_pilot.worker\n"
        "new = set(sys.modules) - before\n"
        "ours = sorted(m for m in new if m.startswith('ewms_pilot'))\n"
        "others = sorted({m.split('.')[0] for m in new} - set(sys.stdlib_module_names) - {'ewms_pilot'})\n"
        "print(ours, others)\n"
        "from ewms_pilot import ContainerRunError, consume_and_reply\n"
        "print(ContainerRunError.__module__, consume_and_reply.__module__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")}
    res = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    assert first == "['ewms_pilot', 'ewms_pilot.__main__', 'ewms_pilot.worker'] []"
    assert second == "ewms_pilot.tasks.errors ewms_pilot.api"
    assert res.stderr == ""


# --------------------------------------------------------------------------- chirp, as TMS reads it


def tms_read(ulog_lines: list[str]) -> list[tuple[str, str]]:
    """Each job-event-log line as TMS parses it: `Attr: value`, the value through `unquote`."""
    out = []
    for line in ulog_lines:
        attr, sep, value = line.partition(": ")
        assert sep, line
        out.append((attr, classad2.unquote(value)))
    return out


def test_a_failed_task_is_chirped_with_its_own_traceback_and_without_per_task_noise(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["a"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_argv(DEEP_FAILURE, "<<INFILE>>", "<<OUTFILE>>"),
        extra={"EWMS_PILOT_HTCHIRP": "True", "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
               "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.2", "EWMS_PILOT_INIT_ARGS": _argv("pass")},
    )  # fmt: skip
    run, server = run_pilot_chirped(env, tmp_path / "chirp")
    lines = server.ulog_lines
    assert run.returncode == 3, run.stderr[-3000:]
    read = tms_read(lines)
    assert {a for a, _ in read} <= {a.value for a in ChirpAttr}

    (error,) = [v for a, v in read if a == "HTChirpEWMSPilotError"]
    # identical failures on other pilots read the same: no task id, no data dir
    assert error == (
        "ContainerRunError: exited with code 1: ValueError: "
        "calibration table missing for <task dir>/task-io/infile-<id>.in"
    )
    (tb,) = [v for a, v in read if a == "HTChirpEWMSPilotErrorTraceback"]
    assert tb.startswith("Traceback (most recent call last):")  # the task's, not the pilot's
    assert re.search(r"…\[truncated \d+ bytes\]…", tb)  # cut to fit the event log line
    assert re.search(r"ValueError: calibration table missing for \S+/task-io/infile-[0-9a-f]{12}\.in$", tb)

    # only changes are sent: no attribute twice in a row with the same value
    last: dict[str, str] = {}
    for attr, value in read:
        if attr != "HTChirpEWMSPilotLastUpdatedTimestamp":
            assert last.get(attr) != value, f"{attr}={value!r} sent again unchanged"
            last[attr] = value
    statuses = [v for a, v in read if a == "HTChirpEWMSPilotStatus"]
    assert set(statuses) <= STATUSES_1X | STATUSES_NEW
    assert statuses.index("RunningInitCommand") < statuses.index("AwaitingFirstMessage")
    assert statuses[-1] == "FatalError" and statuses.count("FatalError") == 1
    assert last["HTChirpEWMSPilotTasksFailed"] == "1" and last["HTChirpEWMSPilotTasksTotal"] == "1"



def test_a_failed_init_container_is_chirped_with_its_own_traceback(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    init = "def load():\n    raise RuntimeError('no calibration')\nload()"
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i",
        queue_out=queue_name + "o", data_dir=tmp_path, task_args="true",
        extra={"EWMS_PILOT_HTCHIRP": "True", "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
               "EWMS_PILOT_INIT_ARGS": _argv(init)},
    )  # fmt: skip
    run, server = run_pilot_chirped(env, tmp_path / "chirp")
    lines = server.ulog_lines
    assert run.returncode == 4, run.stderr[-3000:]
    (tb,) = [v for a, v in tms_read(lines) if a == "HTChirpEWMSPilotErrorTraceback"]
    # the init container's own traceback, not the pilot's
    assert tb.startswith("Traceback (most recent call last):")
    assert "in load" in tb and tb.rstrip().endswith("RuntimeError: no calibration")
    assert "ewms_pilot" not in tb


def write_tms_env_file(path: Path, values: dict[str, object]) -> Path:
    """An env file as the EWMS TMS writes one: every value `str()`'d and exported."""
    path.write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in values.items()))
    return path


def test_a_job_environment_as_tms_writes_it(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["a", "slow", "b"]))
    task = (
        "import sys, time; d=open(sys.argv[1]).read()\n"
        "if d == 'slow':\n"
        "    print('reading', sys.argv[1], file=sys.stderr, flush=True); time.sleep(60)\n"
        "open(sys.argv[2],'w').write(d+d)"
    )
    (tmp_path / "chirp").mkdir()
    with ChirpServer(tmp_path / "chirp") as server:
        env_file = write_tms_env_file(tmp_path / "pilot.env", {
            "EWMS_PILOT_CONTAINER_PLATFORM": "process",
            "EWMS_PILOT_TASK_ARGS": _argv(task, "{{INFILE}}", "{{OUTFILE}}"),
            "EWMS_PILOT_TASK_TIMEOUT": 2,
            "EWMS_PILOT_MAX_CONCURRENT_TASKS": 1,
            "EWMS_PILOT_QUEUE_INCOMING": qin, "EWMS_PILOT_QUEUE_OUTGOING": qout,
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": rabbitmq_address,
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": rabbitmq_address,
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": 2,
            "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": tmp_path,
            "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": True,
            "EWMS_PILOT_OKAY_ERRORS": ["TimeoutError"],  # str(list): "['TimeoutError']"
            "EWMS_PILOT_EXTERNAL_DIRECTORIES": [],
            "EWMS_PILOT_MAX_DELIVERIES": 1,
            "EWMS_PILOT_HTCHIRP": True,
            "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
            "EWMS_PILOT_TIMEOUT_INCOMING": 1,  # stale: no version reads it (upstream's CI sets it)
        })  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")}
        env["_CONDOR_CHIRP_CONFIG"] = str(server.config_path)
        # the job's wrapper sources the file, then starts the pilot
        res = subprocess.run(
            ["bash", "-c", 'source "$1" && exec "$2" -m ewms_pilot', "job", env_file, PY],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )  # fmt: skip
        lines = server.ulog_lines
    # the timeout is an "okay" error under its 1.x name: the pilot carried on and ended cleanly
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "EWMS_PILOT_TIMEOUT_INCOMING" in res.stderr  # warned about, not refused
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1, expect=2))) == ["aa", "bb"]

    # 1.x's data-dir layout: tools walk ewms-pilot-data/ and expect only directories
    data = tmp_path / "ewms-pilot-data"
    assert "data-hub" in [p.name for p in data.iterdir()]
    assert [p.name for p in data.iterdir() if not p.is_dir()] == []

    read = tms_read(lines)
    last = dict(read)
    assert (last["HTChirpEWMSPilotTasksTotal"], last["HTChirpEWMSPilotTasksSuccess"]) == ("3", "2")
    assert last["HTChirpEWMSPilotTasksFailed"] == "1"
    assert last["HTChirpEWMSPilotError"] == (
        "TaskTimeoutError: timed out after 2 s; last stderr line: reading <task dir>/task-io/infile-<id>.in"
    )
    statuses = [v for a, v in read if a == "HTChirpEWMSPilotStatus"]
    assert statuses[-1] == "Done" and statuses.count("Done") == 1


def test_the_status_table_in_the_docs_is_what_the_pilot_reports() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (yes|new) \|$", text, re.MULTILINE)
    assert {s for s, _ in rows} == {s.value for s in PilotStatus}
    assert {s for s, in_1x in rows if in_1x == "yes"} == STATUSES_1X
