"""One connection to the starter's Chirp proxy through the `htchirp` client, reopened when it breaks.

Blocking socket I/O: only the reporter's sender thread calls into it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import htchirp

LOGGER = logging.getLogger(__name__)


class ChirpUnavailableError(Exception):
    """Chirp never worked in this job: no config, nothing listening, or the cookie was refused."""


class ChirpRejectedError(Exception):
    """The server answered with an error code: sending the same request again would not help."""


class ChirpConnectionError(Exception):
    """The connection broke and the one reconnect-and-resend failed as well."""


class _Client(htchirp.HTChirp):  # type: ignore[misc]
    """The htchirp client, except that a connection closed by the server raises.

    Upstream reads a reply byte by byte until "\\n" and spins forever when recv()
    returns b"", which is what a starter going away mid-request (eviction) produces.
    """

    def _simple_response(self) -> str:
        self._check_connection()
        reply = bytearray()
        while not reply.endswith(b"\n"):
            byte = self.socket.recv(1)
            if not byte:
                raise ConnectionError("the Chirp server closed the connection")
            reply += byte
            if len(reply) > self.CHIRP_LINE_MAX:
                raise ConnectionError("the Chirp server's reply is longer than a Chirp line")
        text = reply.decode(errors="replace").rstrip()
        try:
            code = int(text)
        except ValueError:
            return text
        self._check_response(code)  # raises the ChirpError subclass for a negative code
        return text


def describe(exc: BaseException) -> str:
    """A one-line reason for a log message."""
    if isinstance(exc, ValueError):
        return f"no usable chirp config ($_CONDOR_CHIRP_CONFIG or ./.chirp.config): {exc}"
    if isinstance(exc, htchirp.HTChirp.NotAuthenticated):
        return f"the Chirp server refused the cookie ({exc})"
    return f"{type(exc).__name__}: {exc}"


class ChirpConnection:
    """Opens lazily, resends once after a broken connection, never retries beyond that."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._client: Any = None
        self._ever_connected = False

    def _open(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            # the constructor reads the config file and checks the cookie on a throwaway
            # connection; connect() then opens the one we keep
            client = _Client(timeout=self._timeout)
            client.connect()
        except Exception as e:
            if not self._ever_connected:
                raise ChirpUnavailableError(describe(e)) from e
            raise
        self._client = client
        self._ever_connected = True
        return client

    def call(self, request: Callable[[Any], object]) -> None:
        """Run `request(client)`; if the connection broke, reconnect and run it once more."""
        try:
            request(self._open())
            return
        except ChirpUnavailableError:
            raise
        except Exception as e:
            self._raise_if_rejected(e)
            LOGGER.debug("chirp connection broken (%s); reconnecting", describe(e))
            self.close()
        try:
            request(self._open())
        except Exception as e:
            self._raise_if_rejected(e)
            self.close()
            raise ChirpConnectionError(describe(e)) from e

    def _raise_if_rejected(self, exc: Exception) -> None:
        """An error code other than "not authenticated" is the server's answer, not a broken link."""
        if isinstance(exc, htchirp.HTChirp.ChirpError) and not isinstance(
            exc, htchirp.HTChirp.NotAuthenticated
        ):
            if isinstance(exc, htchirp.HTChirp.TooBig):
                self.close()  # the starter hangs up after refusing an oversized line
            raise ChirpRejectedError(describe(exc)) from exc

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception as e:  # closing a dead socket: nothing left to do
                LOGGER.debug("chirp disconnect failed: %s", describe(e))
