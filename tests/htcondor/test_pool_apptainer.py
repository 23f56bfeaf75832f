"""The apptainer runtime with real apptainer (1.4, in the pool container), not argv checks.

The pilot runs inside the pool container as the pool's ordinary user, with
EWMS_PILOT_CONTAINER_PLATFORM=apptainer and the test image converted to a
sandbox (podman save -> apptainer build --sandbox: the shape of an unpacked
image on CVMFS), against the host's RabbitMQ.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from poolkit import REPO, Pool, PoolPilot, pool_processes, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

TEST_IMAGE = os.environ.get("EWMS_TEST_IMAGE", "localhost/ewms-pilot-test:bookworm")

#: the task: reports what it sees (mounts, env) into its outfile, as a Python
#: literal (the test image has python3-minimal: no json module)
REPORT_TASK = r"""
import os, sys
infile, outfile, ext = sys.argv[1], sys.argv[2], sys.argv[3]
hub = os.environ["EWMS_TASK_DATA_HUB_DIR"]
def can_write(d):
    try:
        with open(os.path.join(d, "probe-" + str(os.getpid())), "w"):
            pass
        return True
    except OSError:
        return False
open(outfile, "w").write(repr({
    "in": open(infile).read(),
    "infile": infile,
    "my_var": os.environ.get("MY_VAR"),
    "leak": os.environ.get("POOL_LEAK_CANARY"),
    "from_init": open(os.path.join(hub, "init.txt")).read(),
    "site": open(os.path.join(ext, "site.txt")).read(),
    "ext_writable": can_write(ext),
    "hub_writable": can_write(hub),
}))
"""


def _env(pool: Pool, rabbitmq_address: str, q: str, run_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "EWMS_PILOT_QUEUE_INCOMING": f"{q}-in",
        "EWMS_PILOT_QUEUE_OUTGOING": f"{q}-out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": rabbitmq_address,
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": rabbitmq_address,
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(run_dir),
        "EWMS_PILOT_CONTAINER_PLATFORM": "apptainer",
        "EWMS_PILOT_TASK_IMAGE": pool.task_sandbox,
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "30",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "2",
        **extra,
    }


async def test_events_mounts_env_init_and_teardown(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    """Three events through apptainer: task-io and data hub writable, the external dir
    read-only at its own path, the task's env set (a comma in a value stays), the
    pilot's own env not leaked (--containall), init before and teardown after."""
    ext = pool_dir / "site-data"
    ext.mkdir()
    (ext / "site.txt").write_text("site file")
    (ext / "task.py").write_text(REPORT_TASK)
    ext.chmod(0o755)
    events = [f"ev{i}" for i in range(3)]
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", events)
    hub_py = (
        "import os; open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'], '{}'), 'w').write('{}')"
    )
    env = _env(
        pool,
        rabbitmq_address,
        queue_name,
        pool_dir,
        EWMS_PILOT_TASK_ARGS=f"python3 {ext}/task.py <<INFILE>> <<OUTFILE>> {ext}",
        EWMS_PILOT_TASK_ENV_JSON=json.dumps({"MY_VAR": "a,b c"}),
        EWMS_PILOT_EXTERNAL_DIRECTORIES=str(ext),
        EWMS_PILOT_INIT_IMAGE=pool.task_sandbox,
        EWMS_PILOT_INIT_ARGS=f'python3 -c "{hub_py.format("init.txt", "made by init")}"',
        EWMS_PILOT_TEARDOWN_IMAGE=pool.task_sandbox,
        EWMS_PILOT_TEARDOWN_ARGS=f'python3 -c "{hub_py.format("teardown.txt", "bye")}"',
        POOL_LEAK_CANARY="pilot-env-" + uuid.uuid4().hex,
    )
    rc, _, err = PoolPilot(env, pool_dir).wait()
    assert rc == 0, err[-3000:]
    results = [
        ast.literal_eval(r)
        for r in await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 3, 3)
    ]
    assert sorted(r["in"] for r in results) == events
    for r in results:
        assert r["infile"].startswith("/ewms-pilot-data/task-io/")
        assert r["my_var"] == "a,b c"
        assert r["leak"] is None
        assert r["from_init"] == "made by init"
        assert r["site"] == "site file"
        assert r["ext_writable"] is False
        assert r["hub_writable"] is True
    hub = pool_dir / "ewms-pilot-data" / "data-hub"
    assert (hub / "teardown.txt").read_text() == "bye"


