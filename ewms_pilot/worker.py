"""Write a warm worker (`EWMS_PILOT_TASK_MODE=warm`) in a few lines.

Load what is slow once, then take events until the pilot closes stdin:

    from ewms_pilot import worker

    table = load_big_table()            # once per worker, not once per event

    @worker.handler
    def handle(infile: str, outfile: str) -> None:
        ...                             # raise to fail this event only

    worker.run(handle)

or as a loop, where `with event:` turns an exception into a failed event
and goes on with the next one:

    for event in worker.events():
        with event:
            process(event.infile, event.outfile)

Without `with event:` an event counts as done when the loop asks for the
next one; an exception in the loop body leaves the loop, so its event is
answered as failed and the worker ends (the pilot starts a new one).

While user code runs, anything written to stdout (print, C libraries, child
processes) goes to stderr: the real stdout carries protocol lines only.

This file is standalone and stdlib-only, meant to be copied into a task image
as is: it runs on python3-minimal, which has no `json` module, by falling
back to a small reader/writer for the protocol's flat objects.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from types import TracebackType
    from typing import IO

try:
    import json as _json
except ImportError:  # python3-minimal
    _json = None  # type: ignore[assignment]

#: True when the stdlib `json` module is used; False: the built-in fallback
HAVE_JSON = _json is not None

#: the longest error text sent back (the pilot cuts it further)
MAX_ERROR_CHARS = 2000


# --------------------------------------------------------------------------- wire format


def decode_object(text: str) -> dict[str, object]:
    """A JSON object from one line (json module, or the fallback for flat objects)."""
    if _json is not None:
        obj = _json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    return _parse_flat(text)


def encode_object(obj: Mapping[str, str | bool | None]) -> str:
    """One ASCII-only JSON line (no newline), byte for byte what `json.dumps` writes."""
    if _json is not None:
        return _json.dumps(dict(obj), ensure_ascii=True)
    return "{" + ", ".join(_encode_string(k) + ": " + _encode_value(v) for k, v in obj.items()) + "}"


def _encode_value(value: str | bool | None) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return _encode_string(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a protocol line")


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _encode_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            code = ord(ch)
            if code > 0xFFFF:  # as a UTF-16 surrogate pair, like json does
                code -= 0x10000
                out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


_WS = " \t\r\n"
_UNESCAPE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _parse_flat(text: str) -> dict[str, object]:
    """A JSON object whose values are strings, true, false or null (all this protocol uses)."""
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    out: dict[str, object] = {}
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            key, i = _read_string(text, _skip_ws(text, i))
            i = _skip_ws(text, i)
            if text[i : i + 1] != ":":
                raise ValueError(f"expected ':' at {i}")
            value, i = _read_value(text, _skip_ws(text, i + 1))
            out[key] = value
            i = _skip_ws(text, i)
            sep = text[i : i + 1]
            i += 1
            if sep == "}":
                break
            if sep != ",":
                raise ValueError(f"expected ',' or '}}' at {i - 1}")
    if _skip_ws(text, i) != len(text):
        raise ValueError("data after the object")
    return out


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _read_value(text: str, i: int) -> tuple[object, int]:
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, i):
            return value, i + len(word)
    return _read_string(text, i)


def _read_string(text: str, i: int) -> tuple[str, int]:
    if text[i : i + 1] != '"':
        raise ValueError(f"expected a string at {i} (this reader takes strings, true, false, null)")
    i += 1
    out: list[str] = []
    while True:
        if i >= len(text):
            raise ValueError("unterminated string")
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch < " ":
            raise ValueError(f"control character in a string at {i}")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = text[i + 1 : i + 2]
        if esc in _UNESCAPE:
            out.append(_UNESCAPE[esc])
            i += 2
        elif esc == "u":
            code = _hex4(text, i + 2)
            i += 6
            if 0xD800 <= code <= 0xDBFF and text[i : i + 2] == "\\u":
                low = _hex4(text, i + 2)
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            out.append(chr(code))
        else:
            raise ValueError(f"bad escape at {i}")


def _hex4(text: str, i: int) -> int:
    digits = text[i : i + 4]
    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"bad \\u escape at {i - 2}")
    return int(digits, 16)


# --------------------------------------------------------------------------- events


class Event:
    """One event: `infile` to read, `outfile` to write (paths as this worker sees them)."""

    def __init__(self, channel: _Channel, event_id: str, infile: str, outfile: str) -> None:
        self.id = event_id
        self.infile = infile
        self.outfile = outfile
        self.answered = False
        self._channel = channel

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, infile={self.infile!r}, outfile={self.outfile!r})"

    def succeed(self) -> None:
        """Answer ok (done for you after the body; call it only to answer early)."""
        self._answer(True, None)

    def fail(self, error: str) -> None:
        """Answer that this event failed, with a one-line reason."""
        self._answer(False, error or "failed")

    def _answer(self, ok: bool, error: str | None) -> None:
        if self.answered:
            return
        self.answered = True
        self._channel.answer(self.id, ok, error)

    def __enter__(self) -> Event:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self.succeed()
            return False
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: really stop
            self.fail(describe(exc))
            return False
        _print_traceback(exc)
        self.fail(describe(exc))
        return True  # this event failed; the loop goes on


def describe(exc: BaseException) -> str:
    """`ValueError: bad input` (cut to MAX_ERROR_CHARS)."""
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def _print_traceback(exc: BaseException) -> None:
    try:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    except Exception:  # never let reporting an error become a second error
        print(f"{describe(exc)}", file=sys.stderr)
    sys.stderr.flush()


class _Channel:
    """The protocol's two streams: requests in, answers out."""

    def __init__(self, requests: IO[bytes], answers: IO[bytes]) -> None:
        self.requests = requests
        self.answers = answers

    @classmethod
    def open(cls, stdin: IO[bytes] | None, stdout: IO[bytes] | None) -> _Channel:
        """The given streams, or the process's own with fd 1 handed over to stderr."""
        requests = stdin if stdin is not None else sys.stdin.buffer
        if stdout is not None:
            return cls(requests, stdout)
        sys.stdout.flush()
        answers: IO[bytes]
        try:
            # keep the real stdout for answers only; fd 1 itself now writes to stderr,
            # which covers print, C libraries and child processes alike
            answers = os.fdopen(os.dup(1), "wb")
            os.dup2(2, 1)
        except (OSError, ValueError, AttributeError):
            answers = sys.stdout.buffer
        return cls(requests, answers)

    def next_event(self) -> Event | None:
        """The next request, or None at EOF (the pilot is done with this worker)."""
        while True:
            raw = self.requests.readline()
            if not raw:
                return None
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                obj = decode_object(line)
            except ValueError as e:
                print(f"ewms_pilot.worker: ignoring a request that is not JSON ({e}): {line[:200]}", file=sys.stderr)
                continue
            event_id, infile, outfile = obj.get("id"), obj.get("infile"), obj.get("outfile")
            if not isinstance(event_id, str):
                print(f"ewms_pilot.worker: ignoring a request without an id: {line[:200]}", file=sys.stderr)
                continue
            if not isinstance(infile, str) or not isinstance(outfile, str):
                self.answer(event_id, False, "bad request: infile and outfile must be strings")
                continue
            return Event(self, event_id, infile, outfile)

    def answer(self, event_id: str, ok: bool, error: str | None) -> None:
        answer: dict[str, str | bool | None] = {"id": event_id, "ok": ok}
        if not ok:
            answer["error"] = error
        sys.stderr.flush()  # the event's own stderr lines before its answer
        self.answers.write(encode_object(answer).encode("ascii") + b"\n")
        self.answers.flush()


def events(stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> Iterator[Event]:
    """Each event the pilot sends, until it closes stdin.

    `stdin`/`stdout` are for tests; by default the process's own are used.
    """
    channel = _Channel.open(stdin, stdout)
    while True:
        event = channel.next_event()
        if event is None:
            return
        real_stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            yield event
        except GeneratorExit:
            # the loop was left (an exception or a break) before this event was answered
            event.fail("the worker's event loop was left before answering this event")
            raise
        finally:
            sys.stdout = real_stdout
        event.succeed()  # no-op when `with event:` answered already


_handlers: list[Callable[[str, str], object]] = []


def handler(func: Callable[[str, str], object]) -> Callable[[str, str], object]:
    """Mark `func(infile, outfile)` as this worker's event handler (for `run()`)."""
    _handlers[:] = [func]
    return func


def run(
    func: Callable[[str, str], object] | None = None,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> None:
    """Call `func(infile, outfile)` for every event; an exception fails that event only."""
    if func is None:
        if not _handlers:
            raise RuntimeError("no handler: pass one to run() or decorate it with @worker.handler")
        func = _handlers[0]
    for event in events(stdin, stdout):
        with event:
            func(event.infile, event.outfile)
