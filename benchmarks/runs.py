"""One pilot run: fresh queues, N events in, the pilot started as a black box, every output checked.

Timing (all time.monotonic in this process):
  start        just before the pilot process is spawned
  first/last   arrival of the first/last result at our consumer
  exit         the pilot process became a zombie (see procwatch)
A run whose results are not exactly {e+e for each event e} (missing, wrong,
extra) or whose pilot exits non-zero is a failed run, never a fast one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses as dc
import os
import shlex
import shutil
import uuid
from pathlib import Path

from . import mq
from .procwatch import WatchedProcess
from .scenarios import (
    DOUBLE,
    HOST_PYTHON,
    OURS,
    OURS_PLACEHOLDERS,
    REF_PLACEHOLDERS,
    WARM_DOUBLE,
    Scenario,
)

#: longest a single pilot run may take before it is killed and counted as failed
RUN_LIMIT = 900.0


@dc.dataclass(frozen=True)
class Setup:
    """What every run of one benchmark shares."""

    n: int
    incoming_timeout: int  # T: EWMS_PILOT_TIMEOUT_QUEUE_INCOMING
    image: str
    containers_conf: Path
    ours_python: str
    ref_python: str | None  # None: reference not installed (smoke mode)
    shim_dir: Path | None
    workdir: Path  # per-run directories go below here


@dc.dataclass
class RunResult:
    """Figures of one run (None where the run failed before they existed)."""

    scenario: str
    round: int
    ok: bool
    error: str = ""
    n: int = 0
    verified: int = 0  # outputs that matched an event's expected result
    returncode: int | None = None
    wall_s: float | None = None  # start -> last output
    first_s: float | None = None  # start -> first output
    period_s: float | None = None  # (last - first) / (n - 1): steady-state time per event
    exit_after_last_s: float | None = None
    peak_rss_mib: float | None = None
    cpu_s: float | None = None
    log_dir: str = ""
    harness_error: bool = False  # the benchmark's own broker I/O failed: the run says nothing about the pilot
    retried: int = 0  # runs thrown away for a harness error before this one

    @property
    def throughput(self) -> float | None:
        """Events per second, start to last output."""
        return self.n / self.wall_s if self.ok and self.wall_s else None

    @property
    def steady_rate(self) -> float | None:
        """Events per second between the first and the last output (start-up excluded)."""
        return 1 / self.period_s if self.ok and self.period_s else None

    @property
    def cpu_ms_per_event(self) -> float | None:
        """The pilot's own CPU (utime + stime, no children) per event, in ms."""
        return 1000 * self.cpu_s / self.n if self.ok and self.cpu_s is not None and self.n else None


