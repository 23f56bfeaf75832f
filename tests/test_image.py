"""The pilot image (Dockerfile + container/entrypoint.sh), built and run with podman.

One `process`-flavour image is built per session by `scripts/build-image.sh`
(nothing is rebuilt when the image's context-hash label still matches) and run
the way a batch system runs it: env vars plus an `ewms_htcondor_envfile.sh` in
the working directory, against the real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mq_helpers import drain, publish

import ewms_pilot
from ewms_pilot.exitcodes import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.podman, pytest.mark.rabbitmq]

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/ewms-pilot:process"
BUILD_TIMEOUT = 900  # s; a cold build is mostly apt + pip, typically 1-3 min


@pytest.fixture(scope="module")
def pilot_image(podman_image: str) -> str:
    """The `process` flavour on the test base image (built once, then reused while unchanged)."""
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), "process", "--base", podman_image, "--tag", TAG],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"scripts/build-image.sh process failed (exit {res.returncode}):\n{res.stderr[-6000:]}")
    assert res.stdout.strip().splitlines()[-1] == TAG
    return TAG


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def rabbitmq_user(rabbitmq_address: str) -> Iterator[tuple[str, str]]:
    """A throw-away RabbitMQ user whose password is a distinctive secret (the pilot's auth token)."""
    user = "ewmsimg" + uuid.uuid4().hex[:10]
    secret = "tok-" + uuid.uuid4().hex
    added = _rabbitmqctl("add_user", user, secret)
    if added.returncode != 0:
        pytest.fail(f"rabbitmqctl add_user failed (run the tests as root on the broker's host): {added.stderr.strip()}")
    try:
        perms = _rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        yield user, secret
    finally:
        _rabbitmqctl("delete_user", user)


def _podman(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


def _env_args(env: dict[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in env.items():
        out += ["--env", f"{key}={value}"]
    return out


def _queue_env(user: str, q_in: str, q_out: str, host_port: str = "127.0.0.1:5672") -> dict[str, str]:
    address = f"{user}@{host_port}"  # the password is the auth token (from the env file)
    return {
        "EWMS_PILOT_QUEUE_INCOMING": q_in,
        "EWMS_PILOT_QUEUE_OUTGOING": q_out,
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": address,
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": address,
    }


async def test_image_runs_events_from_rabbitmq_with_envfile(
    pilot_image: str,
    rabbitmq_address: str,
    rabbitmq_user: tuple[str, str],
    queue_name: str,
    tmp_path: Path,
) -> None:
    user, secret = rabbitmq_user
    q_in, q_out = f"{queue_name}-in", f"{queue_name}-out"
    await publish("rabbitmq", rabbitmq_address, q_in, ["one two three", "the quick brown fox", "a b a"])

    job = tmp_path / "job"  # the batch job's working (scratch) directory
    job.mkdir()
    # the tokens and the outfile extension come only from the env file; a plain
    # NAME=value line must be exported as well as an `export` line
    (job / "ewms_htcondor_envfile.sh").write_text(
        f"export EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN='{secret}'\n"
        f"export EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN='{secret}'\n"
        "EWMS_PILOT_OUTFILE_EXT=.json\n"
    )
    env = _queue_env(user, q_in, q_out, rabbitmq_address) | {
        "EWMS_PILOT_TASK_ARGS": "python3 /tasks/word_count.py <<INFILE>> <<OUTFILE>>",
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "30",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "2",
        "_CONDOR_SCRATCH_DIR": "/job",  # as under HTCondor: data dir defaults to the scratch dir
    }
    res = await asyncio.to_thread(
        _podman,
        "run", "--rm", "--network", "host",
        "--volume", f"{job}:/job", "--workdir", "/job",
        "--volume", f"{REPO / 'examples' / 'tasks'}:/tasks:ro",
        *_env_args(env),
        pilot_image,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]

    results = await drain("rabbitmq", rabbitmq_address, q_out, timeout=5, expect=3)
    assert sorted(results, key=json.dumps) == sorted(
        [
            {"words": 3, "lines": 1, "chars": 13, "top": [["one", 1], ["three", 1], ["two", 1]]},
            {"words": 4, "lines": 1, "chars": 19, "top": [["brown", 1], ["fox", 1], ["quick", 1]]},
            {"words": 3, "lines": 1, "chars": 5, "top": [["a", 2], ["b", 1]]},
        ],
        key=json.dumps,
    )

    # the banner: what ran, with the effective configuration and no secret in it
    assert "sourcing /job/ewms_htcondor_envfile.sh" in res.stderr
    assert f"pilot:     ewms-pilot {ewms_pilot.__version__}" in res.stderr
    assert "platform:  process" in res.stderr
    assert "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN=***" in res.stderr
    assert "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN=***" in res.stderr
    assert "EWMS_PILOT_OUTFILE_EXT=.json" in res.stderr
    assert "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST=/job" in res.stderr
    assert secret not in out
    # the pilot's data went to the job's scratch dir
    assert (job / "ewms-pilot-data" / "data-hub").is_dir()


@pytest.mark.parametrize(
    ("env", "expected_line"),
    [
        # a config mistake: one line naming the variable, exit 2, no pilot run
        (
            {"EWMS_PILOT_TASK_ARGS": "python3 -c pass", "EWMS_PILOT_MAX_CONCURRENT_TASKS": "zero"},
            "EWMS_PILOT_MAX_CONCURRENT_TASKS='zero': expected an integer from 1 to 65535",
        ),
        # the flavour has no apptainer: refuse at start, not on the first event
        (
            {"EWMS_PILOT_TASK_ARGS": "x", "EWMS_PILOT_TASK_IMAGE": "/img", "EWMS_PILOT_CONTAINER_PLATFORM": "apptainer"},
            "EWMS_PILOT_CONTAINER_PLATFORM=apptainer but 'apptainer' is not on PATH",
        ),
    ],
)
def test_image_refuses_bad_setup_with_exit_2(
    pilot_image: str, env: dict[str, str], expected_line: str, tmp_path: Path
) -> None:
    secret = "tok-" + uuid.uuid4().hex
    env = _queue_env("someone", "q-in", "q-out") | {"EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": secret} | env
    res = _podman("run", "--rm", "--network", "none", *_env_args(env), pilot_image, timeout=120)
    assert res.returncode == ExitCode.CONFIG, res.stderr[-4000:]
    assert expected_line in res.stderr
    assert secret not in res.stdout + res.stderr


async def test_image_sigterm_reaches_pilot_and_event_is_redelivered(
    pilot_image: str, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """`podman stop` (SIGTERM, as on eviction) goes through tini and the entrypoint to the pilot."""
    q_in, q_out = f"{queue_name}-in", f"{queue_name}-out"
    await publish("rabbitmq", rabbitmq_address, q_in, ["slow"])
    name = f"ewms-pilot-test-{uuid.uuid4().hex[:10]}"
    env = {
        "EWMS_PILOT_QUEUE_INCOMING": q_in,
        "EWMS_PILOT_QUEUE_OUTGOING": q_out,
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": rabbitmq_address,
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": rabbitmq_address,
        "EWMS_PILOT_TASK_ARGS": "sleep 300",
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "60",
        "EWMS_PILOT_SHUTDOWN_GRACE": "1",
        "EWMS_PILOT_CL_LOG": "DEBUG",
    }
    proc = subprocess.Popen(
        ["podman", "run", "--rm", "--name", name, "--network", "host", *_env_args(env), pilot_image],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # wait until the task runs (the event is taken), then stop the container as an eviction would
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            top = await asyncio.to_thread(_podman, "top", name, "args", timeout=30)
            if "sleep 300" in top.stdout:
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the task never started in the container")
        stop = await asyncio.to_thread(_podman, "stop", "--time", "60", name, timeout=90)
        assert stop.returncode == 0, stop.stderr
        out, err = await asyncio.to_thread(proc.communicate, timeout=90)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            _podman("rm", "--force", name, timeout=60)
    assert proc.returncode == ExitCode.EVICTED, err[-4000:]
    assert "received SIGTERM" in err
    # the unfinished event was nacked: it is back in the incoming queue
    assert await drain("rabbitmq", rabbitmq_address, q_in, timeout=5, expect=1) == ["slow"]


# --------------------------------------------------------------------------- docker flavour


@pytest.fixture(scope="module")
def docker_flavour_image(podman_image: str) -> str:
    """The `docker` flavour (dockerd inside) on the test base image."""
    tag = "localhost/ewms-pilot:docker"
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), "docker", "--base", podman_image, "--tag", tag],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"scripts/build-image.sh docker failed (exit {res.returncode}):\n{res.stderr[-6000:]}")
    return tag


# What a site would have done beforehand: the task image in the inner daemon's
# store. This starts a throw-away dockerd, loads the image, stops it, and then
# hands over to the real entrypoint exactly as the image's ENTRYPOINT would.
_PRELOAD = """set -e
dockerd >/tmp/preload-dockerd.log 2>&1 &
for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker load --quiet --input /job/task-image.tar >&2
kill %1; wait
exec /usr/bin/tini -- /usr/local/bin/ewms-pilot-entrypoint
"""


async def test_docker_flavour_supervises_dockerd_and_forwards_sigterm(
    docker_flavour_image: str, podman_image: str, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    saved = _podman("save", "--quiet", "--output", str(job / "task-image.tar"), podman_image, timeout=300)
    assert saved.returncode == 0, saved.stderr
    (job / "preload.sh").write_text(_PRELOAD)
    put = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "queue", "put", "--broker-type", "local",
         "--broker-address", str(job / "q.db"), "--queue", "in"],
        input="slow\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    name = f"ewms-pilot-test-{uuid.uuid4().hex[:10]}"
    env = {
        "EWMS_PILOT_QUEUE_INCOMING": "in",
        "EWMS_PILOT_QUEUE_OUTGOING": "out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "/job/q.db",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "/job/q.db",
        "EWMS_PILOT_TASK_IMAGE": podman_image,
        "EWMS_PILOT_TASK_ARGS": "sleep 300",
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "120",
        "EWMS_PILOT_SHUTDOWN_GRACE": "1",
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": "/job",
    }
    proc = subprocess.Popen(
        # own network namespace: dockerd adds a bridge and iptables rules to whatever netns it runs in
        ["podman", "run", "--rm", "--name", name, "--privileged", "--network", "none",
         "--volume", f"{job}:/job", "--workdir", "/job", "--entrypoint", "bash",
         *_env_args(env), docker_flavour_image, "/job/preload.sh"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            ps = await asyncio.to_thread(
                _podman, "exec", name, "docker", "ps", "--format", "{{.Command}}", timeout=30
            )
            if "sleep 300" in ps.stdout:
                break
            await asyncio.sleep(1)
        else:
            out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
            pytest.fail(f"the task never ran in the inner dockerd:\n{err[-4000:]}")
        stop = await asyncio.to_thread(_podman, "stop", "--time", "90", name, timeout=120)
        assert stop.returncode == 0, stop.stderr
        out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            _podman("rm", "--force", name, timeout=60)
    assert proc.returncode == ExitCode.EVICTED, err[-4000:]
    assert "ewms-pilot-entrypoint: dockerd is up" in err
    assert "received SIGTERM" in err
    assert err.rstrip().endswith("ewms-pilot-entrypoint: dockerd stopped"), err[-2000:]
    counted = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "queue", "count", "--json", "--broker-type", "local",
         "--broker-address", str(job / "q.db"), "--queue", "in"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(counted.stdout)["ready"] == 1, counted.stdout + counted.stderr
