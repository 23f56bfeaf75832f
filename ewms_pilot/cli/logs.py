"""Logging set-up for the command line: first-party and third-party levels apart."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str, third_party_level: str) -> None:
    """Root at the third-party level; `ewms_pilot` loggers at the first-party level."""
    logging.basicConfig(stream=sys.stderr, format=FORMAT, level=third_party_level.upper(), force=True)
    logging.getLogger("ewms_pilot").setLevel(level.upper())
