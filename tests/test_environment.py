"""The test environment itself works: both brokers carry messages, the podman image runs python3.

If one of these fails, every pilot test that needs that service would fail too,
and this file says which service is at fault.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from mq_helpers import drain, publish

ITEMS = [{"n": 1, "s": "one"}, {"n": 2, "s": "two"}, [3, "three", None]]


@pytest.mark.rabbitmq
async def test_rabbitmq_round_trip(rabbitmq_address: str, queue_name: str) -> None:
    await publish("rabbitmq", rabbitmq_address, queue_name, ITEMS)
    assert await drain("rabbitmq", rabbitmq_address, queue_name, timeout=10, expect=3) == ITEMS
    # everything was acked: nothing comes back
    assert await drain("rabbitmq", rabbitmq_address, queue_name, timeout=1) == []


@pytest.mark.nats
async def test_nats_round_trip(nats_address: str, queue_name: str) -> None:
    await publish("nats", nats_address, queue_name, ITEMS)
    assert await drain("nats", nats_address, queue_name, timeout=10, expect=3) == ITEMS
    assert await drain("nats", nats_address, queue_name, timeout=1) == []


@pytest.mark.podman
def test_podman_image_runs_python(podman_image: str) -> None:
    podman = shutil.which("podman")
    assert podman is not None
    res = subprocess.run(
        [podman, "run", "--rm", podman_image, "python3", "-c", "print(40+2)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"


def test_queue_name_is_broker_safe(queue_name: str) -> None:
    # RabbitMQ allows <=255 bytes; NATS stream names must avoid . * > whitespace and path separators
    assert queue_name.isalnum() and queue_name.isascii() and len(queue_name) <= 32
