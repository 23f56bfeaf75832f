"""`python -m benchmarks.profile`: one pilot run on the local queue under py-spy, as a flame graph (SVG).

The same pilot configuration and task as the benchmark's process-runtime rows
(`scenarios.py`), N events queued before the start, so the profile shows the
pilot's own cost per event where the task costs next to nothing. The pilot
runs as a black box (`python -m ewms_pilot`); py-spy samples it from outside.
The command line that made an SVG is printed, to go next to it in the README.

Without `-o` (no py-spy) the task also stamps its result with its task id and
the time it wrote its outfile, and the lag from then to the journal's `end`
(taken right after the result was published and the event acked) is printed
per event as a table: what a result waits for once its task is done.

  .venv/bin/python -m benchmarks.profile --warm -n 3000 -o benchmarks/results/flame-warm-local-c4.svg
  .venv/bin/python -m benchmarks.profile -n 1000 -o benchmarks/results/flame-oneshot-local-c4.svg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ewms_pilot.pilot.journal import Journal, journal_path

from . import mq
from . import scenarios as S
from .procwatch import WatchedProcess
from .runs import Setup, pilot_env

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# the doubling task (scenarios.py), its result stamped "<d+d> <task id> <time it wrote its outfile>";
# the task id is the outfile's name after `outfile-` (tasks/taskdir.py), 12 hex characters
STAMPED_DOUBLE = (
    "import sys,time; d=open(sys.argv[1]).read(); o=sys.argv[2]; "
    "open(o,'w').write(d+d+' '+o.rsplit('outfile-',1)[1][:12]+' '+repr(time.time()))"
)
STAMPED_WARM_DOUBLE = S.WARM_DOUBLE.replace("import re, sys", "import re, sys, time").replace(
    "open(r['outfile'], 'w').write(d + d)",
    "o = r['outfile']; open(o, 'w').write(d + d + ' ' + o.rsplit('outfile-', 1)[1][:12] + ' ' + repr(time.time()))",
)
assert "time.time()" in STAMPED_WARM_DOUBLE and "import re, sys, time" in STAMPED_WARM_DOUBLE


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
    p.add_argument("--wrap", default="", metavar="COMMAND",
                   help="without -o: run the pilot under this command line, e.g. 'perf stat -e context-switches "
                        "-o FILE' or 'strace -f -ff -o PREFIX' (its figures cover the pilot and its workers; the pilot's "
                        "own CPU and RSS are then not measured)")
    p.add_argument("--format", default="flamegraph", choices=("flamegraph", "raw", "speedscope"),
                   help="py-spy's output format (raw: collapsed stacks, one per line, for a text summary)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.output is not None and not Path(py_spy).exists():
        print("benchmarks.profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    if args.wrap and args.output is not None:
        print("benchmarks.profile: --wrap is for a run without py-spy (-o)", file=sys.stderr)
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
        pilot = [*shlex.split(args.wrap), sys.executable, "-m", "ewms_pilot"]
        ready: int | None
        if args.output is None:
            env["EWMS_PILOT_TASK_ARGS"] = shlex.join(
                [*S.HOST_PYTHON, "-c", STAMPED_WARM_DOUBLE] if args.warm
                else [*S.HOST_PYTHON, "-c", STAMPED_DOUBLE, *S.OURS_PLACEHOLDERS]
            )  # fmt: skip
            rc = _measure(pilot, env, workdir, args.events)
            exited = threading.Event()
            exited.set()  # the pilot is gone: take what it left (until 1 s without a result)
            results = [a.data for a in asyncio.run(mq.collect(broker, address, q_out, exited))]
            print(_lag_table(results, Journal(journal_path(workdir / "data")).read()))
            ready = len(results)
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


def _lag_table(results: list[Any], records: list[dict[str, Any]]) -> str:
    """Per event: the journal's `end` (result published, event acked) less the time its task wrote the outfile."""
    end = {r["task_id"]: r["end"] for r in records}
    lags = []
    for result in results:
        _, task_id, wrote = str(result).rsplit(" ", 2)
        if task_id in end:
            lags.append(1000 * (end[task_id] - float(wrote)))
    if not lags:
        return "no result could be matched to a journal record: no lag figure"
    lags.sort()
    p90 = lags[min(len(lags) - 1, int(0.9 * len(lags)))]
    return "\n".join([
        "| lag per event (ms) | median | p90 | max | events |",
        "| --- | --- | --- | --- | --- |",
        f"| task wrote its outfile → result published, event acked | {statistics.median(lags):.2f} | {p90:.2f} "
        f"| {lags[-1]:.2f} | {len(lags)} of {len(results)} |",
    ])  # fmt: skip


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
