"""A Chirp server for tests, speaking the protocol of condor_starter's chirp proxy.

What the real proxy (io_proxy_handler.cpp) does and this server copies:
- a request is one line (at most CHIRP_LINE_MAX bytes before the "\\n"); a longer one
  is answered with -5 (TOO_BIG) and the connection is closed;
- words are separated by unescaped whitespace; a backslash escapes the next byte;
- until `cookie <cookie>` succeeds (reply `0`), every line is answered -1
  (NOT_AUTHENTICATED) and the connection stays open;
- `set_job_attr <name> <expr>`, `set_job_attr_delayed`, `ulog <text>` reply `0`,
  `version` replies the protocol version, `get_job_attr <name>` replies the
  length then the bytes; anything else is -8 (INVALID_REQUEST).

It listens on 127.0.0.1 on an ephemeral port, one thread per connection, and
records every request it receives. It can be told to drop the connection after
N requests (answering the last or not), to answer an error code, or to be slow.
"""

from __future__ import annotations

import dataclasses as dc
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

CHIRP_LINE_MAX = 5120
CHIRP_VERSION = 2
NOT_AUTHENTICATED = -1
NOT_AUTHORIZED = -2
TOO_BIG = -5
INVALID_REQUEST = -8


def unescape_words(line: bytes) -> list[str]:
    """Split a request like the starter's sscanf_chirp: unescaped whitespace separates words."""
    words: list[bytes] = []
    word = bytearray()
    in_word = False
    i = 0
    while i < len(line):
        c = line[i : i + 1]
        if c == b"\\" and i + 1 < len(line):
            word += line[i + 1 : i + 2]
            in_word = True
            i += 2
            continue
        if c.isspace():
            if in_word:
                words.append(bytes(word))
                word.clear()
                in_word = False
        else:
            word += c
            in_word = True
        i += 1
    if in_word:
        words.append(bytes(word))
    return [w.decode("utf-8", "surrogateescape") for w in words]


@dc.dataclass(frozen=True)
class Request:
    """One authenticated request as the server received it."""

    command: str
    args: tuple[str, ...]
    wire: bytes  # the raw line, "\n" excluded
    at: float  # time.monotonic() on arrival
    connection: int  # 1 for the first accepted connection, ...


@dc.dataclass
class _ErrorRule:
    code: int
    command: str | None
    first_arg: str | None
    times: int | None  # None = always


