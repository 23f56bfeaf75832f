"""Run a pilot with eviction signals wired to its shutdown controller (CLI and Python API alike).

SIGTERM, SIGINT and SIGHUP all mean "evicted": stop taking events, give
running tasks `EWMS_PILOT_SHUTDOWN_GRACE` seconds, run the teardown, exit. A
second signal moves the deadline to now. (SIGHUP is what a closing terminal
or some batch systems send; dying at once on it would skip drain and teardown.)
"""

from __future__ import annotations

import asyncio
import signal

from .scheduler import Pilot
from .shutdown import StopCause, StopRequest

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def run_with_signals(pilot: Pilot) -> StopRequest:
    """Run `pilot` to its end with the stop signals handled; the handlers are removed afterwards."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        request = StopRequest(StopCause.SIGNAL, f"received {sig.name}", grace=pilot.cfg.shutdown_grace)
        try:
            loop.add_signal_handler(sig, pilot.request_stop, request)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append(sig)
    try:
        return await pilot.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