def _clean_base_env(conf: Path) -> dict[str, str]:
    drop = ("EWMS_PILOT_", "_EWMS_PILOT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for var in ("PYTHONPATH", "PYTHONHOME", "CI", "VIRTUAL_ENV"):
        env.pop(var, None)
    env["CONTAINERS_CONF"] = str(conf)
    return env


def _task_args(sc: Scenario) -> str:
    """EWMS_PILOT_TASK_ARGS: the doubling program, quoted for shlex-style splitting."""
    interpreter = " ".join(HOST_PYTHON) if sc.platform == "process" else "python3"
    if sc.warm:  # a worker gets each event's paths in its request, never as arguments
        return f"{interpreter} -c {shlex.quote(WARM_DOUBLE)}"
    infile, outfile = REF_PLACEHOLDERS if sc.side != OURS else OURS_PLACEHOLDERS
    return f"{interpreter} -c {shlex.quote(DOUBLE)} {infile} {outfile}"


def pilot_env(sc: Scenario, setup: Setup, q_in: str, q_out: str, address: str, data_dir: Path) -> dict[str, str]:
    """The EWMS_PILOT_* environment a batch job would give this pilot."""
    env = _clean_base_env(setup.containers_conf)
    env.update(
        {
            "EWMS_PILOT_QUEUE_INCOMING": q_in,
            "EWMS_PILOT_QUEUE_OUTGOING": q_out,
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": sc.broker,
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": sc.broker,
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": address,
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": address,
            "EWMS_PILOT_TASK_ARGS": _task_args(sc),
            "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(data_dir),
            "EWMS_PILOT_MAX_CONCURRENT_TASKS": str(sc.concurrency),
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": str(setup.incoming_timeout),
            # events are queued before the start: this only guards a slow start-up
            "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "60",
        }
    )
    if sc.platform != "process":
        env["EWMS_PILOT_TASK_IMAGE"] = setup.image
    if sc.prefetch is not None:
        env["EWMS_PILOT_PREFETCH"] = str(sc.prefetch)
    if sc.side == OURS:
        env["EWMS_PILOT_CONTAINER_PLATFORM"] = sc.platform
        if sc.warm:
            env["EWMS_PILOT_TASK_MODE"] = "warm"
    else:
        assert setup.shim_dir is not None
        env["PATH"] = f"{setup.shim_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _events(n: int, tag: str) -> list[str]:
    return [f"{tag}-{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(n)]


def _verify(events: list[str], outputs: list[object]) -> tuple[int, str]:
    """(matching outputs, '' or what was wrong)."""
    want = collections.Counter(e + e for e in events)
    got = collections.Counter(o if isinstance(o, str) else repr(o) for o in outputs)
    matched = sum((want & got).values())
    missing = sum((want - got).values())
    extra = sum((got - want).values())
    if missing or extra:
        sample = next(iter(got - want), None)
        return matched, f"{missing} missing, {extra} wrong/extra output(s)" + (
            f" (e.g. {sample[:80]!r})" if sample else ""
        )
    return matched, ""


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def run_pilot(sc: Scenario, setup: Setup, round_no: int) -> RunResult:
    """Run `sc` once on fresh queues and measure it."""
    tag = f"bench{uuid.uuid4().hex[:10]}"
    run_dir = setup.workdir / f"r{round_no}-{sc.key}-{tag}"
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True)
    q_in, q_out = f"{tag}-in", f"{tag}-out"
    address = mq.RABBITMQ_ADDRESS if sc.broker == "rabbitmq" else str(run_dir / "queue.sqlite")
    result = RunResult(sc.key, round_no, ok=False, n=setup.n, log_dir=str(run_dir))
    python = setup.ours_python if sc.side == OURS else setup.ref_python
    if python is None:
        result.error = "reference not installed"
        return result
    events = _events(setup.n, tag)
    try:
        await mq.publish(sc.broker, address, q_in, events)
        await mq.declare(sc.broker, address, q_out)
    except Exception as e:
        result.harness_error = True
        result.error = f"harness error publishing the events: {type(e).__name__}: {e}"
        return result
    env = pilot_env(sc, setup, q_in, q_out, address, data_dir)
    # cwd = the run dir: `-m ewms_pilot` puts the cwd first on sys.path, so the
    # reference must never start inside this repo (it would import ours)
    program = [str(Path(__file__).with_name(sc.program))] if sc.program else ["-m", "ewms_pilot"]
    proc = WatchedProcess(
        [python, *program],
        env=env,
        cwd=run_dir,
        stdout=run_dir / "stdout.log",
        stderr=run_dir / "stderr.log",
    )
    waiter = asyncio.ensure_future(asyncio.to_thread(proc.wait, RUN_LIMIT))
    try:
        arrivals = await mq.collect(sc.broker, address, q_out, proc.exited)
    except Exception as e:  # our consumer broke, not the pilot: stop the pilot, say so
        proc.kill()
        await waiter
        result.harness_error = True
        result.error = f"harness error while consuming results: {type(e).__name__}: {e}"
        return result
    finally:
        if sc.broker == "rabbitmq":
            await asyncio.to_thread(mq.delete_rabbitmq_queues, [q_in, q_out])
    ended = await waiter
    result.returncode = ended.returncode
    result.peak_rss_mib = ended.peak_rss_kib / 1024 if ended.peak_rss_kib else None
    result.cpu_s = ended.cpu_s
    result.verified, problem = _verify(events, [a.data for a in arrivals])
    if arrivals:
        times = sorted(a.at for a in arrivals)
        result.first_s = times[0] - proc.started_at
        result.wall_s = times[-1] - proc.started_at
        result.exit_after_last_s = ended.exited_at - times[-1]
        if len(times) > 1:
            result.period_s = (times[-1] - times[0]) / (len(times) - 1)
    if ended.returncode is None:
        problem = f"pilot did not exit within {RUN_LIMIT:g}s (killed); " + problem
    elif ended.returncode != 0:
        problem = f"pilot exited {ended.returncode}; " + problem
    if problem:
        result.error = problem.strip("; ") + "\n" + _log_tail(run_dir / "stderr.log")
        return result
    result.ok = True
    return result


def cleanup_run_dir(result: RunResult) -> None:
    """Successful runs leave nothing behind; failed ones keep their logs for a look."""
    if result.ok and result.log_dir:
        shutil.rmtree(result.log_dir, ignore_errors=True)
