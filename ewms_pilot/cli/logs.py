"""Logging set-up for the command line: first-party and third-party levels apart."""

from __future__ import annotations

import logging
import sys

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


# libraries whose expected failures (a broker restarting) come with a full traceback
QUIETED = ("nats.aio.client", "mqclient", "pika")


def configure_logging(level: str, third_party_level: str) -> None:
    """Root at the third-party level; `ewms_pilot` loggers at the first-party level."""
    logging.basicConfig(stream=sys.stderr, format=FORMAT, level=third_party_level.upper(), force=True)
    logging.getLogger("ewms_pilot").setLevel(level.upper())
    if third_party_level.upper() != "DEBUG":
        for name in QUIETED:
            logging.getLogger(name).addFilter(OneLine())
