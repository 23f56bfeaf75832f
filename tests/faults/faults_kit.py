"""Tools for the fault-tolerance suite: pilot processes we can hurt, and queues we can read.

A pilot runs as a real `python -m ewms_pilot` process configured by env vars
(as a batch job runs it), with its logs in files (a pipe nobody reads would
stall it while the test sleeps before a kill). Queues are read with
oms-mqclient's public API for RabbitMQ/NATS (what an EWMS consumer sees) and
with the pilot's own local-queue classes for `local` (its only implementation).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses as dc
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import mqclient
from mq_helpers import nats_consumer_with_ack_wait, publish_raw
from mqclient.broker_client_interface import Message
from pilot_proc import base_env

from benchmarks.rabbitnode import free_port

PY = sys.executable
PILOT_ID = re.compile(r"ewms-pilot-([0-9a-f]{8})-")
#: ack_wait of the consumer the NATS scenarios about redelivery create first
#: (`short_ack_wait`): an event held by a SIGKILLed pilot comes back only after
#: this long. oms-mqclient's own consumer keeps JetStream's default, 30 s, which
#: the pilot handles the same way (it reads ack_wait from the consumer). 10 s: a
#: renewal (every ack_wait/3) has ~6 s to reach JetStream on a busy machine.
NATS_ACK_WAIT = 10.0
JETSTREAM_ACK_WAIT = 30.0  # JetStream's default: the ack_wait of oms-mqclient's own consumer


def task_args(code: str, *extra: str, python: str = PY) -> str:
    """EWMS_PILOT_TASK_ARGS for `python -c CODE <<INFILE>> <<OUTFILE>> EXTRA...` (quoted for the pilot's split)."""
    return shlex.join([python, "-c", code, "<<INFILE>>", "<<OUTFILE>>", *extra])


def pilot_env(
    broker_type: str,
    address: str,
    qin: str,
    qout: str,
    data_dir: Path,
    args: str,
    **extra: str,
) -> dict[str, str]:
    """A pilot environment; `extra` are EWMS_PILOT_* overrides."""
    return base_env(
        broker_type=broker_type, address=address, queue_in=qin, queue_out=qout,
        data_dir=data_dir, task_args=args, extra=extra,
    )


def broker_address(request: Any, btype: str, tmp_path: Path) -> str:
    """The test broker's address (from the conftest fixtures); for `local`, an SQLite file in `tmp_path`."""
    if btype == "local":
        return str(tmp_path / "queues.db")
    return str(request.getfixturevalue(f"{btype}_address"))


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `pred` until true or `timeout` s passed; returns the last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


class PilotProcess:
    """A running pilot with its stdout/stderr in files under `logdir`."""

    def __init__(self, env: Mapping[str, str], logdir: Path, name: str = "pilot") -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.out_path = logdir / f"{name}.stdout"
        self.err_path = logdir / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "ewms_pilot", "run", "--no-progress"],
                env=dict(env), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.signalled_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def count(self, needle: str) -> int:
        return self.log().count(needle)

    def pilot_ids(self) -> set[str]:
        return set(PILOT_ID.findall(self.log()))

    def send(self, sig: signal.Signals) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Exit code; if it overstays, kill its group and fail with the log's tail."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"{self.name} did not exit within {timeout:g}s; log tail:\n{self.log()[-4000:]}"
            ) from None

    def since_signal(self) -> float:
        """Seconds from the first signal we sent until now (call right after `wait`)."""
        assert self.signalled_at is not None
        return time.monotonic() - self.signalled_at

    def received(self) -> int:
        return len(re.findall(r"\] event \S+ \(delivery #", self.log()))

    def finished(self) -> int:
        return self.count(": result published") + self.count("nothing to publish")

    def summary_counts(self) -> dict[str, int]:
        """The counts of the exit summary (`received 3  succeeded 2 ...`)."""
        m = re.search(
            r"received (\d+)\s+succeeded (\d+)\s+failed (\d+)\s+dead-lettered (\d+)\s+no-output (\d+)",
            self.stdout(),
        )
        if not m:
            return {}
        keys = ("received", "succeeded", "failed", "dead_lettered", "no_output")
        return dict(zip(keys, map(int, m.groups()), strict=True))


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains `marker`."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmd and state not in (b"Z", b"X"):
            pids.append(int(entry.name))
    return pids


# --------------------------------------------------------------------------- queues


@dc.dataclass
class Got:
    """One message taken from a queue."""

    data: Any
    headers: dict[str, Any]


def _mq_queue(btype: str, address: str, queue: str, idle: float) -> mqclient.Queue:
    return mqclient.Queue(
        btype, address=address, name=queue, timeout=max(1, math.ceil(idle)), except_errors=False
    )


async def _put(btype: str, address: str, queue: str, items: Iterable[Any], headers: dict[str, Any] | None) -> None:
    if btype == "local":
        from ewms_pilot.config.model import BrokerConfig
        from ewms_pilot.queues import open_publisher

        pub = await open_publisher(BrokerConfig(queue=queue, broker_type="local", address=address))
        try:
            for item in items:
                await pub.send(item, headers)
        finally:
            await pub.close()
        return
    async with _mq_queue(btype, address, queue, 1).open_pub() as pub:
        for item in items:
            await pub.send(item)


