"""The fault suite's result log: every scenario adds rows; the session writes `results.json`.

A row is what was tried and what was measured (events, outputs, duplicates,
lost); its verdict is the test's own outcome unless the row set one, so a
failed assertion shows up in docs/reliability.md (`python -m tests.faults.report`).
"""

from __future__ import annotations

import dataclasses as dc
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).with_name("results.json")
_ROWS: list[dict[str, Any]] = []
_NODES: set[str] = set()


@dc.dataclass
class Recorder:
    """Rows of one test."""

    test: str
    rows: list[dict[str, Any]] = dc.field(default_factory=list)

    def add(
        self,
        *,
        case: str,
        broker: str,
        point: str = "",
        events: int,
        outputs: int,
        duplicates: int,
        lost: int,
        detail: str = "",
        verdict: str | None = None,
    ) -> None:
        self.rows.append(
            {
                "case": case, "broker": broker, "point": point, "events": events,
                "outputs": outputs, "duplicates": duplicates, "lost": lost,
                "verdict": verdict, "detail": detail, "test": self.test,
            }
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    rec = Recorder(request.node.nodeid)
    yield rec
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.passed:
        verdict = "held"
    else:
        crash = getattr(rep.longrepr, "reprcrash", None)
        msg = (crash.message if crash else str(rep.longrepr)).strip().splitlines()[0][:200]
        verdict = f"FAILED: {msg}"
    _NODES.add(rec.test)
    # a row that judged itself keeps its verdict, unless the test failed and no row says why
    if verdict != "held" and not any(r["verdict"] not in (None, "held") for r in rec.rows):
        for row in rec.rows:
            row["verdict"] = None
    for row in rec.rows:
        row["verdict"] = row["verdict"] or verdict
        row["when"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        _ROWS.append(row)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Merge: rows of tests run now replace their earlier rows; others are kept.

    Under a lock: scripts/test.sh runs some fault tests in a second pytest process.
    """
    if not _ROWS:
        return
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = json.loads(RESULTS.read_text())
        except (OSError, ValueError):
            old = []
        kept = [r for r in old if r.get("test") not in _NODES]
        RESULTS.write_text(json.dumps(kept + _ROWS, indent=1) + "\n")


@pytest.fixture
def new_queue(_queue_names_to_clean: list[str]) -> Callable[[str], str]:
    """Factory of fresh queue names, each deleted from RabbitMQ/NATS at the end of the session."""

    def make(tag: str = "") -> str:
        name = "f" + uuid.uuid4().hex[:12] + tag
        _queue_names_to_clean.append(name)
        return name

    return make



@pytest.fixture(scope="session")
def rabbitmq_address() -> str:
    """The shared test RabbitMQ (as in tests/conftest.py), unless EWMS_FAULTS_RABBITMQ=HOST:PORT names another."""
    address = os.environ.get("EWMS_FAULTS_RABBITMQ", "127.0.0.1:5672")
    host, _, port = address.partition(":")
    import pika

    try:
        params = pika.ConnectionParameters(host, int(port or 5672), socket_timeout=5, blocked_connection_timeout=5)
        pika.BlockingConnection(params).close()
    except Exception as e:  # any failure means "not usable"; report it verbatim
        pytest.fail(f"RabbitMQ not usable at {address} ({type(e).__name__}: {e}); "
                    "run `bash scripts/test-env.sh`, or point EWMS_FAULTS_RABBITMQ at another broker")
    return address
