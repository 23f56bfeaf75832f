"""HTCondor chirp reports, checked on the wire: the real `htchirp` client talks to a Chirp server.

The server (tests/chirp_server.py) speaks the starter's chirp-proxy protocol on
127.0.0.1; the client finds it through `_CONDOR_CHIRP_CONFIG`, as in a job.
Values are decoded with HTCondor's own ClassAd parser (classad2), so what is
asserted is what the job ad would hold.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import classad2
import pytest

from ewms_pilot.chirp import ChirpAttr, ChirpReporter, PilotStatus
from ewms_pilot.chirp.encoding import classad_quote, fallback_classad_quote
from ewms_pilot.config import ChirpDest

if __package__:
    from .chirp_server import CHIRP_LINE_MAX, NOT_AUTHORIZED, ChirpServer
else:
    from chirp_server import CHIRP_LINE_MAX, NOT_AUTHORIZED, ChirpServer

A = ChirpAttr
LAST = A.HTChirpEWMSPilotLastUpdatedTimestamp.value
INTERVAL = 0.2
MARKER_RE = re.compile(r"…\[truncated (\d+) bytes\]…")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChirpServer]:
    with ChirpServer(tmp_path) as srv:
        monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(srv.config_path))
        yield srv


def value(expr: str) -> object:
    """What HTCondor makes of a ClassAd expression sent with set_job_attr."""
    return classad2.ExprTree(expr).eval()


def attr_values(server: ChirpServer, name: str) -> list[object]:
    return [value(expr) for n, expr in server.set_job_attr_calls() if n == name]


def chirp_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("ewms_pilot.chirp")
    ]


def batches(names: list[str]) -> list[list[str]]:
    """Split the sent names into sends: each one ends with LastUpdatedTimestamp."""
    out: list[list[str]] = [[]]
    for n in names:
        out[-1].append(n)
        if n == LAST:
            out.append([])
    assert out[-1] == [], f"the last send did not end with {LAST}: {names}"
    return out[:-1]


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:  # noqa: B036 - we want the raised object with its traceback
        return e


# --------------------------------------------------------------------------- typical run


def test_typical_run_sets_the_1x_attributes(server: ChirpServer) -> None:
    t0 = int(time.time())
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    r.set_status(PilotStatus.AwaitingFirstMessage)
    r.set_status(PilotStatus.Tasking)
    r.set_counts(3, 2, 1, 0)
    err = raised(ValueError('bad "input" in C:\\data'))
    r.set_error(err)
    r.set_status(PilotStatus.FatalError)
    r.set_end_reason("a task failed and stop-on-error is set")
    assert r.close(timeout=5)
    t1 = int(time.time())

    calls = server.set_job_attr_calls()
    names = [n for n, _ in calls]
    assert [n for n in names if n != LAST] == [
        A.HTChirpEWMSPilotStatus.value,
        A.HTChirpEWMSPilotStartedTimestamp.value,
        A.HTChirpEWMSPilotStatus.value,
        A.HTChirpEWMSPilotStatus.value,
        A.HTChirpEWMSPilotTasksTotal.value,
        A.HTChirpEWMSPilotTasksSuccess.value,
        A.HTChirpEWMSPilotTasksFailed.value,
        A.HTChirpEWMSPilotTasksDeadLettered.value,
        A.HTChirpEWMSPilotError.value,
        A.HTChirpEWMSPilotErrorTraceback.value,
        A.HTChirpEWMSPilotStatus.value,
        A.HTChirpEWMSPilotEndReason.value,
    ]
    # every immediate change is its own send; the counts may ride along with the error
    assert len(batches(names)) in (6, 7)
    assert attr_values(server, A.HTChirpEWMSPilotStatus.value) == [
        "Started",
        "AwaitingFirstMessage",
        "Tasking",
        "FatalError",
    ]

    ad = server.job_attrs
    # strings are ClassAd string literals, numbers plain numbers (usable in constraints)
    assert ad[A.HTChirpEWMSPilotStatus.value] == '"FatalError"'
    assert ad[A.HTChirpEWMSPilotTasksTotal.value] == "3"
    assert ad[A.HTChirpEWMSPilotTasksSuccess.value] == "2"
    assert ad[A.HTChirpEWMSPilotTasksFailed.value] == "1"
    assert ad[A.HTChirpEWMSPilotTasksDeadLettered.value] == "0"
    for ts in (A.HTChirpEWMSPilotStartedTimestamp.value, LAST):
        assert re.fullmatch(r"\d+", ad[ts])
        assert t0 <= int(ad[ts]) <= t1
    assert value(ad[A.HTChirpEWMSPilotError.value]) == 'ValueError: bad "input" in C:\\data'
    tb = value(ad[A.HTChirpEWMSPilotErrorTraceback.value])
    assert isinstance(tb, str)
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "raise exc" in tb
    assert tb.endswith('ValueError: bad "input" in C:\\data\n')
    assert value(ad[A.HTChirpEWMSPilotEndReason.value]) == "a task failed and stop-on-error is set"
    # every expression sent is valid ClassAd
    for _, expr in calls:
        assert value(expr) is not None

    # after close nothing more is sent, and nothing raises
    before = len(server.requests)
    r.set_status(PilotStatus.Done)
    r.set_counts(9, 9, 0, 0)
    assert r.close(timeout=1)
    time.sleep(0.1)
    assert len(server.requests) == before


def test_job_event_log_dest_writes_ulog_lines(server: ChirpServer) -> None:
    t0 = int(time.time())
    r = ChirpReporter(True, ChirpDest.JOB_EVENT_LOG, INTERVAL)
    r.start()
    r.set_status(PilotStatus.Tasking)
    r.set_counts(4, 3, 1, 0)
    r.set_error("the task container exited with 2", None)
    assert r.close(timeout=5)
    t1 = int(time.time())

    assert server.set_job_attr_calls() == []
    lines = server.ulog_lines
    assert lines[0] == 'HTChirpEWMSPilotStatus: "Started"'
    m = re.fullmatch(r'HTChirpEWMSPilotStartedTimestamp: "(\d+)"', lines[1])
    assert m and t0 <= int(m.group(1)) <= t1
    assert re.fullmatch(r'HTChirpEWMSPilotLastUpdatedTimestamp: "\d+"', lines[2])
    assert lines[3] == 'HTChirpEWMSPilotStatus: "Tasking"'
    # numbers are ClassAd strings in the job event log (TMS unquotes every value, as from 1.x)
    assert 'HTChirpEWMSPilotTasksTotal: "4"' in lines
    assert 'HTChirpEWMSPilotTasksSuccess: "3"' in lines
    assert 'HTChirpEWMSPilotTasksFailed: "1"' in lines
    assert 'HTChirpEWMSPilotTasksDeadLettered: "0"' in lines
    assert 'HTChirpEWMSPilotError: "the task container exited with 2"' in lines
    assert not any(line.startswith("HTChirpEWMSPilotErrorTraceback") for line in lines)
    assert re.fullmatch(r'HTChirpEWMSPilotLastUpdatedTimestamp: "\d+"', lines[-1])


# --------------------------------------------------------------------------- rate limit


def test_counts_within_the_interval_are_sent_once_at_close_with_the_latest_values(
    server: ChirpServer,
) -> None:
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    began = time.monotonic()
    for i in range(1, 6):
        r.set_counts(i, i - 1, 1, i // 2)
    assert time.monotonic() - began < INTERVAL, "the premise: all five calls within the interval"
    assert r.close(timeout=5)

    assert attr_values(server, A.HTChirpEWMSPilotTasksTotal.value) == [5]
    assert attr_values(server, A.HTChirpEWMSPilotTasksSuccess.value) == [4]
    assert attr_values(server, A.HTChirpEWMSPilotTasksFailed.value) == [1]
    assert attr_values(server, A.HTChirpEWMSPilotTasksDeadLettered.value) == [2]
    assert len(batches([n for n, _ in server.set_job_attr_calls()])) == 2  # start + close flush


def test_pending_counts_are_sent_when_the_interval_runs_out(server: ChirpServer) -> None:
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    assert server.wait_for(lambda s: LAST in [n for n, _ in s.set_job_attr_calls()])
    started_sent_at = max(q.at for q in server.requests if q.args[:1] == (LAST,))
    for i in range(1, 6):
        r.set_counts(i, i, 0, 0)

    total = A.HTChirpEWMSPilotTasksTotal.value
    assert server.wait_for(lambda s: total in s.job_attrs, timeout=3), "no close, no timer?"
    first = min(q.at for q in server.requests if q.args[:1] == (total,))
    assert first - started_sent_at >= INTERVAL - 0.01
    time.sleep(3 * INTERVAL)  # nothing else is pending: nothing else comes
    assert attr_values(server, total) == [5]
    n_requests = len(server.requests)
    assert r.close(timeout=5)
    assert len(server.requests) == n_requests  # the backlog was already empty


# --------------------------------------------------------------------------- size limits


def big_traceback() -> str:
    frame = (
        '  File "/srv/app/ünïcode dir/handler.py", line 42, in handle\n'
        '    raise RuntimeError("bad \\"value\\" at C:\\\\tmp\\\\x")\n'
    )
    head = "Traceback (most recent call last):\n"
    text = head + frame * (20_000 // len(frame) + 1) + "RuntimeError: the very end\n"
    assert len(text.encode()) > 20_000
    return text


def assert_truncated(original: str, shown: str) -> None:
    m = MARKER_RE.search(shown)
    assert m, shown[:200]
    head, tail = shown[: m.start()], shown[m.end() :]
    assert original.startswith(head) and original.endswith(tail)
    assert int(m.group(1)) == len(original.encode()) - len(head.encode()) - len(tail.encode())
    assert head.startswith("Traceback (most recent call last):")
    assert tail.endswith("RuntimeError: the very end\n")


def test_a_20kb_traceback_is_truncated_to_fit_and_later_updates_go_through(
    server: ChirpServer,
) -> None:
    tb = big_traceback()
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    r.set_error("RuntimeError: the very end", tb)
    r.set_status(PilotStatus.Done)
    assert r.close(timeout=5)

    name = A.HTChirpEWMSPilotErrorTraceback.value
    (request,) = [q for q in server.requests if q.args[:1] == (name,)]
    assert len(request.wire) + 1 <= CHIRP_LINE_MAX  # the whole command, "\n" included
    shown = value(request.args[1])
    assert isinstance(shown, str)
    assert_truncated(tb, shown)
    assert len(request.wire) + 1 > CHIRP_LINE_MAX - 200  # it uses the room it has
    assert value(server.job_attrs[A.HTChirpEWMSPilotError.value]) == "RuntimeError: the very end"
    assert value(server.job_attrs[A.HTChirpEWMSPilotStatus.value]) == "Done"


def test_a_20kb_traceback_in_the_job_event_log_is_cut_to_about_1kb(server: ChirpServer) -> None:
    tb = big_traceback()
    r = ChirpReporter(True, ChirpDest.JOB_EVENT_LOG, INTERVAL)
    r.start()
    r.set_error("RuntimeError: the very end", tb)
    r.set_status(PilotStatus.Done)
    assert r.close(timeout=5)

    prefix = "HTChirpEWMSPilotErrorTraceback: "
    (line,) = [x for x in server.ulog_lines if x.startswith(prefix)]
    assert 900 <= len(line.encode()) <= 1000
    shown = value(line[len(prefix) :])
    assert isinstance(shown, str)
    assert_truncated(tb, shown)
    assert 'HTChirpEWMSPilotStatus: "Done"' in server.ulog_lines


# --------------------------------------------------------------------------- connection trouble


@pytest.mark.parametrize("how", ["idle", "after_reply", "before_reply"])
def test_reconnects_when_the_server_drops_the_connection(
    server: ChirpServer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    status = A.HTChirpEWMSPilotStatus.value
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    assert server.wait_for(lambda s: LAST in s.job_attrs)
    connections = server.connections
    if how == "idle":
        server.drop_connections()  # between requests
    else:  # right after (or while) handling the next request
        server.drop_after(1, reply=how == "after_reply")
    r.set_status(PilotStatus.Tasking)
    assert r.close(timeout=5)

    assert value(server.job_attrs[status]) == "Tasking"
    assert server.connections > connections
    names = [n for n, _ in server.set_job_attr_calls()]
    assert names[-1] == LAST
    tasking_requests = [q for q in server.requests if q.args[:2] == (status, '"Tasking"')]
    assert len(tasking_requests) == (2 if how == "before_reply" else 1)
    assert chirp_warnings(caplog) == []


def test_server_gone_mid_run_gives_one_warning_and_never_raises(
    server: ChirpServer, caplog: pytest.LogCaptureFixture
) -> None:
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    assert server.wait_for(lambda s: LAST in s.job_attrs)
    server.stop()
    r.set_status(PilotStatus.Tasking)
    r.set_status(PilotStatus.Draining)
    r.set_error(raised(RuntimeError("x")))
    assert r.close(timeout=5)
    warnings = chirp_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "HTCondor chirp update failed after a reconnect" in warnings[0]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "setup", ["no_env_no_file", "env_to_missing_file", "connection_refused", "wrong_cookie"]
)
def test_chirp_unavailable_gives_one_warning_and_no_exception(
    setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with ChirpServer(tmp_path, wrong_cookie_delay=0.1) as srv:
        if setup == "no_env_no_file":
            empty = tmp_path / "empty"
            empty.mkdir()
            monkeypatch.chdir(empty)  # no ./.chirp.config either
            monkeypatch.delenv("_CONDOR_CHIRP_CONFIG", raising=False)
        elif setup == "env_to_missing_file":
            monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(tmp_path / "nope" / ".chirp.config"))
        elif setup == "connection_refused":
            monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(srv.write_config(port=_closed_port())))
        else:
            monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(srv.write_config(cookie="not-it")))

        r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
        r.start()
        r.set_status(PilotStatus.Tasking)
        r.set_counts(1, 1, 0, 0)
        r.set_error(raised(RuntimeError("boom")))
        r.set_end_reason("done")
        assert r.close(timeout=5)
        # more calls after chirp was found missing: still nothing raised, nothing sent
        r.set_status(PilotStatus.Done)

        warnings = chirp_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("HTCondor chirp unavailable: ")
        assert warnings[0].endswith("; continuing without status reports")
        assert srv.requests == []
        if setup == "wrong_cookie":
            assert srv.cookies_presented == ["not-it"]  # tried once, not for every update
            assert "cookie" in warnings[0]


def test_an_error_answer_drops_that_value_only(
    server: ChirpServer, caplog: pytest.LogCaptureFixture
) -> None:
    end = A.HTChirpEWMSPilotEndReason.value
    server.answer_error(NOT_AUTHORIZED, command="set_job_attr", first_arg=end)
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    r.start()
    r.set_end_reason("first")
    r.set_status(PilotStatus.Done)
    r.set_end_reason("second")
    assert r.close(timeout=5)

    assert end not in server.job_attrs
    assert value(server.job_attrs[A.HTChirpEWMSPilotStatus.value]) == "Done"
    # refused requests are not resent (the answer would be the same) and do not block others
    assert attr_values(server, end) == ["first", "second"]
    warnings = chirp_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert end in warnings[0] and "NotAuthorized" in warnings[0]


# --------------------------------------------------------------------------- no cost when off


def test_disabled_reporter_and_a_fresh_one_do_nothing(server: ChirpServer) -> None:
    threads_before = {t.name for t in threading.enumerate()}
    ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)  # constructing connects nothing
    off = ChirpReporter(False, ChirpDest.JOB_ATTR, INTERVAL)
    off.start()
    off.set_status(PilotStatus.Tasking)
    off.set_counts(1, 1, 0, 0)
    off.set_error(raised(RuntimeError("x")))
    off.set_end_reason("y")
    assert off.close(timeout=1)
    time.sleep(0.1)
    assert server.connections == 0
    assert "ewms-pilot-chirp" not in {t.name for t in threading.enumerate()} - threads_before


async def test_reporting_never_blocks_the_event_loop(server: ChirpServer) -> None:
    server.reply_delay = 0.1  # every request takes 0.1 s to answer
    r = ChirpReporter(True, ChirpDest.JOB_ATTR, INTERVAL)
    began = time.monotonic()
    r.start()
    for status in (PilotStatus.AwaitingFirstMessage, PilotStatus.Tasking, PilotStatus.Draining):
        r.set_status(status)
        r.set_counts(1, 1, 0, 0)
    r.set_error(raised(RuntimeError("slow")))
    assert time.monotonic() - began < 0.3  # the sends (>= 1.5 s in all) happen elsewhere

    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    assert await r.aclose(timeout=10)
    beat.cancel()
    assert time.monotonic() - began > 1.0  # it really waited for the slow sends
    assert max(gaps) < 0.5  # blocking close() would stall it for the whole >= 1.5 s
    assert value(server.job_attrs[A.HTChirpEWMSPilotStatus.value]) == "Draining"


# --------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        'a "q" b',
        "back\\slash",
        "l1\nl2\tt\rc",
        "uni é ☃ 𝄞",
        "\x01\x1f\x7f\x80",
        "\b\f\v\a",
        "",
    ],
)
def test_own_classad_quoting_matches_htcondor(text: str) -> None:
    assert fallback_classad_quote(text) == classad2.quote(text)
    assert value(classad_quote(text)) == text


def test_nul_characters_do_not_break_quoting() -> None:
    assert value(classad_quote("a\x00b")) == "a\\0b"
