"""JSON (and Python-literal) text from users, decoded with limits.

The standard decoders recurse once per nesting level (`[` x 20000 is a
RecursionError) and refuse integers over 4300 digits with a ValueError that is
not a JSONDecodeError; these helpers turn every such input into one
`ValueError` saying what was wrong, before any decoder runs.
"""

from __future__ import annotations

import ast
import json

MAX_DEPTH = 100  # nesting levels of arrays/objects (lists/dicts) accepted
MAX_TEXT = 1024 * 1024  # characters of one value decoded as a Python literal


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside string literals (JSON or Python quotes)."""
    depth = deepest = 0
    quote = ""
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]})":
            depth -= 1
    return deepest


def _check_depth(text: str) -> None:
    if nesting_depth(text) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")


def loads(text: str) -> object:
    """`json.loads` that raises only `ValueError`, with a short reason."""
    _check_depth(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at char {e.pos}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"invalid JSON: {e}") from None


def literal(text: str) -> object:
    """A Python literal (as `str(list)` writes it) via `ast.literal_eval`, never `eval`."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    _check_depth(text)
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"not a Python literal ({type(e).__name__})") from None
