"""RabbitMQ over TLS (`amqps://`, issue 11 item 6): a private node with a TLS listener
and a CA made here, a real pilot process in between (about 10 s, most of it the node's start).

The certificate is verified: with the system's CAs only (no `SSL_CERT_FILE`) the
same pilot cannot connect.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import DOUBLE, base_env, run_pilot

from benchmarks.rabbitnode import RabbitNode, free_port


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ewms-test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
             "-extfile", str(d / "san.cnf"), "-out", str(d / "server.pem"))  # fmt: skip


@pytest.fixture(scope="module")
def tls_rabbit() -> Iterator[tuple[RabbitNode, int]]:
    """A private node: plain AMQP on `node.port` (for the test itself), TLS only on the returned port."""
    node = RabbitNode("ewms-tls-rmq")
    _make_certs(node.workdir)
    tls_port = free_port()
    w = node.workdir
    with open(w / "rabbitmq.conf", "a") as conf:
        conf.write(
            f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
            f"ssl_options.cacertfile = {w / 'ca.pem'}\n"
            f"ssl_options.certfile = {w / 'server.pem'}\n"
            f"ssl_options.keyfile = {w / 'server.key'}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )
    rabbitmq = pwd.getpwnam("rabbitmq")
    for path in w.iterdir():
        os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)
    node.start()
    try:
        yield node, tls_port
    finally:
        node.stop()


def _env(node: RabbitNode, tls_port: int, queue_name: str, tmp_path: Path, ca: Path | None) -> dict[str, str]:
    env = base_env(
        broker_type="rabbitmq", address=f"amqps://guest:guest@127.0.0.1:{tls_port}/",
        queue_in=queue_name + "-in", queue_out=queue_name + "-out", data_dir=tmp_path,
        task_args=f"{sys.executable} -c \"{DOUBLE}\" <<INFILE>> <<OUTFILE>>",
        extra={"EWMS_PILOT_RECONNECT_DEADLINE": "0"},
    )  # fmt: skip
    env.pop("SSL_CERT_FILE", None)
    env.pop("SSL_CERT_DIR", None)
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    return env


@pytest.mark.timeout(180)
def test_pilot_over_amqps(tls_rabbit: tuple[RabbitNode, int], queue_name: str, tmp_path: Path) -> None:
    node, tls_port = tls_rabbit
    plain = node.address  # the test's own view of the queues, without TLS
    asyncio.run(publish("rabbitmq", plain, queue_name + "-in", ["ab", "cd"]))
    run = run_pilot(_env(node, tls_port, queue_name, tmp_path, node.workdir / "ca.pem"))
    assert run.returncode == 0, run.stderr
    assert sorted(asyncio.run(drain("rabbitmq", plain, queue_name + "-out", timeout=2, expect=2))) == [
        "abab",
        "cdcd",
    ]


@pytest.mark.timeout(180)
def test_amqps_verifies_the_server_certificate(
    tls_rabbit: tuple[RabbitNode, int], queue_name: str, tmp_path: Path
) -> None:
    node, tls_port = tls_rabbit
    asyncio.run(publish("rabbitmq", node.address, queue_name + "-in", ["ab"]))
    run = run_pilot(_env(node, tls_port, queue_name, tmp_path, ca=None))
    assert run.returncode == 5, run.stderr  # BROKER: the CA is unknown to the system
    assert "CERTIFICATE_VERIFY_FAILED" in run.stderr or "certificate verify failed" in run.stderr
    # nothing was consumed: the event is still there
    assert asyncio.run(drain("rabbitmq", node.address, queue_name + "-in", timeout=2, expect=1)) == ["ab"]
