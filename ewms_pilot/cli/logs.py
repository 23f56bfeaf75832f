"""Logging set-up for the command line: first-party and third-party levels apart, secrets masked."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType

from ..config.redact import scrub

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class OneLine(logging.Filter):
    """Turn a client library's traceback into one line (nats-py logs one per reconnect attempt)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


class ScrubSecrets(logging.Filter):
    """Mask secrets in a record's final text: message, traceback and stack, any logger's.

    Sits on the handlers (not on loggers) so third-party records pass it too:
    oms-mqclient logs the broker address, password included, at INFO.
    """

    _plain = logging.Formatter()  # only for rendering a traceback the way handlers do

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: show the template, never the arguments
            message = f"{record.msg} (log arguments did not fit the message)"
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_scrubber() -> None:
    """Put `ScrubSecrets` on every root handler and on logging's last-resort handler (once each)."""
    handlers = [*logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, ScrubSecrets) for f in handler.filters):
            handler.addFilter(ScrubSecrets())


def _print_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str = ""
) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(scrub(where + text))
    sys.stderr.flush()


def _print_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:  # what the default hook ignores
        return
    name = args.thread.name if args.thread is not None else "?"
    _print_uncaught(args.exc_type, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")


def scrub_uncaught() -> None:
    """The interpreter's own traceback print-outs (main thread, other threads) are scrubbed too.

    Only the command line installs this: a library must not take over its caller's hooks.
    """
    sys.excepthook = _print_uncaught
    threading.excepthook = _print_uncaught_in_thread


def one_line(text: str) -> str:
    """`text` as one line: every character that ends a line or does not print is written as its escape.

    A value quoted in a message (a path, an address) may hold any of them, and `\x1e` or `\u2028`
    breaks a line for `str.splitlines` and for the tools that read the log as well as `\n` does.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def say(text: str) -> None:
    """One line for the operator on stderr (outside logging), secrets masked."""
    print(scrub(one_line(text)), file=sys.stderr)


# libraries whose expected failures (a broker restarting) come with a full traceback
QUIETED = ("nats.aio.client", "mqclient", "pika")


def configure_logging(level: str, third_party_level: str) -> None:
    """Root at the third-party level; `ewms_pilot` loggers at the first-party level."""
    logging.basicConfig(stream=sys.stderr, format=FORMAT, level=third_party_level.upper(), force=True)
    logging.getLogger("ewms_pilot").setLevel(level.upper())
    install_scrubber()
    if third_party_level.upper() != "DEBUG":
        for name in QUIETED:
            logging.getLogger(name).addFilter(OneLine())

