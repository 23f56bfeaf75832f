"""The report at a glance: steady events/s of every row, ours vs 1.0.5 vs bare.

A PNG when matplotlib is installed (it is not a dependency of the project or
the harness), else the same bars as text, for the terminal and the Markdown.
The scale is logarithmic: the rows span 1 to 1000+ events/s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import scenarios as S
from .stats import summarize

Row = tuple[str, float, str]  # (key, median steady events/s, group: ours | 1.0.5 | bare)

BARE_KEYS = (S.BARE_SEQ, S.BARE_PAR4, S.BARE_PROC_PAR4, *(sc.key for sc in S.LOOPS))
COLOURS = {"ours": "#1f77b4", "1.0.5": "#ff7f0e", "bare": "#7f7f7f"}


def _steady(run: Any) -> float | None:
    return 1 / run.period_s if run.ok and run.period_s else None


def plot_rows(res: dict[str, list[Any]]) -> list[Row]:
    """Rows with a measured steady rate, in report order: ours, 1.0.5, bare bounds."""
    order = [
        *((sc.key, "ours") for sc in (*S.OURS_ROWS, *S.WARM_ROWS)),
        *((sc.key, "1.0.5") for sc in S.REF_ROWS),
        *((key, "bare") for key in BARE_KEYS),
    ]
    rows = []
    for key, group in order:
        summary = summarize(_steady(r) for r in res.get(key, []))
        if summary is not None:
            rows.append((key, summary.median, group))
    return rows


def text_chart(rows: list[Row], width: int = 40) -> list[str]:
    """One bar per row, log-scaled between 1 and the largest rate."""
    if not rows:
        return []
    top = max(math.log10(max(rate, 1.0)) for _, rate, _ in rows) or 1.0
    name_width = max(len(key) for key, _, _ in rows)
    marks = {"ours": "#", "1.0.5": "=", "bare": "."}
    lines = [f"{'row':<{name_width}}  steady events/s (log scale; # ours, = 1.0.5, . bare)"]
    for key, rate, group in rows:
        bar = marks[group] * max(1, round(width * math.log10(max(rate, 1.0)) / top))
        lines.append(f"{key:<{name_width}}  {bar:<{width}} {rate:8.1f}")
    return lines


def write_png(rows: list[Row], path: Path, title: str) -> bool:
    """The bar chart as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
    keys = [key for key, _, _ in rows][::-1]
    rates = [rate for _, rate, _ in rows][::-1]
    colours = [COLOURS[group] for _, _, group in rows][::-1]
    bars = ax.barh(keys, rates, color=colours)
    ax.set_xscale("log")
    ax.set_xlabel("steady rate, first → last output (events/s, log scale)")
    ax.set_title(title, fontsize=10)
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(bar.get_width() * 1.05, bar.get_y() + bar.get_height() / 2, f"{rate:.1f}", va="center", fontsize=8)
    ax.set_xlim(right=max(rates) * 3)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
