"""Issue 14: per-task limits on real runtimes (memory, GPUs in argv/env, output caps, result size).

The memory tests run real tasks: podman `--memory` (the kernel's OOM killer)
and the process runtime's address-space limit (`prlimit`). GPUs cannot be
run here (no GPU on these machines): their argv and env per task are checked.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import pytest
from memory_pilot import journal, memory_config, new_queues, put, take
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot

from ewms_pilot.config import ContainerConfig
from ewms_pilot.config.loader import load_config
from ewms_pilot.pilot.scheduler import Pilot
from ewms_pilot.pilot.shutdown import StopCause
from ewms_pilot.runtimes.apptainer import ApptainerRuntime
from ewms_pilot.runtimes.base import Runtime
from ewms_pilot.runtimes.docker import DockerRuntime
from ewms_pilot.runtimes.podman import PodmanRuntime
from ewms_pilot.runtimes.process import ProcessRuntime
from ewms_pilot.runtimes.spec import SpecBuilder
from ewms_pilot.tasks.logcap import CappedLog
from ewms_pilot.tasks.process import run_to_completion
from ewms_pilot.tasks.taskdir import TaskDir

MiB = 2**20

# doubles its input; the event "BIG" allocates 200 MB instead (python3-minimal: no json)
HUNGRY = (
    "import sys\n"
    "d=open(sys.argv[1]).read()\n"
    "if 'BIG' in d: x=bytearray(200*1024*1024); x[-1]=1\n"
    "open(sys.argv[2],'w').write(d+d)\n"
)


def _env(broker: str, address: str, queue: str, tmp_path: Path, platform: str, image: str, **extra: str) -> dict[str, str]:
    args = shlex.join(["python3", "-c", HUNGRY, "<<INFILE>>", "<<OUTFILE>>"])
    return base_env(
        broker_type=broker, address=address, queue_in=queue + "i", queue_out=queue + "o",
        data_dir=tmp_path / "data", task_args=args, platform=platform, image=image,
        extra={
            "EWMS_PILOT_MAX_CONCURRENT_TASKS": "2",
            "EWMS_PILOT_OKAY_ERRORS": "TaskOutOfMemoryError",  # listable: the pilot carries on
            "EWMS_PILOT_MAX_DELIVERIES": "1",  # the hungry event is not run again
            **extra,
        },
    )  # fmt: skip


def _check_only_the_hungry_task_failed(run_stderr: str, returncode: int, out: list[object], limit: str) -> None:
    assert returncode == 0, run_stderr[-3000:]
    assert sorted(out) == ["ok1ok1", "ok2ok2", "ok3ok3"]  # type: ignore[type-var]
    failed = [ln for ln in run_stderr.splitlines() if " failed: " in ln and "task " in ln]
    assert len(failed) == 1, failed
    assert "TaskOutOfMemoryError: out of memory" in failed[0] and f"at its {limit} memory limit" in failed[0]


@pytest.mark.podman
def test_podman_memory_limit_kills_only_the_hungry_task(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["ok1", "BIG", "ok2", "ok3"]))
    env = _env("rabbitmq", rabbitmq_address, queue_name, tmp_path, "podman", podman_image, EWMS_PILOT_TASK_MEMORY="64m")
    job = tmp_path / "job"  # the job's scratch dir: HTCondor sends every new file in it back
    job.mkdir()
    run = run_pilot(env, timeout=300, cwd=job)
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=3))
    _check_only_the_hungry_task_failed(run.stderr, run.returncode, out, "64 MiB")
    assert "exit code 137" in run.stderr
    assert sorted(p.name for p in job.iterdir()) == []  # conmon's `oom` marker is not left here
    assert "the pilot runs up to 2 task(s) at once, each with a 64 MiB memory limit" in run.stderr  # start line


def test_process_memory_limit_refuses_only_the_hungry_task(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["ok1", "BIG", "ok2", "ok3"]))
    env = _env("rabbitmq", rabbitmq_address, queue_name, tmp_path, "process", "", EWMS_PILOT_TASK_MEMORY="128M")
    run = run_pilot(env, timeout=120)
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=3))
    _check_only_the_hungry_task_failed(run.stderr, run.returncode, out, "128 MiB")
    assert "MemoryError" in run.stderr


# -- argv and env per task ----------------------------------------------------------------


def _builder(tmp_path: Path, runtime: Runtime, **env: str) -> tuple[SpecBuilder, TaskDir]:
    environ = {
        "EWMS_PILOT_TASK_IMAGE": "img",
        "EWMS_PILOT_TASK_ARGS": "run",
        "EWMS_PILOT_QUEUE_INCOMING": "i", "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": str(tmp_path / "q.db"),
        "EWMS_PILOT_QUEUE_OUTGOING": "o", "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": str(tmp_path / "q.db"),
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path),
        "EWMS_PILOT_CONTAINER_PLATFORM": runtime.name,
        **env,
    }  # fmt: skip
    cfg = load_config(environ)
    cfg.data_hub_dir.mkdir(parents=True, exist_ok=True)
    tdir = TaskDir.create(cfg.data_dir, "0123456789ab", ".in", ".out")
    return SpecBuilder.for_pilot(cfg, runtime, "pilot1"), tdir


GPU_ENV = {"CUDA_VISIBLE_DEVICES": "CUDA0,CUDA1,CUDA2", "EWMS_PILOT_TASK_GPUS": "1", "EWMS_PILOT_MAX_CONCURRENT_TASKS": "auto"}


@pytest.mark.parametrize(
    ("runtime", "options"),
    [
        (PodmanRuntime(), [["--device", "nvidia.com/gpu=0"], ["--device", "nvidia.com/gpu=1"]]),
        (DockerRuntime(), [["--gpus", "device=0"], ["--gpus", "device=1"]]),
        (ApptainerRuntime(build_workdir=Path("/tmp")), [["--nv"], ["--nv"]]),
    ],
)
def test_each_task_gets_its_own_gpu(tmp_path: Path, runtime: Runtime, options: list[list[str]]) -> None:
    specs, tdir = _builder(tmp_path, runtime, **GPU_ENV)
    container = ContainerConfig(image="img", args="run")
    with specs.gpus.lease() as first, specs.gpus.lease() as second:
        a, b = (specs.task("img", container, t, tdir, g) for t, g in (("t1", first), ("t2", second)))
        assert (first, second) == (("CUDA0",), ("CUDA1",))
        for spec, opts in zip((a, b), options, strict=True):
            argv = runtime.run_argv(spec)
            assert _contains(argv, opts), argv
        if runtime.sees_host_gpus:  # the host's GPUs visible: CUDA picks this task's own
            assert (a.env["CUDA_VISIBLE_DEVICES"], b.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
        else:  # the container sees only its own device, as number 0
            assert "CUDA_VISIBLE_DEVICES" not in a.env
    with specs.gpus.lease() as again:
        assert again == ("CUDA2",) or again == ("CUDA0",)  # given back: free again


def test_gpus_are_leased_no_more_than_the_slot_has(tmp_path: Path) -> None:
    specs, _ = _builder(tmp_path, ProcessRuntime(), **GPU_ENV)
    with specs.gpus.lease(), specs.gpus.lease(), specs.gpus.lease():
        with pytest.raises(RuntimeError), specs.gpus.lease():
            pass
    # a number above what the GPUs allow is capped to it (auto would also count CPUs)
    many = {**_builder_env(tmp_path), **GPU_ENV, "EWMS_PILOT_MAX_CONCURRENT_TASKS": "8"}
    assert load_config(many).max_concurrent_tasks == 3


def _builder_env(tmp_path: Path) -> dict[str, str]:
    return {
        "EWMS_PILOT_TASK_ARGS": "run", "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_QUEUE_INCOMING": "i", "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": str(tmp_path / "q.db"),
        "EWMS_PILOT_QUEUE_OUTGOING": "o", "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": str(tmp_path / "q.db"),
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path),
    }  # fmt: skip


def _contains(argv: list[str], part: list[str]) -> bool:
    return any(argv[i : i + len(part)] == part for i in range(len(argv)))


@pytest.mark.parametrize("runtime", [PodmanRuntime(), DockerRuntime()])
def test_oci_memory_limit_is_memory_and_swap(tmp_path: Path, runtime: Runtime) -> None:
    specs, tdir = _builder(tmp_path, runtime, EWMS_PILOT_TASK_MEMORY="2G")
    argv = runtime.run_argv(specs.task("img", ContainerConfig(image="img", args="run"), "t1", tdir))
    assert _contains(argv, ["--memory", f"{2 * 2**30}b", "--memory-swap", f"{2 * 2**30}b"])
    once = runtime.run_argv(specs.once("img", ContainerConfig(image="img", args="run"), "init", tdir.outputs))
    assert "--memory" not in once  # init/teardown have the whole slot


def test_process_memory_limit_is_an_address_space_limit(tmp_path: Path) -> None:
    runtime = ProcessRuntime()
    specs, tdir = _builder(tmp_path, runtime, EWMS_PILOT_TASK_MEMORY="512M")
    spec = specs.task("", ContainerConfig(image="", args="run"), "t1", tdir)
    prefix = runtime.limit_argv(spec)
    assert prefix[0].endswith("prlimit") and prefix[1:] == [f"--as={512 * MiB}", "--"]


# -- output caps -----------------------------------------------------------------------------


def test_a_flooding_task_keeps_head_and_tail_only(tmp_path: Path) -> None:
    specs, tdir = _builder(tmp_path, ProcessRuntime())
    flood = "import sys\nprint('FIRST')\nfor i in range(200000): print('x' * 99)\nprint('LAST', file=sys.stdout)\n"
    spec = specs.task("", ContainerConfig(image="", args=shlex.join([sys.executable, "-c", flood])), "t1", tdir)
    outcome = asyncio.run(
        run_to_completion(
            ProcessRuntime(), spec, stdout_path=tdir.stdout, stderr_path=tdir.stderr, timeout=60, log_max=MiB
        )
    )
    assert outcome.exit_code == 0
    data = tdir.stdout.read_bytes()
    assert len(data) < MiB + 200  # 20 MB printed
    assert data.startswith(b"FIRST\n") and data.endswith(b"LAST\n")
    assert b"bytes cut here (EWMS_PILOT_TASK_LOG_MAX=1048576)" in data


def test_capped_log_keeps_everything_under_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with path.open("wb") as f:
        log = CappedLog(f, 100)
        for chunk in (b"a" * 30, b"b" * 30, b"c" * 40):
            log.write(chunk)
        log.finish()
    assert path.read_bytes() == b"a" * 30 + b"b" * 30 + b"c" * 40


def test_result_size_limit_is_a_setting(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["small", "x" * 3000]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path, task_args=shlex.join([sys.executable, "-c", HUNGRY, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={"EWMS_PILOT_MAX_RESULT_SIZE": "4K", "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
               "EWMS_PILOT_MAX_DELIVERIES": "1"},
    )  # fmt: skip
    run = run_pilot(env, timeout=120)
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=1))
    assert out == ["smallsmall"], run.stderr[-2000:]
    assert "is 6000 bytes, more than the 4096-byte result limit" in run.stderr


def test_apptainer_memory_limit_only_where_cgroups_allow(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ewms_pilot.runtimes.apptainer import memory_limit_enforceable

    runtime = ApptainerRuntime(build_workdir=tmp_path)
    with caplog.at_level("WARNING"):
        specs, tdir = _builder(tmp_path, runtime, EWMS_PILOT_TASK_MEMORY="1G")
    argv = runtime.run_argv(specs.task("img", ContainerConfig(image="img", args="run"), "t1", tdir))
    if memory_limit_enforceable():
        assert _contains(argv, ["--memory", str(2**30), "--memory-swap", str(2**30)])
    else:  # not root, cgroup v1: said once at load, instead of apptainer failing every task
        assert "--memory" not in argv
        assert any("EWMS_PILOT_TASK_MEMORY is not enforced" in r.getMessage() for r in caplog.records)


# -- warm workers killed for memory --------------------------------------------------------

# a warm worker without json (the test image has python3-minimal): requests are ASCII JSON
# with three string fields; "BIG" allocates 200 MB, nothing catches what that raises
HUNGRY_WORKER = (
    "import sys\n"
    "for line in sys.stdin:\n"
    "    p = line.split('\"'); tid, infile, outfile = p[3], p[7], p[11]\n"
    "    d = open(infile).read()\n"
    "    if d == 'BIG': x = bytearray(200*1024*1024); x[-1] = 1\n"
    "    open(outfile, 'w').write(d + d)\n"
    "    print('{\"id\": \"%s\", \"ok\": true}' % tid, flush=True)\n"
)


def _warm_oom(tmp_path: Path, python: str, memory: str, **extra: str) -> list[dict[str, object]]:
    """ok1, BIG, ok2, ok3 through one warm worker slot; the journal records."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "w.py").write_text(HUNGRY_WORKER)
    q = new_queues()
    cfg = memory_config(
        q, tmp_path / "data", "", EWMS_PILOT_TASK_MODE="warm", EWMS_PILOT_TASK_MEMORY=memory,
        EWMS_PILOT_TASK_ARGS=shlex.join([python, str(scripts / "w.py")]),
        EWMS_PILOT_EXTERNAL_DIRECTORIES=str(scripts), EWMS_PILOT_OKAY_ERRORS="TaskOutOfMemoryError",
        EWMS_PILOT_MAX_DELIVERIES="1", **extra,
    )  # fmt: skip

    async def main() -> None:
        await put(cfg, "ok1", "BIG", "ok2", "ok3")
        assert (await Pilot(cfg).run()).cause is StopCause.QUEUE_EMPTY
        assert sorted(d.data for d in await take(cfg, q.outgoing)) == ["ok1ok1", "ok2ok2", "ok3ok3"]

    asyncio.run(main())
    return journal(tmp_path / "data")


