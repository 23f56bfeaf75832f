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

#: which bare baseline a pilot scenario is compared with
BARE_FOR = {
    S.OURS_C1.key: S.BARE_SEQ,
    S.REF_C1.key: S.BARE_SEQ,
    S.OURS_C4.key: S.BARE_PAR4,
    S.REF_C4.key: S.BARE_PAR4,
    S.REF_C4_P4.key: S.BARE_PAR4,
    S.OURS_WARM_C4.key: S.BARE_PAR4,
    S.OURS_PROC_RMQ.key: S.BARE_PROC_PAR4,
    S.OURS_PROC_LOCAL.key: S.BARE_PROC_PAR4,
    S.OURS_WARM_PROC_LOCAL.key: S.BARE_PROC_PAR4,
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
)


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
        per = summarize(r.per_task_s * 1000 if r.per_task_s else None for r in runs)
        tp = summarize(r.throughput for r in runs)
        per_ms = summarize(r.period_s * 1000 if r.ok and r.period_s else None for r in runs)
        lines.append(
            f"| {label} | {_status(res, key)} | {_cell(wall, 2)} | {_cell(per, 1)} | {_cell(tp, 2)} | {_cell(per_ms, 1)} |"
        )
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
    rows = [*S.OURS_ROWS, *S.WARM_ROWS]
    lines += _ours_only_table(res, rows, notes)
    lines += ["## Bare baselines (same rounds)", ""]
    lines += _bare_table(res)
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