#: the task for the timeout test: the parent forks a child in its own session (detached
#: from the task's), waits until the child has left its evidence in the data hub, and
#: hangs; the child hangs too. Both carry the marker (argv[2]) in their command lines.
ORPHAN_TASK = r"""
import os, subprocess, sys, time
role, marker, hub = sys.argv[1], sys.argv[2], sys.argv[3]
evidence = os.path.join(hub, marker + ".child")
if role == "child":
    with open(evidence + ".tmp", "w") as f:
        f.write(str(os.getpid()) + " " + str(os.getsid(0)))
    os.replace(evidence + ".tmp", evidence)  # whole or absent
else:
    subprocess.Popen(["python3", __file__, "child", marker, hub], start_new_session=True)
    while not os.path.exists(evidence):
        time.sleep(0.05)
time.sleep(600)
"""


async def test_timeout_kills_the_whole_container_process_tree(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    """A task that forks a detached child (own session) and hangs: at the timeout the
    whole container goes, the child too; the event fails as a timeout.

    Checked after the pilot has exited, not by catching both processes alive: the
    child's evidence file shows it ran, the process list that it is gone."""
    marker = "orphan-" + uuid.uuid4().hex[:12]
    code = pool_dir / "orphan-code"
    code.mkdir()
    (code / "orphan.py").write_text(ORPHAN_TASK)
    code.chmod(0o755)
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", ["x"])
    env = _env(
        pool,
        rabbitmq_address,
        queue_name,
        pool_dir,
        EWMS_PILOT_TASK_ARGS=f"python3 {code}/orphan.py parent {marker} <<DATA_HUB>>",
        EWMS_PILOT_EXTERNAL_DIRECTORIES=str(code),
        EWMS_PILOT_TASK_TIMEOUT="4",
    )
    rc, _, err = PoolPilot(env, pool_dir).wait()
    assert rc == 3, err[-3000:]  # stopped listening after the task error
    assert "TaskTimeoutError" in err or "timed out" in err, err[-3000:]
    evidence = pool_dir / "ewms-pilot-data" / "data-hub" / f"{marker}.child"
    assert evidence.exists(), f"the detached child never ran; {err[-3000:]}"
    pid, sid = evidence.read_text().split()
    assert sid == pid  # it led its own session: detached from the task's
    assert pool_processes(marker) == []


@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_releases_the_running_event_and_stops_the_container(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str, signals: int
) -> None:
    """One SIGTERM: the task gets the grace (2 s), then goes; a second SIGTERM ends a
    long grace (300 s) at once."""
    marker = "longtask-" + uuid.uuid4().hex[:12]
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", ["slow"])
    env = _env(
        pool,
        rabbitmq_address,
        queue_name,
        pool_dir,
        EWMS_PILOT_TASK_ARGS=f'python3 -c "import time; time.sleep(600)" {marker}',
        EWMS_PILOT_SHUTDOWN_GRACE="2" if signals == 1 else "300",
    )
    pilot = PoolPilot(env, pool_dir)
    wait_for(lambda: pool_processes(marker), 60, "the task to run")
    for _ in range(signals):
        pilot.signal("TERM")
    rc, _, err = pilot.wait(timeout=120)  # < the 300 s grace: the second signal cut it
    assert rc == 6, err[-3000:]
    assert pool_processes(marker) == []
    # the unfinished event is back on the queue for another pilot
    again = await drain("rabbitmq", rabbitmq_address, f"{queue_name}-in", 5, 1)
    assert again == ["slow"]
    assert await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 1) == []