def _only_big_ran_out_of_memory(records: list[dict[str, object]], how: str) -> None:
    failed = [r for r in records if r["result"] == "failed"]
    assert len(records) == 4 and len(failed) == 1, records
    assert failed[0]["error_type"] == "TaskOutOfMemoryError", failed
    assert how in str(failed[0]["error"])  # and the worker after it (a new one) did ok2, ok3


def test_a_warm_worker_refused_memory_fails_its_event_as_out_of_memory(tmp_path: Path) -> None:
    _only_big_ran_out_of_memory(_warm_oom(tmp_path, sys.executable, "128M"), "MemoryError")


@pytest.mark.podman
def test_a_warm_container_killed_for_memory_fails_its_event_as_out_of_memory(
    tmp_path: Path, podman_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job"  # the pilot's cwd: a job's scratch dir
    job.mkdir()
    monkeypatch.chdir(job)
    records = _warm_oom(
        tmp_path, "python3", "64m", EWMS_PILOT_CONTAINER_PLATFORM="podman", EWMS_PILOT_TASK_IMAGE=podman_image
    )
    _only_big_ran_out_of_memory(records, "killed at its 64 MiB memory limit (exit code 137)")
    assert sorted(p.name for p in job.iterdir()) == []  # conmon's `oom` marker is not left here
