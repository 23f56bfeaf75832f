"""PodmanRuntime + run_to_completion against real podman and the local test image.

Run with the test environment: `. scripts/env.sh` (sets CONTAINERS_CONF and
EWMS_TEST_IMAGE after scripts/test-env.sh prepared them); the `podman_image`
fixture fails with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ewms_pilot.runtimes import PodmanRuntime, RuntimeUnavailableError
from ewms_pilot.runtimes.base import CONTAINER_TASK_IO, OWNER_LABEL, Mount, RunSpec
from ewms_pilot.runtimes.mounts import external_mounts
from ewms_pilot.tasks.process import ProcessOutcome, run_to_completion

pytestmark = pytest.mark.podman

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "print('started', flush=True); time.sleep(120)"
)
DEFAULT_TERM = "import time; print('started', flush=True); time.sleep(120)"


@pytest.fixture
def image(podman_image: str) -> str:
    return podman_image


@pytest.fixture
def name() -> Iterator[str]:
    value = f"ewms-test-{uuid.uuid4().hex[:12]}"
    yield value
    subprocess.run(
        ["podman", "rm", "--force", "--time", "0", value], capture_output=True, check=False
    )


def containers_named(name: str) -> list[str]:
    res = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name=^{name}$"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return res.stdout.split()


async def wait_for_output(path: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} did not appear in {path} within {timeout}s")
        await asyncio.sleep(0.1)


async def run(
    tmp_path: Path, spec: RunSpec, *, timeout: float | None = 60, stop_grace: float = 5
) -> ProcessOutcome:
    return await run_to_completion(
        PodmanRuntime(),
        spec,
        stdout_path=tmp_path / "stdout",
        stderr_path=tmp_path / "stderr",
        timeout=timeout,
        stop_grace=stop_grace,
    )


def make_spec(image: str, name: str, code: str, **kw: object) -> RunSpec:
    base: dict[str, object] = dict(
        image=image,
        argv=("python3", "-c", code),
        env={},
        mounts=(),
        name=name,
        labels={OWNER_LABEL: "test"},
    )
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


async def test_task_writes_to_bind_mount_and_sees_env(
    tmp_path: Path, image: str, name: str
) -> None:
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    (io_dir / "in.txt").write_text("21")
    value = " a b \"c\" 'd' $(id) `id` ${HOME}, x=y # not a comment "
    code = (
        "import os;"
        f"n = int(open('{CONTAINER_TASK_IO}/in.txt').read());"
        f"open('{CONTAINER_TASK_IO}/out.txt', 'w').write(str(n * 2));"
        "print(repr(os.environ['TRICKY']))"
    )
    env_file = tmp_path / "task.env"
    spec = make_spec(
        image, name, code, env={"TRICKY": value}, mounts=(Mount(io_dir, CONTAINER_TASK_IO),),
        env_file=env_file,
    )
    outcome = await run(tmp_path, spec)
    assert outcome.exit_code == 0, (tmp_path / "stderr").read_text()
    assert (io_dir / "out.txt").read_text() == "42"
    assert (tmp_path / "stdout").read_text() == repr(value) + "\n"  # through the env file, as is
    assert containers_named(name) == []  # --rm
    assert not env_file.exists()  # removed once the client exited


async def test_read_only_external_directory_cannot_be_written(
    tmp_path: Path, image: str, name: str
) -> None:
    ext = tmp_path / "external"
    ext.mkdir()
    (ext / "data.txt").write_text("site data")
    mounts = external_mounts([ext], PodmanRuntime.mount_forbidden_chars)
    code = (
        f"print(open('{ext}/data.txt').read());"
        f"open('{ext}/new.txt', 'w').write('x')"  # must fail
    )
    outcome = await run(tmp_path, make_spec(image, name, code, mounts=mounts))
    assert outcome.exit_code == 1
    assert (tmp_path / "stdout").read_text() == "site data\n"
    assert "Read-only file system" in (tmp_path / "stderr").read_text()
    assert not (ext / "new.txt").exists()


async def test_exit_code_is_the_tasks(tmp_path: Path, image: str, name: str) -> None:
    outcome = await run(tmp_path, make_spec(image, name, "import sys; sys.exit(7)"))
    assert outcome.exit_code == 7 and not outcome.timed_out


async def test_timeout_stops_and_removes_the_container(
    tmp_path: Path, image: str, name: str
) -> None:
    start = time.monotonic()
    outcome = await run(tmp_path, make_spec(image, name, DEFAULT_TERM), timeout=3, stop_grace=10)
    elapsed = time.monotonic() - start
    assert outcome.timed_out
    # --init forwards SIGTERM to the task, which dies at once: no waiting out the 10 s grace
    assert 3 <= elapsed < 3 + 8
    assert outcome.exit_code == 128 + 15
    assert (tmp_path / "stdout").read_text() == "started\n"
    assert containers_named(name) == []


async def test_task_ignoring_sigterm_is_killed_after_grace(
    tmp_path: Path, image: str, name: str
) -> None:
    start = time.monotonic()
    outcome = await run(tmp_path, make_spec(image, name, IGNORE_TERM), timeout=2, stop_grace=2)
    elapsed = time.monotonic() - start
    assert outcome.timed_out
    assert outcome.exit_code == 128 + 9  # SIGKILL inside the container
    assert 2 + 2 <= elapsed < 2 + 2 + 10
    assert containers_named(name) == []


async def test_cancellation_stops_and_removes_the_container(
    tmp_path: Path, image: str, name: str
) -> None:
    task = asyncio.create_task(
        run(tmp_path, make_spec(image, name, IGNORE_TERM), timeout=None, stop_grace=1)
    )
    await wait_for_output(tmp_path / "stdout", "started")
    assert containers_named(name) == [name]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert containers_named(name) == []


async def test_remove_leftovers_removes_a_running_labelled_container(
    tmp_path: Path, image: str, name: str
) -> None:
    owner = f"pilot-{uuid.uuid4().hex[:8]}"
    spec = make_spec(image, name, IGNORE_TERM, labels={OWNER_LABEL: owner})
    task = asyncio.create_task(run(tmp_path, spec, timeout=None))
    await wait_for_output(tmp_path / "stdout", "started")
    assert await PodmanRuntime().remove_leftovers(OWNER_LABEL, "someone-else") == []
    assert containers_named(name) == [name]
    removed = await PodmanRuntime().remove_leftovers(OWNER_LABEL, owner)
    assert len(removed) == 1
    assert containers_named(name) == []
    outcome = await asyncio.wait_for(task, 30)  # the client ends with its container
    assert outcome.exit_code != 0 and not outcome.timed_out


async def test_prepare_image_present(image: str) -> None:
    assert await PodmanRuntime().prepare_image(image) == image


async def test_prepare_missing_image_fails_fast_with_one_line() -> None:
    missing = f"localhost/ewms-missing-{uuid.uuid4().hex[:8]}:none"
    start = time.monotonic()
    with pytest.raises(RuntimeUnavailableError) as err:
        await PodmanRuntime(pull_timeout=30).prepare_image(missing)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot pull image {missing!r} with podman: ")
    assert len(message) < 500


async def test_pull_that_overruns_its_bound_is_killed(tmp_path: Path) -> None:
    """No registry answers here; a pull must not hang the pilot past `pull_timeout`."""
    # a routable address that drops packets would hang; a tiny bound proves the kill path
    missing = f"localhost/ewms-missing-{uuid.uuid4().hex[:8]}:none"
    start = time.monotonic()
    with pytest.raises(RuntimeUnavailableError) as err:
        await PodmanRuntime(pull_timeout=0.5).prepare_image(missing)
    assert time.monotonic() - start < 5
    assert str(err.value).endswith("podman did not finish within 0.5s")
