"""The test environment itself works: both brokers carry messages, the podman image runs python3.

If one of these fails, every pilot test that needs that service would fail too,
and this file says which service is at fault.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mq_helpers import drain, publish, publish_raw

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.rabbitmq
async def test_test_queues_expire_when_a_run_is_killed(rabbitmq_address: str, queue_name: str) -> None:
    """scripts/test-env.sh's policy reaches the queues tests create, so a killed run's queues go
    (the session cleanup never ran for them; ~300 leftovers once hung the shared broker)."""
    queue = queue_name + "-in"  # derived names too
    await publish_raw("rabbitmq", rabbitmq_address, queue, [b"x"])
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"

    def rabbitmqctl(*args: str) -> str:
        res = subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout

    policies = {p["name"]: p for p in json.loads(rabbitmqctl("list_policies", "--formatter", "json"))}
    [row] = [line.split("\t") for line in rabbitmqctl("list_queues", "--no-table-headers", "name", "policy").splitlines()
             if line.startswith(queue + "\t")]
    assert row[1] in policies, row
    assert 0 < json.loads(policies[row[1]]["definition"])["expires"] <= 3_600_000


def _test_env_sweep_pattern() -> str:
    """The stream-name pattern scripts/test-env.sh passes to `broker_checks.py sweep-nats`, as bash expands it."""
    script = (REPO / "scripts" / "test-env.sh").read_text()
    [var] = re.findall(r"^TEST_QUEUE_RE=.*$", script, re.MULTILINE)
    [arg] = re.findall(r'sweep-nats \S+ \\\n\s*("[^"\n]*")', script)
    res = subprocess.run(["bash", "-c", f'{var}\nprintf %s {arg}'], capture_output=True, text=True, timeout=10, check=True)
    return res.stdout


@pytest.mark.nats
async def test_leftover_nats_test_streams_are_swept(nats_address: str, queue_name: str) -> None:
    """scripts/test-env.sh deletes test streams older than a bound (a killed run never did)."""
    import nats

    await publish("nats", nats_address, queue_name, ["x"])
    # the script's own pattern (a broken one must fail here), narrowed by a lookahead
    # to this test's stream: other runs' streams are not ours to delete
    sweep = [sys.executable, str(REPO / "scripts" / "broker_checks.py"), "sweep-nats", nats_address,
             f"(?=^{queue_name}-stream$){_test_env_sweep_pattern()}"]
    young = subprocess.run([*sweep, "3600"], capture_output=True, text=True, timeout=60, check=False)
    old = subprocess.run([*sweep, "0"], capture_output=True, text=True, timeout=60, check=False)
    assert (young.returncode, young.stdout.strip(), old.returncode, old.stdout.strip()) == (0, "0", 0, "1"), old.stderr
    nc = await nats.connect(nats_address)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert f"{queue_name}-stream" not in names
