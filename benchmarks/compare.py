"""`python -m benchmarks.compare`: this pilot vs ewms-pilot 1.0.5, side by side (see benchmarks/README.md).

Each round runs the bare baselines and every scenario once, ours and the
reference alternating (the order flips every round), on fresh queues. The
report goes to stdout and to `<results-dir>/latest.md` (`smoke.md` with
--smoke), with every run's figures in the matching `.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses as dc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import mq
from . import scenarios as S
from .bare import BareResult, run_bare
from .facts import load_average, machine_facts
from .plot import plot_rows, text_chart, write_png
from .rabbitnode import private_rabbit
from .refenv import ReferenceInstallError, ensure_reference
from .report import Results, render, scaling_key, to_json
from .runs import RunResult, Setup, cleanup_run_dir, run_pilot
from .shim import write_docker_shim

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_IMAGE = "localhost/ewms-pilot-test:bookworm"
HARNESS_RETRIES = 2  # a run whose *harness* broker I/O failed is run again (a pilot failure never is)
WARM_NOTE = "not run: warm mode is measured only with `--with-warm` (the targets are about one-shot mode)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="N=5, 1 round, T=2 s; ours only unless --with-reference")
    p.add_argument("--with-reference", action="store_true", help="in smoke mode, run 1.0.5 too")
    p.add_argument("--rounds", type=int, help="rounds (default 3; smoke 1)")
    p.add_argument("-n", "--events", type=int, help="events per run (default 100; smoke 5)")
    p.add_argument("--incoming-timeout", type=int, help="T = EWMS_PILOT_TIMEOUT_QUEUE_INCOMING (default 5; smoke 2)")
    p.add_argument("--with-warm", action="store_true", help="also run the warm-mode hook row (EWMS_PILOT_TASK_MODE=warm)")
    p.add_argument("--warm-events", type=int, metavar="N",
                   help="events per run for the warm rows and the oms-mqclient loop (default: -n); at 500+ "
                        "events/s, 100 events measure the steady rate over a fifth of a second")
    p.add_argument("--scaling", type=_counts, default=(), metavar="N,N,...",
                   help=f"after the rounds, run '{S.SCALING_ROW.key}' once per N (e.g. 100,1000,10000)")
    p.add_argument("--stem", help="name of the report files (default latest; smoke with --smoke)")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--image", default=os.environ.get("EWMS_TEST_IMAGE", DEFAULT_IMAGE))
    p.add_argument("--keep-workdir", action="store_true", help="keep every run's directory and logs")
    p.add_argument("--rabbitmq", default=mq.RABBITMQ_ADDRESS, metavar="HOST:PORT",
                   help=f"RabbitMQ to use (default {mq.RABBITMQ_ADDRESS}, guest/guest)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: re-render the report from <results-dir>/latest.json (or smoke.json with --smoke)")
    p.add_argument("--private-rabbitmq", action="store_true",
                   help="start a private RabbitMQ node for this benchmark (away from the shared broker's other users)")
    return p


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,N,... (whole numbers), got {text!r}") from None
    if any(n < 2 for n in counts):
        raise argparse.ArgumentTypeError("every N must be at least 2")
    return counts


def _stem(args: argparse.Namespace) -> str:
    return args.stem or ("smoke" if args.smoke else "latest")


def _containers_conf() -> Path:
    conf = Path(os.environ.get("CONTAINERS_CONF") or REPO / ".test-env" / "containers.conf")
    return conf.resolve()


def _preflight(image: str, conf: Path) -> str | None:
    """Why the benchmark cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not on PATH (run `bash scripts/test-env.sh`)"
    if not conf.is_file():
        return f"containers.conf {conf} missing (run `bash scripts/test-env.sh`, then `. scripts/env.sh`)"
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    res = subprocess.run(["podman", "image", "exists", image], env=env, capture_output=True, timeout=60, check=False)
    if res.returncode != 0:
        return f"podman image {image} is missing (run `bash scripts/test-env.sh`)"
    if not Path(S.HOST_PYTHON[0]).exists():
        return f"{S.HOST_PYTHON[0]} is missing (the process-runtime rows run the task with it)"
    try:
        mq.rabbitmq_version()
    except Exception as e:
        return f"RabbitMQ not reachable at {mq.RABBITMQ_ADDRESS}: {type(e).__name__}: {e}"
    return None


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _describe(r: RunResult | BareResult) -> str:
    if not r.ok:
        first: str = (r.error.strip().splitlines() or ["?"])[0]
        return "FAILED: " + first
    rate = f"{r.throughput:.2f} ev/s" if r.throughput else "?"
    extra = ""
    if isinstance(r, RunResult) and None not in (r.exit_after_last_s, r.peak_rss_mib, r.cpu_s):
        extra = f", exit +{r.exit_after_last_s:.2f} s, rss {r.peak_rss_mib:.0f} MiB, cpu {r.cpu_s:.2f} s"
    return f"ok {r.verified}/{r.n}, wall {r.wall_s:.2f} s, {rate}{extra}"


