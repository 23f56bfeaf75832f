"""A warm worker's output as lines: one rule for its stdout (the hub's thread) and its stderr (the loop)."""

from __future__ import annotations

import logging
from collections.abc import Callable

LOGGER = logging.getLogger("ewms_pilot.warm")

#: longest output line handled whole; longer ones are cut (and are never answers)
MAX_LINE = 1024 * 1024


def split_lines(data: bytes, *, final: bool = False) -> tuple[list[bytes], bytes]:
    """(complete lines without newline and trailing CR, over-long ones in `MAX_LINE` pieces; the rest to keep).

    `final` (EOF): the rest is a line too.
    """
    pieces, rest = split_pieces(data, final=final)
    return [piece for piece, _ in pieces], rest


def split_pieces(data: bytes, *, final: bool = False) -> tuple[list[tuple[bytes, bool]], bytes]:
    """`split_lines`, each piece with whether it ends its line (a `MAX_LINE` cut does not: more follows)."""
    *complete, rest = data.split(b"\n")
    pieces = [(line.rstrip(b"\r"), True) for line in complete]
    while len(rest) > MAX_LINE:
        pieces.append((rest[:MAX_LINE], False))
        rest = rest[MAX_LINE:]
    if final and rest:
        pieces.append((rest.rstrip(b"\r"), True))
        rest = b""
    return pieces, rest


def hand_on(handle: Callable[[bytes], None], line: bytes) -> None:
    """`handle(line)`; a bug there is logged, never stops the reader (the worker would block on a full pipe)."""
    try:
        handle(line)
    except Exception:
        LOGGER.exception("handling a warm worker's output line failed")
