"""The masking rules themselves: one broker address, free text, the log handler filter."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import uuid

import pytest

from ewms_pilot.cli.logs import ScrubSecrets
from ewms_pilot.config.redact import looks_secret, redact_url, register_settings, scrub


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("nats://s3cr3tTok@nats.example:4222", "nats://***@nats.example:4222"),  # (a) token form
        ("amqp://user:Pw,Secret1@host", "amqp://user:***@host"),  # (b) comma in the password
        ("amqp://user:my pass word@host/vh", "amqp://user:***@host/vh"),  # (b) spaces
        ("guest:Secr3tA@", "guest:***@"),  # (c) no host at all
        ("nats://u:a,b@h1:4222,nats://v:c@h2:4222", "nats://u:***@h1:4222,nats://v:***@h2:4222"),
        ("h1:4222,h2:4222", "h1:4222,h2:4222"),  # nothing to mask
        ("/var/lib/queue.db", "/var/lib/queue.db"),
    ],
)
def test_one_address_is_masked_whatever_its_password_holds(address: str, shown: str) -> None:
    assert redact_url(address) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "Requested MQClient for queue 'q' @ guest:guest@127.0.0.1:5672",  # (e) oms-mqclient at INFO
            "Requested MQClient for queue 'q' @ guest:***@127.0.0.1:5672",
        ),
        ("Invalid address: //guest:Secr3tA@ (format: ...)", "Invalid address: //guest:***@ (format: ...)"),
        ("connected at nats://tok123@127.0.0.1:4222 now", "connected at nats://***@127.0.0.1:4222 now"),
        ("plain text, 12:30, me@example.com", "plain text, 12:30, me@example.com"),
    ],
)
def test_free_text_loses_every_url_userinfo(text: str, shown: str) -> None:
    assert scrub(text) == shown


def test_registered_settings_are_masked_in_any_form() -> None:
    """A password with a comma and a space is found however a library quoted it."""
    core = uuid.uuid4().hex
    password = f"Pw,{core} x"
    register_settings(
        {
            "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": f"amqp://u:{password}@h",
            "EWMS_PILOT_QUEUE_OUTGOING_BROKER_SECRET": f"sec{core}",  # (f) misnamed, still a secret
            "EWMS_PILOT_PREFETCH": f"pf{core}",  # not a secret: left alone
            "EWMS_PILOT_TASK_ENV_JSON": f'{{"API_KEY": "key{core}", "MODE": "m{core}"}}',
        }
    )
    text = f"a {password!r} b Pw%2C{core}%20x c sec{core} d pf{core} e --env API_KEY=key{core} m{core}"
    assert scrub(text) == f"a '***' b *** c *** d pf{core} e --env API_KEY=*** m{core}"


def test_names_that_hold_secrets() -> None:
    assert all(map(looks_secret, ["X_AUTH_TOKEN", "X_BROKER_PASSWORD", "X_SECRET", "X_API_KEY", "X_PASSWD"]))
    assert not any(map(looks_secret, ["X_KEEP_ALL_TASK_FILES", "X_PASSTHROUGH", "X_BROKER_ADDRESS"]))


def test_log_filter_masks_third_party_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubSecrets())
    log = logging.getLogger(f"mqclient.test{uuid.uuid4().hex}")  # a third-party logger
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting %s", "guest:hunter2@host")
        try:
            raise RuntimeError("bad address nats://tokXYZ@h")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "guest:***@host" in out and "nats://***@h" in out and "RuntimeError" in out
    assert "hunter2" not in out and "tokXYZ" not in out


def test_uncaught_tracebacks_of_the_command_line_are_scrubbed() -> None:
    """A crash (main thread or a broker thread) prints the interpreter's traceback: masked too."""
    canary = f"Cnry{uuid.uuid4().hex}"
    code = textwrap.dedent(
        f"""
        import threading
        from ewms_pilot.cli.logs import scrub_uncaught
        from ewms_pilot.config.redact import register_secret
        register_secret({canary!r})
        scrub_uncaught()
        def boom():
            raise ConnectionError("thread lost amqp://u:{canary}@h")
        t = threading.Thread(target=boom, name="broker-x"); t.start(); t.join()
        raise RuntimeError("main lost {canary}")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "Exception in thread broker-x" in res.stderr and "ConnectionError: thread lost" in res.stderr
    assert "RuntimeError: main lost ***" in res.stderr
    assert canary not in res.stderr
