"""Drive the one-machine HTCondor pool of scripts/htcondor-pool.sh from tests and the demo.

Everything goes through the pool container (`podman exec`), as a person would type
it: condor_submit/condor_q/condor_history/condor_vacate_job as the ordinary user
`ewms`. Job directories live under the pool's shared work dir (same path inside
and outside the container), so the test reads the job's files directly.
"""

from __future__ import annotations

import dataclasses as dc
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "htcondor"))
from jobfiles import write_job_dir  # noqa: E402

POOL_SCRIPT = REPO / "scripts" / "htcondor-pool.sh"
POOL_NAME = os.environ.get("EWMS_POOL_NAME", "ewms-htcondor-pool")
WORK = Path(os.environ.get("EWMS_POOL_WORK", "/var/lib/ewms-pilot-pool/work"))
#: bound read-only into container-universe jobs (site data, like /cvmfs); written by tests
SITE = Path(os.environ.get("EWMS_POOL_SITE", "/var/lib/ewms-pilot-pool/site"))
JOB_HELD = 5  # JobStatus
SUBMITTER_UID = 1500  # the pool's ordinary user `ewms` (scripts/htcondor-pool.sh)


@dc.dataclass(frozen=True)
class Pool:
    """The running pool's images (the `pool` fixture)."""

    task_sandbox: str  # the test image as an apptainer sandbox (the shape of a CVMFS image)
    pilot_sandbox: str  # the apptainer-flavour pilot image as a sandbox


class PoolError(Exception):
    """The pool could not be started or a pool command failed; message says why."""


def rabbitmq_queue_env(queue_name: str, address: str) -> dict[str, str]:
    """The pilot settings for `<queue_name>-in` / `-out` on one RabbitMQ broker."""
    return {
        "EWMS_PILOT_QUEUE_INCOMING": f"{queue_name}-in",
        "EWMS_PILOT_QUEUE_OUTGOING": f"{queue_name}-out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": address,
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": address,
    }


