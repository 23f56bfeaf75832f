"""Run a real pilot process (`python -m ewms_pilot`) the way a batch job does: env vars only."""

from __future__ import annotations

import dataclasses as dc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from chirp_server import ChirpServer

# Task programs used across tests (argv lists; no shell anywhere).
DOUBLE = "import sys; d=open(sys.argv[1]).read(); open(sys.argv[2],'w').write(d+d)"


@dc.dataclass
class PilotRun:
    """What a finished pilot process left behind."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def base_env(
    *,
    broker_type: str,
    address: str,
    queue_in: str,
    queue_out: str,
    data_dir: Path,
    task_args: str,
    platform: str = "process",
    image: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A full pilot environment on top of a clean copy of this process's env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")}
    env.update(
        {
            "EWMS_PILOT_QUEUE_INCOMING": queue_in,
            "EWMS_PILOT_QUEUE_OUTGOING": queue_out,
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": broker_type,
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": broker_type,
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": address,
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": address,
            "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(data_dir),
            "EWMS_PILOT_CONTAINER_PLATFORM": platform,
            "EWMS_PILOT_TASK_IMAGE": image,
            "EWMS_PILOT_TASK_ARGS": task_args,
            "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "10",
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "2",
            "EWMS_PILOT_CL_LOG": "DEBUG",
        }
    )
    env.update(extra or {})
    return env


def start_pilot(env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start `python -m ewms_pilot run --no-progress` in its own process group (in `cwd`: a job's scratch dir)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ewms_pilot", "run", "--no-progress"],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_pilot(proc: subprocess.Popen[str], timeout: float = 120, started: float | None = None) -> PilotRun:
    """Wait for the pilot to end (killing its group if it overstays) and collect its output."""
    t0 = started if started is not None else time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"pilot did not exit within {timeout}s; stderr tail:\n{err[-4000:]}") from None
    return PilotRun(proc.returncode, out, err, time.monotonic() - t0)


def run_pilot(env: Mapping[str, str], timeout: float = 120, cwd: Path | None = None) -> PilotRun:
    """Start a pilot (in `cwd`) and wait for it."""
    t0 = time.monotonic()
    return wait_pilot(start_pilot(env, cwd), timeout, t0)


def run_pilot_chirped(env: Mapping[str, str], directory: Path, timeout: float = 120) -> tuple[PilotRun, ChirpServer]:
    """`run_pilot` with `_CONDOR_CHIRP_CONFIG` pointing at a fresh ChirpServer in `directory` (made here, with its parents).

    The server is stopped when the pilot has ended; it keeps everything it received.
    """
    directory.mkdir(parents=True)
    with ChirpServer(directory) as server:
        run = run_pilot({**env, "_CONDOR_CHIRP_CONFIG": str(server.config_path)}, timeout)
    return run, server
