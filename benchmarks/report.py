"""Turn the rounds' results into the Markdown report, the PASS/MISS targets and a JSON dump."""

from __future__ import annotations

import dataclasses as dc
from collections.abc import Callable, Sequence
from typing import Any

from . import scenarios as S
from .bare import BareResult
from .runs import RunResult
from .stats import Summary, ratio, summarize

Results = dict[str, list[Any]]  # scenario/baseline key -> RunResult | BareResult, one per round
Getter = Callable[[RunResult, Results], float | None]

#: which bare baseline a pilot scenario is compared with. The warm rows are not compared with the
#: bare runs (those start a process per event; a warm task is one long-lived process), but warm
#: RabbitMQ with the mqclient round-trip loop and warm local with the bare warm loop: the same work
#: without the pilot.
BARE_FOR = {
    S.OURS_C1.key: S.BARE_SEQ,
    S.REF_C1.key: S.BARE_SEQ,
    S.OURS_C4.key: S.BARE_PAR4,
    S.REF_C4.key: S.BARE_PAR4,
    S.REF_C4_P4.key: S.BARE_PAR4,
    S.OURS_PROC_RMQ.key: S.BARE_PROC_PAR4,
    S.OURS_PROC_LOCAL.key: S.BARE_PROC_PAR4,
    S.OURS_WARM_PROC_RMQ.key: S.MQ_LOOP.key,  # the RabbitMQ round-trip bound (a RunResult, same fields)
    S.OURS_WARM_PROC_LOCAL.key: S.WARM_LOOP.key,  # the same work on one thread (a RunResult too)
}
PAIRS = (
    (S.OURS_C1, S.REF_C1),
    (S.OURS_C4, S.REF_C4),
    (S.OURS_C4, S.REF_C4_P4),
)


def _bare_of(run: RunResult, res: Results) -> BareResult | None:
    key = BARE_FOR.get(run.scenario)
    for b in res.get(key or "", []):
        if b.round == run.round and b.ok:
            return b  # type: ignore[no-any-return]
    return None


def overhead_ms(run: RunResult, res: Results) -> float | None:
    """Steady-state time per event minus the bare runs' in the same round."""
    bare = _bare_of(run, res)
    if not run.ok or bare is None or run.period_s is None or bare.period_s is None:
        return None
    return (run.period_s - bare.period_s) * 1000


def of_bound(run: RunResult, res: Results) -> float | None:
    """Throughput as a fraction of the same round's bare throughput."""
    bare = _bare_of(run, res)
    if bare is None or run.throughput is None or bare.throughput is None:
        return None
    return run.throughput / bare.throughput


def _ok(getter: Callable[[RunResult], float | None]) -> Getter:
    return lambda r, _res: getter(r) if r.ok else None


FIGURES: tuple[tuple[str, Getter, int], ...] = (
    ("wall time to last output (s)", _ok(lambda r: r.wall_s), 2),
    ("throughput, start → last output (events/s)", _ok(lambda r: r.throughput), 2),
    ("steady rate, first → last output (events/s)", _ok(lambda r: r.steady_rate), 1),
    ("per-task overhead over bare (ms)", overhead_ms, 1),
    ("throughput / bare bound", of_bound, 2),
    ("first output after start (s)", _ok(lambda r: r.first_s), 2),
    ("exit after last output (s)", _ok(lambda r: r.exit_after_last_s), 2),
    ("pilot peak RSS, VmHWM (MiB)", _ok(lambda r: r.peak_rss_mib), 1),
    ("pilot CPU, utime+stime (s)", _ok(lambda r: r.cpu_s), 2),
    ("pilot CPU per event (ms)", _ok(lambda r: r.cpu_ms_per_event), 2),
)
TPUT, STEADY, RSS, CPU_PER_EVENT = FIGURES[1][1], FIGURES[2][1], FIGURES[7][1], FIGURES[9][1]
#: issue 15's limits
WARM_LOCAL_STEADY = 1500.0
WARM_RMQ_STEADY = 500.0
PROCESS_OF_BARE = 0.9
WARM_CPU_MS = 1.0
RSS_MIB = 40.0


