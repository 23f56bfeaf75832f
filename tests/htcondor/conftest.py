"""The HTCondor pool (scripts/htcondor-pool.sh) and what runs in it, as session fixtures.

`pool` brings the pool up (building and caching its rootfs on first use) and
fails every test that needs it with the script's reason when it cannot: a
machine without a working pool is a red run, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from poolkit import WORK, Pool, PoolError, pool_script


@pytest.fixture(scope="session")
def pool() -> Pool:
    try:
        pool_script("up")
        return Pool(task_sandbox=pool_script("sandbox"), pilot_sandbox=pool_script("pilot-image"))
    except (PoolError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"the HTCondor pool cannot start: {e}")


@pytest.fixture
def pool_dir() -> Iterator[Path]:
    """A fresh directory in the pool's shared work dir, writable by the submitting user."""
    d = WORK / f"t-{uuid.uuid4().hex[:12]}"
    d.mkdir(parents=True)
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def rabbitmq_token(rabbitmq_address: str) -> Iterator[tuple[str, str]]:
    """(user, token): a throw-away RabbitMQ user whose password is a distinctive secret."""
    user = "ewmspool" + uuid.uuid4().hex[:8]
    token = "tok-" + uuid.uuid4().hex
    added = _rabbitmqctl("add_user", user, token)
    if added.returncode != 0:
        pytest.fail(
            f"rabbitmqctl add_user failed (run the tests as root on the broker's host): {added.stderr.strip()}"
        )
    try:
        perms = _rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        yield user, token
    finally:
        _rabbitmqctl("delete_user", user)
