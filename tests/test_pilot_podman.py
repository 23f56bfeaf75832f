"""The pilot with real podman task containers (the test image: Debian + python3)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import DOUBLE, base_env, run_pilot

pytestmark = pytest.mark.podman


def _podman_names(prefix: str = "ewms-pilot-") -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout
    return [n for n in out.split() if n.startswith(prefix)]


def _env(rabbitmq_address: str, queue_name: str, tmp_path: Path, image: str, task_args: str, **extra: str) -> dict[str, str]:
    return base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path, task_args=task_args, platform="podman", image=image, extra=extra,
    )


def test_thirty_events_through_containers(rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str) -> None:
    events = [f"ev{i}" for i in range(30)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", events))
    args = shlex.join(["python3", "-c", DOUBLE, "<<INFILE>>", "<<OUTFILE>>"])
    run = run_pilot(_env(rabbitmq_address, queue_name, tmp_path, podman_image, args, EWMS_PILOT_MAX_CONCURRENT_TASKS="4"), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=30))
    assert sorted(out) == sorted(e + e for e in events)
    pilot_ids = set(re.findall(r"ewms-pilot-([0-9a-f]{8})-", run.stderr))
    assert pilot_ids and not [n for n in _podman_names() if any(p in n for p in pilot_ids)]


def test_container_sees_fixed_paths_env_and_readonly_external_dir(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    ext = tmp_path / "external"
    ext.mkdir()
    (ext / "calib.txt").write_text("calibration-42")
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["x"]))
    # the test image has python3-minimal only (no json module): answer as "key=value" lines
    code = (
        "import os,sys\n"
        "e=os.environ; ext=sys.argv[3]\n"
        "try:\n open(os.path.join(ext,'w.txt'),'w'); writable=True\n"
        "except OSError: writable=False\n"
        "vals={'arg0': sys.argv[1], 'arg1': sys.argv[2], 'in': e['EWMS_TASK_INFILE'], 'hub': e['EWMS_TASK_DATA_HUB_DIR'],"
        " 'calib': open(os.path.join(ext,'calib.txt')).read(), 'writable': str(writable), 'k': e['K']}\n"
        "open(e['EWMS_TASK_OUTFILE'],'w').write(chr(10).join(k+'='+v for k,v in vals.items()))"
    )
    args = shlex.join(["python3", "-c", code, "{{INFILE}}", "<<DATA_HUB>>", str(ext)])
    run = run_pilot(
        _env(
            rabbitmq_address, queue_name, tmp_path, podman_image, args,
            EWMS_PILOT_EXTERNAL_DIRECTORIES=str(ext),
            EWMS_PILOT_TASK_ENV_JSON=json.dumps({"K": "v w"}),
        ),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [text] = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=1))
    out = dict(line.split("=", 1) for line in text.splitlines())
    assert out["in"].startswith("/ewms-pilot-data/task-io/infile-") and out["arg0"] == out["in"]
    assert out["hub"] == "/ewms-pilot-data/data-hub" == out["arg1"]
    assert out["calib"] == "calibration-42" and out["writable"] == "False" and out["k"] == "v w"


def test_init_container_fills_hub_for_container_tasks(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a", "b"]))
    init = shlex.join(["python3", "-c", "import os; open(os.environ['EWMS_TASK_DATA_HUB_DIR']+'/geo.txt','w').write('GEO')"])
    task = shlex.join([
        "python3", "-c",
        "import sys; open(sys.argv[2],'w').write(open(sys.argv[3]+'/geo.txt').read()+open(sys.argv[1]).read())",
        "<<INFILE>>", "<<OUTFILE>>", "<<DATA_HUB>>",
    ])
    run = run_pilot(
        _env(rabbitmq_address, queue_name, tmp_path, podman_image, task,
             EWMS_PILOT_INIT_IMAGE=podman_image, EWMS_PILOT_INIT_ARGS=init),
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=2))) == ["GEOa", "GEOb"]
    assert (tmp_path / "ewms-pilot-data" / "data-hub" / "geo.txt").read_text() == "GEO"


def test_relative_paths_are_the_jobs_dir_where_the_pilot_starts(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    """A relative CONTAINERS_CONF and `docker-archive:` image, as a job gives them (its scratch dir is the cwd)."""
    job = tmp_path / "job"
    job.mkdir()
    conf = Path(os.environ["CONTAINERS_CONF"])  # the podman_image fixture checked it exists
    shutil.copy(conf, job / "containers.conf")
    subprocess.run(["podman", "save", "--quiet", "-o", str(job / "image.tar"), podman_image], check=True, timeout=300)
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a"]))
    init = shlex.join(["python3", "-c", "import os; open(os.environ['EWMS_TASK_DATA_HUB_DIR']+'/i','w').write('I')"])
    task = shlex.join([
        "python3", "-c", "import sys; open(sys.argv[2],'w').write(open(sys.argv[3]+'/i').read()+open(sys.argv[1]).read())",
        "<<INFILE>>", "<<OUTFILE>>", "<<DATA_HUB>>",
    ])  # fmt: skip
    env = _env(
        rabbitmq_address, queue_name, tmp_path / "data", "docker-archive:image.tar", task,
        EWMS_PILOT_INIT_IMAGE="docker-archive:image.tar", EWMS_PILOT_INIT_ARGS=init,
    )  # fmt: skip
    run = run_pilot({**env, "CONTAINERS_CONF": "containers.conf"}, timeout=300, cwd=job)
    assert run.returncode == 0, run.stderr[-3000:]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=1)) == ["Ia"]
    assert sorted(p.name for p in job.iterdir()) == ["containers.conf", "image.tar"]


def test_task_timeout_stops_the_container(rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["slow"]))
    # ignores SIGTERM, so only the kill step can stop it
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    args = shlex.join(["python3", "-c", code])
    run = run_pilot(_env(rabbitmq_address, queue_name, tmp_path, podman_image, args, EWMS_PILOT_TASK_TIMEOUT="3"), timeout=120)
    assert run.returncode == 3 and "TaskTimeoutError" in run.stderr, run.stderr[-3000:]
    pilot_ids = set(re.findall(r"ewms-pilot-([0-9a-f]{8})-", run.stderr))
    assert pilot_ids, "the log names the task container"
    assert not [n for n in _podman_names() if any(p in n for p in pilot_ids)]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=1)) == ["slow"]


def test_missing_image_is_a_one_line_error(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    run = run_pilot(
        _env(rabbitmq_address, queue_name, tmp_path, "localhost/no-such-image:never", shlex.join(["true"])),
        timeout=120,
    )
    assert run.returncode == 7  # RUNTIME_UNAVAILABLE
    assert "no-such-image" in run.stderr.strip().splitlines()[-1] and "Traceback" not in run.stderr