def figure(res: Results, key: str, getter: Getter) -> Summary | None:
    return summarize(getter(r, res) for r in res.get(key, []))


def _status(res: Results, key: str) -> str:
    runs = res.get(key, [])
    if not runs:
        return "not run"
    ok = sum(1 for r in runs if r.ok)
    verified = sum(r.verified for r in runs)
    total = sum(r.n for r in runs)
    retried = sum(getattr(r, "retried", 0) for r in runs)
    again = f" ({retried} rerun after a harness broker error)" if retried else ""
    return f"{ok}/{len(runs)} runs ok, {verified}/{total} outputs verified{again}"


def _cell(s: Summary | None, digits: int) -> str:
    return s.fmt(digits) if s else "—"


# ------------------------------------------------------------------ targets


@dc.dataclass(frozen=True)
class Target:
    name: str
    verdict: str  # PASS | MISS | n/a
    detail: str


def _judge(name: str, value: float | None, limit: float, ok: Callable[[float, float], bool], detail: str) -> Target:
    if value is None:
        return Target(name, "n/a", "not measured (" + detail + ")")
    return Target(name, "PASS" if ok(value, limit) else "MISS", detail)


def targets(res: Results, incoming_timeout: float) -> list[Target]:
    """The issue's targets, judged on medians over the rounds."""
    tput = FIGURES[1][1]
    o4 = figure(res, S.OURS_C4.key, tput)
    r4 = figure(res, S.REF_C4.key, tput)
    r4p = figure(res, S.REF_C4_P4.key, tput)
    bound = figure(res, S.OURS_C4.key, of_bound)
    ovh = figure(res, S.OURS_C1.key, overhead_ms)
    out: list[Target] = []
    x = ratio(o4, r4)
    out.append(_judge("c4: ours-defaults ≥ 8× 1.0.5-defaults throughput", x, 8, lambda v, t: v >= t,
                      f"ratio {x:.2f}×" if x is not None else "needs both sides"))
    x = ratio(o4, r4p)
    out.append(_judge("c4: ours-defaults ≥ 1.0.5 with prefetch 4", x, 1, lambda v, t: v >= t,
                      f"ratio {x:.2f}×" if x is not None else "needs both sides"))
    b = bound.median if bound else None
    out.append(_judge("c4: ours within 10% of the 4-parallel bare podman bound", b, 0.9, lambda v, t: v >= t,
                      f"{b:.1%} of bound (median of per-round ratios)" if b is not None else "needs both"))
    v = ovh.median if ovh else None
    out.append(_judge("c1: per-task overhead over bare podman ≤ 5 ms", v, 5, lambda v, t: v <= t,
                      f"{v:.1f} ms (median)" if v is not None else "needs both"))
    exits = {sc.key: figure(res, sc.key, FIGURES[6][1]) for sc in S.OURS_ROWS}
    measured = {k: s for k, s in exits.items() if s}
    worst = max((s.median for s in measured.values()), default=None)
    limit = incoming_timeout + 0.5
    out.append(_judge(f"exit ≤ T + 0.5 s = {limit:g} s after last output (every ours row)", worst, limit,
                      lambda v, t: v <= t,
                      "worst median " + ", ".join(f"{k}: {s.median:.2f} s" for k, s in measured.items())))
    rss_ok: list[bool] = []
    rss_detail = []
    for ours, ref in PAIRS[:2]:
        a = figure(res, ours.key, FIGURES[7][1])
        c = figure(res, ref.key, FIGURES[7][1])
        if a and c:
            rss_ok.append(a.median <= c.median)
            rss_detail.append(f"{ours.key} {a.median:.1f} vs {ref.key} {c.median:.1f} MiB")
    out.append(Target("peak RSS ≤ 1.0.5's", ("PASS" if all(rss_ok) else "MISS") if rss_ok else "n/a",
                      "; ".join(rss_detail) or "not measured (needs both sides)"))
    local = figure(res, S.OURS_PROC_LOCAL.key, FIGURES[2][1])
    v = local.median if local else None
    e2e = figure(res, S.OURS_PROC_LOCAL.key, tput)
    out.append(_judge("process runtime + local queue ≥ 100 events/s at c4", v, 100, lambda v, t: v >= t,
                      (f"steady {v:.0f} events/s; start → last output {e2e.median:.0f} events/s"
                       if v is not None and e2e else "local queue row failed or not run")))
    return out + fast_path_targets(res)


