"""The floor under every pilot figure: the same task run directly, with no pilot and no broker.

`podman run --rm` of the task command (sequentially, and 4 at a time) bounds
what any podman-based pilot can reach on this machine in the same round;
the same for plain host processes under the `process` runtime rows.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from .scenarios import DOUBLE, HOST_PYTHON

MOUNT_POINT = "/io"


@dc.dataclass
class BareResult:
    """N task runs: wall time, steady-state period and how many outputs were right."""

    key: str
    round: int
    ok: bool
    n: int
    verified: int = 0
    wall_s: float | None = None  # first start -> last finish
    period_s: float | None = None  # (last finish - first finish) / (n - 1)
    error: str = ""

    @property
    def throughput(self) -> float | None:
        return self.n / self.wall_s if self.ok and self.wall_s else None

    @property
    def per_task_s(self) -> float | None:
        """Wall time per task (sequential: the cost of one `podman run`)."""
        return self.wall_s / self.n if self.ok and self.wall_s else None


def podman_argv(image: str, task_dir: Path) -> list[str]:
    return [
        "podman",
        "run",
        "--rm",
        "--mount",
        f"type=bind,source={task_dir},target={MOUNT_POINT}",
        image,
        "python3",
        "-c",
        DOUBLE,
        f"{MOUNT_POINT}/in",
        f"{MOUNT_POINT}/out",
    ]


def process_argv(task_dir: Path) -> list[str]:
    return [*HOST_PYTHON, "-c", DOUBLE, str(task_dir / "in"), str(task_dir / "out")]


async def _one(argv: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    return "" if proc.returncode == 0 else f"exit {proc.returncode}: {err.decode(errors='replace')[-300:]}"


async def run_bare(
    key: str,
    round_no: int,
    *,
    n: int,
    parallel: int,
    workdir: Path,
    containers_conf: Path,
    image: str | None,
) -> BareResult:
    """Run the task N times, `parallel` at a time; `image=None` runs it as a host process."""
    base = workdir / f"r{round_no}-{key}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, CONTAINERS_CONF=str(containers_conf))
    dirs = []
    for i in range(n):
        d = base / f"t{i}"
        d.mkdir(parents=True)
        (d / "in").write_text(f"bare-{i}-{uuid.uuid4().hex[:6]}")
        dirs.append(d)
    gate = asyncio.Semaphore(parallel)
    finished: list[float] = []
    errors: list[str] = []

    async def task(d: Path) -> None:
        async with gate:
            argv = podman_argv(image, d) if image else process_argv(d)
            if err := await _one(argv, env):
                errors.append(err)
            finished.append(time.monotonic())

    t0 = time.monotonic()
    await asyncio.gather(*(task(d) for d in dirs))
    result = BareResult(key, round_no, ok=False, n=n)
    for d in dirs:
        out = d / "out"
        if out.exists() and out.read_text() == (d / "in").read_text() * 2:
            result.verified += 1
    finished.sort()
    result.wall_s = finished[-1] - t0
    if n > 1:
        result.period_s = (finished[-1] - finished[0]) / (n - 1)
    if errors or result.verified != n:
        result.error = f"{len(errors)} task(s) failed, {result.verified}/{n} outputs right" + (
            f": {errors[0]}" if errors else ""
        )
    else:
        result.ok = True
        shutil.rmtree(base, ignore_errors=True)
    return result
