"""Exception types shared across the package, named by who must act on them."""

from __future__ import annotations


class PilotError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PilotError):
    """A setting is invalid: one line naming the variable, the value and what was expected.

    The CLI turns it into exit code 2 without a traceback.
    """

    def __init__(self, variable: str, value: object, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r}: expected {expected}")


class BrokerError(PilotError):
    """A broker operation failed after its retries (connection, publish, ack)."""


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached at all (connect refused, DNS, auth)."""


class ResultRejectedError(BrokerError):
    """The broker refused this message for good (too large, rejected): retrying cannot help.

    The event whose result it was failed (it counts as an attempt); the pilot never retries it.
    """