@pytest.mark.parametrize("kind", ["rootfs-without-runscript", "docker-ref", "sif-file"])
async def test_unusable_image_is_one_line_and_exit_7(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str, kind: str
) -> None:
    """Refused at start (nothing consumed), not a failure of every event."""
    if kind == "rootfs-without-runscript":
        image = pool_dir / "rootfs"
        (image / "bin").mkdir(parents=True)  # e.g. a debootstrap dir: /bin/sh, no runscript
        want = f"apptainer image {image} has no /.singularity.d/runscript"
    elif kind == "docker-ref":
        image, want = "docker://python:3.12", "is not an existing sandbox directory"
    else:
        image = pool_dir / "task.sif"
        image.write_bytes(b"not really a SIF")
        want = "is not an existing sandbox directory"
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", ["untouched"])
    env = _env(
        pool,
        rabbitmq_address,
        queue_name,
        pool_dir,
        EWMS_PILOT_TASK_IMAGE=str(image),
        EWMS_PILOT_TASK_ARGS="python3 -c pass",
        _EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT="true",
    )
    rc, _, err = PoolPilot(env, pool_dir).wait()
    assert rc == 7, err[-3000:]
    last = err.strip().splitlines()[-1]  # the pilot's one closing line (after its log)
    assert last.startswith("ewms-pilot: container runtime unusable: ") and want in last, err[-3000:]
    assert "Traceback" not in err
    assert await drain("rabbitmq", rabbitmq_address, f"{queue_name}-in", 3, 1) == ["untouched"]


WARM_WORKER = r"""
import os
import worker  # ewms_pilot/worker.py copied alongside (stdlib only)

for event in worker.events():
    with event:
        data = open(event.infile).read()
        open(event.outfile, "w").write(data + data + "|" + str(os.getpid()))
"""


async def test_warm_mode_one_apptainer_container_serves_every_event(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    code = pool_dir / "warm-code"
    code.mkdir()
    (code / "w.py").write_text(WARM_WORKER)
    shutil.copy(REPO / "ewms_pilot" / "worker.py", code / "worker.py")
    code.chmod(0o755)
    events = [f"w{i}" for i in range(6)]
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", events)
    env = _env(
        pool,
        rabbitmq_address,
        queue_name,
        pool_dir,
        EWMS_PILOT_TASK_MODE="warm",
        EWMS_PILOT_TASK_ARGS=f"python3 {code}/w.py",
        EWMS_PILOT_EXTERNAL_DIRECTORIES=str(code),
    )
    rc, _, err = PoolPilot(env, pool_dir).wait()
    assert rc == 0, err[-3000:]
    out = await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 3, len(events))
    assert sorted(o.split("|")[0] for o in out) == sorted(e + e for e in events)
    assert len({o.split("|")[1] for o in out}) == 1  # one worker process did them all
    assert pool_processes(f"{code}/w.py") == []  # and it is gone


async def test_an_image_archive_named_relative_to_the_pilots_start_dir_is_converted_and_run(
    pool: Pool, pool_dir: Path, rabbitmq_address: str, queue_name: str
) -> None:
    """`docker-archive:task.tar` (what `podman save` writes), named relative to the pilot's cwd (the
    pilot runs in a plain dir here, as a job's scratch dir would hold a shipped file): real apptainer converts it once into the build workdir and runs the
    events in it. The build runs in that workdir, so the pilot must hand over the archive's
    absolute path (before: it was taken for a registry image, `docker://docker-archive:...`)."""
    archive, build = pool_dir / "task.tar", pool_dir / "build"
    build.mkdir()
    build.chmod(0o777)
    saved = subprocess.run(
        ["podman", "save", "--quiet", "--format", "docker-archive", "-o", str(archive), TEST_IMAGE],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    archive.chmod(0o644)
    events = ["a1", "a2"]
    await publish("rabbitmq", rabbitmq_address, f"{queue_name}-in", events)
    env = _env(
        pool, rabbitmq_address, queue_name, pool_dir,
        EWMS_PILOT_TASK_IMAGE="docker-archive:task.tar",
        EWMS_PILOT_TASK_ARGS="python3 -c \"import sys; d=open(sys.argv[1]).read(); open(sys.argv[2], 'w').write(d+d)\""
        " <<INFILE>> <<OUTFILE>>",
        _EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT="false",
        _EWMS_PILOT_APPTAINER_BUILD_WORKDIR=str(build),
    )
    rc, _, err = PoolPilot(env, pool_dir).wait()
    assert rc == 0, err[-3000:]
    assert sorted(await drain("rabbitmq", rabbitmq_address, f"{queue_name}-out", 3, len(events))) == ["a1a1", "a2a2"]
    assert f"converting docker-archive:{archive} to the apptainer sandbox {build}/" in err, err[-3000:]
    made = [p for p in build.iterdir() if (p / ".singularity.d" / "runscript").is_file()]
    assert len(made) == 1 and made[0].name.startswith("docker-archive_"), list(build.iterdir())
