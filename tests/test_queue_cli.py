"""`ewms-pilot queue put|get|count` as a user runs it: a real process, real brokers.

Invoked as `python -m ewms_pilot.cli.queue_cmd ...`, which has exactly the
command-line surface of `ewms-pilot queue ...`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from mq_helpers import drain, publish
from mqclient.broker_client_interface import Message

TEXT_LINES = [
    "plain",
    "  spaces kept  ",
    "",  # an empty line is an (empty) event too
    'quotes " and \\ backslash',
    "tab\there",
    "unicode é ☃ 😀",
    "{not json, but fine as text}",
]
JSON_VALUES: list[Any] = [
    {"a": 1, "nested": {"list": [1, 2.5, None, True]}},
    [1, "two", {"three": 3}],
    "a string",
    42,
    None,
    {"unicode": "é ☃ 😀", "escaped": "\u0000\n"},
]


def queue_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ewms_pilot.cli.queue_cmd", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def _where(broker_type: str, address: str, queue: str) -> list[str]:
    return ["--broker-type", broker_type, "--broker-address", address, "--queue", queue]


def _ok(res: subprocess.CompletedProcess[bytes]) -> str:
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def _error_line(res: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The single stderr line of a failed command (no traceback)."""
    err = res.stderr.decode()
    assert res.returncode == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


def _lines(text: list[str]) -> bytes:
    return "".join(line + "\n" for line in text).encode()


def _get_all(where: list[str], timeout: str = "1") -> list[Any]:
    out = _ok(queue_cli("get", *where, "--timeout", timeout))
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def local(tmp_path: Path) -> list[str]:
    return _where("local", str(tmp_path / "q.db"), "events")


# --------------------------------------------------------------------------- local


def test_put_get_text_lines_local(local: list[str]) -> None:
    out = _ok(queue_cli("put", *local, stdin=_lines(TEXT_LINES)))
    assert f"sent {len(TEXT_LINES)} event(s)" in out
    got_raw = _ok(queue_cli("get", *local, "--timeout", "0.5"))
    # one JSON line per event, in order: text events are JSON strings
    assert [json.loads(line) for line in got_raw.splitlines()] == TEXT_LINES
    assert _get_all(local, "0.2") == []  # taken events were acked


