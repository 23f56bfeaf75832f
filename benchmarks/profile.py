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
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ewms_pilot.pilot.journal import Journal, journal_path

from . import mq
from . import scenarios as S
from .procwatch import WatchedProcess
from .runs import Setup, pilot_env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warm", action="store_true", help="EWMS_PILOT_TASK_MODE=warm (else one-shot)")
    p.add_argument("-n", "--events", type=int, default=2000)
    p.add_argument("-c", "--concurrency", type=int, default=4)
    p.add_argument("-o", "--output", type=Path, help="the SVG to write (without it: no py-spy, only the figures)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--idle", action="store_true", help="sample idle threads too (wall time, not CPU)")
    p.add_argument("--format", default="flamegraph", choices=("flamegraph", "raw", "speedscope"),
                   help="py-spy's output format (raw: collapsed stacks, one per line, for a text summary)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.output is not None and not Path(py_spy).exists():
        print("benchmarks.profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    sc = S.Scenario("profile", S.OURS, "profile", args.concurrency, platform="process", broker="local",
                    warm=args.warm)
    workdir = Path(tempfile.mkdtemp(prefix="ewms-profile-", dir="/tmp"))
    try:
        db = str(workdir / "queue.sqlite")
        (workdir / "data").mkdir()
        asyncio.run(mq.publish("local", db, "in", [f"e{i:06d}" for i in range(args.events)]))
        setup = Setup(n=args.events, incoming_timeout=1, image="", containers_conf=workdir / "none.conf",
                      ours_python=sys.executable, ref_python=None, shim_dir=None, workdir=workdir)
        env = pilot_env(sc, setup, "in", "out", db, workdir / "data")
        env.pop("CONTAINERS_CONF", None)
        pilot = [sys.executable, "-m", "ewms_pilot"]
        if args.output is None:
            rc = _measure(pilot, env, workdir, args.events)
        else:
            cmd = [py_spy, "record", "--rate", str(args.rate), "--nonblocking", "--format", args.format,
                   "-o", str(args.output.resolve())]
            if args.idle:
                cmd.append("--idle")
            started = time.monotonic()
            with open(workdir / "pilot.log", "wb") as log:
                rc = subprocess.run([*cmd, "--", *pilot], env=env, cwd=workdir, stdout=log,
                                    stderr=subprocess.STDOUT, check=False).returncode
            print(f"pilot under py-spy: exit {rc}, {time.monotonic() - started:.1f} s (start-up and T=1 s included)")
        counts = asyncio.run(_counts(db))
        print(f"results queued: {counts}")
        print("command: .venv/bin/python -m benchmarks.profile " + shlex.join(argv or sys.argv[1:]))
        return 0 if rc == 0 and counts.get("ready") == args.events else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(pilot: list[str], env: dict[str, str], workdir: Path, n: int) -> int:
    """The pilot alone: its CPU per event, peak RSS, and the steady rate from its journal's end times."""
    proc = WatchedProcess(pilot, env=env, cwd=workdir, stdout=workdir / "stdout.log", stderr=workdir / "stderr.log")
    ended = proc.wait(600)
    ends = sorted(r["end"] for r in Journal(journal_path(workdir / "data")).read())
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    cpu = ended.cpu_s or float("nan")
    rss = (ended.peak_rss_kib or 0) / 1024
    print(f"exit {ended.returncode}; {len(ends)}/{n} journal records; steady {steady:.0f} events/s; "
          f"pilot CPU {cpu:.2f} s = {1000 * cpu / n:.2f} ms/event; peak RSS {rss:.1f} MiB")
    return ended.returncode if ended.returncode is not None else 1


async def _counts(db: str) -> dict[str, int]:
    from ewms_pilot.queues.local import local_counts

    return await local_counts(mq._local_cfg(db, "out"))


if __name__ == "__main__":
    sys.exit(main())