async def _round(
    round_no: int,
    setup: Setup,
    res: Results,
    *,
    with_reference: bool,
    with_warm: bool,
    keep: bool,
    warm_events: int | None = None,
) -> None:
    flip = round_no % 2 == 1  # A B in even rounds, B A in odd ones

    def alternate(*group: S.Scenario) -> list[S.Scenario]:
        picked = [sc for sc in group if with_reference or sc.side == S.OURS]
        return list(reversed(picked)) if flip else picked

    async def bare(key: str, parallel: int, image: str | None) -> None:
        _progress(f"round {round_no}: {key} ...")
        r = await run_bare(key, round_no, n=setup.n, parallel=parallel, workdir=setup.workdir,
                           containers_conf=setup.containers_conf, image=image)
        res.setdefault(key, []).append(r)
        _progress(f"round {round_no}: {key}: {_describe(r)}")

    async def pilot(sc: S.Scenario, setup: Setup = setup) -> None:
        _progress(f"round {round_no}: {sc.key} ...")
        r = await run_pilot(sc, setup, round_no)
        for attempt in range(1, HARNESS_RETRIES + 1):
            if not r.harness_error:
                break
            _progress(f"round {round_no}: {sc.key}: {_describe(r)}; running it again")
            await asyncio.sleep(5)  # give a struggling broker a moment
            r = await run_pilot(sc, setup, round_no)
            r.retried = attempt
        res.setdefault(sc.key, []).append(r)
        _progress(f"round {round_no}: {sc.key}: {_describe(r)}")
        if not keep:
            cleanup_run_dir(r)

    # the bare baseline sits between ours and the reference, so both are as close to it in time
    async def group(baseline: tuple[str, int], *scs: S.Scenario) -> None:
        order = alternate(*scs)
        for i, sc in enumerate(order):
            await pilot(sc)
            if i == 0:
                await bare(*baseline, setup.image)
        if not order:
            await bare(*baseline, setup.image)

    await group((S.BARE_SEQ, 1), S.OURS_C1, S.REF_C1)
    await group((S.BARE_PAR4, 4), S.OURS_C4, S.REF_C4, S.REF_C4_P4)
    warm_setup = dc.replace(setup, n=warm_events or setup.n)
    if with_warm:
        await pilot(S.OURS_WARM_C4, warm_setup)
    await bare(S.BARE_PROC_PAR4, 4, None)
    await pilot(S.OURS_PROC_RMQ)
    await pilot(S.OURS_PROC_LOCAL)
    if with_warm:
        await pilot(S.OURS_WARM_PROC_LOCAL, warm_setup)
        await pilot(S.WARM_LOOP, warm_setup)  # its floor, right after it
        await pilot(S.OURS_WARM_PROC_RMQ, warm_setup)
        await pilot(S.MQ_LOOP, warm_setup)  # its bound, right after it


async def _scaling(counts: tuple[int, ...], setup: Setup, res: Results, *, keep: bool) -> None:
    """The scaling row once per N: the pilot's cost per event must not grow with N."""
    for n in counts:
        key = scaling_key(n)
        _progress(f"scaling: {S.SCALING_ROW.key} with N={n} ...")
        r = await run_pilot(S.SCALING_ROW, dc.replace(setup, n=n), 0)
        res.setdefault(key, []).append(r)
        _progress(f"scaling: N={n}: {_describe(r)}")
        if not keep:
            cleanup_run_dir(r)


def _chart(res: Results, results_dir: Path, stem: str, title: str) -> list[str]:
    """The PNG next to the Markdown (matplotlib), else the bars as text for the report."""
    rows = plot_rows(res)
    png = results_dir / f"{stem}.png"
    if write_png(rows, png, title):
        _progress(f"plot written to {png}")
        return []
    _progress("matplotlib is not installed: the plot goes into the report as text")
    return text_chart(rows)


def _render_only(args: argparse.Namespace) -> int:
    """Rebuild the Markdown from a saved JSON (after a change to the report, without re-measuring)."""
    stem = _stem(args)
    saved = json.loads((args.results_dir / f"{stem}.json").read_text())
    res: Results = {
        key: [BareResult(**r) if key.startswith("bare-") else RunResult(**r) for r in runs]
        for key, runs in saved["runs"].items()
    }
    notes = _local_queue_note(res)
    if not any(sc.key in res for sc in S.WARM_ROWS):
        notes.update({sc.key: WARM_NOTE for sc in (*S.WARM_ROWS, *S.LOOPS)})
    timeout = float(saved["params"]["incoming timeout T"].split()[0])
    chart = _chart(res, args.results_dir, stem, f"ewms-pilot benchmark, {saved['facts'].get('date', '')}")
    text, tg = render(res, facts=saved["facts"], params=saved["params"], notes=notes,
                      with_reference=any(k.startswith("ref-") for k in res), incoming_timeout=timeout,
                      chart=chart)
    print(text)
    (args.results_dir / f"{stem}.md").write_text(text + "\n")
    (args.results_dir / f"{stem}.json").write_text(
        json.dumps(to_json(res, tg, saved["facts"], saved["params"], notes), indent=1) + "\n"
    )
    return 0