def pool_script(*args: str, timeout: float = 1800) -> str:
    """Run scripts/htcondor-pool.sh ARGS; its stdout, or PoolError with its stderr tail."""
    res = subprocess.run(
        ["bash", str(POOL_SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise PoolError(
            f"scripts/htcondor-pool.sh {' '.join(args)} failed (exit {res.returncode}): {tail}"
        )
    return res.stdout.strip()


def pool_exec(
    argv: Sequence[str],
    *,
    user: str | None = "ewms",
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv inside the pool container (as `user`; None = root; in `cwd`)."""
    opts = [*(["--user", user] if user else []), *(["--workdir", str(cwd)] if cwd else [])]
    cmd = ["podman", "exec", *opts, POOL_NAME, *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise PoolError(
            f"{shlex.join(argv)} in the pool failed (exit {res.returncode}): {res.stderr.strip()}"
        )
    return res


def make_job_dir(
    env: Mapping[str, object], image: str, *, queue: int | None = None, name: str = "job"
) -> Path:
    """A fresh submit dir under the pool's work dir, owned by the submitter."""
    job_dir = WORK / f"{name}-{uuid.uuid4().hex[:10]}"
    write_job_dir(job_dir, env, image, queue=queue)
    for p in (job_dir, *job_dir.iterdir()):
        os.chown(p, SUBMITTER_UID, SUBMITTER_UID)
    return job_dir


def remove_job_dir(job_dir: Path, cluster: int | None = None) -> None:
    """The test's jobs (if still queued) and their directory go."""
    if cluster is not None:
        pool_exec(["condor_rm", str(cluster)], check=False)
    shutil.rmtree(job_dir, ignore_errors=True)


def submit(job_dir: Path, *extra: str) -> int:
    """condor_submit pilot.sub in `job_dir` as the submitter; the cluster id."""
    # the submit dir is the job's initial dir: the env file is found there
    res = pool_exec(["condor_submit", "-terse", *extra, "pilot.sub"], cwd=job_dir)
    # -terse prints "CLUSTER.FIRST - CLUSTER.LAST"
    return int(res.stdout.split(".")[0])


def job_ads(cluster: int, attrs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The cluster's jobs still in the queue (condor_q -json)."""
    out = pool_exec(
        ["condor_q", str(cluster), "-json", *(["-attributes", ",".join(attrs)] if attrs else [])]
    ).stdout
    return json.loads(out) if out.strip() else []


def history_ads(cluster: int) -> list[dict[str, Any]]:
    """The cluster's finished jobs (condor_history -json), one ad per job, latest first."""
    out = pool_exec(["condor_history", str(cluster), "-json"]).stdout
    return json.loads(out) if out.strip() else []


def wait_for(cond: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `cond()` until it returns something truthy; PoolError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise PoolError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_left_queue(cluster: int, n_jobs: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until all `n_jobs` of `cluster` are in the history; their history ads."""

    def done() -> list[dict[str, Any]] | None:
        queued = job_ads(cluster, ["ProcId", "JobStatus", "HoldReason"])
        if held := [ad for ad in queued if ad.get("JobStatus") == JOB_HELD]:
            raise PoolError(
                f"job {cluster}.{held[0]['ProcId']} was held: {held[0].get('HoldReason')}"
            )
        if queued:
            return None
        ads = history_ads(cluster)
        return ads if len(ads) >= n_jobs else None

    return wait_for(done, timeout, f"cluster {cluster} to leave the queue", interval=1)  # type: ignore[no-any-return]


def chirp_events(log_file: Path) -> list[tuple[int, str]]:
    """(ProcId, text) of every ULOG (generic, 008) event in the job event log, in order,
    read with the htcondor bindings as the task-management service reads it."""
    try:
        import htcondor2 as htcondor  # type: ignore[import-untyped]
    except ImportError:  # htcondor 24
        import htcondor  # type: ignore[import-untyped,no-redef]
    out = []
    for event in htcondor.JobEventLog(str(log_file)).events(stop_after=0):
        if event.type == htcondor.JobEventType.GENERIC:
            out.append((int(event.proc), str(event["Info"])))
    return out


# --------------------------------------------------------------------------- a pilot in the pool
#: exec the pilot after writing its pid (to signal it from outside), no shell involved
_EXEC_WITH_PIDFILE = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"
POOL_PYTHON = "/opt/ewms-pilot/bin/python3"


class PoolPilot:
    """`python -m ewms_pilot run` inside the pool container as the submitting user (not a job)."""

    def __init__(self, env: Mapping[str, str], run_dir: Path) -> None:
        self.pidfile = run_dir / f"pilot-{uuid.uuid4().hex[:8]}.pid"
        env_file = run_dir / f"{self.pidfile.stem}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        argv = [
            "podman",
            "exec",
            "--user",
            "ewms",
            "--workdir",
            str(run_dir),
            "--env-file",
            str(env_file),
            POOL_NAME,
            POOL_PYTHON,
            "-c",
            _EXEC_WITH_PIDFILE,
            str(self.pidfile),
            POOL_PYTHON,
            "-m",
            "ewms_pilot",
            "run",
            "--no-progress",
        ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def pid(self) -> str:
        return wait_for(
            lambda: self.pidfile.exists() and self.pidfile.read_text(), 60, "the pilot's pid file"
        )  # type: ignore[no-any-return]

    def signal(self, sig: str) -> None:
        pool_exec(["kill", f"-{sig}", self.pid()])

    def wait(self, timeout: float = 180) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of the pilot."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            if self.pidfile.exists():
                pool_exec(["kill", "-KILL", self.pidfile.read_text()], check=False)
            out, err = self.proc.communicate(timeout=30)
            raise PoolError(
                f"the pilot in the pool ran longer than {timeout:.0f}s; stderr tail: {err[-3000:]}"
            ) from e
        return self.proc.returncode, out, err


def pool_processes(marker: str) -> list[str]:
    """Command lines of the pool container's processes that contain `marker`."""
    out = pool_exec(["ps", "-eo", "args="], user=None).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def tms_parse(info: str) -> tuple[str, Any]:
    """A job-event-log chirp line as the TMS reads it: `Attr: value`, the value unquoted
    with classad.unquote when it is a quoted string (numbers stay text)."""
    import classad2  # type: ignore[import-untyped]

    attr, value = info.split(":", maxsplit=1)
    value = value.strip()
    try:
        return attr, classad2.unquote(value)
    except Exception:  # the TMS keeps what is not a ClassAd string literal as it is
        return attr, value