def test_put_json_round_trip_and_replay_local(local: list[str], tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_text("".join(json.dumps(v) + "\n" for v in JSON_VALUES))
    _ok(queue_cli("put", *local, "--json", str(src)))
    dumped = _ok(queue_cli("get", *local, "--timeout", "0.5"))
    assert [json.loads(line) for line in dumped.splitlines()] == JSON_VALUES
    # `get` output is valid `put --json` input: replay into another queue
    replay = _where("local", local[3], "replayed")
    _ok(queue_cli("put", *replay, "--json", stdin=dumped.encode()))
    assert _get_all(replay, "0.5") == JSON_VALUES


def test_events_use_mqclient_wire_format_local(local: list[str]) -> None:
    _ok(queue_cli("put", *local, "--json", stdin=b'{"k": [1, 2]}\n'))
    with sqlite3.connect(local[3]) as conn:
        (payload,) = conn.execute("SELECT payload FROM events").fetchone()
    assert Message("x", bytes(payload)).data == {"k": [1, 2]}


def test_put_reads_files_in_order_and_dash_is_stdin(local: list[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a1\na2\n")
    (tmp_path / "b.txt").write_text("b1\r\nb2")  # CRLF and no final newline
    _ok(
        queue_cli(
            "put", *local, str(tmp_path / "a.txt"), "-", str(tmp_path / "b.txt"), stdin=b"s1\n"
        )
    )
    assert _get_all(local, "0.5") == ["a1", "a2", "s1", "b1", "b2"]


def test_bad_json_line_sends_nothing(local: list[str], tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"ok": 1}\n[2]\n{broken\n{"ok": 4}\n')
    err = _error_line(queue_cli("put", *local, "--json", str(src)), 2)
    assert f"{src}:3:" in err and "not valid JSON" in err
    assert not Path(local[3]).exists()  # validated before connecting: nothing sent


def test_empty_line_is_not_json(local: list[str]) -> None:
    err = _error_line(queue_cli("put", *local, "--json", stdin=b"1\n\n2\n"), 2)
    assert "<stdin>:2:" in err and "empty line" in err


def test_non_utf8_line_is_rejected(local: list[str]) -> None:
    err = _error_line(queue_cli("put", *local, stdin=b"fine\nbad \xff\xfe byte\n"), 2)
    assert "<stdin>:2:" in err and "UTF-8" in err
    assert not Path(local[3]).exists()


def test_missing_input_file(local: list[str], tmp_path: Path) -> None:
    err = _error_line(queue_cli("put", *local, str(tmp_path / "nope.txt")), 2)
    assert "nope.txt" in err


def test_get_max_takes_exactly_n(local: list[str]) -> None:
    _ok(queue_cli("put", *local, stdin=_lines([f"e{i}" for i in range(5)])))
    assert _get_all([*local, "--max", "2"], "5") == ["e0", "e1"]
    counts = json.loads(_ok(queue_cli("count", *local, "--json")))
    assert counts == {"ready": 3, "in_flight": 0}
    assert _get_all(local, "0.3") == ["e2", "e3", "e4"]


def test_get_on_empty_queue_waits_timeout_then_ends(local: list[str]) -> None:
    res = queue_cli("get", *local, "--timeout", "0.3")
    assert _ok(res) == ""
    assert "took 0 event(s)" in res.stderr.decode()


def test_count_local_plain_and_json(local: list[str]) -> None:
    _ok(queue_cli("put", *local, stdin=b"1\n2\n"))
    assert _ok(queue_cli("count", *local)).splitlines() == ["ready: 2", "in_flight: 0"]
    assert json.loads(_ok(queue_cli("count", *local, "--json"))) == {
        "ready": 2,
        "in_flight": 0,
    }


def test_missing_parent_dir_is_one_line_error(tmp_path: Path) -> None:
    where = _where("local", str(tmp_path / "missing" / "q.db"), "q")
    err = _error_line(queue_cli("put", *where, stdin=b"x\n"), 2)
    assert "does not exist" in err
    err = _error_line(queue_cli("get", *where, "--timeout", "0"), 2)
    assert "does not exist" in err


def test_a_name_too_long_is_one_line_error(tmp_path: Path) -> None:
    where = _where("local", str(tmp_path / ("q" * 300)), "q")  # over NAME_MAX: stat itself fails
    assert "File name too long" in _error_line(queue_cli("get", *where, "--timeout", "0"), 2)


def test_corrupt_database_is_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    db.write_bytes(b"\x00garbage" * 500)
    err = _error_line(queue_cli("get", *_where("local", str(db), "q"), "--timeout", "0"), 5)
    assert "not a database" in err


def test_usage_errors_exit_2(local: list[str]) -> None:
    assert queue_cli("get", *local, "--max", "0").returncode == 2
    assert (
        queue_cli(
            "put", "--broker-type", "kafka", "--broker-address", "x", "--queue", "q"
        ).returncode
        == 2
    )
    assert queue_cli("get", "--broker-type", "local", "--queue", "q").returncode == 2  # no address


def test_auth_token_env_must_exist_when_named(local: list[str]) -> None:
    env_name = "EWMS_TEST_TOKEN_THAT_IS_NOT_SET"
    env = {k: v for k, v in os.environ.items() if k != env_name}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ewms_pilot.cli.queue_cmd",
            "count",
            *local,
            "--auth-token-env",
            env_name,
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert env_name in _error_line(res, 2)


def test_count_not_supported_for_remote_brokers() -> None:
    for broker in ("rabbitmq", "nats"):
        err = _error_line(queue_cli("count", *_where(broker, "127.0.0.1", "q")), 2)
        assert err == f"ewms-pilot queue count: error: --broker-type={broker!r}: expected local (count works on local queues only)"


# --------------------------------------------------------------------------- real brokers


@pytest.mark.rabbitmq
def test_put_get_round_trip_rabbitmq(rabbitmq_address: str, queue_name: str) -> None:
    where = _where("rabbitmq", rabbitmq_address, queue_name)
    _ok(queue_cli("put", *where, stdin=_lines(TEXT_LINES)))
    _ok(queue_cli("put", *where, "--json", stdin=_lines([json.dumps(v) for v in JSON_VALUES])))
    assert _get_all(where, "2") == TEXT_LINES + JSON_VALUES


@pytest.mark.nats
def test_put_get_round_trip_nats(nats_address: str, queue_name: str) -> None:
    where = _where("nats", nats_address, queue_name)
    _ok(queue_cli("put", *where, stdin=_lines(TEXT_LINES)))
    _ok(queue_cli("put", *where, "--json", stdin=_lines([json.dumps(v) for v in JSON_VALUES])))
    assert _get_all(where, "2") == TEXT_LINES + JSON_VALUES


@pytest.mark.rabbitmq
async def test_cli_speaks_the_ewms_wire_format_rabbitmq(
    rabbitmq_address: str, queue_name: str
) -> None:
    """What `put` sends an EWMS consumer reads; what an EWMS producer sends `get` prints."""
    where = _where("rabbitmq", rabbitmq_address, queue_name)
    _ok(queue_cli("put", *where, "--json", stdin=b'{"from": "cli"}\n'))
    assert await drain("rabbitmq", rabbitmq_address, queue_name, timeout=2, expect=1) == [
        {"from": "cli"}
    ]
    await publish("rabbitmq", rabbitmq_address, queue_name, [{"from": "mqclient"}, "s"])
    assert _get_all(where, "2") == [{"from": "mqclient"}, "s"]


@pytest.mark.nats
async def test_cli_speaks_the_ewms_wire_format_nats(nats_address: str, queue_name: str) -> None:
    where = _where("nats", nats_address, queue_name)
    _ok(queue_cli("put", *where, "--json", stdin=b'{"from": "cli"}\n'))
    assert await drain("nats", nats_address, queue_name, timeout=2, expect=1) == [{"from": "cli"}]
    await publish("nats", nats_address, queue_name, [{"from": "mqclient"}, "s"])
    assert _get_all(where, "2") == [{"from": "mqclient"}, "s"]


@pytest.mark.rabbitmq
def test_auth_token_is_never_printed(rabbitmq_address: str, queue_name: str) -> None:
    secret = "s3cr3t-token-do-not-print"
    res = queue_cli(
        "get",
        *_where("rabbitmq", rabbitmq_address, queue_name),
        "--timeout",
        "1",
        env={"EWMS_PILOT_QUEUE_AUTH_TOKEN": secret},
    )
    err = _error_line(res, 5)  # the broker refuses the token: a broker error, one line
    assert secret not in err and secret not in res.stdout.decode()


@pytest.mark.nats
def test_broker_address_from_an_env_var_keeps_its_token_out_of_ps(nats_address: str, queue_name: str) -> None:
    """`--broker-address-env NAME`: what `ps` shows of a running `get` holds no token; the address in
    argv works too, with a warning that names the better way."""
    token = f"CnryArgv{uuid.uuid4().hex[:10]}"
    address = nats_address.replace("nats://", f"nats://{token}@")  # the test server takes any token
    env = {"EWMS_TEST_QUEUE_ADDRESS": address}
    where = ["--broker-type", "nats", "--broker-address-env", "EWMS_TEST_QUEUE_ADDRESS", "--queue", queue_name]
    get = subprocess.Popen(
        [sys.executable, "-m", "ewms_pilot", "queue", "get", *where, "--max", "1", "--timeout", "60"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        shown = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(get.pid)], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        assert "queue get" in shown and "EWMS_TEST_QUEUE_ADDRESS" in shown
        assert token not in shown
        # the old way: given in argv, it still works, and the operator is told
        put = queue_cli("put", "--broker-type", "nats", "--broker-address", address, "--queue", queue_name,
                        stdin=b"hello\n")
        assert put.returncode == 0, put.stderr.decode()
        assert "--broker-address holds a password or token" in put.stderr.decode()
        assert "--broker-address-env" in put.stderr.decode()
        out, err = get.communicate(timeout=60)
    finally:
        get.kill()
        get.wait()
    assert get.returncode == 0, err.decode()
    assert out.decode().splitlines() == ['"hello"']
    assert token not in (out + err + put.stdout + put.stderr).decode()
    assert b"warning" not in err  # the recommended way is not warned about


def test_broker_address_env_must_be_set(tmp_path: Path) -> None:
    name = "EWMS_TEST_ADDRESS_THAT_IS_NOT_SET"
    res = queue_cli("count", "--broker-type", "local", "--broker-address-env", name, "--queue", "q")
    assert name in _error_line(res, 2)
    both = queue_cli("count", "--broker-type", "local", "--broker-address", str(tmp_path / "q.db"),
                     "--broker-address-env", name, "--queue", "q")
    assert "--broker-address" in _error_line(both, 2)
