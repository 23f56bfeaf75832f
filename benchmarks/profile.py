"""`python -m benchmarks.profile`: one pilot run on the local queue under py-spy, as a flame graph (SVG).

The same pilot configuration and task as the benchmark's process-runtime rows
(`scenarios.py`), N events queued before the start, so the profile shows the
pilot's own cost per event where the task costs next to nothing. The pilot
runs as a black box (`python -m ewms_pilot`); py-spy samples it from outside.
The command line that made an SVG is printed, to go next to it in the README.

  .venv/bin/python -m benchmarks.profile --warm -n 3000 -o benchmarks/results/flame-warm-local-c4.svg
  .venv/bin/python -m benchmarks.profile -n 1000 -o benchmarks/results/flame-oneshot-local-c4.svg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ewms_pilot.pilot.journal import Journal, journal_path

from . import mq
from . import scenarios as S
from .procwatch import WatchedProcess
from .runs import Setup, pilot_env

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warm", action="store_true", help="EWMS_PILOT_TASK_MODE=warm (else one-shot)")
    p.add_argument("-n", "--events", type=int, default=2000)
    p.add_argument("-c", "--concurrency", type=int, default=4)
    p.add_argument("--source", type=Path, help="run the pilot from this checkout (PYTHONPATH), e.g. an older commit")
    p.add_argument("--rabbitmq", action="store_true", help=f"RabbitMQ at {mq.RABBITMQ_ADDRESS} instead of the local queue")
    p.add_argument("-o", "--output", type=Path, help="the SVG to write (without it: no py-spy, only the figures)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--idle", action="store_true", help="sample idle threads too (wall time, not CPU)")
    p.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (Python CPU time)")
    p.add_argument("--format", default="flamegraph", choices=("flamegraph", "raw", "speedscope"),
                   help="py-spy's output format (raw: collapsed stacks, one per line, for a text summary)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.output is not None and not Path(py_spy).exists():
        print("benchmarks.profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    broker = "rabbitmq" if args.rabbitmq else "local"
    sc = S.Scenario("profile", S.OURS, "profile", args.concurrency, platform="process", broker=broker,
                    warm=args.warm)
    workdir = Path(tempfile.mkdtemp(prefix="ewms-profile-", dir="/tmp"))
    tag = f"profile{uuid.uuid4().hex[:8]}"
    q_in, q_out = (f"{tag}-in", f"{tag}-out") if args.rabbitmq else ("in", "out")
    address = mq.RABBITMQ_ADDRESS if args.rabbitmq else str(workdir / "queue.sqlite")
    try:
        (workdir / "data").mkdir()
        asyncio.run(mq.publish(broker, address, q_in, [f"e{i:06d}" for i in range(args.events)]))
        asyncio.run(mq.declare(broker, address, q_out))
        setup = Setup(n=args.events, incoming_timeout=1, image="", containers_conf=workdir / "none.conf",
                      ours_python=sys.executable, ref_python=None, shim_dir=None, workdir=workdir)
        env = pilot_env(sc, setup, q_in, q_out, address, workdir / "data")
        env.pop("CONTAINERS_CONF", None)
        if args.source:
            env["PYTHONPATH"] = str(args.source.resolve())
        pilot = [sys.executable, "-m", "ewms_pilot"]
        if args.output is None:
            rc = _measure(pilot, env, workdir, args.events)
        else:
            cmd = [py_spy, "record", "--rate", str(args.rate), "--nonblocking", "--format", args.format,
                   "-o", str(args.output.resolve())]
            cmd += ["--idle"] if args.idle else []
            cmd += ["--gil"] if args.gil else []
            started = time.monotonic()
            with open(workdir / "pilot.log", "wb") as log:
                rc = subprocess.run([*cmd, "--", *pilot], env=env, cwd=workdir, stdout=log,
                                    stderr=subprocess.STDOUT, check=False).returncode
            print(f"pilot under py-spy: exit {rc}, {time.monotonic() - started:.1f} s (start-up and T=1 s included)")
        ready = _rabbitmq_ready(q_out) if args.rabbitmq else asyncio.run(_counts(address)).get("ready")
        print(f"results queued: {ready}")
        print("command: .venv/bin/python -m benchmarks.profile " + shlex.join(argv or sys.argv[1:]))
        return 0 if rc == 0 and ready == args.events else 1
    finally:
        if args.rabbitmq:
            mq.delete_rabbitmq_queues([q_in, q_out])
        shutil.rmtree(workdir, ignore_errors=True)


def _rabbitmq_ready(queue: str) -> int:
    import pika

    conn = pika.BlockingConnection(mq._pika_params())
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def _measure(pilot: list[str], env: dict[str, str], workdir: Path, n: int) -> int:
    """The pilot alone: its CPU per event, peak RSS, and the steady rate from its journal's end times."""
    proc = WatchedProcess(pilot, env=env, cwd=workdir, stdout=workdir / "stdout.log", stderr=workdir / "stderr.log")
    threads: dict[str, tuple[float, float]] = {}  # thread id -> last (utime, stime) seen
    while not proc.exited.wait(0.05):
        threads.update(_thread_times(proc.proc.pid))
    ended = proc.wait(600)
    ends = sorted(r["end"] for r in Journal(journal_path(workdir / "data")).read())
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    cpu = ended.cpu_s or float("nan")
    rss = (ended.peak_rss_kib or 0) / 1024
    print(f"exit {ended.returncode}; {len(ends)}/{n} journal records; steady {steady:.0f} events/s; "
          f"pilot CPU {cpu:.2f} s = {1000 * cpu / n:.2f} ms/event; peak RSS {rss:.1f} MiB")
    main = threads.pop(f"{proc.proc.pid}", (0.0, 0.0))  # the event loop's thread
    others = sorted(threads.values(), key=lambda t: -sum(t))
    print(f"pilot CPU by thread (ms/event, user+system): event loop {1000 * main[0] / n:.2f}+{1000 * main[1] / n:.2f}; "
          f"{len(others)} other threads " + ", ".join(f"{1000 * u / n:.2f}+{1000 * s / n:.2f}" for u, s in others[:6]))
    return ended.returncode if ended.returncode is not None else 1


def _thread_times(pid: int) -> dict[str, tuple[float, float]]:
    """{"<tid>": (utime s, stime s)} of every thread of `pid` now (Python does not name OS threads)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        out[task.name] = (int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK)
    return out


async def _counts(db: str) -> dict[str, int]:
    from ewms_pilot.queues.local import local_counts

    return await local_counts(mq._local_cfg(db, "out"))


if __name__ == "__main__":
    sys.exit(main())