def short_ack_wait(address: str, queue: str) -> None:
    """Give `queue` (NATS) the consumer with ack_wait NATS_ACK_WAIT, before any pilot opens it."""
    asyncio.run(nats_consumer_with_ack_wait(address, queue, NATS_ACK_WAIT))


def put(btype: str, address: str, queue: str, items: Iterable[Any]) -> None:
    """Publish each item as one event (oms-mqclient's wire format)."""
    asyncio.run(_put(btype, address, queue, list(items), None))


async def _take(btype: str, address: str, queue: str, idle: float, expect: int | None) -> list[Got]:
    got: list[Got] = []
    if btype == "local":
        from ewms_pilot.config.model import BrokerConfig
        from ewms_pilot.queues import open_subscription

        sub = await open_subscription(BrokerConfig(queue=queue, broker_type="local", address=address), 1)
        try:
            while expect is None or len(got) < expect:
                d = await sub.get(idle)
                if d is None:
                    break
                # the headers on the wire, the pilot's own included (the decode path strips those)
                wire = d.headers if d.decode_error is not None else Message(d.msg_id, d.raw.payload).headers
                got.append(Got(d.data, dict(wire or {})))
                await sub.ack(d)
        finally:
            await sub.close()
        return got
    async with _mq_queue(btype, address, queue, idle).open_sub_manual_acking() as sub:
        async for msg in sub.iter_messages():
            got.append(Got(msg.data, dict(msg.headers or {})))
            await sub.ack(msg)
            if expect is not None and len(got) >= expect:
                break
    return got


def take(btype: str, address: str, queue: str, *, idle: float = 1.0, expect: int | None = None) -> list[Got]:
    """Take (and ack) messages until none came for `idle` s, or `expect` were taken."""
    return asyncio.run(_take(btype, address, queue, idle, expect))


def take_data(btype: str, address: str, queue: str, *, idle: float = 1.0, expect: int | None = None) -> list[Any]:
    return [g.data for g in take(btype, address, queue, idle=idle, expect=expect)]


def put_raw(btype: str, address: str, queue: str, payloads: list[bytes]) -> None:
    """Put bytes that are NOT oms-mqclient messages straight into the incoming queue."""
    asyncio.run(publish_raw(btype, address, queue, payloads))


@dc.dataclass
class Tally:
    """Events vs. outputs, by value."""

    events: int
    outputs: int
    duplicates: int
    lost: list[str]
    unexpected: list[Any]

    @classmethod
    def of(cls, events: list[str], outputs: list[Any], to_event: Callable[[Any], str | None]) -> Tally:
        per = collections.Counter(to_event(o) for o in outputs)
        unexpected = [o for o in outputs if to_event(o) not in set(events)]
        return cls(
            events=len(events),
            outputs=len(outputs),
            duplicates=sum(n - 1 for e, n in per.items() if e in set(events) and n > 1),
            lost=[e for e in events if per[e] == 0],
            unexpected=unexpected,
        )


# --------------------------------------------------------------------------- podman


def podman_names(*pilot_ids: str) -> list[str]:
    """Names of all containers (any state) belonging to these pilot ids."""
    res = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60, check=True
    )
    return [n for n in res.stdout.split() if any(f"ewms-pilot-{p}-" in n for p in pilot_ids)]


def podman_remove(names: list[str]) -> None:
    if names:
        subprocess.run(["podman", "rm", "--force", "--time", "0", *names], capture_output=True, timeout=120, check=False)


# --------------------------------------------------------------------------- a NATS server of our own


class NatsServer:
    """A private JetStream server (a shared one must not be restarted under other people's tests)."""

    BINARY = "/usr/sbin/nats-server"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.store = workdir / "jetstream"
        self.logfile = workdir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [self.BINARY, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store), "-l", str(self.logfile)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import socket

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        if not wait_until(up, 15):
            raise AssertionError(f"private nats-server did not start: {self.logfile.read_text()[-2000:]}")

    def pause(self) -> None:
        """SIGSTOP, returning once every thread of the server is stopped. The stop is asynchronous:
        on a busy machine the server, not yet stopped, answered the next request, and a SIGCONT
        right after cancelled the pending stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.proc.pid}/task")

        def stopped() -> bool:
            states = []
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    states.append((task / "stat").read_bytes().rsplit(b")", 1)[1].split()[0])
            return bool(states) and all(s in (b"T", b"t") for s in states)

        if not wait_until(stopped, 15, interval=0.005):
            raise AssertionError("the private nats-server did not stop within 15 s of SIGSTOP")

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------- a RabbitMQ node of our own


def nats_unfinished(address: str, queue: str) -> int:
    """Events of `queue` not yet acked: waiting, or delivered and awaiting ack (JetStream's own count).

    Lets a test account for events a dead connection still holds without
    waiting out ack_wait.
    """

    async def count() -> int:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(address, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=10)
            try:
                info = await js.consumer_info(f"{queue}-stream", "psub")
            except NotFoundError:
                return 0
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        finally:
            await nc.close()

    return asyncio.run(count())
