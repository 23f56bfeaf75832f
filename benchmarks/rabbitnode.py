"""A private RabbitMQ node: same RabbitMQ install, own port, own data dir, run as the `rabbitmq` user.

The shared broker on 127.0.0.1:5672 serves everyone's test suites. A long
benchmark (`--private-rabbitmq`) and the fault tests that stop, restart or
reconfigure a broker (tests/faults) each use a node of their own instead, so
neither disturbs the other. This is the one implementation both use.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
START_LIMIT = 90.0  # s


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RabbitNode:
    """A node that can be started, reconfigured with `rabbitmqctl`, and stopped."""

    def __init__(self, prefix: str = "ewms-rmq") -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.workdir.chmod(0o755)
        while True:  # AMQP on `port`, Erlang distribution on `port + 1`
            self.port = free_port()
            if self.port + 1 < 65536 and _port_free(self.port + 1):
                break
        self.node = f"{prefix.replace('-', '')}{uuid.uuid4().hex[:8]}@localhost"
        (self.workdir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.workdir / "plugins").write_text("[].\n")
        user = pwd.getpwnam("rabbitmq")
        for p in (self.workdir, *self.workdir.iterdir()):
            os.chown(p, user.pw_uid, user.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_LIMIT) -> None:
        w = self.workdir
        env = [
            "HOME=/var/lib/rabbitmq",  # the rabbitmq user's Erlang cookie, so rabbitmqctl reaches the node
            f"RABBITMQ_NODENAME={self.node}",
            f"RABBITMQ_CONFIG_FILE={w / 'rabbitmq.conf'}",
            f"RABBITMQ_MNESIA_BASE={w / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={w / 'log'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={w / 'plugins'}",
            f"RABBITMQ_DIST_PORT={self.port + 1}",
            f"RABBITMQ_PID_FILE={w / 'pid'}",
            "ERL_EPMD_ADDRESS=127.0.0.1",
        ]
        with open(w / "server.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "env", *env, SERVER],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/", start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._amqp_up():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = (w / "server.out").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"private RabbitMQ did not start:\n{tail}")
            time.sleep(0.3)

    def _amqp_up(self) -> bool:
        import pika

        params = pika.ConnectionParameters("127.0.0.1", self.port, socket_timeout=2, stack_timeout=5)
        try:
            pika.BlockingConnection(params).close()
        except Exception:
            return False
        return True

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """`rabbitmqctl -n <node> ARGS...`; its stdout."""
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args], capture_output=True, text=True, timeout=timeout, check=True, cwd="/"
        ).stdout

    def stop(self) -> None:
        """Shut the node down (killing it if it does not go) and remove its directory."""
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.ctl("shutdown", timeout=30)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def private_rabbit(prefix: str = "ewms-bench-rmq") -> Iterator[str]:
    """`with private_rabbit() as address:` -> "127.0.0.1:<port>" of a fresh, empty node."""
    node = RabbitNode(prefix)
    node.start()
    try:
        yield node.address
    finally:
        node.stop()
