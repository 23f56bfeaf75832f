"""Issue 14: the pilot sized from its slot (machine ad, job ad, cgroup), limits per task.

Slot discovery and `auto` sizing read real files (an HTCondor-style machine ad
written here, a cgroup tree laid out like the kernel's); the CLI check runs in
a process of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from config_env import MINIMAL as BASE_ENV
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot

from ewms_pilot.config import PilotConfig
from ewms_pilot.config.loader import load_config
from ewms_pilot.errors import ConfigError
from ewms_pilot.resources.slot import discover, parse_classad

MINIMAL = BASE_ENV
MiB = 2**20

# as HTCondor writes .machine.ad: the slot's Memory (MB) is not the machine's TotalMemory
MACHINE_AD = """\
Arch = "X86_64"
AssignedGPUs = "CUDA0,CUDA1"
Cpus = 3
Disk = 2097152
Memory = 4096
Name = "slot1_4@node17.example.org"
TotalCpus = 64
TotalMemory = 515000
Requirements = START && (Memory >= 1)
"""


@pytest.fixture
def machine_ad(tmp_path: Path) -> Path:
    path = tmp_path / ".machine.ad"
    path.write_text(MACHINE_AD)
    return path


def load(ad: Path | None, **changes: str) -> PilotConfig:
    environ = {**MINIMAL, **changes}
    if ad is not None:
        environ["_CONDOR_MACHINE_AD"] = str(ad)
    return load_config(environ)


def refused(ad: Path | None, **changes: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(ad, **changes)
    assert "\n" not in str(info.value)
    return info.value


def test_machine_ad_is_parsed_as_the_slots_own_numbers(machine_ad: Path) -> None:
    slot = discover({"_CONDOR_MACHINE_AD": str(machine_ad)})
    assert slot.cpus == 3
    assert slot.memory_bytes == 4096 * MiB  # Memory, never TotalMemory
    assert slot.disk_bytes == 2097152 * 1024  # Disk is KB
    assert slot.gpus == ("CUDA0", "CUDA1")
    assert slot.source == "HTCondor machine ad"


def test_classad_literals() -> None:
    ad = parse_classad('A = 1\nb = 2.5\nC = "x \\" y"\nD = true\nE = Cpus * 2\nnot an assignment\n')
    assert ad == {"a": 1, "b": 2.5, "c": 'x " y', "d": True, "e": "Cpus * 2"}


def test_job_ad_fills_what_there_is_no_machine_ad_for(tmp_path: Path) -> None:
    job = tmp_path / ".job.ad"
    job.write_text("RequestCpus = 2\nRequestMemory = 3000\nRequestDisk = 1000\n")
    slot = discover({"_CONDOR_JOB_AD": str(job)})
    assert (slot.cpus, slot.memory_bytes, slot.disk_bytes) == (2, 3000 * MiB, 1000 * 1024)


def test_unreadable_machine_ad_is_one_warning_and_the_cgroup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        slot = discover({"_CONDOR_MACHINE_AD": str(tmp_path / "missing.ad")})
    assert slot.source == "cgroup and CPU affinity"
    assert any("_CONDOR_MACHINE_AD" in r.getMessage() for r in caplog.records)


def _cgroup_v2(root: Path, cpu_max: str, memory_max: str) -> Path:
    (root / "pilot.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "pilot.slice" / "cpu.max").write_text(cpu_max + "\n")
    (root / "pilot.slice" / "memory.max").write_text(memory_max + "\n")
    proc = root.parent / "self-cgroup"
    proc.write_text("0::/pilot.slice\n")
    return proc


def test_cgroup_v2_limits_outside_htcondor(tmp_path: Path) -> None:
    proc = _cgroup_v2(tmp_path / "cg", "100000 100000", str(512 * MiB))
    slot = discover({}, cgroup_root=tmp_path / "cg", proc_cgroup=proc)
    assert slot.cpus == 1  # quota of one CPU, though affinity may allow more
    assert slot.memory_bytes == 512 * MiB
    assert slot.source == "cgroup and CPU affinity"


def test_cgroup_v2_without_limits_is_affinity_and_host_memory(tmp_path: Path) -> None:
    proc = _cgroup_v2(tmp_path / "cg", "max 100000", "max")
    slot = discover({}, cgroup_root=tmp_path / "cg", proc_cgroup=proc)
    assert slot.cpus == len(os.sched_getaffinity(0))
    assert slot.memory_bytes is not None and slot.memory_bytes > 512 * MiB


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for controller, files in {
        "cpu": {"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"},
        "memory": {"memory.limit_in_bytes": str(300 * MiB)},
    }.items():
        d = root / controller / "job"
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text + "\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("4:memory:/job\n1:cpu,cpuacct:/job\n")
    slot = discover({}, cgroup_root=root, proc_cgroup=proc)
    assert slot.cpus == 1  # 1.5 CPUs of quota: one whole task
    assert slot.memory_bytes == 300 * MiB


def test_auto_concurrency_is_one_task_per_task_cpus(machine_ad: Path) -> None:
    assert load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="auto").max_concurrent_tasks == 3
    cfg = load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="AUTO", EWMS_PILOT_TASK_CPUS="2")
    assert cfg.max_concurrent_tasks == 1


def test_auto_concurrency_capped_by_memory_and_gpus(machine_ad: Path) -> None:
    # (4096 - 256) MiB / 1536 MiB = 2 tasks, though 3 CPUs
    cfg = load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="auto", EWMS_PILOT_TASK_MEMORY="1536M")
    assert (cfg.max_concurrent_tasks, cfg.task_memory) == (2, 1536 * MiB)
    cfg = load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="auto", EWMS_PILOT_TASK_GPUS="1")
    assert cfg.max_concurrent_tasks == 2  # two GPUs in the ad
    assert cfg.slot is not None and cfg.slot.gpus == ("CUDA0", "CUDA1")


def test_auto_memory_divides_the_slot_minus_the_pilots_share(machine_ad: Path) -> None:
    cfg = load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="auto", EWMS_PILOT_TASK_MEMORY="auto")
    assert cfg.max_concurrent_tasks == 3
    assert cfg.task_memory == (4096 - 256) * MiB // 3


def test_a_number_keeps_its_meaning(machine_ad: Path) -> None:
    assert load(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="5").max_concurrent_tasks == 5


def test_memory_sizes() -> None:
    for text, expected in (("2G", 2 * 2**30), ("512m", 512 * MiB), ("64MiB", 64 * MiB), ("1.5g", 3 * 2**29), ("", None)):
        assert load(None, EWMS_PILOT_TASK_MEMORY=text).task_memory == expected, text


@pytest.mark.parametrize("text", ["lots", "-1G", "2X", "1e9", "auto-ish"])
def test_bad_memory_sizes_are_one_line(text: str) -> None:
    err = refused(None, EWMS_PILOT_TASK_MEMORY=text)
    assert err.variable == "EWMS_PILOT_TASK_MEMORY"
    assert "512M or 2G" in err.expected


def test_requests_the_slot_cannot_meet_name_their_variable(machine_ad: Path) -> None:
    err = refused(machine_ad, EWMS_PILOT_MAX_CONCURRENT_TASKS="auto", EWMS_PILOT_TASK_CPUS="4")
    assert err.variable == "EWMS_PILOT_TASK_CPUS" and "at most 3" in err.expected
    err = refused(machine_ad, EWMS_PILOT_TASK_MEMORY="8G")
    assert err.variable == "EWMS_PILOT_TASK_MEMORY"
    err = refused(machine_ad, EWMS_PILOT_TASK_GPUS="3")
    assert err.variable == "EWMS_PILOT_TASK_GPUS" and "CUDA0,CUDA1" in err.expected


def test_htcondor_no_gpu_value_means_none() -> None:
    err = refused(None, CUDA_VISIBLE_DEVICES="10000", EWMS_PILOT_TASK_GPUS="1")
    assert err.variable == "EWMS_PILOT_TASK_GPUS" and "none" in err.expected
    cfg = load(None, CUDA_VISIBLE_DEVICES="0,1,2", EWMS_PILOT_TASK_GPUS="1", EWMS_PILOT_MAX_CONCURRENT_TASKS="8")
    assert cfg.max_concurrent_tasks == 3  # a number is capped by the GPUs


def test_config_check_shows_the_slot_and_what_is_used(machine_ad: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if "EWMS_PILOT" not in k and "_CONDOR" not in k}
    env = {
        **clean,
        **MINIMAL,
        "_CONDOR_MACHINE_AD": str(machine_ad),
        "EWMS_PILOT_MAX_CONCURRENT_TASKS": "auto",
        "EWMS_PILOT_TASK_MEMORY": "1G",
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(machine_ad.parent),
    }
    res = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "config", "--check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "EWMS_PILOT_MAX_CONCURRENT_TASKS=3" in res.stdout.splitlines()
    assert f"EWMS_PILOT_TASK_MEMORY={2**30}" in res.stdout.splitlines()
    expected = (
        "# slot: 3 CPUs, 4.0 GiB memory, 2.0 GiB disk, GPUs CUDA0,CUDA1 (HTCondor machine ad); "
        "the pilot runs up to 3 task(s) at once, each with a 1 GiB memory limit"
    )
    assert expected in res.stdout.splitlines()


# tasks of one pilot meet in the data hub: each marks itself running, waits until a second
# task has started (so the pilot must run two at once, else the first one fails after 60 s),
# and answers how many were running when it started (a third at once would see 3)
MEET = """\
import os, sys, time
hub = os.environ['EWMS_TASK_DATA_HUB_DIR']; me = open(sys.argv[1]).read()
os.makedirs(hub + '/running', exist_ok=True); os.makedirs(hub + '/done', exist_ok=True)
open(hub + '/running/' + me, 'w').close()
seen = len(os.listdir(hub + '/running'))
deadline = time.time() + 60
while len(os.listdir(hub + '/running')) + len(os.listdir(hub + '/done')) < 2:
    if time.time() > deadline: sys.exit('alone: no second task ran at the same time')
    time.sleep(0.05)
time.sleep(0.3)
open(hub + '/done/' + me, 'w').close(); os.remove(hub + '/running/' + me)
open(sys.argv[2], 'w').write(str(seen))
"""


def test_auto_concurrency_runs_as_many_tasks_at_once_as_the_slot_has_cpus(
    rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    ad = tmp_path / ".machine.ad"
    ad.write_text("Cpus = 2\nMemory = 2048\nDisk = 1048576\n")
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", [f"e{i}" for i in range(5)]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path / "data", task_args=shlex.join([sys.executable, "-c", MEET, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={"_CONDOR_MACHINE_AD": str(ad), "EWMS_PILOT_MAX_CONCURRENT_TASKS": "auto", "EWMS_PILOT_PREFETCH": "5"},
    )  # fmt: skip
    run = run_pilot(env, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=5))
    assert len(out) == 5 and max(int(str(x)) for x in out) == 2, out
    assert "the pilot runs up to 2 task(s) at once" in run.stderr
