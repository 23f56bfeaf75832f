"""Turn reported values into Chirp requests HTCondor accepts: ClassAd literals, size-capped.

Pure functions, kept apart from the I/O because the size limits are where 1.x
broke: one traceback longer than a Chirp request line was rejected on every
retry and blocked every later update. Here an oversized value is cut in the
middle (the start and the end of a traceback are the useful parts) with a
`…[truncated N bytes]…` marker, so the request always fits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from htchirp.htchirp import quote as _chirp_escape  # the escaping the client applies on the wire

# A request line, "\n" included, may not exceed this (htchirp's and the starter's CHIRP_LINE_MAX).
CHIRP_LINE_MAX = 5120
# The starter stores a `ulog` message in a GenericEvent whose info text keeps 1023 bytes
# (128 in old releases); stay below it so the job event log holds the whole line.
ULOG_TEXT_MAX = 1000

_MARKER = "…[truncated {} bytes]…"

_SIMPLE_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
    "\a": "\\a",
}


def fallback_classad_quote(text: str) -> str:
    """ClassAd string literal without the HTCondor bindings (same output as `classad2.quote`).

    Printable ASCII stays as is; every other byte of the UTF-8 text becomes an octal escape.
    """
    out = ['"']
    for ch in text:
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass"))
    out.append('"')
    return "".join(out)


@functools.cache
def _library_quote() -> Callable[[str], str] | None:
    """HTCondor's own quoting, from whichever bindings are installed (looked up once).

    htcondor 25 ships only the version-2 module `classad2`; 24 has it too, next to
    the version-1 `classad` / `htcondor.classad`, which 25 no longer provides.
    """
    try:
        import classad2  # type: ignore[import-untyped]

        return classad2.quote  # type: ignore[no-any-return]
    except Exception:  # missing, or its shared library fails to load
        pass
    try:
        import classad

        return classad.quote  # type: ignore[no-any-return]
    except Exception:
        pass
    try:
        from htcondor import classad as htcondor_classad

        return htcondor_classad.quote  # type: ignore[no-any-return]
    except Exception:
        return None


def classad_quote(text: str) -> str:
    """`text` as a ClassAd string literal, e.g. `a "b"` -> `"a \\"b\\""`."""
    text = text.replace("\x00", "\\0")  # the bindings reject NUL; show it instead of failing
    quote = _library_quote()
    if quote is not None:
        try:
            return str(quote(text))
        except Exception:  # e.g. text the C++ side refuses: our own quoting still works
            pass
    return fallback_classad_quote(text)


def classad_literal(value: str | int) -> str:
    """A ClassAd literal: ints as numbers (usable in constraints), everything else a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return classad_quote(str(value))


def set_job_attr_request(name: str, expr: str) -> bytes:
    """The exact request `htchirp.HTChirp.set_job_attr` sends."""
    return f"set_job_attr {_chirp_escape(name)} {_chirp_escape(expr)}\n".encode()


def truncate_to_fit(text: str, fits: Callable[[str], bool]) -> str:
    """`text` if `fits(text)`, else its start and end around a marker naming the dropped bytes.

    Keeps a quarter of what fits from the start and the rest from the end; the largest
    such cut is found by bisection because escaping makes sizes non-linear in the text.
    """
    if fits(text):
        return text
    total = len(text.encode("utf-8", "surrogatepass"))

    def cut(kept: int) -> str:
        head = text[: kept // 4]
        tail = text[len(text) - (kept - len(head)) :]
        dropped = (
            total
            - len(head.encode("utf-8", "surrogatepass"))
            - len(tail.encode("utf-8", "surrogatepass"))
        )
        return f"{head}{_MARKER.format(dropped)}{tail}"

    lo, hi = 0, len(text) - 1  # fits(cut(lo)) is assumed; hi+1 chars is known not to fit
    best = cut(0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = cut(mid)
        if fits(candidate):
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return best


def job_attr_expr(name: str, value: str | int) -> str:
    """The ClassAd expression for `set_job_attr name <expr>`, truncated to fit one request."""
    expr = classad_literal(value)
    if len(set_job_attr_request(name, expr)) <= CHIRP_LINE_MAX:
        return expr
    text = truncate_to_fit(
        str(value),
        lambda t: len(set_job_attr_request(name, classad_quote(t))) <= CHIRP_LINE_MAX,
    )
    return classad_quote(text)


def ulog_text(name: str, value: str | int) -> str:
    """The job-event-log line `<name>: "<text>"`, truncated so the starter keeps all of it.

    Every value is a ClassAd *string* here, numbers too: the EWMS TMS reads each
    line as `Attr: value` and passes the value to `classad.unquote`, which only
    takes string literals (1.x wrote them that way).
    """

    def line(v: str | int) -> str:
        return f"{name}: {classad_quote(str(v))}"

    if len(line(value).encode()) <= ULOG_TEXT_MAX:
        return line(value)
    return line(truncate_to_fit(str(value), lambda t: len(line(t).encode()) <= ULOG_TEXT_MAX))