def _local_queue_note(res: Results) -> dict[str, str]:
    """A local-queue row whose every run failed says why, instead of showing blanks."""
    runs = res.get(S.OURS_PROC_LOCAL.key, [])
    if runs and not any(r.ok for r in runs):
        first = (runs[0].error.strip().splitlines() or ["?"])[0]
        return {S.OURS_PROC_LOCAL.key: f"local queue not working yet: {first}"}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render_only:
        return _render_only(args)
    if args.private_rabbitmq:
        _progress("starting a private RabbitMQ node ...")
        try:
            with private_rabbit() as address:
                mq.use_rabbitmq(address)
                return _main(args, broker_note=f"private node at {address} (same install as the shared broker)")
        except RuntimeError as e:
            print(f"benchmarks: cannot run: {e}", file=sys.stderr)
            return 2
    mq.use_rabbitmq(args.rabbitmq)
    return _main(args, broker_note=f"shared broker at {args.rabbitmq}")


def _main(args: argparse.Namespace, *, broker_note: str) -> int:
    rounds = args.rounds or (1 if args.smoke else 3)
    n = args.events or (5 if args.smoke else 100)
    timeout = args.incoming_timeout or (2 if args.smoke else 5)
    with_reference = args.with_reference or not args.smoke
    conf = _containers_conf()
    if problem := _preflight(args.image, conf):
        print(f"benchmarks: cannot run: {problem}", file=sys.stderr)
        return 2

    ref_python: str | None = None
    if with_reference:
        _progress("ensuring the reference venv (ewms-pilot 1.0.5) ...")
        try:
            ref_python = str(ensure_reference())
        except ReferenceInstallError as e:
            print(f"benchmarks: cannot install the reference: {e}", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="ewms-bench-", dir="/tmp"))
    shim_dir = write_docker_shim(workdir / "bin", shutil.which("podman") or "podman", conf).parent
    setup = Setup(n=n, incoming_timeout=timeout, image=args.image, containers_conf=conf,
                  ours_python=sys.executable, ref_python=ref_python, shim_dir=shim_dir, workdir=workdir)
    facts = machine_facts(ref_python)
    facts["RabbitMQ"] += f", {broker_note}"
    params = {
        "mode": "smoke" if args.smoke else "full",
        "events per run (N)": str(n) + (f" (warm rows and the oms-mqclient loop: {args.warm_events})"
                                         if args.with_warm and args.warm_events else ""),
        "rounds": f"{rounds} (ours and 1.0.5 alternate; the order flips every round)",
        "incoming timeout T": f"{timeout} s",
        "image": args.image,
        "task": f"`python3 -c \"{S.DOUBLE}\" INFILE OUTFILE` (process rows: `{' '.join(S.HOST_PYTHON)} -c ...`)",
    }
    res: Results = {}
    started = time.monotonic()
    try:
        for r in range(rounds):
            asyncio.run(_round(r, setup, res, with_reference=with_reference, with_warm=args.with_warm,
                               keep=args.keep_workdir, warm_events=args.warm_events))
        if args.scaling:
            params["scaling"] = f"{S.SCALING_ROW.key}, N = {', '.join(map(str, args.scaling))}, one run each"
            asyncio.run(_scaling(args.scaling, setup, res, keep=args.keep_workdir))
    finally:
        if not args.keep_workdir and not any(not x.ok for runs in res.values() for x in runs):
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load average at end (1/5/15 min)"] = load_average()
    params["benchmark duration"] = f"{time.monotonic() - started:.0f} s"
    notes = _local_queue_note(res)
    if not args.with_warm:
        notes.update({sc.key: WARM_NOTE for sc in (*S.WARM_ROWS, *S.LOOPS)})
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(args)
    chart = _chart(res, args.results_dir, stem, f"ewms-pilot benchmark, {facts.get('date', '')}")
    text, tg = render(res, facts=facts, params=params, notes=notes, with_reference=with_reference,
                      incoming_timeout=timeout, chart=chart)
    print(text)
    print("\n".join(f"{t.verdict}: {t.name} — {t.detail}" for t in tg))
    (args.results_dir / f"{stem}.md").write_text(text + "\n")
    (args.results_dir / f"{stem}.json").write_text(json.dumps(to_json(res, tg, facts, params, notes), indent=1) + "\n")
    failed = [x for runs in res.values() for x in runs if not x.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