class ChirpServer:
    """`with ChirpServer(tmp_path) as server:` then point `_CONDOR_CHIRP_CONFIG` at `server.config_path`."""

    def __init__(self, directory: Path, cookie: str | None = None, wrong_cookie_delay: float = 0.0):
        self.directory = directory
        self.cookie = cookie or uuid.uuid4().hex
        self.wrong_cookie_delay = wrong_cookie_delay  # the starter sleeps 1 s on a wrong cookie
        self.reply_delay = 0.0  # seconds to wait before answering each authenticated request
        self.config_path = directory / ".chirp.config"
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._cookies_presented: list[str] = []
        self._job_attrs: dict[str, str] = {}
        self._ulog: list[str] = []
        self._error_rules: list[_ErrorRule] = []
        self._drop_after: int | None = None
        self._drop_reply = True
        self._connections = 0
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open_socks: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ChirpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((self.host, 0))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self.write_config()
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            socks = list(self._open_socks)
        for s in socks:
            _close(s)
        for t in list(self._threads):
            t.join(5)
        if self._listener is not None:
            self._listener.close()

    def write_config(self, cookie: str | None = None, port: int | None = None) -> Path:
        """(Re)write the `host port cookie` file the htchirp client reads."""
        self.config_path.write_text(
            f"{self.host} {self.port if port is None else port} {cookie or self.cookie}\n"
        )
        return self.config_path

    # ------------------------------------------------------------------ behaviour knobs

    def drop_after(self, n: int, *, reply: bool = True) -> None:
        """Close the connection after the next `n` authenticated requests (once).

        reply=False: the n-th request is read but not answered before the close.
        """
        with self._lock:
            self._drop_after = n
            self._drop_reply = reply

    def answer_error(
        self,
        code: int,
        *,
        command: str | None = None,
        first_arg: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer `code` instead of success for matching requests (`times` of them, or always)."""
        with self._lock:
            self._error_rules.append(_ErrorRule(code, command, first_arg, times))

    def drop_connections(self) -> None:
        """Close every open connection now, between requests (a starter restart looks like this)."""
        with self._lock:
            socks = list(self._open_socks)
        for s in socks:
            _close(s)

    # ------------------------------------------------------------------ what was received

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def cookies_presented(self) -> list[str]:
        with self._lock:
            return list(self._cookies_presented)

    @property
    def job_attrs(self) -> dict[str, str]:
        """Attributes as the job ad would hold them: name -> ClassAd expression text."""
        with self._lock:
            return dict(self._job_attrs)

    @property
    def job_values(self) -> dict[str, object]:
        """The attributes' values, each expression evaluated as HTCondor's classad2 does (as TMS reads them)."""
        import classad2

        return {name: classad2.ExprTree(expr).eval() for name, expr in self.job_attrs.items()}

    @property
    def ulog_lines(self) -> list[str]:
        with self._lock:
            return list(self._ulog)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def set_job_attr_calls(self) -> list[tuple[str, str]]:
        """Every (name, expr) of a `set_job_attr` request received, in order."""
        return [(r.args[0], r.args[1]) for r in self.requests if r.command == "set_job_attr"]

    def wait_for(self, predicate: Callable[[ChirpServer], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return predicate(self)

    # ------------------------------------------------------------------ protocol

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="chirp-test-server")
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
                number = self._connections
                self._open_socks.add(conn)
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(None)
        reader = conn.makefile("rb")
        authenticated = False
        try:
            while not self._stopping.is_set():
                line = reader.readline(CHIRP_LINE_MAX + 2)
                if not line:
                    return  # client closed
                if not line.endswith(b"\n") and len(line) <= CHIRP_LINE_MAX:
                    return  # EOF in the middle of a line
                body = line.rstrip(b"\n")
                if len(body) > CHIRP_LINE_MAX:
                    conn.sendall(f"{TOO_BIG}\n".encode())
                    return
                if not authenticated:
                    authenticated = self._cookie(conn, body)
                    continue
                if not self._request(conn, body, number):
                    return
        except OSError:
            return
        finally:
            reader.close()
            _close(conn)
            with self._lock:
                self._open_socks.discard(conn)

    def _cookie(self, conn: socket.socket, body: bytes) -> bool:
        words = unescape_words(body)
        ok = len(words) == 2 and words[0] == "cookie" and words[1] == self.cookie
        if len(words) >= 2 and words[0] == "cookie":
            with self._lock:
                self._cookies_presented.append(words[1])
            if not ok and self.wrong_cookie_delay:
                time.sleep(self.wrong_cookie_delay)
        conn.sendall(b"0\n" if ok else f"{NOT_AUTHENTICATED}\n".encode())
        return ok

    def _request(self, conn: socket.socket, body: bytes, number: int) -> bool:
        """Record and answer one authenticated request; False when the connection must close."""
        words = unescape_words(body)
        command, args = (words[0], tuple(words[1:])) if words else ("", ())
        with self._lock:
            self._requests.append(Request(command, args, body, time.monotonic(), number))
            drop = False
            if self._drop_after is not None:
                self._drop_after -= 1
                if self._drop_after <= 0:
                    drop, self._drop_after = True, None
            reply = self._answer(command, args)
        if drop and not self._drop_reply:
            return False
        if self.reply_delay:
            time.sleep(self.reply_delay)
        conn.sendall(reply)
        return not drop

    def _answer(self, command: str, args: tuple[str, ...]) -> bytes:
        """Called with the lock held."""
        for rule in self._error_rules:
            if rule.times == 0:
                continue
            if rule.command not in (None, command):
                continue
            if rule.first_arg is not None and (not args or args[0] != rule.first_arg):
                continue
            if rule.times is not None:
                rule.times -= 1
            return f"{rule.code}\n".encode()
        if command in ("set_job_attr", "set_job_attr_delayed") and len(args) >= 2:
            self._job_attrs[args[0]] = args[1]
            return b"0\n"
        if command == "ulog" and len(args) >= 1:
            self._ulog.append(args[0])
            return b"0\n"
        if command == "version":
            return f"{CHIRP_VERSION}\n".encode()
        if command == "get_job_attr" and len(args) == 1 and args[0] in self._job_attrs:
            value = self._job_attrs[args[0]].encode()
            return f"{len(value)}\n".encode() + value
        return f"{INVALID_REQUEST}\n".encode()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