def _median(res: Results, key: str, getter: Getter) -> float | None:
    summary = figure(res, key, getter)
    return summary.median if summary else None


def _bare_steady(run: RunResult, res: Results) -> float | None:
    """The pilot's steady rate over the same round's bare steady rate (start-up excluded on both sides)."""
    bare = _bare_of(run, res)
    if not run.ok or bare is None or not run.period_s or not bare.period_s:
        return None
    return bare.period_s / run.period_s


def fast_path_targets(res: Results) -> list[Target]:
    """Issue 15: the pilot's own cost where the task costs nothing (warm mode, process runtime)."""
    out: list[Target] = []
    for row, target, bound, named in (
        (S.OURS_WARM_PROC_LOCAL, WARM_LOCAL_STEADY, S.WARM_LOOP, "the same work on one thread (bare warm loop)"),
        (S.OURS_WARM_PROC_RMQ, WARM_RMQ_STEADY, S.MQ_LOOP, "the bare oms-mqclient loop's bound"),
    ):
        v = _median(res, row.key, STEADY)
        b = _median(res, bound.key, STEADY)
        share = f"; {named}: {b:.0f} events/s, ours = {v / b:.0%} of it" if v is not None and b else ""
        where = "local queue" if row.broker == "local" else "RabbitMQ"
        out.append(_judge(f"warm, {where}, c4: ≥ {target:g} events/s steady", v, target, lambda v, t: v >= t,
                          (f"{v:.0f} events/s" + share) if v is not None else "warm rows not run"))
    v = _median(res, S.OURS_PROC_LOCAL.key, _bare_steady)
    out.append(_judge(f"one-shot process runtime, local queue, c4: ≥ {PROCESS_OF_BARE:.0%} of bare host processes ×4",
                      v, PROCESS_OF_BARE, lambda v, t: v >= t,
                      f"{v:.0%} (steady rates, same round)" if v is not None else "needs both"))
    warm_cpu = {sc.key: _median(res, sc.key, CPU_PER_EVENT) for sc in S.WARM_ROWS}
    measured = {k: c for k, c in warm_cpu.items() if c is not None}
    plain = ", ".join(f"{k}: {c:.2f} ms" for k, c in measured.items())
    marginal = marginal_cpu_ms(res)
    if marginal:  # judged without the start-up: the cost of one more event, from the scaling runs
        (n0, n1), per_event = marginal[-1]
        out.append(_judge(f"pilot CPU per event ≤ {WARM_CPU_MS:g} ms in warm mode", per_event, WARM_CPU_MS,
                          lambda v, t: v <= t,
                          f"{per_event:.2f} ms per extra event ({S.SCALING_ROW.key}, N {n0} → {n1}); "
                          f"CPU / N with start-up (~0.3 s) included, N of the rounds: {plain or 'not run'}"))
    else:
        worst = max(measured.values(), default=None)
        out.append(_judge(f"pilot CPU per event ≤ {WARM_CPU_MS:g} ms in warm mode (every warm row)", worst,
                          WARM_CPU_MS, lambda v, t: v <= t, (plain or "not run") + " (start-up included)"))
    rss = {sc.key: _median(res, sc.key, RSS) for sc in (*S.OURS_ROWS, *S.WARM_ROWS)}
    rss_measured = {k: m for k, m in rss.items() if m is not None}
    worst = max(rss_measured.values(), default=None)
    top = max(rss_measured, key=lambda k: rss_measured[k]) if rss_measured else None
    out.append(_judge(f"pilot peak RSS ≤ {RSS_MIB:g} MiB (every ours row)", worst, RSS_MIB, lambda v, t: v <= t,
                      f"worst {top}: {worst:.1f} MiB" if worst is not None else "not measured"))
    return out


