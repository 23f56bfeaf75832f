"""Shared fixtures: the real brokers and the podman test image prepared by scripts/test-env.sh.

A fixture whose service is missing fails the test with the reason (never skips),
so a broken environment cannot pass as a green run.
Further fixtures live in `tests/fixtures_*.py`; every such module is loaded here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_PKG = __name__.rpartition(".")[0]  # "" unless tests/ becomes a package
pytest_plugins = sorted(
    f"{_PKG}.{p.stem}" if _PKG else p.stem for p in _HERE.glob("fixtures_*.py")
)

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
NATS_HOST, NATS_PORT = "127.0.0.1", 4222
DEFAULT_TEST_IMAGE = "localhost/ewms-pilot-test:bookworm"
_FIX_HINT = "run `bash scripts/test-env.sh` (as root), then `. scripts/env.sh`"


def _rabbitmq_problem() -> str | None:
    """Log in as guest/guest the way mqclient does; return why that failed, if it did."""
    import pika  # only the RabbitMQ fixtures need it

    params = pika.ConnectionParameters(
        host=RABBITMQ_HOST, port=RABBITMQ_PORT, socket_timeout=5, blocked_connection_timeout=5
    )
    try:
        pika.BlockingConnection(params).close()
    except Exception as e:  # any failure means "not usable"; report it verbatim
        return f"{type(e).__name__}: {e}"
    return None


def _nats_problem() -> str | None:
    """Read the server's INFO greeting; JetStream must be on (mqclient uses streams)."""
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout=5) as s:
            s.settimeout(5)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return "connection closed before the INFO line"
                buf += chunk
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return f"not a NATS server (greeting {line[:40]!r})"
    if not json.loads(line[5:]).get("jetstream"):
        return "NATS runs without JetStream (-js)"
    return None


@pytest.fixture(scope="session")
def rabbitmq_address() -> str:
    """Address of the test RabbitMQ, in oms-mqclient's `HOST[:PORT]` form (guest/guest)."""
    if problem := _rabbitmq_problem():
        pytest.fail(f"RabbitMQ not reachable at {RABBITMQ_HOST}:{RABBITMQ_PORT} ({problem}): {_FIX_HINT}")
    return f"{RABBITMQ_HOST}:{RABBITMQ_PORT}"


@pytest.fixture(scope="session")
def nats_address() -> str:
    """Address of the test NATS JetStream server, as nats-py (under oms-mqclient) takes it."""
    if problem := _nats_problem():
        pytest.fail(f"NATS not reachable at {NATS_HOST}:{NATS_PORT} ({problem}): {_FIX_HINT}")
    return f"nats://{NATS_HOST}:{NATS_PORT}"


@pytest.fixture(scope="session")
def podman_image() -> str:
    """Name of the local podman image with python3; checks podman is configured for this host."""
    image = os.environ.get("EWMS_TEST_IMAGE", DEFAULT_TEST_IMAGE)
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail(f"podman is not on PATH: {_FIX_HINT}")
    conf = os.environ.get("CONTAINERS_CONF")
    if not conf:
        pytest.fail(f"CONTAINERS_CONF is not set (podman would use crun, which fails here): {_FIX_HINT}")
    if not Path(conf).is_file():
        pytest.fail(f"CONTAINERS_CONF={conf} does not exist: {_FIX_HINT}")
    res = subprocess.run(
        [podman, "image", "exists", image], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:
        pytest.fail(f"podman image {image} is missing ({res.stderr.strip() or 'exit 1'}): {_FIX_HINT}")
    return image


# --------------------------------------------------------------------------- queue names
# Every name handed out, and every name a test derives from one with `+`, is
# remembered; at the end of the session its RabbitMQ queue and NATS stream are
# deleted (best effort), because mqclient creates durable quorum queues /
# file-backed streams that would pile up on the shared brokers.

#: derived names a test builds with an f-string (`f"{queue_name}-in"`), which `+` cannot see
FORMATTED_SUFFIXES = ("-in", "-out")


class QueueName(str):
    """A queue name that records the names derived from it with `+` for the session cleanup."""

    registry: list[str]

    def __new__(cls, value: str, registry: list[str]) -> QueueName:
        self = super().__new__(cls, value)
        self.registry = registry
        registry.append(value)
        return self

    def __add__(self, other: object) -> QueueName:
        if not isinstance(other, str):
            return NotImplemented
        return QueueName(str(self) + other, self.registry)

    def __radd__(self, other: object) -> QueueName:
        if not isinstance(other, str):
            return NotImplemented
        return QueueName(other + str(self), self.registry)

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)  # a copy or a pickle is a plain name (registry stays here)


def _delete_rabbitmq_queues(names: list[str]) -> None:
    import pika

    params = pika.ConnectionParameters(host=RABBITMQ_HOST, port=RABBITMQ_PORT, socket_timeout=5)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        for name in names:
            try:
                if not ch.is_open:  # the broker closes a channel on a failed delete
                    ch = conn.channel()
                ch.queue_delete(queue=name)  # a missing queue is fine for RabbitMQ
            except Exception:  # in use elsewhere / channel closed: nothing more to clean
                pass
    finally:
        conn.close()


async def _delete_nats_streams(names: list[str]) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}", connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=5)
        for name in names:
            try:
                await js.delete_stream(f"{name}-stream")  # mqclient's stream naming
            except NotFoundError:
                pass
    finally:
        await nc.close()


def _run_nats_cleanup(names: list[str]) -> None:
    try:
        asyncio.run(_delete_nats_streams(names))
    except Exception:  # cleanup must never turn a run red
        pass


def _cleanup(recorded: list[str]) -> None:
    names = list(dict.fromkeys(str(n) for n in recorded))  # each once, in order
    if names and _rabbitmq_problem() is None:
        try:
            _delete_rabbitmq_queues(names)
        except Exception:  # cleanup must never turn a run red
            pass
    if names and _nats_problem() is None:
        # own thread + loop: no event loop may be running here, or one may be
        t = threading.Thread(target=_run_nats_cleanup, args=(names,), daemon=True)
        t.start()
        t.join(60)


@pytest.fixture(scope="session")
def _queue_names_to_clean() -> Iterator[list[str]]:
    """Names to delete at the session's end; other fixtures may `append` their own."""
    names: list[str] = []
    yield names
    _cleanup(names)


@pytest.fixture
def queue_name(_queue_names_to_clean: list[str]) -> str:
    """A fresh queue name, valid for RabbitMQ and for NATS (`<name>-stream` / `<name>-subject`).

    Derive further names with `queue_name + "suffix"` so that they are cleaned up too.
    """
    base = "t" + uuid.uuid4().hex[:16]
    _queue_names_to_clean.extend(base + suffix for suffix in FORMATTED_SUFFIXES)
    return QueueName(base, _queue_names_to_clean)
