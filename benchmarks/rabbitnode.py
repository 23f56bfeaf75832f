"""A private RabbitMQ node for one benchmark (`--private-rabbitmq`).

The shared broker on 127.0.0.1:5672 also serves everyone's test suites, and
fault tests stop and restart it; a private node (same RabbitMQ install, own
port, own data dir, run as the `rabbitmq` user) keeps a long benchmark out of
their way. It is stopped, and its directory removed, when the benchmark ends.
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
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
START_LIMIT = 90.0  # s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRabbit:
    """`with PrivateRabbit() as address:` -> "127.0.0.1:<port>" of a fresh, empty node."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ewms-bench-rmq-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.node = f"ewmsbench{uuid.uuid4().hex[:8]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        w = self.workdir
        (w / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (w / "plugins").write_text("[].\n")
        user = pwd.getpwnam("rabbitmq")
        w.chmod(0o755)
        for p in (w, *w.iterdir()):
            os.chown(p, user.pw_uid, user.pw_gid)
        env = [
            "HOME=/var/lib/rabbitmq",  # the rabbitmq user's Erlang cookie, so rabbitmqctl can stop it
            f"RABBITMQ_NODENAME={self.node}",
            f"RABBITMQ_CONFIG_FILE={w / 'rabbitmq.conf'}",
            f"RABBITMQ_MNESIA_BASE={w / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={w / 'log'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={w / 'plugins'}",
            f"RABBITMQ_DIST_PORT={self.dist_port}",
            f"RABBITMQ_PID_FILE={w / 'pid'}",
            "ERL_EPMD_ADDRESS=127.0.0.1",
        ]
        with open(w / "server.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "env", *env, SERVER],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        deadline = time.monotonic() + START_LIMIT
        while not self._up():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = (w / "server.out").read_text(errors="replace")[-1500:]
                self.__exit__()
                raise RuntimeError(f"private RabbitMQ did not start:\n{tail}")
            time.sleep(0.5)
        return f"127.0.0.1:{self.port}"

    def _up(self) -> bool:
        import pika

        params = pika.ConnectionParameters("127.0.0.1", self.port, socket_timeout=2, stack_timeout=5)
        try:
            pika.BlockingConnection(params).close()
        except Exception:
            return False
        return True

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    ["rabbitmqctl", "-n", self.node, "shutdown"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                    cwd="/",
                )
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