# ------------------------------------------------------------------ markdown


def _pair_table(res: Results, ours: S.Scenario, ref: S.Scenario) -> list[str]:
    lines = [
        f"### {ours.label} vs {ref.label}",
        "",
        f"ours: {_status(res, ours.key)}; 1.0.5: {_status(res, ref.key)}",
        "",
        "| figure | ours | 1.0.5 | ours / 1.0.5 |",
        "| --- | --- | --- | --- |",
    ]
    for name, getter, digits in FIGURES:
        a, b = figure(res, ours.key, getter), figure(res, ref.key, getter)
        x = ratio(a, b)
        lines.append(f"| {name} | {_cell(a, digits)} | {_cell(b, digits)} | {f'{x:.2f}' if x is not None else '—'} |")
    return [*lines, ""]


def _ours_only_table(res: Results, rows: Sequence[S.Scenario], notes: dict[str, str]) -> list[str]:
    picked = [f for f in FIGURES if f[0] != "throughput / bare bound"]
    head = "| scenario | status | " + " | ".join(n for n, _, _ in picked) + " |"
    lines = [head, "|" + " --- |" * (len(picked) + 2)]
    for sc in rows:
        if sc.key in notes:
            lines.append(f"| {sc.label} | {notes[sc.key]} |" + " — |" * len(picked))
            continue
        cells = [_cell(figure(res, sc.key, g), d) for _, g, d in picked]
        lines.append(f"| {sc.label} | {_status(res, sc.key)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _bare_table(res: Results) -> list[str]:
    lines = [
        "| baseline | status | wall for N (s) | per task, wall / N (ms) | throughput (events/s) | steady period (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        S.BARE_SEQ: "bare `podman run`, sequential",
        S.BARE_PAR4: "bare `podman run`, 4 in parallel",
        S.BARE_PROC_PAR4: "bare host process, 4 in parallel",
    }
    for key, label in names.items():
        runs = res.get(key, [])
        if not runs:
            continue
        wall = summarize(r.wall_s if r.ok else None for r in runs)
        per = summarize(1000 * r.wall_s / r.n if r.ok and r.wall_s else None for r in runs)
        tp = summarize(r.throughput for r in runs)
        per_ms = summarize(r.period_s * 1000 if r.ok and r.period_s else None for r in runs)
        lines.append(
            f"| {label} | {_status(res, key)} | {_cell(wall, 2)} | {_cell(per, 1)} | {_cell(tp, 2)} | {_cell(per_ms, 1)} |"
        )
    return [*lines, ""]


SCALING_PREFIX = "scaling-"


def _scaling_runs(res: Results) -> list[tuple[int, RunResult]]:
    """(N, its run) of the scaling table, by N, successful runs only."""
    out = []
    for key, runs in res.items():
        if key.startswith(SCALING_PREFIX):
            ok = [r for r in runs if r.ok and r.cpu_s is not None]
            if ok:
                out.append((int(key[len(SCALING_PREFIX):]), ok[0]))
    return sorted(out, key=lambda nr: nr[0])


def marginal_cpu_ms(res: Results) -> list[tuple[tuple[int, int], float]]:
    """((N before, N), ms of pilot CPU per extra event) between successive scaling runs: start-up cancels out."""
    runs = _scaling_runs(res)
    return [
        ((n0, n1), 1000 * (r1.cpu_s - r0.cpu_s) / (n1 - n0))  # type: ignore[operator]
        for (n0, r0), (n1, r1) in zip(runs, runs[1:], strict=False)
    ]


def scaling_key(n: int) -> str:
    return f"{SCALING_PREFIX}{n}"


def _scaling_table(res: Results) -> list[str]:
    """Cost per event against N: it must stay flat (nothing scans the journal, queue or task dirs per event)."""
    keys = sorted((k for k in res if k.startswith(SCALING_PREFIX)), key=lambda k: int(k[len(SCALING_PREFIX):]))
    if not keys:
        return []
    marginal = {n1: ms for (_, n1), ms in marginal_cpu_ms(res)}
    lines = [
        f"## Scaling: {S.SCALING_ROW.label}", "",
        "Flat is the goal: nothing in the pilot may scan the journal, the queue file or the task dirs per event.",
        "CPU / N includes the start-up (imports, connections: ~0.3 s); the marginal column does not.", "",
        "| events N | status | steady rate (events/s) | throughput, start → last output (events/s) "
        "| pilot CPU / N (ms) | pilot CPU per extra event since the previous N (ms) | pilot peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in keys:
        n = int(key[len(SCALING_PREFIX):])
        cells = [_cell(figure(res, key, g), d) for g, d in ((STEADY, 0), (TPUT, 0), (CPU_PER_EVENT, 2))]
        cells.append(f"{marginal[n]:.2f}" if n in marginal else "—")
        cells.append(_cell(figure(res, key, RSS), 1))
        lines.append(f"| {n} | {_status(res, key)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _failures(res: Results) -> list[str]:
    lines: list[str] = []
    for key, runs in res.items():
        for r in runs:
            if not r.ok:
                first = r.error.strip().splitlines()[0] if r.error.strip() else "failed"
                where = f" (logs: {r.log_dir})" if getattr(r, "log_dir", "") else ""
                lines.append(f"- round {r.round}, {key}: {first}{where}")
    return ["## Failed runs", "", *lines, ""] if lines else []


def render(
    res: Results,
    *,
    facts: dict[str, str],
    params: dict[str, str],
    notes: dict[str, str],
    with_reference: bool,
    incoming_timeout: float,
    chart: list[str] | None = None,
) -> tuple[str, list[Target]]:
    """The whole report (Markdown) and the judged targets."""
    tg = targets(res, incoming_timeout)
    lines = ["# ewms-pilot: ours vs ewms-pilot 1.0.5", ""]
    lines += ["## Machine and parameters", ""]
    lines += [f"- **{k}**: {v}" for k, v in {**facts, **params}.items()]
    lines += ["", "Cells: median (min–max) over the successful rounds. Ratios: median ours / median 1.0.5"
              " (times and memory: lower is better; throughput: higher is better).", ""]
    lines += ["## Targets", "", "| target | verdict | detail |", "| --- | --- | --- |"]
    lines += [f"| {t.name} | **{t.verdict}** | {t.detail} |" for t in tg]
    lines.append("")
    if with_reference:
        lines += ["## Side by side (podman, RabbitMQ)", ""]
        for ours, ref in PAIRS:
            lines += _pair_table(res, ours, ref)
    else:
        lines += ["## Side by side", "", "Reference not run (smoke mode without `--with-reference`).", ""]
    lines += ["## Ours alone", ""]
    rows = [*S.OURS_ROWS, *S.WARM_ROWS, *S.LOOPS]
    lines += _ours_only_table(res, rows, notes)
    lines += ["## Bare baselines (same rounds)", ""]
    lines += _bare_table(res)
    lines += _scaling_table(res)
    if chart:
        lines += ["## Steady rate per row", "", "```", *chart, "```", ""]
    lines += _failures(res)
    return "\n".join(lines), tg


def to_json(res: Results, tg: list[Target], facts: dict[str, str], params: dict[str, str],
            notes: dict[str, str]) -> dict[str, Any]:
    return {
        "facts": facts,
        "params": params,
        "notes": notes,
        "targets": [dc.asdict(t) for t in tg],
        "runs": {k: [dc.asdict(r) for r in v] for k, v in res.items()},
    }
