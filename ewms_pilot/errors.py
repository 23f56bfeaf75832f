"""Exception types shared across the package, named by who must act on them."""

from __future__ import annotations


class PilotError(Exception):
    """Base of every error this package raises on purpose.

    Its text is scrubbed when it is made (`config.redact.scrub`): an error often
    quotes a broker client's message, which may quote the address with its password.
    """

    def __init__(self, *args: object) -> None:
        from .config.redact import scrub

        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class ConfigError(PilotError):
    """A setting is invalid: one line naming the variable, the value and what was expected.

    The CLI turns it into exit code 2 without a traceback.
    """

    def __init__(self, variable: str, value: object, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r}: expected {expected}")  # scrubbed there


class BrokerError(PilotError):
    """A broker operation failed after its retries (connection, publish, ack)."""


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached at all (connect refused, DNS, auth)."""


class ResultRejectedError(BrokerError):
    """The broker refused this message for good (too large, rejected): retrying cannot help.

    The event whose result it was failed (it counts as an attempt); the pilot never retries it.
    """
