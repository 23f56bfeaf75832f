"""Command-line option types and the parser class: every mistake is one line, exit 2.

argparse prints its usage block before an error; a pilot's log (and a site's
wrapper reading stderr) gets one line naming the option and what was expected.
The bounds are those of the matching `EWMS_PILOT_*` settings (`config.types`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from ..config.redact import scrub
from ..config.types import ENV_NAME
from ..exitcodes import ExitCode
from ..resources.slot import MAX_SECONDS
from .logs import one_line

MIN_PROGRESS_INTERVAL = 0.1  # s: a status line more often than this floods the log
MAX_EVENTS = 10**9


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        # scrubbed: a value may be an address given to the wrong option
        self.exit(int(ExitCode.CONFIG), scrub(one_line(f"{self.prog}: error: {message} (see --help)")) + "\n")


def _number(text: str) -> float:
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    return value


def seconds_between(low: float, *, low_ok: bool) -> Callable[[str], float]:
    """An argparse `type`: seconds in [low, MAX_SECONDS] (or (low, ...] when not `low_ok`)."""
    bound = f"{'>=' if low_ok else '>'} {low:g} and <= {MAX_SECONDS} (a year)"

    def parse(text: str) -> float:
        value = _number(text.strip())
        ok = math.isfinite(value) and (value >= low if low_ok else value > low)
        if not ok or value > MAX_SECONDS:
            raise argparse.ArgumentTypeError(f"expected a number of seconds {bound}, got {text!r}")
        return value

    return parse


def positive_count(text: str) -> int:
    """An argparse `type`: an integer from 1 to `MAX_EVENTS`."""
    stripped = text.strip()
    try:
        value = int(stripped) if len(stripped) <= 12 else 0
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_EVENTS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_EVENTS}, got {text!r}")
    return value


def env_name(text: str) -> str:
    """An argparse `type`: the name of an environment variable."""
    if not ENV_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected an environment variable name (letters, digits, _), got {text!r}"
        )
    return text


progress_interval = seconds_between(MIN_PROGRESS_INTERVAL, low_ok=True)
queue_timeout = seconds_between(0, low_ok=True)
