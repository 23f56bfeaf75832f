"""Facts about the machine a benchmark ran on, for the report header."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys

from . import mq


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    out = (res.stdout or res.stderr).strip().splitlines()
    return out[0] if out else f"unknown (exit {res.returncode})"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine_facts(ref_python: str | None) -> dict[str, str]:
    try:
        rabbit = mq.rabbitmq_version()
    except Exception as e:  # the preflight already failed on an unreachable broker
        rabbit = f"unknown ({type(e).__name__})"
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": f"{os.cpu_count()} (shared: other engineers run test suites on this machine at the same time)",
        "kernel": platform.platform(),
        "python (ours)": platform.python_version() + f" ({sys.executable})",
        "python (1.0.5)": _first_line([ref_python, "--version"]) if ref_python else "not run",
        "RabbitMQ": rabbit,
        "podman": _first_line(["podman", "--version"]) + " (runtime runc, cgroupfs)",
        "load average at start (1/5/15 min)": load_average(),
    }
    return facts
