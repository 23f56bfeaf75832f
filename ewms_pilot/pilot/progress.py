"""A status line for the person at the terminal: in place on a TTY, a periodic log line otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from .state import Tally

LOGGER = logging.getLogger("ewms_pilot.progress")


def status_line(tally: Tally) -> str:
    """received / running / done / failed and the completion rate (all from the outcomes' tally)."""
    elapsed = max(time.monotonic() - tally.started_at, 1e-9)
    rate = tally.done / elapsed
    return (
        f"received {tally.received} | running {tally.running} | done {tally.succeeded} | "
        f"failed {tally.failed} | {rate:.2f} tasks/s"
    )


class Progress:
    """Refreshes the status line every `interval` seconds until cancelled."""

    def __init__(self, tally: Tally, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.tally = tally
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 30.0)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.show()
        finally:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def show(self) -> None:
        line = status_line(self.tally)
        if self.tty:
            self.stream.write(f"\r\033[K{line}")
            self.stream.flush()
        else:
            LOGGER.info(line)
