"""`ewms-pilot` / `python -m ewms_pilot`: run a pilot, move events, show the configuration.

Signal handlers are installed by `pilot.runner.run_with_signals` (shared with the Python API).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..config.loader import load_config
from ..config.model import PilotConfig
from ..errors import ConfigError
from ..exitcodes import ExitCode
from ..pilot.progress import Progress
from ..pilot.runner import run_with_signals
from ..pilot.scheduler import Pilot
from ..pilot.shutdown import StopCause
from .logs import configure_logging, install_scrubber, say, scrub_uncaught
from .options import OneLineParser, progress_interval

LOGGER = logging.getLogger("ewms_pilot")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="ewms-pilot",
        description="Event-driven task pilot: consumes events, runs a task per event, publishes results. "
        "Configured with EWMS_PILOT_* environment variables (see `ewms-pilot config --list`).",
    )
    p.add_argument("--version", action="version", version=f"ewms-pilot {__version__}")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the pilot (the default)")
    run.add_argument("--no-progress", action="store_true", help="no status line")
    run.add_argument(
        "--progress-interval", type=progress_interval, default=None, metavar="S",
        help="seconds between status lines, at least 0.1 (default: 0.5 on a terminal, 30 otherwise)",
    )
    cfg = sub.add_parser("config", help="show the configuration variables or check the environment")
    group = cfg.add_mutually_exclusive_group(required=True)
    group.add_argument("--list", action="store_true", help="print every EWMS_PILOT_* variable (Markdown table)")
    group.add_argument("--check", action="store_true", help="validate the environment and print the effective config")
    from .queue_cmd import add_queue_parser

    add_queue_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # usage error (one line, exit 2), --help, --version
        return e.code if isinstance(e.code, int) else int(ExitCode.CONFIG)
    install_scrubber()  # warnings while the config loads go to logging's last-resort handler
    scrub_uncaught()
    command = args.command or "run"
    if command == "queue":
        from .queue_cmd import run_queue_command

        return run_queue_command(args)
    if command == "config":
        return _config_command(args)
    try:
        cfg = load_config(os.environ)
    except ConfigError as e:
        say(f"ewms-pilot: configuration error: {e}")
        return int(ExitCode.CONFIG)
    configure_logging(cfg.log_level, cfg.log_level_third_party)
    progress = not getattr(args, "no_progress", False)
    interval = getattr(args, "progress_interval", None)
    _fast_child_watcher()
    return int(asyncio.run(run_pilot(cfg, progress=progress, progress_interval=interval)))


def _fast_child_watcher() -> None:
    """Python 3.11 waits for each task process with a thread of its own; a pidfd costs none.

    (3.12+ picks the pidfd watcher by itself and deprecates setting one.)
    """
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        try:
            watcher = asyncio.PidfdChildWatcher()
            asyncio.set_child_watcher(watcher)
        except OSError:  # kernel without pidfd_open (< 5.3): keep the default
            pass


def _config_command(args: argparse.Namespace) -> int:
    if args.list:
        from ..config.table import env_var_table_markdown

        try:
            print(env_var_table_markdown())
        except BrokenPipeError:  # `ewms-pilot config --list | head`
            sys.stderr.close()
        return 0
    try:
        cfg = load_config(os.environ)
    except ConfigError as e:
        say(f"ewms-pilot: configuration error: {e}")
        return int(ExitCode.CONFIG)
    from ..config.banner import effective_config_lines, resources_line
    from ..config.redact import scrub

    print(scrub("\n".join([*effective_config_lines(cfg), "# " + resources_line(cfg)])))
    return 0


async def run_pilot(
    cfg: PilotConfig, *, progress: bool = True, progress_interval: float | None = None
) -> ExitCode:
    """Run one pilot with eviction signals wired to a graceful stop (`run_with_signals`)."""
    pilot = Pilot(cfg)
    ticker = (
        asyncio.ensure_future(Progress(pilot.tally, interval=progress_interval).run())
        if progress
        else None
    )
    try:
        request = await run_with_signals(pilot)
    finally:
        if ticker:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
    if request.cause != StopCause.QUEUE_EMPTY:
        say(f"ewms-pilot: {request.reason}")
    return request.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
